# Type stubs of the compiled module ``fastfcgi`` (PEP 561 stub package).
# Its API is fastfcgi_py's, name for name; only CORE differs ("compiled",
# or "pure" where fastfcgi.py stands in for the extension), star-imported too.
from fastfcgi_py import *  # noqa: F401,F403
from fastfcgi_py import __version__ as __version__

