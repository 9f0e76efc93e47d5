//! Support for the serve-nbd tests: the server as a child process (killed on drop), an
//! external-tool runner with deadlines, and a minimal raw NBD client written from the
//! protocol specification.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::common::host_bin;

/// Verification of the largest fixture plus the first instance's open take well under a
/// second; the margin is for a loaded CI machine.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Say loudly that a test did not run. Written to the stderr handle itself: the test
/// harness captures `eprintln!`, and a skip must show in a plain `cargo test`.
pub fn skipped(test: &str, why: &str) {
    let _ = writeln!(io::stderr(), "\n*** SKIPPED: {test}: {why} ***\n");
}

/// True if `tool` is on PATH; otherwise prints the loud skip line for `test`.
pub fn have_tool(test: &str, tool: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    if !found {
        skipped(
            test,
            &format!("{tool} is not installed (apt-get install libnbd-bin nbdfuse qemu-utils)"),
        );
    }
    found
}

/// Where the server listens.
#[derive(Clone, Copy, Debug)]
pub enum Via {
    Tcp,
    Unix,
}

/// A running `erofs-host serve-nbd`: killed and reaped on drop, whatever path the test takes.
pub struct NbdServer {
    child: Option<Child>,
    /// The URI the server printed (`nbd://127.0.0.1:PORT/NAME` or `nbd+unix:///NAME?socket=P`).
    pub uri: String,
    /// `IP:PORT`, or the socket path.
    pub addr: String,
    pub socket: Option<PathBuf>,
    stderr: PathBuf,
}

impl NbdServer {
    /// Starts the server on 127.0.0.1 port 0 (the kernel picks a free port; the printed
    /// URI names it) or on a unix socket in `dir`, and waits for its "serving" line.
    /// `Err` carries the server's stderr when it exits first.
    pub fn start(
        dir: &Path,
        device: &[String],
        via: Via,
        extra: &[&str],
    ) -> Result<NbdServer, String> {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let stderr = dir.join(format!("serve-nbd-{n}.err"));
        let socket = match via {
            Via::Tcp => None,
            Via::Unix => Some(dir.join(format!("nbd-{n}.sock"))),
        };
        let listen = match &socket {
            None => "127.0.0.1:0".to_string(),
            Some(p) => format!("unix:{}", p.display()),
        };
        let child = Command::new(host_bin())
            .arg("serve-nbd")
            .args(device)
            .args(["--listen", &listen])
            .args(extra)
            .env(
                "EROFS_WASM_CACHE_DIR",
                std::env::temp_dir().join("erofs-e2e-cwasm"),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("spawn erofs-host serve-nbd");
        let mut server = NbdServer {
            child: Some(child),
            uri: String::new(),
            addr: String::new(),
            socket,
            stderr,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let text = server.stderr_text();
            if let Some(line) = text.lines().find_map(|l| l.strip_prefix("serving ")) {
                server.uri = line.trim().to_string();
                server.addr = match &server.socket {
                    Some(p) => p.display().to_string(),
                    None => server
                        .uri
                        .trim_start_matches("nbd://")
                        .split('/')
                        .next()
                        .unwrap_or_default()
                        .to_string(),
                };
                return Ok(server);
            }
            let exited = server
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() {
                server.child = None;
                return Err(server.stderr_text());
            }
            assert!(
                Instant::now() < deadline,
                "serve-nbd not ready after {READY_TIMEOUT:?}: {text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// A raw client connected to the server, past the handshake.
    pub fn connect(&self, structured: bool) -> Conn {
        let sock = match &self.socket {
            Some(p) => Sock::Unix(UnixStream::connect(p).expect("connect unix")),
            None => Sock::Tcp(TcpStream::connect(&self.addr).expect("connect tcp")),
        };
        let mut c = Conn { sock, structured };
        c.set_timeout(Some(Duration::from_secs(20)));
        c.handshake(structured);
        c
    }

    /// SIGTERM, then the exit status (within 10 s, else the test fails).
    pub fn terminate(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server running");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("serve-nbd did not stop within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NbdServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// An external tool's outcome.
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

/// A child process killed and reaped on drop.
pub struct ChildGuard(pub Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Spawns `program` with its output going to files in `dir` (no pipe deadlocks).
pub fn spawn_tool(dir: &Path, program: &str, args: &[&str]) -> (ChildGuard, PathBuf, PathBuf) {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let out = dir.join(format!("{program}-{n}.out"));
    let err = dir.join(format!("{program}-{n}.err"));
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out).expect("stdout file"))
        .stderr(File::create(&err).expect("stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    (ChildGuard(Some(child)), out, err)
}

/// Waits for a spawned tool for up to `limit` (killing it after) and collects its output.
pub fn finish(mut guard: ChildGuard, out: &Path, err: &Path, limit: Duration) -> Run {
    let deadline = Instant::now() + limit;
    let mut status = None;
    if let Some(child) = guard.0.as_mut() {
        while Instant::now() < deadline {
            if let Ok(Some(s)) = child.try_wait() {
                status = Some(s);
                guard.0 = None;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    drop(guard);
    Run {
        status,
        stdout: std::fs::read_to_string(out).unwrap_or_default(),
        stderr: std::fs::read_to_string(err).unwrap_or_default(),
    }
}

/// Runs a tool to completion (bounded by `limit`).
pub fn run_tool(dir: &Path, program: &str, args: &[&str], limit: Duration) -> Run {
    let (guard, out, err) = spawn_tool(dir, program, args);
    finish(guard, &out, &err, limit)
}

// ------------------------------------------------------------------------------------
// A minimal raw client.
// ------------------------------------------------------------------------------------

const IHAVEOPT: u64 = u64::from_be_bytes(*b"IHAVEOPT");
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const EINVAL: u32 = 22;

pub enum Sock {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// One transmission reply: cookie, errno (0 = success) and the data it carried.
#[derive(Debug)]
pub struct Reply {
    pub cookie: u64,
    pub error: u32,
    pub data: Vec<u8>,
}

pub struct Conn {
    pub sock: Sock,
    structured: bool,
}

impl Conn {
    fn set_timeout(&mut self, t: Option<Duration>) {
        let _ = match &self.sock {
            Sock::Tcp(s) => s.set_read_timeout(t),
            Sock::Unix(s) => s.set_read_timeout(t),
        };
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

    fn be(&mut self, n: usize) -> u64 {
        self.recv(n)
            .expect("recv")
            .iter()
            .fold(0, |acc, &b| acc << 8 | u64::from(b))
    }

    /// Fixed newstyle, optionally STRUCTURED_REPLY, then GO on the default export.
    fn handshake(&mut self, structured: bool) {
        assert_eq!(self.recv(16).expect("greeting")[..8], *b"NBDMAGIC");
        let flags = self.be(2);
        assert_eq!(flags & 1, 1, "fixed newstyle");
        self.send(&3u32.to_be_bytes()).expect("client flags");
        if structured {
            self.option(8, &[]);
            assert_eq!(self.option_reply().0, 1, "STRUCTURED_REPLY acknowledged");
        }
        // GO with the empty (default) name and no information requests.
        self.option(7, &[0, 0, 0, 0, 0, 0]);
        loop {
            let (kind, _) = self.option_reply();
            match kind {
                1 => break,
                3 => continue,
                k => panic!("GO refused: reply {k:#x}"),
            }
        }
    }

    fn option(&mut self, option: u32, data: &[u8]) {
        let mut v = IHAVEOPT.to_be_bytes().to_vec();
        v.extend_from_slice(&option.to_be_bytes());
        v.extend_from_slice(&(data.len() as u32).to_be_bytes());
        v.extend_from_slice(data);
        self.send(&v).expect("send option");
    }

    fn option_reply(&mut self) -> (u32, Vec<u8>) {
        assert_eq!(self.be(8), 0x0003_e889_0455_65a9, "option reply magic");
        let _option = self.be(4);
        let kind = self.be(4) as u32;
        let len = self.be(4) as usize;
        (kind, self.recv(len).expect("option payload"))
    }

    /// Sends one request header (and `payload`, for WRITE) with any magic.
    pub fn request_with_magic(
        &mut self,
        magic: u32,
        kind: u16,
        cookie: u64,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) {
        let mut v = magic.to_be_bytes().to_vec();
        v.extend_from_slice(&0u16.to_be_bytes());
        v.extend_from_slice(&kind.to_be_bytes());
        v.extend_from_slice(&cookie.to_be_bytes());
        v.extend_from_slice(&offset.to_be_bytes());
        v.extend_from_slice(&len.to_be_bytes());
        v.extend_from_slice(payload);
        self.send(&v).expect("send request");
    }

    pub fn request(&mut self, kind: u16, cookie: u64, offset: u64, len: u32, payload: &[u8]) {
        self.request_with_magic(REQUEST_MAGIC, kind, cookie, offset, len, payload);
    }

    /// Reads one complete reply. Structured chunks are gathered up to the DONE flag; an
    /// error chunk must carry no data, and a read's data must match its length.
    pub fn reply(&mut self, read_len: impl Fn(u64) -> Option<u32>) -> Reply {
        let magic = self.be(4) as u32;
        // Without structured replies every reply is simple; with them, a reply to
        // anything but a read may still be simple.
        if !self.structured || magic == SIMPLE_REPLY_MAGIC {
            assert_eq!(magic, SIMPLE_REPLY_MAGIC);
            let error = self.be(4) as u32;
            let cookie = self.be(8);
            let data = match (error, read_len(cookie)) {
                (0, Some(len)) => self.recv(len as usize).expect("read data"),
                _ => Vec::new(),
            };
            return Reply {
                cookie,
                error,
                data,
            };
        }
        let mut magic = magic;
        let mut data = Vec::new();
        let mut error = 0;
        loop {
            assert_eq!(magic, STRUCTURED_REPLY_MAGIC);
            let flags = self.be(2);
            let kind = self.be(2);
            let cookie = self.be(8);
            let len = self.be(4) as usize;
            let payload = self.recv(len).expect("chunk payload");
            match kind {
                0 => {}
                1 => data.extend_from_slice(&payload[8..]),
                k if k & 0x8000 != 0 => {
                    error = u32::from_be_bytes(payload[..4].try_into().expect("errno"));
                    let msg_len = u16::from_be_bytes([payload[4], payload[5]]) as usize;
                    assert_eq!(payload.len(), 6 + msg_len, "an error chunk carries no data");
                }
                k => panic!("unexpected chunk type {k}"),
            }
            if flags & 1 == 1 {
                if error != 0 {
                    assert!(data.is_empty(), "a failed read must carry no data");
                }
                return Reply {
                    cookie,
                    error,
                    data,
                };
            }
            magic = self.be(4) as u32;
        }
    }

    /// One READ, answered.
    pub fn read(&mut self, cookie: u64, offset: u64, len: u32) -> Reply {
        self.request(CMD_READ, cookie, offset, len, &[]);
        let r = self.reply(|_| Some(len));
        assert_eq!(r.cookie, cookie);
        r
    }

    /// True once the server has closed the connection.
    pub fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        let r = match &mut self.sock {
            Sock::Tcp(s) => s.read(&mut b),
            Sock::Unix(s) => s.read(&mut b),
        };
        matches!(r, Ok(0)) || r.is_err_and(|e| e.kind() == io::ErrorKind::ConnectionReset)
    }
}
