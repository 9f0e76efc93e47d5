//! External tools in tests, shared by the e2e tests (tests/) and erofs-nbd's own tests
//! (host/nbd/tests, which include this file by path): a child guard that always kills
//! and reaps, and a runner with a deadline whose output goes to files (no pipe
//! deadlocks).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// An external tool's outcome: its exit status (`None` when it was killed at the
/// deadline) and what it wrote.
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

impl ChildGuard {
    /// Waits up to `limit` for the child; on timeout it is left to `drop`, which kills it.
    pub fn wait_timeout(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        let child = self.0.as_mut()?;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.0 = None;
                    return Some(status);
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => return None,
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

/// Spawns `program` with its output going to files in `dir`.
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
    let status = guard.wait_timeout(limit);
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
