//! The whole-image check that runs inside the sandbox before a kernel sees an image (the
//! loop and NBD backends, `serve-nbd`) and as `erofs-host verify`.
//!
//! Two depths:
//! - [`Depth::Metadata`] (the default): every inode, dirent and chunk address of the
//!   EROFS metadata, plus (when the device opens) the tar headers of a few files spread
//!   over the tar. It proves the metadata is well-formed and belongs to this tar, but it
//!   reads only a few blocks of the tar.
//! - [`Depth::Deep`]: also the tar header before every regular file's data (type, size,
//!   name), in tar order: so every file the kernel will read is the tar's own bytes for
//!   that name. It reads the whole tar once.

use std::sync::Arc;

use anyhow::{anyhow, Result};

use super::device::{BlobSource, DeviceSpec, Limits, SandboxedDevice};
use super::runtime::{Runtime, VerifyReport};

/// How much [`verify_image`] checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    Metadata,
    Deep,
}

/// What [`verify_image`] found.
#[derive(Debug, Clone)]
pub struct Verified {
    pub report: VerifyReport,
    /// Regular files whose tar header was checked ([`Depth::Deep`] only).
    pub headers_checked: Option<u64>,
}

/// Tar bytes a deep check may read per call deadline: decoding runs far above 100 MB/s,
/// so 256 MiB per deadline (30 s by default) leaves a wide margin while a stuck guest is
/// still stopped.
const DEEP_BYTES_PER_DEADLINE: u64 = 256 << 20;

/// Open the filesystem and check every inode, dirent and chunk address (and, `Deep`,
/// every regular file's tar header). The error names the metadata image, then the first
/// defect and its path.
///
/// Fault injection (`--inject-trap-after-blob-reads`) is left to the reads served after
/// the check: the check runs on a copy of the spec without it, so it cannot spend it.
pub fn verify_image(
    runtime: Arc<Runtime>,
    spec: &DeviceSpec,
    limits: Limits,
    depth: Depth,
) -> Result<Verified> {
    #[cfg_attr(not(feature = "fault-injection"), allow(unused_mut))]
    let mut plain = spec.clone();
    #[cfg(feature = "fault-injection")]
    {
        plain.trap_after_blob_reads = None;
    }
    let meta = plain.meta.clone();
    let mut fs = SandboxedDevice::open_filesystem(runtime, plain, limits)?;
    let report = fs
        .verify()
        .map_err(|e| anyhow!("{}: the image failed verification: {e}", meta.display()))?;
    let headers_checked = match depth {
        Depth::Metadata => None,
        Depth::Deep => {
            let tar = fs.size().saturating_sub(fs.meta_size());
            if matches!(spec.blob, BlobSource::Remote { .. }) {
                eprintln!(
                    "erofs-host: warning: the deep check reads the whole tar: for this remote blob that means fetching all of it ({tar} bytes uncompressed)"
                );
            }
            let deadlines = 1 + tar / DEEP_BYTES_PER_DEADLINE;
            let per_call = limits.call_timeout;
            fs.set_call_timeout(
                per_call.saturating_mul(u32::try_from(deadlines).unwrap_or(u32::MAX)),
            );
            let n = fs
                .verify_headers()
                .map_err(|e| anyhow!("{}: the image failed the deep check: {e}", meta.display()))?;
            fs.set_call_timeout(per_call);
            Some(n)
        }
    };
    Ok(Verified {
        report,
        headers_checked,
    })
}
