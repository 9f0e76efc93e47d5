//! The merge: the layers stacked into one tree with OCI semantics (later layers win,
//! whiteouts hide, opaque directories hide everything below them).
//!
//! - `kernel` (root's default): the kernel's overlayfs with the layers as `lowerdir`s,
//!   top first. The layers' whiteouts (char 0:0) and `trusted.overlay.opaque` are exactly
//!   what overlayfs reads. Options: `redirect_dir=nofollow` and `metacopy=off`, because an
//!   untrusted image's `trusted.overlay.redirect` / `metacopy` xattrs are not OCI and must
//!   not steer the merge; `index=off`, since lowers of FUSE and EROFS have no stable
//!   file handles to index; `nosuid,nodev` as for a single layer.
//! - `fuse-overlayfs` (the default without root): the Debian package's FUSE overlay, run
//!   as a child of the mount daemon. The kernel shows `trusted.*` only to CAP_SYS_ADMIN,
//!   so the layers are served with `trusted.overlay.*` renamed `user.overlay.*`, which
//!   fuse-overlayfs reads for opaque directories.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::ValueEnum;

use crate::mount_registry as mounts;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MergeKind {
    /// The kernel's overlayfs (needs root)
    Kernel,
    /// fuse-overlayfs (works without root)
    FuseOverlayfs,
}

impl MergeKind {
    /// Root gets the kernel's overlay (fastest, no extra process); others fuse-overlayfs.
    pub fn default_for_user() -> MergeKind {
        if is_root() {
            MergeKind::Kernel
        } else {
            MergeKind::FuseOverlayfs
        }
    }
}

/// How long fuse-overlayfs may take to show its mount. It mounts in milliseconds; 10 s
/// covers a loaded machine without hanging a failed start for long.
const FUSE_OVERLAYFS_START: Duration = Duration::from_secs(10);

/// The writable layer: `DIR/upper` and overlayfs' `DIR/work` (same filesystem).
pub struct Upper {
    pub upper: PathBuf,
    pub work: PathBuf,
}

impl Upper {
    pub fn prepare(dir: &Path) -> Result<Upper> {
        let upper = dir.join("upper");
        let work = dir.join("work");
        for d in [&upper, &work] {
            std::fs::create_dir_all(d)
                .with_context(|| format!("--upper: creating {}", d.display()))?;
        }
        Ok(Upper { upper, work })
    }
}

/// The merged tree at the mountpoint. Dropping it unmounts it.
pub struct Merge {
    mountpoint: PathBuf,
    child: Option<Child>,
    mounted: bool,
}

impl Merge {
    /// Still mounted (and, for fuse-overlayfs, still served).
    pub fn is_live(&mut self) -> bool {
        let child_ok = match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => true,
        };
        child_ok && mounts::mounted_at(&self.mountpoint).is_some()
    }

    pub fn teardown(&mut self) {
        if self.mounted && mounts::mounted_at(&self.mountpoint).is_some() {
            if let Err(e) = unmount_any(&self.mountpoint, false) {
                tracing::warn!("{}: {e}; detaching lazily", self.mountpoint.display());
                if let Err(e) = unmount_any(&self.mountpoint, true) {
                    tracing::warn!("{}: lazy unmount: {e}", self.mountpoint.display());
                }
            }
        }
        self.mounted = false;
        if let Some(mut child) = self.child.take() {
            // fuse-overlayfs exits once its mount is gone; give it a moment, then stop it.
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(child.try_wait(), Ok(None)) {
                tracing::warn!(
                    "fuse-overlayfs (pid {}) did not exit; killing it",
                    child.id()
                );
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

impl Drop for Merge {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// overlayfs' option syntax gives `:` `,` and `\` meanings; our own state paths never
/// hold them, but --upper is the user's.
fn option_path(p: &Path) -> Result<String> {
    let text = p
        .to_str()
        .with_context(|| format!("{}: not UTF-8", p.display()))?;
    if text.contains([':', ',', '\\']) {
        bail!("{text}: overlay paths cannot contain `:`, `,` or `\\`");
    }
    Ok(text.to_string())
}

/// Stack `lowers` (top first) at `mountpoint`, with `upper` on top if given.
pub fn mount_merge(
    kind: MergeKind,
    lowers: &[PathBuf],
    upper: Option<&Upper>,
    mountpoint: &Path,
) -> Result<Merge> {
    let lowerdir = lowers
        .iter()
        .map(|p| option_path(p))
        .collect::<Result<Vec<_>>>()?
        .join(":");
    let mut options = format!("lowerdir={lowerdir}");
    if let Some(u) = upper {
        options.push_str(&format!(
            ",upperdir={},workdir={}",
            option_path(&u.upper)?,
            option_path(&u.work)?
        ));
    }
    let mut merge = Merge {
        mountpoint: mountpoint.to_path_buf(),
        child: None,
        mounted: false,
    };
    match kind {
        MergeKind::Kernel => {
            if !is_root() {
                bail!("--merge kernel: overlayfs needs root here (use --merge fuse-overlayfs)");
            }
            options.push_str(",redirect_dir=nofollow,metacopy=off,index=off");
            let mut flags = libc::MS_NOSUID | libc::MS_NODEV;
            if upper.is_none() {
                flags |= libc::MS_RDONLY;
            }
            kernel_mount(mountpoint, flags, &options).with_context(|| {
                format!("{}: mount -t overlay -o {options}", mountpoint.display())
            })?;
            merge.mounted = true;
        }
        MergeKind::FuseOverlayfs => {
            // As for the kernel's merge: no setuid, no devices; read-only without --upper.
            options.push_str(",nosuid,nodev");
            if upper.is_none() {
                options.push_str(",ro");
            }
            let child = Command::new("fuse-overlayfs")
                .arg("-f")
                .arg("-o")
                .arg(&options)
                .arg(mountpoint)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => anyhow::anyhow!(
                        "fuse-overlayfs is not installed (apt-get install fuse-overlayfs); it merges the layers without root"
                    ),
                    _ => anyhow::anyhow!("starting fuse-overlayfs: {e}"),
                })?;
            merge.child = Some(child);
            wait_for_fuse_overlayfs(&mut merge)?;
            merge.mounted = true;
        }
    }
    Ok(merge)
}

fn wait_for_fuse_overlayfs(merge: &mut Merge) -> Result<()> {
    let deadline = Instant::now() + FUSE_OVERLAYFS_START;
    loop {
        if mounts::mounted_at(&merge.mountpoint).is_some() {
            return Ok(());
        }
        let Some(child) = merge.child.as_mut() else {
            bail!("fuse-overlayfs: no process");
        };
        if let Some(status) = child.try_wait().context("waiting for fuse-overlayfs")? {
            let mut text = String::new();
            if let Some(mut err) = child.stderr.take() {
                use std::io::Read;
                let _ = err.read_to_string(&mut text);
            }
            merge.child = None;
            bail!(
                "fuse-overlayfs failed ({status}): {}",
                text.trim().lines().last().unwrap_or("no message")
            );
        }
        if Instant::now() > deadline {
            bail!(
                "fuse-overlayfs did not mount {} within {FUSE_OVERLAYFS_START:?}",
                merge.mountpoint.display()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn kernel_mount(target: &Path, flags: libc::c_ulong, data: &str) -> std::io::Result<()> {
    let c = |b: &[u8]| CString::new(b).map_err(|_| std::io::ErrorKind::InvalidInput);
    let source = c(b"erofs-wasm")?;
    let fstype = c(b"overlay")?;
    let target = c(target.as_os_str().as_bytes())?;
    let data = c(data.as_bytes())?;
    // SAFETY: valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Unmount a path we mounted (umount2 as root, `fusermount3 -u` otherwise).
pub use crate::mount_registry::unmount_any;
