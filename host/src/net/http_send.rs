//! The host's HTTP/1.1 sender for the component's `wasi:http` requests: TCP with a
//! connect timeout, TLS (rustls) against the Mozilla roots, the system CA bundle and any
//! `--ca-file`, and hyper's client connection. One connection per request: registry
//! requests are few and large (a Range of 1 MiB or more), so pooling would buy little.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use std::future::Future;

use http_body_util::BodyExt;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error as HttpError, WasiBody};

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
    /// Between two pieces of a response body. 15 s: a server that stalls mid-body fails
    /// that request (the component retries) instead of holding the read until the
    /// sandbox's call deadline.
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
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS configuration")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Send `request` to the authority in its URI. Returns the response (its body streams
/// from the connection) once the headers have arrived.
pub async fn send(
    mut request: http::Request<WasiBody>,
    tls: Arc<rustls::ClientConfig>,
    timeouts: Timeouts,
) -> Result<http::Response<WasiBody>, HttpError> {
    let uri = request.uri().clone();
    let host = uri
        .host()
        .ok_or(HttpError::HttpRequestUriInvalid)?
        .trim_matches(['[', ']'])
        .to_string();
    let secure = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });

    let connect = async {
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(HttpError::Connect)?;
        let _ = tcp.set_nodelay(true);
        if !secure {
            return Ok::<_, HttpError>(Box::new(tcp) as Box<dyn Stream>);
        }
        let name =
            ServerName::try_from(host.clone()).map_err(|_| HttpError::HttpRequestUriInvalid)?;
        let tls = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(HttpError::Tls)?;
        Ok(Box::new(tls) as Box<dyn Stream>)
    };
    let stream = tokio::time::timeout(timeouts.connect, connect)
        .await
        .map_err(|_| HttpError::ConnectionTimeout)??;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(HttpError::from)?;
    // The connection does its I/O in its own task for as long as the body is read.
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("HTTP connection ended: {e}");
        }
    });

    // HTTP/1.1 requests carry the path only; the Host header names the server.
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    *request.uri_mut() = http::Uri::try_from(path).map_err(|_| HttpError::HttpRequestUriInvalid)?;
    let response = tokio::time::timeout(timeouts.first_byte, sender.send_request(request))
        .await
        .map_err(|_| HttpError::ConnectionReadTimeout)?
        .map_err(HttpError::from)?;
    let between = timeouts.between_bytes;
    Ok(response.map(|body| StallGuard::new(body, between).boxed_unsync()))
}

/// A response body that fails with `ConnectionReadTimeout` when no data arrives for
/// `limit`.
struct StallGuard {
    body: hyper::body::Incoming,
    limit: Duration,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl StallGuard {
    fn new(body: hyper::body::Incoming, limit: Duration) -> Self {
        StallGuard {
            body,
            limit,
            deadline: Box::pin(tokio::time::sleep(limit)),
        }
    }
}

impl http_body::Body for StallGuard {
    type Data = bytes::Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        use std::task::Poll;
        match std::pin::Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                // Data arrived (or the body ended): the clock starts again.
                let next = tokio::time::Instant::now() + self.limit;
                self.deadline.as_mut().reset(next);
                Poll::Ready(frame.map(|f| f.map_err(HttpError::from)))
            }
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Stream for T {}
