"""Build and install fastfcgi.

``pip install .`` installs the pure module ``fastfcgi_py`` and, when Cython
(3.0 or later) and a C compiler are there, the compiled module ``fastfcgi``
with its declarations ``fastfcgi.pxd`` (for ``cimport fastfcgi``).  Without
them, with ``FASTFCGI_NO_EXT=1``, on PyPy, or when the extension does not
compile, the install still succeeds as a pure one, and one banner line says
so (``pip install -v`` shows it): ``fastfcgi`` is then fastfcgi.py, the
pure module's API under the same name.  Either way ``import fastfcgi``
works, and ``fastfcgi.CORE`` says which core it is.  Type stubs for both
modules are installed as PEP 561 stub packages.

Environment:
    FASTFCGI_NO_EXT=1       a pure build, on purpose (a ``py3-none-any`` wheel)
    FASTFCGI_REQUIRE_EXT=1  a failed extension build is an error, not a pure
                            build (CI and bench.py set it)
    FASTFCGI_WERROR=1       compiler warnings are errors (CI sets it; a
                            warning on a user's machine must not fail)

``python setup.py build_ext --inplace`` builds the extension next to the
sources; the test suite imports it from there.
"""

import os
import platform
import re
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))

# language_level and embedsignature are also in the .pyx header, so a bare
# ``cython fastfcgi.pyx`` compiles the same module.
CYTHON_DIRECTIVES = {"language_level": 3, "embedsignature": True}


def read_version():
    # By regex: importing fastfcgi_py here could pick up an installed copy.
    with open(os.path.join(HERE, "fastfcgi_py.py"), encoding="utf-8") as f:
        match = re.search(r'^__version__ = "([^"]+)"', f.read(), re.M)
    if match is None:
        raise RuntimeError("no __version__ in fastfcgi_py.py")
    return match.group(1)


def read_readme():
    path = os.path.join(HERE, "README.md")
    if not os.path.exists(path):
        return ""
    with open(path, encoding="utf-8") as f:
        return f.read()


def env_flag(name):
    return os.environ.get(name, "") not in ("", "0")


REQUIRE_EXT = env_flag("FASTFCGI_REQUIRE_EXT")
WERROR = env_flag("FASTFCGI_WERROR")


def pure_reason():
    """Why the extension is not even tried, or None."""
    if env_flag("FASTFCGI_NO_EXT"):
        return "FASTFCGI_NO_EXT is set"
    implementation = platform.python_implementation()
    if implementation != "CPython":
        return "%s runs the pure module" % implementation
    try:
        import Cython
    except ImportError:
        return "Cython is not installed"
    major = Cython.__version__.split(".")[0]
    if not major.isdigit() or int(major) < 3:
        return "Cython %s is too old, 3.0 or later is needed" % Cython.__version__
    return None


PURE_REASON = pure_reason()
if PURE_REASON is not None and REQUIRE_EXT:
    sys.exit("fastfcgi: FASTFCGI_REQUIRE_EXT is set, but the extension cannot be built: %s"
             % PURE_REASON)
_announced = []


def announce_pure(reason):
    """The one banner line of a pure build, once per setup.py run."""
    if not _announced:
        _announced.append(reason)
        sys.stderr.write("*** fastfcgi: pure build (%s) ***\n" % reason)
        sys.stderr.flush()


class BuildPy(build_py):
    # The step every install runs: the place to tell about a pure build
    # decided up front (build_ext does not run without extensions), and to
    # put fastfcgi.pxd beside the extension.

    def run(self):
        build_py.run(self)
        if PURE_REASON is not None:
            announce_pure(PURE_REASON)
        else:
            self.copy_file(os.path.join(HERE, "fastfcgi.pxd"),
                           os.path.join(self.build_lib, "fastfcgi.pxd"))


class BuildExt(build_ext):
    # Cythonizes, then compiles with warnings as errors; any failure turns
    # the build into a pure one instead of a failed install.

    def run(self):
        reason = PURE_REASON
        if reason is None:
            try:
                from Cython.Build import cythonize
                cythonized = cythonize(
                    self.extensions, compiler_directives=CYTHON_DIRECTIVES,
                    quiet=True)
                # Keep setuptools' Extension objects; take the C sources.
                for ext, done in zip(self.extensions, cythonized):
                    ext.sources = done.sources
                build_ext.run(self)
                return
            except Exception as exc:
                if REQUIRE_EXT:
                    raise
                detail = (str(exc).strip().splitlines() or [""])[0]
                if len(detail) > 60:
                    detail = detail[:57] + "..."
                reason = "the extension did not build: %s%s" % (
                    type(exc).__name__, ": " + detail if detail else "")
                self.remove_stale_outputs()
                self.install_pure_fastfcgi()
        announce_pure(reason)

    def build_extension(self, ext):
        if WERROR:
            flag = "/WX" if self.compiler.compiler_type == "msvc" else "-Werror"
            ext.extra_compile_args = list(ext.extra_compile_args) + [flag]
        build_ext.build_extension(self, ext)

    def install_pure_fastfcgi(self):
        # The extension was to be ``fastfcgi``: the pure stand-in takes its
        # place (in place, fastfcgi.py is already beside the sources), and
        # its declarations are of no use without it.
        if not self.inplace:
            self.copy_file(os.path.join(HERE, "fastfcgi.py"),
                           os.path.join(self.build_lib, "fastfcgi.py"))
            pxd = os.path.join(self.build_lib, "fastfcgi.pxd")
            if os.path.exists(pxd):
                os.remove(pxd)

    def remove_stale_outputs(self):
        # An extension left by an earlier build (in place, or in build/lib,
        # which pip reuses for an in-tree build) no longer matches the
        # sources: it must not be imported or end up in the wheel.
        for ext in self.extensions:
            path = self.get_ext_fullpath(ext.name)
            if os.path.exists(path):
                os.remove(path)


setup(
    name="fastfcgi",
    version=read_version(),
    description="A FastCGI application server for Python, with a Cython core "
                "and a pure-Python twin",
    long_description=read_readme(),
    long_description_content_type="text/markdown",
    # fastfcgi.py only where no extension is tried (see BuildExt for one
    # that fails); the stubs are PEP 561 stub-only packages, as a single
    # module cannot carry py.typed.
    py_modules=["fastfcgi_py"] + (["fastfcgi"] if PURE_REASON is not None else []),
    packages=["fastfcgi-stubs", "fastfcgi_py-stubs"],
    package_dir={"fastfcgi-stubs": "stubs/fastfcgi", "fastfcgi_py-stubs": "stubs/fastfcgi_py"},
    package_data={"fastfcgi-stubs": ["*.pyi"], "fastfcgi_py-stubs": ["*.pyi"]},
    ext_modules=([Extension("fastfcgi", ["fastfcgi.pyx"])]
                 if PURE_REASON is None else []),
    entry_points={"console_scripts": ["fastfcgi = fastfcgi_py:main",
                                      "fastfcgi-client = fastfcgi_py:client_main"]},
    cmdclass={"build_py": BuildPy, "build_ext": BuildExt},
    python_requires=">=3.6",
    zip_safe=False,
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: Implementation :: CPython",
        "Programming Language :: Python :: Implementation :: PyPy",
        "Programming Language :: Cython",
        "Topic :: Internet :: WWW/HTTP :: WSGI :: Server",
    ],
)
