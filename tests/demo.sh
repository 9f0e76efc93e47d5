#!/usr/bin/env bash
# `just demo`: index a sample container layer (the tar index and zinfo built inside the
# WebAssembly sandbox from the blob alone), then mount it lazily with that index, look
# around, read a file, and unmount. No mkfs.erofs needed.
set -euo pipefail
cd "$(dirname "$0")/.."
host=target/release/erofs-host
wasm=target/wasm32-wasip2/release/erofs_component.wasm
layer=tests/fixtures/basic
work=$(mktemp -d)
mnt="$work/mnt"
mkdir -p "$mnt"
cleanup() {
    "$host" umount "$mnt" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

meta="$work/meta.erofs"
zinfo="$work/layer.zinfo"
echo "== sample layer: $layer/layer.tar.gz (a gzip'd tar, as a registry serves it)"
ls -l "$layer"/layer.tar.gz
echo
echo "== erofs-host index: the EROFS tar index and the zinfo, built in the sandbox"
"$host" index "$wasm" "$layer/layer.tar.gz" --tarindex "$meta" --zinfo "$zinfo"
ls -l "$meta" "$zinfo"
echo
echo "== erofs-host cat: the device (meta ‖ tar), decoded inside the sandbox"
"$host" cat "$wasm" --tarindex "$meta" --zinfo "$zinfo" "$layer/layer.tar.gz" > "$work/device.img"
ours=$(sha256sum < "$work/device.img" | cut -d' ' -f1)
want=$( (cat "$meta"; gzip -dc "$layer/layer.tar.gz") | sha256sum | cut -d' ' -f1)
echo "device sha256 $ours"
echo "meta ‖ gunzip $want"
[ "$ours" = "$want" ] && echo "identical" || { echo "MISMATCH"; exit 1; }
echo

if [ "$(id -u)" != 0 ] || [ ! -e /dev/fuse ]; then
    echo "*** not root or no /dev/fuse: skipping the mount part of the demo ***"
    exit 0
fi
echo "== erofs-host mount (FUSE; the kernel never parses the image's metadata)"
"$host" mount "$wasm" "$layer/layer.tar.gz" "$mnt" --tarindex "$meta" --zinfo "$zinfo"
echo
echo "== ls -l $mnt"
ls -l "$mnt"
echo
echo "== a few entries with their details"
ls -l "$mnt/special" "$mnt/xattrs"
echo
echo "== extended attributes of xattrs/file"
getfattr -d -m - "$mnt/xattrs/file" 2>/dev/null || echo "(getfattr not installed)"
echo
echo "== the first line of big/text-5m, read lazily from the middle of the gzip stream"
head -c 80 "$mnt/big/text-5m"; echo
echo "sha256 of big/bin-9m: $(sha256sum < "$mnt/big/bin-9m" | cut -d' ' -f1)"
echo
echo "== erofs-host umount"
"$host" umount "$mnt"
echo "unmounted"
