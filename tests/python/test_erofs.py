"""The erofs-wasm component in Python, through wasmtime-py (`pytest tests/python`).

The same checks as tests/node. wasmtime-py's stock conversion of `list<u8>` makes one
Python object per byte (about 0.5 s per MiB in each direction), so every test runs inside
`fast_bytes()` (two bulk copies per list) except those in STOCK_BYTES:
  - `test_stock_conversion_basic` checks the stock path itself on `basic`: ranges of the
    device and random reads;
  - the deadline test, whose 50 ms deadline relies on the stock path's slowness.
Reads are still kept moderate:
  - the whole-device sha256 is checked for the fixtures of at most FULL_SHA_LIMIT bytes;
    `basic` and `large` are checked on ranges (the metadata, the meta/tar seam, every
    4 MiB checkpoint span edge, the end), and `test_fast_bytes_whole_device` reads them
    whole;
  - `large` gets LARGE_RANDOM_READS random reads (each cold read there restarts at a
    checkpoint), and FAST_RANDOM_READS random reads of up to 1 MiB.
Also: bad inputs are WitError('bad-input'), a failing vfile is WitError('io'), the
memory cap and the call deadline trap the instance, after which a new one works, and
`open-remote` (in builds that have it) traps, since this host links no wasi:http.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
import random
import tempfile

import pytest
import wasmtime
from wasmtime.component import Record

from erofs_wasm import Reader, Runtime, WitError, fast_bytes, field

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
COMPONENT = os.environ.get("EROFS_WASM_COMPONENT",
                           os.path.join(ROOT, "target", "wasm32-wasip2", "release", "erofs_component.wasm"))

CASES = [
    ("basic", "layer.tar.gz", "layer.zinfo"),
    ("basic", "layer.tar.gz", "layer.v1.zinfo"),
    ("multimember", "layer.tar.gz", "layer.zinfo"),
    ("pigz", "layer.tar.gz", "layer.zinfo"),
    ("aufs", "layer.tar.gz", "layer.zinfo"),
    ("large", "layer.tar.gz", "layer.zinfo"),
    ("plain-tar", "layer.tar", None),
]
IDS = [f"{name}-{zinfo or 'no-zinfo'}" for name, _, zinfo in CASES]

FULL_SHA_LIMIT = 4 << 20
RANDOM_READS = 1000
LARGE_RANDOM_READS = 300
FAST_RANDOM_READS = 300
# Tests that run with wasmtime-py's stock list<u8> conversion (see the module docstring).
STOCK_BYTES = {"test_stock_conversion_basic", "test_deadline_traps_and_a_new_instance_works"}
SPAN = 4 << 20


@pytest.fixture(scope="session")
def runtime() -> Runtime:
    if not os.path.exists(COMPONENT):
        pytest.fail(f"{COMPONENT} is missing: run `just build`")
    return Runtime(COMPONENT)


@pytest.fixture
def reader(runtime: Runtime) -> Reader:
    return Reader(runtime)


@pytest.fixture(autouse=True)
def bulk_bytes(request):
    """Every test but those in STOCK_BYTES runs with the bulk `list<u8>` conversion."""
    if request.node.originalname in STOCK_BYTES:
        yield
    else:
        with fast_bytes():
            yield


@functools.lru_cache(maxsize=2)
def want(name: str, blob: str) -> bytes:
    """meta.erofs ‖ the uncompressed tar: what the device must read as."""
    d = os.path.join(FIXTURES, name)
    exp = expected(name)
    with open(os.path.join(d, "meta.erofs"), "rb") as f:
        meta = f.read()
    with open(os.path.join(d, blob), "rb") as f:
        tar = f.read()
    if blob.endswith(".gz"):
        tar = gzip.decompress(tar)  # all members
    assert len(meta) == exp["meta_size"] and len(tar) == exp["tar_size"]
    assert hashlib.sha256(tar).hexdigest() == exp["tar_sha256"]
    return meta + tar


@functools.lru_cache(maxsize=None)
def expected(name: str) -> dict:
    with open(os.path.join(FIXTURES, name, "expected.json")) as f:
        return json.load(f)


def open_case(reader: Reader, name: str, blob: str, zinfo, **options):
    d = os.path.join(FIXTURES, name)
    return reader.open_device(os.path.join(d, "meta.erofs"), os.path.join(d, blob),
                              os.path.join(d, zinfo) if zinfo else None, **options)


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def read_all(dev, size: int, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    off = 0
    while off < size:
        got = dev.pread(off, chunk)
        assert len(got) == min(chunk, size - off), f"short read at {off}"
        h.update(got)
        off += len(got)
    return h.hexdigest()


def check_ranges(dev, w: bytes, meta_size: int) -> int:
    """The metadata, the seam, each checkpoint span edge, the end; returns bytes read."""
    size = len(w)
    ranges = [(0, 64 << 10), (meta_size - 2048, 4096)]
    ranges += [(meta_size + k * SPAN - 2048, 4096) for k in range(1, (size - meta_size) // SPAN + 1)]
    ranges += [(size - (64 << 10), 64 << 10), (size - 100, 4096)]
    total = 0
    for off, n in ranges:
        got = dev.pread(off, n)
        assert sha(got) == sha(w[off:off + n]), f"pread({off}, {n})"
        total += len(got)
    return total


@pytest.mark.parametrize("name,blob,zinfo", CASES, ids=IDS)
def test_device_bytes(reader, name, blob, zinfo):
    w = want(name, blob)
    meta_size = expected(name)["meta_size"]
    with open_case(reader, name, blob, zinfo) as dev:
        assert dev.size() == len(w)
        assert dev.meta_size() == meta_size
        if len(w) <= FULL_SHA_LIMIT:
            assert read_all(dev, len(w)) == sha(w)
        else:
            check_ranges(dev, w, meta_size)
        assert dev.pread(len(w), 4096) == b""
        assert dev.pread(len(w) + 12345, 1) == b""


@pytest.mark.parametrize("name,blob,zinfo", CASES, ids=IDS)
def test_span_boundaries(reader, name, blob, zinfo):
    """`device.span-boundaries` from Python: ascending from 0, inside the device; a part
    read from its start gives the right bytes (a short read: list<u8> is slow here)."""
    w = want(name, blob)
    with open_case(reader, name, blob, zinfo) as dev:
        starts = dev.span_boundaries()
        assert starts[0] == 0 and all(a < b for a, b in zip(starts, starts[1:]))
        assert starts[-1] < len(w)
        if zinfo is None:
            assert starts == [0]
        at = starts[-1]
        assert dev.pread(at, 4096) == w[at:at + 4096]


@pytest.mark.parametrize("name,blob,zinfo", CASES, ids=IDS)
def test_random_reads(reader, name, blob, zinfo):
    w = want(name, blob)
    size = len(w)
    count = LARGE_RANDOM_READS if name == "large" else RANDOM_READS
    seed = 0x5EED0000 + size % 65536
    rnd = random.Random(seed)
    with open_case(reader, name, blob, zinfo) as dev:
        for i in range(count):
            # Mostly page-sized or smaller, some up to 16 KiB, some at and across the end.
            n = rnd.randint(1, 4096) if rnd.random() < 0.8 else rnd.randint(4097, 16 << 10)
            off = max(0, size - rnd.randint(0, 2 * n)) if rnd.random() < 0.05 else rnd.randrange(size)
            got = dev.pread(off, n)
            assert got == w[off:off + n], f"read {i} (seed {seed:x}): pread({off}, {n})"
        stats = dev.stats()
        assert stats["bytes_decoded"] >= 0


def top_level(name: str) -> list:
    return sorted(e["path"].encode() for e in expected(name)["entries"] if "/" not in e["path"])


@pytest.mark.parametrize("name,blob,zinfo", CASES, ids=IDS)
def test_filesystem(reader, name, blob, zinfo):
    exp = expected(name)
    with reader.open_filesystem(open_case(reader, name, blob, zinfo)) as fs:
        assert fs.device_size() == exp["meta_size"] + exp["tar_size"]
        root = fs.root()
        entries, cookie = [], 0
        while True:
            batch = fs.readdir(root, cookie, 7)
            if not batch:
                break
            entries += batch
            cookie = field(batch[-1], "next_cookie")
        names = [bytes(field(e, "name")) for e in entries]
        assert names[:2] == [b".", b".."]
        assert sorted(names[2:]) == top_level(name)

        # The deepest regular file with data (the first of equals in expected.json order).
        files = [e for e in exp["entries"] if e["mode"].startswith("0o100") and e["size"] > 0]
        pick = max(files, key=lambda e: e["path"].count("/"))
        attrs = fs.lookup_path(pick["path"])
        assert field(attrs, "kind") == "regular"
        assert field(attrs, "size") == pick["size"]
        assert field(attrs, "mode") == int(pick["mode"], 8)
        assert (field(attrs, "uid"), field(attrs, "gid"), field(attrs, "nlink")) == (pick["uid"], pick["gid"], pick["nlink"])
        h, off, ino = hashlib.sha256(), 0, field(attrs, "ino")
        while True:
            got = fs.read(ino, off, 64 << 10)
            if not got:
                break
            h.update(got)
            off += len(got)
        assert off == pick["size"], pick["path"]
        assert h.hexdigest() == pick["sha256"], pick["path"]

        with pytest.raises(WitError) as err:
            fs.lookup(root, b"no such name")
        assert err.value.tag == "not-found"


BASIC = os.path.join(FIXTURES, "basic")
META, BLOB, ZINFO = (os.path.join(BASIC, f) for f in ("meta.erofs", "layer.tar.gz", "layer.zinfo"))


def test_truncated_zinfo_is_bad_input(reader):
    with open(ZINFO, "rb") as f:
        z = f.read()
    with tempfile.TemporaryDirectory() as tmp:
        for cut in (0, 7, 100, len(z) // 2, len(z) - 1):
            p = os.path.join(tmp, f"cut{cut}.zinfo")
            with open(p, "wb") as f:
                f.write(z[:cut])
            with pytest.raises(WitError) as err:
                reader.open_device(META, BLOB, p)
            assert err.value.tag == "bad-input", (cut, err.value)
            assert "zinfo" in err.value.message


def test_garbage_zinfo_is_bad_input(reader):
    with tempfile.NamedTemporaryFile(suffix=".zinfo") as f:
        f.write(random.Random(7).randbytes(4096))
        f.flush()
        with pytest.raises(WitError) as err:
            reader.open_device(META, BLOB, f.name)
        assert err.value.tag == "bad-input"


def test_gzip_without_zinfo_is_bad_input(reader):
    with pytest.raises(WitError) as err:
        reader.open_device(META, BLOB, None)
    assert err.value.tag == "bad-input"


def test_failing_vfile_is_io(reader, runtime):
    runtime.vfiles.fail_paths.add(BLOB)
    try:
        with pytest.raises(WitError) as err:
            reader.open_device(META, BLOB, ZINFO)
        assert err.value.tag == "io"
    finally:
        runtime.vfiles.fail_paths.discard(BLOB)
    # The instance goes on: errors are values, not traps.
    with reader.open_device(META, BLOB, ZINFO) as dev:
        with open(META, "rb") as f:
            assert dev.pread(0, 1024) == f.read(1024)


def test_memory_cap_traps_and_a_new_instance_works(runtime):
    large = os.path.join(FIXTURES, "large")
    small = Reader(runtime, memory_limit=16 << 20)  # below the default 32 MiB cache
    with pytest.raises(wasmtime.WasmtimeError):
        dev = small.open_device(os.path.join(large, "meta.erofs"), os.path.join(large, "layer.tar.gz"),
                                os.path.join(large, "layer.zinfo"))
        for off in range(0, dev.size(), 1 << 20):
            dev.pread(off, 1 << 20)
    with pytest.raises(wasmtime.WasmtimeError):  # a trapped instance cannot be entered again
        small.open_device(META, BLOB, ZINFO)
    with Reader(runtime).open_device(META, BLOB, ZINFO) as dev:
        assert dev.size() == len(want("basic", "layer.tar.gz"))


def test_deadline_traps_and_a_new_instance_works(runtime):
    large = os.path.join(FIXTURES, "large")
    hasty = Reader(runtime, call_timeout=0.05)  # opening `large` takes ~1 s with stock conversions
    with pytest.raises(wasmtime.WasmtimeError) as err:
        hasty.open_device(os.path.join(large, "meta.erofs"), os.path.join(large, "layer.tar.gz"),
                          os.path.join(large, "layer.zinfo"))
    assert "interrupt" in str(err.value)
    with Reader(runtime).open_device(META, BLOB, ZINFO) as dev:
        assert dev.size() == len(want("basic", "layer.tar.gz"))


def test_open_remote_without_http_traps(runtime):
    """The Runtime links no wasi:http by default: the only call that uses it traps."""
    reader = Reader(runtime)
    try:
        open_remote = reader.func("tarindex", "open-remote")
    except LookupError:
        pytest.skip("this build has no tarindex.open-remote")
    assert runtime.imports_http and not runtime.http_linked
    options, remote = (Record(), Record())
    params = open_remote.type(reader.store).params
    for rec, (_, ty) in ((options, params[3]), (remote, params[4])):
        for name, _ in ty.fields:
            setattr(rec, name, None)
    with pytest.raises(wasmtime.WasmtimeError) as err:
        reader.call("tarindex", "open-remote", runtime.vfiles.open(META),
                    # blob-location: wasmtime-py passes `url(string)` as the bare string
                    "https://registry.invalid/blob", runtime.vfiles.open(ZINFO), options, remote)
    assert "wasi:http" in str(err.value)
    with Reader(runtime).open_device(META, BLOB, ZINFO) as dev:
        assert dev.size() == len(want("basic", "layer.tar.gz"))


@pytest.mark.parametrize("name", ["basic", "large"])
def test_fast_bytes_whole_device(reader, name):
    w = want(name, "layer.tar.gz")
    with open_case(reader, name, "layer.tar.gz", "layer.zinfo") as dev:
        assert read_all(dev, len(w)) == sha(w)


def test_fast_bytes_random_reads_large(reader):
    w = want("large", "layer.tar.gz")
    rnd = random.Random(0x1A26E)
    with open_case(reader, "large", "layer.tar.gz", "layer.zinfo") as dev:
        for i in range(FAST_RANDOM_READS):
            n = rnd.randint(1, 4096) if rnd.random() < 0.5 else rnd.randint(4097, 1 << 20)
            off = rnd.randrange(len(w))
            assert dev.pread(off, n) == w[off:off + n], f"read {i}: pread({off}, {n})"


def test_stock_conversion_basic(reader):
    """wasmtime-py's own list<u8> conversion, both ways (blob reads into the component,
    device bytes out of it): a few device ranges and random reads of `basic`. The open's
    header check is off here: through this conversion its decodes alone take a minute."""
    w = want("basic", "layer.tar.gz")
    meta_size = expected("basic")["meta_size"]
    rnd = random.Random(0x570C)
    with open_case(reader, "basic", "layer.tar.gz", "layer.zinfo", header_samples=0) as dev:
        for off, n in ((0, 16 << 10), (meta_size - 2048, 4096), (len(w) - 4096, 4096)):
            assert dev.pread(off, n) == w[off:off + n], f"pread({off}, {n})"
        for i in range(20):
            n = rnd.randint(1, 8192)
            off = rnd.randrange(len(w))
            assert dev.pread(off, n) == w[off:off + n], f"read {i}: pread({off}, {n})"
