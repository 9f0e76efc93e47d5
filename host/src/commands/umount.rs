//! `erofs-host umount`: unmount a layer mounted by `erofs-host mount` and stop its server.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::defaults;
use crate::mount_registry::{
    absolute, detach_and_remove_dir, is_dead_fuse_mount, mounted_at, process_alive,
    read_registration, registration_path, remove_file_quietly, unmount,
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
            detach_and_remove_dir(backing);
        }
        super::image::clear_leftovers(&reg.layers, reg.layers_dir.as_deref());
        remove_file_quietly(&registration_path(&mp)?);
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
