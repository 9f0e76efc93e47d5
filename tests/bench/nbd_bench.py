#!/usr/bin/env python3
"""NBD overhead on fixtures/large: `nbdcopy` of the whole device from `erofs-host serve-nbd`
(unix socket) beside `erofs-host cat` of the same device, both best of 3, as a ratio.
Target: NBD adds at most 20% over cat.

Each nbdcopy run gets a fresh server (so its decoded-byte cache is cold, like cat's), and
the clock starts once the server has printed its `serving` line: verification and start-up
are not part of the copy. The second figure includes them (server start to copy done).
"""
import os, shutil, signal, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOST = os.path.join(ROOT, "target/release/erofs-host")
WASM = os.path.join(ROOT, "target/wasm32-wasip2/release/erofs_component.wasm")
LARGE = os.path.join(ROOT, "tests/fixtures/large")
DEVICE = ["--tarindex", f"{LARGE}/meta.erofs", "--zinfo", f"{LARGE}/layer.zinfo", f"{LARGE}/layer.tar.gz"]
RUNS = 3
TARGET = 1.20


def run_checked(cmd):
    """Wall seconds of one run of cmd, its stdout discarded."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"nbd_bench: {' '.join(cmd)} failed: {proc.stderr.decode(errors='replace')}")
    return wall


def nbd_once(tmp, n):
    """(copy seconds, server start to copy done seconds) with a fresh server."""
    sock = os.path.join(tmp, f"bench-{n}.sock")
    err_path = os.path.join(tmp, f"serve-{n}.err")
    started = time.perf_counter()
    with open(err_path, "wb") as err:
        server = subprocess.Popen([HOST, "serve-nbd", WASM, *DEVICE, "--listen", f"unix:{sock}"],
                                  stdout=subprocess.DEVNULL, stderr=err)
    try:
        uri = None
        deadline = time.monotonic() + 60
        while uri is None:
            with open(err_path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    if line.startswith("serving "):
                        uri = line.split(None, 1)[1].strip()
            if uri is None:
                if server.poll() is not None or time.monotonic() > deadline:
                    with open(err_path, encoding="utf-8", errors="replace") as f:
                        sys.exit(f"nbd_bench: serve-nbd did not start: {f.read()}")
                time.sleep(0.005)
        copy = run_checked(["nbdcopy", uri, "null:"])
        total = time.perf_counter() - started
        return copy, total
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def main():
    for path in (HOST, WASM):
        if not os.path.exists(path):
            sys.exit(f"nbd_bench: {path} is missing; run `just build`")
    if shutil.which("nbdcopy") is None:
        print("\n*** SKIPPED: NBD benchmark: nbdcopy is not installed (apt-get install libnbd-bin) ***\n")
        return
    size = os.path.getsize(f"{LARGE}/meta.erofs") + int(
        subprocess.run(["sh", "-c", f"gzip -dc '{LARGE}/layer.tar.gz' | wc -c"],
                       check=True, capture_output=True, text=True).stdout)

    # cat and nbdcopy alternate, so that a change in machine load hits both alike.
    cats, runs = [], []
    with tempfile.TemporaryDirectory(prefix="erofs-nbd-bench-") as tmp:
        for n in range(RUNS):
            cats.append(run_checked([HOST, "cat", WASM, *DEVICE]))
            runs.append(nbd_once(tmp, n))
    cat_s = min(cats)
    copy_s = min(r[0] for r in runs)
    total_s = min(r[1] for r in runs)

    ratio = copy_s / cat_s
    verdict = "met" if ratio <= TARGET else "MISSED"
    mb = size / 1e6
    print(f"NBD export of fixtures/large ({mb:.1f} MB device, {os.cpu_count()} cores), best of {RUNS}")
    print(f"  {'erofs-host cat > /dev/null':<46} {cat_s*1000:>9.1f} ms  {mb/cat_s:>7.1f} MB/s")
    print(f"  {'nbdcopy from serve-nbd (unix socket)':<46} {copy_s*1000:>9.1f} ms  {mb/copy_s:>7.1f} MB/s"
          f"  {ratio:>6.2f}x cat   target <= {TARGET:.2f}x ({verdict})")
    print(f"  {'  same, from server start (verify + open)':<46} {total_s*1000:>9.1f} ms"
          f"  {'':>12} {total_s/cat_s:>6.2f}x cat")


if __name__ == "__main__":
    main()
