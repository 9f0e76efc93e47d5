#!/usr/bin/env python3
"""Check a zinfo (v2) independently of our Rust code, with the system zlib through ctypes:
for every checkpoint, start a raw inflater at `in` (priming `bits` bits of byte in-1 with
inflatePrime), load the window with inflateSetDictionary, inflate 64 KiB and compare it with
the uncompressed tar at `out`.

usage: build-zinfo-check.py ZINFO BLOB TAR [SPAN]
"""
import ctypes, ctypes.util, struct, sys

RECORD = 17 + 32768


class ZStream(ctypes.Structure):
    _fields_ = [("next_in", ctypes.c_void_p), ("avail_in", ctypes.c_uint), ("total_in", ctypes.c_ulong),
                ("next_out", ctypes.c_void_p), ("avail_out", ctypes.c_uint), ("total_out", ctypes.c_ulong),
                ("msg", ctypes.c_char_p), ("state", ctypes.c_void_p), ("zalloc", ctypes.c_void_p),
                ("zfree", ctypes.c_void_p), ("opaque", ctypes.c_void_p), ("data_type", ctypes.c_int),
                ("adler", ctypes.c_ulong), ("reserved", ctypes.c_ulong)]


def main():
    zinfo = open(sys.argv[1], "rb").read()
    blob = open(sys.argv[2], "rb").read()
    tar = open(sys.argv[3], "rb").read()
    want_span = int(sys.argv[4]) if len(sys.argv) > 4 else None
    z = ctypes.CDLL(ctypes.util.find_library("z"))
    z.zlibVersion.restype = ctypes.c_char_p
    have, span = struct.unpack_from("<IQ", zinfo, 0)
    assert len(zinfo) == 12 + have * RECORD, f"length {len(zinfo)} is not v2 for have={have}"
    assert want_span is None or span == want_span, f"span {span}, want {want_span}"
    prev_out = -1
    for i in range(have):
        at = 12 + i * RECORD
        in_byte, out, bits = struct.unpack_from("<QQB", zinfo, at)
        window = zinfo[at + 17:at + RECORD]
        assert 0 <= bits <= 7 and 10 <= in_byte < len(blob), f"checkpoint {i}: in {in_byte} bits {bits}"
        assert out > prev_out, f"checkpoint {i}: out {out} not increasing"
        if i == 0:
            assert (in_byte, bits, out) == (10, 0, 0), f"first checkpoint is {(in_byte, bits, out)}"
        valid = min(out, 32768)
        assert window[:32768 - valid] == b"\0" * (32768 - valid), f"checkpoint {i}: stale bytes before the window"
        assert window[32768 - valid:] == tar[out - valid:out], f"checkpoint {i}: window is not the output before {out}"
        s = ZStream()
        assert z.inflateInit2_(ctypes.byref(s), -15, z.zlibVersion(), ctypes.sizeof(s)) == 0
        if bits:
            assert z.inflatePrime(ctypes.byref(s), bits, blob[in_byte - 1] >> (8 - bits)) == 0
        if valid:
            d = window[32768 - valid:]
            assert z.inflateSetDictionary(ctypes.byref(s), d, len(d)) == 0
        src = blob[in_byte:in_byte + (1 << 20)]
        want = tar[out:out + 65536]
        dst = ctypes.create_string_buffer(len(want))
        inbuf = ctypes.create_string_buffer(src, len(src))
        s.next_in = ctypes.cast(inbuf, ctypes.c_void_p)
        s.avail_in = len(src)
        s.next_out = ctypes.cast(dst, ctypes.c_void_p)
        s.avail_out = len(want)
        rc = z.inflate(ctypes.byref(s), 0)
        got = dst.raw[:len(want) - s.avail_out]
        z.inflateEnd(ctypes.byref(s))
        assert rc in (0, 1), f"checkpoint {i}: inflate returned {rc}"
        assert got == want, f"checkpoint {i} (in {in_byte}, bits {bits}, out {out}): {len(got)} bytes differ"
        prev_out = out
    print(f"{have} checkpoints ok (span {span})")


if __name__ == "__main__":
    main()
