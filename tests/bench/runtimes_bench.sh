#!/usr/bin/env bash
# `just bench`, last part: random 4 KiB and 1 MiB device reads per second in Node (jco)
# and Python (wasmtime-py), beside `erofs-host bench` in the same run (a table with
# ratios). Transpiles the component for Node first (as tests/node/run.sh does); a runtime
# that is missing is shown as SKIPPED.
set -euo pipefail
cd "$(dirname "$0")/../.."
if command -v node >/dev/null && command -v npm >/dev/null; then
    (
        cd tests/node
        [ -x node_modules/.bin/jco ] || npm ci --no-audit --no-fund --loglevel=error
        rm -rf out
        node_modules/.bin/jco transpile ../../target/wasm32-wasip2/release/erofs_component.wasm -o out --name erofs \
            --quiet --map 'erofs:reader/vfile=../vfile.js' --map 'wasi:http/outgoing-handler=../deny-http.js'
    )
fi
exec python3 tests/bench/runtimes_bench.py "$@"
