//! The layout a tar index's metadata must describe (docs/formats.md, "The device").
//!
//! Before serving, the metadata's superblock must describe exactly `meta ‖ tar`: EROFS
//! magic, 512-byte blocks, a device table whose first slot's unified address is the
//! metadata's own block count, and a metadata file of exactly that many blocks.

use crate::error::{Error, Result};
use crate::source::SizedSource;

/// Tar index images always use 512-byte blocks (docs/formats.md, "Tar-index EROFS layout").
const TAR_INDEX_BLKSZBITS: u8 = 9;
pub const BLOCK: u64 = 512;

/// What the superblock says about the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Size of the metadata image in bytes (`blocks × 512`).
    pub meta_size: u64,
    /// Tar blocks the metadata addresses (device slot 0's `blocks`).
    pub tar_blocks: u64,
}

/// The metadata file alone, as the EROFS reader's byte source.
struct MetaOnly<'a>(&'a SizedSource);

impl erofs_image::ReadAt for MetaOnly<'_> {
    fn read_exact_at(
        &mut self,
        offset: u64,
        buf: &mut [u8],
    ) -> std::result::Result<(), erofs_image::Error> {
        let bytes = self
            .0
            .read_exact(offset, buf.len())
            .map_err(|e| e.to_image())?;
        buf.copy_from_slice(&bytes);
        Ok(())
    }
    fn size(&self) -> u64 {
        self.0.size
    }
}

/// Check the superblock (with the EROFS reader: magic, checksum, feature bits, root
/// inode) and then what a tar index needs on top: 512-byte blocks, a device table whose
/// first slot's unified address is the metadata's own block count, and a metadata file of
/// exactly that many blocks.
pub fn check_layout(meta: &SizedSource) -> Result<Layout> {
    let name = "meta";
    if !meta.size.is_multiple_of(BLOCK) {
        return Err(Error::bad(format!(
            "size {} is not a multiple of the 512-byte block size",
            meta.size
        ))
        .in_file(name)
        .with_field("size"));
    }
    let fs = erofs_image::Filesystem::open(&mut MetaOnly(meta))
        .map_err(|e| Error::from(e).in_file(name))?;
    let sb = fs.superblock();
    if sb.blkszbits != TAR_INDEX_BLKSZBITS {
        return Err(Error::bad(format!(
            "superblock field `blkszbits` is {}; a tar index uses 9 (512-byte blocks)",
            sb.blkszbits
        ))
        .in_file(name)
        .with_field("blkszbits"));
    }
    let Some(slot) = fs.devices().first() else {
        return Err(Error::bad(format!(
            "superblock has no device table (feature_incompat {:#x}, extra_devices {}): not a tar index",
            sb.feature_incompat, sb.extra_devices
        )).in_file(name).with_field("feature_incompat"));
    };
    if slot.uniaddr != sb.blocks {
        return Err(Error::bad(format!(
            "device slot 0 field `uniaddr` is {}, but the superblock's `blocks` is {}; the tar must start right after the metadata",
            slot.uniaddr, sb.blocks
        )).in_file(name).with_field("uniaddr"));
    }
    if sb.blocks.checked_mul(BLOCK) != Some(meta.size) {
        return Err(Error::bad(format!(
            "superblock field `blocks` is {} ({} bytes), but the file is {} bytes",
            sb.blocks,
            sb.blocks.saturating_mul(BLOCK),
            meta.size
        ))
        .in_file(name)
        .with_field("blocks"));
    }
    Ok(Layout {
        meta_size: meta.size,
        tar_blocks: slot.blocks,
    })
}
