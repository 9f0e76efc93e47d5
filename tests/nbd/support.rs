//! Support for the serve-nbd tests: the server as a child process (killed on drop) and
//! an external-tool runner with deadlines. The raw NBD client is `erofs_nbd::test_client`
//! (the one the erofs-nbd crate tests itself with), re-exported here.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::common::{host_bin, skip};

pub use crate::common::tools::*;
pub use erofs_nbd::test_client::*;

/// Verification of the largest fixture plus the first instance's open take well under a
/// second; the margin is for a loaded CI machine.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// True if `tool` is on PATH; otherwise prints the loud skip line for `test`.
pub fn have_tool(test: &str, tool: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    if !found {
        skip(
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

    /// A raw client connected to the server, past the handshake (GO on the default
    /// export).
    pub fn connect(&self, structured: bool) -> Conn {
        let mut c = match &self.socket {
            Some(p) => Conn::unix(p),
            None => Conn::tcp(&self.addr),
        };
        c.set_timeout(Some(Duration::from_secs(20)));
        c.handshake("", structured);
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

// ------------------------------------------------------------------------------------
// A minimal raw client.
// ------------------------------------------------------------------------------------
