#!/usr/bin/env bash
# What a user's install gives, checked in fresh virtualenvs outside the
# source tree:
#   - pip install . with the extension (FASTFCGI_REQUIRE_EXT=1, so a failed
#     build cannot pass as pure) and without it (FASTFCGI_NO_EXT=1): the
#     fastfcgi command names its core, and `import fastfcgi` gives the whole
#     API with fastfcgi.CORE saying which core it is;
#   - the type stubs: mypy's stubtest holds them to the installed modules,
#     and mypy flags a misuse of the API in a user's script;
#   - `cimport fastfcgi` from other Cython code, against the installed .pxd;
#   - python -m build: an sdist and a wheel, the pure wheel py3-none-any,
#     each holding what it should;
#   - FASTFCGI_REQUIRE_EXT=1 where no extension can be built fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
SRC=$PWD
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/work"
pip_in() {  # pip_in VENV ARGS...: quiet, but its failure is ours
    "$1/bin/pip" install -q --disable-pip-version-check "${@:2}" 2>&1 \
        | { grep -v "^WARNING: Running pip as" || true; }
}
fail() { echo "install check: $*"; exit 1; }

# User scripts for mypy: one right, one wrong in two known ways.
cat > "$tmp/work/uses_api.py" <<'PY'
import fastfcgi


def app(request: fastfcgi.Request) -> None:
    request.print_stdout("Status: 200 OK\r\nContent-Type: text/plain\r\n\r\nhi")
    request.finish()


with fastfcgi.Client("127.0.0.1:9000") as client:
    response = client.request({"REQUEST_METHOD": "GET"}, keep_conn=True)
    body: bytes = response.body
    status: int = response.status
parser = fastfcgi.Parser(max_body=1 << 20)
core: str = fastfcgi.CORE
PY
cat > "$tmp/work/misuses_api.py" <<'PY'
import fastfcgi

response = fastfcgi.Client("127.0.0.1:9000").request({"REQUEST_METHOD": "GET"})
text: str = response.body
parser = fastfcgi.Parser(max_body="1M")
PY
cat > "$tmp/work/cimports.pyx" <<'PY'
# cython: language_level=3
from fastfcgi cimport Parser


def buffered(Parser parser):
    """The unparsed bytes, read from the compiled Parser's C fields."""
    return parser._end - parser._start
PY

for mode in compiled pure; do
    venv=$tmp/$mode
    $PYTHON -m venv "$venv"
    if [ $mode = pure ]; then
        env_build=(FASTFCGI_NO_EXT=1)
    else
        env_build=(FASTFCGI_REQUIRE_EXT=1 FASTFCGI_WERROR=1)
    fi
    env "${env_build[@]}" bash -c "$(declare -f pip_in); pip_in '$venv' '$SRC'"
    out=$(cd "$tmp/work" && "$venv/bin/fastfcgi" --version)
    echo "$mode install: $out"
    case "$out" in *"$mode core"*) ;; *) fail "expected the $mode core" ;; esac
    (cd "$tmp/work" && "$venv/bin/python" - "$mode" <<'PY') || fail "import fastfcgi ($mode)"
import sys
import fastfcgi, fastfcgi_py
mode = sys.argv[1]
assert fastfcgi.CORE == mode, (fastfcgi.CORE, fastfcgi.__file__)
assert fastfcgi_py.CORE == "pure"
missing = [name for name in fastfcgi_py.__all__ if not hasattr(fastfcgi, name)]
assert not missing, missing
print("%s install: import fastfcgi gives %s" % (mode, fastfcgi.__file__))
PY
    # mypy runs on CPython 3.8+; the stubs are the same everywhere.
    if "$venv/bin/python" -c 'import sys, platform; sys.exit(not (sys.version_info >= (3, 8) and platform.python_implementation() == "CPython"))'; then
        pip_in "$venv" mypy
        (cd "$tmp/work" && "$venv/bin/python" -m mypy.stubtest fastfcgi_py fastfcgi \
            --ignore-missing-stub) || fail "stubtest ($mode)"
        (cd "$tmp/work" && "$venv/bin/python" -m mypy --strict --no-incremental uses_api.py) \
            || fail "mypy on a correct script ($mode)"
        if (cd "$tmp/work" && "$venv/bin/python" -m mypy --no-incremental misuses_api.py \
                > "$tmp/mypy.out"); then
            fail "mypy passed a wrong script ($mode)"
        fi
        grep -q 'misuses_api.py:4: error: Incompatible types in assignment' "$tmp/mypy.out" \
            && grep -q 'misuses_api.py:5: error: Argument "max_body"' "$tmp/mypy.out" \
            || { cat "$tmp/mypy.out"; fail "mypy did not see the API ($mode)"; }
        echo "$mode install: the stubs match the modules, and mypy checks a user's script"
    fi
    if [ $mode = compiled ]; then
        pip_in "$venv" "Cython>=3.0"
        (cd "$tmp/work" && "$venv/bin/cythonize" -q -i cimports.pyx >/dev/null \
            && "$venv/bin/python" -c '
import cimports, fastfcgi
parser = fastfcgi.Parser()
parser.feed(b"\x01\x01\x00\x01")
assert cimports.buffered(parser) == 4 == parser.buffered
print("compiled install: cimport fastfcgi works from other Cython code")') \
            || fail "cimport fastfcgi"
    fi
done

# FASTFCGI_REQUIRE_EXT=1 where the extension cannot be built is an error.
if FASTFCGI_REQUIRE_EXT=1 FASTFCGI_NO_EXT=1 "$tmp/pure/bin/pip" install -q \
        --disable-pip-version-check "$SRC" > "$tmp/require.out" 2>&1; then
    fail "FASTFCGI_REQUIRE_EXT=1 FASTFCGI_NO_EXT=1 installed"
fi
grep -q "FASTFCGI_REQUIRE_EXT is set" "$tmp/require.out" || { cat "$tmp/require.out"; fail "no clear error"; }
echo "FASTFCGI_REQUIRE_EXT=1 without a build: the install fails, saying why"

# python -m build: the sdist, the wheel built from it, and a pure wheel.
pip_in "$tmp/compiled" build
FASTFCGI_REQUIRE_EXT=1 "$tmp/compiled/bin/python" -m build -o "$tmp/dist" "$SRC" >/dev/null
FASTFCGI_NO_EXT=1 "$tmp/compiled/bin/python" -m build --wheel -o "$tmp/dist-pure" "$SRC" >/dev/null
"$tmp/compiled/bin/python" - "$tmp/dist" "$tmp/dist-pure" <<'PY' || fail "python -m build"
import glob, os, sys, tarfile, zipfile
dist, dist_pure = sys.argv[1:]
stubs = {"fastfcgi-stubs/__init__.pyi", "fastfcgi_py-stubs/__init__.pyi"}
(sdist,) = glob.glob(os.path.join(dist, "fastfcgi-*.tar.gz"))
names = {n.split("/", 1)[1] for n in tarfile.open(sdist).getnames() if "/" in n}
wanted = {"setup.py", "pyproject.toml", "README.md", "LICENSE", "fastfcgi.pyx",
          "fastfcgi.pxd", "fastfcgi.py", "fastfcgi_py.py", "stubs/fastfcgi/__init__.pyi",
          "stubs/fastfcgi_py/__init__.pyi"}
assert wanted <= names, sorted(wanted - names)
(wheel,) = glob.glob(os.path.join(dist, "*.whl"))
assert "-py3-none-any" not in wheel and "linux" in wheel, wheel
names = set(zipfile.ZipFile(wheel).namelist())
assert any(n.startswith("fastfcgi.") and n.endswith(".so") for n in names), names
assert {"fastfcgi_py.py", "fastfcgi.pxd"} | stubs <= names, names
assert "fastfcgi.py" not in names, "the pure stand-in beside the extension"
(pure,) = glob.glob(os.path.join(dist_pure, "*.whl"))
assert pure.endswith("-py3-none-any.whl"), pure
names = set(zipfile.ZipFile(pure).namelist())
assert {"fastfcgi_py.py", "fastfcgi.py"} | stubs <= names, names
assert not any(n.endswith((".so", ".pxd", ".pyx", ".c")) for n in names), names
for path in (sdist, wheel, pure):
    print("python -m build: %s" % os.path.basename(path))
PY
echo "install check passed"
