#!/bin/sh
# Build a test image with buildah (Debian's) and push it to a registry on loopback.
#
#   tests/image/build.sh WORKDIR REGISTRY(host:port) REPOSITORY
#
# Storage is vfs under WORKDIR (root and runroot), so nothing is left on the machine;
# the caller removes WORKDIR. The image is FROM scratch, four layers:
#   0  python3 and its libraries copied from this machine (ldd), /usr/lib/python3.11,
#      usr-merge symlinks, and the files the later layers change;
#   1  a deleted file, a deleted directory, a replaced directory (opaque: everything
#      below is hidden, new content on top), a new file;
#   2  copy-ups: a file from layer 0 appended to, another only chmod'ed and chown'ed,
#      a file that layer 1 added deleted again;
#   3  a directory replaced by a file and a file replaced by a directory.
# It is pushed twice: REPOSITORY:oci (OCI manifest) and REPOSITORY:v2s2 (Docker schema 2).
# Prints the two references.
set -eu
work=$1
registry=$2
repo=$3
b() { buildah --root "$work/root" --runroot "$work/runroot" --storage-driver vfs "$@"; }

layer() { # layer NAME FROM: a new working container, mounted; prints "ctr mnt"
    ctr=$(b from --pull-never "$2")
    mnt=$(b mount "$ctr")
    echo "$ctr $mnt"
}

# --- layer 0: python3 from this machine, and the files to change later -------------
set -- $(layer base scratch)
ctr=$1 m=$2
mkdir -p "$m/usr/bin" "$m/usr/lib/x86_64-linux-gnu" "$m/usr/lib64" "$m/etc" "$m/tmp"
cp -L /usr/bin/python3 "$m/usr/bin/python3"
for lib in $(ldd /usr/bin/python3 | awk '/=>/ {print $3} /ld-linux/ {print $1}'); do
    case "$lib" in
        */ld-linux*) cp -L "$lib" "$m/usr/lib64/" ;;
        *) cp -L "$lib" "$m/usr/lib/x86_64-linux-gnu/" ;;
    esac
done
ln -s usr/lib "$m/lib"
ln -s usr/lib64 "$m/lib64"
cp -a /usr/lib/python3.11 "$m/usr/lib/python3.11"
rm -rf "$m/usr/lib/python3.11/test" "$m/usr/lib/python3.11/idlelib"
chmod 1777 "$m/tmp"
mkdir -p "$m/etc/dir-to-delete/sub" "$m/opt/replaced/old-sub" "$m/data/dir-to-file"
echo "going" > "$m/etc/file-to-delete"
echo "a" > "$m/etc/dir-to-delete/a"
echo "b" > "$m/etc/dir-to-delete/sub/b"
echo "old 1" > "$m/opt/replaced/old1"
echo "old 2" > "$m/opt/replaced/old-sub/old2"
printf 'first line\n' > "$m/data/copyup.txt"
echo "meta only" > "$m/data/chmod-me"
echo "kept" > "$m/data/keep"
echo "x" > "$m/data/dir-to-file/x"
echo "plain" > "$m/data/file-to-dir"
ln -s ../data/keep "$m/etc/link-to-keep"
mkfifo "$m/data/fifo"
mknod "$m/data/null-dev" c 1 3
setfattr -n user.origin -v layer0 "$m/data/keep"
touch -d '2020-02-02 02:02:02.123456789' "$m/data/keep"
b umount "$ctr" >/dev/null
b commit --quiet --format oci "$ctr" erofs-test:l0 >/dev/null
b rm "$ctr" >/dev/null

# --- layer 1: deletions, an opaque directory, a new file -----------------------------
set -- $(layer l1 erofs-test:l0)
ctr=$1 m=$2
rm "$m/etc/file-to-delete"
rm -r "$m/etc/dir-to-delete"
# A replaced directory. vfs computes diffs by comparing trees, which yields one whiteout
# per removed child; an overlay-based builder (docker, buildah on overlay) marks the new
# directory opaque instead. The marker is written as a builder on overlay writes it.
rm -r "$m/opt/replaced"
mkdir "$m/opt/replaced"
echo "new" > "$m/opt/replaced/new"
: > "$m/opt/replaced/.wh..wh..opq"
echo "added in 1" > "$m/data/added-in-1"
echo "to go in 2" > "$m/data/short-lived"
b umount "$ctr" >/dev/null
b commit --quiet --format oci "$ctr" erofs-test:l1 >/dev/null
b rm "$ctr" >/dev/null

# --- layer 2: copy-ups --------------------------------------------------------------
set -- $(layer l2 erofs-test:l1)
ctr=$1 m=$2
printf 'second line\n' >> "$m/data/copyup.txt"
chmod 0600 "$m/data/chmod-me"
chown 1234:5678 "$m/data/chmod-me"
rm "$m/data/short-lived"
setfattr -n user.changed -v layer2 "$m/data/keep"
b umount "$ctr" >/dev/null
b commit --quiet --format oci "$ctr" erofs-test:l2 >/dev/null
b rm "$ctr" >/dev/null

# --- layer 3: type changes ------------------------------------------------------------
set -- $(layer l3 erofs-test:l2)
ctr=$1 m=$2
rm -r "$m/data/dir-to-file"
echo "now a file" > "$m/data/dir-to-file"
rm "$m/data/file-to-dir"
mkdir "$m/data/file-to-dir"
echo "inside" > "$m/data/file-to-dir/inside"
b umount "$ctr" >/dev/null
b commit --quiet --format oci "$ctr" erofs-test:l3 >/dev/null
b rm "$ctr" >/dev/null

b push --quiet --tls-verify=false --format oci erofs-test:l3 "docker://$registry/$repo:oci"
b push --quiet --tls-verify=false --format v2s2 erofs-test:l3 "docker://$registry/$repo:v2s2"
echo "$registry/$repo:oci"
echo "$registry/$repo:v2s2"
