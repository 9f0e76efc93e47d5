#!/usr/bin/env bash
# `just setup`: every install step the README's quick start needs on a fresh Debian 12
# machine with Rust. `just demo` and `just test` run it first; it is idempotent and fast
# when everything is present (no network is touched then).
#
# - the wasm32-wasip2 Rust target (the component's build target);
# - Debian packages, as root, with `apt-get update` first, only when one is missing:
#   fuse3 (fusermount3), libnbd-bin (nbdinfo, nbdcopy, nbdfuse) + qemu-utils (real NBD clients),
#   attr (getfattr), docker-registry + apache2-utils + openssl (the test registry with
#   TLS and auth), curl (the network benchmark's reference), pigz, python3 + pip,
#   buildah (builds the whole-image test's image), fuse-overlayfs (the rootless merge),
#   containerd + runc (the snapshotter's test), protobuf-compiler (protoc: the containerd
#   crates compile containerd's gRPC protos when the host is built);
# - the locked npm packages of tests/node (jco) and the pinned PyPI packages of
#   tests/python (wasmtime-py, pytest).
# Without root the apt step is skipped loudly: the tests that need a package say so.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    echo "== rustup target add wasm32-wasip2"
    rustup target add wasm32-wasip2
fi

packages=(fuse3 libnbd-bin qemu-utils attr docker-registry apache2-utils openssl
    curl ca-certificates pigz python3 python3-pip buildah fuse-overlayfs
    containerd runc protobuf-compiler)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "== apt-get install ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q --no-install-recommends "${missing[@]}"
    else
        echo "!!!!!!!! not root (or no apt-get): not installing ${missing[*]};" \
            "the tests that need them will say so" >&2
    fi
fi

if command -v npm >/dev/null; then
    if [ ! -x tests/node/node_modules/.bin/jco ] \
        || [ tests/node/package-lock.json -nt tests/node/node_modules/.package-lock.json ]; then
        echo "== npm ci (tests/node)"
        (cd tests/node && npm ci --no-audit --no-fund --loglevel=error)
    fi
else
    echo "!!!!!!!! no npm on this machine: the Node runtime tests will be SKIPPED" >&2
fi

if ! python3 - <<'PY' 2>/dev/null
import importlib.metadata as m, pathlib, sys
want = {}
for line in pathlib.Path("tests/python/requirements.txt").read_text().splitlines():
    line = line.split("#")[0].strip()
    if "==" in line:
        name, version = line.split("==")
        want[name] = version
sys.exit(0 if all(m.version(n) == v for n, v in want.items()) else 1)
PY
then
    echo "== pip install -r tests/python/requirements.txt"
    python3 -m pip install --quiet --root-user-action=ignore -r tests/python/requirements.txt \
        || python3 -m pip install --quiet --root-user-action=ignore --break-system-packages -r tests/python/requirements.txt
fi
