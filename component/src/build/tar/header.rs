//! One 512-byte tar header block: field extraction, numbers and the checksum.
//!
//! Layout (POSIX ustar, with the GNU and V7 variants noted where they differ):
//!
//! ```text
//!   0 name[100]   100 mode[8]   108 uid[8]   116 gid[8]   124 size[12]   136 mtime[12]
//! 148 chksum[8]   156 typeflag  157 linkname[100]   257 magic[6]   263 version[2]
//! 265 uname[32]   297 gname[32] 329 devmajor[8]   337 devminor[8]
//! 345 prefix[155]  (POSIX "ustar\0" only; GNU "ustar  " keeps atime/ctime/sparse data here,
//!                   V7 headers have no magic and nothing after linkname)
//! ```
//!
//! Numbers are octal text (leading spaces allowed, ended by NUL or space) or, GNU style,
//! base-256: a first byte of 0x80 (positive) or 0xFF (negative) and big-endian binary after it.

use crate::error::{Error, Result};

pub const BLOCK: usize = 512;

/// Which dialect the magic field names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// "ustar\0" + "00": the prefix field extends the name.
    Posix,
    /// "ustar  \0": no prefix field.
    Gnu,
    /// No magic at all (V7): only the fields up to linkname mean anything.
    V7,
}

/// The fields of a header block, still raw (the caller applies PAX and GNU overrides).
#[derive(Debug, Clone)]
pub struct RawHeader {
    pub dialect: Dialect,
    /// `prefix/name` for POSIX, `name` otherwise, cut at the first NUL.
    pub path: Vec<u8>,
    pub link: Vec<u8>,
    pub typeflag: u8,
    pub mode: u64,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    pub mtime: i64,
    pub dev_major: u64,
    pub dev_minor: u64,
}

/// What a block at a header position turned out to be.
pub enum Block {
    /// All 512 bytes are zero: half of the end-of-archive marker.
    Zero,
    Header(RawHeader),
}

/// Decode the header block that starts at tar offset `at` (for error messages).
pub fn parse_block(block: &[u8; BLOCK], at: u64) -> Result<Block> {
    if block.iter().all(|&b| b == 0) {
        return Ok(Block::Zero);
    }
    check_checksum(block, at)?;
    let magic = &block[257..265];
    let dialect = if &magic[..6] == b"ustar\0" {
        Dialect::Posix
    } else if magic == b"ustar  \0" {
        Dialect::Gnu
    } else if &magic[..5] == b"ustar" {
        // Some writers put "ustar" with odd padding; the prefix field is ustar's.
        Dialect::Posix
    } else {
        Dialect::V7
    };
    let name = cstr(&block[0..100]);
    let path = match dialect {
        Dialect::Posix => {
            let prefix = cstr(&block[345..500]);
            if prefix.is_empty() {
                name.to_vec()
            } else {
                let mut p = prefix.to_vec();
                p.push(b'/');
                p.extend_from_slice(name);
                p
            }
        }
        Dialect::Gnu | Dialect::V7 => name.to_vec(),
    };
    let field = |name: &'static str, range: std::ops::Range<usize>| -> Result<i128> {
        number(&block[range], name, at)
    };
    let unsigned = |name: &'static str, range: std::ops::Range<usize>| -> Result<u64> {
        let v = field(name, range)?;
        u64::try_from(v).map_err(|_| {
            Error::bad(format!(
                "tar: header at offset {at}: field `{name}` is {v}, which is negative or too large"
            ))
        })
    };
    let (dev_major, dev_minor) = if dialect == Dialect::V7 {
        (0, 0)
    } else {
        (
            unsigned("devmajor", 329..337)?,
            unsigned("devminor", 337..345)?,
        )
    };
    let mtime = field("mtime", 136..148)?;
    let mtime = i64::try_from(mtime).map_err(|_| {
        Error::bad(format!(
            "tar: header at offset {at}: field `mtime` is {mtime}, outside 64-bit seconds"
        ))
    })?;
    Ok(Block::Header(RawHeader {
        dialect,
        path,
        link: cstr(&block[157..257]).to_vec(),
        typeflag: block[156],
        mode: unsigned("mode", 100..108)?,
        uid: unsigned("uid", 108..116)?,
        gid: unsigned("gid", 116..124)?,
        size: unsigned("size", 124..136)?,
        mtime,
        dev_major,
        dev_minor,
    }))
}

/// The stored checksum must equal the sum of all bytes with the checksum field counted as
/// eight spaces, summed as unsigned bytes or (old Sun tars) as signed bytes.
fn check_checksum(block: &[u8; BLOCK], at: u64) -> Result<()> {
    let stored = number(&block[148..156], "chksum", at)?;
    let mut unsigned: i128 = 0;
    let mut signed: i128 = 0;
    for (i, &b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += b as i128;
        signed += b as i8 as i128;
    }
    if stored == unsigned || stored == signed {
        Ok(())
    } else {
        Err(Error::bad(format!(
            "tar: header at offset {at}: bad checksum (field `chksum` says {stored}, the block sums to {unsigned})"
        )))
    }
}

/// The bytes of a NUL-terminated field, without the NUL and what follows.
pub fn cstr(field: &[u8]) -> &[u8] {
    match field.iter().position(|&b| b == 0) {
        Some(end) => &field[..end],
        None => field,
    }
}

/// An octal or base-256 number field.
fn number(field: &[u8], name: &str, at: u64) -> Result<i128> {
    let bad = |why: &str| Error::bad(format!("tar: header at offset {at}: field `{name}` {why}"));
    match field.first() {
        Some(&first) if first == 0x80 || first == 0xff => {
            // Base-256, two's complement big-endian over the whole field with the marker
            // bit kept for 0xFF (negative) and cleared for 0x80 (positive). Fields are at
            // most 12 bytes = 96 bits, which fits i128.
            let negative = first == 0xff;
            let mut v: i128 = if negative { -1 } else { 0 };
            for (i, &b) in field.iter().enumerate() {
                let b = if i == 0 && !negative { 0 } else { b };
                v = (v << 8) | b as i128;
            }
            Ok(v)
        }
        _ => {
            let text = field;
            let start = text.iter().position(|&b| b != b' ').unwrap_or(text.len());
            let digits = &text[start..];
            let end = digits
                .iter()
                .position(|&b| b == 0 || b == b' ')
                .unwrap_or(digits.len());
            let (digits, rest) = digits.split_at(end);
            if rest.iter().any(|&b| b != 0 && b != b' ') {
                return Err(bad(&format!(
                    "is not an octal number ({:?})",
                    String::from_utf8_lossy(field)
                )));
            }
            let mut v: i128 = 0;
            for &d in digits {
                if !(b'0'..=b'7').contains(&d) {
                    return Err(bad(&format!(
                        "is not an octal number ({:?})",
                        String::from_utf8_lossy(field)
                    )));
                }
                v = v * 8 + (d - b'0') as i128;
            }
            Ok(v)
        }
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A valid header block for tests: POSIX ustar, with the checksum filled in.
    pub fn block(name: &str, typeflag: u8, size: u64, link: &str) -> [u8; BLOCK] {
        let mut b = [0u8; BLOCK];
        b[..name.len()].copy_from_slice(name.as_bytes());
        b[100..107].copy_from_slice(b"0000644");
        b[108..115].copy_from_slice(b"0000000");
        b[116..123].copy_from_slice(b"0000000");
        let s = format!("{size:011o}");
        b[124..135].copy_from_slice(s.as_bytes());
        b[136..147].copy_from_slice(format!("{:011o}", 1_700_000_000u64).as_bytes());
        b[156] = typeflag;
        b[157..157 + link.len()].copy_from_slice(link.as_bytes());
        b[257..263].copy_from_slice(b"ustar\0");
        b[263..265].copy_from_slice(b"00");
        seal(&mut b);
        b
    }

    /// Recompute the checksum after editing a block.
    pub fn seal(b: &mut [u8; BLOCK]) {
        b[148..156].copy_from_slice(b"        ");
        let sum: u32 = b.iter().map(|&x| x as u32).sum();
        b[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    }

    fn header(b: &[u8; BLOCK]) -> RawHeader {
        match parse_block(b, 0).unwrap() {
            Block::Header(h) => h,
            Block::Zero => panic!("zero"),
        }
    }

    #[test]
    fn fields_and_prefix() {
        let mut b = block("name", b'0', 513, "");
        b[345..348].copy_from_slice(b"dir");
        seal(&mut b);
        let h = header(&b);
        assert_eq!(h.path, b"dir/name");
        assert_eq!(h.size, 513);
        assert_eq!(h.mode, 0o644);
        assert_eq!(h.mtime, 1_700_000_000);
        assert_eq!(h.dialect, Dialect::Posix);
    }

    #[test]
    fn base256_numbers() {
        let mut b = block("big", b'0', 0, "");
        b[124] = 0x80;
        b[124..136].copy_from_slice(&[0x80, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]);
        seal(&mut b);
        assert_eq!(header(&b).size, 1 << 32);
        // A negative mtime.
        b[136..148].copy_from_slice(&[0xff; 12]);
        seal(&mut b);
        assert_eq!(header(&b).mtime, -1);
        // A negative size is refused.
        b[124..136].copy_from_slice(&[0xff; 12]);
        seal(&mut b);
        assert!(parse_block(&b, 7)
            .err()
            .unwrap()
            .to_string()
            .contains("`size` is -1"));
    }

    #[test]
    fn checksums() {
        let mut b = block("x", b'0', 0, "");
        assert!(parse_block(&b, 0).is_ok());
        b[0] = b'y';
        let e = parse_block(&b, 1024).err().unwrap().to_string();
        assert!(
            e.contains("offset 1024") && e.contains("bad checksum"),
            "{e}"
        );
        // Signed sum (a byte >= 0x80 counted negative).
        let mut s = block("\u{e9}", b'0', 0, "");
        s[148..156].copy_from_slice(b"        ");
        let sum: i32 = s.iter().map(|&x| x as i8 as i32).sum();
        s[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        assert!(parse_block(&s, 0).is_ok());
        assert!(matches!(
            parse_block(&[0u8; BLOCK], 0).unwrap(),
            Block::Zero
        ));
    }

    #[test]
    fn bad_octal() {
        let mut b = block("x", b'0', 0, "");
        b[124..136].copy_from_slice(b"00000000009\0");
        seal(&mut b);
        assert!(parse_block(&b, 0)
            .err()
            .unwrap()
            .to_string()
            .contains("not an octal"));
    }
}
