//! Writes the EROFS tar-index image (the layout of `mkfs.erofs --tar=i`; `docs/formats.md`,
//! *Tar-index EROFS layout*) for a
//! [`Tree`]: metadata only, with regular files pointing into the tar on device 1.
//!
//! Layout, in 512-byte blocks:
//!
//! ```text
//! byte 0     ...1023   zero (boot area)
//! byte 1024  ...1151   superblock (CRC32C over bytes 1024..1536, compat SB_CHKSUM|MTIME,
//!                      incompat DEVICE_TABLE, devt_slotoff 9)
//! byte 1152  ...1279   the one device slot: blocks = ceil(tar bytes parsed / 512),
//!                      uniaddr = the image's own block count, so `META ‖ tar` is the device
//! byte 1280  ...       inodes, 32-byte aligned, breadth-first from the root (nid 40); each
//!                      followed by its inline xattrs, then its chunk index (regular files)
//!                      or its inline tail (directories and symlinks whose tail fits)
//! next block ...       directory and symlink blocks that are not inline
//! ```
//!
//! Choices that make the output deterministic and readable by every kernel:
//! - `epoch`/`fixed_nsec` = the most common (mtime, nsec) pair among the inodes (ties: the
//!   smallest). An inode uses the compact (32-byte) form only when its mtime equals the
//!   epoch exactly, nanoseconds included (the reference loses PAX nanoseconds here), and
//!   size, uid, gid and nlink fit; the compact `i_mtime` is then 0, which old kernels (that
//!   read compact times from the superblock) and new ones agree on. `build_time` is 0:
//!   "made at the epoch". No clock is read.
//! - The UUID is given by the caller (derived from the blob digest).
//! - No xattr name filter: `XATTR_FILTER` stays clear and `h_name_filter` is 0, so readers
//!   never skip an xattr lookup; no shared xattrs, no long prefixes, no compression.
//! - Regular files are chunk-based with one chunk where possible: chunkbits =
//!   ceil(log2(size)) clamped to 9..=40, 8-byte indexes (device 1, block = offset/512).
//!   Empty files are flat with no data. Block numbers must fit 32 bits (tars under 2 TiB);
//!   larger would need the 48-bit format, which is refused rather than half-written.

use std::collections::HashMap;

use super::tree::{shown, Node, NodeKind, Tree, ROOT};
use super::xattr::encode_xattrs;
use crate::error::{Error, Result};

pub const BLOCK_SIZE: u64 = 512;
const BLOCK_BITS: u32 = 9;
/// Longest symlink target the kernel reads (PATH_MAX - 1).
pub const MAX_SYMLINK: usize = 4095;
const SUPERBLOCK_AT: usize = 1024;
const DEVICE_SLOT_AT: usize = 1152;
const FIRST_INODE_AT: u64 = 1280;
const MAGIC: u32 = 0xE0F5_E1E2;
const COMPAT_SB_CHKSUM: u32 = 0x1;
const COMPAT_MTIME: u32 = 0x2;
const INCOMPAT_DEVICE_TABLE: u32 = 0x8;

const LAYOUT_FLAT_PLAIN: u16 = 0;
const LAYOUT_FLAT_INLINE: u16 = 2;
const LAYOUT_CHUNK_BASED: u16 = 4;
const CHUNK_FORMAT_INDEXES: u16 = 0x20;
const NULL_ADDR: u32 = 0xFFFF_FFFF;

const S_IFREG: u16 = 0o100000;
const S_IFDIR: u16 = 0o040000;
const S_IFLNK: u16 = 0o120000;
const S_IFCHR: u16 = 0o020000;
const S_IFBLK: u16 = 0o060000;
const S_IFIFO: u16 = 0o010000;

/// What a node's data looks like on disk.
enum Data {
    /// Nothing (empty files, devices, fifos).
    None,
    /// Regular file: `chunks` 8-byte indexes after the inode.
    Chunks { chunkbits: u32, count: u64 },
    /// Directory or symlink bytes: full blocks in the data area, the tail inline if it fits.
    Bytes { content: Vec<u8>, inline_tail: bool },
}

struct Placed {
    node: usize,
    /// Parent directory's node (the root's is itself), for `..`.
    parent: usize,
    pos: u64,
    extended: bool,
    xattrs: Vec<u8>,
    data: Data,
    /// First data-area block of `Bytes` content that is not inline.
    start_block: u32,
    /// Position in the visit order (to name the entry in errors).
    visit: usize,
}

/// Build the image. `tar_bytes` is how far the tar was parsed (through the end marker).
/// Returns the image and its inode count.
pub fn write_image(tree: &Tree, tar_bytes: u64, uuid: [u8; 16]) -> Result<(Vec<u8>, u64)> {
    let nodes = &tree.nodes;
    let node = |i: usize| -> Result<&Node> {
        nodes
            .get(i)
            .ok_or_else(|| Error::bad(format!("index builder: node {i} is missing")))
    };
    let tar_blocks = u32::try_from(tar_bytes.div_ceil(BLOCK_SIZE)).map_err(|_| {
        Error::unsupported(format!(
            "tar of {tar_bytes} bytes: block numbers past 2^32 need the 48-bit format, which is not written"
        ))
    })?;

    // Breadth-first order; a hard-linked node is placed once, at its first name. Each
    // visit is (node, parent node, the parent's visit, name); paths are only rebuilt for
    // error messages, so the order costs a few words per inode.
    let mut order: Vec<(usize, usize, usize, &[u8])> = vec![(ROOT, ROOT, 0, b"")];
    let mut seen = vec![false; nodes.len()];
    if let Some(root) = seen.get_mut(ROOT) {
        *root = true;
    }
    let mut next = 0;
    while let Some(&(index, _, _, _)) = order.get(next) {
        if let NodeKind::Directory { children } = &node(index)?.kind {
            for (name, &child) in children {
                let first = seen
                    .get_mut(child)
                    .map(|s| !std::mem::replace(s, true))
                    .ok_or_else(|| Error::bad(format!("index builder: node {child} is missing")))?;
                if first {
                    order.push((child, index, next, name.as_slice()));
                }
            }
        }
        next += 1;
    }
    let path_of = |mut visit: usize| -> String {
        let mut parts = Vec::new();
        while visit != 0 {
            match order.get(visit) {
                Some(&(_, _, up, name)) => {
                    parts.push(name);
                    visit = up;
                }
                None => break,
            }
        }
        parts.reverse();
        format!("/{}", shown(&parts.join(&b'/')))
    };

    // The epoch: the most common timestamp, so that most inodes can be compact.
    let mut counts: HashMap<(i64, u32), u64> = HashMap::new();
    for &(index, _, _, _) in &order {
        let n = node(index)?;
        *counts.entry((n.mtime, n.mtime_nsec)).or_default() += 1;
    }
    let (epoch, fixed_nsec) = counts
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
        .map(|(&t, _)| t)
        .unwrap_or((0, 0));
    let epoch = u64::try_from(epoch).unwrap_or(0);

    // Pass 1: sizes and inode positions. Directory contents need nids, which are known
    // only after placement, so their size is computed from names alone here.
    let mut placed: Vec<Placed> = Vec::with_capacity(order.len());
    let mut pos = FIRST_INODE_AT;
    for (visit, &(index, parent, _, _)) in order.iter().enumerate() {
        let n = node(index)?;
        let err = |why: String| {
            Error::bad(format!(
                "entry {:?} (tar offset {}): {why}",
                path_of(visit),
                n.offset
            ))
        };
        let size = content_size(n);
        let extended = !(n.mtime >= 0
            && n.mtime as u64 == epoch
            && n.mtime_nsec == fixed_nsec
            && size <= u32::MAX as u64
            && n.uid <= 0xffff
            && n.gid <= 0xffff
            && n.nlink <= 0xffff);
        let inode_size: u64 = if extended { 64 } else { 32 };
        let xattrs = encode_xattrs(n).map_err(err)?;
        let xattr_len = xattrs.len() as u64;
        let data = match &n.kind {
            NodeKind::Regular { size: 0, .. } => Data::None,
            NodeKind::Regular { size, data_offset } => {
                if data_offset % BLOCK_SIZE != 0 {
                    return Err(err(format!("data offset {data_offset} is not 512-aligned")));
                }
                let bits = (64 - (size - 1).leading_zeros()).clamp(BLOCK_BITS, BLOCK_BITS + 31);
                let count = size.div_ceil(1u64 << bits);
                let last = data_offset / BLOCK_SIZE + (count - 1) * (1u64 << (bits - BLOCK_BITS));
                if last > u32::MAX as u64 {
                    return Err(Error::unsupported(format!(
                        "entry {:?}: its data at tar offset {data_offset} is past 2 TiB, which needs the 48-bit format",
                        path_of(visit)
                    )));
                }
                Data::Chunks {
                    chunkbits: bits,
                    count,
                }
            }
            NodeKind::Directory { .. } => Data::Bytes {
                content: Vec::new(),
                inline_tail: false,
            },
            NodeKind::Symlink { target } => Data::Bytes {
                content: target.clone(),
                inline_tail: false,
            },
            _ => Data::None,
        };
        // Keep the inode core inside one block.
        pos = pos.next_multiple_of(32);
        if pos % BLOCK_SIZE + inode_size > BLOCK_SIZE {
            pos = pos.next_multiple_of(BLOCK_SIZE);
        }
        let mut data = data;
        let record_end = match &mut data {
            Data::None => pos + inode_size + xattr_len,
            Data::Chunks { count, .. } => {
                (pos + inode_size + xattr_len).next_multiple_of(8) + 8 * *count
            }
            Data::Bytes { inline_tail, .. } => {
                let tail = size % BLOCK_SIZE;
                let head = inode_size + xattr_len;
                // The inline tail must not cross a block boundary: move the inode to a
                // fresh block if that makes it fit, else store the tail as a block.
                if tail > 0 && (pos + head) % BLOCK_SIZE + tail <= BLOCK_SIZE {
                    *inline_tail = true;
                } else if tail > 0 && head + tail <= BLOCK_SIZE {
                    pos = pos.next_multiple_of(BLOCK_SIZE);
                    *inline_tail = true;
                }
                pos + head + if *inline_tail { tail } else { 0 }
            }
        };
        placed.push(Placed {
            node: index,
            parent,
            pos,
            extended,
            xattrs,
            data,
            start_block: NULL_ADDR,
            visit,
        });
        pos = record_end;
    }

    // Pass 2: the data area after the inodes.
    let mut block = pos.div_ceil(BLOCK_SIZE);
    for p in &mut placed {
        let n = node(p.node)?;
        if let Data::Bytes { inline_tail, .. } = &p.data {
            let size = content_size(n);
            let blocks = if *inline_tail {
                size / BLOCK_SIZE
            } else {
                size.div_ceil(BLOCK_SIZE)
            };
            if blocks > 0 {
                p.start_block = u32::try_from(block).map_err(|_| {
                    Error::unsupported("the index is over 2 TiB of metadata".to_string())
                })?;
                block += blocks;
            }
        }
    }
    let meta_blocks = u32::try_from(block)
        .map_err(|_| Error::unsupported("the index is over 2 TiB of metadata".to_string()))?;
    let mut nid_of = vec![u64::MAX; nodes.len()];
    for p in &placed {
        if let Some(slot) = nid_of.get_mut(p.node) {
            *slot = p.pos / 32;
        }
    }
    // The root is placed first, but not always at FIRST_INODE_AT: an inline directory
    // tail that would cross the block moves it to the next block (found by the build_tar
    // fuzz target: the superblock named nid 40 while the root sat at nid 48).
    let root_pos = placed
        .first()
        .filter(|p| p.node == ROOT)
        .map(|p| p.pos)
        .ok_or_else(|| Error::bad("index builder: the root is not placed first"))?;
    let root_nid = u16::try_from(root_pos / 32)
        .map_err(|_| Error::bad("index builder: root nid overflows"))?;

    // Pass 3: bytes.
    let mut img = vec![0u8; meta_blocks as usize * BLOCK_SIZE as usize];
    for (ino, p) in placed.iter_mut().enumerate() {
        let n = node(p.node)?;
        if let (NodeKind::Directory { children }, Data::Bytes { content, .. }) =
            (&n.kind, &mut p.data)
        {
            *content = dirents(children, p.node, p.parent, &nid_of, nodes)?;
        }
        write_inode(&mut img, p, n, ino as u32 + 1, epoch)
            .map_err(|e| e.context(&format!("entry {:?}", path_of(p.visit))))?;
        // Written: drop the bytes, so only one directory's contents is held at a time.
        if let Data::Bytes { content, .. } = &mut p.data {
            *content = Vec::new();
        }
    }
    write_superblock(
        &mut img,
        root_nid,
        placed.len() as u64,
        epoch,
        fixed_nsec,
        meta_blocks,
        tar_blocks,
        uuid,
    )?;
    Ok((img, placed.len() as u64))
}

/// i_size of a node.
fn content_size(n: &Node) -> u64 {
    match &n.kind {
        NodeKind::Regular { size, .. } => *size,
        NodeKind::Symlink { target } => target.len() as u64,
        NodeKind::Directory { children } => {
            let names = dir_names(children.keys().map(|k| k.as_slice()));
            let blocks = pack(&names);
            let full = blocks.len().saturating_sub(1) as u64 * BLOCK_SIZE;
            full + blocks.last().map_or(0, |b| b.1 as u64)
        }
        _ => 0,
    }
}

/// A directory's names with `.` and `..`, sorted bytewise (the kernel binary-searches).
fn dir_names<'a>(children: impl Iterator<Item = &'a [u8]>) -> Vec<&'a [u8]> {
    let mut names: Vec<&[u8]> = children.collect();
    names.push(b".");
    names.push(b"..");
    names.sort_unstable();
    names
}

/// Split sorted names into directory blocks: a block takes entries while 12 bytes of
/// dirent plus the name fit in 512. Returns (entries in the block, bytes used).
fn pack(names: &[&[u8]]) -> Vec<(usize, usize)> {
    let mut blocks = Vec::new();
    let (mut count, mut used) = (0usize, 0usize);
    for name in names {
        let need = 12 + name.len();
        if used + need > BLOCK_SIZE as usize && count > 0 {
            blocks.push((count, used));
            (count, used) = (0, 0);
        }
        count += 1;
        used += need;
    }
    if count > 0 {
        blocks.push((count, used));
    }
    blocks
}

fn file_type(kind: &NodeKind) -> u8 {
    match kind {
        NodeKind::Regular { .. } => 1,
        NodeKind::Directory { .. } => 2,
        NodeKind::CharDevice { .. } => 3,
        NodeKind::BlockDevice { .. } => 4,
        NodeKind::Fifo => 5,
        NodeKind::Symlink { .. } => 7,
    }
}

/// The directory's bytes: blocks of 12-byte dirents (nid, nameoff, file type) then names.
fn dirents(
    children: &std::collections::BTreeMap<Vec<u8>, usize>,
    this: usize,
    parent: usize,
    nid_of: &[u64],
    nodes: &[Node],
) -> Result<Vec<u8>> {
    let names = dir_names(children.keys().map(|k| k.as_slice()));
    let target = |name: &[u8]| -> Result<(u64, u8)> {
        let index = match name {
            b"." => this,
            b".." => parent,
            _ => *children
                .get(name)
                .ok_or_else(|| Error::bad("index builder: dirent without a child"))?,
        };
        let nid = *nid_of
            .get(index)
            .filter(|&&nid| nid != u64::MAX)
            .ok_or_else(|| Error::bad("index builder: child was not placed"))?;
        let kind = &nodes
            .get(index)
            .ok_or_else(|| Error::bad("index builder: child node is missing"))?
            .kind;
        Ok((nid, file_type(kind)))
    };
    let blocks = pack(&names);
    let mut out = Vec::new();
    let mut rest = names.as_slice();
    for (i, &(count, used)) in blocks.iter().enumerate() {
        let (these, later) = rest.split_at(count);
        rest = later;
        let mut block = vec![0u8; used];
        let mut name_at = 12 * count;
        for (k, name) in these.iter().enumerate() {
            let (nid, ftype) = target(name)?;
            let d = &mut block[12 * k..12 * k + 12];
            d[0..8].copy_from_slice(&nid.to_le_bytes());
            d[8..10].copy_from_slice(&(name_at as u16).to_le_bytes());
            d[10] = ftype;
            block[name_at..name_at + name.len()].copy_from_slice(name);
            name_at += name.len();
        }
        if i + 1 < blocks.len() {
            block.resize(BLOCK_SIZE as usize, 0);
        }
        out.extend_from_slice(&block);
    }
    Ok(out)
}

fn write_inode(img: &mut [u8], p: &Placed, n: &Node, ino: u32, epoch: u64) -> Result<()> {
    let size = content_size(n);
    let (type_bits, layout, i_u): (u16, u16, u32) = match (&n.kind, &p.data) {
        (NodeKind::Regular { .. }, Data::Chunks { chunkbits, .. }) => (
            S_IFREG,
            LAYOUT_CHUNK_BASED,
            (CHUNK_FORMAT_INDEXES | (*chunkbits - BLOCK_BITS) as u16) as u32,
        ),
        (NodeKind::Regular { .. }, _) => (S_IFREG, LAYOUT_FLAT_PLAIN, 0),
        (
            NodeKind::Directory { .. } | NodeKind::Symlink { .. },
            Data::Bytes { inline_tail, .. },
        ) => (
            if matches!(n.kind, NodeKind::Directory { .. }) {
                S_IFDIR
            } else {
                S_IFLNK
            },
            if *inline_tail {
                LAYOUT_FLAT_INLINE
            } else {
                LAYOUT_FLAT_PLAIN
            },
            p.start_block,
        ),
        (NodeKind::CharDevice { major, minor }, _) => {
            (S_IFCHR, LAYOUT_FLAT_PLAIN, new_dev(*major, *minor))
        }
        (NodeKind::BlockDevice { major, minor }, _) => {
            (S_IFBLK, LAYOUT_FLAT_PLAIN, new_dev(*major, *minor))
        }
        (NodeKind::Fifo, _) => (S_IFIFO, LAYOUT_FLAT_PLAIN, 0),
        _ => return Err(Error::bad("index builder: node kind and data disagree")),
    };
    let mode = type_bits | (n.mode & 0o7777) as u16;
    let icount: u16 = if p.xattrs.is_empty() {
        0
    } else {
        ((p.xattrs.len() - 12) / 4 + 1) as u16
    };
    let mut core = Vec::with_capacity(64);
    core.extend_from_slice(&((layout << 1) | p.extended as u16).to_le_bytes());
    core.extend_from_slice(&icount.to_le_bytes());
    core.extend_from_slice(&mode.to_le_bytes());
    if p.extended {
        core.extend_from_slice(&0u16.to_le_bytes());
        core.extend_from_slice(&size.to_le_bytes());
        core.extend_from_slice(&i_u.to_le_bytes());
        core.extend_from_slice(&ino.to_le_bytes());
        core.extend_from_slice(&n.uid.to_le_bytes());
        core.extend_from_slice(&n.gid.to_le_bytes());
        core.extend_from_slice(&(n.mtime as u64).to_le_bytes());
        core.extend_from_slice(&n.mtime_nsec.to_le_bytes());
        core.extend_from_slice(&n.nlink.to_le_bytes());
        core.extend_from_slice(&[0u8; 16]);
    } else {
        // Compact: nlink, 32-bit size, mtime relative to the epoch (always 0 here).
        let relative = (n.mtime as u64).wrapping_sub(epoch) as u32;
        core.extend_from_slice(&(n.nlink as u16).to_le_bytes());
        core.extend_from_slice(&(size as u32).to_le_bytes());
        core.extend_from_slice(&relative.to_le_bytes());
        core.extend_from_slice(&i_u.to_le_bytes());
        core.extend_from_slice(&ino.to_le_bytes());
        core.extend_from_slice(&(n.uid as u16).to_le_bytes());
        core.extend_from_slice(&(n.gid as u16).to_le_bytes());
        core.extend_from_slice(&[0u8; 4]);
    }
    put(img, p.pos, &core)?;
    let after_core = p.pos + core.len() as u64;
    put(img, after_core, &p.xattrs)?;
    let after_xattrs = after_core + p.xattrs.len() as u64;
    match &p.data {
        Data::None => {}
        Data::Chunks { chunkbits, count } => {
            let NodeKind::Regular { data_offset, .. } = n.kind else {
                return Err(Error::bad("index builder: chunks on a non-file"));
            };
            let mut at = after_xattrs.next_multiple_of(8);
            let step = 1u64 << (chunkbits - BLOCK_BITS);
            for k in 0..*count {
                let block = data_offset / BLOCK_SIZE + k * step;
                let mut index = [0u8; 8];
                // startblk_hi 0, device_id 1 (the tar), startblk_lo.
                index[2..4].copy_from_slice(&1u16.to_le_bytes());
                index[4..8].copy_from_slice(&(block as u32).to_le_bytes());
                put(img, at, &index)?;
                at += 8;
            }
        }
        Data::Bytes {
            content,
            inline_tail,
        } => {
            let full = if *inline_tail {
                content.len() / BLOCK_SIZE as usize * BLOCK_SIZE as usize
            } else {
                content.len()
            };
            if full > 0 {
                put(img, p.start_block as u64 * BLOCK_SIZE, &content[..full])?;
            }
            if *inline_tail {
                put(img, after_xattrs, &content[full..])?;
            }
        }
    }
    Ok(())
}

/// Linux's "new" dev_t encoding, as EROFS stores it.
fn new_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

#[allow(clippy::too_many_arguments)]
fn write_superblock(
    img: &mut [u8],
    root_nid: u16,
    inos: u64,
    epoch: u64,
    fixed_nsec: u32,
    meta_blocks: u32,
    tar_blocks: u32,
    uuid: [u8; 16],
) -> Result<()> {
    let mut sb = [0u8; 128];
    sb[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    sb[8..12].copy_from_slice(&(COMPAT_SB_CHKSUM | COMPAT_MTIME).to_le_bytes());
    sb[12] = BLOCK_BITS as u8;
    sb[14..16].copy_from_slice(&root_nid.to_le_bytes());
    sb[16..24].copy_from_slice(&inos.to_le_bytes());
    sb[24..32].copy_from_slice(&epoch.to_le_bytes());
    sb[32..36].copy_from_slice(&fixed_nsec.to_le_bytes());
    sb[36..40].copy_from_slice(&meta_blocks.to_le_bytes());
    sb[48..64].copy_from_slice(&uuid);
    sb[80..84].copy_from_slice(&INCOMPAT_DEVICE_TABLE.to_le_bytes());
    sb[86..88].copy_from_slice(&1u16.to_le_bytes());
    sb[88..90].copy_from_slice(&((DEVICE_SLOT_AT / 128) as u16).to_le_bytes());
    put(img, SUPERBLOCK_AT as u64, &sb)?;
    let mut slot = [0u8; 128];
    slot[64..68].copy_from_slice(&tar_blocks.to_le_bytes());
    slot[68..72].copy_from_slice(&meta_blocks.to_le_bytes());
    put(img, DEVICE_SLOT_AT as u64, &slot)?;
    // The checksum covers one block from the superblock, with its own field zero.
    let covered = img
        .get(SUPERBLOCK_AT..SUPERBLOCK_AT + BLOCK_SIZE as usize)
        .ok_or_else(|| Error::bad("index builder: image shorter than its superblock"))?;
    let crc = erofs_image::crc32c(0xFFFF_FFFF, covered);
    put(img, SUPERBLOCK_AT as u64 + 4, &crc.to_le_bytes())
}

fn put(img: &mut [u8], at: u64, bytes: &[u8]) -> Result<()> {
    let at = usize::try_from(at).map_err(|_| Error::bad("index builder: offset overflows"))?;
    img.get_mut(at..at + bytes.len())
        .ok_or_else(|| {
            Error::bad(format!(
                "index builder: write of {} bytes at {at} is outside the image",
                bytes.len()
            ))
        })?
        .copy_from_slice(bytes);
    Ok(())
}

#[cfg(test)]
#[path = "erofs_writer_tests.rs"]
mod tests;
