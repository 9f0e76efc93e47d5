//! A window onto the compressed blob that a cursor consumes front to back.
//!
//! It reads the blob in large pieces (fewer host calls, and for HTTP sources fewer round
//! trips) and hands out the unconsumed bytes. Its position is always the blob offset of
//! the next unconsumed byte, which is what a learned checkpoint records.

use crate::defaults;
use crate::error::{Error, Result};
use crate::source::SizedSource;

/// Bytes read from the blob per refill (see [`defaults::INPUT_READ_SIZE`]).
pub const READ_SIZE: usize = defaults::INPUT_READ_SIZE;

pub struct Input {
    buf: Vec<u8>,
    /// buf[start..] is unconsumed.
    start: usize,
    /// Blob offset of buf[buf.len()]: where the next refill reads.
    next_read: u64,
}

impl Default for Input {
    fn default() -> Self {
        Self::new()
    }
}

impl Input {
    pub fn new() -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            next_read: 0,
        }
    }

    /// Forget everything and continue from blob offset `at`.
    pub fn seek(&mut self, at: u64) {
        self.buf.clear();
        self.start = 0;
        self.next_read = at;
    }

    /// Blob offset of the next unconsumed byte.
    pub fn position(&self) -> u64 {
        self.next_read - (self.buf.len() - self.start) as u64
    }

    pub fn available(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.buf.len());
    }

    /// Read the next piece of the blob. Returns false at the end of the blob.
    pub fn refill(&mut self, blob: &SizedSource) -> Result<bool> {
        let piece = blob.read_clamped(self.next_read, READ_SIZE)?;
        if piece.is_empty() {
            return Ok(false);
        }
        let piece_len = piece.len() as u64;
        // Keep the unconsumed tail (usually empty: inflate consumes all it is given).
        if self.start == self.buf.len() {
            self.buf = piece;
        } else {
            self.buf.drain(..self.start);
            self.buf.extend_from_slice(&piece);
        }
        self.start = 0;
        self.next_read += piece_len;
        Ok(true)
    }

    /// The next byte without consuming it, or None at the end of the blob.
    pub fn peek(&mut self, blob: &SizedSource) -> Result<Option<u8>> {
        if self.start == self.buf.len() && !self.refill(blob)? {
            return Ok(None);
        }
        Ok(self.buf.get(self.start).copied())
    }

    /// The next byte, or None at the end of the blob.
    pub fn byte(&mut self, blob: &SizedSource) -> Result<Option<u8>> {
        if self.start == self.buf.len() && !self.refill(blob)? {
            return Ok(None);
        }
        let b = self.buf[self.start];
        self.start += 1;
        Ok(Some(b))
    }

    /// The next `N` bytes; running out is an error naming `what`.
    pub fn bytes<const N: usize>(&mut self, blob: &SizedSource, what: &str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        for slot in out.iter_mut() {
            let at = self.position();
            *slot = self.byte(blob)?.ok_or_else(|| {
                Error::bad(format!("gzip: blob ends at offset {at} inside the {what}"))
            })?;
        }
        Ok(out)
    }
}
