"""The erofs-wasm component in Python, through wasmtime-py (PyPI `wasmtime`).

A small embedding: a host `vfile` resource over local files, a store with a memory cap and
a per-call deadline (epoch interruption), and thin wrappers around the exported
`tarindex.device` and `filesystem.filesystem` resources. WIT `result` errors are raised as
`WitError(tag, message)`; a trap is raised as `wasmtime.WasmtimeError` (or `Trap`), after
which the instance must be dropped (make a new `Reader`).

wasmtime-py converts `list<u8>` one element at a time, in both directions: the bytes a
vfile returns to the component, and the bytes a pread returns to Python (about 0.5 s per
MiB each way here). `fast_bytes()` swaps in a bulk conversion for byte lists; it relies on
the C value layout of the pinned wasmtime-py, checks it first, and is off by default.
See docs/embedding.md for the figures.

Where the rest of the time goes, with `fast_bytes()` (cProfile of twenty random 1 MiB
device reads of fixtures/large, 2026-12-02, wasmtime-py 50.0.1: 0.92 s per read; the
component read 16 MB of blob through the vfile): 68% inside `wasmtime_component_func_call`
(the guest's own inflate is well under a tenth of that; the rest is the C API's dynamic
`Val` path, one `Val::U8` per byte lowered into the guest for every vfile reply and
lifted out of it for the pread result, about 0.3 µs a byte), 21% in the Python-side copies
of the C `wasmtime_component_val_t` arrays (32 bytes per element: `string_at`, `to_c`),
and 9% allocating and freeing those arrays. No Python code can remove the C part: every
`list<u8>` crosses as a vector of per-element values.

The fix belongs upstream: wasmtime's C API needs a bulk case for byte lists (a
`wasmtime_component_val_t` kind whose payload is a pointer and a length, lowered and
lifted with one memcpy, as the typed Rust API `Func::typed::<_, (Vec<u8>,)>` and jco's
`Uint8Array` already do), and wasmtime-py should map `bytes`/`bytearray` to it in
`ListType.convert_to_c`/`convert_from_c`. A project-side workaround through the WIT's
shape (a `string` whose code points are the bytes, which crosses in bulk) would need a
second `vfile.pread` import that every host implements; it is not done.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import threading
import time
from typing import Any, Dict, Optional

import wasmtime
from wasmtime import Config, Engine, Store, WasiConfig
from wasmtime.component import Component, Linker, Record, ResourceAny, ResourceHost, ResourceType, Variant
from wasmtime.component._types import ListType

WIT_PACKAGE = "erofs:reader"
WIT_VERSION = "0.1.0"
# Any number that is unique among this host's resource types.
VFILE_TYPE = 0x7F11E

#: The default decoded-tar cache of the component (`open-options.cache-bytes`).
DEFAULT_CACHE = 32 << 20
#: What the component needs beyond its cache: learned checkpoints, cursors, one large read.
MEMORY_HEADROOM = 192 << 20
EPOCH_TICK = 0.010


class WitError(Exception):
    """A WIT `error` returned by the component (or by a vfile)."""

    def __init__(self, tag: str, message: Optional[str] = None):
        super().__init__(f"{tag}: {message}" if message is not None else tag)
        self.tag = tag
        self.message = message


def _unwrap(value: Any) -> Any:
    # Every `result<T, error>` in the contract has a T that is not a tagged variant, so
    # wasmtime-py returns T itself on success and a `Variant` on failure.
    if isinstance(value, Variant):
        raise WitError(value.tag, value.payload)
    return value


def field(r: Record, name: str) -> Any:
    """A field of a record returned by the component, by its Python-style name."""
    return getattr(r, name.replace("_", "-"))


class _Vfiles:
    """The host side of `erofs:reader/vfile`: read-only local files, by resource rep."""

    MAX_PREAD = 64 << 20

    def __init__(self) -> None:
        self.files: Dict[int, tuple] = {}
        self.next_rep = 1
        #: Fault injection for tests: reads of files opened from these paths fail with `io`.
        self.fail_paths: set = set()

    def open(self, path: str) -> ResourceHost:
        fd = os.open(path, os.O_RDONLY)
        size = os.fstat(fd).st_size
        rep = self.next_rep
        self.next_rep += 1
        self.files[rep] = (path, fd, size)
        return ResourceHost.own(rep, VFILE_TYPE)

    def _get(self, store: Any, handle: ResourceAny) -> tuple:
        return self.files[handle.to_host(store).rep]

    def size(self, store: Any, handle: ResourceAny) -> Any:
        return self._get(store, handle)[2]

    def pread(self, store: Any, handle: ResourceAny, offset: int, length: int) -> Any:
        path, fd, size = self._get(store, handle)
        if path in self.fail_paths:
            return Variant("io", f"{path}: injected read failure")
        if length > self.MAX_PREAD:
            return Variant("out-of-range", f"{path}: read of {length} bytes is too large")
        want = max(0, min(size, offset + length) - offset)
        out = bytearray()
        while len(out) < want:
            try:
                chunk = os.pread(fd, want - len(out), offset + len(out))
            except OSError as e:
                return Variant("io", f"{path}: read at {offset + len(out)}: {e}")
            if not chunk:
                return Variant("io", f"{path}: file shrank: read at {offset + len(out)} returned nothing")
            out += chunk
        return bytes(out)

    def drop(self, store: Any, rep: int) -> None:
        entry = self.files.pop(rep, None)
        if entry is not None:
            os.close(entry[1])

    def close_all(self) -> None:
        for rep in list(self.files):
            self.drop(None, rep)


def _fast_bytes_layout() -> Optional[tuple]:
    """(value size, payload offset, U8 kind) of wasmtime-py's C values, if they look as the
    bulk conversion expects; None otherwise."""
    ffi = wasmtime._ffi
    try:
        val = ffi.wasmtime_component_val_t
        size, of = ctypes.sizeof(val), val.of.offset
        u8 = ffi.WASMTIME_COMPONENT_U8.value
        ok = (val.kind.offset == 0 and ctypes.sizeof(ffi.wasmtime_component_valkind_t) == 1
              and dict(ffi.wasmtime_component_vallist_t._fields_)["size"] is ctypes.c_size_t
              and size >= of + 1)
    except (AttributeError, KeyError):
        return None
    return (size, of, u8) if ok else None


@contextlib.contextmanager
def fast_bytes():
    """Within this block, `list<u8>` values cross between Python and the component with
    two bulk copies instead of one Python object per byte. Raises RuntimeError if this
    wasmtime-py's value layout is not the one it was written for (wasmtime 50.0.1)."""
    layout = _fast_bytes_layout()
    if layout is None:
        raise RuntimeError("fast_bytes: this wasmtime-py's component values are not laid out as expected")
    size, of, u8 = layout
    ffi = wasmtime._ffi
    stock_to, stock_from = ListType.convert_to_c, ListType.convert_from_c

    def to_c(self: ListType, store: Any, val: Any, ptr: Any) -> None:
        if not isinstance(val, (bytes, bytearray)) or not self._is_bytes():
            return stock_to(self, store, val, ptr)
        n = len(val)
        raw = ffi.wasmtime_component_vallist_t()
        ffi.wasmtime_component_vallist_new_uninit(raw, n)
        if n:
            buf = bytearray(size * n)
            buf[0::size] = bytes((u8,)) * n
            buf[of::size] = val
            ctypes.memmove(raw.data, (ctypes.c_char * len(buf)).from_buffer(buf), len(buf))
        ptr.contents.kind = ffi.WASMTIME_COMPONENT_LIST
        ptr.contents.of.list = raw

    def from_c(self: ListType, c: Any) -> Any:
        if not self._is_bytes():
            return stock_from(self, c)
        assert c.kind == ffi.WASMTIME_COMPONENT_LIST.value
        try:
            n = c.of.list.size
            return ctypes.string_at(c.of.list.data, size * n)[of::size] if n else b""
        finally:
            ffi.wasmtime_component_vallist_delete(ctypes.byref(c.of.list))

    ListType.convert_to_c, ListType.convert_from_c = to_c, from_c  # type: ignore[method-assign]
    try:
        yield
    finally:
        ListType.convert_to_c, ListType.convert_from_c = stock_to, stock_from  # type: ignore[method-assign]


_ticker_lock = threading.Lock()
_ticking: set = set()


def _start_epoch_ticker(engine: Engine) -> None:
    """Increment the engine's epoch every EPOCH_TICK, from one daemon thread per engine."""
    with _ticker_lock:
        if id(engine) in _ticking:
            return
        _ticking.add(id(engine))

    def tick() -> None:
        while True:
            time.sleep(EPOCH_TICK)
            engine.increment_epoch()

    threading.Thread(target=tick, name="erofs-epoch", daemon=True).start()


class Runtime:
    """A compiled component and a linker: instantiate many times."""

    def __init__(self, wasm_path: str, allow_http: bool = False):
        config = Config()
        config.epoch_interruption = True
        self.engine = Engine(config)
        self.component = Component.from_file(self.engine, wasm_path)
        self.vfiles = _Vfiles()
        self.linker = Linker(self.engine)
        # Rust std for wasm32-wasip2 imports a few WASI interfaces (cli, io, random); the
        # store grants nothing (no preopens, no environment, no arguments).
        self.linker.add_wasip2()
        # A component that can fetch blobs itself (`tarindex.open-remote`) imports wasi:http.
        # allow_http links wasmtime's own outgoing handler: real network access, with no
        # allow-list of ours. Without it, every wasi:http function traps if called, which
        # only open-remote does.
        self.imports_http = any(name.startswith("wasi:http/")
                                for name in self.component.type.imports(self.engine))
        self.http_linked = self.imports_http and allow_http
        if self.http_linked:
            self.linker.add_wasi_http()
        with self.linker.root() as root:
            with root.add_instance(f"{WIT_PACKAGE}/vfile@{WIT_VERSION}") as vfile:
                vfile.add_resource("vfile", ResourceType.host(VFILE_TYPE), self.vfiles.drop)
                vfile.add_func("[method]vfile.size", self.vfiles.size)
                vfile.add_func("[method]vfile.pread", self.vfiles.pread)
        if self.imports_http and not allow_http:
            self.linker.define_unknown_imports_as_traps(self.component)
        _start_epoch_ticker(self.engine)


class Reader:
    """One instance of the component in its own store, with a memory cap and a deadline
    for each call. After a trap, drop it and make a new one."""

    def __init__(self, runtime: Runtime, memory_limit: int = DEFAULT_CACHE + MEMORY_HEADROOM,
                 call_timeout: float = 30.0):
        self.runtime = runtime
        self.call_ticks = max(1, int(call_timeout / EPOCH_TICK))
        self.store = Store(runtime.engine)
        self.store.set_wasi(WasiConfig())
        if runtime.http_linked:
            self.store.set_wasi_http()
        self.store.set_limits(memory_size=memory_limit)
        self.store.set_epoch_deadline(self.call_ticks)
        self.instance = runtime.linker.instantiate(self.store, self.component)
        self._funcs: Dict[tuple, Any] = {}

    @property
    def component(self) -> Component:
        return self.runtime.component

    def func(self, interface: str, name: str) -> Any:
        key = (interface, name)
        f = self._funcs.get(key)
        if f is None:
            iface = self.instance.get_export_index(self.store, f"{WIT_PACKAGE}/{interface}@{WIT_VERSION}")
            index = self.instance.get_export_index(self.store, name, iface) if iface else None
            f = self.instance.get_func(self.store, index) if index else None
            if f is None:
                raise LookupError(f"the component does not export {interface}#{name}")
            self._funcs[key] = f
        return f

    def call(self, interface: str, name: str, *args: Any) -> Any:
        self.store.set_epoch_deadline(self.call_ticks)
        return self.func(interface, name)(self.store, *args)

    def open_device(self, meta: str, blob: str, zinfo: Optional[str] = None, **options: Any) -> "Device":
        v = self.runtime.vfiles
        # `open-options`: every field is an option; unnamed ones are `none` (the default).
        opts = Record()
        for name, _ in self.func("tarindex", "open").type(self.store).params[-1][1].fields:
            setattr(opts, name, options.pop(name.replace("-", "_"), None))
        if options:
            raise TypeError(f"unknown open options: {', '.join(options)}")
        handle = _unwrap(self.call("tarindex", "open", v.open(meta), v.open(blob),
                                   v.open(zinfo) if zinfo is not None else None, opts))
        return Device(self, handle)

    def open_filesystem(self, device: "Device") -> "Filesystem":
        handle = _unwrap(self.call("filesystem", "open", device._take()))
        return Filesystem(self, handle)


class _Resource:
    interface = ""
    resource = ""

    def __init__(self, reader: Reader, handle: ResourceAny):
        self.reader = reader
        self.handle: Optional[ResourceAny] = handle

    def _m(self, method: str, *args: Any) -> Any:
        if self.handle is None:
            raise ValueError(f"{self.resource} is closed")
        return self.reader.call(self.interface, f"[method]{self.resource}.{method}", self.handle, *args)

    def _take(self) -> ResourceAny:
        handle, self.handle = self.handle, None
        if handle is None:
            raise ValueError(f"{self.resource} is closed")
        return handle

    def close(self) -> None:
        if self.handle is not None:
            self._take().drop(self.reader.store)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Device(_Resource):
    """`erofs:reader/tarindex.device`: meta ‖ uncompressed tar."""

    interface, resource = "tarindex", "device"

    def size(self) -> int:
        return self._m("size")

    def meta_size(self) -> int:
        return self._m("meta-size")

    def pread(self, offset: int, length: int) -> bytes:
        return _unwrap(self._m("pread", offset, length))

    def span_boundaries(self) -> list:
        """Device offsets where a read of the whole device may be split among instances
        (`device.span-boundaries`): ascending, the first 0."""
        return list(self._m("span-boundaries"))

    def stats(self) -> Dict[str, int]:
        s = self._m("stats")
        return {k.replace("-", "_"): v for k, v in vars(s).items()}


class Filesystem(_Resource):
    """`erofs:reader/filesystem.filesystem`: the EROFS tree on a device (which it owns)."""

    interface, resource = "filesystem", "filesystem"

    def device_size(self) -> int:
        return self._m("device-size")

    def device_pread(self, offset: int, length: int) -> bytes:
        return _unwrap(self._m("device-pread", offset, length))

    def root(self) -> int:
        return self._m("root")

    def getattr(self, ino: int) -> Record:
        return _unwrap(self._m("getattr", ino))

    def lookup(self, parent: int, name: bytes) -> Record:
        return _unwrap(self._m("lookup", parent, name))

    def readdir(self, ino: int, cookie: int = 0, max_entries: int = 256) -> list:
        return _unwrap(self._m("readdir", ino, cookie, max_entries))

    def read(self, ino: int, offset: int, length: int) -> bytes:
        return _unwrap(self._m("read", ino, offset, length))

    def readlink(self, ino: int) -> bytes:
        return _unwrap(self._m("readlink", ino))

    def listxattr(self, ino: int) -> list:
        return _unwrap(self._m("listxattr", ino))

    def getxattr(self, ino: int, name: bytes) -> bytes:
        return _unwrap(self._m("getxattr", ino, name))

    def verify(self) -> Record:
        return _unwrap(self._m("verify"))

    def lookup_path(self, path: str) -> Record:
        """Walk `path` from the root, one lookup per component."""
        attrs = self.getattr(self.root())
        for part in path.split("/"):
            attrs = self.lookup(field(attrs, "ino"), part.encode())
        return attrs
