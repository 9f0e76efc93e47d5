//! erofs-wasm's component: the tar-index device (`meta ‖ tar`) with random access into
//! gzip layers, behind the WIT contract in `wit/reader.wit`.
//!
//! Everything here is plain Rust over the [`source::Source`] trait, so it is unit-tested
//! natively; `bindings` (wasm32 only) adapts it to the WIT imports and exports.

pub mod build;
pub mod cache;
pub mod checkpoints;
pub mod cursor;
pub mod device;
pub mod error;
pub mod fs;
pub mod gzip;
pub mod gzran;
pub mod inflate;
#[cfg(feature = "miniz")]
mod inflate_miniz;
pub mod input;
pub mod remote;
pub mod source;
pub mod zinfo;

#[cfg(target_arch = "wasm32")]
mod bindings;
