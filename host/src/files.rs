//! Host-side `vfile`s: the only bytes the component can see. Each one is a file the user
//! named on the command line, opened read-only by the host.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use wasmtime::component::Resource;

use crate::runtime::erofs::reader::{types, vfile};
use crate::runtime::{StoreState, WitError};

/// The largest single pread the host serves for the guest. The guest reads 256 KiB
/// pieces; 64 MiB is a bound against a confused guest asking the host for gigabytes.
const MAX_PREAD: u32 = 64 << 20;

pub struct HostFile {
    path: PathBuf,
    file: File,
    size: u64,
    /// Fault injection (tests): when this countdown, shared by all instances, passes
    /// zero on a read, that read traps the guest.
    pub trap_after_reads: Option<Arc<AtomicI64>>,
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
            trap_after_reads: None,
        })
    }

    fn pread(&self, offset: u64, len: u32) -> Result<Vec<u8>, WitError> {
        if len > MAX_PREAD {
            return Err(WitError::OutOfRange(format!(
                "{}: read of {len} bytes is too large",
                self.path.display()
            )));
        }
        let end = offset.saturating_add(len as u64).min(self.size);
        let want = end.saturating_sub(offset) as usize;
        let mut buf = vec![0u8; want];
        let mut done = 0;
        while done < want {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => {
                    return Err(WitError::Io(format!(
                        "{}: file shrank: read at {} returned nothing",
                        self.path.display(),
                        offset + done as u64
                    )))
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(WitError::Io(format!(
                        "{}: read at {offset}: {e}",
                        self.path.display()
                    )))
                }
            }
        }
        Ok(buf)
    }
}

impl types::Host for StoreState {}

impl vfile::Host for StoreState {}

impl vfile::HostVfile for StoreState {
    fn size(&mut self, file: Resource<HostFile>) -> wasmtime::Result<Result<u64, WitError>> {
        Ok(Ok(self.table.get(&file)?.size))
    }

    fn pread(
        &mut self,
        file: Resource<HostFile>,
        offset: u64,
        len: u32,
    ) -> wasmtime::Result<Result<Vec<u8>, WitError>> {
        let file = self.table.get(&file)?;
        if let Some(countdown) = &file.trap_after_reads {
            if countdown.fetch_sub(1, Ordering::SeqCst) == 0 {
                return Err(wasmtime::Error::msg(format!(
                    "injected fault: trap on a read of {}",
                    file.path.display()
                )));
            }
        }
        Ok(file.pread(offset, len))
    }

    fn drop(&mut self, file: Resource<HostFile>) -> wasmtime::Result<()> {
        self.table.delete(file)?;
        Ok(())
    }
}
