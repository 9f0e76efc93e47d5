#!/usr/bin/env python3
"""Write the seed corpora of the fuzz targets into fuzz/corpus/TARGET/, from the small
test fixtures and from inputs made here (nothing big is committed). Idempotent: a seed is
named by its content's hash, and existing files are kept."""

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import struct
import sys
import tarfile
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "tests", "fixtures")


def fixture(*parts):
    with open(os.path.join(FIX, *parts), "rb") as f:
        return f.read()


def tar_of(fixture_dir):
    return gzip.decompress(fixture(fixture_dir, "layer.tar.gz"))


def u32(n):
    return struct.pack("<I", n)


def u64(n):
    return struct.pack("<Q", n)


def zinfo_seeds():
    yield u64(1010) + fixture("aufs", "layer.zinfo")
    yield u64(549530) + fixture("pigz", "layer.zinfo")
    yield u64(100) + u32(0) + u64(1 << 20)  # no checkpoints
    yield u64(100) + fixture("aufs", "layer.zinfo")[:12]  # header only


def gzran_seeds():
    z = fixture("aufs", "layer.zinfo")
    yield u32(len(z)) + z + fixture("aufs", "layer.tar.gz")
    # The same tar as two gzip members, with the one checkpoint of the first.
    tar = tar_of("aufs")
    two = gzip.compress(tar[:4096], mtime=0) + gzip.compress(tar[4096:], mtime=0)
    yield u32(len(z)) + z + two


def tarindex_seeds():
    for name in ("aufs", "pigz"):
        meta = fixture(name, "meta.erofs")
        tar = tar_of(name)
        yield u32(len(meta)) + meta + u64(len(tar)) + tar[:1024]
    meta = fixture("plain-tar", "meta.erofs")
    yield u32(len(meta)) + meta + u64(2549760) + fixture("plain-tar", "layer.tar")[:1024]


def small_tars():
    """Small tars with every kind of member: the builder's seeds, and mkfs.erofs's input."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        def add(name, kind, data=b"", **kw):
            info = tarfile.TarInfo(name)
            info.type = kind
            info.size = len(data)
            info.mtime = 1_700_000_000
            for k, v in kw.items():
                setattr(info, k, v)
            t.addfile(info, io.BytesIO(data) if data else None)
        add("dir", tarfile.DIRTYPE, mode=0o755)
        add("dir/file", tarfile.REGTYPE, b"hello\n" * 100, pax_headers={"SCHILY.xattr.user.a": "1"})
        add("dir/link", tarfile.SYMTYPE, linkname="file")
        add("dir/hard", tarfile.LNKTYPE, linkname="dir/file")
        add("dev", tarfile.CHRTYPE, devmajor=1, devminor=3)
        add("fifo", tarfile.FIFOTYPE)
        add("d/" + "n" * 150, tarfile.REGTYPE, b"long")
        add("dir/.wh.gone", tarfile.REGTYPE)
        for i in range(40):
            add("many/entry-%03d" % i, tarfile.REGTYPE, b"x" * i,
                pax_headers={"SCHILY.xattr.trusted.overlay.opaque": "y"} if i % 7 == 0 else {})
    yield buf.getvalue()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        info = tarfile.TarInfo("g/" + "x" * 200)
        info.size = 3
        t.addfile(info, io.BytesIO(b"abc"))
    yield buf.getvalue()


def erofs_seeds():
    # Small images only: a real layer's thousand inodes make one run take 10 ms.
    yield fixture("aufs", "meta.erofs")
    if shutil.which("mkfs.erofs") is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        # Whole images of the small trees (mkfs.erofs here may predate --tar=i): inline
        # and block data layouts, xattrs, every file type.
        for i, tar in enumerate(small_tars()):
            src, meta = os.path.join(tmp, "%d" % i), os.path.join(tmp, "%d.erofs" % i)
            with tarfile.open(fileobj=io.BytesIO(tar)) as t:
                t.extractall(src, filter="fully_trusted")
            made = subprocess.run(["mkfs.erofs", "-T0", "-x1", "-U", "c0ffee00-0000-4000-8000-000000000001", meta, src],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if made.returncode == 0:
                with open(meta, "rb") as f:
                    yield f.read()


def oci_manifest_seeds():
    digest = "sha256:" + "ab" * 32
    platform = {"architecture": "amd64", "os": "linux"}
    docs = [
        {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
         "manifests": [
             {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest,
              "size": 500, "platform": platform},
             {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest,
              "size": 501, "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
         ]},
        {"schemaVersion": 2,
         "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
         "manifests": [{"digest": digest, "size": 7, "platform": platform}]},
        {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
         "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": digest, "size": 10},
         "layers": [
             {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest,
              "size": 1010},
             {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": "sha256:" + "cd" * 32,
              "size": 10240},
             {"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": digest,
              "size": 3},
         ]},
        {"schemaVersion": 2,
         "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
         "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                     "digest": digest, "size": 1}]},
        {"schemaVersion": 1, "layers": []},
    ]
    for d in docs:
        yield json.dumps(d).encode()


def www_authenticate_seeds():
    yield b'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/debian:pull"'
    yield b'Basic realm="registry", Bearer realm="http://127.0.0.1:5000/token"'
    yield b'Bearer realm="https://x/t?a=b",error="invalid_token" , Negotiate abc123=='
    yield b'Bearer realm="a\\"b,c"\0{"token":"t","expires_in":300}'
    yield b'Basic\0{"access_token":"t","expires_in":"300"}'


def content_range_seeds():
    for v in (b"bytes 0-499/1234", b"bytes */1234", b"bytes 500-999/*", b"BYTES 1-1/2",
              b"bytes  18446744073709551614-18446744073709551614/18446744073709551615"):
        yield v


def url_reference_seeds():
    yield b"https://Registry-1.Docker.IO:443/v2/library/debian/blobs/sha256:abc?x=1#frag\n../other?y"
    yield b"http://[::1]:5000/v2/\n//cdn.example/blob"
    yield b"oci://127.0.0.1:5000/a/b:tag\n?q=1"
    yield b"debian@sha256:" + b"0123456789abcdef" * 4 + b"\n/abs/path"
    yield b"sha256:" + b"ab" * 32


NBD_MAGIC = 0x49484156454F5054
REQ_MAGIC = 0x25609513


def nbd_option(opt, data=b""):
    return struct.pack(">QII", NBD_MAGIC, opt, len(data)) + data


def nbd_request(kind, offset, length, flags=0, cookie=1):
    return struct.pack(">IHHQQI", REQ_MAGIC, flags, kind, cookie, offset, length)


def nbd_seeds():
    name = b"disk"
    go = struct.pack(">I", len(name)) + name + struct.pack(">HHH", 2, 3, 1)
    reads = (nbd_request(0, 0, 4096) + nbd_request(0, 3 << 16, 512, cookie=2)
             + nbd_request(0, (1 << 20) - 1, 2, cookie=3) + nbd_request(3, 0, 0, cookie=4))
    yield struct.pack(">I", 3) + nbd_option(8) + nbd_option(7, go) + reads + nbd_request(2, 0, 0)
    yield (struct.pack(">I", 3) + nbd_option(1, b"") + nbd_request(1, 0, 8, cookie=5) + b"x" * 8
           + nbd_request(4, 0, 4096) + nbd_request(0, 0, 0) + nbd_request(9, 0, 1))
    yield struct.pack(">I", 1) + nbd_option(3) + nbd_option(6, go) + nbd_option(99, b"zz") + nbd_option(2)


def build_tar_seeds():
    yield b"\x40" + tar_of("aufs")
    for i, tar in enumerate(small_tars()):
        yield bytes([1 + 0x7f * i]) + tar


TARGETS = {
    "zinfo": zinfo_seeds, "gzran": gzran_seeds, "tarindex": tarindex_seeds,
    "erofs": erofs_seeds, "oci_manifest": oci_manifest_seeds,
    "www_authenticate": www_authenticate_seeds, "content_range": content_range_seeds,
    "url_reference": url_reference_seeds, "nbd": nbd_seeds, "build_tar": build_tar_seeds,
}


def main():
    wanted = sys.argv[1:] or list(TARGETS)
    for target in wanted:
        out = os.path.join(HERE, "corpus", target)
        os.makedirs(out, exist_ok=True)
        for seed in TARGETS[target]():
            path = os.path.join(out, "seed-" + hashlib.sha1(seed).hexdigest()[:16])
            if not os.path.exists(path):
                with open(path, "wb") as f:
                    f.write(seed)


if __name__ == "__main__":
    main()
