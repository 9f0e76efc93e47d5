#!/usr/bin/env python3
"""Write hostile tars for the index builder into DIR, each with NAME.expect:

  refuse SUBSTRING              the builder must fail with SUBSTRING in its message
  accept CHECK [CHECK ...]      it must succeed; in the mounted image each CHECK holds:
                                PATH exists, !PATH does not, PATH=TEXT has that content

Names starting with `aufs-` are indexed with --aufs. usage: build-hostile.py DIR
"""
import os, sys

BLOCK = 512


def header(name, typeflag=b"0", size=0, link=b"", mode=0o644, magic=b"ustar\x0000", raw_size=None):
    name = name.encode() if isinstance(name, str) else name
    link = link.encode() if isinstance(link, str) else link
    h = bytearray(BLOCK)
    h[0:len(name[:100])] = name[:100]
    h[100:108] = b"%07o\0" % mode
    h[108:116] = b"0000000\0"
    h[116:124] = b"0000000\0"
    h[124:136] = raw_size if raw_size is not None else b"%011o\0" % size
    h[136:148] = b"%011o\0" % 1700000000
    h[156:157] = typeflag
    h[157:157 + len(link)] = link
    h[257:265] = magic
    seal(h)
    return h


def seal(h):
    h[148:156] = b" " * 8
    h[148:156] = b"%06o\0 " % sum(h)


def pad(data):
    return data + b"\0" * (-len(data) % BLOCK)


def member(name, data=b"", typeflag=b"0", link=b"", **kw):
    return bytes(header(name, typeflag, len(data), link, **kw)) + pad(data)


def record(key, value):
    body = len(key) + len(value) + 3
    n = body + 1
    while len(str(n)) + body != n:
        n += 1
    return b"%d %s=" % (n, key.encode()) + value + b"\n"


def pax(records, name="PaxHeader"):
    return member(name, b"".join(record(k, v) for k, v in records), b"x")


END = b"\0" * (2 * BLOCK)
CASES = {}


def case(name, expect, data):
    CASES[name] = (expect, data)


ok = member("ok", b"fine")
case("truncated-header", "refuse truncated header", ok + member("next")[:300])
bad = header("x")
bad[0:1] = b"y"
case("bad-checksum", "refuse bad checksum", bytes(bad) + END)
case("huge-base256-size", "refuse runs past",
     bytes(header("huge", raw_size=b"\x80" + b"\0" * 3 + b"\x40" + b"\0" * 7)) + END)
case("size-past-end", "refuse runs past the end", bytes(header("big", size=1 << 20)) + b"x" * 1000)
case("pax-longer-than-archive", "refuse runs past the end",
     bytes(header("PaxHeader", b"x", 100000)) + record("path", b"a"))
case("pax-record-too-long", "refuse runs past the header's",
     member("PaxHeader", b"99 path=x\n", b"x") + member("x") + END)
case("dotdot-traversal", "refuse `..`", member("../../etc/passwd", b"root") + END)
case("absolute-names", "accept etc/passwd=root !x", member("/etc/passwd", b"root") + END)
case("nul-in-name", "refuse NUL", pax([("path", b"a\0b")]) + member("x") + END)
case("hardlink-loop", "refuse loop", member("a", typeflag=b"1", link="b") + member("b", typeflag=b"1", link="a") + END)
case("hardlink-missing", "refuse not in the archive", member("a", typeflag=b"1", link="nowhere") + END)
case("hardlink-before-target", "accept early=data target=data",
     member("early", typeflag=b"1", link="target") + member("target", b"data") + END)
case("component-300", "refuse 300-byte component", pax([("path", b"d/" + b"n" * 300)]) + member("x") + END)
case("duplicates", "accept dup=second d/kept",
     member("dup", b"first") + member("d/kept") + member("dup", b"second") + member("d/", typeflag=b"5") + END)
case("aufs-whiteout-root", "refuse names nothing", member("./.wh..") + END)
case("aufs-bare-wh", "refuse names nothing", member("dir/.wh.") + END)
case("aufs-internals", "accept f !.wh..wh.aufs !.wh..wh.plnk",
     member(".wh..wh.aufs") + member(".wh..wh.plnk/x") + member("f") + END)
case("xattr-65536", "refuse 65536-byte value",
     pax([("SCHILY.xattr.user.big", b"v" * 65536)]) + member("x") + END)
case("xattr-65535", "accept x", pax([("SCHILY.xattr.user.big", b"v" * 65535)]) + member("x") + END)
case("gnu-old-sparse", "refuse sparse", member("s", typeflag=b"S") + END)
case("pax-sparse", "refuse sparse",
     pax([("GNU.sparse.major", b"1"), ("GNU.sparse.minor", b"0")]) + member("s") + END)
case("root-as-file", "refuse root can only be a directory", member("./", b"x") + END)
case("parent-is-file", "refuse is not a directory", member("f", b"x") + member("f/g") + END)
case("v7-regular", "accept v7=old", member("v7", b"old", typeflag=b"\0", magic=b"\0" * 8) + END)
case("lone-zero-block", "accept a b", member("a") + b"\0" * BLOCK + member("b") + END)
case("no-end-marker", "accept a=x", member("a", b"x"))
case("unknown-typeflag", "refuse type flag", member("q", typeflag=b"Q") + END)
case("long-symlink", "refuse symlink target", member("l", typeflag=b"2") + END)


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    for name, (expect, data) in CASES.items():
        with open(os.path.join(out, name + ".tar"), "wb") as f:
            f.write(data)
        with open(os.path.join(out, name + ".expect"), "w") as f:
            f.write(expect + "\n")
    print(len(CASES))


if __name__ == "__main__":
    main()
