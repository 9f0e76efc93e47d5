//! Helpers shared by the integration tests: in-memory block sources, a server guard that
//! always stops and joins the server, a child-process guard, temp dirs and a tiny raw
//! NBD client.

#![allow(dead_code)]

use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use erofs_nbd::{BlockSource, Listen, ReadError, Server, ServerConfig};

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

/// Kills and reaps a child process on drop.
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    /// Waits up to `limit` for the child; kills it on timeout.
    pub fn wait_timeout(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        let child = self.0.as_mut()?;
        loop {
            match child.try_wait() {
                Ok(Some(st)) => {
                    self.0 = None;
                    return Some(st);
                }
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => return None, // Drop kills it.
            }
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
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

/// Result of running an external tool.
pub struct Run {
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

/// Runs a command with a time limit, its output going to files (no pipe deadlocks).
pub fn run_tool(dir: &TempDir, program: &str, args: &[&str], limit: Duration) -> Run {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let out_path = dir.path(&format!("{program}-{n}.out"));
    let err_path = dir.path(&format!("{program}-{n}.err"));
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).expect("stdout file"))
        .stderr(fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("spawn tool");
    let mut guard = ChildGuard(Some(child));
    let status = guard.wait_timeout(limit);
    drop(guard);
    Run {
        status,
        stdout: fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

// ---------------------------------------------------------------------------------------
// A minimal raw NBD client for protocol tests.
// ---------------------------------------------------------------------------------------

pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_MAGIC: u32 = 0x668e_33ef;

pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_ERR_UNSUP: u32 = 0x8000_0001;
pub const REP_ERR_INVALID: u32 = 0x8000_0003;
pub const REP_ERR_UNKNOWN: u32 = 0x8000_0006;
pub const REP_ERR_TOO_BIG: u32 = 0x8000_0009;

pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_WRITE_ZEROES: u16 = 6;

pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const EINVAL: u32 = 22;

pub enum Sock {
    Tcp(TcpStream),
    Unix(UnixStream),
}

pub struct Conn {
    pub sock: Sock,
    pub structured: bool,
}

/// One decoded transmission reply: cookie, error (0 = success) and the data.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    pub cookie: u64,
    pub error: u32,
    pub data: Vec<u8>,
}

impl Conn {
    pub fn tcp(addr: &str) -> Conn {
        let s = TcpStream::connect(addr).expect("connect tcp");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.set_nodelay(true).expect("nodelay");
        Conn {
            sock: Sock::Tcp(s),
            structured: false,
        }
    }

    pub fn unix(path: &Path) -> Conn {
        let s = UnixStream::connect(path).expect("connect unix");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        Conn {
            sock: Sock::Unix(s),
            structured: false,
        }
    }

    pub fn send(&mut self, b: &[u8]) -> io::Result<()> {
        match &mut self.sock {
            Sock::Tcp(s) => s.write_all(b),
            Sock::Unix(s) => s.write_all(b),
        }
    }

    pub fn recv(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let mut b = vec![0u8; n];
        match &mut self.sock {
            Sock::Tcp(s) => s.read_exact(&mut b)?,
            Sock::Unix(s) => s.read_exact(&mut b)?,
        }
        Ok(b)
    }

    fn recv_u16(&mut self) -> u16 {
        u16::from_be_bytes(self.recv(2).expect("recv").try_into().expect("2"))
    }
    fn recv_u32(&mut self) -> u32 {
        u32::from_be_bytes(self.recv(4).expect("recv").try_into().expect("4"))
    }
    fn recv_u64(&mut self) -> u64 {
        u64::from_be_bytes(self.recv(8).expect("recv").try_into().expect("8"))
    }

    /// True once the server has closed the connection (read returns EOF or reset).
    pub fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        let r = match &mut self.sock {
            Sock::Tcp(s) => s.read(&mut b),
            Sock::Unix(s) => s.read(&mut b),
        };
        match r {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
        }
    }

    pub fn close(self) {
        match &self.sock {
            Sock::Tcp(s) => {
                let _ = s.shutdown(Shutdown::Both);
            }
            Sock::Unix(s) => {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }

    /// Reads the greeting and answers with `client_flags`; returns the handshake flags.
    pub fn greet(&mut self, client_flags: u32) -> u16 {
        assert_eq!(self.recv_u64(), NBDMAGIC);
        assert_eq!(self.recv_u64(), IHAVEOPT);
        let flags = self.recv_u16();
        self.send(&client_flags.to_be_bytes()).expect("send flags");
        flags
    }

    pub fn send_option(&mut self, option: u32, data: &[u8]) {
        let mut v = IHAVEOPT.to_be_bytes().to_vec();
        v.extend_from_slice(&option.to_be_bytes());
        v.extend_from_slice(&(data.len() as u32).to_be_bytes());
        v.extend_from_slice(data);
        self.send(&v).expect("send option");
    }

    /// Reads one option reply: (option, reply type, payload).
    pub fn option_reply(&mut self) -> (u32, u32, Vec<u8>) {
        assert_eq!(self.recv_u64(), OPT_REPLY_MAGIC);
        let option = self.recv_u32();
        let kind = self.recv_u32();
        let len = self.recv_u32() as usize;
        let payload = self.recv(len).expect("reply payload");
        (option, kind, payload)
    }

    /// Sends INFO or GO and collects the replies up to the final one.
    pub fn info_or_go(&mut self, option: u32, name: &str, reqs: &[u16]) -> Vec<(u32, Vec<u8>)> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&(reqs.len() as u16).to_be_bytes());
        for r in reqs {
            d.extend_from_slice(&r.to_be_bytes());
        }
        self.send_option(option, &d);
        let mut out = Vec::new();
        loop {
            let (o, kind, p) = self.option_reply();
            assert_eq!(o, option);
            out.push((kind, p));
            if kind != REP_INFO {
                return out;
            }
        }
    }

    /// Full fixed-newstyle handshake with NBD_OPT_GO; returns the export size.
    pub fn handshake(&mut self, structured: bool) -> u64 {
        self.greet(3);
        if structured {
            self.send_option(OPT_STRUCTURED_REPLY, &[]);
            assert_eq!(self.option_reply().1, REP_ACK);
            self.structured = true;
        }
        let replies = self.info_or_go(OPT_GO, EXPORT, &[3]);
        assert_eq!(replies.last().map(|r| r.0), Some(REP_ACK), "GO failed");
        let export = replies
            .iter()
            .find(|(k, p)| *k == REP_INFO && p[..2] == [0, 0])
            .expect("NBD_INFO_EXPORT");
        u64::from_be_bytes(export.1[2..10].try_into().expect("size"))
    }

    pub fn request(&mut self, kind: u16, flags: u16, cookie: u64, offset: u64, len: u32) {
        self.send(&request_bytes(kind, flags, cookie, offset, len))
            .expect("send request");
    }

    /// Reads one complete reply (simple, or all chunks of a structured one). For simple
    /// replies the caller says how much data to expect on success.
    pub fn reply(&mut self, simple_read_len: usize) -> Reply {
        self.reply_lookup(|_| simple_read_len)
    }

    /// Like `reply`, with the expected simple-reply data length looked up by cookie.
    pub fn reply_lookup(&mut self, len_of: impl Fn(u64) -> usize) -> Reply {
        let magic = self.recv_u32();
        if magic == SIMPLE_MAGIC {
            let error = self.recv_u32();
            let cookie = self.recv_u64();
            let data = if error == 0 {
                self.recv(len_of(cookie)).expect("data")
            } else {
                Vec::new()
            };
            return Reply {
                cookie,
                error,
                data,
            };
        }
        assert_eq!(magic, STRUCTURED_MAGIC, "unexpected reply magic {magic:#x}");
        let mut error = 0;
        let mut data = Vec::new();
        let mut cookie_seen;
        let mut magic = magic;
        loop {
            assert_eq!(magic, STRUCTURED_MAGIC);
            let flags = self.recv_u16();
            let kind = self.recv_u16();
            cookie_seen = self.recv_u64();
            let len = self.recv_u32() as usize;
            let payload = self.recv(len).expect("chunk payload");
            match kind {
                0 => assert_eq!(len, 0),
                1 => data.extend_from_slice(&payload[8..]),
                0x8001 => {
                    error = u32::from_be_bytes(payload[..4].try_into().expect("err"));
                    let mlen = u16::from_be_bytes(payload[4..6].try_into().expect("mlen"));
                    assert!(6 + mlen as usize <= len);
                }
                other => panic!("unexpected chunk type {other:#x}"),
            }
            if flags & 1 != 0 {
                break;
            }
            magic = self.recv_u32();
        }
        Reply {
            cookie: cookie_seen,
            error,
            data,
        }
    }

    /// READ then its reply.
    pub fn read(&mut self, cookie: u64, offset: u64, len: u32) -> Reply {
        self.request(CMD_READ, 0, cookie, offset, len);
        let r = self.reply(len as usize);
        assert_eq!(r.cookie, cookie);
        r
    }
}

pub fn request_bytes(kind: u16, flags: u16, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
    let mut v = REQUEST_MAGIC.to_be_bytes().to_vec();
    v.extend_from_slice(&flags.to_be_bytes());
    v.extend_from_slice(&kind.to_be_bytes());
    v.extend_from_slice(&cookie.to_be_bytes());
    v.extend_from_slice(&offset.to_be_bytes());
    v.extend_from_slice(&len.to_be_bytes());
    v
}

/// Opens a fresh connection and checks a few reads against the expected bytes, in both
/// reply modes: the server is still healthy.
pub fn assert_healthy(server: &TestServer) {
    for structured in [false, true] {
        let mut c = server.connect();
        let size = c.handshake(structured);
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
