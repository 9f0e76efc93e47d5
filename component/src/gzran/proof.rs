//! Proofs of zinfo checkpoints (issue 10, item 1; docs/formats.md, "zinfo: what is
//! proven before a byte is served").
//!
//! A zinfo is untrusted: a checkpoint's `in`, `bits` and window decide what a restart
//! there decodes, and nothing in the file vouches for them. So no restart serves a byte
//! from a checkpoint until it is proven:
//!
//! - checkpoint 0 at open: its `in` must be the length of the blob's first gzip header
//!   and its `bits` 0 (there is no history before it);
//! - checkpoint k > 0 on first need: a cursor decodes to it from a proven restart point
//!   (an earlier proven checkpoint, or one learned by a decode that started at one) and
//!   stops exactly at its `out`. There the blob's own restart point must be at `in` with
//!   `bits`, and the history before `out` that deflate may refer back to (the last 32 KiB,
//!   or fewer after a member start) must equal the window's tail. Every checkpoint such a
//!   decode passes is proven on the way, so the whole zinfo costs at most one decode of
//!   the stream, spread over first touches;
//! - a zinfo whose SHA-256 a trusted source pinned ([`ZinfoTrust::Pinned`]) is proven
//!   whole at open once its digest matches: its builder decoded the blob.
//!
//! A checkpoint that fails is an error naming the zinfo, the checkpoint and the field
//! (`in`, `bits`, `window`, or `out` when no restart point exists there); it is kept, and
//! every read that needs that checkpoint gets it again. Proofs last as long as the
//! reader: `GzRan::forget` drops decoded state, never proofs.

use sha2::{Digest, Sha256};

use super::gzip;
use super::input::Input;
use super::zinfo::{Checkpoint, Zinfo, WINDOW_SIZE};
use crate::error::{Error, Result};
use crate::source::SizedSource;

/// Bytes of the zinfo hashed per read when checking a pinned digest.
const HASH_READ: u64 = 1 << 20;

/// How far a zinfo is trusted before its checkpoints are proven.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ZinfoTrust {
    /// The default: every checkpoint is proven by decoding before it serves a byte.
    #[default]
    Untrusted,
    /// A trusted source (e.g. an index whose signature the embedder checked) pinned the
    /// zinfo's SHA-256: once the file matches, its checkpoints are taken as proven. This
    /// vouches for the zinfo only; the blob's bytes are still whatever the blob source
    /// serves.
    Pinned([u8; 32]),
}

impl ZinfoTrust {
    /// The pin an embedder wrote (WIT `open-options.zinfo-sha256`): 64 hex digits, with
    /// or without a `sha256:` prefix.
    pub fn pinned_from_text(text: &str) -> Result<Self> {
        let digits = text.strip_prefix("sha256:").unwrap_or(text);
        let refuse = || {
            Error::bad(format!(
                "zinfo-sha256 `{}` is not a SHA-256 (64 hex digits, `sha256:` prefix allowed)",
                text.chars().take(80).collect::<String>()
            ))
            .with_field("zinfo-sha256")
        };
        // Hex digits only: `from_str_radix` alone would take a `+`.
        if digits.len() != 64 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(refuse());
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(digits.as_bytes().chunks_exact(2)) {
            let pair = std::str::from_utf8(pair).map_err(|_| refuse())?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| refuse())?;
        }
        Ok(ZinfoTrust::Pinned(out))
    }
}

/// Where the cursor must stop exactly and report what it finds there: the zinfo
/// checkpoints that are not proven yet (implemented by proof.rs).
pub trait Waypoints {
    /// The smallest uncompressed offset at or after `from` where the cursor must stop.
    fn next_stop(&self, from: u64) -> Option<u64>;
    /// The cursor stands at stop `out`. `found` is the restart point there, with the
    /// history before it; None when there is no (further) restart point at `out`.
    fn arrive(&mut self, out: u64, found: Option<Arrival<'_>>) -> Result<Verdict>;
}

/// A deflate restart point the cursor reached at a stop.
pub struct Arrival<'a> {
    /// First compressed byte not fully consumed, and how many high bits of the byte
    /// before it belong to the next block (as a zinfo records them).
    pub in_byte: u64,
    pub bits: u8,
    /// The output before the stop that deflate may refer back to (see [`Restart`]).
    pub history: &'a [u8],
}

/// What [`Waypoints::arrive`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The stop is settled: decode on.
    Done,
    /// The checkpoint lies at a later restart point at the same output offset (empty
    /// blocks or members produce no output): report the next one.
    Later,
}

/// No stops: for decodes whose restart point is not proven (provisional decodes).
pub struct NoStops;

impl Waypoints for NoStops {
    fn next_stop(&self, _from: u64) -> Option<u64> {
        None
    }
    fn arrive(&mut self, out: u64, _found: Option<Arrival<'_>>) -> Result<Verdict> {
        Err(Error::internal(format!(
            "gzip: a cursor stopped at {out} with no stops asked for"
        )))
    }
}

/// What is known about each checkpoint of one zinfo.
pub struct Proofs {
    /// Per checkpoint, once proven: how many bytes of its window are history (the bytes
    /// before `out` deflate may refer back to). None: not proven yet.
    proven: Vec<Option<usize>>,
    /// The first checkpoint that failed its proof, and the error every read needing it
    /// gets.
    failed: Option<(usize, Error)>,
    /// Checkpoints proven by decoding so far.
    pub by_decoding: u64,
}

impl Proofs {
    /// Prove what can be proven at open: checkpoint 0 against the blob's first gzip
    /// header, and, for a pinned zinfo, the file's digest.
    pub fn open(
        zinfo: &Zinfo,
        file: &SizedSource,
        blob: &SizedSource,
        trust: ZinfoTrust,
    ) -> Result<Self> {
        let first = zinfo
            .checkpoints
            .first()
            .ok_or_else(|| bad("the index has no checkpoints").with_field("have"))?;
        check_first(first, blob)?;
        let mut proven = vec![None; zinfo.checkpoints.len()];
        match trust {
            ZinfoTrust::Untrusted => {
                // Checkpoint 0 is at out 0: no history.
                if let Some(slot) = proven.first_mut() {
                    *slot = Some(0);
                }
            }
            ZinfoTrust::Pinned(want) => {
                check_digest(file, &want)?;
                for (slot, cp) in proven.iter_mut().zip(&zinfo.checkpoints) {
                    *slot = Some(window_len(cp));
                }
            }
        }
        Ok(Self {
            proven,
            failed: None,
            by_decoding: 0,
        })
    }

    pub fn is_proven(&self, index: usize) -> bool {
        matches!(self.proven.get(index), Some(Some(_)))
    }

    /// How many bytes of proven checkpoint `index`'s window are history.
    pub fn history_len(&self, index: usize) -> Option<usize> {
        self.proven.get(index).copied().flatten()
    }

    /// The last proven checkpoint at or before `index` (checkpoint 0 always is).
    pub fn proven_at_or_before(&self, index: usize) -> usize {
        let end = index.saturating_add(1).min(self.proven.len());
        self.proven
            .get(..end)
            .and_then(|p| p.iter().rposition(Option::is_some))
            .unwrap_or(0)
    }

    /// The error of a failed checkpoint at or before `index`: a read that needs it can
    /// only fail again.
    pub fn failure_at_or_before(&self, index: usize) -> Option<Error> {
        self.failed
            .as_ref()
            .filter(|(k, _)| *k <= index)
            .map(|(_, e)| e.clone())
    }

    pub fn proven_count(&self) -> usize {
        self.proven.iter().filter(|p| p.is_some()).count()
    }
}

/// The stops of a decode that started at a proven restart point: every checkpoint not
/// yet proven. It proves (or fails) each one the cursor reaches.
pub struct Prover<'a> {
    pub zinfo: &'a Zinfo,
    pub file: &'a SizedSource,
    pub proofs: &'a mut Proofs,
    /// The last restart point reported at the current stop (a checkpoint may lie at a
    /// later one at the same output offset).
    last: Option<(u64, u8)>,
}

impl<'a> Prover<'a> {
    pub fn new(zinfo: &'a Zinfo, file: &'a SizedSource, proofs: &'a mut Proofs) -> Self {
        Self {
            zinfo,
            file,
            proofs,
            last: None,
        }
    }

    /// The fields of checkpoint `index` against the restart point the blob has there.
    fn compare(&mut self, index: usize, cp: &Checkpoint, found: &Arrival<'_>) -> Result<Verdict> {
        let here = bit_position(found.in_byte, found.bits);
        let claimed = cp.bit_position();
        if here < claimed {
            // Perhaps an empty block or member later at this output offset.
            self.last = Some((found.in_byte, found.bits));
            return Ok(Verdict::Later);
        }
        if here > claimed {
            return Err(self.misplaced(index, cp, found.in_byte, found.bits));
        }
        // Same restart point: the window's history must be the stream's.
        let window = Zinfo::window(self.file, cp)?;
        let tail = window
            .len()
            .checked_sub(found.history.len())
            .and_then(|from| window.get(from..))
            .ok_or_else(|| {
                Error::internal(format!(
                    "gzip: {} bytes of history at checkpoint {index}, more than its window",
                    found.history.len()
                ))
            })?;
        if let Some(at) = tail.iter().zip(found.history).position(|(a, b)| a != b) {
            let differ = tail
                .iter()
                .zip(found.history)
                .filter(|(a, b)| a != b)
                .count();
            let offset = cp.out - (found.history.len() - at) as u64;
            return Err(bad(format!(
                "checkpoint {index}: field `window` does not match the blob: {differ} of the {} bytes before out {} differ, the first at tar offset {offset} ({:#04x} in the window, {:#04x} decoded from the blob; a corrupt zinfo, or a corrupt blob)",
                found.history.len(),
                cp.out,
                tail.get(at).copied().unwrap_or(0),
                found.history.get(at).copied().unwrap_or(0)
            ))
            .with_field("window"));
        }
        // Proven: restarts here may use exactly this much history.
        if let Some(slot) = self.proofs.proven.get_mut(index) {
            *slot = Some(found.history.len());
        }
        self.proofs.by_decoding += 1;
        self.last = None;
        Ok(Verdict::Done)
    }

    /// The checkpoint's restart point is not the blob's: name `in` or `bits`.
    fn misplaced(&self, index: usize, cp: &Checkpoint, in_byte: u64, bits: u8) -> Error {
        let field = if cp.in_byte != in_byte { "in" } else { "bits" };
        let value = if field == "in" {
            cp.in_byte
        } else {
            u64::from(cp.bits)
        };
        bad(format!(
            "checkpoint {index}: field `{field}` is {value}, but decoding the blob reaches out {} at blob offset {in_byte} with {bits} bits left (the checkpoint says offset {} with {} bits): a zinfo of another blob, or a corrupt one (or a corrupt blob)",
            cp.out, cp.in_byte, cp.bits
        ))
        .with_field(field)
    }

    fn fail(&mut self, index: usize, e: Error) -> Error {
        if self.proofs.failed.as_ref().is_none_or(|(k, _)| index < *k) {
            self.proofs.failed = Some((index, e.clone()));
        }
        e
    }
}

impl Waypoints for Prover<'_> {
    fn next_stop(&self, from: u64) -> Option<u64> {
        let first = self.zinfo.checkpoints.partition_point(|c| c.out < from);
        let rest = self.zinfo.checkpoints.get(first..)?;
        let proven = self.proofs.proven.get(first..)?;
        rest.iter()
            .zip(proven)
            .find(|(_, p)| p.is_none())
            .map(|(c, _)| c.out)
    }

    fn arrive(&mut self, out: u64, found: Option<Arrival<'_>>) -> Result<Verdict> {
        let index = self.zinfo.checkpoints.partition_point(|c| c.out < out);
        let cp = *self
            .zinfo
            .checkpoints
            .get(index)
            .filter(|c| c.out == out)
            .ok_or_else(|| Error::internal(format!("gzip: no checkpoint at the stop at {out}")))?;
        if let Some(e) = self.proofs.failure_at_or_before(index) {
            return Err(e);
        }
        let result = match (found, self.last.take()) {
            (Some(found), _) => self.compare(index, &cp, &found),
            // No restart point at all at this output offset.
            (None, None) => Err(bad(format!(
                "checkpoint {index}: field `out` is {out}, but the blob has no deflate block boundary at that output offset: a zinfo of another blob, or a corrupt one (or a corrupt blob)"
            ))
            .with_field("out")),
            // Restart points here, but none where the checkpoint says.
            (None, Some((in_byte, bits))) => Err(self.misplaced(index, &cp, in_byte, bits)),
        };
        result.map_err(|e| self.fail(index, e))
    }
}

/// Checkpoint 0 must restart right after the blob's first gzip header, on a byte boundary.
fn check_first(cp: &Checkpoint, blob: &SizedSource) -> Result<()> {
    let mut input = Input::new();
    input.seek(0);
    gzip::read_header(&mut input, blob)?;
    let header = input.position();
    if cp.in_byte != header {
        return Err(bad(format!(
            "checkpoint 0: field `in` is {}, but the blob's gzip header is {header} bytes long, so its first deflate block starts at offset {header}",
            cp.in_byte
        ))
        .with_field("in"));
    }
    if cp.bits != 0 {
        return Err(bad(format!(
            "checkpoint 0: field `bits` is {}, but the first deflate block starts on a byte boundary (0)",
            cp.bits
        ))
        .with_field("bits"));
    }
    Ok(())
}

/// The zinfo file's SHA-256 must be the pinned one.
fn check_digest(file: &SizedSource, want: &[u8; 32]) -> Result<()> {
    let mut hasher = Sha256::new();
    let mut at = 0u64;
    while at < file.size {
        let len = usize::try_from(HASH_READ.min(file.size - at)).unwrap_or(0);
        hasher.update(file.read_exact(at, len)?);
        at += len as u64;
    }
    let got: [u8; 32] = hasher.finalize().into();
    if &got != want {
        return Err(bad(format!(
            "its SHA-256 is {}, but the embedder pinned {} (zinfo-sha256): this is not \
             the zinfo that was vouched for",
            hex(&got),
            hex(want)
        ))
        .with_field("sha256"));
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The history a pinned checkpoint's window holds: `min(out, 32 KiB)` bytes.
fn window_len(cp: &Checkpoint) -> usize {
    usize::try_from(cp.out.min(WINDOW_SIZE as u64)).unwrap_or(WINDOW_SIZE)
}

/// Bit position in the blob, as [`Checkpoint::bit_position`] orders them.
fn bit_position(in_byte: u64, bits: u8) -> u128 {
    (u128::from(in_byte) * 8).saturating_sub(u128::from(bits))
}

/// An error in the zinfo file.
fn bad(msg: impl Into<String>) -> Error {
    Error::bad(msg).in_file("zinfo")
}

#[cfg(test)]
#[path = "proof_tests.rs"]
mod tests;
