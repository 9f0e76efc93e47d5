//! A pure-Rust, I/O-free reader for EROFS images.
//!
//! The crate never touches files or sockets itself: every byte comes through the [`ReadAt`] trait, which
//! the caller implements over "the whole device". For the tar-index images made by
//! `mkfs.erofs --tar=i` the device is the metadata image followed by the uncompressed tar stream, and
//! chunk addresses of device #1 resolve into the tar through the device table's unified address
//! ("flat" multi-device mode).
//!
//! Design rules, because the crate runs inside a WASI component behind a FUSE bridge:
//!
//! * no panics on any input: image values are only combined with checked arithmetic and read with
//!   `get()`, never by indexing (enforced by the clippy lints below);
//! * every loop is bounded by a limit derived from checked on-disk values or a fixed constant;
//! * nothing big is cached: [`Filesystem`] keeps the superblock, the device table and the long xattr
//!   prefix table, and each call allocates only what it returns plus a block or two.
//!
//! Supported: superblock (with its CRC32C), compact and extended inodes, FLAT_PLAIN, FLAT_INLINE and
//! CHUNK_BASED data (4-byte block maps and 8-byte chunk indexes, holes, multi-device flat addressing,
//! 48-bit addresses), multi-block directories, inline and shared xattrs with standard and long name
//! prefixes, symlinks and special files. Compressed data and the metabox feature are refused with
//! [`Error::Unsupported`].

#![forbid(unsafe_code)]
#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::unreachable,
    clippy::todo,
    clippy::unimplemented,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

mod crc32c;
mod data;
mod dir;
mod inode;
mod superblock;
mod util;
mod verify;
mod walk;
mod xattr;

use std::fmt;

pub use crc32c::crc32c;
pub use data::{Extent, MAX_EXTENTS, MAX_READ};
pub use superblock::{
    reseal_superblock, DeviceSlot, Superblock, COMPAT_MTIME, COMPAT_PLAIN_XATTR_PFX,
    COMPAT_SB_CHKSUM, COMPAT_SHARED_EA_IN_METABOX, COMPAT_XATTR_FILTER, INCOMPAT_48BIT,
    INCOMPAT_CHUNKED_FILE, INCOMPAT_COMPR_CFGS, INCOMPAT_DEVICE_TABLE, INCOMPAT_FRAGMENTS,
    INCOMPAT_LZ4_0PADDING, INCOMPAT_METABOX, INCOMPAT_XATTR_PREFIXES, INCOMPAT_ZTAILPACKING,
};
pub use verify::{VerifyLimits, VerifyReport};
pub use walk::{RegularFile, WalkEnd};

/// Random access to the whole device (metadata image followed by the tar stream). Callers implement it.
pub trait ReadAt {
    /// Fill `buf` completely with the bytes at `offset`, or fail (a short read is an error).
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Error>;
    /// Total size of the device in bytes.
    fn size(&self) -> u64;
}

/// Everything that can go wrong. Image defects are [`Error::Corrupt`] and name the nid or field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The image is inconsistent (EUCLEAN).
    Corrupt(String),
    /// The device read failed (EIO).
    Io(String),
    /// A valid feature this reader does not implement (EOPNOTSUPP).
    Unsupported(String),
    /// No such directory entry (ENOENT).
    NotFound,
    /// Not a directory (ENOTDIR).
    NotDir,
    /// Is a directory (EISDIR).
    IsDir,
    /// readlink on something that is not a symlink (EINVAL).
    NotSymlink,
    /// No such extended attribute (ENODATA).
    NoAttr,
    /// An argument is out of range, e.g. reading a device node or a request that is too large (EINVAL).
    Range(String),
    /// A looked-up name is longer than 255 bytes (ENAMETOOLONG).
    NameTooLong,
}

/// errno values used by [`Error::errno`] (Linux numbering).
pub mod errno {
    /// I/O error.
    pub const EIO: i32 = 5;
    /// No such file or directory.
    pub const ENOENT: i32 = 2;
    /// Not a directory.
    pub const ENOTDIR: i32 = 20;
    /// Is a directory.
    pub const EISDIR: i32 = 21;
    /// Invalid argument.
    pub const EINVAL: i32 = 22;
    /// File name too long.
    pub const ENAMETOOLONG: i32 = 36;
    /// No data available (missing xattr).
    pub const ENODATA: i32 = 61;
    /// Operation not supported.
    pub const EOPNOTSUPP: i32 = 95;
    /// Structure needs cleaning (corrupt filesystem).
    pub const EUCLEAN: i32 = 117;
}

impl Error {
    /// The Linux errno a FUSE bridge should answer with.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Corrupt(_) => errno::EUCLEAN,
            Error::Io(_) => errno::EIO,
            Error::Unsupported(_) => errno::EOPNOTSUPP,
            Error::NotFound => errno::ENOENT,
            Error::NotDir => errno::ENOTDIR,
            Error::IsDir => errno::EISDIR,
            Error::NotSymlink => errno::EINVAL,
            Error::NoAttr => errno::ENODATA,
            Error::Range(_) => errno::EINVAL,
            Error::NameTooLong => errno::ENAMETOOLONG,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Corrupt(m) => write!(f, "corrupt image: {m}"),
            Error::Io(m) => write!(f, "I/O error: {m}"),
            Error::Unsupported(m) => write!(f, "unsupported: {m}"),
            Error::NotFound => f.write_str("no such entry"),
            Error::NotDir => f.write_str("not a directory"),
            Error::IsDir => f.write_str("is a directory"),
            Error::NotSymlink => f.write_str("not a symlink"),
            Error::NoAttr => f.write_str("no such xattr"),
            Error::Range(m) => write!(f, "out of range: {m}"),
            Error::NameTooLong => f.write_str("name too long"),
        }
    }
}

impl std::error::Error for Error {}

/// File type, as stored in directory entries (and derived from `st_mode` for inodes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileType {
    /// Type 0 in a dirent: not recorded.
    Unknown,
    /// Regular file.
    Regular,
    /// Directory.
    Directory,
    /// Character device.
    CharDevice,
    /// Block device.
    BlockDevice,
    /// Named pipe.
    Fifo,
    /// Unix socket.
    Socket,
    /// Symbolic link.
    Symlink,
}

impl FileType {
    /// Decode a dirent `file_type` byte (0..=7).
    pub fn from_dirent(v: u8) -> Option<FileType> {
        Some(match v {
            0 => FileType::Unknown,
            1 => FileType::Regular,
            2 => FileType::Directory,
            3 => FileType::CharDevice,
            4 => FileType::BlockDevice,
            5 => FileType::Fifo,
            6 => FileType::Socket,
            7 => FileType::Symlink,
            _ => return None,
        })
    }

    /// Decode the type bits of an `st_mode`.
    pub fn from_mode(mode: u32) -> Option<FileType> {
        Some(match mode & S_IFMT {
            S_IFREG => FileType::Regular,
            S_IFDIR => FileType::Directory,
            S_IFCHR => FileType::CharDevice,
            S_IFBLK => FileType::BlockDevice,
            S_IFIFO => FileType::Fifo,
            S_IFSOCK => FileType::Socket,
            S_IFLNK => FileType::Symlink,
            _ => return None,
        })
    }

    /// The `DT_*` value (`d_type`) of this type.
    pub fn dtype(self) -> u8 {
        match self {
            FileType::Unknown => 0,
            FileType::Fifo => 1,
            FileType::CharDevice => 2,
            FileType::Directory => 4,
            FileType::BlockDevice => 6,
            FileType::Regular => 8,
            FileType::Symlink => 10,
            FileType::Socket => 12,
        }
    }
}

/// Mask of the file type bits in `st_mode`.
pub const S_IFMT: u32 = 0o170000;
/// Socket.
pub const S_IFSOCK: u32 = 0o140000;
/// Symlink.
pub const S_IFLNK: u32 = 0o120000;
/// Regular file.
pub const S_IFREG: u32 = 0o100000;
/// Block device.
pub const S_IFBLK: u32 = 0o060000;
/// Directory.
pub const S_IFDIR: u32 = 0o040000;
/// Character device.
pub const S_IFCHR: u32 = 0o020000;
/// FIFO.
pub const S_IFIFO: u32 = 0o010000;

/// Inode attributes, as `stat` would show them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    /// The inode's nid (stable and unique: a good FUSE inode number).
    pub nid: u64,
    /// Full `st_mode` including the type bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// `i_size` in bytes.
    pub size: u64,
    /// Link count.
    pub nlink: u32,
    /// Modification time, seconds since the epoch.
    pub mtime_sec: i64,
    /// Modification time, nanoseconds (< 1e9).
    pub mtime_nsec: u32,
    /// Device number in the Linux "new" encoding (meaningful for char and block devices).
    pub rdev: u32,
    /// The on-disk `i_ino` field (32 bits; informational, prefer `nid`).
    pub ino: u32,
}

impl Attr {
    /// File type from the mode bits.
    pub fn file_type(&self) -> FileType {
        FileType::from_mode(self.mode).unwrap_or(FileType::Unknown)
    }

    /// Major number decoded from `rdev`.
    pub fn major(&self) -> u32 {
        (self.rdev >> 8) & 0xfff
    }

    /// Minor number decoded from `rdev`.
    pub fn minor(&self) -> u32 {
        (self.rdev & 0xff) | ((self.rdev >> 12) & 0xfff00)
    }

    /// Number of 512-byte units the file would occupy (for `st_blocks`).
    pub fn blocks_512(&self) -> u64 {
        self.size.div_ceil(512)
    }
}

/// One directory entry returned by [`Filesystem::readdir`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// Target inode.
    pub nid: u64,
    /// Type recorded in the dirent.
    pub file_type: FileType,
    /// Name bytes (no NUL, no '/').
    pub name: Vec<u8>,
    /// Pass this cookie to `readdir` to continue after this entry. Never 0.
    pub next_cookie: u64,
}

/// A parsed filesystem: superblock, device table and long xattr prefixes. Holds no device handle.
#[derive(Debug, Clone)]
pub struct Filesystem {
    sb: Superblock,
    devices: Vec<DeviceSlot>,
    /// Long xattr name prefixes, fully expanded (`Err` when the table could not be loaded; only
    /// xattrs that use a long prefix then fail).
    prefixes: Result<Vec<Vec<u8>>, Error>,
}

impl Filesystem {
    /// The nid of the root directory.
    pub fn root_nid(&self) -> u64 {
        self.sb.root_nid
    }

    /// The parsed superblock.
    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }

    /// The device table (slot `k - 1` serves chunk `device_id` k).
    pub fn devices(&self) -> &[DeviceSlot] {
        &self.devices
    }

    /// Block size in bytes.
    pub fn block_size(&self) -> u64 {
        self.sb.block_size()
    }

    /// Size of the primary device (the metadata image) in bytes, `blocks * block_size`.
    pub fn meta_size(&self) -> u64 {
        self.sb.primary_size
    }
}
