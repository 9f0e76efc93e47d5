#!/usr/bin/env python3
"""Regenerate the extra interoperability images in this folder (not run by the tests).

The fixtures in shared/fixtures only cover what `mkfs.erofs --tar=i` writes (512-byte blocks, chunk
indexes into a tar device). These images come from Debian's erofs-utils 1.5 `mkfs.erofs` and cover
the rest of the uncompressed format: 4 KiB blocks, compact inodes, FLAT_PLAIN data, 4-byte chunk
block maps, shared xattrs, POSIX ACL xattrs, a large multi-block directory, and LZ4 compression
(which the reader must refuse cleanly).

Each image is stored as image.erofs.gz and gets an expected.json in the fixtures' schema, taken from the **Linux kernel**'s view
(`mount -t erofs -o loop,ro`), so the tests compare against the reference implementation.

Needs root, `apt-get install erofs-utils attr`, and a kernel with erofs and loop.
usage: sudo python3 make_images.py
"""
import hashlib, json, os, random, shutil, stat, subprocess, sys, tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
UUID = "6b0bdf33-0000-4000-8000-000000000002"

IMAGES = {
    # name: extra mkfs.erofs options
    "compact4k": ["-x2", "-T1700000001"],
    "chunked4k": ["--chunksize=8192", "-x2", "-T1700000002", "-Eforce-inode-extended"],
    "lz4": ["-zlz4", "-T1700000003"],
}


def posix_acl(entries):
    """Raw system.posix_acl_access value: version 2, then (tag u16, perm u16, id u32) entries."""
    out = (2).to_bytes(4, "little")
    for tag, perm, ident in entries:
        out += tag.to_bytes(2, "little") + perm.to_bytes(2, "little") + ident.to_bytes(4, "little")
    return out


def build_tree(root):
    rnd = random.Random(1234)
    os.makedirs(f"{root}/sizes")
    for n in [0, 1, 100, 4095, 4096, 4097, 8191, 8192, 8193, 20000, 65536, 70001]:
        with open(f"{root}/sizes/f{n}", "wb") as f:
            # Mostly text, with a sprinkle of random bytes (keeps the images small).
            f.write(bytes(rnd.getrandbits(8) if i % 61 == 0 else 65 + i % 26 for i in range(n)))
    with open(f"{root}/sizes/sparse", "wb") as f:
        f.truncate(40000)
        f.seek(30000)
        f.write(b"tail data after a hole")
    os.makedirs(f"{root}/big")
    for i in range(500):
        with open(f"{root}/big/entry-{i:04d}-" + "y" * (i % 40), "w") as f:
            if i % 50 == 0:
                f.write(str(i))
    os.makedirs(f"{root}/links")
    os.symlink("../sizes/f1", f"{root}/links/rel")
    os.symlink("/" + "z" * 1000, f"{root}/links/long")
    os.link(f"{root}/sizes/f100", f"{root}/links/hard")
    os.makedirs(f"{root}/special")
    os.mkfifo(f"{root}/special/fifo")
    os.mknod(f"{root}/special/chr", 0o620 | stat.S_IFCHR, os.makedev(4, 64))
    os.mknod(f"{root}/special/blk", 0o600 | stat.S_IFBLK, os.makedev(259, 70000))
    os.makedirs(f"{root}/xattrs")
    for i in range(3):
        p = f"{root}/xattrs/shared{i}"
        with open(p, "w") as f:
            f.write("s")
        # Appears on several inodes: mkfs -x2 makes it a shared xattr.
        os.setxattr(p, "user.common", b"same value everywhere")
        os.setxattr(p, "trusted.common", b"T")
        os.setxattr(p, f"user.own{i}", b"v" * (i * 50))
    os.setxattr(f"{root}/xattrs", "security.label", b"dirlabel")
    os.setxattr(f"{root}/xattrs/shared0", "system.posix_acl_access",
                posix_acl([(1, 6, 0xFFFFFFFF), (2, 4, 1234), (4, 4, 0xFFFFFFFF),
                           (0x10, 4, 0xFFFFFFFF), (0x20, 4, 0xFFFFFFFF)]))
    os.chown(f"{root}/sizes/f1", 70000, 80000)
    os.chmod(f"{root}/sizes/f100", 0o4751)
    for d, _, files in os.walk(root):
        for n in files:
            p = os.path.join(d, n)
            if not os.path.islink(p):
                os.utime(p, ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))


def describe(root, rel):
    """Same fields as shared/tools/check-tree.py."""
    p = os.path.join(root, rel)
    st = os.lstat(p)
    e = {"path": rel, "mode": oct(st.st_mode), "uid": st.st_uid, "gid": st.st_gid,
         "size": st.st_size, "mtime_ns": st.st_mtime_ns, "nlink": st.st_nlink}
    if stat.S_ISREG(st.st_mode):
        try:
            with open(p, "rb") as f:
                e["sha256"] = hashlib.sha256(f.read()).hexdigest()
        except OSError:
            e["sha256"] = None
    elif stat.S_ISLNK(st.st_mode):
        e["target"] = os.readlink(p)
    elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        e["rdev"] = [os.major(st.st_rdev), os.minor(st.st_rdev)]
    xs = {}
    for k in sorted(os.listxattr(p, follow_symlinks=False)):
        xs[k] = os.getxattr(p, k, follow_symlinks=False).hex()
    if xs:
        e["xattrs_hex"] = xs
    return e


def main():
    tmp = tempfile.mkdtemp()
    try:
        src = f"{tmp}/src"
        build_tree(src)
        for name, opts in IMAGES.items():
            out = os.path.join(HERE, name)
            os.makedirs(out, exist_ok=True)
            img = f"{tmp}/{name}.erofs"
            subprocess.run(["mkfs.erofs", "--quiet", f"-U{UUID}", *opts, img, src], check=True)
            mnt = f"{tmp}/mnt-{name}"
            os.makedirs(mnt)
            subprocess.run(["mount", "-t", "erofs", "-o", "loop,ro", img, mnt], check=True)
            try:
                entries = []
                for d, dirs, files in os.walk(mnt):
                    dirs.sort()
                    for n in sorted(dirs + files):
                        entries.append(describe(mnt, os.path.relpath(os.path.join(d, n), mnt)))
                root = describe(mnt, ".")
            finally:
                subprocess.run(["umount", mnt], check=True)
            doc = {"image_size": os.path.getsize(img), "mkfs_options": opts, "root": root,
                   "entries": entries}
            # Stored gzipped (the tests inflate it with `gzip -dc`).
            with open(os.path.join(out, "image.erofs.gz"), "wb") as f:
                subprocess.run(["gzip", "-n", "-9", "-c", img], stdout=f, check=True)
            with open(os.path.join(out, "expected.json"), "w") as f:
                json.dump(doc, f, separators=(",", ":"))
            print(name, len(entries), "entries", os.path.getsize(img), "bytes")
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    sys.exit(main())
