//! `erofs-host mount`: serve a layer at a mountpoint.
//!
//! - `--backend fuse` (default): FUSE requests are answered by the EROFS reader inside
//!   the sandbox; the kernel never parses the image's metadata.
//! - `--backend loop`: the device is one file in a private FUSE mount, and the kernel's
//!   EROFS loop-mounts it (for trusted images and comparison; the image is verified in
//!   the sandbox first unless --no-verify).
//! - `--backend nbd`: a kernel NBD device (needs the nbd module).
//!
//! Without `--foreground` the command starts itself again as a daemon in a new session,
//! waits until the mount is live (or failed), and returns. The daemon unmounts cleanly on
//! SIGINT, SIGTERM or SIGHUP, or when someone unmounts the mountpoint.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, ValueEnum};
use fuser::BackgroundSession;

use super::device_args::DeviceArgs;
use crate::bridge::fuse::{self, ErofsFuse};
use crate::bridge::loop_backing::{DeviceFile, IMAGE_NAME};
use crate::bridge::nbd::attach::{attach_and_mount, AttachedMount};
use crate::bridge::nbd::PoolSource;
use crate::defaults;
use crate::mount_registry::{self as mounts, Registration};
use crate::sandbox::{verify_image, Depth, DevicePool, FilesystemPool, Runtime};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// EROFS parsed inside the sandbox, served through FUSE (for untrusted images)
    Fuse,
    /// The kernel's EROFS on a loop device over a FUSE-served image file
    Loop,
    /// The kernel's EROFS on an NBD device (needs /dev/nbd*)
    Nbd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VerifyLevel {
    /// Every inode, dirent and chunk address of the metadata
    Metadata,
    /// The metadata, and every regular file's tar header (reads the whole tar)
    Deep,
}

impl VerifyLevel {
    pub(crate) fn depth(self) -> Depth {
        match self {
            VerifyLevel::Metadata => Depth::Metadata,
            VerifyLevel::Deep => Depth::Deep,
        }
    }
}

#[derive(Debug, Args)]
pub struct MountArgs {
    #[command(flatten)]
    pub device: DeviceArgs,

    /// Where to mount (an empty directory)
    pub mountpoint: PathBuf,

    #[arg(long, value_enum, default_value_t = Backend::Fuse)]
    pub backend: Backend,

    /// Stay in the foreground and serve until Ctrl-C / SIGTERM
    #[arg(long)]
    pub foreground: bool,

    /// Skip the full metadata check before a kernel backend (loop, nbd) sees the image
    #[arg(long, conflicts_with = "verify")]
    pub no_verify: bool,

    /// What a kernel backend (loop, nbd) checks before the kernel sees the image:
    /// `metadata` walks the whole EROFS metadata (and a sample of tar headers); `deep`
    /// also checks every regular file's tar header, reading the whole tar once
    #[arg(long, value_enum, default_value_t = VerifyLevel::Metadata)]
    pub verify: VerifyLevel,

    /// Sandboxed instances serving requests in parallel (a sequential reader through two
    /// instances decodes the stream twice; more only pay off for independent random
    /// readers). Each has its own cache.
    #[arg(long, default_value_t = defaults::MOUNT_INSTANCES)]
    pub instances: usize,

    #[command(flatten)]
    pub image: super::image::ImageArgs,

    /// Internal: print "ready" on stdout once mounted (used by the daemon's parent)
    #[arg(long, hide = true)]
    pub notify_ready: bool,
}

pub fn run(args: MountArgs) -> Result<()> {
    let mountpoint = mounts::absolute(&args.mountpoint)?;
    // Before any work (no daemon, no sandbox, nothing mounted): the kernel backends need
    // root, and saying so here is clearer than a failed mount(2) after a verify pass.
    needs_root_check(args.backend, mounts::private::euid())?;
    // The state directory is checked (made 0700, ours) before anything is mounted.
    mounts::state_dir()?;
    mounts::check_mountpoint(&mountpoint)?;
    if args.foreground {
        serve(args, &mountpoint)
    } else {
        daemonize(&mountpoint, args.device.remote.password_stdin)
    }
}

/// `--backend loop|nbd` as a user other than root: refused, saying why.
fn needs_root_check(backend: Backend, euid: u32) -> Result<()> {
    if euid == 0 {
        return Ok(());
    }
    match backend {
        Backend::Fuse => Ok(()),
        Backend::Loop => bail!(
            "--backend loop needs root: it attaches a loop device and mounts the kernel's EROFS on it (mount(2) of a block filesystem is root's); without root use --backend fuse (the default), which parses the image in the sandbox and needs only /dev/fuse"
        ),
        Backend::Nbd => bail!(
            "--backend nbd needs root: it claims a /dev/nbdN with NBD ioctls and mounts the kernel's EROFS on it; without root use --backend fuse (the default), or `erofs-host serve-nbd` for an NBD client of your own"
        ),
    }
}

/// Start `erofs-host mount … --foreground --notify-ready` in a new session and wait for
/// its word: "ready" on its stdout, or an error on its stderr.
fn daemonize(mountpoint: &Path, password_stdin: bool) -> Result<()> {
    // The password arrives on our stdin; the daemon reads it from a pipe we fill, so it
    // never appears in an argument list or the environment.
    let mut password = Vec::new();
    if password_stdin {
        std::io::stdin()
            .read_to_end(&mut password)
            .context("reading the password from stdin")?;
    }
    let exe = std::env::current_exe().context("finding erofs-host's own path")?;
    let mut cmd = Command::new(exe);
    cmd.args(std::env::args_os().skip(1))
        .arg("--foreground")
        .arg("--notify-ready");
    cmd.stdin(if password_stdin {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    // SAFETY: setsid is async-signal-safe; it detaches the daemon from our terminal so
    // that a Ctrl-C meant for this shell does not reach it.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the mount daemon")?;
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(&password)
            .context("handing the password to the mount daemon")?;
        // Dropping `input` closes the pipe: the daemon reads to its end.
    }
    let stdout = child.stdout.take().context("daemon stdout")?;
    let mut stderr = child.stderr.take().context("daemon stderr")?;
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .context("waiting for the mount daemon")?;
    if line.trim() == "ready" {
        eprintln!(
            "mounted at {} (server pid {}; `erofs-host umount {}` to stop)",
            mountpoint.display(),
            child.id(),
            mountpoint.display()
        );
        return Ok(());
    }
    let status = child.wait().context("waiting for the mount daemon")?;
    let text = errors.join().unwrap_or_default();
    let text = text.trim().trim_start_matches("erofs-host: error: ");
    bail!(
        "{}",
        if text.is_empty() {
            format!("the mount daemon exited ({status})")
        } else {
            text.to_string()
        }
    )
}

/// Serve in this process until a signal or an external unmount.
fn serve(args: MountArgs, mountpoint: &Path) -> Result<()> {
    // Block the stop signals before any thread starts, so every thread inherits the mask
    // and they arrive only through sigtimedwait below.
    let signals = block_stop_signals()?;
    if args.device.is_whole_image()? {
        return super::image::serve(&args, mountpoint, &signals);
    }
    if args.backend == Backend::Nbd {
        // The NBD attach checks the machine (driver, root) before the device is resolved.
        let attached = attach_and_mount(mountpoint, || open_nbd_source(&args))?;
        // Recorded like every other mount, so that `umount` can wait for this server and
        // its log goes away with it.
        let registered = mounts::register(&Registration::of_self(mountpoint, "nbd")?)?;
        let result = wait_and_detach(attached, signals, args.notify_ready, mountpoint);
        drop(registered);
        return result;
    }

    // Set up: the sandboxed device and the bridge the kernel mounts.
    let (spec, limits) = args.device.spec()?;
    let runtime = Runtime::load(&args.device.component)?;
    let id = mounts::mount_id(mountpoint);
    let served = match args.backend {
        Backend::Fuse => mount_fuse(&args, mountpoint, runtime, &spec, limits)?,
        Backend::Loop => mount_loop(&args, mountpoint, &id, runtime, &spec, limits)?,
        Backend::Nbd => unreachable!("handled above"),
    };

    // Live: record the mount for `umount` (the server and the mount as they are now),
    // and tell the waiting parent.
    let mut registration =
        Registration::of_self(mountpoint, &format!("{:?}", args.backend).to_lowercase())?;
    registration.backing = served.backing.clone();
    let registered = mounts::register(&registration)?;
    announce_ready(args.notify_ready, mountpoint)?;

    // Serving: until a stop signal, or until the mount goes away underneath us.
    wait_until_stopped(&served, &signals, mountpoint);

    // Stopping: tear down in reverse, then forget the registration (and an empty log).
    drop(served);
    drop(registered);
    Ok(())
}

/// `--backend fuse`: the EROFS tree parsed in the sandbox, over FUSE at the mountpoint.
fn mount_fuse(
    args: &MountArgs,
    mountpoint: &Path,
    runtime: std::sync::Arc<Runtime>,
    spec: &crate::sandbox::DeviceSpec,
    limits: crate::sandbox::Limits,
) -> Result<Served> {
    let pool = FilesystemPool::open(runtime, spec, limits, args.instances)?;
    let fs = ErofsFuse::new(pool).map_err(|e| anyhow!("{}: {e}", spec.meta_name()))?;
    let name = spec.blob.display_name();
    let fs = fs
        .with_stats_file(
            mounts::stats_file::stats_path(mountpoint)?,
            name.clone(),
            None,
        )
        .context("starting the stats writer")?;
    let session = fuse::session(fs, mountpoint, &name, args.instances)?;
    Ok(Served {
        session: Some(session),
        backing: None,
        kernel_mount: None,
    })
}

/// `--backend loop`: verify the image, serve the device as one file in a private FUSE
/// mount, then have the kernel loop-mount that file at the mountpoint.
fn mount_loop(
    args: &MountArgs,
    mountpoint: &Path,
    id: &str,
    runtime: std::sync::Arc<Runtime>,
    spec: &crate::sandbox::DeviceSpec,
    limits: crate::sandbox::Limits,
) -> Result<Served> {
    if !args.no_verify {
        verify_image(runtime.clone(), spec, limits, args.verify.depth())?;
    }
    let backing = mounts::state_dir()?.join(id);
    std::fs::create_dir_all(&backing)
        .with_context(|| format!("{}: creating", backing.display()))?;
    let pool = DevicePool::open(runtime, spec.clone(), limits, args.instances)?;
    let name = spec.blob.display_name();
    let session = fuse::session(DeviceFile::new(pool), &backing, &name, args.instances)?;
    // From here on, `served` owns the private mount, so an early return undoes it.
    let mut served = Served {
        session: Some(session),
        backing: Some(backing.clone()),
        kernel_mount: None,
    };
    let image = backing.join(IMAGE_NAME);
    let status = Command::new("mount")
        .args(["-t", "erofs", "-o", "loop,ro"])
        .arg(&image)
        .arg(mountpoint)
        .status()
        .context("running mount(8)")?;
    if !status.success() {
        served.teardown();
        bail!(
            "{}: the kernel refused to mount the image (mount -t erofs -o loop,ro: {status})",
            mountpoint.display()
        );
    }
    served.kernel_mount = Some(mountpoint.to_path_buf());
    Ok(served)
}

/// `--backend nbd`: the device verified (unless `--no-verify`) and served by a pool of
/// sandboxed instances, for the kernel attach.
fn open_nbd_source(args: &MountArgs) -> Result<PoolSource> {
    let (spec, limits) = args.device.spec()?;
    let runtime = Runtime::load(&args.device.component)?;
    if !args.no_verify {
        let v = verify_image(runtime.clone(), &spec, limits, args.verify.depth())?;
        tracing::info!(report = ?v.report, headers = ?v.headers_checked, "the image passed verification");
    }
    let pool = DevicePool::open(runtime, spec, limits, defaults::NBD_INSTANCES)?;
    Ok(PoolSource(pool))
}

/// Block until a stop signal arrives, the FUSE session ends (someone unmounted it), or
/// the kernel mount disappears.
fn wait_until_stopped(served: &Served, signals: &libc::sigset_t, mountpoint: &Path) {
    loop {
        if let Some(sig) = wait_signal(signals, SIGNAL_POLL) {
            tracing::info!("signal {sig}: unmounting {}", mountpoint.display());
            return;
        }
        let session_ended = served
            .session
            .as_ref()
            .is_some_and(|s| s.guard.is_finished());
        let kernel_gone = served
            .kernel_mount
            .as_ref()
            .is_some_and(|m| mounts::mounted_at(m).is_none());
        if session_ended || kernel_gone {
            tracing::info!("{} was unmounted; stopping", mountpoint.display());
            return;
        }
    }
}

/// How often the serving loop looks at the mount between signals.
const SIGNAL_POLL: Duration = Duration::from_millis(500);

fn wait_and_detach(
    attached: AttachedMount,
    signals: libc::sigset_t,
    notify: bool,
    mountpoint: &Path,
) -> Result<()> {
    announce_ready(notify, mountpoint)?;
    while wait_signal(&signals, SIGNAL_POLL).is_none() && mounts::mounted_at(mountpoint).is_some() {
    }
    attached.unmount()
}

/// What `serve` set up, torn down in reverse order.
struct Served {
    session: Option<BackgroundSession>,
    backing: Option<PathBuf>,
    kernel_mount: Option<PathBuf>,
}

impl Served {
    fn teardown(&mut self) {
        if let Some(mp) = self.kernel_mount.take() {
            if mounts::mounted_at(&mp).is_some() {
                if let Err(e) = mounts::unmount(&mp, false) {
                    tracing::warn!("{}: {e}; detaching lazily", mp.display());
                    if let Err(e) = mounts::unmount(&mp, true) {
                        tracing::warn!("{}: cannot detach: {e}", mp.display());
                    }
                }
            }
        }
        if let Some(session) = self.session.take() {
            // Unmounts the FUSE mount (if still there) and joins the session thread.
            if let Err(e) = session.umount_and_join() {
                tracing::debug!("FUSE session end: {e}");
            }
        }
        if let Some(dir) = self.backing.take() {
            mounts::detach_and_remove_dir(&dir);
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Tell the waiting parent that the mount is live, then send our output to a log file
/// (the parent stops reading once it has its answer). The log is opened first, without
/// following a symlink and checked to be ours (a planted one would redirect our output),
/// so that a refused log fails the mount instead of a half-announced one.
pub(crate) fn announce_ready(notify: bool, mountpoint: &Path) -> Result<()> {
    if !notify {
        eprintln!("serving; Ctrl-C to unmount");
        return Ok(());
    }
    let log = mounts::log_path(mountpoint)?;
    let file = mounts::private::append_own_file(&log, "the mount daemon's log")?;
    let mut out = std::io::stdout();
    writeln!(out, "ready")?;
    out.flush()?;
    use std::os::fd::AsRawFd;
    // SAFETY: dup2 onto our own stdout and stderr descriptors.
    unsafe {
        libc::dup2(file.as_raw_fd(), 1);
        libc::dup2(file.as_raw_fd(), 2);
    }
    Ok(())
}

fn block_stop_signals() -> Result<libc::sigset_t> {
    // SAFETY: plain libc signal-set manipulation on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            bail!("cannot block signals: {}", std::io::Error::last_os_error());
        }
        Ok(set)
    }
}

pub(crate) fn wait_signal(set: &libc::sigset_t, timeout: Duration) -> Option<i32> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: a valid signal set and timeout; no siginfo wanted.
    let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
    (sig > 0).then_some(sig)
}
