#!/usr/bin/env bash
# The test command (README.md): installs what the suite needs, builds the
# compiled core in place, and runs the whole suite on both cores.
#
#   bash tests/run.sh [pytest args...]
#
# PYTHON picks the interpreter (default python3).  FASTFCGI_NO_EXT=1 skips
# the build and runs the pure core only.  Debian packages (nginx, ...) are
# installed with apt-get when missing (root, or sudo without a password),
# and then every front-end test must run: FASTFCGI_REQUIRE_FRONTENDS=1 turns
# a missing one into a failure, not a skip.  FASTFCGI_NO_FRONTENDS=1
# installs no system package and runs the suite without the tests that
# need them (pytest -m "not frontend"), for systems other than Debian.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
select_tests=()

# -- Debian packages: the real web servers the tests put in front of us --------
need=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
have nginx || need+=(nginx-light)
have uwsgi && [ -e /usr/lib/uwsgi/plugins/python3_plugin.so ] || need+=(uwsgi uwsgi-plugin-python3)
have lighttpd || need+=(lighttpd)
[ -e /usr/lib/lighttpd/mod_openssl.so ] || need+=(lighttpd-mod-openssl)
have apache2 || need+=(apache2-bin)
[ -e /usr/lib/apache2/modules/mod_fcgid.so ] || need+=(libapache2-mod-fcgid)
have caddy || need+=(caddy)
have h2o || need+=(h2o)
have haproxy || need+=(haproxy)
have ip || need+=(iproute2)
have cgi-fcgi || need+=(libfcgi-bin)
have spawn-fcgi || need+=(spawn-fcgi)
have openssl || need+=(openssl)
have promtool || need+=(prometheus)
have chromium || need+=(chromium)
if [ "${FASTFCGI_NO_FRONTENDS:-0}" = 1 ]; then
    echo "tests/run.sh: FASTFCGI_NO_FRONTENDS=1: no system packages, no front-end tests"
    need=()
    select_tests=(-m "not frontend")
else
    export FASTFCGI_REQUIRE_FRONTENDS=1
fi
if [ ${#need[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
    echo "tests/run.sh: installing ${need[*]}"
    # The web servers' packages try to start a service on port 80; without
    # an init system that fails and h2o's install then fails too.  The tests
    # start their own instances, so no service is started at all.
    policy=/usr/sbin/policy-rc.d
    if [ ! -e $policy ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee $policy >/dev/null
        $SUDO chmod +x $policy
        trap '$SUDO rm -f '"$policy" EXIT
    fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
    $SUDO rm -f $policy
fi

# -- a private virtualenv with the Python packages -------------------------------
# Named by implementation too: PyPy 3.9 must not reuse CPython 3.9's venv.
VENV=${VENV:-.venv-test-$($PYTHON -c 'import sys; print("%s-%d.%d" % ((sys.implementation.name,) + tuple(sys.version_info[:2])))')}
if [ ! -x "$VENV/bin/python" ]; then
    $PYTHON -m venv "$VENV"
fi
PY="$VENV/bin/python"
# The pip a venv starts with may predate Requires-Python handling (3.6 ships
# pip 18): bring it to the newest one that runs on this interpreter.
case $("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])') in
    3.6) pip_spec="pip==21.3.1" ;;
    3.7) pip_spec="pip<24" ;;
    *) pip_spec="pip" ;;
esac
"$PY" -m pip install -q --disable-pip-version-check --upgrade "$pip_spec"
# The build's requirements (Cython, setuptools, wheel) are pyproject.toml's,
# the one place they are written; then what the tests need.
build_requires=$("$PY" -c '
import re
text = open("pyproject.toml").read()
block = re.search(r"^requires = \[(.*?)\]", text, re.M | re.S).group(1)
print("\n".join(re.findall(r"\"([^\"]+)\"", block)))')
mapfile -t build_requires <<<"$build_requires"
"$PY" -m pip install -q --disable-pip-version-check "${build_requires[@]}" -r tests/requirements.txt

# -- the compiled core, in place ----------------------------------------------------
# A failed build or a compiler warning fails the run: it must never pass
# as a pure one.
# PyPy runs the pure core: nothing to build there.
if [ "${FASTFCGI_NO_EXT:-0}" != 1 ] && [ "$("$PY" -c 'import sys; print(sys.implementation.name)')" = cpython ]; then
    FASTFCGI_REQUIRE_EXT=1 FASTFCGI_WERROR=1 "$PY" setup.py -q build_ext --inplace
fi

"$PY" -m pytest ${select_tests[@]+"${select_tests[@]}"} "$@"
