#!/usr/bin/env python3
"""`just bench`, index part: `erofs-host index` on fixtures/large (the tar index and zinfo
built in the sandbox from the gzip blob alone), beside references measured in the same run:

  - `gzip -dc layer.tar.gz > /dev/null` (one pass of C zlib: indexing must keep up with it);
  - `$MKFS_EROFS --tar=i --gzinfo=Z META layer.tar.gz` when MKFS_EROFS names a
    mkfs.erofs 1.9 binary (the reference: 0.62x gzip -dc and 14 MiB RSS on a 450 MB layer).

Goal (issue 11): wall <= 0.65x gzip -dc, peak RSS <= 128 MiB. Each figure is the best of 3
runs (RSS: the largest). The plain tar (gzip -dc of the same blob) is indexed too.
"""
import os, subprocess, sys, tempfile, time

from benchlib import HOST, ROOT, WASM, best, timed

BLOB = os.path.join(ROOT, "tests/fixtures/large/layer.tar.gz")


def main():
    for path in (HOST, WASM):
        if not os.path.exists(path):
            sys.exit(f"index bench: {path} is missing; run `just build`")
    work = tempfile.mkdtemp(prefix="erofs-index-bench-")
    meta, zinfo, tar = (os.path.join(work, n) for n in ("meta", "zinfo", "layer.tar"))
    with open(tar, "wb") as f:
        subprocess.run(["gzip", "-dc", BLOB], stdout=f, check=True)
    size = os.path.getsize(BLOB)
    index = [HOST, "index", WASM, BLOB, "--tarindex", meta, "--zinfo", zinfo, "--quiet"]
    timed(index)  # compiles and caches the component once, outside the figures
    gzip_s, gzip_rss = best(["gzip", "-dc", BLOB])
    idx_s, idx_rss = best(index)
    plain_s, plain_rss = best([HOST, "index", WASM, tar, "--tarindex", meta, "--quiet"])
    print(f"\nindex build on fixtures/large ({size / 1e6:.1f} MB gzip, {os.path.getsize(tar) / 1e6:.1f} MB tar); ratios against gzip -dc in this run")
    print(f"  {'gzip -dc layer.tar.gz > /dev/null':<44} {gzip_s * 1000:>12.1f} ms   peak RSS {gzip_rss / 1024:.1f} MiB")
    print(f"  {'erofs-host index (gzip: META + zinfo)':<44} {idx_s * 1000:>12.1f} ms   {idx_s / gzip_s:>5.2f}x gzip -dc   target <= 0.65x")
    print(f"  {'erofs-host index peak RSS':<44} {idx_rss / 1024:>12.1f} MiB  target <= 128 MiB")
    print(f"  {'erofs-host index (plain tar: META)':<44} {plain_s * 1000:>12.1f} ms   {plain_s / gzip_s:>5.2f}x gzip -dc   peak RSS {plain_rss / 1024:.1f} MiB")
    mkfs = os.environ.get("MKFS_EROFS")
    if mkfs:
        ref_meta, ref_zinfo = os.path.join(work, "ref.meta"), os.path.join(work, "ref.zinfo")
        ref_s, ref_rss = best([mkfs, "--tar=i", f"--gzinfo={ref_zinfo}", ref_meta, BLOB])
        print(f"  {'$MKFS_EROFS --tar=i --gzinfo':<44} {ref_s * 1000:>12.1f} ms   {ref_s / gzip_s:>5.2f}x gzip -dc   peak RSS {ref_rss / 1024:.1f} MiB")
        print(f"  {'erofs-host index / mkfs.erofs':<44} {idx_s / ref_s:>12.2f}x")
    else:
        print("  (set MKFS_EROFS=/path/to/mkfs.erofs (1.9) to measure the reference beside it)")
    subprocess.run(["rm", "-rf", work], check=True)


if __name__ == "__main__":
    main()
