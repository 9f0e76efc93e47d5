//! Bridges from the kernel to a sandboxed device.
//!
//! - [`fuse`]: `--backend fuse`, the EROFS tree parsed in the sandbox, answered over FUSE.
//! - [`loop_backing`]: `--backend loop`, the device as one FUSE-served file that the
//!   kernel's EROFS loop-mounts.
//! - [`nbd`]: the device as an NBD export (`serve-nbd`) and the kernel NBD attach
//!   (`--backend nbd`).

pub(crate) mod fuse;
pub(crate) mod loop_backing;
pub(crate) mod nbd;
