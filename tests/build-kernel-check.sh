#!/bin/sh
# Kernel check of the index builder (component/src/build): for every fixture in
# tests/fixtures, index its layer with our builder, then loop-mount `META ‖ tar` with the
# Linux EROFS driver and compare the tree with the fixture's expected.json. The zinfo is
# checked independently with the system zlib (tests/build-zinfo-check.py).
# Needs root. usage: tests/build-kernel-check.sh [BUILD_INDEX_BINARY] [FIXTURE...]
# (default binary: $CARGO_TARGET_DIR or target, release/examples/build_index).
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-${CARGO_TARGET_DIR:-$here/target}/release/examples/build_index}
[ $# -gt 0 ] && shift
check=${CHECK_TREE:-/work/shared/tools/check-tree.py}
scratch=build-kernel-check
. "$here/tests/build-scratch.sh"

fixtures=${*:-$(cd "$here/tests/fixtures" && ls -d */ | tr -d /)}
failed=0
for name in $fixtures; do
    dir=$here/tests/fixtures/$name
    flags=""
    [ "$name" = aufs ] && flags="--aufs"
    if [ -f "$dir/layer.tar.gz" ]; then
        "$bin" "$dir/layer.tar.gz" "$work/$name.meta" --zinfo "$work/$name.zinfo" $flags >"$work/$name.stats"
        gzip -dc "$dir/layer.tar.gz" >"$work/$name.tar"
        # The zinfo, checked with the system zlib (ctypes), not with our code.
        echo "zinfo $name: $(python3 "$here/tests/build-zinfo-check.py" "$work/$name.zinfo" "$dir/layer.tar.gz" "$work/$name.tar")"
    else
        "$bin" "$dir/layer.tar" "$work/$name.meta" $flags >"$work/$name.stats"
        cp "$dir/layer.tar" "$work/$name.tar"
    fi
    cat "$work/$name.meta" "$work/$name.tar" >"$work/dev.img"
    rm -f "$work/$name.tar"
    mount -t erofs -o loop,ro "$work/dev.img" "$mnt"
    if python3 "$check" "$mnt" "$dir/expected.json" >"$work/$name.check"; then
        echo "PASS $name: $(tail -n1 "$work/$name.check")"
    else
        echo "FAIL $name:"
        head -n 20 "$work/$name.check"
        failed=$((failed + 1))
    fi
    umount "$mnt"
    rm -f "$work/dev.img"
done
[ "$failed" -eq 0 ] || { echo "$failed fixture(s) failed"; exit 1; }
echo "all fixtures pass"
