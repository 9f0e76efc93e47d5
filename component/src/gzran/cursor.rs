//! A live inflater cursor: decodes the gzip blob forward from a restart point, one 32 KiB
//! page of uncompressed output at a time, across member boundaries, and reports deflate
//! block boundaries where a checkpoint may be learned.
//!
//! State, in the words of zran.c: the cursor holds the inflater, the compressed input it
//! has fetched but not consumed, the page being filled (`page[..fill]` are the bytes at
//! uncompressed offsets `page_start..page_start+fill`), and the previous page, whose tail
//! is the history a learned checkpoint needs. Pages are the window size, 32 KiB, so a
//! restart point anywhere inside a page can rebuild the page's head from its own history.

use super::gzip;
use super::inflate::{crc32, RawInflater, Status};
use super::input::Input;
use super::zinfo::WINDOW_SIZE;
use crate::defaults::MAX_INFLATE_STALLS;
use crate::error::{Error, Result};
use crate::source::SizedSource;

/// Uncompressed bytes per page: the unit of caching and of cursor progress.
pub const PAGE: usize = WINDOW_SIZE;

/// Where and how to start decoding.
pub struct Restart {
    /// First full compressed byte, and how many high bits of the byte before it to prime.
    pub in_byte: u64,
    pub bits: u8,
    /// Uncompressed offset of the restart point.
    pub out: u64,
    /// The `min(out, 32 KiB)` bytes of output before `out`.
    pub history: Vec<u8>,
    /// True when `out` is the start of a gzip member, so its CRC can be checked.
    pub member_start: bool,
}

/// A checkpoint found while decoding: a block boundary and the 32 KiB before it.
pub struct Learned {
    pub in_byte: u64,
    pub bits: u8,
    pub out: u64,
    pub history: Vec<u8>,
}

/// Decides where learning happens; implemented by the checkpoint store.
pub trait Learner {
    /// Should the cursor stop at the next block boundary, `since` bytes after its last
    /// checkpoint? (Stopping at every boundary costs a little speed, so only when useful.)
    fn wants_boundary(&self, since: u64) -> bool;
    /// A block boundary was reached; the learner may keep a checkpoint there.
    /// Returns true if it kept one.
    fn offer(&mut self, at_out: u64, make: &mut dyn FnMut() -> Learned) -> bool;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Inside a deflate stream.
    Inflating,
    /// The last member's trailer has been read and nothing follows it.
    Ended,
}

/// Running checks of a member that was decoded from its first byte.
struct MemberCheck {
    crc: u32,
    len: u64,
}

pub struct Cursor {
    inflater: RawInflater,
    input: Input,
    state: State,
    page_start: u64,
    page: Box<[u8]>,
    fill: usize,
    prev: Box<[u8]>,
    /// page[page_valid_from..fill] and prev[prev_valid_from..] hold decoded bytes;
    /// earlier ones are unknown (the cursor started inside that page).
    page_valid_from: usize,
    prev_valid_from: usize,
    member: Option<MemberCheck>,
    since_checkpoint: u64,
    /// Consecutive inflate calls that made no progress (a guard against a stuck loop).
    stalls: u32,
    /// Uncompressed bytes produced, for stats.
    pub decoded: u64,
    /// For least-recently-used replacement by the owner.
    pub last_used: u64,
}

impl Cursor {
    pub fn new() -> Result<Self> {
        Ok(Self {
            inflater: RawInflater::new()?,
            input: Input::new(),
            state: State::Ended,
            page_start: 0,
            page: vec![0u8; PAGE].into_boxed_slice(),
            fill: 0,
            prev: vec![0u8; PAGE].into_boxed_slice(),
            page_valid_from: PAGE,
            prev_valid_from: PAGE,
            member: None,
            since_checkpoint: 0,
            stalls: 0,
            decoded: 0,
            last_used: 0,
        })
    }

    /// Position the cursor at a restart point, reusing its buffers.
    pub fn restart(&mut self, blob: &SizedSource, at: &Restart) -> Result<()> {
        let history_len = at.out.min(WINDOW_SIZE as u64) as usize;
        if at.history.len() != history_len || (at.bits > 0 && at.in_byte == 0) || at.bits > 7 {
            return Err(Error::bad(format!(
                "gzip: restart point at out {} is inconsistent (history {} bytes, bits {})",
                at.out,
                at.history.len(),
                at.bits
            )));
        }
        // Fetch the partial byte first: its high `bits` bits open the next block.
        let mut prime = None;
        if at.bits > 0 {
            self.input.seek(at.in_byte - 1);
            let byte = self.input.byte(blob)?.ok_or_else(|| {
                Error::bad(format!(
                    "gzip: checkpoint byte {} is past the blob's end",
                    at.in_byte - 1
                ))
            })?;
            prime = Some((at.bits, byte));
        } else {
            self.input.seek(at.in_byte);
        }
        self.inflater.restart(prime, &at.history)?;

        // The page containing `out` begins before the restart point, and those earlier
        // bytes are unknown here: a zinfo window is only a dictionary for the inflater,
        // and at a member start the reference builder stores unrelated bytes in it. So
        // the first page stays partial (`page_valid_from`) and is never served or cached.
        let fill = (at.out % PAGE as u64) as usize;
        self.page_start = at.out - fill as u64;
        self.fill = fill;
        self.page_valid_from = fill;
        self.prev_valid_from = PAGE;

        self.state = State::Inflating;
        self.member = at.member_start.then_some(MemberCheck { crc: 0, len: 0 });
        self.since_checkpoint = 0;
        self.stalls = 0;
        Ok(())
    }

    /// Uncompressed offset of the next byte this cursor will produce.
    pub fn position(&self) -> u64 {
        self.page_start + self.fill as u64
    }

    pub fn page_start(&self) -> u64 {
        self.page_start
    }

    /// The bytes of the current page decoded so far (all of it after `complete_page`).
    /// None while the page's head is unknown (the first page after a restart inside it).
    pub fn page(&self) -> Option<&[u8]> {
        (self.page_valid_from == 0).then(|| &self.page[..self.fill])
    }

    pub fn ended(&self) -> bool {
        self.state == State::Ended
    }

    /// Move on to the next page once the current one is complete.
    pub fn advance(&mut self) {
        if self.fill == PAGE {
            std::mem::swap(&mut self.page, &mut self.prev);
            self.prev_valid_from = self.page_valid_from;
            self.page_valid_from = 0;
            self.page_start += PAGE as u64;
            self.fill = 0;
        }
    }

    /// Decode until the current page is full or the stream ends.
    pub fn complete_page(&mut self, blob: &SizedSource, learner: &mut dyn Learner) -> Result<()> {
        while self.fill < PAGE && self.state == State::Inflating {
            if self.input.available().is_empty() && !self.input.refill(blob)? {
                return Err(Error::bad(format!(
                    "gzip: blob ends at offset {} inside a deflate stream (truncated blob?)",
                    self.input.position()
                )));
            }
            let stop_at_block = learner.wants_boundary(self.since_checkpoint);
            let at = self.input.position();
            let step = self
                .inflater
                .inflate(
                    self.input.available(),
                    &mut self.page[self.fill..],
                    stop_at_block,
                )
                .map_err(|e| {
                    e.context(&format!(
                        "near blob offset {at}, output offset {}",
                        self.position()
                    ))
                })?;
            self.input.consume(step.consumed);
            let produced = &self.page[self.fill..self.fill + step.produced];
            if let Some(member) = &mut self.member {
                member.crc = crc32(member.crc, produced);
                member.len += step.produced as u64;
            }
            self.fill += step.produced;
            self.decoded += step.produced as u64;
            self.since_checkpoint += step.produced as u64;

            // A call that consumes and produces nothing, with input and output room
            // available, more than MAX_INFLATE_STALLS times in a row would loop forever:
            // refuse the stream instead.
            if step.consumed == 0 && step.produced == 0 && step.status == Status::Progress {
                self.stalls += 1;
                if self.stalls > MAX_INFLATE_STALLS {
                    return Err(Error::bad(format!(
                        "gzip: inflate makes no progress at blob offset {at}"
                    )));
                }
            } else {
                self.stalls = 0;
            }

            match step.status {
                Status::StreamEnd => self.finish_member(blob)?,
                Status::BlockBoundary {
                    unused_bits,
                    after_last: false,
                } => {
                    let out = self.position();
                    let in_byte = self.input.position();
                    if let Some(history) = self.history() {
                        let kept = learner.offer(out, &mut || Learned {
                            in_byte,
                            bits: unused_bits,
                            out,
                            history: history.clone(),
                        });
                        if kept {
                            self.since_checkpoint = 0;
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The output has reached the stream's known end exactly at a page boundary: drive
    /// the inflater through the end of the stream so its trailer (CRC-32 and length) is
    /// still checked. Any further output means the stream is longer than measured.
    pub fn finish(&mut self, blob: &SizedSource) -> Result<()> {
        let mut scratch = [0u8; 64];
        while self.state == State::Inflating {
            if self.input.available().is_empty() && !self.input.refill(blob)? {
                return Err(Error::bad(format!(
                    "gzip: blob ends at offset {} inside a deflate stream (truncated blob?)",
                    self.input.position()
                )));
            }
            let at = self.input.position();
            let step = self
                .inflater
                .inflate(self.input.available(), &mut scratch, false)?;
            self.input.consume(step.consumed);
            if step.produced > 0 {
                return Err(Error::bad(format!(
                    "gzip: the stream does not end at {}, where it ended when the device was opened (near blob offset {at}): the blob is corrupt or changed",
                    self.position()
                )));
            }
            match step.status {
                Status::StreamEnd => self.finish_member(blob)?,
                _ if step.consumed == 0 => {
                    self.stalls += 1;
                    if self.stalls > MAX_INFLATE_STALLS {
                        return Err(Error::bad(format!(
                            "gzip: inflate makes no progress at blob offset {at}"
                        )));
                    }
                }
                _ => self.stalls = 0,
            }
        }
        Ok(())
    }

    /// The `min(position, 32 KiB)` bytes before the position, if all are known.
    fn history(&self) -> Option<Vec<u8>> {
        let want = self.position().min(WINDOW_SIZE as u64) as usize;
        let from_prev = want.saturating_sub(self.fill);
        let prev_from = PAGE - from_prev;
        let page_from = self.fill - (want - from_prev);
        if (from_prev > 0 && prev_from < self.prev_valid_from) || page_from < self.page_valid_from {
            return None;
        }
        let mut h = Vec::with_capacity(want);
        h.extend_from_slice(&self.prev[prev_from..]);
        h.extend_from_slice(&self.page[page_from..self.fill]);
        Some(h)
    }

    /// The deflate stream of a member ended: check its trailer, then either stop at the
    /// end of the blob or step into the next member.
    fn finish_member(&mut self, blob: &SizedSource) -> Result<()> {
        let trailer_at = self.input.position();
        let trailer = gzip::read_trailer(&mut self.input, blob)?;
        if let Some(member) = self.member.take() {
            let actual = member.crc;
            if trailer.crc32 != actual {
                return Err(Error::bad(format!(
                    "gzip: member ending at blob offset {trailer_at}: CRC32 is {actual:#010x}, trailer says {:#010x}",
                    trailer.crc32
                )));
            }
            if trailer.isize != member.len as u32 {
                return Err(Error::bad(format!(
                    "gzip: member ending at blob offset {trailer_at}: length is {} (mod 2^32: {}), trailer ISIZE says {}",
                    member.len, member.len as u32, trailer.isize
                )));
            }
        }
        let next_at = self.input.position();
        match self.input.peek(blob)? {
            None => {
                // Nothing after the trailer: the tar stream ends here.
                self.state = State::Ended;
                return Ok(());
            }
            Some(0) => {
                // A member never starts with 0 (the magic is 1f 8b): this is the zero
                // padding `gzip -t` accepts after the last member. The stream ends here
                // once the padding is checked to run to the end of the blob.
                gzip::skip_zero_padding(&mut self.input, blob)?;
                self.state = State::Ended;
                return Ok(());
            }
            Some(_) => {}
        }
        // Another member follows (e.g. parallel gzip or estargz): its header, then a fresh
        // deflate stream. Deflate cannot refer back across members, so no history is kept.
        gzip::read_header(&mut self.input, blob).map_err(|e| {
            e.context(&format!(
                "the next member after blob offset {next_at} (only another member or zero padding may follow one)"
            ))
        })?;
        self.inflater.reset()?;
        self.member = Some(MemberCheck { crc: 0, len: 0 });
        Ok(())
    }
}
