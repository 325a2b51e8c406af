#!/usr/bin/env bash
# The test command (README.md): installs what the suite needs, builds the
# compiled core in place, and runs the whole suite on both cores.
#
#   bash tests/run.sh [pytest args...]
#
# PYTHON picks the interpreter (default python3).  FASTFCGI_NO_EXT=1 skips
# the build and runs the pure core only.  Debian packages (nginx, ...) are
# installed with apt-get when missing (root, or sudo without a password).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

# -- Debian packages: the real web servers the tests put in front of us --------
need=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
have nginx || need+=(nginx-light)
have uwsgi && [ -e /usr/lib/uwsgi/plugins/python3_plugin.so ] || need+=(uwsgi uwsgi-plugin-python3)
if [ ${#need[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
    echo "tests/run.sh: installing ${need[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

# -- a private virtualenv with the Python packages -------------------------------
VENV=${VENV:-.venv-test-$($PYTHON -c 'import sys; print("%d.%d" % sys.version_info[:2])')}
if [ ! -x "$VENV/bin/python" ]; then
    $PYTHON -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
"$PY" -m pip install -q --disable-pip-version-check -r tests/requirements.txt

# -- the compiled core, in place ----------------------------------------------------
if [ "${FASTFCGI_NO_EXT:-0}" != 1 ]; then
    "$PY" setup.py -q build_ext --inplace
fi

exec "$PY" -m pytest "$@"
