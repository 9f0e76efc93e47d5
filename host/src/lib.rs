//! erofs-host as a library: the layers under the `erofs-host` binary.
//!
//! - [`runtime`]: the wasmtime engine, the precompiled-component cache, the linker.
//! - [`files`]: the host `vfile`s (local files) that the component reads.
//! - [`sandbox`]: a device served by one sandboxed instance (memory cap, call deadline,
//!   rebuild after a trap).
//! - [`device_pool`]: several sandboxed instances serving one device to many threads.
//! - [`cli`], [`cat`], [`bench`], [`verify`], [`serve_nbd`]: the commands.
//! - [`image`]: a whole image: every layer mounted, merged by overlayfs.
//! - [`nbd_attach`]: `mount --backend nbd` (the kernel's NBD client on our server).

pub mod bench;
pub mod cat;
pub mod cli;
pub mod credentials;
pub mod device_pool;
pub mod egress;
pub mod files;
pub mod fuse_fs;
pub mod fuse_image;
pub mod http_send;
pub mod image;
pub mod mount;
pub mod mounts;
pub mod nbd_attach;
pub mod pool;
pub mod range_cache;
pub mod runtime;
pub mod sandbox;
pub mod serve_nbd;
pub mod verify;
