//! The host's HTTP sender for the component's `wasi:http` requests: a connection pool
//! per origin (hyper-util's client over [`super::connector`]: TCP with a connect timeout,
//! rustls against the Mozilla roots, the system CA bundle and any `--ca-file`, one TLS
//! session store so new connections resume, HTTP/2 when the server picks it by ALPN
//! and HTTP/1.1 otherwise), bodies read ahead of the component
//! ([`super::drain`]), and the fault handling every request shares:
//!
//! - no response headers within the first-byte timeout: the request goes once more, on
//!   another connection (GET and HEAD, which can be replayed);
//! - a 429 or 503 with `Retry-After` (seconds or an HTTP date): the same request again
//!   after that wait, while the waits stay within [`RETRY_AFTER_BUDGET`]; a longer wait,
//!   or no `Retry-After`, goes back to the component, whose retries back off;
//! - a body that stalls or breaks off is resumed from its first missing byte
//!   ([`super::drain`]).
//!
//! Pooling: registry requests come in bursts (a mount's metadata, a container's start-up
//! reads) where each new connection would cost a TCP and a TLS handshake, two or three
//! round trips, against the one of the request itself.
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime_wasi_http::{Error as HttpError, WasiBody};

use super::connector::{ConnectFailure, ConnectionId, ConnectionStats, Connector};
use super::drain::{self, Resume};
use super::retry_after;

/// Requests in flight to one origin (a response counts until its body is all in).
/// 8: enough for several readers each with a range in flight and one prefetched (FUSE
/// with many files, NBD multi-conn: 4 instances), few enough to stay polite to a
/// registry (browsers allow 6 per origin). A ninth request waits for a slot.
pub const MAX_PER_ORIGIN: usize = 8;

/// Idle connections kept per origin: as many as may be busy at once, so that a burst
/// finds them all again.
const MAX_IDLE_PER_ORIGIN: usize = MAX_PER_ORIGIN;

/// How long an idle connection is kept. 55 s: below the idle timeouts of the usual load
/// balancers in front of registries (60 s) and nginx (75 s), so the server rarely closes
/// one as we reuse it; a mount idle for longer pays one handshake on its next cold read.
const IDLE_TIMEOUT: Duration = Duration::from_secs(55);

/// The waits one request may spend honouring `Retry-After`, in all. 10 s: inside the
/// component's call deadline (30 s) with its own backoff retries still to come; a
/// registry that asks for longer gets its 429/503 reported instead.
pub const RETRY_AFTER_BUDGET: Duration = Duration::from_secs(10);

/// Resends of one request for `Retry-After` (each wait also counts against the budget;
/// this bounds `Retry-After: 0` loops). 5.
const RETRY_AFTER_MAX: u32 = 5;

/// HTTP/2 flow-control windows: what the server may send ahead on one stream, and on the
/// whole connection, before the host's reads open them again. hyper's defaults (5 MiB
/// per connection, 2 MiB per stream) would hold a stream to 2 MiB per round trip; a
/// readahead window is up to 16 MiB and the host reads every body as it arrives
/// ([`super::drain`]), so the windows only bound what is in flight: 16 MiB per stream,
/// and the [`MAX_PER_ORIGIN`] streams' worth of a quarter of that each per connection.
const H2_STREAM_WINDOW: u32 = 16 << 20;
const H2_CONNECTION_WINDOW: u32 = (MAX_PER_ORIGIN as u32) * (4 << 20);

/// An HTTP/2 connection with requests on it is pinged after this long without a frame,
/// and dropped if the ping is not answered within the first-byte timeout: with every
/// request of an origin on one connection, a dead one must be found even while the
/// requests on it wait. 20 s (an idle connection is not pinged; the pool's idle timeout
/// ends it).
const H2_KEEP_ALIVE: Duration = Duration::from_secs(20);

/// Where Debian keeps the system's trusted CAs (the ca-certificates package).
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Timeouts for one request.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP connect plus TLS handshake. 5 s: a registry that does not answer by then is
    /// down; the component retries, and a read fails instead of hanging the mount.
    pub connect: Duration,
    /// From sending the request to the response headers. 15 s: generous for a loaded
    /// registry, short enough that the component's retries fit the call deadline.
    pub first_byte: Duration,
    /// Between two pieces of a response body. 15 s: a body that stalls mid-way is then
    /// resumed on another connection ([`super::drain`]), or fails (the component
    /// retries), instead of holding the read until the sandbox's call deadline.
    pub between_bytes: Duration,
    /// The whole body of a response the host reads for the range cache (no wasm runs
    /// meanwhile, so the sandbox's call deadline cannot stop it): the call deadline,
    /// set by the command; 120 s by default, the remote call deadline.
    pub cached_body: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            first_byte: Duration::from_secs(15),
            between_bytes: Duration::from_secs(15),
            cached_body: Duration::from_secs_f64(crate::defaults::CALL_TIMEOUT_REMOTE_SECS),
        }
    }
}

/// The TLS client configuration: Mozilla's roots, the system bundle, and `extra_ca`.
pub fn tls_config(extra_ca: Option<&std::path::Path>) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Ok(certs) = CertificateDer::pem_file_iter(SYSTEM_CA_BUNDLE) {
        // Certificates the system store has that rustls cannot use are skipped.
        let (_added, _ignored) = roots.add_parsable_certificates(certs.flatten());
    }
    if let Some(path) = extra_ca {
        let certs: Vec<_> = CertificateDer::pem_file_iter(path)
            .with_context(|| format!("{}: cannot read the CA file", path.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("{}: not a PEM certificate file", path.display()))?;
        if certs.is_empty() {
            anyhow::bail!("{}: no certificates in the CA file", path.display());
        }
        for cert in certs {
            roots
                .add(cert)
                .with_context(|| format!("{}: unusable CA certificate", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS configuration")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // HTTP/2 first: all of an origin's requests then share one connection (one handshake,
    // one congestion window); a server without it answers HTTP/1.1.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The replayable parts of a GET or HEAD (it has no body), to send it again.
#[derive(Clone)]
struct Template {
    method: http::Method,
    uri: http::Uri,
    version: http::Version,
    headers: http::HeaderMap,
}

impl Template {
    fn of(request: &http::Request<WasiBody>) -> Option<Template> {
        let replayable = matches!(*request.method(), http::Method::GET | http::Method::HEAD);
        replayable.then(|| Template {
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            headers: request.headers().clone(),
        })
    }

    fn request(&self) -> http::Request<WasiBody> {
        let mut request = http::Request::new(empty_body());
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers.clone();
        request
    }
}

fn empty_body() -> WasiBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// The pooled sender of one egress policy; every store of a device shares it.
pub struct Sender {
    client: Client<Connector, WasiBody>,
    timeouts: Timeouts,
    /// Per origin (`scheme://host:port`): the request slots ([`MAX_PER_ORIGIN`]).
    slots: Mutex<HashMap<String, Arc<Semaphore>>>,
    pub connections: Arc<ConnectionStats>,
}

impl Sender {
    pub fn new(tls: Arc<rustls::ClientConfig>, timeouts: Timeouts) -> Arc<Sender> {
        let connections = Arc::new(ConnectionStats::default());
        let connector = Connector::new(tls, timeouts.connect, connections.clone());
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(MAX_IDLE_PER_ORIGIN)
            .pool_idle_timeout(IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_initial_stream_window_size(H2_STREAM_WINDOW)
            .http2_initial_connection_window_size(H2_CONNECTION_WINDOW)
            .http2_keep_alive_interval(H2_KEEP_ALIVE)
            .http2_keep_alive_timeout(timeouts.first_byte)
            .build(connector);
        Arc::new(Sender {
            client,
            timeouts,
            slots: Mutex::new(HashMap::new()),
            connections,
        })
    }

    /// A request slot of the request's origin (waits while all are taken).
    async fn slot(&self, uri: &http::Uri) -> Result<OwnedSemaphorePermit, HttpError> {
        let origin = format!(
            "{}://{}",
            uri.scheme_str().unwrap_or("http"),
            super::egress::request_authority(uri).ok_or(HttpError::HttpRequestUriInvalid)?
        );
        let semaphore = {
            let mut slots = self
                .slots
                .lock()
                .map_err(|_| HttpError::InternalError(Some("sender slot lock poisoned".into())))?;
            slots
                .entry(origin)
                .or_insert_with(|| Arc::new(Semaphore::new(MAX_PER_ORIGIN)))
                .clone()
        };
        semaphore
            .acquire_owned()
            .await
            .map_err(|_| HttpError::InternalError(Some("sender slots closed".into())))
    }

    /// Send `request` to the origin in its URI. Returns the response once its headers
    /// have arrived; its body is read ahead in the background.
    pub async fn send(
        self: &Arc<Self>,
        request: http::Request<WasiBody>,
    ) -> Result<http::Response<WasiBody>, HttpError> {
        let held = self.slot(request.uri()).await?;
        let template = Template::of(&request);
        let mut response = self.exchange(request, template.as_ref()).await?;
        // State: a response. Honour a Retry-After on a 429/503 while the budget lasts.
        let mut waited = Duration::ZERO;
        let mut resent = 0u32;
        while let Some(template) = template.as_ref() {
            let Some(wait) = self.retry_after(&response, waited, resent) else {
                break;
            };
            tracing::info!(
                "http: {} answered {}; waiting {wait:?} as its Retry-After asks",
                template.uri,
                response.status().as_u16()
            );
            // The answer's body is dropped: its connection closes rather than being read.
            drop(response);
            tokio::time::sleep(wait).await;
            waited += wait;
            resent += 1;
            response = self.exchange(template.request(), Some(template)).await?;
        }
        let resume = template
            .filter(|t| t.method == http::Method::GET)
            .and_then(|t| self.resume_of(&response, t));
        let between = self.timeouts.between_bytes;
        Ok(response.map(|body| drain::read_ahead(body, between, resume, Some(held))))
    }

    /// The wait a 429/503's `Retry-After` asks for, if it fits what is left of the budget.
    fn retry_after(
        &self,
        response: &http::Response<hyper::body::Incoming>,
        waited: Duration,
        resent: u32,
    ) -> Option<Duration> {
        if !retry_after::applies_to(response.status()) || resent >= RETRY_AFTER_MAX {
            return None;
        }
        let value = response.headers().get(http::header::RETRY_AFTER)?;
        let wait = retry_after::parse(value.to_str().ok()?, SystemTime::now())?;
        let left = RETRY_AFTER_BUDGET.saturating_sub(waited);
        if wait > left {
            tracing::info!(
                "http: Retry-After asks for {wait:?}, more than the {left:?} left of the \
                 {RETRY_AFTER_BUDGET:?} budget; passing the {} on",
                response.status().as_u16()
            );
            return None;
        }
        Some(wait)
    }

    /// How to resume a 206 whose Content-Range names its bytes (`bytes A-B/TOTAL`).
    fn resume_of(
        self: &Arc<Self>,
        response: &http::Response<hyper::body::Incoming>,
        template: Template,
    ) -> Option<Resume> {
        if response.status() != http::StatusCode::PARTIAL_CONTENT {
            return None;
        }
        let (start, end, total) = content_range(response.headers())?;
        let sender = self.clone();
        let resend: drain::Resend = Box::new(move |from| {
            let sender = sender.clone();
            let mut template = template.clone();
            Box::pin(async move {
                let range = http::HeaderValue::from_str(&format!("bytes={from}-{end}"))
                    .map_err(|_| HttpError::HttpRequestUriInvalid)?;
                template.headers.insert(http::header::RANGE, range);
                let response = sender.exchange(template.request(), Some(&template)).await?;
                // Only the very bytes asked for continue the body.
                match content_range(response.headers()) {
                    Some(got) if response.status() == 206 && got == (from, end, total) => {
                        Ok(response)
                    }
                    _ => {
                        tracing::warn!(
                            "http: resuming at byte {from}: HTTP {} with Content-Range {:?}",
                            response.status().as_u16(),
                            response.headers().get(http::header::CONTENT_RANGE)
                        );
                        Err(HttpError::HttpProtocolError)
                    }
                }
            })
        });
        Some(Resume { start, end, resend })
    }

    /// One exchange through the pool, up to the response headers; a replayable request
    /// that gets no headers within the first-byte timeout goes once more (over HTTP/1.1
    /// its connection is dropped with the first attempt, so the second one uses another;
    /// over HTTP/2 only its stream is reset, and a dead connection is found by the
    /// keep-alive ping, [`H2_KEEP_ALIVE`]).
    async fn exchange(
        &self,
        request: http::Request<WasiBody>,
        template: Option<&Template>,
    ) -> Result<http::Response<hyper::body::Incoming>, HttpError> {
        let first = self.timeouts.first_byte;
        let response = match tokio::time::timeout(first, self.client.request(request)).await {
            Ok(answer) => answer.map_err(client_error)?,
            Err(_) => {
                let Some(template) = template else {
                    return Err(HttpError::ConnectionReadTimeout);
                };
                tracing::warn!(
                    "http: no answer from {} within {first:?}; trying another connection",
                    template.uri
                );
                tokio::time::timeout(first, self.client.request(template.request()))
                    .await
                    .map_err(|_| HttpError::ConnectionReadTimeout)?
                    .map_err(client_error)?
            }
        };
        if let Some(id) = response.extensions().get::<ConnectionId>() {
            if id.count_use() {
                self.connections.reused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("http: request reused connection {}", id.number);
            }
        }
        Ok(response)
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        tracing::debug!(
            "http: {} connections opened ({} HTTP/2), {} requests reused one",
            self.connections.opened.load(Ordering::Relaxed),
            self.connections.http2.load(Ordering::Relaxed),
            self.connections.reused.load(Ordering::Relaxed)
        );
    }
}

/// `Content-Range: bytes A-B/TOTAL` as numbers (one such header, B below TOTAL).
fn content_range(headers: &http::HeaderMap) -> Option<(u64, u64, u64)> {
    let mut values = headers.get_all(http::header::CONTENT_RANGE).iter();
    let value = values.next()?.to_str().ok()?;
    if values.next().is_some() {
        return None;
    }
    let (span, total) = value.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (start, end) = span.split_once('-')?;
    let (start, end, total) = (start.parse().ok()?, end.parse().ok()?, total.parse().ok()?);
    (start <= end && end < total).then_some((start, end, total))
}

/// A pool error as the `wasi:http` error code the component sees (the full error is
/// logged at debug level).
fn client_error(e: hyper_util::client::legacy::Error) -> HttpError {
    use std::error::Error as _;
    tracing::debug!("http: request failed: {e:?}");
    let mut source = e.source();
    while let Some(cause) = source {
        if let Some(failure) = cause.downcast_ref::<ConnectFailure>() {
            let copy = |io: &std::io::Error| std::io::Error::new(io.kind(), io.to_string());
            return match failure {
                ConnectFailure::Tcp(io) => HttpError::Connect(copy(io)),
                ConnectFailure::Tls(io) => HttpError::Tls(copy(io)),
                ConnectFailure::Timeout => HttpError::ConnectionTimeout,
                ConnectFailure::BadName(_) => HttpError::HttpRequestUriInvalid,
            };
        }
        if let Some(hyper) = cause.downcast_ref::<hyper::Error>() {
            return if hyper.is_parse() || hyper.is_parse_status() {
                HttpError::HttpProtocolError
            } else if hyper.is_timeout() {
                HttpError::ConnectionReadTimeout
            } else {
                HttpError::ConnectionTerminated
            };
        }
        source = cause.source();
    }
    HttpError::InternalError(Some(e.to_string()))
}

#[cfg(test)]
#[path = "http_send_tests.rs"]
mod tests;
