//! A raw-deflate inflater that can start in the middle of a stream.
//!
//! The cursor (cursor.rs) drives it through [`RawInflater`]: restart at a checkpoint
//! (prime the partial byte, install the 32 KiB history), then feed input and take output,
//! optionally stopping at every deflate block boundary so checkpoints can be learned.
//!
//! Two engines share one interface and the types in [`step`]: zlib-rs ([`zlib`], the
//! default) and miniz_oxide (`miniz`, with the `miniz` cargo feature, for benchmarks).

#[cfg(feature = "miniz")]
mod miniz;
pub mod step;
pub mod zlib;

#[cfg(feature = "miniz")]
pub use miniz::RawInflater;
pub use step::{Status, Step};
pub use zlib::crc32;
#[cfg(not(feature = "miniz"))]
pub use zlib::ZlibInflater as RawInflater;
