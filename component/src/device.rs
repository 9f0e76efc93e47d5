//! The tar-index device: `meta ‖ uncompressed tar` (spec §1).
//!
//! Before serving, the metadata's superblock must describe exactly this layout: EROFS
//! magic, 512-byte blocks, a device table whose first slot's unified address is the
//! metadata's own block count, and a metadata file of exactly that many blocks. The tar
//! must be at least as long as the slot's block count says. The device size is then the
//! metadata size plus the exact tar size: never the reference's 8 EiB probe constant.

use crate::error::{Error, Result};
use crate::gzip::MAGIC as GZIP_MAGIC;
use crate::gzran::{GzRan, Options};
use crate::source::SizedSource;

const SUPERBLOCK_OFFSET: u64 = 1024;
const EROFS_MAGIC: u32 = 0xE0F5_E1E2;
/// Tar index images always use 512-byte blocks (spec §2.1: `--tar=i` forces it).
const TAR_INDEX_BLKSZBITS: u8 = 9;
const BLOCK: u64 = 512;
const INCOMPAT_DEVICE_TABLE: u32 = 0x8;
const INCOMPAT_48BIT: u32 = 0x80;
const DEVICE_SLOT_SIZE: u64 = 128;

/// What the superblock says about the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Size of the metadata image in bytes (`blocks × 512`).
    pub meta_size: u64,
    /// Tar blocks the metadata addresses (device slot 0's `blocks`).
    pub tar_blocks: u64,
}

/// Check the superblock and the first device slot. `meta` is the metadata file.
pub fn check_layout(meta: &SizedSource) -> Result<Layout> {
    let name = "meta";
    if !meta.size.is_multiple_of(BLOCK) {
        return Err(Error::bad(format!(
            "{name}: size {} is not a multiple of the 512-byte block size",
            meta.size
        )));
    }
    if meta.size < SUPERBLOCK_OFFSET + 128 {
        return Err(Error::bad(format!(
            "{name}: {} bytes is too small to hold a superblock",
            meta.size
        )));
    }
    let sb = meta.read_exact(SUPERBLOCK_OFFSET, 128)?;
    let u16_at = |o: usize| u16::from_le_bytes([sb[o], sb[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes([sb[o], sb[o + 1], sb[o + 2], sb[o + 3]]);

    let magic = u32_at(0);
    if magic != EROFS_MAGIC {
        return Err(Error::bad(format!(
            "{name}: superblock field `magic` is {magic:#010x}, not EROFS's {EROFS_MAGIC:#010x}"
        )));
    }
    let blkszbits = sb[12];
    if blkszbits != TAR_INDEX_BLKSZBITS {
        return Err(Error::bad(format!(
            "{name}: superblock field `blkszbits` is {blkszbits}; a tar index uses 9 (512-byte blocks)"
        )));
    }
    let incompat = u32_at(80);
    let wide = incompat & INCOMPAT_48BIT != 0;
    if incompat & INCOMPAT_DEVICE_TABLE == 0 || u16_at(86) == 0 {
        return Err(Error::bad(format!(
            "{name}: superblock has no device table (feature_incompat {incompat:#x}, extra_devices {}): not a tar index",
            u16_at(86)
        )));
    }
    // With 48-bit addressing, the 16-bit root nid slot holds the high bits of `blocks`.
    let blocks = u32_at(36) as u64 | if wide { (u16_at(14) as u64) << 32 } else { 0 };

    let slot_at = u16_at(88) as u64 * DEVICE_SLOT_SIZE;
    if slot_at < SUPERBLOCK_OFFSET + 128 || slot_at + DEVICE_SLOT_SIZE > meta.size {
        return Err(Error::bad(format!(
            "{name}: superblock field `devt_slotoff` puts the device table at byte {slot_at}, outside the image"
        )));
    }
    let slot = meta.read_exact(slot_at, DEVICE_SLOT_SIZE as usize)?;
    let s16 = |o: usize| u16::from_le_bytes([slot[o], slot[o + 1]]) as u64;
    let s32 =
        |o: usize| u32::from_le_bytes([slot[o], slot[o + 1], slot[o + 2], slot[o + 3]]) as u64;
    let tar_blocks = s32(64) | if wide { s16(72) << 32 } else { 0 };
    let uniaddr = s32(68) | if wide { s16(74) << 32 } else { 0 };

    if uniaddr != blocks {
        return Err(Error::bad(format!(
            "{name}: device slot 0 field `uniaddr` is {uniaddr}, but the superblock's `blocks` is {blocks}; the tar must start right after the metadata"
        )));
    }
    if blocks.checked_mul(BLOCK) != Some(meta.size) {
        return Err(Error::bad(format!(
            "{name}: superblock field `blocks` is {blocks} ({} bytes), but the file is {} bytes",
            blocks.saturating_mul(BLOCK),
            meta.size
        )));
    }
    Ok(Layout {
        meta_size: meta.size,
        tar_blocks,
    })
}

/// Where the tar bytes come from.
pub enum Tar {
    /// The blob is the uncompressed tar.
    Plain(SizedSource),
    /// The blob is gzip; the zinfo gives random access.
    Gzip(Box<GzRan>),
}

/// Metadata images up to this size are read into memory once at open: every filesystem
/// operation then costs no host call for metadata. 64 MiB covers layers with about a
/// million inodes; larger ones are read through the vfile as needed.
const META_IN_MEMORY_LIMIT: u64 = 64 << 20;

enum Meta {
    InMemory(Vec<u8>),
    Source(SizedSource),
}

pub struct Device {
    meta: Meta,
    tar: Tar,
    layout: Layout,
    tar_size: u64,
}

impl Device {
    pub fn open(
        meta: SizedSource,
        blob: SizedSource,
        zinfo: Option<SizedSource>,
        options: Options,
    ) -> Result<Self> {
        let layout = check_layout(&meta)?;
        let tar = match zinfo {
            Some(zinfo) => Tar::Gzip(Box::new(GzRan::open(blob, zinfo, options)?)),
            None => {
                let head = blob.read_clamped(0, 2)?;
                if head == GZIP_MAGIC {
                    return Err(Error::bad(
                        "blob: starts with the gzip magic (1f 8b) but no zinfo was given; pass the layer's zinfo, or the uncompressed tar",
                    ));
                }
                Tar::Plain(blob)
            }
        };
        let tar_size = match &tar {
            Tar::Plain(blob) => blob.size,
            Tar::Gzip(gz) => gz.size(),
        };
        let needed = layout.tar_blocks.saturating_mul(BLOCK);
        if tar_size < needed {
            return Err(Error::bad(format!(
                "blob: the tar is {tar_size} bytes, but the metadata's device table addresses {} blocks ({needed} bytes)",
                layout.tar_blocks
            )));
        }
        let meta = if meta.size <= META_IN_MEMORY_LIMIT {
            Meta::InMemory(meta.read_exact(0, meta.size as usize)?)
        } else {
            Meta::Source(meta)
        };
        Ok(Self {
            meta,
            tar,
            layout,
            tar_size,
        })
    }

    pub fn meta_size(&self) -> u64 {
        self.layout.meta_size
    }

    pub fn tar_size(&self) -> u64 {
        self.tar_size
    }

    pub fn size(&self) -> u64 {
        self.layout.meta_size + self.tar_size
    }

    pub fn tar(&self) -> &Tar {
        &self.tar
    }

    pub fn tar_mut(&mut self) -> &mut Tar {
        &mut self.tar
    }

    /// Bytes `[offset, offset+len)` of the device, clamped to its end: the bytes that
    /// exist, then nothing.
    pub fn pread(&mut self, offset: u64, len: u32) -> Result<Vec<u8>> {
        let end = offset.saturating_add(len as u64).min(self.size());
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity((end - offset) as usize);
        let meta_end = self.layout.meta_size;
        if offset < meta_end {
            let upto = end.min(meta_end);
            match &self.meta {
                Meta::InMemory(bytes) => {
                    out.extend_from_slice(&bytes[offset as usize..upto as usize])
                }
                Meta::Source(meta) => {
                    out.extend_from_slice(&meta.read_exact(offset, (upto - offset) as usize)?)
                }
            }
        }
        if end > meta_end {
            let tar_from = offset.max(meta_end) - meta_end;
            let tar_len = end - meta_end - tar_from;
            match &mut self.tar {
                Tar::Plain(blob) => {
                    out.extend_from_slice(&blob.read_exact(tar_from, tar_len as usize)?)
                }
                Tar::Gzip(gz) => gz.read_into(tar_from, tar_len, &mut out)?,
            }
        }
        if out.len() as u64 != end - offset {
            return Err(Error::io(format!(
                "device: read at {offset} produced {} bytes instead of {}",
                out.len(),
                end - offset
            )));
        }
        Ok(out)
    }
}

/// The EROFS reader reads the device through this.
impl erofs_image::ReadAt for Device {
    fn read_exact_at(
        &mut self,
        offset: u64,
        buf: &mut [u8],
    ) -> std::result::Result<(), erofs_image::Error> {
        let len = u32::try_from(buf.len()).map_err(|_| {
            erofs_image::Error::Range(format!("read of {} bytes is too large", buf.len()))
        })?;
        let bytes = self.pread(offset, len).map_err(|e| match e {
            Error::BadInput(m) => erofs_image::Error::Corrupt(m),
            Error::Io(m) => erofs_image::Error::Io(m),
            Error::OutOfRange(m) => erofs_image::Error::Range(m),
            Error::Unsupported(m) => erofs_image::Error::Unsupported(m),
        })?;
        if bytes.len() != buf.len() {
            return Err(erofs_image::Error::Corrupt(format!(
                "device read of {} bytes at {offset} passes the device end ({})",
                buf.len(),
                self.size()
            )));
        }
        buf.copy_from_slice(&bytes);
        Ok(())
    }

    fn size(&self) -> u64 {
        Device::size(self)
    }
}
