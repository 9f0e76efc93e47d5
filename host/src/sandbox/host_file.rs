//! Host-side `vfile`s: the only bytes the component can see. Each one is a file the user
//! named on the command line, opened read-only by the host.
//!
//! This module knows nothing of wasmtime: [`runtime`](super::runtime) implements the WIT
//! `vfile` resource on top of it and turns a [`ReadError`] into the WIT `error`.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
#[cfg(feature = "fault-injection")]
use std::sync::atomic::AtomicI64;
#[cfg(feature = "fault-injection")]
use std::sync::Arc;

use anyhow::{Context, Result};

/// The largest single pread the host serves for the guest. The guest reads 256 KiB
/// pieces; 64 MiB is a bound against a confused guest asking the host for gigabytes.
pub(crate) const MAX_PREAD: u32 = 64 << 20;

pub struct HostFile {
    pub(crate) path: PathBuf,
    file: File,
    pub(crate) size: u64,
    /// Fault injection (tests): when this countdown, shared by all instances, passes
    /// zero on a read, that read traps the guest.
    #[cfg(feature = "fault-injection")]
    pub(crate) trap_after_reads: Option<Arc<AtomicI64>>,
}

/// Why a host pread failed, with the fields a message needs.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The guest asked for more than [`MAX_PREAD`] bytes at once.
    TooLarge { len: u32 },
    /// The file ended before the size it had when it was opened.
    Shrank { at: u64 },
    /// The read itself failed.
    Io { at: u64, source: std::io::Error },
}

impl HostFile {
    pub fn open(path: &Path) -> Result<HostFile> {
        let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
        let meta = file
            .metadata()
            .with_context(|| format!("{}: cannot stat", path.display()))?;
        if meta.is_dir() {
            anyhow::bail!("{}: is a directory", path.display());
        }
        Ok(HostFile {
            path: path.to_path_buf(),
            file,
            size: meta.len(),
            #[cfg(feature = "fault-injection")]
            trap_after_reads: None,
        })
    }

    /// Up to `len` bytes at `offset`: exactly `len` unless the range runs past the end
    /// (the WIT `vfile.pread` contract).
    pub(crate) fn pread(&self, offset: u64, len: u32) -> Result<Vec<u8>, ReadError> {
        if len > MAX_PREAD {
            return Err(ReadError::TooLarge { len });
        }
        let end = offset.saturating_add(u64::from(len)).min(self.size);
        let want = usize::try_from(end.saturating_sub(offset)).unwrap_or(0);
        let mut buf = vec![0u8; want];
        let mut done = 0;
        while let Some(rest) = buf.get_mut(done..).filter(|r| !r.is_empty()) {
            let at = offset + done as u64;
            match self.file.read_at(rest, at) {
                Ok(0) => return Err(ReadError::Shrank { at }),
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => return Err(ReadError::Io { at, source }),
            }
        }
        Ok(buf)
    }
}
