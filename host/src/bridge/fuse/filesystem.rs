//! The FUSE bridge: kernel requests answered from the EROFS image parsed inside the
//! sandbox (`--backend fuse`). Read-only; every answer comes from the component.
//!
//! Inode numbers: FUSE needs the root at node 1, and fuser reports the node id as
//! `st_ino`. We use the EROFS nid itself (what the kernel's EROFS reports), swapping
//! the root's nid with 1 (nid 1 is never the root, and is rarely an inode at all).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, OpenFlags,
    ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};

use std::path::PathBuf;
use std::sync::Arc;

use super::access_watch::AccessWatch;
use super::stats_writer::StatsWriter;
use super::{errno, open_read_only, read_only_basics, TTL};
use crate::net::blob_counters::LayerTraffic;
use crate::sandbox::runtime::{Attributes, FileKind};
use crate::sandbox::{CallError, FilesystemPool};

/// Directory entries asked of the component per readdir call (a FUSE reply buffer holds
/// a few hundred short names; asking for more only wastes the surplus).
const READDIR_BATCH: u32 = 256;

pub(crate) struct ErofsFuse {
    pool: Arc<FilesystemPool>,
    /// Publishes the counters for `erofs-host stats` (see `with_stats_file`); dropped
    /// with the session, which writes them one last time.
    stats: Option<StatsWriter>,
    root_nid: u64,
    device_size: u64,
    /// Show `trusted.overlay.*` as `user.overlay.*` (see `with_user_overlay_xattrs`).
    user_overlay_xattrs: bool,
    /// Whole image: the mount's watch on reads, and this layer's index in it.
    watch: Option<(Arc<AccessWatch>, u32)>,
}

const TRUSTED_OVERLAY: &[u8] = b"trusted.overlay.";
const USER_OVERLAY: &[u8] = b"user.overlay.";

impl ErofsFuse {
    pub(crate) fn new(pool: FilesystemPool) -> Result<ErofsFuse, CallError> {
        let (root_nid, device_size) = {
            let mut fs = pool.get();
            (fs.root()?, fs.size())
        };
        Ok(ErofsFuse {
            pool: Arc::new(pool),
            stats: None,
            root_nid,
            device_size,
            user_overlay_xattrs: false,
            watch: None,
        })
    }

    /// For a layer under an unprivileged overlay (fuse-overlayfs, or overlayfs with
    /// `userxattr`): the kernel lets only CAP_SYS_ADMIN read `trusted.*`, so the layer's
    /// `trusted.overlay.*` (opaque directories) are shown as `user.overlay.*`, the names
    /// those read instead.
    pub fn with_user_overlay_xattrs(mut self) -> ErofsFuse {
        self.user_overlay_xattrs = true;
        self
    }

    /// Publish the counters at `path` for `erofs-host stats`, labelled `label`, with
    /// the layer's `traffic` (whole image).
    pub fn with_stats_file(
        mut self,
        path: PathBuf,
        label: String,
        traffic: Option<LayerTraffic>,
    ) -> std::io::Result<ErofsFuse> {
        self.stats = Some(StatsWriter::start(self.pool.clone(), path, label, traffic)?);
        Ok(self)
    }

    /// Tell `watch` about reads (and, for its access log, names) of layer `layer`.
    pub fn with_access_watch(mut self, watch: Arc<AccessWatch>, layer: u32) -> ErofsFuse {
        self.watch = Some((watch, layer));
        self
    }

    /// The stored name a requested xattr name stands for.
    fn stored_xattr_name(&self, name: &[u8]) -> Vec<u8> {
        match name.strip_prefix(USER_OVERLAY) {
            Some(rest) if self.user_overlay_xattrs => [TRUSTED_OVERLAY, rest].concat(),
            _ => name.to_vec(),
        }
    }

    /// The name a stored xattr is shown under.
    fn shown_xattr_name(&self, name: Vec<u8>) -> Vec<u8> {
        match name.strip_prefix(TRUSTED_OVERLAY) {
            Some(rest) if self.user_overlay_xattrs => [USER_OVERLAY, rest].concat(),
            _ => name,
        }
    }

    fn to_nid(&self, node: INodeNo) -> u64 {
        match node.0 {
            1 => self.root_nid,
            n if n == self.root_nid => 1,
            n => n,
        }
    }

    fn to_node(&self, nid: u64) -> INodeNo {
        INodeNo(match nid {
            n if n == self.root_nid => 1,
            1 => self.root_nid,
            n => n,
        })
    }

    fn file_attr(&self, a: &Attributes) -> FileAttr {
        let mtime = system_time(a.mtime_seconds, a.mtime_nanoseconds);
        FileAttr {
            ino: self.to_node(a.ino),
            size: a.size,
            blocks: a.size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind: kind(a.kind),
            perm: (a.mode & 0o7777) as u16,
            nlink: a.nlink,
            uid: a.uid,
            gid: a.gid,
            rdev: encode_dev(a.rdev_major, a.rdev_minor),
            blksize: 4096,
            flags: 0,
        }
    }
}

/// The kernel's "new" device encoding, which FUSE's 32-bit rdev carries.
fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

fn kind(k: FileKind) -> FileType {
    match k {
        FileKind::Regular => FileType::RegularFile,
        FileKind::Directory => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
    }
}

impl Filesystem for ErofsFuse {
    read_only_basics!(posix_acl: true);

    /// Tools probe with ioctls (e.g. `cp -a` asks for inode flags): EROFS has none to
    /// offer, and "not a typewriter" is the answer they expect for that.
    #[allow(clippy::too_many_arguments)]
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let parent = self.to_nid(parent);
        match self.pool.get().lookup(parent, name.as_bytes()) {
            Ok(a) => {
                if let Some((watch, layer)) = &self.watch {
                    watch.named(*layer, parent, self.root_nid, name.as_bytes(), a.ino);
                }
                reply.entry(&TTL, &self.file_attr(&a), Generation(0))
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.pool.get().getattr(self.to_nid(ino)) {
            Ok(a) => reply.attr(&TTL, &self.file_attr(&a)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.pool.get().readlink(self.to_nid(ino)) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        open_read_only(flags, reply);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let nid = self.to_nid(ino);
        if let Some((watch, layer)) = &self.watch {
            watch.read(*layer, nid, offset, size);
        }
        match self.pool.get().read(nid, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(
            FileHandle(0),
            FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR,
        );
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let nid = self.to_nid(ino);
        let mut cookie = offset;
        loop {
            let entries = match self.pool.get().readdir(nid, cookie, READDIR_BATCH) {
                Ok(entries) => entries,
                Err(e) => return reply.error(errno(&e)),
            };
            if entries.is_empty() {
                break;
            }
            for e in entries {
                // The offset of an entry is the cookie that resumes after it.
                if reply.add(
                    self.to_node(e.ino),
                    e.next_cookie,
                    kind(e.kind),
                    OsStr::from_bytes(&e.name),
                ) {
                    return reply.ok();
                }
                cookie = e.next_cookie;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(self.device_size / 512, 0, 0, 0, 0, 512, 255, 512);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let stored = self.stored_xattr_name(name.as_bytes());
        match self.pool.get().getxattr(self.to_nid(ino), &stored) {
            Ok(value) => xattr_reply(reply, &value, size),
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// As the kernel's EROFS lists them: `trusted.*` only to a privileged caller (the
    /// kernel's getxattr already refuses those names to others, with ENODATA).
    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.pool.get().listxattr(self.to_nid(ino)) {
            Ok(names) => {
                let privileged = caller_is_privileged(req);
                let mut list = Vec::new();
                for n in names {
                    let shown = self.shown_xattr_name(n);
                    if !privileged && shown.starts_with(TRUSTED) {
                        continue;
                    }
                    list.extend_from_slice(&shown);
                    list.push(0);
                }
                xattr_reply(reply, &list, size)
            }
            Err(e) => reply.error(errno(&e)),
        }
    }
}

const TRUSTED: &[u8] = b"trusted.";

/// Whether the caller may see `trusted.*`: the kernel shows them to CAP_SYS_ADMIN in the
/// initial user namespace. FUSE gives us the caller's uid as seen from the mount's
/// namespace, not its capabilities; uid 0 there is root (a user namespace's "root" shows
/// as the user it maps to, so it is not privileged, as for the kernel). A non-root uid
/// with CAP_SYS_ADMIN is the one case shown less than the kernel would.
fn caller_is_privileged(req: &Request) -> bool {
    req.uid() == 0
}

/// xattr replies: size 0 asks for the length; a value larger than the buffer is ERANGE.
fn xattr_reply(reply: ReplyXattr, value: &[u8], size: u32) {
    match u32::try_from(value.len()) {
        Ok(len) if size == 0 => reply.size(len),
        Ok(len) if len <= size => reply.data(value),
        _ => reply.error(Errno::ERANGE),
    }
}

/// The largest nanosecond count of a valid timestamp.
const MAX_NANOS: u32 = 999_999_999;

/// An EROFS time (seconds since the epoch, either sign, and nanoseconds) as a
/// `SystemTime`, for any values the component reports: nanoseconds of 10^9 or more (not
/// a valid time; EROFS stores a plain u32) are clamped to the last nanosecond of that
/// second instead of carrying into the seconds, which at `i64::MAX` would overflow.
/// With that, every `i64` second is representable on Linux (`time_t` is 64-bit); the
/// epoch is only a fallback for a platform with a narrower range.
fn system_time(seconds: i64, nanoseconds: u32) -> std::time::SystemTime {
    let nanos = Duration::from_nanos(u64::from(nanoseconds.min(MAX_NANOS)));
    let whole = Duration::from_secs(seconds.unsigned_abs());
    let second = if seconds >= 0 {
        UNIX_EPOCH.checked_add(whole)
    } else {
        UNIX_EPOCH.checked_sub(whole)
    };
    second
        .and_then(|t| t.checked_add(nanos))
        .unwrap_or(UNIX_EPOCH)
}

#[cfg(test)]
mod time_tests {
    use super::*;

    #[test]
    fn extreme_times_do_not_panic() {
        for s in [i64::MAX, i64::MAX - 1, i64::MIN, i64::MIN + 1, -1, 0, 1] {
            for n in [0, 1, MAX_NANOS, 1_000_000_000, u32::MAX] {
                let _ = system_time(s, n);
            }
        }
        assert_eq!(
            system_time(1, 2),
            UNIX_EPOCH + Duration::from_secs(1) + Duration::from_nanos(2)
        );
        assert_eq!(
            system_time(-1, 500),
            UNIX_EPOCH - Duration::from_secs(1) + Duration::from_nanos(500)
        );
        // Clamped, not carried.
        assert_eq!(system_time(5, u32::MAX), system_time(5, MAX_NANOS));
    }
}
