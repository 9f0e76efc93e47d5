//! `mount --backend nbd`: the kernel's NBD client on our in-process server, then a
//! read-only kernel mount of the EROFS image on it.
//!
//! Steps, each undone by [`AttachedMount`] in reverse:
//! 1. make sure the machine has the nbd driver (else fail at once, naming what is missing);
//! 2. verify the whole EROFS metadata in the sandbox (unless told not to);
//! 3. start an `erofs-nbd` server on a unix socket in a private directory, connect to it
//!    and do the fixed-newstyle handshake (`NBD_OPT_GO`) here, in user space, as the
//!    protocol's ioctl interface expects; then the socket file is removed, so no other
//!    client can reach the server;
//! 4. hand the connected socket to a free `/dev/nbdN` with the ioctls of `linux/nbd.h`
//!    (`NBD_SET_SOCK`, block size, size, transmission flags, then `NBD_DO_IT`, which blocks
//!    in its own thread for as long as the device is connected);
//! 5. `mount -t erofs -o ro,nosuid,nodev /dev/nbdN MOUNTPOINT` (with mount(2)).
//!
//! This path needs root and the nbd module, which the development machine lacks, so only
//! steps 1 and 3 are exercised by tests here; steps 4 and 5 were written against the UAPI
//! header's documented semantics and are untested.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use super::local_server::{go_handshake, LocalServer, EXPORT_NAME, TRANSMIT_READ_ONLY};
use super::PoolSource;

/// ioctl numbers from `linux/nbd.h`: `_IO(0xab, nr)`, i.e. `0xab00 | nr`.
const NBD_SET_SOCK: libc::c_ulong = 0xab00;
const NBD_SET_BLKSIZE: libc::c_ulong = 0xab01;
const NBD_SET_SIZE: libc::c_ulong = 0xab02;
const NBD_DO_IT: libc::c_ulong = 0xab03;
const NBD_CLEAR_SOCK: libc::c_ulong = 0xab04;
const NBD_CLEAR_QUE: libc::c_ulong = 0xab05;
const NBD_DISCONNECT: libc::c_ulong = 0xab08;
const NBD_SET_FLAGS: libc::c_ulong = 0xab0a;

/// EROFS tar-index images use 512-byte blocks; the NBD device must not be coarser.
const BLOCK_SIZE: u64 = 512;
/// How long the kernel gets to bring the device up after `NBD_DO_IT`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long teardown waits for `NBD_DO_IT` to return after the disconnect.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A kernel mount on an NBD device; dropping it unmounts and disconnects.
pub struct AttachedMount {
    mountpoint: PathBuf,
    device: PathBuf,
    /// True while our mount(2) is in place.
    mounted: bool,
    link: Option<KernelLink>,
    server: Option<LocalServer>,
}

impl AttachedMount {
    /// Unmount and disconnect the NBD device. A mount that someone already unmounted is
    /// fine; a busy one is detached lazily (its open files then fail with EIO).
    pub fn unmount(mut self) -> Result<()> {
        self.teardown()
    }

    /// Undo every step that is still in place, in reverse order. Safe to call twice.
    fn teardown(&mut self) -> Result<()> {
        let mut first_error = None;
        if self.mounted {
            // Whatever happens next, the mount is ours no longer.
            self.mounted = false;
            if let Err(e) = unmount(&self.mountpoint) {
                first_error.get_or_insert(e);
            }
        }
        if let Some(link) = self.link.take() {
            if let Err(e) = link.disconnect() {
                first_error.get_or_insert(e);
            }
        }
        if let Some(server) = self.server.take() {
            server.stop();
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for AttachedMount {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            tracing::warn!("{}: {e:#}", self.mountpoint.display());
        }
    }
}

/// Serve the device that `open_source` verifies and opens, attach it to a free
/// `/dev/nbdN` and mount it read-only at `mountpoint`. Fails at once, without side
/// effects (`open_source` is not called), where the nbd driver is missing or we are not
/// root.
pub(crate) fn attach_and_mount(
    mountpoint: &Path,
    open_source: impl FnOnce() -> Result<PoolSource>,
) -> Result<AttachedMount> {
    let candidates = nbd_devices()?;
    if !mountpoint.is_dir() {
        bail!("{}: not a directory", mountpoint.display());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("--backend nbd needs root (NBD ioctls and mount(2)); use --backend fuse");
    }
    // Step 2 (verification) and the pool of instances: the caller's.
    let source = open_source()?;

    // From here on, `attached` owns every step taken, so an early return undoes them.
    let mut attached = AttachedMount {
        mountpoint: mountpoint.to_path_buf(),
        device: PathBuf::new(),
        mounted: false,
        link: None,
        server: None,
    };
    let (server, sock) = LocalServer::start(source)?;
    attached.server = Some(server);
    let (size, flags) = go_handshake(&sock, EXPORT_NAME).context("NBD handshake")?;
    if flags & TRANSMIT_READ_ONLY == 0 {
        bail!("the NBD server did not mark the export read-only");
    }
    // The kernel shares the socket: no timeouts may be left on it.
    sock.set_read_timeout(None)?;
    sock.set_write_timeout(None)?;

    let link = claim_device(&candidates, sock, size, flags)?;
    attached.device = link.path.clone();
    attached.link = Some(link);

    mount_erofs(&attached.device, mountpoint)?;
    attached.mounted = true;
    tracing::info!(device = %attached.device.display(), mountpoint = %mountpoint.display(), "mounted over NBD");
    Ok(attached)
}

/// The `/dev/nbdN` devices that exist, from /sys/block and /dev. An error with the remedy
/// when there are none.
pub fn nbd_devices() -> Result<Vec<PathBuf>> {
    let mut indices: Vec<u32> = Vec::new();
    for dir in ["/sys/block", "/dev"] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let index = name
                .to_str()
                .and_then(|n| n.strip_prefix("nbd"))
                .and_then(|n| n.parse::<u32>().ok());
            if let Some(i) = index {
                indices.push(i);
            }
        }
    }
    indices.sort_unstable();
    indices.dedup();
    let devices: Vec<PathBuf> = indices
        .into_iter()
        .map(|i| PathBuf::from(format!("/dev/nbd{i}")))
        .filter(|p| p.exists())
        .collect();
    if devices.is_empty() {
        bail!(
            "--backend nbd needs the Linux nbd driver, and this machine has no NBD devices \
             (no /sys/block/nbd*, no /dev/nbd0): load it with `modprobe nbd` (as root), \
             or mount with --backend fuse"
        );
    }
    Ok(devices)
}

/// A `/dev/nbdN` connected to our socket; `NBD_DO_IT` runs in `thread`.
struct KernelLink {
    path: PathBuf,
    nbd: Arc<File>,
    sock: UnixStream,
    thread: JoinHandle<io::Result<()>>,
}

/// One ioctl with an integer argument.
fn nbd_ioctl(file: &File, request: libc::c_ulong, arg: libc::c_ulong) -> io::Result<()> {
    // SAFETY: every NBD ioctl used here takes an integer argument, not a pointer.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), request as _, arg) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Tries the devices in order until one accepts our socket. A device that is connected
/// already (its `pid` attribute exists), or that the kernel reports busy, is skipped.
fn claim_device(
    candidates: &[PathBuf],
    sock: UnixStream,
    size: u64,
    flags: u16,
) -> Result<KernelLink> {
    let mut last_error = None;
    for path in candidates {
        let name = path
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        if Path::new("/sys/block").join(&name).join("pid").exists() {
            continue;
        }
        match connect_device(path, &sock, size, flags) {
            Ok(link) => return Ok(link),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                last_error = Some(anyhow!("{}: busy", path.display()));
            }
            Err(e) => return Err(e).with_context(|| format!("{}: attaching", path.display())),
        }
    }
    Err(last_error.unwrap_or_else(|| anyhow!("every NBD device is in use")))
        .context("no free /dev/nbd* device (all connected; `modprobe nbd nbds_max=N` adds more)")
}

/// Opens `path`, configures it and starts `NBD_DO_IT` in a thread; returns once the
/// kernel reports the device live. All ioctls run in that one thread, because the kernel
/// binds a device being set up with ioctls to the task that gave it the socket.
fn connect_device(path: &Path, sock: &UnixStream, size: u64, flags: u16) -> io::Result<KernelLink> {
    let nbd = Arc::new(
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)?,
    );
    // Two more handles on the socket: one keeps it open for the kernel while NBD_DO_IT
    // runs, one lets teardown shut it down.
    let kernel_sock = sock.try_clone()?;
    let our_sock = sock.try_clone()?;
    let (configured_tx, configured_rx) = mpsc::channel::<io::Result<()>>();
    let file = Arc::clone(&nbd);
    let thread =
        thread::Builder::new()
            .name("nbd-do-it".into())
            .spawn(move || -> io::Result<()> {
                let sock_fd = kernel_sock.as_raw_fd() as libc::c_ulong;
                // The usable size is whole 512-byte blocks (the image always is).
                let bytes = size - size % BLOCK_SIZE;
                let setup = nbd_ioctl(&file, NBD_SET_SOCK, sock_fd).and_then(|_| {
                    let configured = nbd_ioctl(&file, NBD_SET_BLKSIZE, BLOCK_SIZE as _)
                        .and_then(|_| nbd_ioctl(&file, NBD_SET_SIZE, bytes as _))
                        .and_then(|_| nbd_ioctl(&file, NBD_SET_FLAGS, libc::c_ulong::from(flags)));
                    if configured.is_err() {
                        // The device holds our socket: release it for the next user.
                        let _ = nbd_ioctl(&file, NBD_CLEAR_SOCK, 0);
                    }
                    configured
                });
                let ok = setup.is_ok();
                let _ = configured_tx.send(setup);
                if !ok {
                    return Ok(());
                }
                // Blocks while the device is connected; returns after NBD_DISCONNECT or when
                // the socket dies. Then the queue and the socket are cleared for the next user.
                let served = nbd_ioctl(&file, NBD_DO_IT, 0);
                let _ = nbd_ioctl(&file, NBD_CLEAR_QUE, 0);
                let _ = nbd_ioctl(&file, NBD_CLEAR_SOCK, 0);
                drop(kernel_sock);
                served
            })?;
    match configured_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let _ = thread.join();
            return Err(e);
        }
        Err(_) => {
            let _ = thread.join();
            return Err(io::Error::other("the NBD setup thread ended early"));
        }
    }
    let link = KernelLink {
        path: path.to_path_buf(),
        nbd,
        sock: our_sock,
        thread,
    };
    // NBD_DO_IT publishes the device's `pid` and size in sysfs once it is live.
    let sys = Path::new("/sys/block").join(path.file_name().unwrap_or_default());
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let size_sectors = std::fs::read_to_string(sys.join("size"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if sys.join("pid").exists() && size_sectors > 0 {
            return Ok(link);
        }
        if link.thread.is_finished() || Instant::now() > deadline {
            let _ = link.disconnect();
            return Err(io::Error::other(format!(
                "{}: the kernel did not bring the device up",
                path.display()
            )));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

impl KernelLink {
    /// `NBD_DISCONNECT` makes the kernel send NBD_CMD_DISC and end `NBD_DO_IT`. If that
    /// does not happen in time, shutting the socket down ends it the hard way; a thread
    /// that still does not return is left behind rather than hanging the caller.
    fn disconnect(self) -> Result<()> {
        let asked = nbd_ioctl(&self.nbd, NBD_DISCONNECT, 0);
        let deadline = Instant::now() + DISCONNECT_TIMEOUT;
        while !self.thread.is_finished() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        if !self.thread.is_finished() {
            let _ = self.sock.shutdown(std::net::Shutdown::Both);
            thread::sleep(Duration::from_millis(200));
        }
        if !self.thread.is_finished() {
            bail!(
                "{}: the kernel did not release the device",
                self.path.display()
            );
        }
        // NBD_DO_IT's own result does not matter here: older kernels report the
        // requested disconnect as an error.
        match self.thread.join() {
            Ok(_) => asked.with_context(|| format!("{}: NBD_DISCONNECT", self.path.display())),
            Err(_) => bail!("{}: the NBD thread panicked", self.path.display()),
        }
    }
}

fn c_path(p: &Path) -> Result<std::ffi::CString> {
    std::ffi::CString::new(p.as_os_str().as_bytes())
        .map_err(|_| anyhow!("{}: path contains a NUL byte", p.display()))
}

/// mount(2) of the device as EROFS, read-only; setuid bits and device nodes of the
/// (untrusted) image are not honoured.
fn mount_erofs(device: &Path, mountpoint: &Path) -> Result<()> {
    let source = c_path(device)?;
    let target = c_path(mountpoint)?;
    let flags = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            c"erofs".as_ptr(),
            flags,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    let hint = if e.raw_os_error() == Some(libc::ENODEV) {
        " (the kernel has no erofs filesystem: `modprobe erofs`)"
    } else {
        ""
    };
    bail!(
        "mount -t erofs -o ro {} {}: {e}{hint}",
        device.display(),
        mountpoint.display()
    )
}

/// umount(2); "not mounted" counts as done; a busy mount is detached lazily.
fn unmount(mountpoint: &Path) -> Result<()> {
    let target = c_path(mountpoint)?;
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::umount2(target.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOENT) => Ok(()),
        Some(libc::EBUSY) => {
            tracing::warn!("{}: busy; detaching lazily", mountpoint.display());
            // SAFETY: as above.
            if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
                    .with_context(|| format!("umount -l {}", mountpoint.display()))
            }
        }
        _ => Err(e).with_context(|| format!("umount {}", mountpoint.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where the driver is missing (as on the development machine), the attach fails
    /// before touching anything else: the device arguments here do not even exist.
    #[test]
    fn missing_driver_is_reported_at_once() {
        let started = Instant::now();
        let Err(e) = nbd_devices() else {
            return; // This machine has NBD devices: nothing to check here.
        };
        let msg = e.to_string();
        assert!(msg.contains("modprobe nbd"), "{msg}");
        assert!(msg.contains("--backend fuse"), "{msg}");
        let Err(err) = attach_and_mount(Path::new("/nonexistent/mnt"), || {
            panic!("the device must not be opened without the nbd driver")
        }) else {
            panic!("attach must fail without the nbd driver");
        };
        assert_eq!(err.to_string(), msg);
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
