//! `erofs-nbd`: a small, read-only NBD (Network Block Device) server built on std threads.
//!
//! The server speaks the fixed-newstyle handshake of the public NBD protocol
//! specification (`NBD_OPT_GO`, `NBD_OPT_INFO`, `NBD_OPT_EXPORT_NAME`, `NBD_OPT_LIST`,
//! `NBD_OPT_ABORT`, `NBD_OPT_STRUCTURED_REPLY`) and then serves one export, backed by a
//! [`BlockSource`], to any number of clients over TCP or a Unix socket.
//!
//! Unlike the reference server this crate replaces (see the tar-index specification,
//! section 5.1), an error reply never carries data, a failed read is never turned into
//! zeros, and every request gets exactly one reply.
//!
//! ```no_run
//! use std::sync::{atomic::AtomicBool, Arc};
//! use erofs_nbd::{BlockSource, Listen, ReadError, Server, ServerConfig};
//!
//! struct Zeros;
//! impl BlockSource for Zeros {
//!     fn size(&self) -> u64 { 1 << 20 }
//!     fn read_at(&self, _offset: u64, len: u32) -> Result<Vec<u8>, ReadError> {
//!         Ok(vec![0; len as usize])
//!     }
//! }
//!
//! let config = ServerConfig { export_name: "disk".into(), ..ServerConfig::default() };
//! let server = Server::bind(Listen::Tcp("127.0.0.1:10809".parse().unwrap()), config, Arc::new(Zeros))?;
//! let stop = Arc::new(AtomicBool::new(false));
//! server.serve(stop)?;
//! # Ok::<(), std::io::Error>(())
//! ```

mod handshake;
mod net;
mod proto;
mod server;
/// A raw NBD client for protocol tests (this crate's and erofs-host's).
#[cfg(feature = "test-client")]
pub mod test_client;
mod transmission;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

pub use server::{serve_unix_client, Server};

/// The bytes an NBD export serves. One instance is shared by every connection and every
/// worker thread, so implementations must be safe to call concurrently.
pub trait BlockSource: Send + Sync + 'static {
    /// Size of the export in bytes. It is read once per connection, during the handshake.
    fn size(&self) -> u64;

    /// Reads exactly `len` bytes at `offset`. The server only asks for ranges with
    /// `1 <= len <= max_request` and `offset + len <= size()`. An `Err` fails that one
    /// request (`Io` as `EIO`, `Invalid` as `EINVAL`); a reply of the wrong length is
    /// treated as `EIO` and is never padded or cut.
    fn read_at(&self, offset: u64, len: u32) -> Result<Vec<u8>, ReadError>;
}

/// Why a [`BlockSource`] read failed. The message is logged on the server side; the
/// client only sees the error number and a generic text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// The data could not be produced (I/O, decompression, network...): `EIO`.
    Io(String),
    /// The request itself made no sense to the source: `EINVAL`.
    Invalid(String),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Io(m) => write!(f, "I/O error: {m}"),
            ReadError::Invalid(m) => write!(f, "invalid read: {m}"),
        }
    }
}

impl std::error::Error for ReadError {}

/// Settings of one server (one export).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Name of the single export. Clients may also ask for the empty name `""`, which
    /// selects this export as the default one.
    pub export_name: String,
    /// Optional human-readable description, sent in `NBD_INFO_DESCRIPTION` and
    /// `NBD_OPT_LIST` replies.
    pub description: Option<String>,
    /// Largest read a client may request, advertised as the maximum payload in
    /// `NBD_INFO_BLOCK_SIZE`. Must be in `4096..=2^31`. Default 32 MiB.
    pub max_request: u32,
    /// Reader threads per connection that call [`BlockSource::read_at`] in parallel.
    /// `0` is treated as `1`. Default 4.
    pub workers_per_connection: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            export_name: String::new(),
            description: None,
            max_request: 32 * 1024 * 1024,
            workers_per_connection: 4,
        }
    }
}

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A TCP address; port 0 picks a free port (see [`Server::local_addr`]).
    Tcp(SocketAddr),
    /// A Unix stream socket at this path. The path must not exist yet; the server removes
    /// the socket file when [`Server::serve`] returns.
    Unix(PathBuf),
}

/// What the handshake and transmission code need to know about the export; fixed for the
/// lifetime of a connection.
#[derive(Debug, Clone)]
pub(crate) struct ExportInfo {
    pub name: String,
    pub description: Option<String>,
    pub size: u64,
    pub max_request: u32,
}

impl ExportInfo {
    /// True when `requested` selects this export: its own name, or the default `""`.
    pub fn matches(&self, requested: &[u8]) -> bool {
        requested.is_empty() || requested == self.name.as_bytes()
    }
}
