#!/bin/sh
# Hostile tars through the index builder (component/src/build). Every refused tar must fail
# with the expected message; every accepted one must give an image that our reader verifies
# and the Linux kernel mounts, with the expected paths. Needs root.
# usage: tests/build-hostile-check.sh [BUILD_INDEX_BINARY]
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-${CARGO_TARGET_DIR:-$here/target}/release/examples/build_index}
scratch=build-hostile
. "$here/tests/build-scratch.sh"
python3 "$here/tests/build-hostile.py" "$work/tars" >/dev/null

passed=0
failed=0
fail() { echo "FAIL $1: $2"; failed=$((failed + 1)); }
for tar in "$work"/tars/*.tar; do
    name=$(basename "$tar" .tar)
    read -r verdict rest <"$work/tars/$name.expect"
    flags=""
    case "$name" in aufs-*) flags="--aufs" ;; esac
    # A hang would be a failure too: give each run 20 seconds.
    if timeout 20 "$bin" "$tar" "$work/meta" --verify $flags >"$work/out" 2>"$work/err"; then
        status=0
    else
        status=$?
    fi
    if [ "$verdict" = refuse ]; then
        if [ $status -eq 1 ] && grep -qF -- "$rest" "$work/err"; then
            echo "ok   $name: refused: $(cut -c1-150 "$work/err")"
            passed=$((passed + 1))
        else
            fail "$name" "want refusal containing '$rest', got status $status: $(cat "$work/err")"
        fi
        continue
    fi
    if [ $status -ne 0 ] || ! grep -q '^verify=ok' "$work/out"; then
        fail "$name" "want acceptance, got status $status: $(cat "$work/err")"
        continue
    fi
    cat "$work/meta" "$tar" >"$work/dev.img"
    if ! mount -t erofs -o loop,ro "$work/dev.img" "$mnt" 2>"$work/err"; then
        fail "$name" "kernel mount failed: $(cat "$work/err")"
        continue
    fi
    bad=""
    for check in $rest; do
        case "$check" in
            !*) [ ! -e "$mnt/${check#!}" ] || bad="$bad $check" ;;
            *=*) p=${check%%=*}; want=${check#*=}
                 [ "$(cat "$mnt/$p" 2>/dev/null)" = "$want" ] || bad="$bad $check" ;;
            *) [ -e "$mnt/$check" ] || bad="$bad $check" ;;
        esac
    done
    ls -laR "$mnt" >/dev/null
    umount "$mnt"
    if [ -n "$bad" ]; then
        fail "$name" "checks failed:$bad"
    else
        echo "ok   $name: accepted, kernel mount checks: $rest"
        passed=$((passed + 1))
    fi
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
