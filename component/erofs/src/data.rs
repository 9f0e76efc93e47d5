//! Data mapping (file offset to device offset) for the uncompressed layouts, and the data-reading
//! entry points: [`Filesystem::read`], [`Filesystem::readlink`], [`Filesystem::physical_extents`].

use crate::inode::{
    chunk_unit, has_data, outside_metadata, Inode, Layout, CHUNK_48BIT, CHUNK_INDEXES,
};
use crate::util::{add, corrupt, le16, le32, mul, read_vec, to_usize};
use crate::{Error, FileType, Filesystem, ReadAt};

/// Largest single `read` request.
pub const MAX_READ: u32 = 64 << 20;
/// Most extents returned by one `physical_extents` call.
pub const MAX_EXTENTS: usize = 1 << 16;
/// Chunk index entries decoded per device read when walking many chunks.
const CHUNK_BATCH: u64 = 512;
/// `startblk_lo` value of a hole.
const NULL_ADDR: u32 = 0xFFFF_FFFF;

/// A contiguous piece of a file: `len` bytes from `file_offset` live at device byte `physical`,
/// or read as zeros when `physical` is `None` (a hole).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Offset in the file.
    pub file_offset: u64,
    /// Length in bytes (never 0).
    pub len: u64,
    /// Device byte offset, `None` for a hole.
    pub physical: Option<u64>,
}

impl Extent {
    fn end(&self) -> u64 {
        self.file_offset.saturating_add(self.len)
    }
}

/// Where a chunk index entry points: its start block on a device, that device's first
/// block in the flat address space and its size in blocks, and its name for messages.
struct ChunkTarget {
    startblk: u64,
    base: u64,
    limit: u64,
    device: String,
}

impl Filesystem {
    /// The extent of `ino` containing file offset `off` (which must be below the size).
    pub(crate) fn map_at(
        &self,
        dev: &mut dyn ReadAt,
        ino: &Inode,
        off: u64,
    ) -> Result<Extent, Error> {
        let size = ino.size();
        if off >= size {
            return Err(Error::Range(format!(
                "nid {}: offset {off} past EOF",
                ino.nid
            )));
        }
        let bsz = self.block_size();
        match ino.layout {
            Layout::FlatPlain { startblk } => Ok(Extent {
                file_offset: 0,
                len: size,
                physical: Some(mul(startblk, bsz, "flat data")?),
            }),
            Layout::FlatInline { startblk } => {
                let full = size.checked_div(bsz).unwrap_or(0).saturating_mul(bsz);
                if off < full {
                    Ok(Extent {
                        file_offset: 0,
                        len: full,
                        physical: Some(mul(startblk, bsz, "flat data")?),
                    })
                } else {
                    Ok(Extent {
                        file_offset: full,
                        len: size.saturating_sub(full),
                        physical: Some(ino.payload_pos),
                    })
                }
            }
            Layout::Chunked {
                format,
                chunkbits,
                index_pos,
                ..
            } => {
                let idx = off.checked_shr(chunkbits).unwrap_or(0);
                let unit = chunk_unit(format);
                let pos = add(index_pos, mul(idx, unit, "chunk index")?, "chunk index")?;
                let raw = read_vec(dev, pos, to_usize(unit, "chunk unit")?)?;
                self.decode_chunk(ino, idx, &raw)
            }
            Layout::Compressed => Err(Error::Unsupported(format!(
                "nid {}: compressed data",
                ino.nid
            ))),
        }
    }

    /// Decode chunk `idx` of `ino` from its raw index entry `raw` (4 or 8 bytes) into the extent it
    /// maps, checking its block range.
    fn decode_chunk(&self, ino: &Inode, idx: u64, raw: &[u8]) -> Result<Extent, Error> {
        let Layout::Chunked {
            format, chunkbits, ..
        } = ino.layout
        else {
            return Err(corrupt("not a chunked inode"));
        };
        let nid = ino.nid;
        let bad = || corrupt(format!("nid {nid}: chunk {idx}: truncated index"));
        let chunk_size = 1u64.checked_shl(chunkbits).unwrap_or(u64::MAX);
        let start = idx
            .checked_shl(chunkbits)
            .filter(|s| s.checked_shr(chunkbits) == Some(idx))
            .ok_or_else(|| corrupt(format!("nid {nid}: chunk {idx} overflows")))?;
        let len = chunk_size.min(ino.size().saturating_sub(start));
        if len == 0 {
            return Err(corrupt(format!("nid {nid}: chunk {idx} past EOF")));
        }
        let bsz = self.block_size();
        let nblocks = len.div_ceil(bsz);
        // Decode the entry: a hole, or blocks on some device.
        let target = if format & CHUNK_INDEXES != 0 {
            // 8-byte chunk index: +0 startblk_hi (u16, 48-bit only), +2 device_id (u16),
            // +4 startblk_lo (u32, 0xFFFFFFFF = hole).
            let hi = le16(raw, 0).ok_or_else(bad)?;
            let device_id = le16(raw, 2).ok_or_else(bad)?;
            let lo = le32(raw, 4).ok_or_else(bad)?;
            if lo == NULL_ADDR {
                return Ok(hole(start, len));
            }
            let hi = if format & CHUNK_48BIT != 0 {
                u64::from(hi) << 32
            } else {
                0
            };
            let startblk = hi | u64::from(lo);
            if device_id == 0 {
                ChunkTarget {
                    startblk,
                    base: 0,
                    limit: self.sb.blocks,
                    device: "the primary device".to_string(),
                }
            } else {
                let slot = usize::from(device_id)
                    .checked_sub(1)
                    .and_then(|k| self.devices.get(k))
                    .ok_or_else(|| {
                        corrupt(format!(
                            "nid {nid}: chunk {idx}: device id {device_id} but {} extra devices",
                            self.devices.len()
                        ))
                    })?;
                if slot.uniaddr == 0 {
                    return Err(Error::Unsupported(format!(
                        "nid {nid}: chunk {idx}: device {device_id} has no flat address"
                    )));
                }
                ChunkTarget {
                    startblk,
                    base: slot.uniaddr,
                    limit: slot.blocks,
                    device: format!("device {device_id}"),
                }
            }
        } else {
            // 4-byte block map: the block address in the flat space, 0xFFFFFFFF = hole.
            let blk = le32(raw, 0).ok_or_else(bad)?;
            if blk == NULL_ADDR {
                return Ok(hole(start, len));
            }
            ChunkTarget {
                startblk: u64::from(blk),
                base: 0,
                limit: self.flat_blocks(),
                device: "the device".to_string(),
            }
        };
        // Check the blocks against their device, then map them onto the flat address space.
        let ChunkTarget {
            startblk,
            base,
            limit,
            device: what,
        } = target;
        let end = startblk.checked_add(nblocks);
        if end.is_none_or(|e| e > limit) {
            return Err(corrupt(format!(
                "nid {nid}: chunk {idx}: blocks {startblk}+{nblocks} outside {what} ({limit} blocks)"
            )));
        }
        // Metadata must be in the metadata image (the primary device, blocks below
        // `sb.blocks` of the flat space): never on another device or in a tar's region.
        if let Some(kind) = self.metadata_kind(ino) {
            let flat_start = base.saturating_add(startblk);
            let flat_end = flat_start.saturating_add(nblocks);
            if flat_end > self.sb.blocks {
                return Err(outside_metadata(
                    nid,
                    kind,
                    flat_start,
                    flat_end,
                    self.sb.blocks,
                ));
            }
        }
        let what = format!("nid {nid} chunk {idx}");
        let physical = mul(add(base, startblk, &what)?, bsz, &what)?;
        Ok(Extent {
            file_offset: start,
            len,
            physical: Some(physical),
        })
    }

    /// Read up to `len` bytes of `ino`'s data from `off`, clamped to the size. Any file type.
    pub(crate) fn read_data(
        &self,
        dev: &mut dyn ReadAt,
        ino: &Inode,
        off: u64,
        len: u64,
    ) -> Result<Vec<u8>, Error> {
        let size = ino.size();
        if off >= size || len == 0 {
            return Ok(Vec::new());
        }
        let end = off.saturating_add(len).min(size);
        let total = to_usize(end.saturating_sub(off), "read length")?;
        let mut out = vec![0u8; total];
        let mut pos = off;
        // Each extent but the last covers at least one block, so this many steps always suffice.
        let max_steps = end
            .saturating_sub(off)
            .checked_div(self.block_size())
            .unwrap_or(0)
            .saturating_add(4);
        let mut steps = 0u64;
        while pos < end {
            steps = steps.saturating_add(1);
            if steps > max_steps {
                return Err(corrupt(format!(
                    "nid {}: data map does not advance",
                    ino.nid
                )));
            }
            let ext = self.map_at(dev, ino, pos)?;
            if pos < ext.file_offset || pos >= ext.end() {
                return Err(corrupt(format!("nid {}: bad extent at {pos}", ino.nid)));
            }
            let stop = ext.end().min(end);
            let a = to_usize(pos.saturating_sub(off), "read offset")?;
            let b = to_usize(stop.saturating_sub(off), "read offset")?;
            let dst = out
                .get_mut(a..b)
                .ok_or_else(|| corrupt(format!("nid {}: extent out of range", ino.nid)))?;
            if let Some(phys) = ext.physical {
                let at = add(phys, pos.saturating_sub(ext.file_offset), "data read")?;
                dev.read_exact_at(at, dst)?;
            }
            pos = stop;
        }
        Ok(out)
    }

    /// Read `len` bytes of regular file `nid` from `offset`, clamped to the file size (fewer bytes at
    /// EOF, none past it). Holes read as zeros.
    pub fn read(
        &self,
        dev: &mut dyn ReadAt,
        nid: u64,
        offset: u64,
        len: u32,
    ) -> Result<Vec<u8>, Error> {
        if len > MAX_READ {
            return Err(Error::Range(format!(
                "read of {len} bytes (max {MAX_READ})"
            )));
        }
        let ino = self.load_inode(dev, nid)?;
        match ino.ftype {
            FileType::Regular => {}
            FileType::Directory => return Err(Error::IsDir),
            _ => return Err(Error::Range(format!("nid {nid}: not a regular file"))),
        }
        self.read_data(dev, &ino, offset, u64::from(len))
    }

    /// The target of symlink `nid`.
    pub fn readlink(&self, dev: &mut dyn ReadAt, nid: u64) -> Result<Vec<u8>, Error> {
        let ino = self.load_inode(dev, nid)?;
        if ino.ftype != FileType::Symlink {
            return Err(Error::NotSymlink);
        }
        let target = self.read_data(dev, &ino, 0, ino.size())?;
        if target.contains(&0) {
            return Err(corrupt(format!("nid {nid}: NUL in symlink target")));
        }
        Ok(target)
    }

    /// Where the bytes `[offset, offset + len)` of inode `nid` live on the device (clamped to the
    /// size; adjacent pieces are merged). At most [`MAX_EXTENTS`] extents are returned; call again
    /// from the end of the last one to continue.
    pub fn physical_extents(
        &self,
        dev: &mut dyn ReadAt,
        nid: u64,
        offset: u64,
        len: u64,
    ) -> Result<Vec<Extent>, Error> {
        let ino = self.load_inode(dev, nid)?;
        if !has_data(ino.ftype) {
            return Ok(Vec::new());
        }
        self.extents_of(dev, &ino, offset, len, MAX_EXTENTS)
    }

    /// Extents of `ino` over `[offset, offset + len)`, at most `max` of them, decoding chunk indexes
    /// in batches.
    pub(crate) fn extents_of(
        &self,
        dev: &mut dyn ReadAt,
        ino: &Inode,
        offset: u64,
        len: u64,
        max: usize,
    ) -> Result<Vec<Extent>, Error> {
        let end = offset.saturating_add(len).min(ino.size());
        let mut out: Vec<Extent> = Vec::new();
        let mut pos = offset;
        let mut batch: Vec<u8> = Vec::new();
        let mut batch_first = 0u64;
        let mut batch_n = 0u64;
        while pos < end && out.len() < max {
            let mut ext = match ino.layout {
                Layout::Chunked {
                    format,
                    chunkbits,
                    count,
                    index_pos,
                } => {
                    let idx = pos.checked_shr(chunkbits).unwrap_or(0);
                    let unit = chunk_unit(format);
                    if idx < batch_first || idx >= batch_first.saturating_add(batch_n) {
                        batch_n = count.saturating_sub(idx).min(CHUNK_BATCH);
                        batch_first = idx;
                        let at = add(index_pos, mul(idx, unit, "chunk index")?, "chunk index")?;
                        let bytes = to_usize(mul(batch_n, unit, "chunk index")?, "chunk batch")?;
                        batch = read_vec(dev, at, bytes)?;
                    }
                    let rel = to_usize(
                        mul(idx.saturating_sub(batch_first), unit, "chunk")?,
                        "chunk",
                    )?;
                    let raw = batch.get(rel..).unwrap_or(&[]);
                    self.decode_chunk(ino, idx, raw)?
                }
                _ => self.map_at(dev, ino, pos)?,
            };
            if pos < ext.file_offset || pos >= ext.end() {
                return Err(corrupt(format!("nid {}: bad extent at {pos}", ino.nid)));
            }
            // Trim to the requested window.
            let skip = pos.saturating_sub(ext.file_offset);
            ext.physical = match ext.physical {
                Some(p) => Some(add(p, skip, "extent")?),
                None => None,
            };
            ext.len = ext.end().min(end).saturating_sub(pos);
            ext.file_offset = pos;
            pos = ext.end();
            match out.last_mut() {
                Some(prev) if mergeable(prev, &ext) => {
                    prev.len = prev.len.saturating_add(ext.len);
                }
                _ => out.push(ext),
            }
        }
        Ok(out)
    }
}

fn hole(start: u64, len: u64) -> Extent {
    Extent {
        file_offset: start,
        len,
        physical: None,
    }
}

fn mergeable(prev: &Extent, next: &Extent) -> bool {
    if prev.end() != next.file_offset {
        return false;
    }
    match (prev.physical, next.physical) {
        (None, None) => true,
        (Some(a), Some(b)) => a.checked_add(prev.len) == Some(b),
        _ => false,
    }
}
