//! Tar reader tests, hostile archives included: each must give a clear error or a
//! documented treatment, never a panic or a hang.

use super::header::tests::{block, seal};
use super::*;

/// A tar member: header (+ data padded to 512).
pub fn member(name: &str, typeflag: u8, data: &[u8], link: &str) -> Vec<u8> {
    let mut out = block(name, typeflag, data.len() as u64, link).to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(BLOCK), 0);
    out
}

/// A PAX record with its self-counting length.
pub fn record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3;
    let mut len = body + 1;
    while format!("{len}").len() + body != len {
        len += 1;
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

pub fn end() -> Vec<u8> {
    vec![0u8; 2 * BLOCK]
}

/// Feed `tar` in pieces of `piece` bytes; the members, or the first error.
fn read_in(tar: &[u8], piece: usize) -> Result<(Vec<Entry>, u64)> {
    let mut r = TarReader::new();
    let mut got = Vec::new();
    for p in tar.chunks(piece.max(1)) {
        r.feed(p, &mut |e| {
            got.push(e);
            Ok(())
        })?;
    }
    Ok((got, r.finish()?))
}

fn read(tar: &[u8]) -> Result<(Vec<Entry>, u64)> {
    read_in(tar, 4096)
}

fn err(tar: &[u8]) -> String {
    read(tar).unwrap_err().to_string()
}

#[test]
fn members_and_offsets_any_piece_size() {
    let mut tar = member("./dir/", b'5', b"", "");
    tar.extend(member("./dir/file", b'0', &[7u8; 600], ""));
    tar.extend(member("./dir/link", b'2', b"", "file"));
    tar.extend(member("./dir/hard", b'1', b"", "./dir/file"));
    tar.extend(end());
    tar.extend([0u8; 4096]); // record padding after the marker
    let (whole, parsed) = read(&tar).unwrap();
    assert_eq!(parsed, 512 * 8);
    assert_eq!(whole.len(), 4);
    assert_eq!(whole[1].kind, Kind::Regular);
    assert_eq!(whole[1].size, 600);
    assert_eq!(whole[1].data_offset, 1024);
    assert_eq!(whole[1].offset, 512);
    assert_eq!(whole[2].link, b"file");
    assert_eq!(whole[3].kind, Kind::HardLink);
    for piece in [1, 7, 511, 513] {
        assert_eq!(read_in(&tar, piece).unwrap(), (whole.clone(), parsed));
    }
}

#[test]
fn pax_and_gnu_long_names() {
    let long = "d/".repeat(80) + "leaf";
    let mut pax = record("path", long.as_bytes());
    pax.extend(record("mtime", b"1700000001.5"));
    pax.extend(record("SCHILY.xattr.user.a", b"1"));
    let mut tar = member("PaxHeader", b'x', &pax, "");
    tar.extend(member("short", b'0', b"x", ""));
    let mut gnu = format!("{long}-gnu").into_bytes();
    gnu.push(0);
    tar.extend(member("././@LongLink", b'L', &gnu, ""));
    tar.extend(member("././@LongLink", b'K', b"target-of-gnu\0", ""));
    tar.extend(member("cut", b'2', b"", "cut"));
    let mut global = record("SCHILY.xattr.user.g", b"G");
    global.extend(record("uid", b"42"));
    tar.extend(member("global", b'g', &global, ""));
    tar.extend(member("after-global", b'0', b"", ""));
    tar.extend(end());
    let (got, _) = read(&tar).unwrap();
    assert_eq!(got[0].path, long.as_bytes());
    assert_eq!(
        (got[0].mtime, got[0].mtime_nsec),
        (1_700_000_001, 500_000_000)
    );
    assert_eq!(got[0].xattrs, vec![(b"user.a".to_vec(), b"1".to_vec())]);
    assert_eq!(got[1].path, format!("{long}-gnu").as_bytes());
    assert_eq!(got[1].link, b"target-of-gnu");
    assert_eq!(got[2].uid, 42);
    assert_eq!(got[2].xattrs, vec![(b"user.g".to_vec(), b"G".to_vec())]);
}

#[test]
fn v7_headers() {
    let mut file = block("v7file", 0, 3, "");
    file[257..265].fill(0);
    seal(&mut file);
    let mut dir = block("v7dir/", 0, 0, "");
    dir[257..265].fill(0);
    seal(&mut dir);
    let mut tar = file.to_vec();
    tar.extend(b"abc");
    tar.resize(1024, 0);
    tar.extend(dir);
    tar.extend(end());
    let (got, _) = read(&tar).unwrap();
    assert_eq!(got[0].kind, Kind::Regular, "typeflag NUL is a regular file");
    assert_eq!(got[0].size, 3);
    assert_eq!(
        got[1].kind,
        Kind::Directory,
        "a trailing slash marks a V7 directory"
    );
}

#[test]
fn end_marker_variants() {
    // A lone zero block is skipped; a missing end marker is accepted at a header boundary.
    let mut tar = member("a", b'0', b"", "");
    tar.extend([0u8; BLOCK]);
    tar.extend(member("b", b'0', b"", ""));
    let (got, parsed) = read(&tar).unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(parsed, 3 * 512);
    // Bytes after the marker are not parsed.
    let mut tar = end();
    tar.extend(b"garbage that is not a header");
    assert_eq!(read(&tar).unwrap(), (vec![], 1024));
    // The empty archive.
    assert_eq!(read(&[]).unwrap(), (vec![], 0));
}

#[test]
fn hostile_truncations() {
    // Truncated header.
    let tar = member("a", b'0', b"", "");
    let e = err(&tar[..300]);
    assert!(e.contains("truncated header at offset 0"), "{e}");
    // Size past the end of the archive.
    let mut tar = block("big", b'0', 1 << 20, "").to_vec();
    tar.extend([1u8; 1000]);
    let e = err(&tar);
    assert!(
        e.contains("offset 0") && e.contains("runs past the end"),
        "{e}"
    );
    // A huge base-256 size: refused when the input ends, never looped on.
    let mut b = block("huge", b'0', 0, "");
    b[124..136].copy_from_slice(&[0x80, 0, 0, 0, 0x40, 0, 0, 0, 0, 0, 0, 0]);
    seal(&mut b);
    let mut tar = b.to_vec();
    tar.extend(end());
    let e = err(&tar);
    assert!(e.contains("runs past the end"), "{e}");
    // Larger than any archive could be.
    b[124..136].copy_from_slice(&[
        0x80, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    ]);
    seal(&mut b);
    let e = err(&b);
    assert!(e.contains("runs past any possible archive end"), "{e}");
    // A PAX header longer than the archive.
    let mut tar = block("PaxHeader", b'x', 5000, "").to_vec();
    tar.extend(record("path", b"x"));
    let e = err(&tar);
    assert!(
        e.contains("extension header at offset 0 runs past the end"),
        "{e}"
    );
    // A PAX header with nothing after it.
    let tar = member("PaxHeader", b'x', &record("path", b"x"), "");
    let e = err(&tar);
    assert!(e.contains("not followed by a member"), "{e}");
    let mut tar2 = tar.clone();
    tar2.extend(end());
    let e = err(&tar2);
    assert!(e.contains("followed by a zero block"), "{e}");
}

#[test]
fn hostile_headers() {
    let mut b = block("x", b'0', 0, "");
    b[0] = b'y';
    assert!(err(&b).contains("bad checksum"));
    // A PAX record longer than its header's data.
    let mut tar = member("PaxHeader", b'x', b"99 path=x\n", "");
    tar.extend(member("x", b'0', b"", ""));
    assert!(err(&tar).contains("runs past the header's 10 bytes"));
    // Oversized extension headers are refused up front.
    let b = block("PaxHeader", b'x', MAX_PAX_BYTES + 1, "");
    assert!(err(&b).contains("at most"));
    let b = block("@LongLink", b'L', MAX_LONG_NAME_BYTES + 1, "");
    assert!(err(&b).contains("at most"));
    // NUL inside a GNU long name.
    let mut tar = member("@LongLink", b'L', b"a\0b\0", "");
    tar.extend(member("x", b'0', b"", ""));
    assert!(err(&tar).contains("NUL"));
    // Sparse files, multi-volume and unknown types are refused by name.
    assert!(err(&member("s", b'S', b"", "")).contains("old-GNU sparse"));
    let mut tar = member("PaxHeader", b'x', &record("GNU.sparse.major", b"1"), "");
    tar.extend(member("s", b'0', b"", ""));
    assert!(err(&tar).contains("PAX sparse"));
    assert!(err(&member("m", b'M', b"", "")).contains("type flag 'M'"));
    assert!(err(&member("q", b'Q', b"", "")).contains("type flag 'Q'"));
    // uid beyond 32 bits.
    let mut tar = member("PaxHeader", b'x', &record("uid", b"4294967296"), "");
    tar.extend(member("u", b'0', b"", ""));
    assert!(err(&tar).contains("uid 4294967296"));
    // A device number beyond Linux's dev_t.
    let mut d = block("dev", b'3', 0, "");
    d[329..337].copy_from_slice(b"0010000\0");
    seal(&mut d);
    assert!(err(&d).contains("dev_t"));
}

#[test]
fn header_only_types_have_no_data() {
    // A hard link whose header claims 512 bytes: the next header follows at once.
    let mut tar = block("hard", b'1', 512, "a").to_vec();
    tar.extend(member("next", b'0', b"", ""));
    tar.extend(end());
    let (got, _) = read(&tar).unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].size, 0);
    assert_eq!(got[1].path, b"next");
}

#[test]
fn volume_labels_are_noted() {
    let mut tar = member("label", b'V', b"", "");
    tar.extend(member("f", b'0', b"", ""));
    tar.extend(end());
    let mut r = TarReader::new();
    let mut n = 0;
    r.feed(&tar, &mut |_| {
        n += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(n, 1);
    assert_eq!(r.notes.len(), 1);
}
