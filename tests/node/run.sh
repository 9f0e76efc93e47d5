#!/usr/bin/env bash
# `just test-runtimes`, Node part: the component through jco (tests/node).
# Installs the locked npm packages when they are missing (npm ci), transpiles the release
# component into out/, then runs `node --test`. Skips, loudly, without node 20+ and npm.
set -euo pipefail
cd "$(dirname "$0")"
skip() {
    echo "!!!!!!!! SKIPPED: Node runtime tests (jco): $1" >&2
    exit 0
}
command -v node >/dev/null || skip "node not found"
command -v npm >/dev/null || skip "npm not found"
major=$(node -p 'process.versions.node.split(".")[0]')
[ "$major" -ge 20 ] || skip "node $(node --version) is older than 20"

wasm=../../target/wasm32-wasip2/release/erofs_component.wasm
[ -f "$wasm" ] || { echo "tests/node: $wasm is missing: run \`just build\`" >&2; exit 1; }
if [ ! -x node_modules/.bin/jco ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    echo "== npm ci (tests/node)"
    npm ci --no-audit --no-fund --loglevel=error
fi
echo "== jco $(node_modules/.bin/jco --version) transpile, node $(node --version)"
rm -rf out
node_modules/.bin/jco transpile "$wasm" -o out --name erofs --quiet \
    --map 'erofs:reader/vfile=../vfile.js' --map 'wasi:http/outgoing-handler=../deny-http.js'
exec node --test "$@" erofs.test.mjs
