//! How the host's connection pool opens a connection: TCP with `TCP_NODELAY`, then TLS
//! (rustls) for `https`, the whole within the connect timeout. TLS offers HTTP/2 and
//! HTTP/1.1 by ALPN; a server that picks `h2` gets one multiplexed connection. Every connection gets a
//! number and a use count, carried to each response it answers, so the sender can count
//! connections opened and requests that reused one.
//!
//! The egress policy has admitted the request before its origin reaches the pool (the
//! pool only ever connects where an admitted request goes), and the TLS configuration is
//! one `Arc<ClientConfig>` shared by every connection of the policy: its session store
//! (rustls' in-memory cache) lets a new connection to the same server resume a session.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

/// Connections opened and requests that went over a connection used before.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    pub opened: AtomicU64,
    pub reused: AtomicU64,
    /// Connections on which the server chose HTTP/2 (by ALPN).
    pub http2: AtomicU64,
}

/// Which connection answered a response: its number, and how many responses it has
/// carried (shared by the clones the pool hands to each response).
#[derive(Debug, Clone)]
pub struct ConnectionId {
    pub number: u64,
    uses: Arc<AtomicU64>,
}

impl ConnectionId {
    /// Count one more response on this connection; returns whether it had carried one
    /// before (the request reused the connection).
    pub fn count_use(&self) -> bool {
        self.uses.fetch_add(1, Ordering::Relaxed) > 0
    }
}

/// Why a connection could not be made (kept as a kind and a message: the pool boxes
/// connector errors, and the sender turns them back into `wasi:http` error codes).
#[derive(Debug)]
pub enum ConnectFailure {
    /// TCP connect failed.
    Tcp(std::io::Error),
    /// The TLS handshake failed.
    Tls(std::io::Error),
    /// TCP and TLS together took longer than the connect timeout.
    Timeout,
    /// The URI has no host, or the host is not a valid TLS server name.
    BadName(String),
}

impl std::fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectFailure::Tcp(e) => write!(f, "TCP connect: {e}"),
            ConnectFailure::Tls(e) => write!(f, "TLS handshake: {e}"),
            ConnectFailure::Timeout => write!(f, "connect timeout"),
            ConnectFailure::BadName(host) => write!(f, "not a usable host name: {host:?}"),
        }
    }
}

impl std::error::Error for ConnectFailure {}

/// The connector given to hyper-util's pool.
#[derive(Clone)]
pub struct Connector {
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
    stats: Arc<ConnectionStats>,
}

impl Connector {
    pub fn new(
        tls: Arc<rustls::ClientConfig>,
        timeout: Duration,
        stats: Arc<ConnectionStats>,
    ) -> Self {
        Connector {
            tls,
            timeout,
            stats,
        }
    }
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Stream for T {}

/// One open connection (plain or TLS), as hyper's I/O.
pub struct Conn {
    io: TokioIo<Box<dyn Stream>>,
    id: ConnectionId,
    /// The server chose HTTP/2 by ALPN.
    h2: bool,
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        let connected = Connected::new().extra(self.id.clone());
        if self.h2 {
            connected.negotiated_h2()
        } else {
            connected
        }
    }
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

type Connecting = Pin<Box<dyn Future<Output = Result<Conn, ConnectFailure>> + Send>>;

impl tower_service::Service<http::Uri> for Connector {
    type Response = Conn;
    type Error = ConnectFailure;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let (stream, h2) = tokio::time::timeout(this.timeout, open(&uri, this.tls.clone()))
                .await
                .map_err(|_| ConnectFailure::Timeout)??;
            let number = this.stats.opened.fetch_add(1, Ordering::Relaxed) + 1;
            if h2 {
                this.stats.http2.fetch_add(1, Ordering::Relaxed);
            }
            tracing::debug!(
                "http: connection {number} opened to {} ({})",
                uri.authority().map(|a| a.as_str()).unwrap_or("?"),
                if h2 { "HTTP/2" } else { "HTTP/1.1" }
            );
            Ok(Conn {
                io: TokioIo::new(stream),
                id: ConnectionId {
                    number,
                    uses: Arc::new(AtomicU64::new(0)),
                },
                h2,
            })
        })
    }
}

/// TCP to the URI's host and port, then TLS for `https`; and whether the server chose
/// HTTP/2 by ALPN.
async fn open(
    uri: &http::Uri,
    tls: Arc<rustls::ClientConfig>,
) -> Result<(Box<dyn Stream>, bool), ConnectFailure> {
    let host = uri
        .host()
        .ok_or_else(|| ConnectFailure::BadName(uri.to_string()))?
        .trim_matches(['[', ']'])
        .to_string();
    let secure = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(ConnectFailure::Tcp)?;
    // Requests are small and answers wait on them: no Nagle delay.
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!("http: TCP_NODELAY not set on {host}:{port}: {e}");
    }
    if !secure {
        return Ok((Box::new(tcp), false));
    }
    let name = ServerName::try_from(host.clone()).map_err(|_| ConnectFailure::BadName(host))?;
    let tls = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(ConnectFailure::Tls)?;
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    Ok((Box::new(tls), h2))
}
