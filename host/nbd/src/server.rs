//! Listening socket, accept loop and per-connection threads.

use std::collections::HashMap;
use std::io::{self, BufReader};
use std::net::{Shutdown, TcpListener};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::handshake::{self, Outcome};
use crate::net::Stream;
use crate::proto::MAX_STRING_LEN;
use crate::transmission;
use crate::{BlockSource, ExportInfo, Listen, ServerConfig};

/// How often the accept loop looks at the stop flag when no client is connecting.
const ACCEPT_POLL: Duration = Duration::from_millis(25);
/// A client must finish option haggling within this time (idle sockets are dropped).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// A reply write that makes no progress for this long means the client stopped reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(120);
/// On stop, connections get this long to answer their in-flight requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Buffer of the per-connection request reader.
const READ_BUFFER: usize = 64 * 1024;

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

/// A bound, not yet serving, NBD server for one export.
pub struct Server {
    listener: Listener,
    config: ServerConfig,
    source: Arc<dyn BlockSource>,
}

/// Live connections, so that `serve` can shut them down when asked to stop.
type Registry = Arc<Mutex<HashMap<u64, Stream>>>;

impl Server {
    /// Validates the configuration and binds the listening socket (non-blocking, so the
    /// accept loop can watch its stop flag).
    pub fn bind(
        listen: Listen,
        config: ServerConfig,
        source: Arc<dyn BlockSource>,
    ) -> io::Result<Server> {
        validate(&config)?;
        let listener = match listen {
            Listen::Tcp(addr) => {
                let l = TcpListener::bind(addr)?;
                l.set_nonblocking(true)?;
                Listener::Tcp(l)
            }
            Listen::Unix(path) => {
                let l = UnixListener::bind(&path)?;
                l.set_nonblocking(true)?;
                Listener::Unix(l, path)
            }
        };
        Ok(Server {
            listener,
            config,
            source,
        })
    }

    /// `IP:PORT` for TCP (with the real port when bound to port 0), or the socket path.
    pub fn local_addr(&self) -> String {
        match &self.listener {
            Listener::Tcp(l) => l
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|e| format!("<unknown: {e}>")),
            Listener::Unix(_, p) => p.display().to_string(),
        }
    }

    /// An NBD URI for the export (`nbd://IP:PORT/NAME` or
    /// `nbd+unix:///NAME?socket=PATH`), as accepted by libnbd tools and qemu.
    pub fn uri(&self) -> String {
        let name = &self.config.export_name;
        match &self.listener {
            Listener::Tcp(_) => format!("nbd://{}/{}", self.local_addr(), name),
            Listener::Unix(_, p) => format!("nbd+unix:///{}?socket={}", name, p.display()),
        }
    }

    /// Accepts clients until `stop` becomes true, one thread per client. On stop it
    /// stops reading requests, lets in-flight requests finish (for up to two seconds),
    /// closes every connection, joins every thread and returns.
    pub fn serve(self, stop: Arc<AtomicBool>) -> io::Result<()> {
        let registry: Registry = Arc::new(Mutex::new(HashMap::new()));
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        let mut next_id: u64 = 0;
        info!(addr = %self.local_addr(), export = %self.config.export_name, "NBD server listening");

        while !stop.load(Ordering::Acquire) {
            match self.accept() {
                Ok(Some(stream)) => {
                    next_id += 1;
                    if let Some(h) = self.start_connection(next_id, stream, &registry) {
                        threads.push(h);
                    }
                }
                Ok(None) => thread::sleep(ACCEPT_POLL),
                Err(e) => {
                    // For example EMFILE: keep serving the clients we have and retry.
                    warn!(error = %e, "accept failed");
                    thread::sleep(ACCEPT_POLL);
                }
            }
            reap(&mut threads);
        }

        // Stop phase 1: no new requests. Half-closing the read side makes each reader see
        // end-of-stream, so connections wind down through their normal path.
        info!(connections = threads.len(), "NBD server stopping");
        for s in lock(&registry).values() {
            s.shutdown(Shutdown::Read);
        }
        // Phase 2: give in-flight replies a moment to go out.
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while threads.iter().any(|h| !h.is_finished()) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        // Phase 3: whatever is still stuck (a client that stopped reading) is cut off.
        for s in lock(&registry).values() {
            s.shutdown(Shutdown::Both);
        }
        for h in threads {
            let _ = h.join();
        }
        Ok(())
    }

    /// One non-blocking accept: `Ok(None)` when nobody is waiting.
    fn accept(&self) -> io::Result<Option<Stream>> {
        let accepted = match &self.listener {
            Listener::Tcp(l) => l.accept().map(|(s, _)| Stream::Tcp(s)),
            Listener::Unix(l, _) => l.accept().map(|(s, _)| Stream::Unix(s)),
        };
        match accepted {
            Ok(s) => Ok(Some(s)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::Interrupted
                        | io::ErrorKind::ConnectionAborted
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Registers the connection (before its thread starts, so a stop can never miss it)
    /// and starts its thread. On failure the socket is simply dropped.
    fn start_connection(
        &self,
        id: u64,
        stream: Stream,
        registry: &Registry,
    ) -> Option<JoinHandle<()>> {
        let handle = match stream.try_clone() {
            Ok(h) => h,
            Err(e) => {
                warn!(error = %e, "could not clone client socket; dropping client");
                return None;
            }
        };
        lock(registry).insert(id, handle);
        let source = Arc::clone(&self.source);
        let config = self.config.clone();
        let reg = Arc::clone(registry);
        let spawned = thread::Builder::new()
            .name(format!("nbd-conn-{id}"))
            .spawn(move || {
                // Deregisters even if the connection code unwinds.
                let _guard = Deregister { registry: reg, id };
                run_connection(stream, &config, source);
            });
        match spawned {
            Ok(h) => Some(h),
            Err(e) => {
                warn!(error = %e, "could not start a connection thread; dropping client");
                if let Some(s) = lock(registry).remove(&id) {
                    s.shutdown(Shutdown::Both);
                }
                None
            }
        }
    }
}

/// Serves one client that is already connected (one end of a `socketpair`, a socket
/// handed over by inetd or systemd) on the calling thread, until the session ends: the
/// same handshake and transmission as a client [`Server::serve`] accepted. The fuzz target
/// drives the server through this over an in-memory socket pair.
pub fn serve_unix_client(
    stream: UnixStream,
    config: &ServerConfig,
    source: Arc<dyn BlockSource>,
) -> io::Result<()> {
    validate(config)?;
    run_connection(Stream::Unix(stream), config, source);
    Ok(())
}

impl Drop for Server {
    /// The Unix socket file is ours: remove it when the server goes away.
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = &self.listener {
            let _ = std::fs::remove_file(path);
        }
    }
}

struct Deregister {
    registry: Registry,
    id: u64,
}

impl Drop for Deregister {
    fn drop(&mut self) {
        lock(&self.registry).remove(&self.id);
    }
}

/// The registry only holds socket handles, so a poisoned lock is still usable.
fn lock(registry: &Registry) -> std::sync::MutexGuard<'_, HashMap<u64, Stream>> {
    registry.lock().unwrap_or_else(|p| p.into_inner())
}

/// Joins connection threads that have already finished, so the list stays short.
fn reap(threads: &mut Vec<JoinHandle<()>>) {
    let mut i = 0;
    while i < threads.len() {
        if threads[i].is_finished() {
            let _ = threads.swap_remove(i).join();
        } else {
            i += 1;
        }
    }
}

/// The life of one client: handshake, then (if it chose our export) transmission.
fn run_connection(stream: Stream, config: &ServerConfig, source: Arc<dyn BlockSource>) {
    let peer = stream.peer();
    debug!(%peer, "client connected");
    let setup = stream
        .prepare()
        .and_then(|_| stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT)))
        .and_then(|_| stream.set_write_timeout(Some(WRITE_TIMEOUT)))
        .and_then(|_| stream.try_clone());
    let read_half = match setup {
        Ok(r) => r,
        Err(e) => {
            warn!(%peer, error = %e, "could not set up client socket");
            stream.shutdown(Shutdown::Both);
            return;
        }
    };
    let mut reader = BufReader::with_capacity(READ_BUFFER, read_half);
    let mut writer = stream;

    // The size is sampled once per connection; it is what the client is told.
    let export = ExportInfo {
        name: config.export_name.clone(),
        description: config.description.clone(),
        size: source.size(),
        max_request: config.max_request,
    };

    match handshake::negotiate(&mut reader, &mut writer, &export) {
        Ok(Outcome::Transmission { structured }) => {
            debug!(%peer, structured, "entering transmission phase");
            // Clients may stay idle for as long as they like once connected.
            if let Err(e) = writer.set_read_timeout(None) {
                warn!(%peer, error = %e, "could not clear read timeout");
                writer.shutdown(Shutdown::Both);
                return;
            }
            transmission::serve(
                &mut reader,
                writer,
                &export,
                source,
                structured,
                config.workers_per_connection,
                peer,
            );
        }
        Ok(Outcome::Closed) => {
            debug!(%peer, "session ended during handshake");
            writer.shutdown(Shutdown::Both);
        }
        Err(e) => {
            debug!(%peer, error = %e, "handshake failed");
            writer.shutdown(Shutdown::Both);
        }
    }
}

/// Rejects configurations that would make the server violate the protocol.
fn validate(config: &ServerConfig) -> io::Result<()> {
    let bad = |msg: &str| Err(io::Error::new(io::ErrorKind::InvalidInput, msg.to_string()));
    let bad_string = |s: &str| s.len() > MAX_STRING_LEN || s.contains('\0');
    if bad_string(&config.export_name) {
        return bad("export name must be at most 4096 bytes without NUL");
    }
    if config.description.as_deref().is_some_and(bad_string) {
        return bad("description must be at most 4096 bytes without NUL");
    }
    // The maximum payload may not be below the preferred block size (4096), and one
    // OFFSET_DATA chunk (8 + len bytes) must fit the 32-bit chunk length.
    if !(4096..=1 << 31).contains(&config.max_request) {
        return bad("max_request must be between 4096 and 2^31");
    }
    Ok(())
}
