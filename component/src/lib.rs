//! erofs-wasm's component: the tar-index device (`meta ‖ tar`) with random access into
//! gzip layers, behind the WIT contract in `wit/reader.wit`.
//!
//! Everything here is plain Rust over the [`source::Source`] trait, so it is unit-tested
//! natively; `bindings` (wasm32 only) adapts it to the WIT imports and exports.
//!
//! Folders by concern:
//! - [`gzran`]: random access into a gzip blob (zinfo, gzip framing, inflate, cursors,
//!   learned checkpoints, the page cache);
//! - [`tarindex`]: the device `meta ‖ tar` and its layout checks;
//! - [`remote`]: the OCI/HTTP client over `wasi:http`;
//! - [`fs`]: the EROFS filesystem (crate `erofs-image`) on a device;
//! - [`build`]: the I/O-free index builder (tar parser, EROFS tar-index and zinfo writers).
//!
//! The formats are described in `docs/formats.md`.

/// Declares modules that parse outside data (zinfo, gzip, and the remote client's URLs,
/// references, manifests and auth challenges) under erofs-image's lint rules: no
/// indexing, unwrap or panic, no unchecked arithmetic, no truncating casts. Their unit
/// tests may index, unwrap and panic.
macro_rules! parser_modules {
    ($($vis:vis mod $name:ident;)*) => {$(
        #[deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]
        #[deny(clippy::panic, clippy::arithmetic_side_effects)]
        #[deny(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
        #[deny(clippy::cast_sign_loss)]
        #[cfg_attr(test, allow(clippy::indexing_slicing, clippy::unwrap_used))]
        #[cfg_attr(test, allow(clippy::panic))]
        $vis mod $name;
    )*};
}

pub mod build;
pub mod defaults;
pub mod error;
pub mod fs;
pub mod gzran;
pub mod remote;
pub mod source;
pub mod tarindex;

#[cfg(target_arch = "wasm32")]
mod bindings;
