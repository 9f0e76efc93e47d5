//! `erofs-host umount`: unmount a layer or image mounted by `erofs-host mount` and stop
//! its server, acting only on what it can prove is the caller's own:
//!
//! - the registration is read from the caller's private state directory, and refused if
//!   it is planted (a symlink, another owner, paths outside the mount's own);
//! - the mount unmounted is the topmost one at MOUNTPOINT, and only if it is the one the
//!   server recorded (mount id, type and source in mountinfo), or, without a registration,
//!   an erofs-host FUSE mount made by the caller (its `user_id=`). Something stacked on
//!   top, or another user's mount, is refused with a message saying which;
//! - the server is signalled only if its pid is still the process that registered (boot,
//!   start time, program and owner: `mount_registry::process`).
//!
//! As root the unmount is umount2(2); otherwise `fusermount3 -u` (setuid), which is what
//! lets an unprivileged user take their FUSE mount down.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::defaults;
use crate::mount_registry::{
    self as mounts, absolute, detach_and_remove_dir, is_dead_fuse_mount, is_zombie, mountinfo,
    process_alive, read_registration, registration_path, remove_file_quietly, unmount_any,
    MountEntry, Registration,
};

#[derive(Debug, Args)]
pub struct UmountArgs {
    /// The mountpoint given to `erofs-host mount`
    pub mountpoint: PathBuf,

    /// Detach even if busy (the mount goes away when its last user leaves)
    #[arg(long)]
    pub lazy: bool,

    /// Seconds to wait for the server to exit
    #[arg(long, default_value_t = defaults::UMOUNT_TIMEOUT_SECS)]
    pub timeout: u64,
}

/// Unmount, then make sure the serving process has ended. Handles a dead FUSE mount
/// (server killed) and a stale registration.
pub fn run(args: UmountArgs) -> Result<()> {
    let mp = absolute(&args.mountpoint)?;
    let reg = read_registration(&mp)?;
    let mut did_something = false;

    if let Some(top) = mountinfo::topmost(&mp) {
        check_ours(&mp, &top, reg.as_ref())?;
        if is_dead_fuse_mount(&mp) {
            unmount_any(&mp, true)
                .with_context(|| format!("{}: detaching the dead FUSE mount", mp.display()))?;
            eprintln!(
                "{}: detached a FUSE mount whose server had died",
                mp.display()
            );
        } else {
            match unmount_any(&mp, args.lazy) {
                Ok(()) => {}
                Err(e)
                    if e.raw_os_error() == Some(libc::EBUSY)
                        || e.kind() == std::io::ErrorKind::ResourceBusy =>
                {
                    bail!(
                        "{}: busy (a process has a file open or its working directory there); close it, or use --lazy",
                        mp.display()
                    )
                }
                Err(e) => return Err(e).with_context(|| format!("{}: unmount", mp.display())),
            }
        }
        did_something = true;
    }

    if let Some(reg) = &reg {
        // Whether or not a server was left to stop, the registration was ours to clear.
        stop_server(&mp, reg, args.timeout)?;
        if let Some(backing) = &reg.backing {
            detach_and_remove_dir(backing);
        }
        super::image::clear_leftovers(&reg.layers, reg.layers_dir.as_deref());
        remove_file_quietly(&registration_path(&mp)?);
        did_something = true;
    }
    if !did_something {
        bail!("{}: not mounted by erofs-host", mp.display());
    }
    Ok(())
}

/// Refuse to unmount `top` (the visible mount at `mp`) unless it is ours.
fn check_ours(mp: &Path, top: &MountEntry, reg: Option<&Registration>) -> Result<()> {
    let me = mounts::private::euid();
    let describe = |e: &MountEntry| format!("{} from {}", e.fstype, e.source);
    if let Some(recorded) = reg.and_then(|r| r.mount.as_ref()) {
        if top.same_mount(recorded) {
            return Ok(());
        }
        if mountinfo::stack_at(mp)
            .iter()
            .any(|e| e.same_mount(recorded))
        {
            bail!(
                "{}: something else ({}) is mounted on top of erofs-host's mount; unmount it first (erofs-host unmounts only its own mount)",
                mp.display(),
                describe(top)
            );
        }
        bail!(
            "{}: the mount there ({}) is not the one erofs-host made (that was mount {}, {}); refusing to unmount it",
            mp.display(),
            describe(top),
            recorded.mount_id,
            describe(recorded)
        );
    }
    // No record of the mount (no registration, or an older one): only an erofs-host FUSE
    // mount made by the caller (or any, for root) is taken for ours.
    if let Some(owner) = top.fuse_owner() {
        if owner != me && me != 0 {
            bail!(
                "{}: mounted by another user (uid {owner}), not by you (uid {me}); only that user or root can unmount it",
                mp.display()
            );
        }
    }
    if !top.is_erofs_host_fuse() {
        bail!(
            "{}: not mounted by erofs-host ({} is mounted there, and your state directory has no registration for it)",
            mp.display(),
            describe(top)
        );
    }
    Ok(())
}

/// SIGTERM the registered server, if it is provably still that server, and wait for it
/// to exit.
fn stop_server(mp: &Path, reg: &Registration, timeout: u64) -> Result<()> {
    if !process_alive(reg.pid) {
        return Ok(());
    }
    let proof = match &reg.server {
        Some(identity) if identity.pid == reg.pid => identity.check_still_running(),
        _ => Err("the registration does not say which process the server was".into()),
    };
    if let Err(why) = proof {
        eprintln!("{}: not signalling pid {}: {why}", mp.display(), reg.pid);
        return Ok(());
    }
    // The server tears down what is left (the loop backend's private mount) and exits.
    // SAFETY: sending SIGTERM to the pid proven above to be the registered server.
    unsafe { libc::kill(reg.pid as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(timeout);
    while process_alive(reg.pid) && !is_zombie(reg.pid) {
        if Instant::now() > deadline {
            bail!(
                "{}: the server (pid {}) did not exit within {timeout} s",
                mp.display(),
                reg.pid
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
