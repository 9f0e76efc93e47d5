//! Bookkeeping for mounts: where a server registers its mount, how to tell whether a
//! path is mounted (and whether its FUSE server died), and `erofs-host umount`.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a running server records about its mount, for `umount`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Registration {
    pub pid: u32,
    pub mountpoint: PathBuf,
    pub backend: String,
    /// `--backend loop`: the private FUSE mount that serves `device.img`.
    pub backing: Option<PathBuf>,
    /// Whole image: each layer's mount (and loop backing), top layer first, to detach
    /// if the server died; and the directory that holds them.
    #[serde(default)]
    pub layers: Vec<PathBuf>,
    #[serde(default)]
    pub layers_dir: Option<PathBuf>,
}

/// `/run/erofs-wasm` for root; `$XDG_RUNTIME_DIR/erofs-wasm` or `/tmp/erofs-wasm-UID`
/// otherwise. Created 0700 on first use.
pub fn state_dir() -> Result<PathBuf> {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let dir = if uid == 0 && Path::new("/run").is_dir() {
        PathBuf::from("/run/erofs-wasm")
    } else if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR") {
        PathBuf::from(x).join("erofs-wasm")
    } else {
        PathBuf::from(format!("/tmp/erofs-wasm-{uid}"))
    };
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("{}: cannot create the state directory", dir.display()))?;
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
    Ok(dir)
}

/// The mountpoint as an absolute path, without touching it (a dead FUSE mount cannot be
/// stat'ed, so canonicalize would fail on exactly the paths umount must handle).
pub fn absolute(path: &Path) -> Result<PathBuf> {
    let p = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    };
    // Fold "." and ".." textually.
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    Ok(out)
}

/// A short stable id for a mountpoint: names its registration and its private files.
pub fn mount_id(mountpoint: &Path) -> String {
    hex::encode(&Sha256::digest(mountpoint.as_os_str().as_bytes())[..8])
}

pub fn registration_path(mountpoint: &Path) -> Result<PathBuf> {
    Ok(state_dir()?.join(format!("{}.json", mount_id(mountpoint))))
}

pub fn read_registration(mountpoint: &Path) -> Result<Option<Registration>> {
    let path = registration_path(mountpoint)?;
    match std::fs::read(&path) {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("{}: cannot read", path.display())),
    }
}

/// The filesystem type mounted exactly at `path`, from /proc/self/mountinfo.
pub fn mounted_at(path: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.as_os_str().as_bytes();
    let mut found = None;
    for line in info.lines() {
        // id parent major:minor root MOUNTPOINT options [optional...] - FSTYPE source super
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(mp) = fields.get(4) else { continue };
        if unescape(mp) == want {
            let dash = fields.iter().position(|f| *f == "-");
            // The last mount at a path is the visible one.
            found = dash.and_then(|d| fields.get(d + 1)).map(|s| s.to_string());
        }
    }
    found
}

/// mountinfo escapes space, tab, newline and backslash as \\ooo.
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("x"), 8)
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// True when `path` is a FUSE mount whose server is gone ("Transport endpoint is not
/// connected").
pub fn is_dead_fuse_mount(path: &Path) -> bool {
    matches!(std::fs::metadata(path), Err(e) if e.raw_os_error() == Some(libc::ENOTCONN))
}

/// Refuse a mountpoint that cannot take a new mount, saying how to fix it.
pub fn check_mountpoint(mountpoint: &Path) -> Result<()> {
    if is_dead_fuse_mount(mountpoint) {
        bail!(
            "{}: a FUSE mount whose server died is still attached here; clear it with `erofs-host umount {}` (or `umount -l {}`)",
            mountpoint.display(),
            mountpoint.display(),
            mountpoint.display()
        );
    }
    let md = std::fs::metadata(mountpoint)
        .with_context(|| format!("{}: mountpoint", mountpoint.display()))?;
    if !md.is_dir() {
        bail!("{}: mountpoint is not a directory", mountpoint.display());
    }
    if let Some(fstype) = mounted_at(mountpoint) {
        bail!(
            "{}: already mounted ({fstype}); unmount it first (`erofs-host umount {}`)",
            mountpoint.display(),
            mountpoint.display()
        );
    }
    Ok(())
}

/// umount2(2). `detach` unmounts lazily (MNT_DETACH).
pub fn unmount(path: &Path, detach: bool) -> std::io::Result<()> {
    let c =
        CString::new(path.as_os_str().as_bytes()).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    let flags = if detach { libc::MNT_DETACH } else { 0 };
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), flags) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

pub fn process_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    unsafe { libc::kill(pid, 0) == 0 }
}

#[derive(Debug, Args)]
pub struct UmountArgs {
    /// The mountpoint given to `erofs-host mount`
    pub mountpoint: PathBuf,

    /// Detach even if busy (the mount goes away when its last user leaves)
    #[arg(long)]
    pub lazy: bool,

    /// Seconds to wait for the server to exit
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
}

/// Unmount, then make sure the serving process has ended. Handles a dead FUSE mount
/// (server killed) and a stale registration.
pub fn umount(args: UmountArgs) -> Result<()> {
    let mp = absolute(&args.mountpoint)?;
    let reg = read_registration(&mp)?;
    let mut did_something = false;

    if is_dead_fuse_mount(&mp) {
        unmount(&mp, true)
            .with_context(|| format!("{}: detaching the dead FUSE mount", mp.display()))?;
        eprintln!(
            "{}: detached a FUSE mount whose server had died",
            mp.display()
        );
        did_something = true;
    } else if mounted_at(&mp).is_some() {
        match unmount(&mp, args.lazy) {
            Ok(()) => did_something = true,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => bail!(
                "{}: busy (a process has a file open or its working directory there); close it, or use --lazy",
                mp.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("{}: unmount", mp.display())),
        }
    }

    if let Some(reg) = &reg {
        if process_alive(reg.pid) {
            // The server tears down what is left (the loop backend's private mount) and exits.
            // SAFETY: sending SIGTERM to the pid the server registered.
            unsafe { libc::kill(reg.pid as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(args.timeout);
            while process_alive(reg.pid) && !is_zombie(reg.pid) {
                if Instant::now() > deadline {
                    bail!(
                        "{}: the server (pid {}) did not exit within {} s",
                        mp.display(),
                        reg.pid,
                        args.timeout
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            did_something = true;
        }
        if let Some(backing) = &reg.backing {
            if mounted_at(backing).is_some() {
                let _ = unmount(backing, true);
            }
            let _ = std::fs::remove_dir(backing);
        }
        crate::image::clear_leftovers(&reg.layers, reg.layers_dir.as_deref());
        let _ = std::fs::remove_file(registration_path(&mp)?);
    }
    if !did_something {
        bail!("{}: not mounted by erofs-host", mp.display());
    }
    Ok(())
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .map(|r| r.trim_start().starts_with('Z'))
                .unwrap_or(false)
        })
        .unwrap_or(true)
}
