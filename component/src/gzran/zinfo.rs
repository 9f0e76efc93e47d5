//! The zinfo checkpoint index (AWS SOCI compatible), spec §3.2.
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
//! field and checkpoint index named, so none of the reference's defects (spec §3.4: 32-bit
//! length overflow, `have = 0` out-of-bounds reads, unchecked monotonicity, `bits > 7`,
//! uninitialised implicit window) can arise. Windows are not loaded here: only their
//! offsets in the zinfo file are kept, and [`Zinfo::window`] reads one on demand, so memory
//! stays small however many checkpoints there are.

use crate::error::{Error, Result};
use crate::source::SizedSource;

pub const WINDOW_SIZE: usize = 32768;
const HEADER_SIZE: u64 = 12;
const RECORD_HEAD_SIZE: u64 = 17;
const RECORD_SIZE: u64 = RECORD_HEAD_SIZE + WINDOW_SIZE as u64;
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
    pub fn bit_position(&self) -> u128 {
        self.in_byte as u128 * 8 - self.bits as u128
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
        let len = file.size;
        if len < HEADER_SIZE {
            return Err(Error::bad(format!(
                "zinfo: file is {len} bytes, shorter than the 12-byte header"
            )));
        }
        let header = file.read_exact(0, HEADER_SIZE as usize)?;
        let have = u32::from_le_bytes(le_array(&header[0..4]));
        let span_size = u64::from_le_bytes(le_array(&header[4..12]));

        // The version is told by the exact length (u128 arithmetic: no overflow).
        let v2_len = HEADER_SIZE as u128 + have as u128 * RECORD_SIZE as u128;
        let v1_len = (have as u128)
            .checked_sub(1)
            .map(|stored| HEADER_SIZE as u128 + stored * RECORD_SIZE as u128);
        let (version, stored) = if have == 0 {
            return Err(Error::bad(
                "zinfo: field `have` is 0: the index has no checkpoints",
            ));
        } else if len as u128 == v2_len {
            (2u8, have as u64)
        } else if Some(len as u128) == v1_len {
            (1u8, have as u64 - 1)
        } else {
            return Err(Error::bad(format!(
                "zinfo: field `have` is {have}, which needs a file of {v2_len} bytes (v2) or {} bytes (v1), but the file is {len} bytes",
                v1_len.unwrap_or(0)
            )));
        };
        if span_size == 0 {
            return Err(Error::bad("zinfo: field `span_size` is 0"));
        }

        let mut checkpoints = Vec::with_capacity(have as usize);
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
            let batch = (stored - index).min(RECORDS_PER_READ);
            let batch_start = HEADER_SIZE + index * RECORD_SIZE;
            // Read the batch's records whole, then pick the 17-byte heads out of them.
            let bytes = file.read_exact(batch_start, (batch * RECORD_SIZE) as usize)?;
            for k in 0..batch {
                let head = &bytes[(k * RECORD_SIZE) as usize..][..RECORD_HEAD_SIZE as usize];
                checkpoints.push(Checkpoint {
                    in_byte: u64::from_le_bytes(le_array(&head[0..8])),
                    out: u64::from_le_bytes(le_array(&head[8..16])),
                    bits: head[16],
                    window: WindowAt::ZinfoOffset(batch_start + k * RECORD_SIZE + RECORD_HEAD_SIZE),
                });
            }
            index += batch;
        }
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
        let valid = cp.out.min(WINDOW_SIZE as u64) as usize;
        match cp.window {
            WindowAt::None => Ok(Vec::new()),
            WindowAt::ZinfoOffset(at) => {
                // Only the tail of the stored window is history; the rest is whatever the
                // builder's buffer held (spec §3.4.1) and must never reach the inflater.
                file.read_exact(at + (WINDOW_SIZE - valid) as u64, valid)
            }
        }
    }
}

/// Check the fields that the file cannot prove by its length.
fn validate(checkpoints: &[Checkpoint], blob_size: u64) -> Result<()> {
    for (i, cp) in checkpoints.iter().enumerate() {
        let field = |name: &str, why: String| {
            Error::bad(format!("zinfo: checkpoint {i}: field `{name}` {why}"))
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
        if let Some(prev) = i.checked_sub(1).and_then(|p| checkpoints.get(p)) {
            if cp.out <= prev.out {
                return Err(field(
                    "out",
                    format!(
                        "is {}, not above checkpoint {}'s {}",
                        cp.out,
                        i - 1,
                        prev.out
                    ),
                ));
            }
            if cp.bit_position() <= prev.bit_position() {
                return Err(field(
                    "in",
                    format!(
                        "is {} (bits {}), not after checkpoint {}'s {} (bits {})",
                        cp.in_byte,
                        cp.bits,
                        i - 1,
                        prev.in_byte,
                        prev.bits
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn le_array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[..N]);
    out
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
