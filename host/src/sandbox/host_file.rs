//! Host-side `vfile`s: the only bytes the component can see. Each one is a file the user
//! named on the command line, opened read-only by the host, or the bytes of such a file
//! read once (a [`Snapshot`]): the META and the zinfo, which every instance of one device
//! must see exactly as the first did (a file changed on disk after the mount changes
//! nothing).
//!
//! This module knows nothing of wasmtime: [`runtime`](super::runtime) implements the WIT
//! `vfile` resource on top of it and turns a [`ReadError`] into the WIT `error`.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
#[cfg(feature = "fault-injection")]
use std::sync::atomic::AtomicI64;
use std::sync::Arc;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// The largest single pread the host serves for the guest. The guest reads 256 KiB
/// pieces; 64 MiB is a bound against a confused guest asking the host for gigabytes.
pub(crate) const MAX_PREAD: u32 = 64 << 20;

pub struct HostFile {
    pub(crate) path: PathBuf,
    backing: Backing,
    pub(crate) size: u64,
    /// Fault injection (tests): when this countdown, shared by all instances, passes
    /// zero on a read, that read traps the guest.
    #[cfg(feature = "fault-injection")]
    pub(crate) trap_after_reads: Option<Arc<AtomicI64>>,
}

/// Where a vfile's bytes come from.
enum Backing {
    /// Read live from the open file (the blob: too large to keep, and its size is
    /// checked on every reopen).
    File(File),
    /// Bytes read once ([`Snapshot`]), shared by every instance.
    Bytes(Arc<[u8]>),
}

/// A file read whole, once, with its SHA-256: what every instance of a device is given
/// instead of the path, so that the metadata verified is the metadata served.
#[derive(Clone)]
pub struct Snapshot {
    pub path: PathBuf,
    pub bytes: Arc<[u8]>,
    /// `sha256:<hex>` of `bytes`.
    pub digest: String,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({} bytes, {})",
            self.path.display(),
            self.bytes.len(),
            self.digest
        )
    }
}

impl Snapshot {
    /// Read `path` whole. The memory it takes is the file's size, once per process (every
    /// instance shares it); a tar index is ~1% of its tar, a zinfo ~1.6%.
    pub fn read(path: &Path) -> Result<Snapshot> {
        let mut file =
            File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
        let meta = file
            .metadata()
            .with_context(|| format!("{}: cannot stat", path.display()))?;
        if meta.is_dir() {
            anyhow::bail!("{}: is a directory", path.display());
        }
        let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
        file.read_to_end(&mut bytes)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        Ok(Snapshot {
            path: path.to_path_buf(),
            bytes: bytes.into(),
            digest,
        })
    }
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
            backing: Backing::File(file),
            size: meta.len(),
            #[cfg(feature = "fault-injection")]
            trap_after_reads: None,
        })
    }

    /// A vfile over bytes read earlier: every read is served from them.
    pub fn from_snapshot(snapshot: &Snapshot) -> HostFile {
        HostFile {
            path: snapshot.path.clone(),
            backing: Backing::Bytes(snapshot.bytes.clone()),
            size: snapshot.bytes.len() as u64,
            #[cfg(feature = "fault-injection")]
            trap_after_reads: None,
        }
    }

    /// Up to `len` bytes at `offset`: exactly `len` unless the range runs past the end
    /// (the WIT `vfile.pread` contract).
    pub(crate) fn pread(&self, offset: u64, len: u32) -> Result<Vec<u8>, ReadError> {
        if len > MAX_PREAD {
            return Err(ReadError::TooLarge { len });
        }
        let end = offset.saturating_add(u64::from(len)).min(self.size);
        let want = usize::try_from(end.saturating_sub(offset)).unwrap_or(0);
        let file = match &self.backing {
            Backing::Bytes(bytes) => {
                // `offset < end <= size = bytes.len()` whenever `want > 0`.
                let start = usize::try_from(offset).unwrap_or(usize::MAX);
                return Ok(bytes
                    .get(start..start.saturating_add(want))
                    .map(<[u8]>::to_vec)
                    .unwrap_or_default());
            }
            Backing::File(file) => file,
        };
        let mut buf = vec![0u8; want];
        let mut done = 0;
        while let Some(rest) = buf.get_mut(done..).filter(|r| !r.is_empty()) {
            let at = offset + done as u64;
            match file.read_at(rest, at) {
                Ok(0) => return Err(ReadError::Shrank { at }),
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => return Err(ReadError::Io { at, source }),
            }
        }
        Ok(buf)
    }
}
