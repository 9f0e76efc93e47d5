//! `erofs-host verify`: walk the whole EROFS image inside the sandbox, as the loop and
//! NBD backends do before a kernel sees the image.

use anyhow::{anyhow, Result};
use clap::Args;

use crate::cli::DeviceArgs;
use crate::runtime::{Runtime, VerifyReport};
use crate::sandbox::SandboxedDevice;

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// Open the filesystem and check every inode, dirent and chunk address. The error names
/// the first defect and its path.
pub fn verify_image(device: &DeviceArgs) -> Result<VerifyReport> {
    let (spec, limits) = device.spec()?;
    let runtime = Runtime::load(&device.component)?;
    let mut fs = SandboxedDevice::open_filesystem(runtime, spec, limits)?;
    fs.verify().map_err(|e| {
        anyhow!(
            "{}: the image failed verification: {e}",
            device.tarindex_path().display()
        )
    })
}

pub fn run(args: VerifyArgs) -> Result<()> {
    let r = verify_image(&args.device)?;
    println!(
        "ok: {} directories, {} regular files, {} symlinks, {} special files, {} entries, {} hard links, {} bytes of file data",
        r.directories, r.regular_files, r.symlinks, r.special_files, r.entries, r.hard_links, r.data_bytes
    );
    Ok(())
}
