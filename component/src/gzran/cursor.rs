//! A live inflater cursor: decodes the gzip blob forward from a restart point, one 32 KiB
//! page of uncompressed output at a time, across member boundaries, and reports deflate
//! block boundaries where a checkpoint may be learned.
//!
//! State, in the words of zran.c: the cursor holds the inflater, the compressed input it
//! has fetched but not consumed, the page being filled (`page[..fill]` are the bytes at
//! uncompressed offsets `page_start..page_start+fill`), and the previous page, whose tail
//! is the history a learned checkpoint needs. Pages are the window size, 32 KiB, so a
//! restart point anywhere inside a page can rebuild the page's head from its own history.
//!
//! Proofs (proof.rs): the owner names the zinfo checkpoints not yet proven
//! ([`Waypoints`]). The cursor stops its output exactly at each one it meets, finds the
//! deflate restart point there (a block boundary, or the start of a member's first block),
//! and reports it with the history before it, so the checkpoint can be compared with what
//! the blob really holds there before anything restarts at it.

use super::gzip;
use super::inflate::{crc32, RawInflater, Status};
use super::input::Input;
use super::proof::{Arrival, Verdict, Waypoints};
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
    /// Output before `out` that deflate may refer back to: at most `min(out, 32 KiB)`
    /// bytes, fewer when a gzip member began less than 32 KiB before `out`.
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
    /// The zinfo checkpoint the decode that found it started from, while that one is not
    /// proven (None: it descends from a proven restart point). It may be restarted at
    /// only once its origin is proven (proof.rs).
    pub origin: Option<usize>,
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
    /// The history the cursor restarted with, ending at uncompressed offset `seed_end`:
    /// it completes [`Self::history`] while fewer than 32 KiB have been decoded.
    seed: Vec<u8>,
    seed_end: u64,
    /// The lowest uncompressed offset deflate may refer back to: the start of the
    /// restart's history, or of the current member once the cursor entered one.
    history_floor: u64,
    /// Some while the cursor stands at a deflate restart point: just after a block
    /// boundary was reported, a restart, or the header of a new member. None once the
    /// inflater has moved on (then a zero-output call finds the next one, if any).
    restart_point: Option<(u64, u8)>,
    /// The zinfo checkpoint this cursor's decode started from, while it is not proven
    /// (None: it started at a proven restart point). Learned checkpoints inherit it.
    pub origin: Option<usize>,
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
            seed: Vec::new(),
            seed_end: 0,
            history_floor: 0,
            restart_point: None,
            origin: None,
            since_checkpoint: 0,
            stalls: 0,
            decoded: 0,
            last_used: 0,
        })
    }

    /// Position the cursor at a restart point, reusing its buffers. `origin`: the zinfo
    /// checkpoint it descends from while that is not proven (see [`Learned::origin`]).
    pub fn restart(
        &mut self,
        blob: &SizedSource,
        at: &Restart,
        origin: Option<usize>,
    ) -> Result<()> {
        let history_len = at.out.min(WINDOW_SIZE as u64) as usize;
        if at.history.len() > history_len || (at.bits > 0 && at.in_byte == 0) || at.bits > 7 {
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

        // The restart's history completes `history` until 32 KiB have been decoded.
        self.seed.clear();
        self.seed.extend_from_slice(&at.history);
        self.seed_end = at.out;
        self.history_floor = at.out - at.history.len() as u64;
        self.restart_point = Some((at.in_byte, at.bits));
        self.origin = origin;

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

    /// Decode until the current page is full or the stream ends, stopping exactly at
    /// every stop `waypoints` names on the way.
    pub fn complete_page(
        &mut self,
        blob: &SizedSource,
        learner: &mut dyn Learner,
        waypoints: &mut dyn Waypoints,
    ) -> Result<()> {
        while self.fill < PAGE && self.state == State::Inflating {
            let position = self.position();
            let stop = waypoints.next_stop(position);
            if stop == Some(position) {
                // At a stop: report the restart point here; the owner settles the stop
                // (or fails), so the next round looks for the next stop.
                self.report_stop(blob, waypoints)?;
                continue;
            }
            if self.input.available().is_empty() && !self.input.refill(blob)? {
                return Err(truncated(self.input.position()));
            }
            // Output stops at the next stop, and the call that may reach it stops at
            // block boundaries: otherwise the inflater would run through the restart
            // point there into the next block before we see it.
            let mut room = PAGE - self.fill;
            let mut stop_at_block = learner.wants_boundary(self.since_checkpoint);
            if let Some(stop) = stop {
                let to_stop = stop - position;
                if to_stop <= room as u64 {
                    room = to_stop as usize;
                    stop_at_block = true;
                }
            }
            let at = self.input.position();
            let step = self
                .inflater
                .inflate(
                    self.input.available(),
                    &mut self.page[self.fill..self.fill + room],
                    stop_at_block,
                )
                .map_err(near(at, self.position()))?;
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

            // The inflater moved: it stands at a restart point again only if it says so.
            self.restart_point = None;
            match step.status {
                Status::StreamEnd => self.finish_member(blob)?,
                Status::BlockBoundary {
                    unused_bits,
                    after_last: false,
                } => {
                    let out = self.position();
                    let in_byte = self.input.position();
                    self.restart_point = Some((in_byte, unused_bits));
                    if learner.wants_boundary(self.since_checkpoint) {
                        if let Some(history) = self.history() {
                            let origin = self.origin;
                            let kept = learner.offer(out, &mut || Learned {
                                in_byte,
                                bits: unused_bits,
                                out,
                                history: history.clone(),
                                origin,
                            });
                            if kept {
                                self.since_checkpoint = 0;
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// At a stop: report each restart point at this output offset until the owner
    /// settles the stop. Each round either returns or moves the inflater past one restart
    /// point (an empty block or member produces no output), so it ends with the blob.
    fn report_stop(&mut self, blob: &SizedSource, waypoints: &mut dyn Waypoints) -> Result<()> {
        let out = self.position();
        loop {
            let found = match self.restart_point {
                Some(point) => Some(point),
                None => self.find_restart_point(blob)?,
            };
            let verdict = match found {
                Some((in_byte, bits)) => {
                    let history = self.history().ok_or_else(|| {
                        Error::internal(format!("gzip: no history at the stop at {out}"))
                    })?;
                    waypoints.arrive(
                        out,
                        Some(Arrival {
                            in_byte,
                            bits,
                            history: &history,
                        }),
                    )?
                }
                None => waypoints.arrive(out, None)?,
            };
            match verdict {
                Verdict::Done => return Ok(()),
                Verdict::Later if found.is_some() => {
                    // Step past this restart point: the next zero-output call decodes on
                    // from it (a block boundary is left at the next call's start).
                    self.restart_point = None;
                }
                Verdict::Later => {
                    return Err(Error::internal(format!(
                        "gzip: the stop at {out} asked for a later restart point after the last"
                    )))
                }
            }
        }
    }

    /// Run the inflater with no room for output, so it can only reach the next restart
    /// point at the current output offset: a block boundary, or the start of the next
    /// member's first block. None when the next thing in the stream is output (or its
    /// end).
    fn find_restart_point(&mut self, blob: &SizedSource) -> Result<Option<(u64, u8)>> {
        let mut no_output = [0u8; 0];
        let mut stalls = 0u32;
        loop {
            if self.state == State::Ended {
                return Ok(None);
            }
            // As in `complete_page`: calls that consume nothing are bounded.
            if stalls > MAX_INFLATE_STALLS {
                return Err(Error::bad(format!(
                    "gzip: inflate makes no progress at blob offset {}",
                    self.input.position()
                )));
            }
            if self.input.available().is_empty() && !self.input.refill(blob)? {
                return Err(truncated(self.input.position()));
            }
            let at = self.input.position();
            let step = self
                .inflater
                .inflate(self.input.available(), &mut no_output, true)
                .map_err(near(at, self.position()))?;
            self.input.consume(step.consumed);
            if step.produced != 0 {
                return Err(Error::internal(
                    "gzip: the inflater wrote output it had no room for",
                ));
            }
            stalls = if step.consumed == 0 { stalls + 1 } else { 0 };
            match step.status {
                Status::BlockBoundary {
                    unused_bits,
                    after_last: false,
                } => {
                    let point = (self.input.position(), unused_bits);
                    self.restart_point = Some(point);
                    return Ok(Some(point));
                }
                // After a member's final block: the next call ends the member.
                Status::BlockBoundary {
                    after_last: true, ..
                } => {}
                Status::StreamEnd => {
                    self.finish_member(blob)?;
                    // In a new member (restart point: its first block) or at the end.
                    if self.state == State::Ended {
                        return Ok(None);
                    }
                    return Ok(self.restart_point);
                }
                // Input left and nothing consumed: the inflater waits for output room,
                // so the next thing here is a byte, not a restart point.
                Status::Progress if step.consumed == 0 && !self.input.available().is_empty() => {
                    return Ok(None);
                }
                Status::Progress => {}
            }
        }
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

    /// The output before the position that deflate may refer back to: the last
    /// `min(position, 32 KiB)` bytes, cut at the start of the current member (or of the
    /// restart's history). Taken from the decoded pages, completed from the restart's
    /// history while fewer than 32 KiB have been decoded since the restart.
    fn history(&self) -> Option<Vec<u8>> {
        let position = self.position();
        let from = position
            .saturating_sub(WINDOW_SIZE as u64)
            .max(self.history_floor);
        // The lowest offset the pages hold: prev[prev_valid_from..] precedes the page
        // only when the page was entered by `advance` (page_valid_from == 0).
        let held_from = if self.page_valid_from == 0 {
            self.page_start - (PAGE - self.prev_valid_from) as u64
        } else {
            self.page_start + self.page_valid_from as u64
        };
        let mut h = Vec::with_capacity((position - from) as usize);
        if from < held_from {
            // Bytes before the pages: from the restart's history, which ends where the
            // decoded bytes begin (both are `seed_end` until 32 KiB are decoded).
            let seed_start = self.seed_end - self.seed.len() as u64;
            if held_from != self.seed_end || from < seed_start {
                return None;
            }
            h.extend_from_slice(&self.seed[(from - seed_start) as usize..]);
        }
        let from = from.max(held_from);
        let prev_start = self.page_start.saturating_sub(PAGE as u64);
        if from < self.page_start {
            h.extend_from_slice(&self.prev[(from - prev_start) as usize..]);
        }
        let page_from = from.max(self.page_start) - self.page_start;
        h.extend_from_slice(&self.page[page_from as usize..self.fill]);
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
        // The member's first block is a restart point, and nothing before it is history.
        self.history_floor = self.position();
        self.restart_point = Some((self.input.position(), 0));
        Ok(())
    }
}

fn truncated(at: u64) -> Error {
    Error::bad(format!(
        "gzip: blob ends at offset {at} inside a deflate stream (truncated blob?)"
    ))
}

/// Where an inflate error happened: the blob offset of the input and the output offset
/// the cursor had reached.
fn near(at: u64, output: u64) -> impl FnOnce(Error) -> Error {
    move |e| e.context(&format!("near blob offset {at}, output offset {output}"))
}
