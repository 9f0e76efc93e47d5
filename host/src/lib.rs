//! erofs-host as a library: the layers under the `erofs-host` binary, one folder per
//! concern. Dependencies point downwards only: commands → bridges → sandbox → net.
//!
//! - [`commands`]: the subcommands (`cat`, `bench`, `verify`, `serve-nbd`, `mount`,
//!   `umount`, `index`) and the device arguments they share. No command uses another command.
//! - [`bridge`]: how the kernel reaches a sandboxed device: the FUSE filesystem
//!   (`--backend fuse`), the FUSE-served device file of `--backend loop`, and the NBD
//!   export and kernel attach (`serve-nbd`, `--backend nbd`).
//! - [`sandbox`]: the wasmtime runtime, the host `vfile`s, one sandboxed device (memory
//!   cap, call deadline, rebuild after a trap), the pools of instances, and the one
//!   table from component errors to errno.
//! - [`net`]: what the component's `wasi:http` requests go through: the egress
//!   allow-list, the host's HTTP sender, registry credentials and the range cache.
//! - [`snapshotter`]: `erofs-host snapshotter`, containerd's remote snapshotter over
//!   lazily mounted layers (one `erofs-host mount` daemon per layer).
//! - [`atomic_output`]: output files written whole or not at all, even on Ctrl-C.
//! - [`mount_registry`]: the record of live mounts that `umount` reads.
//! - [`defaults`]: every default setting, each with its reason.
//! - [`env`]: environment variables that name paths (an empty value means unset).
//! - [`progress`]: progress on long work, on a terminal only (`--quiet` silences it).

pub(crate) mod atomic_output;
pub(crate) mod bridge;
pub mod commands;
pub(crate) mod defaults;
pub(crate) mod env;
pub(crate) mod mount_registry;
pub(crate) mod net;
pub mod progress;
pub mod sandbox;
pub mod snapshotter;
