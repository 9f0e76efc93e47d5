//! The default raw-deflate engine: zlib-rs through its zlib-compatible API
//! (`libz-rs-sys`). It measured about twice miniz_oxide's speed in wasm
//! (docs/formats.md, "Inflate engines").

use std::ffi::CStr;

use libz_rs_sys as z;

use super::step::{Status, Step};
use crate::error::{Error, Result};

/// zlib-rs raw inflate state. The `z_stream` is boxed because zlib keeps a pointer back
/// to it: it must not move between calls.
pub struct ZlibInflater {
    stream: Box<z::z_stream>,
}

impl ZlibInflater {
    pub fn new() -> Result<Self> {
        let mut stream = Box::<z::z_stream>::default();
        // SAFETY: `stream` is a valid, default-initialised z_stream (null allocators mean
        // zlib-rs's own); -15 selects raw deflate with a 32 KiB window.
        let rc = unsafe {
            z::inflateInit2_(
                &mut *stream,
                -15,
                z::zlibVersion(),
                std::mem::size_of::<z::z_stream>() as i32,
            )
        };
        check(rc, &stream, "inflateInit2")?;
        Ok(Self { stream })
    }

    /// Begin decoding at a restart point: `prime` holds the high `bits` of the byte
    /// before the first full input byte; `history` is the output that preceded it.
    pub fn restart(&mut self, prime: Option<(u8, u8)>, history: &[u8]) -> Result<()> {
        // SAFETY: the stream was initialised in `new` and is not moved.
        let rc = unsafe { z::inflateReset(&mut *self.stream) };
        check(rc, &self.stream, "inflateReset")?;
        if let Some((bits, byte)) = prime {
            if bits > 0 {
                // The top `bits` bits of the byte are the first bits of the next block.
                let value = (byte >> (8 - bits)) as i32;
                // SAFETY: as above; bits is 1..=7.
                let rc = unsafe { z::inflatePrime(&mut *self.stream, bits as i32, value) };
                check(rc, &self.stream, "inflatePrime")?;
            }
        }
        if !history.is_empty() {
            // SAFETY: the pointer and length describe `history`, which outlives the call;
            // zlib copies it into its own window.
            let rc = unsafe {
                z::inflateSetDictionary(&mut *self.stream, history.as_ptr(), history.len() as u32)
            };
            check(rc, &self.stream, "inflateSetDictionary")?;
        }
        Ok(())
    }

    /// Start a fresh deflate stream (the next gzip member), with no history.
    pub fn reset(&mut self) -> Result<()> {
        self.restart(None, &[])
    }

    /// Decode from `input` into `output`. Input and output are at most 4 GiB each here
    /// (callers pass buffers of a few hundred KiB), so the u32 fields cannot truncate.
    pub fn inflate(
        &mut self,
        input: &[u8],
        output: &mut [u8],
        stop_at_block: bool,
    ) -> Result<Step> {
        let s = &mut *self.stream;
        let RawCall {
            rc,
            consumed,
            produced,
            data_type,
        } = inflate_call(s, input, output, stop_at_block);
        let status = match rc {
            z::Z_STREAM_END => Status::StreamEnd,
            z::Z_OK | z::Z_BUF_ERROR => {
                if stop_at_block && data_type & 128 != 0 {
                    Status::BlockBoundary {
                        unused_bits: (data_type & 7) as u8,
                        after_last: data_type & 64 != 0,
                    }
                } else {
                    Status::Progress
                }
            }
            z::Z_DATA_ERROR => {
                return Err(Error::bad(format!(
                    "gzip: corrupt deflate data: {}",
                    message(s)
                )));
            }
            z::Z_NEED_DICT => {
                return Err(Error::bad(
                    "gzip: deflate stream asks for a preset dictionary",
                ));
            }
            other => check(other, s, "inflate").map(|_| Status::Progress)?,
        };
        Ok(Step {
            consumed,
            produced,
            status,
        })
    }
}

impl Drop for ZlibInflater {
    fn drop(&mut self) {
        // Always release zlib's state (the reference leaks it on every read; docs/formats.md,
        // "Defects we refuse").
        // SAFETY: initialised in `new`, ended exactly once here.
        unsafe {
            z::inflateEnd(&mut *self.stream);
        }
    }
}

/// What one `inflate` call did: zlib's return code, the input bytes it consumed, the
/// output bytes it produced, and `data_type` (bit 7: stopped at a block boundary, bit 6:
/// after the last block, bits 0..2: unused bits of the last input byte).
pub(crate) struct RawCall {
    pub(crate) rc: i32,
    pub(crate) consumed: usize,
    pub(crate) produced: usize,
    pub(crate) data_type: i32,
}

/// One `inflate` call on an initialised `stream`, from `input` into `output` (each capped
/// at 4 GiB, the width of zlib's counters), stopping at the next block boundary if
/// `stop_at_block`. Leaves no pointer to either buffer in the stream.
pub(crate) fn inflate_call(
    s: &mut z::z_stream,
    input: &[u8],
    output: &mut [u8],
    stop_at_block: bool,
) -> RawCall {
    let in_len = input.len().min(u32::MAX as usize);
    let out_len = output.len().min(u32::MAX as usize);
    s.next_in = input.as_ptr();
    s.avail_in = in_len as u32;
    s.next_out = output.as_mut_ptr();
    s.avail_out = out_len as u32;
    let flush = if stop_at_block {
        z::Z_BLOCK
    } else {
        z::Z_NO_FLUSH
    };
    // SAFETY: next_in/avail_in and next_out/avail_out describe the two live slices, and
    // the caller initialised the stream.
    let rc = unsafe { z::inflate(s, flush) };
    let consumed = in_len - s.avail_in as usize;
    let produced = out_len - s.avail_out as usize;
    // Do not leave pointers to the caller's buffers behind.
    s.next_in = std::ptr::null();
    s.next_out = std::ptr::null_mut();
    s.avail_in = 0;
    s.avail_out = 0;
    RawCall {
        rc,
        consumed,
        produced,
        data_type: s.data_type,
    }
}

/// CRC-32 (the gzip trailer's checksum), continuing from `crc`.
pub fn crc32(crc: u32, data: &[u8]) -> u32 {
    let mut crc = crc as z::uLong;
    for piece in data.chunks(u32::MAX as usize) {
        // SAFETY: pointer and length describe `piece`.
        crc = unsafe { z::crc32(crc, piece.as_ptr(), piece.len() as u32) };
    }
    crc as u32
}

/// zlib's message for the last failure, or "no detail".
pub(crate) fn message(s: &z::z_stream) -> String {
    if s.msg.is_null() {
        return "no detail".to_string();
    }
    // SAFETY: zlib sets msg to a static NUL-terminated string or leaves it null.
    unsafe { CStr::from_ptr(s.msg) }
        .to_string_lossy()
        .into_owned()
}

fn check(rc: i32, s: &z::z_stream, what: &str) -> Result<()> {
    match rc {
        z::Z_OK => Ok(()),
        z::Z_MEM_ERROR => Err(Error::io(format!("{what}: out of memory"))),
        // Any other code from these calls means the stream was misused: our bug.
        _ => Err(Error::internal(format!(
            "{what} failed ({rc}): {}",
            message(s)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gzran::inflate::RawInflater;

    #[test]
    fn crc_matches_known_value() {
        assert_eq!(crc32(0, b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(crc32(0, b"1234"), b"56789"), 0xCBF4_3926);
    }

    #[test]
    fn stored_block_round_trip() {
        // A final stored block holding "hi": BFINAL=1, BTYPE=00, LEN=2, NLEN=!2.
        let raw = [0x01, 0x02, 0x00, 0xfd, 0xff, b'h', b'i'];
        let mut inf = RawInflater::new().unwrap();
        let mut out = [0u8; 8];
        let step = inf.inflate(&raw, &mut out, false).unwrap();
        assert_eq!(step.status, Status::StreamEnd);
        assert_eq!(&out[..step.produced], b"hi");
        inf.reset().unwrap();
        let err = inf
            .inflate(&[0xff, 0xff, 0xff], &mut out, false)
            .unwrap_err();
        assert!(err.is(crate::error::Kind::BadInput), "{err}");
    }
}
