//! Inode parsing (compact 32-byte and extended 64-byte forms) and [`Filesystem::getattr`].

use crate::util::{add, corrupt, mul, round_up, Fixed};
use crate::{Attr, Error, FileType, Filesystem, ReadAt};

/// Size of a compact inode.
const COMPACT_SIZE: u64 = 32;
/// Size of an extended inode.
const EXTENDED_SIZE: u64 = 64;
/// [`EXTENDED_SIZE`] as a buffer length.
const EXTENDED_BYTES: usize = 64;

/// `i_format` bit 0: extended inode.
const FMT_EXTENDED: u16 = 0x1;
/// `i_format` bits 1..3: data layout.
const FMT_LAYOUT_SHIFT: u16 = 1;
const FMT_LAYOUT_MASK: u16 = 0x7;
/// Data layouts (`i_format` bits 1..3).
const LAYOUT_FLAT_PLAIN: u16 = 0;
const LAYOUT_COMPRESSED_FULL: u16 = 1;
const LAYOUT_FLAT_INLINE: u16 = 2;
const LAYOUT_COMPRESSED_COMPACT: u16 = 3;
const LAYOUT_CHUNK_BASED: u16 = 4;
/// `i_format` bit 4: NLINK_1 for compact non-directories, "`.` omitted" for directories.
const FMT_BIT4: u16 = 0x10;
/// All `i_format` bits defined so far.
const FMT_ALL: u16 = 0x1f;

/// Chunk format (low 16 bits of `i_u` for CHUNK_BASED): chunkbits - blkszbits.
pub(crate) const CHUNK_BLKBITS_MASK: u16 = 0x1f;
/// Chunk format: 8-byte chunk indexes (else a 4-byte block map).
pub(crate) const CHUNK_INDEXES: u16 = 0x20;
/// Chunk format: 48-bit block addresses in the indexes.
pub(crate) const CHUNK_48BIT: u16 = 0x40;

/// Bytes of one chunk index entry (CHUNK_INDEXES set).
const CHUNK_INDEX_SIZE: u64 = 8;
/// Bytes of one block map entry (CHUNK_INDEXES clear).
const BLOCK_MAP_ENTRY_SIZE: u64 = 4;

/// Refuse files with more chunks than this.
pub(crate) const MAX_CHUNKS: u64 = 1 << 24;
/// Refuse directories larger than this.
pub(crate) const MAX_DIR_SIZE: u64 = 1 << 30;
/// Longest symlink target (PATH_MAX minus the NUL).
pub(crate) const MAX_SYMLINK: u64 = 4095;

/// How an inode's data is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// Contiguous blocks from `startblk`.
    FlatPlain { startblk: u64 },
    /// Whole blocks from `startblk`, the tail right after the inode and its xattrs.
    FlatInline { startblk: u64 },
    /// Chunk indexes (or a block map) after the inode and its xattrs.
    Chunked {
        format: u16,
        chunkbits: u32,
        count: u64,
        index_pos: u64,
    },
    /// Compressed layouts (1 and 3): refused on data access.
    Compressed,
}

/// A parsed, bounds-checked inode.
#[derive(Debug, Clone)]
pub(crate) struct Inode {
    pub(crate) nid: u64,
    /// Byte offset of the inline xattr area (right after the inode).
    pub(crate) xattr_pos: u64,
    /// Size of the inline xattr area in bytes.
    pub(crate) xattr_size: u64,
    /// Byte offset right after the inode and its xattrs (inline data / chunk indexes follow).
    pub(crate) payload_pos: u64,
    pub(crate) layout: Layout,
    pub(crate) ftype: FileType,
    /// Directory with bit 4 set: the `.` entry is not stored.
    pub(crate) dot_omitted: bool,
    pub(crate) attr: Attr,
}

impl Inode {
    pub(crate) fn size(&self) -> u64 {
        self.attr.size
    }
}

impl Filesystem {
    /// Byte offset of inode `nid` on the device, checked to leave room for at least a compact inode.
    pub fn inode_location(&self, nid: u64) -> Result<u64, Error> {
        let what = format!("nid {nid}");
        let base = mul(u64::from(self.sb.meta_blkaddr), self.block_size(), &what)?;
        let pos = add(base, mul(nid, COMPACT_SIZE, &what)?, &what)?;
        if add(pos, COMPACT_SIZE, &what)? > self.sb.primary_size {
            return Err(corrupt(format!("nid {nid}: inode past end of metadata")));
        }
        Ok(pos)
    }

    /// Attributes of inode `nid`.
    pub fn getattr(&self, dev: &mut dyn ReadAt, nid: u64) -> Result<Attr, Error> {
        Ok(self.load_inode(dev, nid)?.attr)
    }

    /// Read and validate inode `nid`.
    pub(crate) fn load_inode(&self, dev: &mut dyn ReadAt, nid: u64) -> Result<Inode, Error> {
        // Step 1: read up to an extended inode's worth of bytes (less at the end of the metadata).
        let pos = self.inode_location(nid)?;
        let raw = self.read_raw_inode(dev, nid, pos)?;
        let f = Fixed(&raw);
        // Step 2: i_format decides the inode's size; the size must fit in the metadata.
        let format = f.u16(0);
        if format & !FMT_ALL != 0 {
            return Err(Error::Unsupported(format!(
                "nid {nid}: unknown i_format bits {format:#x}"
            )));
        }
        let extended = format & FMT_EXTENDED != 0;
        let isize = if extended {
            EXTENDED_SIZE
        } else {
            COMPACT_SIZE
        };
        if add(pos, isize, "inode")? > self.sb.primary_size {
            return Err(corrupt(format!("nid {nid}: inode past end of metadata")));
        }
        // Step 3: the fields shared by both forms: +2 i_xattr_icount, +4 i_mode,
        // +6 i_nb (nlink for compact, or startblk_hi / blocks_hi), +16 i_u, +20 i_ino.
        let icount = f.u16(2);
        let mode = u32::from(f.u16(4));
        let ftype = FileType::from_mode(mode)
            .ok_or_else(|| corrupt(format!("nid {nid}: bogus i_mode {mode:#o}")))?;
        let nb = f.u16(6);
        let i_u = f.u32(16);
        let bit4 = format & FMT_BIT4 != 0;
        let is_dir = ftype == FileType::Directory;
        // Step 4: the fields whose place and width depend on the form.
        let fields = if extended {
            extended_fields(&f)
        } else {
            self.compact_fields(&f, nid, bit4 && !is_dir)?
        };
        if fields.mtime_nsec >= 1_000_000_000 {
            return Err(corrupt(format!(
                "nid {nid}: mtime nsec {}",
                fields.mtime_nsec
            )));
        }
        // Step 5: the inline xattr area follows the inode; inline data or chunk indexes follow it.
        let xattr_pos = add(pos, isize, "inode")?;
        let xattr_size = xattr_area_size(icount);
        let payload_pos = add(xattr_pos, xattr_size, "inode xattrs")?;
        if payload_pos > self.sb.primary_size {
            return Err(corrupt(format!(
                "nid {nid}: xattr area ({xattr_size} bytes) past end of metadata"
            )));
        }
        let size = fields.size;
        let rdev = match ftype {
            FileType::CharDevice | FileType::BlockDevice | FileType::Fifo | FileType::Socket => i_u,
            _ => 0,
        };
        let attr = Attr {
            nid,
            mode,
            uid: fields.uid,
            gid: fields.gid,
            size,
            nlink: fields.nlink,
            mtime_sec: fields.mtime_sec,
            mtime_nsec: fields.mtime_nsec,
            rdev,
            ino: f.u32(20),
        };
        // Step 6: the data layout; with 48-bit addressing i_nb holds the start block's high bits.
        let hi = if self.sb.is_48bit() && fields.nb_is_hi {
            u64::from(nb) << 32
        } else {
            0
        };
        let startblk = hi | u64::from(i_u);
        let layout = match (format >> FMT_LAYOUT_SHIFT) & FMT_LAYOUT_MASK {
            LAYOUT_FLAT_PLAIN => Layout::FlatPlain { startblk },
            LAYOUT_FLAT_INLINE => Layout::FlatInline { startblk },
            LAYOUT_COMPRESSED_FULL | LAYOUT_COMPRESSED_COMPACT => Layout::Compressed,
            LAYOUT_CHUNK_BASED if has_data(ftype) => {
                self.chunk_layout(nid, i_u, size, payload_pos)?
            }
            // Special files keep their rdev in i_u and have no data to map.
            LAYOUT_CHUNK_BASED => Layout::FlatPlain { startblk: 0 },
            other => {
                return Err(Error::Unsupported(format!(
                    "nid {nid}: data layout {other}"
                )))
            }
        };
        // Step 7: checks on the data placement that need no further reads.
        let inode = Inode {
            nid,
            xattr_pos,
            xattr_size,
            payload_pos,
            layout,
            ftype,
            dot_omitted: is_dir && bit4,
            attr,
        };
        self.check_data_bounds(&inode)?;
        Ok(inode)
    }

    /// The bytes of inode `nid` at `pos`: a full extended inode's worth, or what is left of the
    /// metadata (zero-filled after it; the caller checks the real size against the metadata).
    fn read_raw_inode(
        &self,
        dev: &mut dyn ReadAt,
        nid: u64,
        pos: u64,
    ) -> Result<[u8; EXTENDED_BYTES], Error> {
        let avail = self.sb.primary_size.saturating_sub(pos).min(EXTENDED_SIZE);
        let mut raw = [0u8; EXTENDED_BYTES];
        let len =
            usize::try_from(avail).map_err(|_| corrupt(format!("nid {nid}: inode truncated")))?;
        let head = raw
            .get_mut(..len)
            .ok_or_else(|| corrupt(format!("nid {nid}: inode truncated")))?;
        dev.read_exact_at(pos, head)?;
        Ok(raw)
    }

    /// Compact form: +8 i_size (u32), +12 i_mtime (seconds after the superblock epoch;
    /// nanoseconds are the superblock's fixed_nsec), +24 i_uid (u16), +26 i_gid (u16).
    /// `nlink1` (i_format bit 4 on a non-directory) means nlink is 1 and i_nb holds high bits.
    fn compact_fields(&self, f: &Fixed<'_>, nid: u64, nlink1: bool) -> Result<FormFields, Error> {
        let epoch = i64::try_from(self.sb.epoch)
            .map_err(|_| corrupt(format!("superblock epoch {}", self.sb.epoch)))?;
        let mtime_sec = epoch
            .checked_add(i64::from(f.u32(12)))
            .ok_or_else(|| corrupt(format!("nid {nid}: mtime overflow")))?;
        Ok(FormFields {
            size: u64::from(f.u32(8)),
            uid: u32::from(f.u16(24)),
            gid: u32::from(f.u16(26)),
            nlink: if nlink1 { 1 } else { u32::from(f.u16(6)) },
            mtime_sec,
            mtime_nsec: self.sb.fixed_nsec,
            nb_is_hi: nlink1,
        })
    }

    fn chunk_layout(
        &self,
        nid: u64,
        i_u: u32,
        size: u64,
        payload_pos: u64,
    ) -> Result<Layout, Error> {
        // The chunk format is the low 16 bits of i_u.
        let [lo, hi, ..] = i_u.to_le_bytes();
        let format = u16::from_le_bytes([lo, hi]);
        if format & !(CHUNK_BLKBITS_MASK | CHUNK_INDEXES | CHUNK_48BIT) != 0 {
            return Err(corrupt(format!("nid {nid}: chunk format {format:#x}")));
        }
        if format & CHUNK_48BIT != 0 && format & CHUNK_INDEXES == 0 {
            return Err(Error::Unsupported(format!(
                "nid {nid}: 48-bit block map without chunk indexes"
            )));
        }
        // At most 16 + 31 = 47: every shift below is in range.
        let chunkbits =
            u32::from(self.sb.blkszbits).saturating_add(u32::from(format & CHUNK_BLKBITS_MASK));
        let chunk_size = 1u64.checked_shl(chunkbits).unwrap_or(u64::MAX);
        let count = size.div_ceil(chunk_size);
        if count > MAX_CHUNKS {
            return Err(corrupt(format!(
                "nid {nid}: {count} chunks (size {size}, chunkbits {chunkbits})"
            )));
        }
        let unit = chunk_unit(format);
        let index_pos = round_up(payload_pos, unit, "chunk indexes")?;
        let end = add(
            index_pos,
            mul(count, unit, "chunk indexes")?,
            "chunk indexes",
        )?;
        if end > self.sb.primary_size {
            return Err(corrupt(format!(
                "nid {nid}: chunk indexes past end of metadata"
            )));
        }
        Ok(Layout::Chunked {
            format,
            chunkbits,
            count,
            index_pos,
        })
    }

    /// Cheap per-layout checks that need no further reads: sizes sane for the file type, flat block
    /// ranges inside the device, the inline tail inside the metadata and inside one block.
    fn check_data_bounds(&self, ino: &Inode) -> Result<(), Error> {
        let nid = ino.nid;
        let size = ino.size();
        match ino.ftype {
            FileType::Directory if size > MAX_DIR_SIZE => {
                return Err(corrupt(format!("nid {nid}: directory size {size}")));
            }
            FileType::Symlink if size == 0 || size > MAX_SYMLINK => {
                return Err(corrupt(format!("nid {nid}: symlink size {size}")));
            }
            FileType::Regular if i64::try_from(size).is_err() => {
                return Err(corrupt(format!("nid {nid}: file size {size}")));
            }
            _ if !has_data(ino.ftype) => return Ok(()),
            _ => {}
        }
        let bsz = self.block_size();
        let (startblk, full_blocks) = match ino.layout {
            Layout::FlatPlain { startblk } => (startblk, size.div_ceil(bsz)),
            Layout::FlatInline { startblk } => {
                let tail = size.checked_rem(bsz).unwrap_or(0);
                if tail != 0 {
                    let in_block = ino.payload_pos.checked_rem(bsz).unwrap_or(0);
                    if in_block.saturating_add(tail) > bsz {
                        return Err(corrupt(format!(
                            "nid {nid}: inline tail of {tail} bytes crosses a block boundary"
                        )));
                    }
                    if add(ino.payload_pos, tail, "inline data")? > self.sb.primary_size {
                        return Err(corrupt(format!(
                            "nid {nid}: inline data past end of metadata"
                        )));
                    }
                }
                (startblk, size.checked_div(bsz).unwrap_or(0))
            }
            Layout::Chunked { .. } | Layout::Compressed => return Ok(()),
        };
        if full_blocks > 0 {
            let end = add(startblk, full_blocks, &format!("nid {nid} data"))?;
            if let Some(what) = self.metadata_kind(ino) {
                // Metadata lives in the metadata image: for a tar index, blocks past it
                // are the tar, whose bytes come from the layer, not from the index.
                if end > self.sb.blocks {
                    return Err(outside_metadata(nid, what, startblk, end, self.sb.blocks));
                }
            } else if end > self.flat_blocks() {
                return Err(corrupt(format!(
                    "nid {nid}: data blocks {startblk}..{end} past end of device"
                )));
            }
        }
        Ok(())
    }

    /// What `ino`'s data is when it is metadata, which must lie inside the metadata image
    /// (the primary device): a directory's dirents, a symlink's target, the packed inode
    /// (the long xattr prefixes). None for a regular file, whose data may sit on another
    /// device, such as the tar of a tar index.
    pub(crate) fn metadata_kind(&self, ino: &Inode) -> Option<&'static str> {
        match ino.ftype {
            FileType::Directory => Some("directory"),
            FileType::Symlink => Some("symlink"),
            FileType::Regular if self.sb.packed_nid != 0 && ino.nid == self.sb.packed_nid => {
                Some("packed inode")
            }
            _ => None,
        }
    }

    /// Load `nid` and require a directory.
    pub(crate) fn expect_dir(&self, dev: &mut dyn ReadAt, nid: u64) -> Result<Inode, Error> {
        let ino = self.load_inode(dev, nid)?;
        if ino.ftype != FileType::Directory {
            return Err(Error::NotDir);
        }
        Ok(ino)
    }
}

/// Bytes of one entry in a chunk-based inode's table: a chunk index or a block map entry.
pub(crate) fn chunk_unit(format: u16) -> u64 {
    if format & CHUNK_INDEXES != 0 {
        CHUNK_INDEX_SIZE
    } else {
        BLOCK_MAP_ENTRY_SIZE
    }
}

/// The error for metadata (a directory's or symlink's data) placed outside the metadata
/// image: only regular-file data may be on another device or in a tar index's tar.
pub(crate) fn outside_metadata(nid: u64, what: &str, start: u64, end: u64, blocks: u64) -> Error {
    corrupt(format!(
        "nid {nid}: {what} data at blocks {start}..{end} lies outside the metadata ({blocks} blocks); only regular-file data may be in the tar"
    ))
}

/// Whether inodes of this type have a data payload (special files do not).
pub(crate) fn has_data(ftype: FileType) -> bool {
    matches!(
        ftype,
        FileType::Regular | FileType::Directory | FileType::Symlink
    )
}

/// The fields whose position and width differ between the compact and extended forms.
struct FormFields {
    size: u64,
    uid: u32,
    gid: u32,
    nlink: u32,
    mtime_sec: i64,
    mtime_nsec: u32,
    /// i_nb carries the high bits of the start block (48-bit images), not nlink.
    nb_is_hi: bool,
}

/// Extended form: +8 i_size (u64), +24 i_uid, +28 i_gid, +32 i_mtime (u64 seconds, read as the
/// kernel's signed time64), +40 i_mtime_nsec, +44 i_nlink; +48..64 reserved. i_nb is high bits.
fn extended_fields(f: &Fixed<'_>) -> FormFields {
    FormFields {
        size: f.u64(8),
        uid: f.u32(24),
        gid: f.u32(28),
        nlink: f.u32(44),
        mtime_sec: i64::from_le_bytes(f.u64(32).to_le_bytes()),
        mtime_nsec: f.u32(40),
        nb_is_hi: true,
    }
}

/// Bytes of the inline xattr area for `i_xattr_icount`: none for 0, else a 12-byte header
/// and 4-byte slots, `12 + 4 * (icount - 1)`.
fn xattr_area_size(icount: u16) -> u64 {
    if icount == 0 {
        0
    } else {
        u64::from(icount).saturating_mul(4).saturating_add(8)
    }
}
