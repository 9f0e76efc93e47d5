//! Output files written whole or not at all, even on Ctrl-C.
//!
//! Each output goes to a temporary file beside it (same directory, so the rename is
//! atomic), is synced, and is renamed into place only when every output of the command
//! is written. Termination signals (SIGINT, SIGTERM, SIGHUP) are taken over by one thread
//! that waits for them: outside [`write_all`] it ends the process at once (exit 128 + the
//! signal, as the shell reports it); during it, it waits until the writer has either
//! renamed everything or removed its temporary files. A signal that arrives before the
//! renames cancels them.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, Once};

use anyhow::{bail, Context, Result};

const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Held while outputs are being written; the signal thread takes it before exiting.
static WRITING: Mutex<()> = Mutex::new(());
/// The termination signal received, or 0.
static RECEIVED: AtomicI32 = AtomicI32::new(0);

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a sigset_t we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Block the termination signals in this thread (and so in every thread it starts later)
/// and start the thread that waits for them. Call it first thing, before other threads
/// exist: a thread started earlier would still take the default action and could kill the
/// process in the middle of a write.
pub fn take_over_termination_signals() -> Result<()> {
    static START: Once = Once::new();
    let mut result = Ok(());
    START.call_once(|| {
        let set = signal_set();
        // SAFETY: `set` is a valid sigset_t; the old mask is not needed.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if rc != 0 {
            result = Err(anyhow::anyhow!(
                "cannot take over termination signals: {}",
                std::io::Error::from_raw_os_error(rc)
            ));
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || loop {
                let mut signal: libc::c_int = 0;
                // SAFETY: `set` and `signal` are valid for the call.
                if unsafe { libc::sigwait(&set, &mut signal) } != 0 {
                    continue;
                }
                // State: a termination signal came. Record it, wait for any write in
                // progress to finish or clean up, then end the process.
                RECEIVED.store(signal, Ordering::SeqCst);
                let _writer_done = WRITING.lock();
                eprintln!("erofs-host: interrupted (signal {signal}); no output was written");
                std::process::exit(128 + signal);
            });
        if let Err(e) = spawned {
            result = Err(anyhow::anyhow!("cannot start the signal thread: {e}"));
        }
    });
    result
}

/// Write every `(path, bytes)` whole, or none of them.
pub fn write_all(outputs: &[(&Path, &[u8])]) -> Result<()> {
    let _writing = WRITING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut temps: Vec<PathBuf> = Vec::new();
    let result = (|| {
        for (path, bytes) in outputs {
            let tmp = temp_path(path)?;
            temps.push(tmp.clone());
            std::fs::write(&tmp, bytes)
                .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
                .with_context(|| format!("{}: cannot write", tmp.display()))?;
        }
        let signal = RECEIVED.load(Ordering::SeqCst);
        if signal != 0 {
            bail!("interrupted by signal {signal}: no output written");
        }
        for ((path, _), tmp) in outputs.iter().zip(&temps) {
            std::fs::rename(tmp, path)
                .with_context(|| format!("{}: cannot rename into place", path.display()))?;
        }
        Ok(())
    })();
    if result.is_err() {
        for tmp in &temps {
            if let Err(e) = std::fs::remove_file(tmp) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!("{}: cannot remove: {e}", tmp.display());
                }
            }
        }
    }
    result
}

/// `DIR/.NAME.PID.tmp` beside `DIR/NAME`.
fn temp_path(path: &Path) -> Result<PathBuf> {
    let name = path
        .file_name()
        .with_context(|| format!("{}: not a file name", path.display()))?;
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".{}.tmp", std::process::id()));
    Ok(path.with_file_name(tmp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_all_or_nothing() {
        let dir = std::env::temp_dir().join(format!("atomic-output-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = dir.join("a");
        let b = dir.join("missing-dir/b");
        std::fs::write(&a, b"old").unwrap();
        // The second output cannot be written: the first stays as it was, no temp left.
        assert!(write_all(&[(a.as_path(), b"new"), (b.as_path(), b"x")]).is_err());
        assert_eq!(std::fs::read(&a).unwrap(), b"old");
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(left.len(), 1, "only `a` is left");
        write_all(&[(a.as_path(), b"new")]).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), b"new");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
