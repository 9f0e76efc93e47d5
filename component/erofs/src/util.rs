//! Small panic-free helpers: little-endian field access, checked conversions, error builders.

use crate::Error;

/// Little-endian u16 at `off`, or `None` when the slice is too short.
pub(crate) fn le16(b: &[u8], off: usize) -> Option<u16> {
    b.get(off..)?
        .first_chunk::<2>()
        .map(|a| u16::from_le_bytes(*a))
}

/// Little-endian u32 at `off`, or `None` when the slice is too short.
pub(crate) fn le32(b: &[u8], off: usize) -> Option<u32> {
    b.get(off..)?
        .first_chunk::<4>()
        .map(|a| u32::from_le_bytes(*a))
}

/// Little-endian u64 at `off`, or `None` when the slice is too short.
pub(crate) fn le64(b: &[u8], off: usize) -> Option<u64> {
    b.get(off..)?
        .first_chunk::<8>()
        .map(|a| u64::from_le_bytes(*a))
}

/// Byte at `off`, or `None`.
pub(crate) fn byte(b: &[u8], off: usize) -> Option<u8> {
    b.get(off).copied()
}

/// Field readers for buffers whose length the caller has already fixed (a short buffer yields 0,
/// which can only happen on a programming error, never because of image contents).
pub(crate) struct Fixed<'a>(pub &'a [u8]);

impl Fixed<'_> {
    pub(crate) fn u8(&self, off: usize) -> u8 {
        byte(self.0, off).unwrap_or(0)
    }
    pub(crate) fn u16(&self, off: usize) -> u16 {
        le16(self.0, off).unwrap_or(0)
    }
    pub(crate) fn u32(&self, off: usize) -> u32 {
        le32(self.0, off).unwrap_or(0)
    }
    pub(crate) fn u64(&self, off: usize) -> u64 {
        le64(self.0, off).unwrap_or(0)
    }
}

/// Build a [`Error::Corrupt`].
pub(crate) fn corrupt(msg: impl Into<String>) -> Error {
    Error::Corrupt(msg.into())
}

/// Convert to `usize` (which is 32 bits on wasm32), failing as corruption.
pub(crate) fn to_usize(v: u64, what: &str) -> Result<usize, Error> {
    usize::try_from(v).map_err(|_| corrupt(format!("{what} {v} does not fit in memory")))
}

/// Widen a `usize` (always fits in u64 on supported targets).
pub(crate) fn to_u64(v: usize) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// `a + b`, or a corruption error naming `what`.
pub(crate) fn add(a: u64, b: u64, what: &str) -> Result<u64, Error> {
    a.checked_add(b)
        .ok_or_else(|| corrupt(format!("{what}: address overflow")))
}

/// `a * b`, or a corruption error naming `what`.
pub(crate) fn mul(a: u64, b: u64, what: &str) -> Result<u64, Error> {
    a.checked_mul(b)
        .ok_or_else(|| corrupt(format!("{what}: address overflow")))
}

/// Round `v` up to a multiple of the power of two `align`.
pub(crate) fn round_up(v: u64, align: u64, what: &str) -> Result<u64, Error> {
    let mask = align.saturating_sub(1);
    Ok(add(v, mask, what)? & !mask)
}

/// Read `len` bytes at `off` into a fresh vector.
pub(crate) fn read_vec(
    dev: &mut dyn crate::ReadAt,
    off: u64,
    len: usize,
) -> Result<Vec<u8>, Error> {
    let mut buf = vec![0u8; len];
    if len > 0 {
        dev.read_exact_at(off, &mut buf)?;
    }
    Ok(buf)
}
