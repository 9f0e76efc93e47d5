//! Helpers shared by the integration tests: in-memory block sources, a server guard that
//! always stops and joins the server, a child-process guard and temp dirs. The raw NBD
//! client is the crate's own `test_client` (feature `test-client`), re-exported here.

#![allow(dead_code)]

use std::fs;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use erofs_nbd::{BlockSource, Listen, ReadError, Server, ServerConfig};

pub use erofs_nbd::test_client::*;

/// External tools with deadlines: the one runner of the repository's tests.
#[path = "../../../../tests/common/tools.rs"]
mod tools;
#[allow(unused_imports)] // Not every test binary runs tools.
pub use tools::*;

pub const EXPORT: &str = "layer0";
pub const MAX_REQUEST: u32 = 1 << 20;

/// Deterministic pseudo-random bytes (xorshift64*), so failures are reproducible.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// An in-memory export. Reads overlapping `poison` fail with `ReadError::Io`.
pub struct MemSource {
    pub data: Vec<u8>,
    pub poison: Option<(u64, u64)>,
}

impl BlockSource for MemSource {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }
    fn read_at(&self, offset: u64, len: u32) -> Result<Vec<u8>, ReadError> {
        let end = offset + u64::from(len);
        if let Some((p0, p1)) = self.poison {
            if offset < p1 && end > p0 {
                return Err(ReadError::Io(format!("poisoned range {p0}..{p1}")));
            }
        }
        assert!(end <= self.size(), "server asked past the end");
        assert!(len > 0, "server asked for zero bytes");
        Ok(self.data[offset as usize..end as usize].to_vec())
    }
}

/// A running server: stopped and joined on drop, whatever path the test takes.
pub struct TestServer {
    pub addr: String,
    pub uri: String,
    pub data: Arc<Vec<u8>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<io::Result<()>>>,
}

impl TestServer {
    pub fn start(listen: Listen, data: Vec<u8>, poison: Option<(u64, u64)>) -> TestServer {
        let config = ServerConfig {
            export_name: EXPORT.into(),
            description: Some("pseudo-random test export".into()),
            max_request: MAX_REQUEST,
            workers_per_connection: 4,
        };
        Self::start_with(listen, data, poison, config)
    }

    pub fn start_with(
        listen: Listen,
        data: Vec<u8>,
        poison: Option<(u64, u64)>,
        config: ServerConfig,
    ) -> TestServer {
        let data = Arc::new(data);
        let source = Arc::new(MemSource {
            data: data.to_vec(),
            poison,
        });
        let server = Server::bind(listen, config, source).expect("bind");
        let addr = server.local_addr();
        let uri = server.uri();
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = Arc::clone(&stop);
        let handle = thread::spawn(move || server.serve(s2));
        TestServer {
            addr,
            uri,
            data,
            stop,
            handle: Some(handle),
        }
    }

    pub fn tcp(size: usize) -> TestServer {
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        Self::start(Listen::Tcp(any), pseudo_random(size, 0x5eed), None)
    }

    /// Connects a raw client (TCP or Unix, whichever the server listens on).
    pub fn connect(&self) -> Conn {
        if self.uri.starts_with("nbd+unix") {
            Conn::unix(Path::new(&self.addr))
        } else {
            Conn::tcp(&self.addr)
        }
    }

    /// Stops the server and reports what `serve` returned.
    pub fn stop(mut self) -> io::Result<()> {
        self.stop.store(true, Ordering::Release);
        match self.handle.take() {
            Some(h) => h.join().expect("server thread panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A temp directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "erofs-nbd-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).expect("mkdir temp");
        TempDir(p)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// True if `tool` is on PATH; otherwise prints the loud skip line.
pub fn have_tool(tool: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    if !found {
        // Written to the stderr handle directly: the test harness captures `eprintln!`,
        // and a skip must be visible in a normal `cargo test` run.
        let _ = writeln!(io::stderr(), "SKIPPED: {tool} not installed");
    }
    found
}

/// Opens a fresh connection and checks a few reads against the expected bytes, in both
/// reply modes: the server is still healthy.
pub fn assert_healthy(server: &TestServer) {
    for structured in [false, true] {
        let mut c = server.connect();
        let size = c.handshake(EXPORT, structured);
        assert_eq!(size, server.data.len() as u64);
        for (i, (off, len)) in [(0u64, 4096u32), (size - 777, 777), (12_345, 65_536)]
            .into_iter()
            .enumerate()
        {
            let r = c.read(i as u64 + 100, off, len);
            assert_eq!(r.error, 0);
            assert!(r.data == server.data[off as usize..(off + u64::from(len)) as usize]);
        }
        c.request(CMD_DISC, 0, 0, 0, 0);
        assert!(c.is_closed(), "server should close after DISC");
    }
}
