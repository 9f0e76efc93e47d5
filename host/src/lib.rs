//! erofs-host as a library: the layers under the `erofs-host` binary.
//!
//! - [`runtime`]: the wasmtime engine, the precompiled-component cache, the linker.
//! - [`files`]: the host `vfile`s (local files) that the component reads.
//! - [`sandbox`]: a device served by one sandboxed instance (memory cap, call deadline,
//!   rebuild after a trap).
//! - [`cli`], [`cat`], [`bench`]: the commands.

pub mod bench;
pub mod cat;
pub mod cli;
pub mod files;
pub mod fuse_fs;
pub mod fuse_image;
pub mod mount;
pub mod mounts;
pub mod nbd_attach;
pub mod pool;
pub mod runtime;
pub mod sandbox;
pub mod serve_nbd;
pub mod verify;
