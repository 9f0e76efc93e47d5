//! Extended attributes: inline and shared entries, standard name prefixes and the long-prefix table.
//!
//! Inline xattr area (right after the inode; `12 + 4 * (i_xattr_icount - 1)` bytes when icount > 0):
//!
//! | off | size | field |
//! |---|---|---|
//! | 0 | 4 | h_name_filter (bloom filter, ignored) |
//! | 4 | 1 | h_shared_count |
//! | 5 | 7 | reserved |
//! | 12 | 4 × shared_count | shared xattr ids (entry at `xattr_blkaddr * blksz + id * 4`) |
//! | … | | inline entries, each padded to 4 bytes |
//!
//! Entry: +0 e_name_len (u8), +1 e_name_index (u8; bit 7 = long prefix table index), +2
//! e_value_size (u16 LE), +4 the name without its prefix, then the value.
//!
//! Long prefix table (`xattr_prefix_count` records from byte `xattr_prefix_start * 4` of the metadata,
//! or of the packed inode's data when there is one and the PLAIN_XATTR_PFX compat bit is clear): each
//! record starts 4-byte aligned with a u16 length, then that many bytes: a standard prefix index
//! followed by the infix appended to that prefix.

use crate::inode::Inode;
use crate::superblock::{
    COMPAT_PLAIN_XATTR_PFX, COMPAT_SHARED_EA_IN_METABOX, INCOMPAT_XATTR_PREFIXES,
};
use crate::util::{
    add, byte, corrupt, le16, le32, mul, read_vec, round_up, to_u64, to_usize, Fixed,
};
use crate::{Error, Filesystem, ReadAt};

/// Size of the inline xattr header.
const HEADER_SIZE: u64 = 12;
/// Size of an entry header.
const ENTRY_HEADER: u64 = 4;

/// The standard prefix of `index`, or `None` for an index this reader does not know.
fn standard_prefix(index: u8) -> Option<&'static [u8]> {
    Some(match index {
        1 => b"user.",
        2 => b"system.posix_acl_access",
        3 => b"system.posix_acl_default",
        4 => b"trusted.",
        5 => b"lustre.",
        6 => b"security.",
        _ => return None,
    })
}

/// One decoded xattr entry.
struct Entry {
    /// Full name with its prefix; `None` when the prefix index is unknown (such entries are skipped).
    name: Option<Vec<u8>>,
    /// Absolute device offset of the value.
    value_pos: u64,
    value_len: u16,
    /// Size of the entry including padding.
    total: u64,
}

impl Filesystem {
    /// Decode the entry whose 4-byte header is `head`, located at `pos`.
    fn decode_entry(&self, head: &[u8], name_bytes: &[u8], pos: u64) -> Result<Entry, Error> {
        let f = Fixed(head);
        let name_len = f.u8(0); // +0 e_name_len
        let index = f.u8(1); // +1 e_name_index
        let value_len = f.u16(2); // +2 e_value_size
        let prefix: Option<&[u8]> = if index & 0x80 != 0 {
            let k = usize::from(index & 0x7f);
            match &self.prefixes {
                Ok(table) => Some(table.get(k).map(Vec::as_slice).ok_or_else(|| {
                    corrupt(format!("xattr at {pos}: long prefix {k} not in table"))
                })?),
                Err(e) => return Err(e.clone()),
            }
        } else {
            standard_prefix(index)
        };
        let name = prefix.map(|p| {
            let mut n = p.to_vec();
            n.extend_from_slice(name_bytes);
            n
        });
        let value_pos = add(
            pos,
            ENTRY_HEADER.saturating_add(u64::from(name_len)),
            "xattr value",
        )?;
        let raw_total = ENTRY_HEADER
            .saturating_add(u64::from(name_len))
            .saturating_add(u64::from(value_len));
        Ok(Entry {
            name,
            value_pos,
            value_len,
            total: round_up(raw_total, 4, "xattr entry")?,
        })
    }

    /// Walk all xattrs of `ino` (inline first, then shared), calling `f(name, value_pos, value_len)`
    /// for each one with a known prefix; stop early when `f` returns `true`.
    fn for_each_xattr(
        &self,
        dev: &mut dyn ReadAt,
        ino: &Inode,
        f: &mut dyn FnMut(&[u8], u64, u16) -> bool,
    ) -> Result<bool, Error> {
        if ino.xattr_size == 0 {
            return Ok(false);
        }
        let nid = ino.nid;
        if ino.xattr_size < HEADER_SIZE {
            return Err(corrupt(format!("nid {nid}: xattr area too small")));
        }
        let area = read_vec(dev, ino.xattr_pos, to_usize(ino.xattr_size, "xattr area")?)?;
        // +4 h_shared_count
        let shared = u64::from(byte(&area, 4).unwrap_or(0));
        let shared_end = HEADER_SIZE.saturating_add(shared.saturating_mul(4));
        if shared_end > ino.xattr_size {
            return Err(corrupt(format!(
                "nid {nid}: {shared} shared xattrs do not fit the xattr area"
            )));
        }
        // Inline entries. Each step advances by at least 4 bytes, so the loop is bounded by the size.
        let mut p = shared_end;
        while p < ino.xattr_size {
            let at = to_usize(p, "xattr offset")?;
            let head = area
                .get(at..at.saturating_add(4))
                .ok_or_else(|| corrupt(format!("nid {nid}: truncated xattr entry at +{p}")))?;
            let name_len = usize::from(byte(head, 0).unwrap_or(0));
            let name_at = at.saturating_add(4);
            let name_bytes = area
                .get(name_at..name_at.saturating_add(name_len))
                .ok_or_else(|| corrupt(format!("nid {nid}: xattr name past the area at +{p}")))?;
            let pos = add(ino.xattr_pos, p, "xattr")?;
            let e = self
                .decode_entry(head, name_bytes, pos)
                .map_err(|e| annotate(e, nid))?;
            let next = p.saturating_add(e.total);
            if next > ino.xattr_size {
                return Err(corrupt(format!(
                    "nid {nid}: xattr entry at +{p} runs past the xattr area"
                )));
            }
            if let Some(name) = &e.name {
                if f(name, e.value_pos, e.value_len) {
                    return Ok(true);
                }
            }
            p = next;
        }
        // Shared entries.
        for k in 0..shared {
            let off = to_usize(HEADER_SIZE.saturating_add(k.saturating_mul(4)), "xattr id")?;
            let id = le32(&area, off).unwrap_or(0);
            let (name, value_pos, value_len) =
                self.shared_xattr(dev, id).map_err(|e| annotate(e, nid))?;
            if let Some(name) = name {
                if f(&name, value_pos, value_len) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Load shared xattr `id`: (full name, value position, value length).
    fn shared_xattr(
        &self,
        dev: &mut dyn ReadAt,
        id: u32,
    ) -> Result<(Option<Vec<u8>>, u64, u16), Error> {
        if self.sb.feature_compat & COMPAT_SHARED_EA_IN_METABOX != 0 {
            return Err(Error::Unsupported("shared xattrs in the metabox".into()));
        }
        let what = format!("shared xattr {id}");
        let base = mul(u64::from(self.sb.xattr_blkaddr), self.block_size(), &what)?;
        let pos = add(base, mul(u64::from(id), 4, &what)?, &what)?;
        if add(pos, ENTRY_HEADER, &what)? > self.sb.primary_size {
            return Err(corrupt(format!("{what} past end of metadata")));
        }
        let head = read_vec(dev, pos, 4)?;
        let name_len = usize::from(byte(&head, 0).unwrap_or(0));
        let value_len = u64::from(le16(&head, 2).unwrap_or(0));
        let name_pos = add(pos, ENTRY_HEADER, &what)?;
        let end = add(add(name_pos, to_u64(name_len), &what)?, value_len, &what)?;
        if end > self.sb.primary_size {
            return Err(corrupt(format!("{what} past end of metadata")));
        }
        let name_bytes = read_vec(dev, name_pos, name_len)?;
        let e = self.decode_entry(&head, &name_bytes, pos)?;
        Ok((e.name, e.value_pos, e.value_len))
    }

    /// Full names (with prefixes) of all xattrs of `nid`.
    pub fn listxattr(&self, dev: &mut dyn ReadAt, nid: u64) -> Result<Vec<Vec<u8>>, Error> {
        let ino = self.load_inode(dev, nid)?;
        let mut names = Vec::new();
        self.for_each_xattr(dev, &ino, &mut |name, _, _| {
            names.push(name.to_vec());
            false
        })?;
        Ok(names)
    }

    /// Value of xattr `name` (full name, e.g. `b"user.foo"`) of `nid`.
    pub fn getxattr(&self, dev: &mut dyn ReadAt, nid: u64, name: &[u8]) -> Result<Vec<u8>, Error> {
        let ino = self.load_inode(dev, nid)?;
        let mut found = None;
        self.for_each_xattr(dev, &ino, &mut |n, pos, len| {
            if n == name {
                found = Some((pos, len));
                true
            } else {
                false
            }
        })?;
        let (pos, len) = found.ok_or(Error::NoAttr)?;
        read_vec(dev, pos, usize::from(len))
    }

    /// Load the long xattr name prefixes (expanded to full prefixes).
    pub(crate) fn load_prefixes(&self, dev: &mut dyn ReadAt) -> Result<Vec<Vec<u8>>, Error> {
        let sb = &self.sb;
        if sb.feature_incompat & INCOMPAT_XATTR_PREFIXES == 0 || sb.xattr_prefix_count == 0 {
            return Ok(Vec::new());
        }
        let packed = if sb.packed_nid != 0 && sb.feature_compat & COMPAT_PLAIN_XATTR_PFX == 0 {
            Some(self.load_inode(dev, sb.packed_nid)?)
        } else {
            None
        };
        let mut pos = mul(u64::from(sb.xattr_prefix_start), 4, "xattr_prefix_start")?;
        let mut out = Vec::with_capacity(usize::from(sb.xattr_prefix_count));
        for k in 0..sb.xattr_prefix_count {
            pos = round_up(pos, 4, "xattr prefix")?;
            let len_raw = self.prefix_bytes(dev, packed.as_ref(), pos, 2)?;
            let len = le16(&len_raw, 0).unwrap_or(0);
            pos = add(pos, 2, "xattr prefix")?;
            let rec = self.prefix_bytes(dev, packed.as_ref(), pos, usize::from(len))?;
            pos = add(pos, u64::from(len), "xattr prefix")?;
            let base =
                byte(&rec, 0).ok_or_else(|| corrupt(format!("xattr prefix {k}: empty record")))?;
            let std = standard_prefix(base)
                .ok_or_else(|| corrupt(format!("xattr prefix {k}: base index {base}")))?;
            let mut full = std.to_vec();
            full.extend_from_slice(rec.get(1..).unwrap_or(&[]));
            out.push(full);
        }
        Ok(out)
    }

    /// `len` bytes of the prefix table at `pos`, from the packed inode or the metadata.
    fn prefix_bytes(
        &self,
        dev: &mut dyn ReadAt,
        packed: Option<&Inode>,
        pos: u64,
        len: usize,
    ) -> Result<Vec<u8>, Error> {
        let buf = match packed {
            Some(ino) => self.read_data(dev, ino, pos, to_u64(len))?,
            None => {
                if add(pos, to_u64(len), "xattr prefix")? > self.sb.primary_size {
                    return Err(corrupt("xattr prefix table past end of metadata"));
                }
                read_vec(dev, pos, len)?
            }
        };
        if buf.len() != len {
            return Err(corrupt("xattr prefix table past end of the packed inode"));
        }
        Ok(buf)
    }
}

/// Add the nid to corruption messages that lack it.
fn annotate(e: Error, nid: u64) -> Error {
    match e {
        Error::Corrupt(m) if !m.starts_with("nid ") => Error::Corrupt(format!("nid {nid}: {m}")),
        other => other,
    }
}
