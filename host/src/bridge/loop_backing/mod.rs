//! `--backend loop`: the device bytes as one read-only file in a private FUSE mount, so
//! that the kernel's EROFS can loop-mount it.

pub(crate) mod device_file;

pub(crate) use device_file::{DeviceFile, IMAGE_NAME};
