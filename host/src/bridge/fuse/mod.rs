//! FUSE, shared by both FUSE-served backends: the EROFS tree parsed in the sandbox
//! ([`filesystem`], `--backend fuse`) and the loop backend's device file
//! (`bridge::loop_backing`). Here: the session setup, the kernel tuning, and the errno of
//! a failed sandbox call.

pub(crate) mod access_watch;
pub(crate) mod filesystem;
mod stats_writer;

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use fuser::{BackgroundSession, Errno, MountOption, SessionACL};

use crate::sandbox::CallError;

pub(crate) use filesystem::ErofsFuse;

/// How long the kernel may cache attributes and names. The image is immutable for the
/// life of the mount, so an hour is safe, and it spares the sandbox most repeat lookups.
pub(crate) const TTL: Duration = Duration::from_secs(3600);

/// The largest request asked of the kernel, for reads and readahead.
const WANT_REQUEST: u32 = 1 << 20;

/// Ask for large requests: 1 MiB reads and readahead (or the most the kernel allows).
/// Fewer, larger requests cut the per-request cost of FUSE and of the sandbox call.
///
/// `posix_acl` (the EROFS tree): FUSE_POSIX_ACL, so that the kernel enforces the image's
/// POSIX ACLs (it reads `system.posix_acl_access` through getxattr and evaluates it, with
/// `default_permissions`) as the kernel's EROFS does; without it, FUSE ignores ACLs and
/// access is looser than under the kernel's EROFS. A kernel without it is warned about.
pub(crate) fn tune_kernel(config: &mut fuser::KernelConfig, posix_acl: bool) {
    if posix_acl {
        if let Err(missing) = config.add_capabilities(fuser::InitFlags::FUSE_POSIX_ACL) {
            tracing::warn!(
                "the kernel's FUSE does not offer {missing:?}: POSIX ACLs in the image are not enforced"
            );
        }
    }
    // Each setter refuses a value above the kernel's limit and says what that limit is;
    // the limit is then the best we can have, and setting it cannot fail.
    if let Err(most) = config.set_max_readahead(WANT_REQUEST) {
        let _ = config.set_max_readahead(most);
    }
    // max_pages (the largest read) follows the larger of max_write and max_readahead.
    if let Err(most) = config.set_max_write(WANT_REQUEST) {
        let _ = config.set_max_write(most);
    }
}

/// The errno for a failed call (from the one table, [`CallError::errno`]); failures of
/// the image or the sandbox are logged, ordinary answers (ENOENT, ENODATA...) are not.
pub(crate) fn errno(e: &CallError) -> Errno {
    if e.is_failure() {
        tracing::warn!("{e}");
    }
    Errno::from_i32(e.errno())
}

/// Answer an `open`: read-only access only, and the kernel may keep its page cache
/// across opens (the data never changes).
pub(crate) fn open_read_only(flags: fuser::OpenFlags, reply: fuser::ReplyOpen) {
    if flags.acc_mode() != fuser::OpenAccMode::O_RDONLY {
        return reply.error(Errno::EROFS);
    }
    reply.opened(fuser::FileHandle(0), fuser::FopenFlags::FOPEN_KEEP_CACHE);
}

/// The parts of a read-only [`fuser::Filesystem`] that both FUSE bridges answer the same
/// way: `init` tunes the request sizes (and asks for POSIX ACL enforcement where the
/// files are the image's), and `flush` has nothing to write back.
macro_rules! read_only_basics {
    (posix_acl: $acl:expr) => {
        fn init(
            &mut self,
            _req: &fuser::Request,
            config: &mut fuser::KernelConfig,
        ) -> std::io::Result<()> {
            $crate::bridge::fuse::tune_kernel(config, $acl);
            Ok(())
        }

        /// Nothing is ever written, so there is nothing to flush.
        fn flush(
            &self,
            _req: &fuser::Request,
            _ino: fuser::INodeNo,
            _fh: fuser::FileHandle,
            _owner: fuser::LockOwner,
            reply: fuser::ReplyEmpty,
        ) {
            reply.ok();
        }
    };
}
pub(crate) use read_only_basics;

/// Mount `fs` read-only at `at` and serve it from `threads` background threads.
pub(crate) fn session<FS: fuser::Filesystem + 'static>(
    fs: FS,
    at: &Path,
    name: &str,
    threads: usize,
) -> Result<BackgroundSession> {
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::FSName(format!("erofs-wasm:{name}")),
        MountOption::Subtype("erofs-wasm".into()),
        // The kernel checks permissions against the modes we report.
        MountOption::DefaultPermissions,
        // Untrusted images: their setuid bits and device nodes are shown, not honoured.
        MountOption::NoSuid,
        MountOption::NoDev,
    ];
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        // Root mounts layers for others (containers, services): allow_other.
        config.acl = SessionACL::All;
    }
    // One FUSE thread per instance. (Measured: two threads on one instance are slower,
    // 0.32-0.51 s against 0.21 s for a tar of `large`: interleaved readahead requests
    // make the cursors restart.)
    config.n_threads = Some(threads.max(1));
    let session = fuser::Session::new(fs, at, &config)
        .with_context(|| format!("{}: FUSE mount failed", at.display()))?;
    session
        .spawn()
        .with_context(|| format!("{}: starting the FUSE session", at.display()))
}
