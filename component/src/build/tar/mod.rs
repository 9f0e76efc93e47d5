//! A streaming tar reader for the index builder: feed it the uncompressed tar in pieces of
//! any size, and it reports each archive member with its metadata and the tar offset of its
//! data. File data itself is skipped, never buffered; only extension headers (PAX, GNU long
//! names) are collected, and those are capped.
//!
//! Formats: POSIX ustar and pax (`x`, `g`), GNU (`L`/`K` long names, base-256 numbers),
//! V7 (no magic; type flag NUL is a regular file, or a directory if the name ends in `/`).
//!
//! Treatments, each deliberate:
//! - End of archive: two consecutive zero blocks. A lone zero block is skipped. A clean end
//!   of input at a header boundary without the marker is accepted as the end (many
//!   streaming writers omit it); an end anywhere else is a "truncated" error.
//! - Header-only types (links, directories, devices, fifos) have no data whatever their
//!   `size` says, as GNU tar, Python tarfile and Go's archive/tar read them.
//! - Refused (`Unsupported`): sparse files (old GNU `S`, PAX `GNU.sparse.*`), multi-volume
//!   (`M`), old GNU long names (`N`), and unknown type flags.
//! - Skipped: `V` volume labels (a label, not a file).
//! - GNU `D` dump directories are directories; their listing data is skipped.

pub mod header;
pub mod pax;

use crate::error::{Error, Result};
use header::{Block, RawHeader, BLOCK};
use pax::Pax;

/// PAX headers over 8 MiB are refused: xattr values are at most 64 KiB in EROFS, so this is
/// room for over a hundred of them while keeping a hostile header from using the memory cap.
pub const MAX_PAX_BYTES: u64 = 8 << 20;
/// GNU long names/links over 64 KiB are refused (Linux paths are at most 4 KiB).
pub const MAX_LONG_NAME_BYTES: u64 = 64 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Regular,
    HardLink,
    Symlink,
    CharDevice,
    BlockDevice,
    Directory,
    Fifo,
}

/// One archive member, with every extension header applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Tar offset of the member's own header (after any PAX/GNU extension headers).
    pub offset: u64,
    /// Exactly as archived (normalised later, by the tree).
    pub path: Vec<u8>,
    /// Hard-link or symlink target, as archived.
    pub link: Vec<u8>,
    pub kind: Kind,
    /// Permission bits with setuid/setgid/sticky (0o7777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// Data bytes (regular files only; 0 for every other kind).
    pub size: u64,
    /// Tar offset of the first data byte (always a multiple of 512).
    pub data_offset: u64,
    pub dev_major: u32,
    pub dev_minor: u32,
    /// Extended attributes in archive order (a later duplicate name wins).
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Collecting {
    Pax,
    GlobalPax,
    LongName,
    LongLink,
}

enum State {
    /// Filling a header block: `fill` bytes of `block` are in.
    Header {
        block: Box<[u8; BLOCK]>,
        fill: usize,
    },
    /// Skipping `remaining` bytes of member data and padding.
    Skip { remaining: u64, entry_offset: u64 },
    /// Collecting an extension header's data (`remaining` more bytes, then `pad`).
    Collect {
        what: Collecting,
        header_offset: u64,
        data: Vec<u8>,
        remaining: u64,
        pad: u64,
    },
    /// The end-of-archive marker was read; later bytes are not tar.
    Ended,
}

/// Extension headers seen since the last member.
#[derive(Default)]
struct Pending {
    pax: Option<Pax>,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    first_offset: Option<u64>,
}

pub struct TarReader {
    state: State,
    /// Tar bytes consumed so far.
    offset: u64,
    zero_blocks: u8,
    pending: Pending,
    global: Pax,
    /// Tar offset just past the end-of-archive marker, once read.
    end: Option<u64>,
    /// Members reported.
    pub entries: u64,
    /// Things skipped on purpose (volume labels), for the caller's report.
    pub notes: Vec<String>,
}

impl Default for TarReader {
    fn default() -> Self {
        Self::new()
    }
}

impl TarReader {
    pub fn new() -> Self {
        Self {
            state: State::Header {
                block: Box::new([0u8; BLOCK]),
                fill: 0,
            },
            offset: 0,
            zero_blocks: 0,
            pending: Pending::default(),
            global: Pax::default(),
            end: None,
            entries: 0,
            notes: Vec::new(),
        }
    }

    /// True once the end-of-archive marker has been read.
    pub fn ended(&self) -> bool {
        matches!(self.state, State::Ended)
    }

    /// Consume the next piece of the tar stream, reporting each member to `emit`.
    pub fn feed(
        &mut self,
        mut data: &[u8],
        emit: &mut dyn FnMut(Entry) -> Result<()>,
    ) -> Result<()> {
        while !data.is_empty() {
            match &mut self.state {
                State::Ended => return Ok(()),
                State::Header { block, fill } => {
                    let take = (BLOCK - *fill).min(data.len());
                    block[*fill..*fill + take].copy_from_slice(&data[..take]);
                    *fill += take;
                    data = &data[take..];
                    self.offset += take as u64;
                    if *fill == BLOCK {
                        let full: [u8; BLOCK] = **block;
                        *fill = 0;
                        let at = self.offset - BLOCK as u64;
                        self.header(&full, at, emit)?;
                    }
                }
                State::Skip { remaining, .. } => {
                    let take = (*remaining).min(data.len() as u64);
                    *remaining -= take;
                    data = &data[take as usize..];
                    self.offset += take;
                    if *remaining == 0 {
                        self.state = header_state();
                    }
                }
                State::Collect {
                    what,
                    header_offset,
                    data: collected,
                    remaining,
                    pad,
                } => {
                    let take = (*remaining).min(data.len() as u64) as usize;
                    collected.extend_from_slice(&data[..take]);
                    *remaining -= take as u64;
                    data = &data[take..];
                    self.offset += take as u64;
                    if *remaining == 0 {
                        let (what, at, bytes, pad) =
                            (*what, *header_offset, std::mem::take(collected), *pad);
                        self.extension(what, at, bytes)?;
                        self.state = if pad == 0 {
                            header_state()
                        } else {
                            State::Skip {
                                remaining: pad,
                                entry_offset: at,
                            }
                        };
                    }
                }
            }
        }
        Ok(())
    }

    /// The input has ended. Returns the tar offset where parsing stopped (just past the
    /// end-of-archive marker, or the end of the input when the marker is missing).
    pub fn finish(&self) -> Result<u64> {
        match &self.state {
            State::Ended => Ok(self.end.unwrap_or(self.offset)),
            State::Header { fill: 0, .. } => {
                if let Some(at) = self.pending.first_offset {
                    return Err(Error::bad(format!(
                        "tar: truncated archive: the extension header at offset {at} is not followed by a member (input ends at {})",
                        self.offset
                    )));
                }
                Ok(self.offset)
            }
            State::Header { fill, .. } => Err(Error::bad(format!(
                "tar: truncated header at offset {}: the input ends after {fill} of its 512 bytes",
                self.offset - *fill as u64
            ))),
            State::Skip {
                remaining,
                entry_offset,
            } => Err(Error::bad(format!(
                "tar: truncated archive: the data of the entry at offset {entry_offset} runs past the end of the input at {} ({remaining} bytes missing)",
                self.offset
            ))),
            State::Collect {
                header_offset,
                remaining,
                ..
            } => Err(Error::bad(format!(
                "tar: truncated archive: the extension header at offset {header_offset} runs past the end of the input at {} ({remaining} bytes missing)",
                self.offset
            ))),
        }
    }

    fn header(
        &mut self,
        block: &[u8; BLOCK],
        at: u64,
        emit: &mut dyn FnMut(Entry) -> Result<()>,
    ) -> Result<()> {
        let raw = match header::parse_block(block, at)? {
            Block::Zero => {
                if let Some(first) = self.pending.first_offset {
                    return Err(Error::bad(format!(
                        "tar: the extension header at offset {first} is followed by a zero block at offset {at} instead of a member"
                    )));
                }
                self.zero_blocks += 1;
                if self.zero_blocks >= 2 {
                    // Both halves of the end-of-archive marker: stop here.
                    self.end = Some(self.offset);
                    self.state = State::Ended;
                }
                return Ok(());
            }
            Block::Header(raw) => raw,
        };
        self.zero_blocks = 0;
        let data_offset = self.offset;
        let padded = |size: u64| -> Result<u64> {
            size.checked_add(BLOCK as u64 - 1)
                .map(|s| s / BLOCK as u64 * BLOCK as u64)
                .filter(|s| data_offset.checked_add(*s).is_some())
                .ok_or_else(|| {
                    Error::bad(format!(
                        "tar: header at offset {at}: size {size} runs past any possible archive end"
                    ))
                })
        };
        let collect = |this: &mut Self, what: Collecting, cap: u64| -> Result<()> {
            if raw.size > cap {
                return Err(Error::unsupported(format!(
                    "tar: extension header at offset {at} (type {:?}) holds {} bytes; at most {cap} are accepted",
                    raw.typeflag as char, raw.size
                )));
            }
            this.pending.first_offset.get_or_insert(at);
            let pad = padded(raw.size)? - raw.size;
            this.state = if raw.size == 0 {
                this.extension(what, at, Vec::new())?;
                if pad == 0 {
                    header_state()
                } else {
                    State::Skip {
                        remaining: pad,
                        entry_offset: at,
                    }
                }
            } else {
                State::Collect {
                    what,
                    header_offset: at,
                    data: Vec::with_capacity(raw.size.min(64 << 10) as usize),
                    remaining: raw.size,
                    pad,
                }
            };
            Ok(())
        };
        let kind = match raw.typeflag {
            b'x' => return collect(self, Collecting::Pax, MAX_PAX_BYTES),
            b'g' => return collect(self, Collecting::GlobalPax, MAX_PAX_BYTES),
            b'L' => return collect(self, Collecting::LongName, MAX_LONG_NAME_BYTES),
            b'K' => return collect(self, Collecting::LongLink, MAX_LONG_NAME_BYTES),
            b'0' | b'7' | 0 => Kind::Regular,
            b'1' => Kind::HardLink,
            b'2' => Kind::Symlink,
            b'3' => Kind::CharDevice,
            b'4' => Kind::BlockDevice,
            b'5' | b'D' => Kind::Directory,
            b'6' => Kind::Fifo,
            b'V' => {
                self.notes.push(format!(
                    "tar: volume label at offset {at} ({:?}) skipped",
                    crate::build::tree::shown(&raw.path)
                ));
                self.pending = Pending::default();
                let skip = padded(raw.size)?;
                self.state = skip_state(skip, at);
                return Ok(());
            }
            b'S' => {
                return Err(Error::unsupported(format!(
                    "tar: entry {:?} at offset {at} is an old-GNU sparse file (type 'S'), which the index cannot map",
                    crate::build::tree::shown(&raw.path)
                )))
            }
            other => {
                return Err(Error::unsupported(format!(
                    "tar: entry {:?} at offset {at} has type flag {:?}, which is not supported",
                    crate::build::tree::shown(&raw.path),
                    other as char
                )))
            }
        };
        let pending = std::mem::take(&mut self.pending);
        let entry = self.entry(raw, kind, at, data_offset, pending)?;
        let skip = padded(entry.size)?;
        self.entries += 1;
        emit(entry)?;
        self.state = skip_state(skip, at);
        Ok(())
    }

    /// Combine a member header with the extension headers before it.
    fn entry(
        &self,
        raw: RawHeader,
        kind: Kind,
        at: u64,
        data_offset: u64,
        pending: Pending,
    ) -> Result<Entry> {
        let pax = pending.pax.unwrap_or_default().over(&self.global);
        let path = pax.path.or(pending.long_name).unwrap_or(raw.path);
        let name = crate::build::tree::shown(&path);
        if pax.sparse {
            return Err(Error::unsupported(format!(
                "tar: entry {name:?} at offset {at} is a PAX sparse file (GNU.sparse.*), which the index cannot map"
            )));
        }
        // Pre-POSIX archivers mark a directory by a trailing slash on an old-style regular
        // member (type flag NUL), as Python tarfile and Go archive/tar read it.
        let kind = if kind == Kind::Regular && raw.typeflag == 0 && path.ends_with(b"/") {
            Kind::Directory
        } else {
            kind
        };
        let link = pax.linkpath.or(pending.long_link).unwrap_or(raw.link);
        let too_big = |field: &str, v: u64| {
            Error::unsupported(format!(
                "tar: entry {name:?} at offset {at}: {field} {v} does not fit EROFS (at most {})",
                u32::MAX
            ))
        };
        let uid = pax.uid.unwrap_or(raw.uid);
        let gid = pax.gid.unwrap_or(raw.gid);
        let uid = u32::try_from(uid).map_err(|_| too_big("uid", uid))?;
        let gid = u32::try_from(gid).map_err(|_| too_big("gid", gid))?;
        let (mtime, mtime_nsec) = pax.mtime.unwrap_or((raw.mtime, 0));
        let size = if kind == Kind::Regular {
            pax.size.unwrap_or(raw.size)
        } else {
            0
        };
        let (dev_major, dev_minor) = if matches!(kind, Kind::CharDevice | Kind::BlockDevice) {
            // The Linux dev_t that EROFS stores has 12 bits of major and 20 of minor.
            if raw.dev_major >= 1 << 12 || raw.dev_minor >= 1 << 20 {
                return Err(Error::unsupported(format!(
                    "tar: entry {name:?} at offset {at}: device {}:{} does not fit a Linux dev_t (major < 4096, minor < 1048576)",
                    raw.dev_major, raw.dev_minor
                )));
            }
            (raw.dev_major as u32, raw.dev_minor as u32)
        } else {
            (0, 0)
        };
        Ok(Entry {
            offset: at,
            path,
            link,
            kind,
            mode: (raw.mode & 0o7777) as u32,
            uid,
            gid,
            mtime,
            mtime_nsec,
            size,
            data_offset,
            dev_major,
            dev_minor,
            xattrs: pax.xattrs,
        })
    }

    fn extension(&mut self, what: Collecting, at: u64, data: Vec<u8>) -> Result<()> {
        match what {
            Collecting::Pax => {
                let later = pax::parse(&data, at)?;
                self.pending.pax = Some(match self.pending.pax.take() {
                    Some(earlier) => merge(earlier, later),
                    None => later,
                });
            }
            Collecting::GlobalPax => {
                let later = pax::parse(&data, at)?;
                self.global = merge(std::mem::take(&mut self.global), later);
            }
            Collecting::LongName | Collecting::LongLink => {
                let name = gnu_long_name(&data, at)?;
                if what == Collecting::LongName {
                    self.pending.long_name = Some(name);
                } else {
                    self.pending.long_link = Some(name);
                }
            }
        }
        Ok(())
    }
}

fn header_state() -> State {
    State::Header {
        block: Box::new([0u8; BLOCK]),
        fill: 0,
    }
}

fn skip_state(remaining: u64, entry_offset: u64) -> State {
    if remaining == 0 {
        header_state()
    } else {
        State::Skip {
            remaining,
            entry_offset,
        }
    }
}

/// Two PAX headers for one member: the later one's values win.
fn merge(earlier: Pax, mut later: Pax) -> Pax {
    let mut xattrs = earlier.xattrs;
    xattrs.append(&mut later.xattrs);
    Pax {
        path: later.path.or(earlier.path),
        linkpath: later.linkpath.or(earlier.linkpath),
        size: later.size.or(earlier.size),
        mtime: later.mtime.or(earlier.mtime),
        uid: later.uid.or(earlier.uid),
        gid: later.gid.or(earlier.gid),
        xattrs,
        sparse: earlier.sparse || later.sparse,
    }
}

/// GNU writes the name and a NUL. Trailing NULs are dropped; a NUL with more name after
/// it is refused rather than cutting the name short.
fn gnu_long_name(data: &[u8], at: u64) -> Result<Vec<u8>> {
    let end = data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let name = &data[..end];
    if name.contains(&0) {
        return Err(Error::bad(format!(
            "tar: GNU long name header at offset {at}: the name contains a NUL byte"
        )));
    }
    Ok(name.to_vec())
}

#[cfg(test)]
pub mod tests;
