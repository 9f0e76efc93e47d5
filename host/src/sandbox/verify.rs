//! The whole-image check that runs inside the sandbox before a kernel sees an image (the
//! loop and NBD backends, `serve-nbd`) and as `erofs-host verify`.

use std::sync::Arc;

use anyhow::{anyhow, Result};

use super::device::{DeviceSpec, Limits, SandboxedDevice};
use super::runtime::{Runtime, VerifyReport};

/// Open the filesystem and check every inode, dirent and chunk address. The error names
/// the metadata image, then the first defect and its path.
///
/// Fault injection (`--inject-trap-after-blob-reads`) is left to the reads served after
/// the check: the check runs on a copy of the spec without it, so it cannot spend it.
pub fn verify_image(
    runtime: Arc<Runtime>,
    spec: &DeviceSpec,
    limits: Limits,
) -> Result<VerifyReport> {
    #[cfg_attr(not(feature = "fault-injection"), allow(unused_mut))]
    let mut plain = spec.clone();
    #[cfg(feature = "fault-injection")]
    {
        plain.trap_after_blob_reads = None;
    }
    let meta = plain.meta.clone();
    let mut fs = SandboxedDevice::open_filesystem(runtime, plain, limits)?;
    fs.verify()
        .map_err(|e| anyhow!("{}: the image failed verification: {e}", meta.display()))
}
