//! Superblock and device table parsing, and [`Filesystem::open`].

use crate::util::{add, corrupt, mul, read_vec, to_usize, Fixed};
use crate::{crc32c, Error, FileType, Filesystem, ReadAt};

/// Absolute byte offset of the superblock.
pub(crate) const SB_OFFSET: u64 = 1024;
/// Size of the fixed superblock structure.
const SB_SIZE: usize = 128;
/// `magic` value.
const MAGIC: u32 = 0xE0F5_E1E2;

/// compat: the superblock carries a CRC32C.
pub const COMPAT_SB_CHKSUM: u32 = 0x1;
/// compat: inode mtimes are meaningful.
pub const COMPAT_MTIME: u32 = 0x2;
/// compat: xattr bloom filter present.
pub const COMPAT_XATTR_FILTER: u32 = 0x4;
/// compat: shared xattrs live in the metabox inode.
pub const COMPAT_SHARED_EA_IN_METABOX: u32 = 0x8;
/// compat: the long xattr prefix table is stored plainly in the metadata (not in the packed inode).
pub const COMPAT_PLAIN_XATTR_PFX: u32 = 0x10;

/// incompat: LZ4 zero padding (compression only).
pub const INCOMPAT_LZ4_0PADDING: u32 = 0x1;
/// incompat: compression configs / big pclusters (compression only).
pub const INCOMPAT_COMPR_CFGS: u32 = 0x2;
/// incompat: chunk-based files (not required: tar-index images omit it).
pub const INCOMPAT_CHUNKED_FILE: u32 = 0x4;
/// incompat: a device table is present.
pub const INCOMPAT_DEVICE_TABLE: u32 = 0x8;
/// incompat: tail packing of compressed files.
pub const INCOMPAT_ZTAILPACKING: u32 = 0x10;
/// incompat: fragments / dedupe (compression only).
pub const INCOMPAT_FRAGMENTS: u32 = 0x20;
/// incompat: long xattr name prefixes.
pub const INCOMPAT_XATTR_PREFIXES: u32 = 0x40;
/// incompat: 48-bit block addresses.
pub const INCOMPAT_48BIT: u32 = 0x80;
/// incompat: metadata in a "metabox" inode (refused: not implemented).
pub const INCOMPAT_METABOX: u32 = 0x100;

/// Every incompat bit this reader knows about.
const INCOMPAT_KNOWN: u32 = INCOMPAT_LZ4_0PADDING
    | INCOMPAT_COMPR_CFGS
    | INCOMPAT_CHUNKED_FILE
    | INCOMPAT_DEVICE_TABLE
    | INCOMPAT_ZTAILPACKING
    | INCOMPAT_FRAGMENTS
    | INCOMPAT_XATTR_PREFIXES
    | INCOMPAT_48BIT
    | INCOMPAT_METABOX;

/// Refuse device tables larger than this (each slot is 128 bytes of metadata).
const MAX_DEVICES: u16 = 1024;

/// The parsed superblock (only the fields a reader needs, plus identification).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    /// +8 feature_compat.
    pub feature_compat: u32,
    /// +80 feature_incompat.
    pub feature_incompat: u32,
    /// +12 blkszbits (block size is `1 << blkszbits`).
    pub blkszbits: u8,
    /// +13 sb_extslots (the superblock is `128 + 16 * sb_extslots` bytes).
    pub sb_extslots: u8,
    /// +14 (u16) or, with 48BIT, +112 (u64): the root directory's nid.
    pub root_nid: u64,
    /// +16 inos: number of inodes.
    pub inos: u64,
    /// +24 epoch: base seconds for compact-inode mtimes.
    pub epoch: u64,
    /// +32 fixed_nsec: nanoseconds for compact-inode mtimes.
    pub fixed_nsec: u32,
    /// +36 blocks_lo (and +14 blocks_hi with 48BIT): primary device size in blocks.
    pub blocks: u64,
    /// +40 meta_blkaddr: start block of the inode area.
    pub meta_blkaddr: u32,
    /// +44 xattr_blkaddr: start block of the shared xattr area.
    pub xattr_blkaddr: u32,
    /// +48 uuid.
    pub uuid: [u8; 16],
    /// +64 volume_name (NUL padded).
    pub volume_name: [u8; 16],
    /// +86 extra_devices: number of device table slots.
    pub extra_devices: u16,
    /// +88 devt_slotoff: device table position in 128-byte units.
    pub devt_slotoff: u16,
    /// +90 dirblkbits (must be 0).
    pub dirblkbits: u8,
    /// +91 xattr_prefix_count: number of long xattr prefixes.
    pub xattr_prefix_count: u8,
    /// +92 xattr_prefix_start: prefix table position in 4-byte units.
    pub xattr_prefix_start: u32,
    /// +96 packed_nid: the packed inode (0 when absent).
    pub packed_nid: u64,
    /// +108 build_time (seconds).
    pub build_time: u32,
    /// `blocks << blkszbits`: bytes of the primary (metadata) device.
    pub primary_size: u64,
}

impl Superblock {
    /// Block size in bytes.
    pub fn block_size(&self) -> u64 {
        1u64 << (self.blkszbits & 63)
    }

    /// Whether 48-bit block addressing is enabled.
    pub fn is_48bit(&self) -> bool {
        self.feature_incompat & INCOMPAT_48BIT != 0
    }

    /// Parse the fixed 128-byte superblock. `raw` must be at least 128 bytes.
    fn parse(raw: &[u8]) -> Result<Superblock, Error> {
        if raw.len() < SB_SIZE {
            return Err(corrupt("superblock truncated"));
        }
        let f = Fixed(raw);
        // +0 magic
        if f.u32(0) != MAGIC {
            return Err(corrupt(format!("bad superblock magic {:#010x}", f.u32(0))));
        }
        // +12 blkszbits
        let blkszbits = f.u8(12);
        if !(9..=16).contains(&blkszbits) {
            return Err(Error::Unsupported(format!("block size 2^{blkszbits}")));
        }
        // +80 feature_incompat
        let feature_incompat = f.u32(80);
        let unknown = feature_incompat & !INCOMPAT_KNOWN;
        if unknown != 0 {
            return Err(Error::Unsupported(format!(
                "unknown incompat features {unknown:#x}"
            )));
        }
        if feature_incompat & INCOMPAT_METABOX != 0 {
            return Err(Error::Unsupported("metabox feature".into()));
        }
        let is48 = feature_incompat & INCOMPAT_48BIT != 0;
        // +14 root_nid (u16), or blocks_hi with 48BIT; +112 rootnid_8b with 48BIT.
        let (root_nid, blocks_hi) = if is48 {
            (f.u64(112), u64::from(f.u16(14)))
        } else {
            (u64::from(f.u16(14)), 0)
        };
        // +36 blocks_lo
        let blocks = (blocks_hi << 32) | u64::from(f.u32(36));
        let primary_size = blocks
            .checked_shl(u32::from(blkszbits))
            .filter(|v| v >> blkszbits == blocks)
            .ok_or_else(|| corrupt("superblock blocks overflow"))?;
        // +24 epoch, +32 fixed_nsec
        let epoch = f.u64(24);
        if i64::try_from(epoch).is_err() {
            return Err(corrupt(format!("superblock epoch {epoch} out of range")));
        }
        let fixed_nsec = f.u32(32);
        if fixed_nsec >= 1_000_000_000 {
            return Err(corrupt(format!("superblock fixed_nsec {fixed_nsec}")));
        }
        // +90 dirblkbits
        let dirblkbits = f.u8(90);
        if dirblkbits != 0 {
            return Err(Error::Unsupported(format!("dirblkbits {dirblkbits}")));
        }
        let mut uuid = [0u8; 16];
        let mut volume_name = [0u8; 16];
        if let (Some(u), Some(v)) = (raw.get(48..64), raw.get(64..80)) {
            uuid.copy_from_slice(u);
            volume_name.copy_from_slice(v);
        }
        Ok(Superblock {
            feature_compat: f.u32(8),
            feature_incompat,
            blkszbits,
            sb_extslots: f.u8(13),
            root_nid,
            inos: f.u64(16),
            epoch,
            fixed_nsec,
            blocks,
            meta_blkaddr: f.u32(40),
            xattr_blkaddr: f.u32(44),
            uuid,
            volume_name,
            // +84 available_compr_algs (ignored)
            extra_devices: f.u16(86),
            devt_slotoff: f.u16(88),
            dirblkbits,
            xattr_prefix_count: f.u8(91),
            xattr_prefix_start: f.u32(92),
            packed_nid: f.u64(96),
            // +104 xattr_filter_reserved, +105 ishare_xattr_prefix_id, +106 reserved (ignored)
            build_time: f.u32(108),
            primary_size,
        })
    }
}

/// One device table slot (128 bytes on disk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSlot {
    /// +0 tag (64 bytes, all zero in tar index mode).
    pub tag: [u8; 64],
    /// +64 blocks_lo, +72 blocks_hi (48-bit): size of the device in blocks.
    pub blocks: u64,
    /// +68 uniaddr_lo, +74 uniaddr_hi (48-bit): first block of this device in the flat address space.
    pub uniaddr: u64,
}

impl DeviceSlot {
    fn parse(raw: &[u8], is48: bool) -> DeviceSlot {
        let f = Fixed(raw);
        let mut tag = [0u8; 64];
        if let Some(t) = raw.get(..64) {
            tag.copy_from_slice(t);
        }
        let (bhi, uhi) = if is48 {
            (u64::from(f.u16(72)), u64::from(f.u16(74)))
        } else {
            (0, 0)
        };
        DeviceSlot {
            tag,
            blocks: (bhi << 32) | u64::from(f.u32(64)),
            uniaddr: (uhi << 32) | u64::from(f.u32(68)),
        }
    }
}

/// Checksummed length: the block if it is at most 1 KiB, else the block minus the first 1 KiB.
fn checksum_len(block_size: u64) -> u64 {
    if block_size <= 1024 {
        block_size
    } else {
        block_size.saturating_sub(1024)
    }
}

/// Recompute the superblock checksum of metadata image `meta` held in memory (CRC32C of the
/// checksummed area with the checksum field zeroed), for tests and fuzzers that edit bytes
/// it covers. The block size comes from `blkszbits`, clamped to 512 B..64 KiB. Returns
/// false, changing nothing, when `meta` is too short for the area.
pub fn reseal_superblock(meta: &mut [u8]) -> bool {
    let Some(&bits) = meta.get(SB_BYTES.saturating_add(12)) else {
        return false;
    };
    let len = checksum_len(1u64 << bits.clamp(9, 16));
    let Ok(len) = usize::try_from(len) else {
        return false;
    };
    let Some(area) = meta.get(SB_BYTES..SB_BYTES.saturating_add(len)) else {
        return false;
    };
    let mut area = area.to_vec();
    if let Some(field) = area.get_mut(4..8) {
        field.fill(0);
    }
    let crc = crc32c(0xFFFF_FFFF, &area);
    match meta.get_mut(SB_BYTES.saturating_add(4)..SB_BYTES.saturating_add(8)) {
        Some(field) => {
            field.copy_from_slice(&crc.to_le_bytes());
            true
        }
        None => false,
    }
}

/// [`SB_OFFSET`] as a buffer index.
const SB_BYTES: usize = 1024;

impl Filesystem {
    /// Parse the superblock (checking its CRC32C when the compat bit asks for it), the device table and
    /// the long xattr prefix table, and check that the root inode is a directory.
    pub fn open(dev: &mut dyn ReadAt) -> Result<Filesystem, Error> {
        let dev_size = dev.size();
        if dev_size < SB_OFFSET.saturating_add(128) {
            return Err(corrupt(format!(
                "device of {dev_size} bytes has no superblock"
            )));
        }
        let raw = read_vec(dev, SB_OFFSET, SB_SIZE)?;
        let sb = Superblock::parse(&raw)?;
        if sb.feature_compat & COMPAT_SB_CHKSUM != 0 {
            let len = checksum_len(sb.block_size());
            if add(SB_OFFSET, len, "superblock checksum")? > dev_size {
                return Err(corrupt("superblock checksum area past end of device"));
            }
            let mut area = read_vec(dev, SB_OFFSET, to_usize(len, "checksum length")?)?;
            // +4 checksum: stored value, then zeroed for the computation.
            let stored = Fixed(&area).u32(4);
            if let Some(field) = area.get_mut(4..8) {
                field.fill(0);
            }
            let computed = crc32c(0xFFFF_FFFF, &area);
            if computed != stored {
                return Err(corrupt(format!(
                    "superblock checksum {stored:#010x} != computed {computed:#010x}"
                )));
            }
        }
        if sb.primary_size < SB_OFFSET.saturating_add(128) {
            return Err(corrupt(format!(
                "superblock blocks {} too small",
                sb.blocks
            )));
        }
        if sb.primary_size > dev_size {
            return Err(corrupt(format!(
                "superblock says {} bytes of metadata but the device has {dev_size}",
                sb.primary_size
            )));
        }
        let devices = read_device_table(dev, &sb)?;
        let mut fs = Filesystem {
            sb,
            devices,
            prefixes: Ok(Vec::new()),
        };
        fs.prefixes = match fs.load_prefixes(dev) {
            Ok(p) => Ok(p),
            // An unsupported table location only disables long-prefix xattrs.
            Err(e @ Error::Unsupported(_)) => Err(e),
            Err(e) => return Err(e),
        };
        let root = fs.root_nid();
        let attr = fs.getattr(dev, root)?;
        if attr.file_type() != FileType::Directory {
            return Err(corrupt(format!("root nid {root} is not a directory")));
        }
        Ok(fs)
    }

    /// Highest block (exclusive) of the flat address space: the primary device and every device slot.
    pub(crate) fn flat_blocks(&self) -> u64 {
        self.devices
            .iter()
            .map(|d| d.uniaddr.saturating_add(d.blocks))
            .fold(self.sb.blocks, u64::max)
    }
}

fn read_device_table(dev: &mut dyn ReadAt, sb: &Superblock) -> Result<Vec<DeviceSlot>, Error> {
    if sb.feature_incompat & INCOMPAT_DEVICE_TABLE == 0 || sb.extra_devices == 0 {
        return Ok(Vec::new());
    }
    if sb.extra_devices > MAX_DEVICES {
        return Err(Error::Unsupported(format!(
            "{} extra devices",
            sb.extra_devices
        )));
    }
    let start = mul(u64::from(sb.devt_slotoff), 128, "devt_slotoff")?;
    let len = mul(u64::from(sb.extra_devices), 128, "extra_devices")?;
    if add(start, len, "device table")? > sb.primary_size {
        return Err(corrupt("device table past end of metadata"));
    }
    let raw = read_vec(dev, start, to_usize(len, "device table")?)?;
    let mut out = Vec::with_capacity(usize::from(sb.extra_devices));
    for (k, chunk) in raw.chunks_exact(128).enumerate() {
        let slot = DeviceSlot::parse(chunk, sb.is_48bit());
        let end = slot.uniaddr.checked_add(slot.blocks);
        let in_range = end
            .and_then(|e| e.checked_shl(u32::from(sb.blkszbits)))
            .is_some_and(|b| b >> sb.blkszbits == end.unwrap_or(0));
        if !in_range {
            return Err(corrupt(format!("device slot {k}: address overflow")));
        }
        if slot.uniaddr != 0 && slot.uniaddr < sb.blocks {
            return Err(corrupt(format!(
                "device slot {k}: uniaddr {} overlaps the metadata ({} blocks)",
                slot.uniaddr, sb.blocks
            )));
        }
        out.push(slot);
    }
    Ok(out)
}
