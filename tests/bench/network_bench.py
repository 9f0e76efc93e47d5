#!/usr/bin/env python3
"""Network benchmark (`just bench`): the `basic` layer from a real registry on 127.0.0.1
through a proxy that adds 20 ms to every request, measured beside a single curl of the
whole blob through the same proxy, in the same run.

- time from `mount` to the first byte of a small file, and the round trips it took after
  the manifest (target: at most 3);
- sequential read of the 9 MiB file through the FUSE mount, against curl's throughput for
  the whole blob (target: at least 80%);
- requests for that read, against erofs-utils' pattern of one request per 128 KiB.
"""
import json, os, subprocess, sys, tempfile, time

from bench import skipped_without_fuse

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOST = os.path.join(ROOT, "target/release/erofs-host")
WASM = os.path.join(ROOT, "target/wasm32-wasip2/release/erofs_component.wasm")
HARNESS = os.path.join(ROOT, "tests/registry/harness.py")
BASIC = os.path.join(ROOT, "tests/fixtures/basic")
LATENCY_MS = 20


def log_lines(path):
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except OSError:
        return []


def main():
    if skipped_without_fuse("*** SKIPPED: network benchmark"):
        return
    work = tempfile.mkdtemp(prefix="erofs-netbench-")
    regdir = os.path.join(work, "registry")
    started = subprocess.run([sys.executable, HARNESS, "start", "--auth", "basic", "--tls", "--workdir", regdir,
                              "--images", "basic", "--watch-pid", str(os.getpid())], capture_output=True, text=True)
    if started.returncode != 0:
        print(f"*** SKIPPED: network benchmark (the test registry did not start: {started.stderr.strip()[-300:]}) ***")
        return
    reg = json.loads(started.stdout)
    mnt = os.path.join(work, "mnt")
    os.makedirs(mnt)
    try:
        proxy = json.loads(subprocess.run([sys.executable, HARNESS, "proxy", "--workdir", regdir, "--fault", "slow",
                                           "--delay-ms", str(LATENCY_MS), "--watch-pid", str(os.getpid())],
                                          capture_output=True, text=True, check=True).stdout)
        image = reg["images"]["basic"]
        ref = "oci://" + image["reference"].replace(reg["registry"], proxy["proxy"])
        env = dict(os.environ, EROFS_REGISTRY_USERNAME=reg["username"], EROFS_REGISTRY_PASSWORD=reg["password"])
        common = ["--tarindex", f"{BASIC}/meta.erofs", "--zinfo", f"{BASIC}/layer.zinfo", "--ca-file", reg["ca_file"]]

        # Mount to the first byte of a small file.
        t0 = time.perf_counter()
        subprocess.run([HOST, "mount", WASM, ref, mnt, *common], env=env, check=True, capture_output=True)
        t_mounted = time.perf_counter()
        with open(os.path.join(mnt, "sizes/f4097"), "rb") as f:
            f.read(1)
        t_first = time.perf_counter()
        log = log_lines(proxy["log"])
        manifest_at = max((i for i, e in enumerate(log) if "/manifests/" in e["path"]), default=-1)
        after_manifest = len(log) - manifest_at - 1
        print(f"network: `basic` over oci:// through a +{LATENCY_MS} ms proxy (TLS, Basic auth)")
        print(f"  mount returned after                       {1000*(t_mounted-t0):8.1f} ms ({manifest_at+1} requests up to the manifest)")
        print(f"  first byte of sizes/f4097 after mount      {1000*(t_first-t0):8.1f} ms total; {after_manifest} round trips after the manifest (target <= 3)")

        # Sequential read of the 9 MiB file.
        before = len(log_lines(proxy["log"]))
        t0 = time.perf_counter()
        with open(os.path.join(mnt, "big/bin-9m"), "rb") as f:
            size = 0
            while True:
                chunk = f.read(1 << 20)
                if not chunk:
                    break
                size += len(chunk)
        t_read = time.perf_counter() - t0
        requests = len(log_lines(proxy["log"])) - before
        ours = size / t_read / 1e6

        t0 = time.perf_counter()
        subprocess.run(["curl", "-sS", "--cacert", reg["ca_file"], "-u", f"{reg['username']}:{reg['password']}",
                        "-o", "/dev/null", f"{proxy['url']}/v2/fixtures/basic/blobs/{image['layer_digest']}"], check=True)
        t_curl = time.perf_counter() - t0
        curl = image["layer_size"] / t_curl / 1e6
        print(f"  sequential read of big/bin-9m              {ours:8.1f} MB/s ({size} B in {1000*t_read:.0f} ms)")
        print(f"  one curl of the whole blob, same proxy     {curl:8.1f} MB/s ({image['layer_size']} B in {1000*t_curl:.0f} ms)")
        print(f"  ratio                                      {ours/curl:8.2f}x   target >= 0.80x")
        # The file's bytes sit in stored deflate blocks, so its compressed span is about
        # its size: erofs-utils would ask for it 128 KiB at a time.
        reference = -(-size // (128 * 1024))
        print(f"  requests for that read                     {requests:8d}    (erofs-utils' pattern: ~{reference} requests of 128 KiB; {reference/max(requests,1):.0f}x fewer)")
    finally:
        subprocess.run([HOST, "umount", mnt], capture_output=True)
        subprocess.run([sys.executable, HARNESS, "stop", "--workdir", regdir], capture_output=True)
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
