//! `--backend loop`: the device as one read-only file, `device.img`, in a private FUSE
//! mount, so the kernel's EROFS can loop-mount it. The bytes still come from the sandbox;
//! only the metadata parsing moves to the kernel (for trusted images, and comparison).

use std::ffi::OsStr;
use std::time::UNIX_EPOCH;

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, Generation, INodeNo, OpenFlags, ReplyAttr,
    ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen, Request,
};

use crate::bridge::fuse::{open_read_only, read_only_basics, TTL};
use crate::sandbox::DevicePool;

/// The one file in the private mount, which the kernel loop-mounts.
pub(crate) const IMAGE_NAME: &str = "device.img";
const ROOT: INodeNo = INodeNo(1);
const IMAGE: INodeNo = INodeNo(2);

/// A FUSE filesystem with one file, [`IMAGE_NAME`]: the device bytes.
pub(crate) struct DeviceFile {
    pool: DevicePool,
    size: u64,
}

impl DeviceFile {
    pub(crate) fn new(pool: DevicePool) -> DeviceFile {
        let size = pool.size();
        DeviceFile { pool, size }
    }

    fn attr(&self, ino: INodeNo) -> FileAttr {
        let (kind, perm, size, nlink) = if ino == ROOT {
            (FileType::Directory, 0o500, 0, 2)
        } else {
            (FileType::RegularFile, 0o400, self.size, 1)
        };
        FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }
}

impl Filesystem for DeviceFile {
    read_only_basics!(posix_acl: false);

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent == ROOT && name == IMAGE_NAME {
            reply.entry(&TTL, &self.attr(IMAGE), Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match ino {
            ROOT | IMAGE => reply.attr(&TTL, &self.attr(ino)),
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if ino != IMAGE {
            return reply.error(Errno::EISDIR);
        }
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
        if ino != IMAGE {
            return reply.error(Errno::EISDIR);
        }
        match self.pool.pread(offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => {
                tracing::warn!("device read at {offset}: {e}");
                reply.error(Errno::from_i32(e.errno()))
            }
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino != ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let entries = [
            (ROOT, FileType::Directory, "."),
            (ROOT, FileType::Directory, ".."),
            (IMAGE, FileType::RegularFile, IMAGE_NAME),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(*ino, i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }
}
