//! Byte sources. In the component these are the embedder's `vfile`s; in native tests they
//! are in-memory buffers or files. Everything above this module reads through [`Source`].

use std::cell::Cell;

use crate::error::{Error, Result};

/// The counters of a remote source (remote/), since the blob was opened (manifest and
/// token requests included). Defined here, beside [`Source`], so that the trait and the
/// remote client both use it without depending on each other.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RemoteStats {
    /// HTTP requests sent, and response body bytes received.
    pub requests: u64,
    pub bytes_fetched: u64,
    /// Attempts repeated after a failure (connection error, 5xx, bad response).
    pub retries: u64,
    /// Redirects followed.
    pub redirects: u64,
    /// Bearer tokens obtained (the first one and every refresh).
    pub token_fetches: u64,
    /// Chunks a read found in the chunk cache, and chunks it had to fetch.
    pub chunk_hits: u64,
    pub chunk_misses: u64,
}

/// A random-access, read-only byte source with the `vfile` contract: `pread` returns
/// exactly `len` bytes unless the range runs past the end, then the bytes that exist.
pub trait Source {
    fn size(&self) -> Result<u64>;
    fn pread(&self, offset: u64, len: u32) -> Result<Vec<u8>>;
    /// The network counters of a remote source; None for everything else.
    fn remote_stats(&self) -> Option<RemoteStats> {
        None
    }
    /// Byte ranges `[start, end)` about to be read, each by a read of its own: a remote
    /// source asks for them all at once instead of one read's round trip after another.
    /// Only a hint: nothing is read or checked here, and a source may ignore it.
    fn will_need(&self, _ranges: &[(u64, u64)]) {}
}

/// A source whose size was read once at open and is trusted from then on, with a name
/// for error messages ("meta", "blob", "zinfo").
pub struct SizedSource {
    pub name: &'static str,
    pub size: u64,
    inner: Box<dyn Source>,
    /// pread calls made and bytes they returned, for `device-stats`.
    pub reads: Cell<u64>,
    pub bytes_read: Cell<u64>,
}

impl SizedSource {
    pub fn new(name: &'static str, inner: Box<dyn Source>) -> Result<Self> {
        let size = inner.size().map_err(|e| e.context(name))?;
        Ok(Self {
            name,
            size,
            inner,
            reads: Cell::new(0),
            bytes_read: Cell::new(0),
        })
    }

    pub fn remote_stats(&self) -> Option<RemoteStats> {
        self.inner.remote_stats()
    }

    /// [`Source::will_need`], clamped to the size.
    pub fn will_need(&self, ranges: &[(u64, u64)]) {
        let clamped: Vec<(u64, u64)> = ranges
            .iter()
            .map(|&(a, b)| (a.min(self.size), b.min(self.size)))
            .filter(|(a, b)| a < b)
            .collect();
        if !clamped.is_empty() {
            self.inner.will_need(&clamped);
        }
    }

    /// Read exactly `len` bytes at `offset`, all of which must lie inside the source.
    /// A short answer from the embedder is an I/O error, never silently accepted.
    pub fn read_exact(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let end = offset.checked_add(len as u64).filter(|&e| e <= self.size);
        if end.is_none() {
            return Err(Error::out_of_range(format!(
                "{}: read of {len} bytes at offset {offset} passes the end ({} bytes)",
                self.name, self.size
            )));
        }
        let len32 = u32::try_from(len).map_err(|_| {
            Error::out_of_range(format!("{}: read of {len} bytes is too large", self.name))
        })?;
        let data = self
            .inner
            .pread(offset, len32)
            .map_err(|e| e.context(self.name))?;
        self.reads.set(self.reads.get() + 1);
        self.bytes_read
            .set(self.bytes_read.get() + data.len() as u64);
        if data.len() != len {
            return Err(Error::io(format!(
                "{}: asked for {len} bytes at offset {offset}, got {}",
                self.name,
                data.len()
            )));
        }
        Ok(data)
    }

    /// Read up to `len` bytes at `offset`, clamped to the size. Used for streaming input.
    pub fn read_clamped(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let available = self.size.saturating_sub(offset);
        let want = (len as u64).min(available) as usize;
        if want == 0 {
            return Ok(Vec::new());
        }
        self.read_exact(offset, want)
    }
}

/// An in-memory source, for tests and for embedders that already hold the bytes.
pub struct MemSource(pub Vec<u8>);

impl Source for MemSource {
    fn size(&self) -> Result<u64> {
        Ok(self.0.len() as u64)
    }
    fn pread(&self, offset: u64, len: u32) -> Result<Vec<u8>> {
        let size = self.0.len() as u64;
        let start = offset.min(size) as usize;
        let end = offset.saturating_add(len as u64).min(size) as usize;
        Ok(self.0[start..end].to_vec())
    }
}
