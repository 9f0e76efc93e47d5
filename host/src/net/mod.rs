//! The network path of remote blobs, on the host side of `wasi:http`.
//!
//! - [`egress`]: the policy every outgoing request passes (allow-list, https only unless
//!   told otherwise, credentials added by the host, counters).
//! - [`http_send`]: the host's HTTP/1.1 sender (connection pool, private CA, timeouts,
//!   Retry-After, failover to another connection).
//! - [`connector`]: how the pool opens a connection (TCP, TLS, connect timeout).
//! - [`drain`]: response bodies read ahead of the component, resumed after a stall.
//! - [`retry_after`]: the `Retry-After` header.
//! - [`credential_policy`]: which requests get the credentials (challenge-driven).
//! - [`credentials`]: registry credentials from the command line, the environment or
//!   `~/.docker/config.json`.
//! - [`docker_config`]: credentials from docker's config.json and credential helpers.
//! - [`range_cache`]: the on-disk cache of fetched blob ranges.
//! - [`blob_counters`]: the egress's traffic per blob (per layer of a whole image).

pub(crate) mod blob_counters;
pub(crate) mod connector;
pub(crate) mod credential_policy;
pub(crate) mod credentials;
pub(crate) mod docker_config;
pub(crate) mod drain;
pub(crate) mod egress;
pub(crate) mod http_send;
pub(crate) mod range_cache;
pub(crate) mod retry_after;
