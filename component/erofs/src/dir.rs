//! Directory blocks: parsing, [`Filesystem::lookup`] (binary search) and [`Filesystem::readdir`].
//!
//! A directory's data is a sequence of blocks. Each block starts with 12-byte dirents:
//!
//! | off | size | field |
//! |---|---|---|
//! | 0 | 8 | nid (bit 63 would mean "in the metabox", which this reader refuses) |
//! | 8 | 2 | nameoff: byte offset of the name inside the block |
//! | 10 | 1 | file_type (0 unknown, 1 reg, 2 dir, 3 chr, 4 blk, 5 fifo, 6 sock, 7 lnk) |
//! | 11 | 1 | reserved |
//!
//! The first dirent's nameoff divided by 12 is the number of dirents in the block. The names follow
//! the dirents back to back; name *i* ends where name *i+1* starts and the last one ends at the end
//! of the block (or of the directory), minus trailing NUL padding. Names are sorted bytewise within a
//! block, and blocks are sorted by their first name.
//!
//! Readdir cookies: 0 is the start; an entry at (block `b`, index `i`) is resumed from with cookie
//! `((b << 16) | i) + 1`. The `.` entry that a "dot omitted" directory does not store is synthesized
//! at cookie 0.

use crate::inode::Inode;
use crate::util::{byte, corrupt, le16, le64, mul, to_u64, to_usize};
use crate::{DirEntry, Error, FileType, Filesystem, ReadAt};

/// Size of one dirent.
const DIRENT_SIZE: usize = 12;
/// Longest name.
pub(crate) const MAX_NAME: usize = 255;
/// Entries per block are below this (a 64 KiB block holds at most 5461 dirents).
const COOKIE_INDEX_BITS: u32 = 16;

/// One parsed entry, borrowing its name from the block buffer.
pub(crate) struct RawEntry<'a> {
    pub(crate) nid: u64,
    pub(crate) ftype: FileType,
    pub(crate) name: &'a [u8],
}

/// One directory block read into memory.
pub(crate) struct DirBlock {
    buf: Vec<u8>,
    count: usize,
    dir: u64,
    blk: u64,
}

impl DirBlock {
    fn parse(buf: Vec<u8>, dir: u64, blk: u64) -> Result<DirBlock, Error> {
        let len = buf.len();
        // +8 of the first dirent: nameoff, which also gives the number of dirents.
        let first = le16(&buf, 8)
            .map(usize::from)
            .ok_or_else(|| corrupt(format!("dir nid {dir} block {blk}: shorter than a dirent")))?;
        if first < DIRENT_SIZE || first >= len {
            return Err(corrupt(format!(
                "dir nid {dir} block {blk}: first nameoff {first} outside 12..{len}"
            )));
        }
        Ok(DirBlock {
            count: first / DIRENT_SIZE,
            buf,
            dir,
            blk,
        })
    }

    pub(crate) fn count(&self) -> usize {
        self.count
    }

    /// Entry `i` (< count), with its nameoff checked against its neighbours and the block.
    pub(crate) fn entry(&self, i: usize) -> Result<RawEntry<'_>, Error> {
        let (dir, blk) = (self.dir, self.blk);
        let bad = |what: String| corrupt(format!("dir nid {dir} block {blk} entry {i}: {what}"));
        if i >= self.count {
            return Err(bad("index past the dirent table".into()));
        }
        let base = i
            .checked_mul(DIRENT_SIZE)
            .ok_or_else(|| bad("index overflow".into()))?;
        let field = |off: usize| base.saturating_add(off);
        let raw_nid = le64(&self.buf, base).ok_or_else(|| bad("truncated".into()))?;
        let nameoff = le16(&self.buf, field(8))
            .map(usize::from)
            .ok_or_else(|| bad("truncated".into()))?;
        let ftype_raw = byte(&self.buf, field(10)).ok_or_else(|| bad("truncated".into()))?;
        let last = i.checked_add(1) == Some(self.count);
        let end = if last {
            self.buf.len()
        } else {
            le16(&self.buf, field(DIRENT_SIZE + 8))
                .map(usize::from)
                .ok_or_else(|| bad("truncated".into()))?
        };
        let table_end = self.count.saturating_mul(DIRENT_SIZE);
        if nameoff < table_end || nameoff >= end || end > self.buf.len() {
            return Err(bad(format!(
                "nameoff {nameoff} (next {end}) outside {table_end}..{}",
                self.buf.len()
            )));
        }
        let mut name = self
            .buf
            .get(nameoff..end)
            .ok_or_else(|| bad("name out of block".into()))?;
        if last {
            if let Some(nul) = name.iter().position(|&c| c == 0) {
                name = name.get(..nul).unwrap_or(&[]);
            }
        }
        if name.is_empty() {
            return Err(bad("empty name".into()));
        }
        if name.len() > MAX_NAME {
            return Err(bad(format!("name of {} bytes", name.len())));
        }
        if raw_nid >> 63 != 0 {
            return Err(bad(format!("metabox nid {raw_nid:#x}")));
        }
        let ftype = FileType::from_dirent(ftype_raw)
            .ok_or_else(|| bad(format!("file type {ftype_raw}")))?;
        Ok(RawEntry {
            nid: raw_nid,
            ftype,
            name,
        })
    }
}

impl Filesystem {
    /// Number of directory blocks of `ino`.
    pub(crate) fn dir_blocks(&self, ino: &Inode) -> u64 {
        ino.size().div_ceil(self.block_size())
    }

    /// Read and parse directory block `blk` of `ino`.
    pub(crate) fn dir_block(
        &self,
        dev: &mut dyn ReadAt,
        ino: &Inode,
        blk: u64,
    ) -> Result<DirBlock, Error> {
        let bsz = self.block_size();
        let off = mul(blk, bsz, "directory block")?;
        let buf = self.read_data(dev, ino, off, bsz)?;
        DirBlock::parse(buf, ino.nid, blk)
    }

    /// Find `name` in directory `dir_nid`: the target's nid and the type recorded in the dirent.
    pub fn lookup(
        &self,
        dev: &mut dyn ReadAt,
        dir_nid: u64,
        name: &[u8],
    ) -> Result<(u64, FileType), Error> {
        if name.len() > MAX_NAME {
            return Err(Error::NameTooLong);
        }
        if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
            return Err(Error::NotFound);
        }
        let ino = self.expect_dir(dev, dir_nid)?;
        if ino.dot_omitted && name == b"." {
            return Ok((dir_nid, FileType::Directory));
        }
        let nblocks = self.dir_blocks(&ino);
        if nblocks == 0 {
            return Err(Error::NotFound);
        }
        // Find the last block whose first name is <= name. Invariant: the answer is in [lo, hi).
        let (mut lo, mut hi) = (0u64, nblocks);
        while hi.saturating_sub(lo) > 1 {
            let mid = lo.saturating_add(hi.saturating_sub(lo) / 2);
            let block = self.dir_block(dev, &ino, mid)?;
            let first = block.entry(0)?;
            match first.name.cmp(name) {
                std::cmp::Ordering::Equal => return Ok((first.nid, first.ftype)),
                std::cmp::Ordering::Less => lo = mid,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        let block = self.dir_block(dev, &ino, lo)?;
        let (mut a, mut b) = (0usize, block.count());
        while a < b {
            let mid = a.saturating_add(b.saturating_sub(a) / 2);
            let e = block.entry(mid)?;
            match e.name.cmp(name) {
                std::cmp::Ordering::Equal => return Ok((e.nid, e.ftype)),
                std::cmp::Ordering::Less => a = mid.saturating_add(1),
                std::cmp::Ordering::Greater => b = mid,
            }
        }
        Err(Error::NotFound)
    }

    /// Up to `max` entries of directory `dir_nid`, starting at `cookie` (0 for the beginning, else a
    /// `next_cookie` from an earlier call). Includes `.` and `..`.
    pub fn readdir(
        &self,
        dev: &mut dyn ReadAt,
        dir_nid: u64,
        cookie: u64,
        max: usize,
    ) -> Result<Vec<DirEntry>, Error> {
        let ino = self.expect_dir(dev, dir_nid)?;
        if ino.size() == 0 {
            return Err(corrupt(format!("dir nid {dir_nid}: empty directory")));
        }
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        if cookie == 0 && ino.dot_omitted {
            out.push(DirEntry {
                nid: dir_nid,
                file_type: FileType::Directory,
                name: b".".to_vec(),
                next_cookie: 1,
            });
        }
        let pos = cookie.saturating_sub(1);
        let mut blk = pos >> COOKIE_INDEX_BITS;
        let mut idx = to_usize(pos & 0xffff, "cookie")?;
        let nblocks = self.dir_blocks(&ino);
        while blk < nblocks && out.len() < max {
            let block = self.dir_block(dev, &ino, blk)?;
            let count = block.count();
            while idx < count && out.len() < max {
                let e = block.entry(idx)?;
                let next = idx.saturating_add(1);
                let next_cookie = if next >= count {
                    cookie_of(blk.saturating_add(1), 0)
                } else {
                    cookie_of(blk, next)
                };
                out.push(DirEntry {
                    nid: e.nid,
                    file_type: e.ftype,
                    name: e.name.to_vec(),
                    next_cookie,
                });
                idx = next;
            }
            if idx >= count {
                blk = blk.saturating_add(1);
                idx = 0;
            }
        }
        Ok(out)
    }
}

/// Cookie that resumes at entry `idx` of block `blk`.
fn cookie_of(blk: u64, idx: usize) -> u64 {
    ((blk << COOKIE_INDEX_BITS) | (to_u64(idx) & 0xffff)).saturating_add(1)
}
