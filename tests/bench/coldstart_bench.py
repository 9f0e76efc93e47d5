#!/usr/bin/env python3
"""Cold start of a whole image (`just bench-coldstart`, issue 12.4): lazy mount against a
full pull, through the test harness's link shaper (tests/registry/link.py: 20 ms round
trip, 100 Mbit/s, then 1 Gbit/s) in front of a registry on 127.0.0.1.

The image (built once into target/bench-coldstart/, reused by later runs):
  layer 0  python3's shared libraries (those of /usr/bin/python3 and of its lib-dynload
           modules, by ldd) and the usr-merge symlinks, copied from this machine's
           Debian packages (libc6, libpython3.11, libssl3, zlib1g, libexpat1, ...);
  layer 1  /usr/bin/python3 and /usr/lib/python3.11 (Debian's python3.11 and
           libpython3.11-stdlib packages as installed here, without the test suite);
  layer 2  160 MiB of random bytes (incompressible: ~160 MB gzip) that the command never
           reads.
Each layer's index is published next to the image (`erofs-host index ... --push`), so
the mount finds them in the registry like any user would.

- lazy: from the start of `erofs-host mount COMPONENT oci://... MNT` to the exit of
  `chroot MNT python3 -c 'import json, email, http.client'`; a fresh --cache-dir each
  run, --background-fetch 0 (the bytes are the command's own). Three runs: the
  defaults (recording the access log with --record); --header-samples 0 (no tar headers
  checked at open: each file's header is still checked before its first read); and
  --header-samples 0 with --prefetch of the recorded log.
- full pull: the manifest, the config and every layer downloaded through the same link
  (three at a time, as docker pulls), extracted in order with tar, then the same command.

Printed: both times, their ratio, bytes and requests over the link (the link counts the
bytes it carried; the proxy behind it logs each request). Goal at 100 Mbit/s: lazy <=
0.2x the full pull with bytes <= 10% of the image; with the prefetch list <= 0.1x.
"""
import concurrent.futures
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request

from benchlib import HOST, ROOT, WASM, log_lines  # noqa: E402
HARNESS = os.path.join(ROOT, "tests/registry/harness.py")
CACHE = os.path.join(ROOT, "target/bench-coldstart")
sys.path.insert(0, os.path.join(ROOT, "tests/registry"))
import oci  # noqa: E402

RTT_MS = 20
RATES = [100, 1000]
BIG = 160 << 20
REPO = "bench/coldstart"
COMMAND = ["/usr/bin/python3", "-c", "import json, email, http.client"]
GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def ldd(path):
    out = subprocess.run(["ldd", path], capture_output=True, text=True).stdout
    libs = []
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts and len(parts) >= 3 and parts[2].startswith("/"):
            libs.append(parts[2])
        elif parts and parts[0].startswith("/"):
            libs.append(parts[0])
    return libs


def add_file(tar, src, arcname):
    info = tar.gettarinfo(os.path.realpath(src), arcname)
    with open(src, "rb") as f:
        tar.addfile(info, f)


def add_dirs(tar, arcname, seen):
    parts = arcname.split("/")[:-1]
    for i in range(1, len(parts) + 1):
        d = "/".join(parts[:i])
        if d not in seen:
            seen.add(d)
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)


def layer_bytes(fill, level):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        fill(tar)
    tar_bytes = raw.getvalue()
    return gzip.compress(tar_bytes, compresslevel=level, mtime=0), tar_bytes


def libs_layer(tar):
    seen = set()
    sofiles = [os.path.join(dp, f) for dp, _, fs in os.walk("/usr/lib/python3.11/lib-dynload") for f in fs
               if f.endswith(".so")]
    libs = sorted({lib for p in ["/usr/bin/python3", *sofiles] for lib in ldd(p)})
    for lib in libs:
        name = os.path.basename(lib)
        arc = f"usr/lib64/{name}" if "ld-linux" in name else f"usr/lib/x86_64-linux-gnu/{name}"
        add_dirs(tar, arc, seen)
        add_file(tar, lib, arc)
    for link, target in [("lib", "usr/lib"), ("lib64", "usr/lib64")]:
        info = tarfile.TarInfo(link)
        info.type, info.linkname = tarfile.SYMTYPE, target
        tar.addfile(info)
    info = tarfile.TarInfo("tmp")
    info.type, info.mode = tarfile.DIRTYPE, 0o1777
    tar.addfile(info)


def python_layer(tar):
    seen = set()
    add_dirs(tar, "usr/bin/python3", seen)
    add_file(tar, "/usr/bin/python3", "usr/bin/python3")

    def skip(name):
        return name.startswith("usr/lib/python3.11/test/") or name == "usr/lib/python3.11/test"
    tar.add("/usr/lib/python3.11", "usr/lib/python3.11", filter=lambda t: None if skip(t.name) else t)


def big_layer(tar):
    info = tarfile.TarInfo("data/never-read.bin")
    info.size = BIG
    d = tarfile.TarInfo("data")
    d.type, d.mode = tarfile.DIRTYPE, 0o755
    tar.addfile(d)
    tar.addfile(info, io.BytesIO(os.urandom(BIG)))


def build_image():
    """The layers and config, built once into CACHE (rebuilt if a file is missing)."""
    desc_path = os.path.join(CACHE, "image.json")
    if os.path.exists(desc_path):
        d = json.load(open(desc_path))
        if all(os.path.exists(os.path.join(CACHE, l["file"])) for l in d["layers"]):
            return d
    os.makedirs(CACHE, exist_ok=True)
    layers = []
    for i, (name, fill, level) in enumerate([("libs", libs_layer, 6), ("python", python_layer, 6),
                                               ("random", big_layer, 1)]):
        t0 = time.perf_counter()
        blob, tar_bytes = layer_bytes(fill, level)
        f = f"layer{i}-{name}.tar.gz"
        with open(os.path.join(CACHE, f), "wb") as out:
            out.write(blob)
        layers.append({"file": f, "name": name, "size": len(blob), "tar_size": len(tar_bytes),
                       "digest": "sha256:" + hashlib.sha256(blob).hexdigest(),
                       "diff_id": "sha256:" + hashlib.sha256(tar_bytes).hexdigest()})
        print(f"  built layer {i} ({name}): {len(blob)/1e6:.1f} MB gzip, {len(tar_bytes)/1e6:.1f} MB tar "
              f"in {time.perf_counter()-t0:.1f} s", flush=True)
    d = {"layers": layers}
    json.dump(d, open(desc_path, "w"), indent=1)
    return d


def push_image(reg, image):
    client = oci.Client(f"http://{reg['registry']}")
    config = {"architecture": "amd64", "os": "linux",
              "rootfs": {"type": "layers", "diff_ids": [l["diff_id"] for l in image["layers"]]},
              "config": {}}
    cfg = json.dumps(config, sort_keys=True).encode()
    client.push_blob(REPO, cfg)
    for l in image["layers"]:
        with open(os.path.join(CACHE, l["file"]), "rb") as f:
            client.push_blob(REPO, f.read())
    man = {"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
           "config": {"mediaType": oci.OCI_CONFIG, "digest": oci.sha256_digest(cfg), "size": len(cfg)},
           "layers": [{"mediaType": GZIP_LAYER, "digest": l["digest"], "size": l["size"]} for l in image["layers"]]}
    client.push_manifest(REPO, "latest", json.dumps(man).encode(), oci.OCI_MANIFEST)


class Link:
    """The shaper in front of the registry, and what it carried since `mark`."""

    def __init__(self, regdir, rate):
        argv = [sys.executable, HARNESS, "proxy", "--workdir", regdir, "--rtt-ms", str(RTT_MS),
                "--rate-mbit", str(rate), "--plain", "--watch-pid", str(os.getpid())]
        self.info = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)
        self.mark()

    def mark(self):
        self.links0 = len(log_lines(self.info["links_log"]))
        self.requests0 = len(log_lines(self.info["log"]))

    def carried(self):
        """(bytes down, requests) since mark; connections are logged when they close."""
        time.sleep(0.3)
        down = sum(e.get("down", 0) for e in log_lines(self.info["links_log"])[self.links0:])
        return down, len(log_lines(self.info["log"])) - self.requests0


def run_command(root):
    out = subprocess.run(["chroot", root, *COMMAND], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"chroot {root} python3: {out.stderr.strip()[-400:]}")


def full_pull(link, image, work):
    base = link.info["url"]
    root = os.path.join(work, "rootfs")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    link.mark()
    t0 = time.perf_counter()

    def get(path, accept=None):
        req = urllib.request.Request(base + path, headers={"Accept": accept} if accept else {})
        with urllib.request.urlopen(req) as r:
            return r.read()

    man = json.loads(get(f"/v2/{REPO}/manifests/latest", oci.OCI_MANIFEST))
    get(f"/v2/{REPO}/blobs/{man['config']['digest']}")
    files = []
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        def download(layer):
            path = os.path.join(work, layer["digest"].replace(":", "-"))
            with open(path, "wb") as f:
                f.write(get(f"/v2/{REPO}/blobs/{layer['digest']}"))
            return path
        files = list(pool.map(download, man["layers"]))
    for path in files:
        subprocess.run(["tar", "-xzf", path, "-C", root], check=True)
    run_command(root)
    took = time.perf_counter() - t0
    down, requests = link.carried()
    for path in files:
        os.remove(path)
    shutil.rmtree(root, ignore_errors=True)
    return took, down, requests


def lazy(link, work, extra):
    mnt = os.path.join(work, "mnt")
    cache = os.path.join(work, "cache")
    shutil.rmtree(cache, ignore_errors=True)
    os.makedirs(mnt, exist_ok=True)
    ref = f"oci://{link.info['proxy']}/{REPO}:latest"
    link.mark()
    t0 = time.perf_counter()
    subprocess.run([HOST, "mount", WASM, ref, mnt, "--insecure", "--cache-dir", cache,
                    "--background-fetch", "0", *extra], check=True, capture_output=True)
    try:
        t_mounted = time.perf_counter() - t0
        run_command(mnt)
        took = time.perf_counter() - t0
        time.sleep(1.1)  # the layers publish their counters once a second
        stats = json.loads(subprocess.run([HOST, "stats", mnt, "--json"], capture_output=True,
                                          text=True, check=True).stdout)
    finally:
        subprocess.run([HOST, "umount", mnt], capture_output=True)
    down, requests = link.carried()
    shutil.rmtree(cache, ignore_errors=True)
    return took, t_mounted, down, requests, stats


def main():
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        print("!!!!!!!! SKIPPED: cold-start benchmark (needs root for chroot and the overlay merge, and /dev/fuse)")
        return
    image = build_image()
    total = sum(l["size"] for l in image["layers"])
    work = tempfile.mkdtemp(prefix="erofs-coldstart-")
    regdir = os.path.join(work, "registry")
    started = subprocess.run([sys.executable, HARNESS, "start", "--auth", "none", "--workdir", regdir,
                              "--images", "basic", "--watch-pid", str(os.getpid())], capture_output=True, text=True)
    if started.returncode != 0:
        print(f"!!!!!!!! SKIPPED: cold-start benchmark (the test registry did not start: {started.stderr.strip()[-300:]})")
        return
    reg = json.loads(started.stdout)
    try:
        push_image(reg, image)
        subprocess.run([HOST, "index", WASM, f"oci://{reg['registry']}/{REPO}:latest", "--push", "--aufs", "--insecure",
                        "--quiet"], check=True)
        sizes = ", ".join(f"{l['name']} {l['size']/1e6:.1f} MB" for l in image["layers"])
        print(f"cold start: {len(image['layers'])} layers, {total/1e6:.1f} MB compressed ({sizes}); "
              f"link {RTT_MS} ms RTT; command: chroot MNT {' '.join(COMMAND)}")
        record = os.path.join(work, "access.log")
        for rate in RATES:
            link = Link(regdir, rate)
            full, full_down, full_req = full_pull(link, image, work)
            print(f"  {rate:4d} Mbit/s  full pull          {full:7.2f} s   {full_down/1e6:7.1f} MB  {full_req:4d} requests")
            runs = [("lazy", ["--record", record]),
                    ("lazy, no samples", ["--header-samples", "0"]),
                    ("lazy + prefetch", ["--prefetch", record, "--header-samples", "0"])]
            for name, extra in runs:
                took, mounted, down, requests, stats = lazy(link, work, extra)
                t = stats["total"]
                goal = {"lazy": 0.2, "lazy, no samples": 0.2, "lazy + prefetch": 0.1}[name]
                verdict = ""
                if rate == 100:
                    ok = took <= goal * full and down <= 0.1 * total
                    verdict = f"  goal <= {goal}x and <= 10% of the image: " \
                              f"{'ok' if ok else 'MISSED'}"
                print(f"  {rate:4d} Mbit/s  {name:<18} {took:7.2f} s   {down/1e6:7.1f} MB  {requests:4d} requests"
                      f"  ratio {took/full:5.3f}x  bytes {100*down/total:4.1f}% of the image"
                      f"  (mount {mounted:.2f} s; layers' blobs: {t['registry_bytes_fetched']/1e6:.1f} MB in "
                      f"{t['registry_requests']} requests, {t['disk_cache_hits']} disk-cache hits){verdict}",
                      flush=True)
                if name == "lazy" and rate == RATES[0]:
                    lines = len(log_lines(record))
                    print(f"                recorded access log: {lines} regions")
    finally:
        subprocess.run([sys.executable, HARNESS, "stop", "--workdir", regdir], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
