#!/usr/bin/env bash
# pip install . into fresh virtualenvs, with and without the extension, and
# check which core the installed fastfcgi command runs.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for mode in compiled pure; do
    $PYTHON -m venv "$tmp/$mode"
    if [ $mode = pure ]; then export FASTFCGI_NO_EXT=1; else unset FASTFCGI_NO_EXT; fi
    "$tmp/$mode/bin/pip" install -q --disable-pip-version-check . 2>&1 | grep -v "^WARNING: Running pip as" || true
    out=$(cd "$tmp" && "$tmp/$mode/bin/fastfcgi" --version)
    echo "$mode install: $out"
    case "$out" in *"$mode core"*) ;; *) echo "expected the $mode core"; exit 1 ;; esac
done
