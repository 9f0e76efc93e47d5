#!/usr/bin/env python3
"""`just bench`: read-path figures on fixtures/large, each beside a reference measured in
the same run, printed as ratios.

References measured here, now:
  - `gzip -dc layer.tar.gz > /dev/null` wall time (the C zlib floor for one pass);
  - a restart-from-checkpoint baseline with our own engine: every read restarts at the
    nearest zinfo checkpoint with no cache (`bench --cold`), which is what erofs-utils
    1.9.3 does on every pread.
The erofs-utils figures from fixtures/README.md (4.0 MB/s sequential in 32 KiB reads,
16.6 MB/s in 128 KiB, 131 random 4 KiB reads/s) are printed beside them for context.
"""
import json, os, subprocess, sys, time

from benchlib import HOST, ROOT, WASM, best, timed

WASM_MINIZ = os.path.join(ROOT, "target/miniz/wasm32-wasip2/release/erofs_component.wasm")
WASM_NO_HEADER_CHECK = os.path.join(ROOT, "target/no-header-check/wasm32-wasip2/release/erofs_component.wasm")
LARGE = os.path.join(ROOT, "tests/fixtures/large")
DEVICE = ["--tarindex", f"{LARGE}/meta.erofs", "--zinfo", f"{LARGE}/layer.zinfo", f"{LARGE}/layer.tar.gz"]


def bench(wasm, *args):
    out = subprocess.run([HOST, "bench", wasm, *DEVICE, "--json", *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def row(name, value, unit, ref_name, ref_value, target=None):
    ratio = value / ref_value if ref_value else float("inf")
    t = f"   target {target}" if target else ""
    print(f"  {name:<44} {value:>12.1f} {unit:<8} {ratio:>8.2f}x {ref_name}{t}")


def main():
    for path in (HOST, WASM):
        if not os.path.exists(path):
            sys.exit(f"bench: {path} is missing; run `just build`")
    print(f"erofs-wasm read path on fixtures/large ({os.cpu_count()} cores); ratios are against references measured in this run\n")

    gzip_s, _ = best(["gzip", "-dc", f"{LARGE}/layer.tar.gz"])
    cat_s, cat_rss = best([HOST, "cat", WASM, *DEVICE, "--jobs", "1"])
    print("whole-device read")
    print(f"  {'gzip -dc layer.tar.gz > /dev/null':<44} {gzip_s*1000:>12.1f} ms")
    print(f"  {'erofs-host cat --jobs 1 (one instance)':<44} {cat_s*1000:>12.1f} ms       {gzip_s/cat_s:>8.2f}x gzip speed   target > 1.00x")
    print(f"  {'erofs-host cat --jobs 1 peak RSS':<44} {cat_rss/1024:>12.1f} MiB      (target <= 64 MiB + 32 MiB cache = 96 MiB)")
    parallel_section(gzip_s, cat_s)

    base32 = bench(WASM, "--pattern", "seq", "--io-size", "32K", "--cold", "--count", "200")
    base128 = bench(WASM, "--pattern", "seq", "--io-size", "128K", "--cold", "--count", "100")
    seq32 = bench(WASM, "--pattern", "seq", "--io-size", "32K")
    seq128 = bench(WASM, "--pattern", "seq", "--io-size", "128K")
    print("\nsequential whole device")
    print(f"  {'baseline: restart per read, 32 KiB (ours)':<44} {base32['mb_per_s']:>12.1f} MB/s     (erofs-utils: 4.0 MB/s)")
    print(f"  {'baseline: restart per read, 128 KiB (ours)':<44} {base128['mb_per_s']:>12.1f} MB/s     (erofs-utils: 16.6 MB/s)")
    row("live cursor + cache, 32 KiB reads", seq32["mb_per_s"], "MB/s", "baseline", base32["mb_per_s"], ">= 300 MB/s")
    row("live cursor + cache, 128 KiB reads", seq128["mb_per_s"], "MB/s", "baseline", base128["mb_per_s"], ">= 300 MB/s")
    print(f"  {'':<44} {seq32['mb_per_s']/4.0:>12.1f}x erofs-utils' 4.0 MB/s (32 KiB)")

    cold = bench(WASM, "--pattern", "random", "--io-size", "4K", "--cold", "--count", "300")
    mixed = bench(WASM, "--pattern", "random", "--io-size", "4K", "--count", "5000")
    warm = bench(WASM, "--pattern", "random", "--io-size", "4K", "--count", "200000", "--warm", "--decode-cache", "64M")
    print("\nrandom 4 KiB reads")
    print(f"  {'cold: every read restarts at a zinfo checkpoint':<44} {cold['reads_per_s']:>12.0f} reads/s  p50 {cold['p50_us']:.0f} us p99 {cold['p99_us']:.0f} us   target >= 200 (erofs-utils: 131)")
    row("first touch: 20 cold reads, zinfo unproven", bench(WASM, "--pattern", "random", "--io-size", "4K", "--cold", "--count", "20")["reads_per_s"], "reads/s", "cold", cold["reads_per_s"])
    row("from open, default 32M cache, learning", mixed["reads_per_s"], "reads/s", "cold", cold["reads_per_s"])
    row("warm (device read once; 64M cache)", warm["reads_per_s"], "reads/s", "cold", cold["reads_per_s"], ">= 50,000")
    print(f"  {'':<44} warm p50 {warm['p50_us']:.1f} us, p99 {warm['p99_us']:.1f} us")

    header_check_section()

    fuse_section()

    if os.path.exists(WASM_MINIZ):
        print("\nthe same with miniz_oxide (the design card's engine)")
        m_seq = bench(WASM_MINIZ, "--pattern", "seq", "--io-size", "32K")
        m_cold = bench(WASM_MINIZ, "--pattern", "random", "--io-size", "4K", "--cold", "--count", "200")
        row("miniz: live cursor, 32 KiB reads", m_seq["mb_per_s"], "MB/s", "zlib-rs", seq32["mb_per_s"])
        row("miniz: cold random 4 KiB", m_cold["reads_per_s"], "reads/s", "zlib-rs", cold["reads_per_s"])
    else:
        print(f"\n(miniz_oxide build not found at {WASM_MINIZ}; `just build-miniz` makes it)")


def header_check_section():
    """Cold first reads of small files through the filesystem interface, with the
    per-file tar header check (the default build) and without it (the `no-header-check`
    reference build), alternating, best of 5 each; and what the check adds."""
    if not os.path.exists(WASM_NO_HEADER_CHECK):
        print(f"\n*** SKIPPED: header check cost (no reference build at {WASM_NO_HEADER_CHECK}; `just build-no-header-check` makes it) ***")
        return
    args = ["--pattern", "files", "--io-size", "32K"]
    runs = {"with": [], "without": []}
    for _ in range(5):
        runs["with"].append(bench(WASM, *args))
        runs["without"].append(bench(WASM_NO_HEADER_CHECK, *args))
    best_with = max(runs["with"], key=lambda r: r["reads_per_s"])
    best_without = max(runs["without"], key=lambda r: r["reads_per_s"])
    print(f"\nper-file tar header check: {best_with['count']} small files (1 B to 32 KiB) read whole, each once, fresh device (best of 5)")
    print(f"  {'without the check (reference build)':<44} {best_without['reads_per_s']:>12.0f} files/s")
    row("with the check (default build)", best_with["reads_per_s"], "files/s", "without", best_without["reads_per_s"], ">= 0.90x")
    added = {k: best_with[k] - best_without[k] for k in ("blob_reads", "remote_requests", "bytes_decoded", "cache_hits", "cache_misses")}
    print(f"  {'what the check adds':<44} {added['blob_reads']:+d} blob reads, {added['remote_requests']:+d} remote requests, "
          f"{added['bytes_decoded']:+d} B decoded, {added['cache_misses']:+d} cache misses, {added['cache_hits']:+d} cache hits")


def parallel_section(gzip_s, one_s):
    """cat with 1, 2 and 4 instances decoding parts at once (zinfo checkpoints), each
    beside gzip -dc and the one-instance cat of this run. Runs alternate between the job
    counts and gzip, so a change in machine load hits all alike."""
    runs = {1: [], 2: [], 4: [], "gzip": []}
    rss = {}
    for _ in range(3):
        runs["gzip"].append(timed(["gzip", "-dc", f"{LARGE}/layer.tar.gz"])[0])
        for jobs in (1, 2, 4):
            wall, peak = timed([HOST, "cat", WASM, *DEVICE, "--jobs", str(jobs)])
            runs[jobs].append(wall)
            rss[jobs] = max(rss.get(jobs, 0), peak)
    gz = min(runs["gzip"])
    one = min(runs[1])
    print(f"\nparallel decode: cat --jobs N ({os.cpu_count()} cores; gzip -dc {gz*1000:.1f} ms in these runs)")
    for jobs in (1, 2, 4):
        t = min(runs[jobs])
        target = "   target <= 0.40x gzip time" if jobs == os.cpu_count() or jobs == 2 else ""
        print(f"  {'cat --jobs ' + str(jobs):<44} {t*1000:>12.1f} ms  {t/gz:>6.2f}x gzip -dc time  {one/t:>5.2f}x scaling  RSS {rss[jobs]/1024:.0f} MiB{target}")


def skipped_without_fuse(banner):
    """Print `banner` with the reason and return True unless we are root with /dev/fuse."""
    if os.geteuid() == 0 and os.path.exists("/dev/fuse"):
        return False
    print(f"{banner} (needs root and /dev/fuse) ***")
    return True


def drop_caches():
    """Cold page cache for every tree walk, when we may (root)."""
    try:
        subprocess.run(["sync"], check=False)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def tar_tree(path):
    """Seconds to archive a whole tree; piped through cat, so GNU tar must read every file."""
    drop_caches()
    start = time.perf_counter()
    subprocess.run(f"tar -cf - -C '{path}' . | cat > /dev/null", shell=True, check=True)
    return time.perf_counter() - start


def fuse_section():
    """tar of the mounted `large` tree through each backend, beside an extracted copy."""
    if skipped_without_fuse("\n*** SKIPPED: FUSE tree walk"):
        return
    import tempfile
    work = tempfile.mkdtemp(prefix="erofs-bench-")
    extracted = os.path.join(work, "extracted")
    os.makedirs(extracted)
    subprocess.run(["tar", "-xzf", f"{LARGE}/layer.tar.gz", "-C", extracted], check=True)
    base = min(tar_tree(extracted) for _ in range(3))
    cold = drop_caches()
    print(f"\ntar -cf - of the whole `large` tree ({'page cache dropped before each run' if cold else 'page cache NOT dropped'})")
    print(f"  {'extracted directory (tar -x), reference':<44} {base*1000:>12.1f} ms")
    for backend in ("fuse", "loop"):
        mp = os.path.join(work, backend)
        os.makedirs(mp)
        times = []
        for _ in range(3):
            # A fresh mount each run: the sandbox starts cold too.
            subprocess.run([HOST, "mount", WASM, f"{LARGE}/layer.tar.gz", mp, *DEVICE[:-1], "--backend", backend], check=True)
            try:
                times.append(tar_tree(mp))
            finally:
                subprocess.run([HOST, "umount", mp], check=True)
        t = min(times)
        target = "   target >= 0.50x" if backend == "fuse" else ""
        print(f"  {'--backend ' + backend + ' (fresh mount)':<44} {t*1000:>12.1f} ms       {base/t:>8.2f}x extracted{target}")
    subprocess.run(["rm", "-rf", work], check=True)


if __name__ == "__main__":
    main()
