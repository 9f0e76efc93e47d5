//! Inflates a gzip blob once, front to back, and records zinfo v2 checkpoints (SOCI
//! compatible; `docs/formats.md`, *zinfo*) on the way: the format [`crate::gzran::zinfo`]
//! parses.
//!
//! A checkpoint is taken at a deflate block boundary that is not after a member's final
//! block, when either the boundary is the first one of a gzip member (right after its
//! header; the very first gives `in = 10, bits = 0, out = 0` for a minimal header), or at
//! least `span` bytes of output have come out since the previous checkpoint. Between
//! checkpoints the inflater runs without `Z_BLOCK` and with its output capped at the bytes
//! left to `span`, so stopping at every block costs nothing until a checkpoint is due.
//!
//! Each record holds `in` (first compressed byte not fully consumed), `out`, `bits` (high
//! bits of byte `in - 1` that belong to the next block) and the 32 KiB of output before
//! `out`, right-aligned: when fewer than 32 KiB precede `out`, the front of the window is
//! zeros, never leftover memory (the reference leaks heap bytes there; `docs/formats.md`,
//! *Defects we refuse*).
//!
//! zlib's gzip mode (`windowBits 31`) parses each member's header and checks its CRC-32 and
//! length trailer. After a member ends, the next bytes must be another member.

use libz_rs_sys as z;

use crate::error::{Error, Result};
use crate::gzran::inflate::zlib::{inflate_call, message};

pub const WINDOW: usize = 32768;
const RECORD: usize = 17 + WINDOW;
/// Output is handed on in pieces of up to 256 KiB.
const OUT_CHUNK: usize = 256 << 10;

pub struct ZinfoWriter {
    stream: Box<z::z_stream>,
    span: u64,
    /// Compressed bytes consumed, uncompressed bytes produced.
    in_offset: u64,
    out_offset: u64,
    since_checkpoint: u64,
    /// The next block boundary is the first of a member.
    member_start: bool,
    /// The last member's trailer was read; more input means another member.
    member_ended: bool,
    /// The last 32 KiB of output, as a ring: `window[ring_at]` is the oldest byte.
    window: Box<[u8; WINDOW]>,
    ring_at: usize,
    last_checkpoint_out: Option<u64>,
    records: Vec<u8>,
    count: u32,
    out: Box<[u8]>,
}

impl ZinfoWriter {
    /// `span`: uncompressed bytes between checkpoints (at least 1).
    pub fn new(span: u64) -> Result<Self> {
        if span == 0 {
            return Err(Error::bad("zinfo: the span must be at least 1 byte"));
        }
        let mut stream = Box::<z::z_stream>::default();
        // SAFETY: `stream` is a valid default z_stream (null allocators: zlib-rs's own);
        // 31 = 15-bit window with the gzip wrapper.
        let rc = unsafe {
            z::inflateInit2_(
                &mut *stream,
                31,
                z::zlibVersion(),
                std::mem::size_of::<z::z_stream>() as i32,
            )
        };
        if rc != z::Z_OK {
            return Err(Error::io(format!("inflateInit2 failed ({rc})")));
        }
        Ok(Self {
            stream,
            span,
            in_offset: 0,
            out_offset: 0,
            since_checkpoint: 0,
            member_start: true,
            member_ended: false,
            window: Box::new([0u8; WINDOW]),
            ring_at: 0,
            last_checkpoint_out: None,
            records: Vec::new(),
            count: 0,
            out: vec![0u8; OUT_CHUNK].into_boxed_slice(),
        })
    }

    pub fn compressed_bytes(&self) -> u64 {
        self.in_offset
    }

    /// Inflate the next piece of the blob, handing all output to `sink` in order.
    pub fn feed(
        &mut self,
        mut input: &[u8],
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        loop {
            if self.member_ended {
                if input.is_empty() {
                    return Ok(());
                }
                // Another member follows: a fresh stream, whose first boundary is a
                // checkpoint (deflate cannot refer back across members).
                // SAFETY: initialised in `new`, not moved (boxed).
                let rc = unsafe { z::inflateReset(&mut *self.stream) };
                if rc != z::Z_OK {
                    return Err(Error::io(format!("inflateReset failed ({rc})")));
                }
                self.member_ended = false;
                self.member_start = true;
            }
            let want_boundary = self.member_start || self.since_checkpoint >= self.span;
            let room = if want_boundary {
                OUT_CHUNK
            } else {
                (self.span - self.since_checkpoint).min(OUT_CHUNK as u64) as usize
            };
            let s = &mut *self.stream;
            let call = inflate_call(s, input, &mut self.out[..room], want_boundary);
            let (rc, consumed, produced) = (call.rc, call.consumed, call.produced);
            let data_type = call.data_type;
            let msg = message(s);
            let at = self.in_offset;
            input = &input[consumed..];
            self.in_offset += consumed as u64;
            if produced > 0 {
                let piece = &self.out[..produced];
                remember(&mut self.window, &mut self.ring_at, piece);
                self.out_offset += produced as u64;
                self.since_checkpoint += produced as u64;
                sink(&self.out[..produced])?;
            }
            match rc {
                z::Z_STREAM_END => {
                    self.member_ended = true;
                    continue;
                }
                z::Z_OK | z::Z_BUF_ERROR => {}
                z::Z_DATA_ERROR => {
                    return Err(Error::bad(format!(
                        "gzip: corrupt data near blob offset {at}: {msg}"
                    )))
                }
                z::Z_NEED_DICT => {
                    return Err(Error::bad(format!(
                        "gzip: the stream near blob offset {at} asks for a preset dictionary"
                    )))
                }
                z::Z_MEM_ERROR => return Err(Error::io("inflate: out of memory")),
                other => {
                    return Err(Error::bad(format!(
                        "gzip: inflate failed ({other}) near blob offset {at}: {msg}"
                    )))
                }
            }
            if want_boundary && data_type & 128 != 0 && data_type & 64 == 0 {
                self.checkpoint((data_type & 7) as u8);
            }
            if consumed == 0 && produced == 0 {
                // Either the input is used up (wait for more) or zlib needs output room
                // it has (impossible): both end this call without looping.
                if input.is_empty() {
                    return Ok(());
                }
                if !(want_boundary && data_type & 128 != 0) {
                    return Err(Error::bad(format!(
                        "gzip: inflate makes no progress near blob offset {}",
                        self.in_offset
                    )));
                }
            }
        }
    }

    fn checkpoint(&mut self, bits: u8) {
        let out = self.out_offset;
        if self.last_checkpoint_out == Some(out) {
            // An empty member: the earlier checkpoint already restarts here.
            self.member_start = false;
            return;
        }
        self.records
            .extend_from_slice(&self.in_offset.to_le_bytes());
        self.records.extend_from_slice(&out.to_le_bytes());
        self.records.push(bits);
        let valid = out.min(WINDOW as u64) as usize;
        self.records
            .extend(std::iter::repeat_n(0u8, WINDOW - valid));
        // The newest `valid` bytes of the ring, oldest first.
        let start = (self.ring_at + WINDOW - valid) % WINDOW;
        if start + valid <= WINDOW {
            self.records
                .extend_from_slice(&self.window[start..start + valid]);
        } else {
            self.records.extend_from_slice(&self.window[start..]);
            self.records
                .extend_from_slice(&self.window[..valid - (WINDOW - start)]);
        }
        self.count += 1;
        self.last_checkpoint_out = Some(out);
        self.since_checkpoint = 0;
        self.member_start = false;
    }

    /// The blob has ended: it must end with a complete member. Returns the zinfo file and
    /// the uncompressed size.
    pub fn finish(self) -> Result<(Vec<u8>, u64)> {
        if !self.member_ended {
            return Err(Error::bad(format!(
                "gzip: the blob ends at offset {} inside a gzip member (truncated blob?)",
                self.in_offset
            )));
        }
        if self.count == 0 {
            return Err(Error::bad("gzip: the blob produced no checkpoint"));
        }
        let mut file = Vec::with_capacity(12 + self.records.len());
        file.extend_from_slice(&self.count.to_le_bytes());
        file.extend_from_slice(&self.span.to_le_bytes());
        file.extend_from_slice(&self.records);
        debug_assert_eq!(file.len(), 12 + self.count as usize * RECORD);
        Ok((file, self.out_offset))
    }
}

impl Drop for ZinfoWriter {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, ended exactly once here.
        unsafe {
            z::inflateEnd(&mut *self.stream);
        }
    }
}

/// Append `piece` to the 32 KiB ring.
fn remember(window: &mut [u8; WINDOW], ring_at: &mut usize, piece: &[u8]) {
    let piece = &piece[piece.len().saturating_sub(WINDOW)..];
    let first = (WINDOW - *ring_at).min(piece.len());
    window[*ring_at..*ring_at + first].copy_from_slice(&piece[..first]);
    window[..piece.len() - first].copy_from_slice(&piece[first..]);
    *ring_at = (*ring_at + piece.len()) % WINDOW;
}

#[cfg(test)]
#[path = "zinfo_writer_tests.rs"]
pub mod tests;
