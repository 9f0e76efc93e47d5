//! The zinfo checkpoint index (AWS SOCI compatible); docs/formats.md, "zinfo".
//!
//! Layout, little-endian, no magic and no checksum:
//!
//! ```text
//! header  (12 B)   have: u32            number of checkpoints
//!                  span_size: u64       distance the builder aimed for between checkpoints
//! record  (32785 B, repeated)
//!                  in: u64              first full compressed byte after the restart point
//!                  out: u64             uncompressed offset of the restart point
//!                  bits: u8             bits of byte in-1 that belong to the next block (0..=7)
//!                  window: [u8; 32768]  the 32 KiB of output before `out`
//! ```
//!
//! v2 stores all `have` records. v1 leaves out the first one, which is implicitly
//! `in = 10, bits = 0, out = 0` (a gzip with a minimal 10-byte header); the version is
//! told by the total length alone.
//!
//! The file is untrusted. This module checks every field and refuses the file with the
//! field and checkpoint index named, so none of the reference's defects (docs/formats.md,
//! "Defects we refuse": 32-bit length overflow, `have = 0` out-of-bounds reads, unchecked
//! monotonicity, `bits > 7`, uninitialised implicit window) can arise. Windows are not loaded here: only their
//! offsets in the zinfo file are kept, and [`Zinfo::window`] reads one on demand, so memory
//! stays small however many checkpoints there are.

// Parses outside data under erofs-image's lint rules (`parser_modules!` in lib.rs).

use crate::error::{Error, Result};
use crate::source::SizedSource;

pub const WINDOW_SIZE: usize = 32768;
const WINDOW_SIZE_U64: u64 = 32768;
const HEADER_LEN: usize = 12;
const HEADER_SIZE: u64 = 12;
const RECORD_HEAD_LEN: usize = 17;
const RECORD_HEAD_SIZE: u64 = 17;
const RECORD_SIZE: u64 = RECORD_HEAD_SIZE + WINDOW_SIZE_U64;
/// The smallest possible gzip header: a restart point can never lie before it.
const MIN_GZIP_HEADER: u64 = 10;
/// Records are read from the zinfo file this many at a time while parsing.
const RECORDS_PER_READ: u64 = 32;

/// Where the 32 KiB window of a checkpoint lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowAt {
    /// At this byte offset of the zinfo file.
    ZinfoOffset(u64),
    /// v1's implicit first checkpoint: it has `out = 0`, so there is no history at all.
    None,
}

/// One restart point of the compressed stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// Offset in the blob of the first compressed byte not yet (fully) consumed.
    pub in_byte: u64,
    /// 0..=7: how many high bits of byte `in_byte - 1` still belong to the next block.
    pub bits: u8,
    /// Uncompressed offset of the restart point.
    pub out: u64,
    pub window: WindowAt,
}

impl Checkpoint {
    /// Absolute bit position of the restart point in the blob: it orders checkpoints.
    /// (`in_byte * 8` fits a u128 with room to spare; `bits` is checked to be at most 7
    /// before this is used, and `in_byte` at least 10, so the subtraction cannot wrap.)
    pub fn bit_position(&self) -> u128 {
        (u128::from(self.in_byte) * 8).saturating_sub(u128::from(self.bits))
    }
}

#[derive(Debug)]
pub struct Zinfo {
    pub version: u8,
    pub span_size: u64,
    pub checkpoints: Vec<Checkpoint>,
}

impl Zinfo {
    /// Parse and validate the whole index. `blob_size` bounds the `in` offsets.
    pub fn parse(file: &SizedSource, blob_size: u64) -> Result<Zinfo> {
        // Header: the checkpoint count and the span size.
        let len = file.size;
        if len < HEADER_SIZE {
            return Err(bad(format!(
                "file is {len} bytes, shorter than the 12-byte header"
            ))
            .at(0));
        }
        let header = file.read_exact(0, HEADER_LEN)?;
        let have = u32::from_le_bytes(le_array(&header, 0)?);
        let span_size = u64::from_le_bytes(le_array(&header, 4)?);

        // Version: told by the exact length alone (u128 arithmetic: no overflow).
        let (version, stored) = version_of(len, have)?;
        if span_size == 0 {
            return Err(bad("field `span_size` is 0").with_field("span_size").at(4));
        }

        // Records: v1's implicit first checkpoint, then the stored heads in batches.
        let mut checkpoints = Vec::with_capacity(usize::try_from(have).unwrap_or(0));
        if version == 1 {
            checkpoints.push(Checkpoint {
                in_byte: MIN_GZIP_HEADER,
                bits: 0,
                out: 0,
                window: WindowAt::None,
            });
        }
        let mut index = 0u64;
        while index < stored {
            let batch = stored.saturating_sub(index).min(RECORDS_PER_READ);
            let batch_start = record_offset(index)?;
            // Read the batch's records whole, then pick the 17-byte heads out of them.
            let batch_len = usize::try_from(batch.saturating_mul(RECORD_SIZE))
                .map_err(|_| bad("a batch of records does not fit in memory"))?;
            let bytes = file.read_exact(batch_start, batch_len)?;
            for k in 0..batch {
                checkpoints.push(record_head(&bytes, k, batch_start)?);
            }
            index = index.saturating_add(batch);
        }

        // Fields: the checks the length cannot prove.
        validate(&checkpoints, blob_size)?;
        Ok(Zinfo {
            version,
            span_size,
            checkpoints,
        })
    }

    /// The last checkpoint at or before uncompressed offset `out` (binary search).
    pub fn checkpoint_before(&self, out: u64) -> Option<&Checkpoint> {
        let after = self.checkpoints.partition_point(|c| c.out <= out);
        after.checked_sub(1).and_then(|i| self.checkpoints.get(i))
    }

    /// The valid history before `cp.out`: at most 32 KiB, fewer near the stream start.
    pub fn window(file: &SizedSource, cp: &Checkpoint) -> Result<Vec<u8>> {
        // min() with WINDOW_SIZE makes both conversions exact.
        let valid = cp.out.min(WINDOW_SIZE_U64);
        match cp.window {
            WindowAt::None => Ok(Vec::new()),
            WindowAt::ZinfoOffset(at) => {
                // Only the tail of the stored window is history; the rest is whatever the
                // builder's buffer held (docs/formats.md, "Defects we refuse") and must
                // never reach the inflater.
                let from = at
                    .checked_add(WINDOW_SIZE_U64.saturating_sub(valid))
                    .ok_or_else(|| bad("a window offset passes 2^64").at(at))?;
                let valid = usize::try_from(valid).unwrap_or(WINDOW_SIZE);
                file.read_exact(from, valid)
            }
        }
    }
}

/// The version and the number of stored records that `have` and the file length imply.
fn version_of(len: u64, have: u32) -> Result<(u8, u64)> {
    let header = u128::from(HEADER_SIZE);
    let record = u128::from(RECORD_SIZE);
    // At most 12 + 2^32 * 32785: far below u128's limit, so saturation never happens.
    let v2_len = header.saturating_add(u128::from(have).saturating_mul(record));
    let v1_len = u128::from(have)
        .checked_sub(1)
        .map(|stored| header.saturating_add(stored.saturating_mul(record)));
    if have == 0 {
        Err(bad("field `have` is 0: the index has no checkpoints")
            .with_field("have")
            .at(0))
    } else if u128::from(len) == v2_len {
        Ok((2, u64::from(have)))
    } else if Some(u128::from(len)) == v1_len {
        Ok((1, u64::from(have).saturating_sub(1)))
    } else {
        Err(bad(format!(
            "field `have` is {have}, which needs a file of {v2_len} bytes (v2) or {} bytes (v1), but the file is {len} bytes",
            v1_len.unwrap_or(0)
        ))
        .with_field("have")
        .at(0))
    }
}

/// Byte offset in the zinfo file of stored record `index`.
fn record_offset(index: u64) -> Result<u64> {
    index
        .checked_mul(RECORD_SIZE)
        .and_then(|o| o.checked_add(HEADER_SIZE))
        .ok_or_else(|| bad(format!("record {index} lies past 2^64 bytes")))
}

/// Record `k` of a batch read at `batch_start`: its 17-byte head, and where its window is.
fn record_head(bytes: &[u8], k: u64, batch_start: u64) -> Result<Checkpoint> {
    let short = || {
        bad(format!(
            "record {k} of a batch read at {batch_start} is cut short"
        ))
    };
    let start = k
        .checked_mul(RECORD_SIZE)
        .and_then(|o| usize::try_from(o).ok())
        .ok_or_else(short)?;
    let head = start
        .checked_add(RECORD_HEAD_LEN)
        .and_then(|end| bytes.get(start..end))
        .ok_or_else(short)?;
    let window_at = batch_start
        .checked_add(k.saturating_mul(RECORD_SIZE))
        .and_then(|o| o.checked_add(RECORD_HEAD_SIZE))
        .ok_or_else(short)?;
    Ok(Checkpoint {
        in_byte: u64::from_le_bytes(le_array(head, 0)?),
        out: u64::from_le_bytes(le_array(head, 8)?),
        bits: *head.get(16).ok_or_else(short)?,
        window: WindowAt::ZinfoOffset(window_at),
    })
}

/// Check the fields that the file cannot prove by its length.
fn validate(checkpoints: &[Checkpoint], blob_size: u64) -> Result<()> {
    for (i, cp) in checkpoints.iter().enumerate() {
        let field = |name: &'static str, why: String| {
            bad(format!("checkpoint {i}: field `{name}` {why}")).with_field(name)
        };
        if cp.bits > 7 {
            return Err(field("bits", format!("is {}, but must be 0..=7", cp.bits)));
        }
        if cp.in_byte < MIN_GZIP_HEADER {
            return Err(field(
                "in",
                format!("is {}, inside the 10-byte gzip header", cp.in_byte),
            ));
        }
        if cp.in_byte >= blob_size {
            return Err(field(
                "in",
                format!("is {}, not inside the {blob_size}-byte blob", cp.in_byte),
            ));
        }
        if i == 0 && cp.out != 0 {
            return Err(field(
                "out",
                format!("is {}, but the first checkpoint must be at 0", cp.out),
            ));
        }
        let Some(p) = i.checked_sub(1) else {
            continue;
        };
        let Some(prev) = checkpoints.get(p) else {
            continue;
        };
        if cp.out <= prev.out {
            return Err(field(
                "out",
                format!("is {}, not above checkpoint {p}'s {}", cp.out, prev.out),
            ));
        }
        if cp.bit_position() <= prev.bit_position() {
            return Err(field(
                "in",
                format!(
                    "is {} (bits {}), not after checkpoint {p}'s {} (bits {})",
                    cp.in_byte, cp.bits, prev.in_byte, prev.bits
                ),
            ));
        }
    }
    Ok(())
}

/// An error in the zinfo file.
fn bad(msg: impl Into<String>) -> Error {
    Error::bad(msg).in_file("zinfo")
}

/// `N` bytes at `at` of `bytes`, for a little-endian field.
fn le_array<const N: usize>(bytes: &[u8], at: usize) -> Result<[u8; N]> {
    at.checked_add(N)
        .and_then(|end| bytes.get(at..end))
        .and_then(|b| <[u8; N]>::try_from(b).ok())
        .ok_or_else(|| bad(format!("a {N}-byte field at {at} is cut short")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::MemSource;

    fn record(in_byte: u64, out: u64, bits: u8, fill: u8) -> Vec<u8> {
        let mut r = Vec::new();
        r.extend_from_slice(&in_byte.to_le_bytes());
        r.extend_from_slice(&out.to_le_bytes());
        r.push(bits);
        r.extend(std::iter::repeat_n(fill, WINDOW_SIZE));
        r
    }

    fn file(have: u32, records: &[Vec<u8>]) -> SizedSource {
        let mut f = have.to_le_bytes().to_vec();
        f.extend_from_slice(&4194304u64.to_le_bytes());
        for r in records {
            f.extend_from_slice(r);
        }
        SizedSource::new("zinfo", Box::new(MemSource(f))).unwrap()
    }

    fn err(f: &SizedSource) -> String {
        Zinfo::parse(f, 1 << 30).unwrap_err().to_string()
    }

    #[test]
    fn v2_and_v1_are_told_by_length() {
        let v2 = file(2, &[record(10, 0, 0, 0), record(5000, 70000, 3, 7)]);
        let z = Zinfo::parse(&v2, 1 << 20).unwrap();
        assert_eq!(z.version, 2);
        assert_eq!(z.checkpoints.len(), 2);
        let v1 = file(2, &[record(5000, 70000, 3, 7)]);
        let z = Zinfo::parse(&v1, 1 << 20).unwrap();
        assert_eq!(z.version, 1);
        assert_eq!(
            z.checkpoints[0],
            Checkpoint {
                in_byte: 10,
                bits: 0,
                out: 0,
                window: WindowAt::None
            }
        );
        assert_eq!(
            Zinfo::window(&v1, &z.checkpoints[0]).unwrap(),
            Vec::<u8>::new()
        );
        assert_eq!(
            Zinfo::window(&v1, &z.checkpoints[1]).unwrap(),
            vec![7u8; WINDOW_SIZE]
        );
        assert_eq!(z.checkpoint_before(69999).unwrap().out, 0);
        assert_eq!(z.checkpoint_before(70000).unwrap().out, 70000);
    }

    #[test]
    fn short_window_history_is_only_the_tail() {
        let f = file(2, &[record(10, 0, 0, 0), record(500, 100, 0, 9)]);
        let z = Zinfo::parse(&f, 1 << 20).unwrap();
        assert_eq!(Zinfo::window(&f, &z.checkpoints[1]).unwrap().len(), 100);
    }

    #[test]
    fn bad_fields_are_named() {
        assert!(err(&file(0, &[])).contains("`have` is 0"));
        assert!(err(&file(u32::MAX, &[record(10, 0, 0, 0)])).contains("`have` is 4294967295"));
        assert!(err(&file(3, &[record(10, 0, 0, 0)])).contains("needs a file"));
        assert!(err(&file(1, &[record(10, 0, 9, 0)])).contains("`bits` is 9"));
        assert!(err(&file(1, &[record(3, 0, 0, 0)])).contains("`in` is 3"));
        assert!(err(&file(1, &[record(10, 5, 0, 0)])).contains("first checkpoint"));
        let back = file(
            3,
            &[
                record(10, 0, 0, 0),
                record(900, 800, 0, 0),
                record(950, 700, 0, 0),
            ],
        );
        assert!(err(&back).contains("checkpoint 2: field `out`"));
        let in_back = file(2, &[record(10, 0, 0, 0), record(10, 800, 1, 0)]);
        assert!(err(&in_back).contains("checkpoint 1: field `in`"));
        let outside = file(1, &[record(10, 0, 0, 0)]);
        assert!(Zinfo::parse(&outside, 10)
            .unwrap_err()
            .to_string()
            .contains("not inside"));
        let truncated = SizedSource::new("zinfo", Box::new(MemSource(vec![1, 0, 0]))).unwrap();
        assert!(err(&truncated).contains("shorter than the 12-byte header"));
    }
}
