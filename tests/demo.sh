#!/usr/bin/env bash
# `just demo`: read a sample container layer lazily through the sandboxed component.
set -euo pipefail
cd "$(dirname "$0")/.."
host=target/release/erofs-host
wasm=target/wasm32-wasip2/release/erofs_component.wasm
layer=tests/fixtures/basic
work=$(mktemp -d)
cleanup() {
    mountpoint -q "$work/mnt" 2>/dev/null && umount "$work/mnt"
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

echo "== sample layer: $layer"
ls -l "$layer"/layer.tar.gz "$layer"/meta.erofs "$layer"/layer.zinfo
echo
echo "== erofs-host cat: the device (meta ‖ tar), decoded inside the sandbox"
time "$host" cat "$wasm" --tarindex "$layer/meta.erofs" --zinfo "$layer/layer.zinfo" "$layer/layer.tar.gz" > "$work/device.img"
ours=$(sha256sum < "$work/device.img" | cut -d' ' -f1)
want=$( (cat "$layer/meta.erofs"; gzip -dc "$layer/layer.tar.gz") | sha256sum | cut -d' ' -f1)
echo "device sha256 $ours"
echo "meta ‖ gunzip $want"
[ "$ours" = "$want" ] && echo "identical" || { echo "MISMATCH"; exit 1; }
echo
echo "== a random read in the middle of the 9 MiB file (a range of the device)"
"$host" cat "$wasm" --tarindex "$layer/meta.erofs" --zinfo "$layer/layer.zinfo" "$layer/layer.tar.gz" \
    --offset 6000000 --length 64 | od -A d -t x1 | head -3
echo
if [ "$(id -u)" = 0 ] && mkdir -p "$work/mnt" && mount -t erofs -o loop,ro "$work/device.img" "$work/mnt" 2>/dev/null; then
    echo "== the kernel's EROFS mounts the device: a few entries"
    ls -l "$work/mnt" | head -12
    echo "..."
    echo "text-5m: $(head -c 60 "$work/mnt/big/text-5m" | tr '\n' ' ')"
else
    echo "(not root or no erofs/loop here: skipping the kernel mount part of the demo)"
fi
