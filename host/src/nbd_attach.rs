//! `mount --backend nbd`: attach the device to a kernel NBD device. (Being written.)

use std::path::Path;

use anyhow::{bail, Result};

use crate::cli::DeviceArgs;

/// A kernel mount on an NBD device; dropping it unmounts and disconnects.
pub struct AttachedMount;

impl AttachedMount {
    /// Unmount and disconnect the NBD device.
    pub fn unmount(self) -> Result<()> {
        Ok(())
    }
}

pub fn attach_and_mount(
    _device: &DeviceArgs,
    _mountpoint: &Path,
    _verify: bool,
) -> Result<AttachedMount> {
    bail!("--backend nbd is not implemented yet")
}
