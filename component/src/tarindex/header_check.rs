//! Does the tar vouch for one file of the index? (issue 16)
//!
//! In a tar, the 512-byte header of a regular member sits directly before its data, and
//! any PAX (`x`) or GNU long-name (`L`, `K`) records of the member sit directly before
//! that header. So for a regular file of the index whose data starts at tar offset D:
//!
//! 1. its data must be one contiguous run of the tar (the index maps it as one piece);
//! 2. the block at D - 512 must be a valid tar header (checksum) of a regular member
//!    (type `0`, `7`, or NUL without a trailing `/`);
//! 3. the member's size (PAX `size` over the header's) must be the file's size;
//! 4. the member's name (PAX `path`, else a GNU long name, else the header's
//!    `prefix/name`), looked up in the index's own tree, must lead to this very inode:
//!    so a hard link passes under any of its names, and a name the header had to
//!    truncate is taken from the records before it.
//!
//! The records before the header are only looked for when the header alone does not
//! match (a truncated name, a size over 8 GiB); the walk back stops at the previous
//! member's header and never goes further than [`MAX_EXTENSION_SPAN`].
//!
//! The header bytes are parsed by the index builder's tar parser (`build::tar`).

use erofs_image::Filesystem as Image;

use super::device::Device;
use crate::build::tar::header::{parse_block, Block, RawHeader, BLOCK};
use crate::build::tar::pax;
use crate::error::{Error, Kind, Result};

/// Every mismatch message starts with this.
pub const MISMATCH: &str = "tarindex does not match the blob";

/// How far before a member header the walk back looks for its PAX and GNU records: the
/// builder accepts PAX headers up to 8 MiB, but real ones hold a path and a few xattrs
/// (well under 64 KiB); 1 MiB covers those with a wide margin at a bounded cost, and is
/// only spent on the failure path or for records that large.
pub const MAX_EXTENSION_SPAN: u64 = 1 << 20;

/// The first window read when walking back: 4 KiB holds a usual PAX header (one header
/// block and one or two blocks of records) in one read.
const FIRST_WINDOW: u64 = 4096;

/// Extension records chained before one member: PAX, GNU long name and long link, and a
/// global PAX header; more is not a tar any writer makes.
const MAX_EXTENSIONS: usize = 4;

const BLOCK64: u64 = BLOCK as u64;

/// What is wrong, and at which tar offset (the header's, or the data's when there is no
/// room for a header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub tar_offset: u64,
    pub problem: Problem,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The index maps the data as more than one piece (or with holes).
    Scattered { pieces: usize },
    /// The data starts before the tar, or at its very start.
    NoRoom,
    /// The block before the data is not a valid header, or is the end-of-archive marker.
    NoHeader { why: String },
    /// A valid header of another type.
    NotRegular { typeflag: u8 },
    /// The member's size is not the file's.
    Size { tar: u64, index: u64 },
    /// The member's name leads elsewhere in the tree (or nowhere).
    Name { tar: Vec<u8> },
}

impl Mismatch {
    /// The error for file `path` (the path that reached it, or how else to name it).
    pub fn to_error(&self, path: &str) -> Error {
        let at = self.tar_offset;
        let what = match &self.problem {
            Problem::Scattered { pieces } => format!(
                "the data of {path} is not one run of the tar ({pieces} pieces from tar offset {at})"
            ),
            Problem::NoRoom => format!(
                "the data of {path} starts at tar offset {at}, with no room for a tar header before it"
            ),
            Problem::NoHeader { why } => {
                format!("no tar header for {path} at tar offset {at} ({why})")
            }
            Problem::NotRegular { typeflag } => format!(
                "the tar header for {path} at tar offset {at} has type flag {:?}, not a regular file",
                char::from(*typeflag)
            ),
            Problem::Size { tar, index } => format!(
                "the tar header for {path} at tar offset {at} gives size {tar}, the index {index}"
            ),
            Problem::Name { tar } => format!(
                "the tar header at tar offset {at} is for {}, not for {path}",
                shown(tar)
            ),
        };
        Error::new(Kind::Mismatch, format!("{MISMATCH}: {what}"))
            .with_field("tar header")
            .at(at)
    }
}

/// A tar name for a message: printable ASCII as is, anything else escaped.
pub fn shown(name: &[u8]) -> String {
    name.escape_ascii().to_string()
}

/// Check regular file `nid` (of `size` bytes) against the tar header before its data.
/// `Ok(Err(_))` is a mismatch; `Err(_)` a failure to read (the check did not happen).
pub fn check_file(
    image: &Image,
    dev: &mut Device,
    nid: u64,
    size: u64,
) -> Result<std::result::Result<(), Mismatch>> {
    if size == 0 {
        // No data, so nothing in the tar to find: an empty file's header is not addressed.
        return Ok(Ok(()));
    }
    let meta_size = dev.meta_size();
    let extents = image
        .physical_extents(dev, nid, 0, size)
        .map_err(|e| dev.lift(e))?;
    let data = match extents.as_slice() {
        [one] if one.len == size => one.physical,
        _ => None,
    };
    let Some(data) = data else {
        let first = extents.iter().find_map(|x| x.physical).unwrap_or(meta_size);
        return Ok(Err(Mismatch {
            tar_offset: first.saturating_sub(meta_size),
            problem: Problem::Scattered {
                pieces: extents.len(),
            },
        }));
    };
    let Some(data) = data.checked_sub(meta_size).filter(|&d| d >= BLOCK64) else {
        return Ok(Err(Mismatch {
            tar_offset: data.saturating_sub(meta_size),
            problem: Problem::NoRoom,
        }));
    };
    let at = data - BLOCK64;
    let header = match read_header(dev, at)? {
        Ok(h) => h,
        Err(problem) => {
            return Ok(Err(Mismatch {
                tar_offset: at,
                problem,
            }))
        }
    };
    let regular = matches!(header.typeflag, b'0' | b'7')
        || (header.typeflag == 0 && !header.path.ends_with(b"/"));
    if !regular {
        return Ok(Err(Mismatch {
            tar_offset: at,
            problem: Problem::NotRegular {
                typeflag: header.typeflag,
            },
        }));
    }
    let mut member = Member {
        path: header.path,
        size: header.size,
        from_extension: (false, false),
    };
    let mut next = at;
    let mut window = Window::new(at);
    for _ in 0..=MAX_EXTENSIONS {
        let size_ok = member.size == size;
        if size_ok && leads_to(image, dev, &member.path, nid)? {
            return Ok(Ok(()));
        }
        // Look for one more record before `next` (the nearest record wins: it was
        // written last, as a reader applies them).
        match window.extension_before(dev, next)? {
            Some(ext) => {
                next = ext.at;
                ext.apply(&mut member)?;
            }
            None => break,
        }
    }
    let problem = if member.size != size {
        Problem::Size {
            tar: member.size,
            index: size,
        }
    } else {
        Problem::Name { tar: member.path }
    };
    Ok(Err(Mismatch {
        tar_offset: at,
        problem,
    }))
}

/// The name and size of the member, with the records found so far applied.
struct Member {
    path: Vec<u8>,
    size: u64,
    /// Whether the path and the size already came from a (nearer) record.
    from_extension: (bool, bool),
}

/// The 512 bytes at tar offset `at` as a member header, or why they are not one.
fn read_header(dev: &mut Device, at: u64) -> Result<std::result::Result<RawHeader, Problem>> {
    let bytes = dev.pread_tar(at, BLOCK64)?;
    let Ok(block) = <[u8; BLOCK]>::try_from(bytes.as_slice()) else {
        return Ok(Err(Problem::NoHeader {
            why: "the tar ends there".into(),
        }));
    };
    Ok(match parse_block(&block, at) {
        Ok(Block::Header(h)) => Ok(h),
        Ok(Block::Zero) => Err(Problem::NoHeader {
            why: "a zero block".into(),
        }),
        Err(e) => Err(Problem::NoHeader { why: e.message() }),
    })
}

/// Does tar name `name` lead, in the index's tree, to inode `nid`? Leading `/` and `./`,
/// empty and `.` components are dropped, as tar readers do.
fn leads_to(image: &Image, dev: &mut Device, name: &[u8], nid: u64) -> Result<bool> {
    let mut at = image.root_nid();
    let mut any = false;
    for part in name.split(|&b| b == b'/') {
        if part.is_empty() || part == b"." {
            continue;
        }
        any = true;
        match image.lookup(dev, at, part) {
            Ok((child, _)) => at = child,
            Err(e) => {
                let e = dev.lift(e);
                return match e.kind {
                    Kind::NotFound | Kind::NotDirectory | Kind::NameTooLong => Ok(false),
                    _ => Err(e),
                };
            }
        }
    }
    Ok(any && at == nid)
}

/// An extension record found before a member header.
struct Extension {
    /// Tar offset of the record's own header.
    at: u64,
    typeflag: u8,
    data: Vec<u8>,
}

impl Extension {
    fn apply(self, member: &mut Member) -> Result<()> {
        match self.typeflag {
            b'x' => {
                let p = pax::parse(&self.data, self.at)?;
                if let (Some(path), false) = (p.path, member.from_extension.0) {
                    member.path = path;
                    member.from_extension.0 = true;
                }
                if let (Some(size), false) = (p.size, member.from_extension.1) {
                    member.size = size;
                    member.from_extension.1 = true;
                }
            }
            b'L' if !member.from_extension.0 => {
                // GNU writes the name and a NUL; trailing NULs are not part of it.
                let end = self.data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
                member.path = self.data.get(..end).unwrap_or_default().to_vec();
                member.from_extension.0 = true;
            }
            // A long link name, a later long name or a global header: nothing for the
            // member's own name or size.
            _ => {}
        }
        Ok(())
    }
}

/// The tar bytes just before a member header, read backwards in growing pieces.
struct Window {
    /// `bytes` are tar offsets `[start, end)`.
    start: u64,
    end: u64,
    bytes: Vec<u8>,
}

impl Window {
    fn new(end: u64) -> Self {
        Self {
            start: end,
            end,
            bytes: Vec::new(),
        }
    }

    /// Extend the window back to at least `want` (never before the walk-back limit);
    /// false when it cannot grow.
    fn grow_to(&mut self, dev: &mut Device, want: u64) -> Result<bool> {
        let floor = self.end.saturating_sub(MAX_EXTENSION_SPAN);
        let have = self.end - self.start;
        let target = want
            .min(
                self.end
                    .saturating_sub(have.saturating_mul(2).max(FIRST_WINDOW)),
            )
            .max(floor);
        if target >= self.start {
            return Ok(false);
        }
        let mut more = dev.pread_tar(target, self.start - target)?;
        if more.len() as u64 != self.start - target {
            return Err(Error::internal(format!(
                "header check: tar read of {} bytes at {target} came back with {}",
                self.start - target,
                more.len()
            )));
        }
        more.extend_from_slice(&self.bytes);
        self.bytes = more;
        self.start = target;
        Ok(true)
    }

    fn get(&self, from: u64, len: u64) -> Option<&[u8]> {
        let a = usize::try_from(from.checked_sub(self.start)?).ok()?;
        let b = a.checked_add(usize::try_from(len).ok()?)?;
        self.bytes.get(a..b)
    }

    /// The extension record whose data ends exactly at `next`, if there is one: scan the
    /// blocks before `next`, nearest first, until one is a header (a record whose padded
    /// data reaches `next` is the answer; any other header is the previous member, so
    /// there is no record) or the walk-back limit is reached.
    fn extension_before(&mut self, dev: &mut Device, next: u64) -> Result<Option<Extension>> {
        let mut cand = next;
        while cand >= BLOCK64 {
            cand -= BLOCK64;
            if cand < self.start && !self.grow_to(dev, cand)? {
                return Ok(None);
            }
            let Some(block) = self
                .get(cand, BLOCK64)
                .and_then(|b| <[u8; BLOCK]>::try_from(b).ok())
            else {
                return Ok(None);
            };
            let Ok(Block::Header(h)) = parse_block(&block, cand) else {
                continue;
            };
            if !matches!(h.typeflag, b'x' | b'g' | b'L' | b'K') {
                return Ok(None);
            }
            let padded = h.size.div_ceil(BLOCK64).saturating_mul(BLOCK64);
            if cand.saturating_add(BLOCK64).saturating_add(padded) != next {
                // A record that does not end at our header: the previous member's.
                return Ok(None);
            }
            let data = self
                .get(cand + BLOCK64, h.size)
                .map(<[u8]>::to_vec)
                .unwrap_or_default();
            return Ok(Some(Extension {
                at: cand,
                typeflag: h.typeflag,
                data,
            }));
        }
        Ok(None)
    }
}

#[cfg(test)]
#[path = "header_check_tests.rs"]
mod tests;
