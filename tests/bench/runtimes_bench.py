#!/usr/bin/env python3
"""Random device reads per second in other runtimes, beside erofs-host, in one run.

    python3 tests/bench/runtimes_bench.py            # the table (`just bench` runs this)
    python3 tests/bench/runtimes_bench.py measure --io-size 4096 --count 100 [--fast-bytes]

`measure` is the Python side, through wasmtime-py (tests/python/erofs_wasm.py), measured
like `erofs-host bench --pattern random`: open fixtures/large with the default options,
then COUNT reads of IO-SIZE bytes at random io-size-aligned offsets; only the reads are
timed. It prints one JSON line. tests/bench/runtimes_bench.mjs does the same in Node.

The table runs, for 4 KiB and 1 MiB reads: erofs-host (native wasmtime), Node (jco),
Python (wasmtime-py, stock), and Python with `fast_bytes` (bulk list<u8> conversion). Each
runtime row is compared with erofs-host run in the same invocation with the same read
count, since the first reads after open are the cold ones. Python's counts are small:
stock wasmtime-py converts byte lists one element at a time.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOST = os.path.join(ROOT, "target/release/erofs-host")
WASM = os.path.join(ROOT, "target/wasm32-wasip2/release/erofs_component.wasm")
LARGE = os.path.join(ROOT, "tests/fixtures/large")
HERE = os.path.dirname(os.path.abspath(__file__))

# (io size, {runtime: read count})
PLAN = [
    (4096, {"node": 2000, "python": 100, "python-fast": 2000}),
    (1 << 20, {"node": 300, "python": 5, "python-fast": 100}),
]


def measure(args):
    sys.path.insert(0, os.path.join(ROOT, "tests/python"))
    import contextlib
    import erofs_wasm

    started = time.perf_counter()
    reader = erofs_wasm.Reader(erofs_wasm.Runtime(WASM))
    ctx = erofs_wasm.fast_bytes() if args.fast_bytes else contextlib.nullcontext()
    with ctx:
        dev = reader.open_device(f"{args.fixture}/meta.erofs", f"{args.fixture}/layer.tar.gz",
                                 f"{args.fixture}/layer.zinfo")
        open_ms = (time.perf_counter() - started) * 1000
        rnd = random.Random(args.seed)
        slots = max(1, dev.size() // args.io_size)
        lat, nbytes = [], 0
        t0 = time.perf_counter()
        for _ in range(args.count):
            t = time.perf_counter()
            nbytes += len(dev.pread(rnd.randrange(slots) * args.io_size, args.io_size))
            lat.append(time.perf_counter() - t)
        seconds = time.perf_counter() - t0
    lat.sort()
    pct = lambda p: lat[round((len(lat) - 1) * p)] * 1e6  # noqa: E731
    import importlib.metadata
    print(json.dumps({
        "runtime": f"wasmtime-py {importlib.metadata.version('wasmtime')}" + (" fast_bytes" if args.fast_bytes else ""),
        "io_size": args.io_size, "count": args.count, "bytes": nbytes, "seconds": seconds,
        "reads_per_s": args.count / seconds, "mb_per_s": nbytes / seconds / 1e6,
        "open_ms": open_ms, "p50_us": pct(0.5), "p99_us": pct(0.99),
    }))


def run_json(cmd, cwd=None):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=cwd)
    return json.loads(out.stdout.strip().splitlines()[-1])


def host(io, count):
    return run_json([HOST, "bench", WASM, "--tarindex", f"{LARGE}/meta.erofs", "--zinfo", f"{LARGE}/layer.zinfo",
                     f"{LARGE}/layer.tar.gz", "--pattern", "random", "--io-size", str(io), "--count", str(count),
                     "--json"])


def have_node():
    return os.path.exists(os.path.join(ROOT, "tests/node/out/erofs.js"))


def have_wasmtime_py():
    return subprocess.run([sys.executable, "-c", "import wasmtime"], capture_output=True).returncode == 0


def runtime_json(name, io, count):
    if name == "node":
        return run_json(["node", os.path.join(HERE, "runtimes_bench.mjs"), "--io-size", str(io), "--count", str(count)])
    cmd = [sys.executable, os.path.abspath(__file__), "measure", "--io-size", str(io), "--count", str(count)]
    return run_json(cmd + (["--fast-bytes"] if name == "python-fast" else []))


def report():
    for path in (HOST, WASM):
        if not os.path.exists(path):
            sys.exit(f"runtimes_bench: {path} is missing; run `just build`")
    available = {"node": have_node(), "python": have_wasmtime_py(), "python-fast": have_wasmtime_py()}
    label = {"node": "Node (jco)", "python": "Python (wasmtime-py)", "python-fast": "Python, fast_bytes"}
    print(f"\nother runtimes: random reads on fixtures/large from open, default options ({os.cpu_count()} cores);"
          " ratio = runtime / erofs-host with the same count, same run")
    print(f"  {'io':<6} {'runtime':<22} {'reads':>6} {'reads/s':>10} {'MB/s':>9} {'p50 us':>9} {'open ms':>8}"
          f" {'erofs-host r/s':>15} {'ratio':>8}")
    for io, counts in PLAN:
        io_label = "4 KiB" if io == 4096 else "1 MiB"
        host_runs = {}
        for name, count in counts.items():
            if count not in host_runs:
                host_runs[count] = host(io, count)
        base = host_runs[max(counts.values())]
        print(f"  {io_label:<6} {'erofs-host (wasmtime)':<22} {base['count']:>6} {base['reads_per_s']:>10.1f}"
              f" {base['mb_per_s']:>9.1f} {base['p50_us']:>9.0f} {base['open_ms']:>8.1f}")
        for name, count in counts.items():
            if not available[name]:
                print(f"  {io_label:<6} {label[name]:<22} SKIPPED ({'tests/node/out missing: run tests/node/run.sh' if name == 'node' else 'python wasmtime not installed'})")
                continue
            r = runtime_json(name, io, count)
            h = host_runs[count]
            print(f"  {io_label:<6} {label[name]:<22} {r['count']:>6} {r['reads_per_s']:>10.1f} {r['mb_per_s']:>9.1f}"
                  f" {r['p50_us']:>9.0f} {r['open_ms']:>8.1f} {h['reads_per_s']:>15.1f} {r['reads_per_s'] / h['reads_per_s']:>7.3f}x")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd")
    m = sub.add_parser("measure", help="measure in this Python (one JSON line)")
    m.add_argument("--io-size", type=int, default=4096)
    m.add_argument("--count", type=int, default=100)
    m.add_argument("--fixture", default=LARGE)
    m.add_argument("--seed", type=int, default=1)
    m.add_argument("--fast-bytes", action="store_true")
    args = p.parse_args()
    if args.cmd == "measure":
        measure(args)
    else:
        report()


if __name__ == "__main__":
    main()
