//! PAX extended headers (`x` per file, `g` global): records of the form
//! `"<len> <key>=<value>\n"`, where `len` counts the whole record in bytes, itself included.
//! Values are raw bytes (SCHILY xattr values may hold NUL and newlines).
//!
//! Keys understood: `path`, `linkpath`, `size`, `mtime` (fractional seconds, up to 9 digits
//! kept), `uid`, `gid`, `uname`, `gname`, `SCHILY.xattr.<name>` (raw value),
//! `LIBARCHIVE.xattr.<url-encoded name>` (base64 value), and `GNU.sparse.*` (recognised so
//! that the entry can be refused as sparse). Other keys (atime, ctime, comment, charset,
//! SCHILY.dev/ino/nlink, ...) carry nothing EROFS stores and are ignored.

use base64::Engine;

use crate::error::{Error, Result};

/// The values one PAX header sets. `None` means "not set here".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pax {
    pub path: Option<Vec<u8>>,
    pub linkpath: Option<Vec<u8>>,
    pub size: Option<u64>,
    pub mtime: Option<(i64, u32)>,
    pub uid: Option<u64>,
    pub gid: Option<u64>,
    /// xattrs in record order; a later record for the same name wins when applied.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// A `GNU.sparse.*` key was present: the entry is a PAX-format sparse file.
    pub sparse: bool,
}

impl Pax {
    /// Fill in what `self` (per-file) leaves unset from `global`.
    pub fn over(mut self, global: &Pax) -> Pax {
        // Global path/linkpath/size would give every entry the same name or size: a `g`
        // header setting them is ignored, as GNU tar does for path.
        self.mtime = self.mtime.or(global.mtime);
        self.uid = self.uid.or(global.uid);
        self.gid = self.gid.or(global.gid);
        let mut xattrs = global.xattrs.clone();
        xattrs.append(&mut self.xattrs);
        self.xattrs = xattrs;
        self.sparse |= global.sparse;
        self
    }
}

/// Parse the data of a PAX header that starts at tar offset `at`.
pub fn parse(data: &[u8], at: u64) -> Result<Pax> {
    let mut pax = Pax::default();
    let mut pos = 0usize;
    while pos < data.len() {
        let rest = &data[pos..];
        // A run of NULs pads some writers' headers to the block: it ends the records.
        if rest.iter().all(|&b| b == 0) {
            break;
        }
        let bad = |why: String| {
            Error::bad(format!(
                "tar: PAX header at offset {at}: record at byte {pos}: {why}"
            ))
        };
        let space = rest
            .iter()
            .take(20)
            .position(|&b| b == b' ')
            .ok_or_else(|| bad("no length field".into()))?;
        let len_text = &rest[..space];
        let len: usize = std::str::from_utf8(len_text)
            .ok()
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| {
                bad(format!(
                    "length {:?} is not a decimal number",
                    String::from_utf8_lossy(len_text)
                ))
            })?;
        if len > rest.len() {
            return Err(bad(format!(
                "length {len} runs past the header's {} bytes of data",
                data.len()
            )));
        }
        if len < space + 3 || rest[len - 1] != b'\n' {
            return Err(bad(format!("length {len} does not end at a newline")));
        }
        let body = &rest[space + 1..len - 1];
        let eq = body
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| bad("no `=` between key and value".into()))?;
        let (key, value) = (&body[..eq], &body[eq + 1..]);
        apply(&mut pax, key, value).map_err(bad)?;
        pos += len;
    }
    Ok(pax)
}

fn apply(pax: &mut Pax, key: &[u8], value: &[u8]) -> std::result::Result<(), String> {
    let key_text = String::from_utf8_lossy(key);
    let number = |what: &str| -> std::result::Result<u64, String> {
        std::str::from_utf8(value)
            .ok()
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| {
                format!(
                    "`{what}` value {:?} is not a non-negative integer",
                    String::from_utf8_lossy(value)
                )
            })
    };
    // An empty value for a header keyword means "no override" (POSIX pax).
    match key {
        b"path" if !value.is_empty() => pax.path = Some(value.to_vec()),
        b"linkpath" if !value.is_empty() => pax.linkpath = Some(value.to_vec()),
        b"size" if !value.is_empty() => pax.size = Some(number("size")?),
        b"uid" if !value.is_empty() => pax.uid = Some(number("uid")?),
        b"gid" if !value.is_empty() => pax.gid = Some(number("gid")?),
        b"mtime" if !value.is_empty() => pax.mtime = Some(timestamp(value)?),
        _ if key.starts_with(b"SCHILY.xattr.") => {
            let name = &key[b"SCHILY.xattr.".len()..];
            pax.xattrs.push((name.to_vec(), value.to_vec()));
        }
        _ if key.starts_with(b"LIBARCHIVE.xattr.") => {
            let encoded = &key[b"LIBARCHIVE.xattr.".len()..];
            let name: Vec<u8> = percent_encoding::percent_decode(encoded).collect();
            let decoded = base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(trim_padding(value))
                .map_err(|e| format!("`{key_text}` value is not base64: {e}"))?;
            pax.xattrs.push((name, decoded));
        }
        _ if key.starts_with(b"GNU.sparse.") => pax.sparse = true,
        _ => {}
    }
    Ok(())
}

/// libarchive writes base64 with or without `=` padding: accept both.
fn trim_padding(value: &[u8]) -> &[u8] {
    let end = value.iter().rposition(|&b| b != b'=').map_or(0, |i| i + 1);
    &value[..end]
}

/// `-?digits(.digits)?` seconds since the epoch, as (seconds, nanoseconds >= 0).
fn timestamp(value: &[u8]) -> std::result::Result<(i64, u32), String> {
    let bad = || {
        format!(
            "`mtime` value {:?} is not a decimal timestamp",
            String::from_utf8_lossy(value)
        )
    };
    let text = std::str::from_utf8(value).map_err(|_| bad())?;
    let (negative, text) = match text.strip_prefix('-') {
        Some(t) => (true, t),
        None => (false, text),
    };
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let seconds: i64 = whole.parse().map_err(|_| bad())?;
    // Keep up to 9 digits (nanoseconds); further digits are below EROFS's resolution.
    let mut nanos: u32 = 0;
    for i in 0..9 {
        let digit = frac.as_bytes().get(i).map_or(0, |d| (d - b'0') as u32);
        nanos = nanos * 10 + digit;
    }
    if !negative {
        return Ok((seconds, nanos));
    }
    // -S.F = -(S+1) + (1 - .F)
    if nanos == 0 {
        Ok((-seconds, 0))
    } else {
        Ok((-seconds - 1, 1_000_000_000 - nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn record(key: &str, value: &[u8]) -> Vec<u8> {
        let body_len = key.len() + value.len() + 3;
        let mut len = body_len + 1;
        while format!("{len}").len() + body_len != len {
            len += 1;
        }
        let mut r = format!("{len} {key}=").into_bytes();
        r.extend_from_slice(value);
        r.push(b'\n');
        r
    }

    #[test]
    fn keys_are_applied() {
        let mut d = record("path", b"a/b");
        d.extend(record("mtime", b"1700000004.123456789123"));
        d.extend(record("uid", b"100000"));
        d.extend(record("SCHILY.xattr.user.bin", b"\0\n="));
        d.extend(record("LIBARCHIVE.xattr.user.a%20b", b"aGk="));
        d.extend(record("atime", b"1"));
        let p = parse(&d, 0).unwrap();
        assert_eq!(p.path.as_deref(), Some(&b"a/b"[..]));
        assert_eq!(p.mtime, Some((1_700_000_004, 123_456_789)));
        assert_eq!(p.uid, Some(100000));
        assert_eq!(
            p.xattrs,
            vec![
                (b"user.bin".to_vec(), b"\0\n=".to_vec()),
                (b"user.a b".to_vec(), b"hi".to_vec())
            ]
        );
        assert!(!p.sparse);
    }

    #[test]
    fn negative_and_whole_times() {
        assert_eq!(timestamp(b"-1.25").unwrap(), (-2, 750_000_000));
        assert_eq!(timestamp(b"-3").unwrap(), (-3, 0));
        assert_eq!(timestamp(b"5.").unwrap(), (5, 0));
        assert!(timestamp(b"1e9").is_err());
        assert!(timestamp(b"").is_err());
    }

    #[test]
    fn hostile_records() {
        let e = |d: &[u8]| parse(d, 512).unwrap_err().to_string();
        assert!(e(b"99 path=x\n").contains("runs past"));
        assert!(e(b"11 path=xyz\n").contains("newline"));
        assert!(e(b"x path=y\n").contains("not a decimal"));
        assert!(e(b"nospace").contains("no length"));
        assert!(e(&record("size", b"-5")).contains("not a non-negative"));
        assert!(e(&record("LIBARCHIVE.xattr.user.x", b"!!!")).contains("base64"));
        assert!(e(b"3 =\n").contains("newline") || e(b"3 =\n").contains("key"));
        assert!(parse(&record("GNU.sparse.major", b"1"), 0).unwrap().sparse);
        // Trailing NUL padding is fine.
        let mut d = record("path", b"p");
        d.extend([0u8; 20]);
        assert!(parse(&d, 0).is_ok());
    }
}
