"""fastfcgi where the compiled core is not built: the pure module's API
under the compiled module's name.

A pure install (``FASTFCGI_NO_EXT=1``, PyPy, no compiler or Cython) has
this file as ``fastfcgi``, so ``import fastfcgi`` works in every install.
Where the extension built, the extension is ``fastfcgi`` instead: an
extension module is found before a source file of the same name, and
setup.py installs this file only in a pure build.  ``fastfcgi.CORE`` says
which core runs: "compiled" or, here, "pure".

To vendor fastfcgi, copy ``fastfcgi_py.py``: it is the whole server.
"""

from fastfcgi_py import *  # noqa: F401,F403  (the whole API, CORE included)
from fastfcgi_py import __all__, __version__  # noqa: F401
