#!/usr/bin/env bash
# `just test-runtimes`, Python part: the component through wasmtime-py (tests/python).
# Skips, loudly, when python3 or the pinned packages are missing (.ci/run installs them:
# `python3 -m pip install -r tests/python/requirements.txt`).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
skip() {
    echo "!!!!!!!! SKIPPED: Python runtime tests (wasmtime-py): $1" >&2
    echo "!!!!!!!! install with: $PY -m pip install -r tests/python/requirements.txt" >&2
    exit 0
}
command -v "$PY" >/dev/null || skip "$PY not found"
"$PY" -c 'import wasmtime' 2>/dev/null || skip "the python package wasmtime is not installed"
"$PY" -c 'import pytest' 2>/dev/null || skip "the python package pytest is not installed"
want=$(sed -n 's/^wasmtime==//p' requirements.txt)
have=$("$PY" -c 'import importlib.metadata as m; print(m.version("wasmtime"))')
[ "$have" = "$want" ] || echo "warning: wasmtime-py $have is installed; the tests were written for $want" >&2
echo "== Python $("$PY" -c 'import platform; print(platform.python_version())'), wasmtime-py $have"
exec "$PY" -m pytest -q -p no:cacheprovider --durations=5 "$@" test_erofs.py
