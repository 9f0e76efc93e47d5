# Sourced by tests/build-*-check.sh (which set $scratch to a name): a scratch directory
# $work with a mount point $mnt, unmounted and removed on every exit, failure included.
work=$(mktemp -d "/tmp/$scratch.XXXXXX")
mnt=$work/mnt
mkdir -p "$mnt"
cleanup() {
    if mountpoint -q "$mnt"; then umount "$mnt"; fi
    rm -rf "$work"
}
trap cleanup EXIT INT TERM
