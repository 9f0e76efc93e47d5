//! Random access into a gzip blob (zran.c's idea, with SOCI zinfo checkpoints).
//!
//! The pieces, from the bytes up:
//! - [`zinfo`]: the checkpoint index file (v1/v2), parsed and checked whole at open;
//! - [`gzip`]: member header and trailer framing;
//! - [`inflate`]: a raw-deflate engine that can restart at a checkpoint;
//! - [`input`]: the window of compressed bytes a cursor consumes;
//! - [`cursor`]: one live decoder, a page at a time, across members;
//! - [`checkpoints`]: checkpoints learned while decoding;
//! - [`proof`]: which zinfo checkpoints are proven, and proving them on the way;
//! - [`cache`]: decoded pages;
//! - [`reader`]: [`GzRan`], which ties them together for `pread`.

pub mod cache;
pub mod checkpoints;
pub mod cursor;
pub mod inflate;
pub mod input;
pub mod proof;
pub mod reader;

parser_modules! {
    pub mod gzip;
    pub mod zinfo;
}

pub use proof::ZinfoTrust;
pub use reader::{Counters, GzRan, Options};
