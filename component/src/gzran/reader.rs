//! Random access into a gzip blob: the zinfo's checkpoints, checkpoints learned while
//! decoding, a few live cursors, and a cache of decoded pages.
//!
//! A read is split into 32 KiB pages. A cached page costs a copy. A missing page is
//! decoded by the cheapest of: a live cursor at or before it (sequential reads continue
//! with no restart), or a fresh start from the nearest checkpoint. Every page a cursor
//! completes on the way is cached. Nothing is decoded beyond the page a read needs.
//!
//! Only proven restart points serve bytes (proof.rs): a zinfo checkpoint not yet proven
//! is reached by decoding from the nearest proven one before it, which proves every
//! checkpoint it passes. The one exception is a *provisional* decode, whose bytes are
//! never served: the size measurement at open, and the open-time header sample
//! (tarindex/device.rs), between [`GzRan::begin_provisional`] and
//! [`GzRan::end_provisional`].

use super::cache::PageCache;
use super::checkpoints::LearnedCheckpoints;
use super::cursor::{Cursor, Restart, PAGE};
use super::proof::{NoStops, Proofs, Prover, Waypoints, ZinfoTrust};
use super::zinfo::Zinfo;
use crate::defaults;
use crate::error::{Error, Kind, Result};
use crate::source::SizedSource;

/// Tuning. The defaults and their reasons are in [`crate::defaults`].
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Bytes of decoded pages kept (the decode cache); 0 turns it off.
    pub cache_bytes: u64,
    /// Live inflater cursors kept; 0 restarts every read from a checkpoint.
    pub max_cursors: usize,
    /// Uncompressed distance between learned checkpoints; 0 turns learning off.
    pub learn_interval: u64,
    /// The most learned checkpoints kept.
    pub max_learned: usize,
    /// How far the zinfo is trusted (default: not at all; every checkpoint is proven).
    pub zinfo_trust: ZinfoTrust,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            cache_bytes: defaults::CACHE_BYTES,
            max_cursors: defaults::MAX_CURSORS,
            learn_interval: defaults::LEARN_INTERVAL,
            max_learned: defaults::MAX_LEARNED,
            zinfo_trust: ZinfoTrust::Untrusted,
        }
    }
}

use defaults::RESTART_COST;

#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub cursor_starts: u64,
    pub learned_starts: u64,
    /// Bytes decoded by cursors that have since been dropped or recycled.
    pub retired_decoded: u64,
    /// Restarts at a proven checkpoint before an unproven one that a read needed: each
    /// decodes through, and proves, the checkpoints between.
    pub proof_starts: u64,
}

pub struct GzRan {
    blob: SizedSource,
    zinfo_file: SizedSource,
    zinfo: Zinfo,
    learned: LearnedCheckpoints,
    cursors: Vec<Cursor>,
    cache: PageCache,
    options: Options,
    tick: u64,
    size: u64,
    /// What is proven about the zinfo's checkpoints (kept by `forget`).
    proofs: Proofs,
    /// Decoding provisionally: restarts at unproven checkpoints, nothing cached.
    provisional: bool,
    pub counters: Counters,
}

impl GzRan {
    /// [`Self::open_with_trust`] with the trust `options` name (by default none: every
    /// checkpoint proven by decoding before it serves a byte).
    pub fn open(blob: SizedSource, zinfo_file: SizedSource, options: Options) -> Result<Self> {
        Self::open_with_trust(blob, zinfo_file, options, options.zinfo_trust)
    }

    /// Validate the zinfo against the blob (checkpoint 0 against the gzip header; a
    /// pinned zinfo against its digest), then find the exact uncompressed size by
    /// decoding from the last checkpoint to the end of the blob (checking every trailer
    /// met on the way, and the CRC of any member decoded from its start).
    pub fn open_with_trust(
        blob: SizedSource,
        zinfo_file: SizedSource,
        options: Options,
        trust: ZinfoTrust,
    ) -> Result<Self> {
        let zinfo = Zinfo::parse(&zinfo_file, blob.size)?;
        // The open reads the blob's first gzip header and decodes its last span: a remote
        // blob asks for both at once.
        if let (Some(first), Some(last)) = (zinfo.checkpoints.first(), zinfo.checkpoints.last()) {
            blob.will_need(&[
                (0, first.in_byte.max(1)),
                (last.in_byte.saturating_sub(1), blob.size),
            ]);
        }
        let proofs = Proofs::open(&zinfo, &zinfo_file, &blob, trust)?;
        let fixed = zinfo.checkpoints.iter().map(|c| c.out).collect();
        let mut this = Self {
            learned: LearnedCheckpoints::new(options.learn_interval, options.max_learned, fixed),
            blob,
            zinfo_file,
            zinfo,
            cursors: Vec::new(),
            cache: PageCache::new(options.cache_bytes),
            options,
            tick: 0,
            size: 0,
            proofs,
            provisional: false,
            counters: Counters::default(),
        };
        this.size = this
            .measure()
            .map_err(|e| e.context("finding the tar size"))?;
        Ok(this)
    }

    /// The size: decoded provisionally from the last checkpoint. Should that fail as bad
    /// input while the last checkpoint is unproven, the zinfo may be at fault rather than
    /// the blob: decode again from the last proven checkpoint, proving the ones after it,
    /// so the error names the checkpoint that is wrong (or the blob, if none is).
    fn measure(&mut self) -> Result<u64> {
        let last = self.zinfo.checkpoints.len().saturating_sub(1);
        match self.measure_from(last) {
            Err(e) if e.is(Kind::BadInput) && !self.proofs.is_proven(last) => {
                self.measure_from(self.proofs.proven_at_or_before(last))
            }
            result => result,
        }
    }

    fn measure_from(&mut self, start: usize) -> Result<u64> {
        let proven = self.proofs.is_proven(start);
        let restart = self.zinfo_restart(start)?;
        let mut cursor = Cursor::new()?;
        cursor.restart(&self.blob, &restart, (!proven).then_some(start))?;
        // Learn checkpoints on the way (every `learn_interval`): the open-time header check
        // (tarindex/binding.rs) reads the last file's header, near the end, and later reads
        // of the last span then restart close by instead of at the last zinfo checkpoint.
        // They may be used once the checkpoint they descend from is proven.
        let Self {
            blob,
            zinfo,
            zinfo_file,
            proofs,
            learned,
            ..
        } = self;
        let mut prover = Prover::new(zinfo, zinfo_file, proofs);
        let mut no_stops = NoStops;
        let stops: &mut dyn Waypoints = if proven { &mut prover } else { &mut no_stops };
        loop {
            cursor.complete_page(blob, learned, stops)?;
            if cursor.ended() {
                break;
            }
            cursor.advance();
        }
        let size = cursor.position();
        self.counters.retired_decoded += cursor.decoded;
        if size <= restart.out {
            return Err(Error::bad(format!(
                "zinfo: the last checkpoint (out {}) is at or past the end of the stream ({size})",
                restart.out
            )));
        }
        Ok(size)
    }

    /// Exact size of the uncompressed stream.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn blob(&self) -> &SizedSource {
        &self.blob
    }

    /// The blob bytes `[start, end)` that decoding tar bytes `at..at+len` from the
    /// zinfo checkpoints reads (as the provisional header sample does): from the
    /// checkpoint at or before `at` to the first one at or after the range's end (or the
    /// blob's end).
    pub fn blob_span(&self, at: u64, len: u64) -> (u64, u64) {
        let cps = &self.zinfo.checkpoints;
        let end = at.saturating_add(len);
        let from = cps.partition_point(|c| c.out <= at).saturating_sub(1);
        let start = cps.get(from).map_or(0, |c| c.in_byte.saturating_sub(1));
        let stop = cps
            .iter()
            .skip(from)
            .find(|c| c.out >= end)
            .map_or(self.blob.size, |c| c.in_byte.saturating_add(1));
        (start, stop.min(self.blob.size))
    }

    /// Tar offsets of the zinfo's checkpoints, ascending: where a cold read is cheapest.
    pub fn checkpoint_offsets(&self) -> Vec<u64> {
        self.zinfo.checkpoints.iter().map(|c| c.out).collect()
    }

    pub fn learned_count(&self) -> usize {
        self.learned.len()
    }

    /// zinfo checkpoints proven so far (checkpoint 0 always is).
    pub fn proven_count(&self) -> usize {
        self.proofs.proven_count()
    }

    /// Checkpoints proven by decoding so far.
    pub fn proven_by_decoding(&self) -> u64 {
        self.proofs.by_decoding
    }

    /// Start decoding provisionally: reads may restart at checkpoints not yet proven and
    /// nothing they decode is cached. For reads whose bytes are never served (the
    /// open-time header sample); [`Self::end_provisional`] drops everything they left.
    pub fn begin_provisional(&mut self) {
        self.forget();
        self.provisional = true;
    }

    /// Back to serving: drop the cursors, pages and learned checkpoints a provisional
    /// decode may have left (proofs stay).
    pub fn end_provisional(&mut self) {
        self.provisional = false;
        self.forget();
    }

    /// Uncompressed bytes produced by all cursors so far.
    pub fn decoded(&self) -> u64 {
        self.counters.retired_decoded + self.cursors.iter().map(|c| c.decoded).sum::<u64>()
    }

    /// Append the bytes `[offset, offset+len)` (clamped to the size) to `out`.
    pub fn read_into(&mut self, offset: u64, len: u64, out: &mut Vec<u8>) -> Result<()> {
        let end = offset.saturating_add(len).min(self.size);
        let mut pos = offset;
        while pos < end {
            let page = pos / PAGE as u64;
            let in_page = (pos % PAGE as u64) as usize;
            let take = ((end - pos) as usize).min(PAGE - in_page);
            if let Some(bytes) = self.cache.get(page) {
                self.counters.cache_hits += 1;
                let got = bytes
                    .get(in_page..in_page + take)
                    .ok_or_else(|| short_page(page))?;
                out.extend_from_slice(got);
            } else {
                self.counters.cache_misses += 1;
                self.decode_page(page, |bytes| {
                    let got = bytes
                        .get(in_page..in_page + take)
                        .ok_or_else(|| short_page(page))?;
                    out.extend_from_slice(got);
                    Ok(())
                })?;
            }
            pos += take as u64;
        }
        if self.options.max_cursors == 0 {
            self.retire_all();
        }
        Ok(())
    }

    /// Drop every cursor, the cache and the learned checkpoints: the next read starts cold.
    /// Proofs are kept: they are facts about the zinfo, not decoded state.
    pub fn forget(&mut self) {
        self.retire_all();
        self.cache.clear();
        self.learned = LearnedCheckpoints::new(
            self.options.learn_interval,
            self.options.max_learned,
            self.zinfo.checkpoints.iter().map(|c| c.out).collect(),
        );
    }

    fn retire_all(&mut self) {
        for c in self.cursors.drain(..) {
            self.counters.retired_decoded += c.decoded;
        }
    }

    /// Drop cursor `index`. Done after any error it met: an error can strike between
    /// two reads of one trailer or header (an I/O failure at a member crossing), and a
    /// cursor resumed there would misread the framing and report a false CRC mismatch.
    fn drop_cursor(&mut self, index: usize) {
        if index < self.cursors.len() {
            let cursor = self.cursors.swap_remove(index);
            self.counters.retired_decoded += cursor.decoded;
        }
    }

    /// Decode page `page` and hand its bytes to `use_page`. On any error the cursor used
    /// is dropped (see [`Self::drop_cursor`]); a retry restarts from a checkpoint.
    fn decode_page(&mut self, page: u64, use_page: impl FnOnce(&[u8]) -> Result<()>) -> Result<()> {
        let target = page * PAGE as u64;
        let index = self.choose_cursor(target)?;
        let result = self.decode_with(index, page, use_page);
        if result.is_err() {
            self.drop_cursor(index);
        }
        result
    }

    /// Drive cursor `index` to page `page`, caching every complete page on the way.
    fn decode_with(
        &mut self,
        index: usize,
        page: u64,
        use_page: impl FnOnce(&[u8]) -> Result<()>,
    ) -> Result<()> {
        self.tick += 1;
        let Self {
            blob,
            zinfo,
            zinfo_file,
            proofs,
            learned,
            cursors,
            cache,
            provisional,
            size,
            tick,
            ..
        } = self;
        let cursor = cursors
            .get_mut(index)
            .ok_or_else(|| Error::internal(format!("gzip: no cursor {index}")))?;
        cursor.last_used = *tick;
        // A provisional decode makes no stops (its start may be unproven) and caches
        // nothing; any other starts at a proven point and proves what it passes.
        let mut prover = Prover::new(zinfo, zinfo_file, proofs);
        let mut no_stops = NoStops;
        let stops: &mut dyn Waypoints = if *provisional {
            &mut no_stops
        } else {
            &mut prover
        };
        loop {
            cursor.complete_page(blob, learned, stops)?;
            if cursor.position() >= *size && !cursor.ended() {
                // The last page ended on a page boundary: check the trailer now.
                cursor.finish(blob)?;
            }
            let here = cursor.page_start() / PAGE as u64;
            // The first page after a restart may be partial (unknown head): skip it.
            if let Some(bytes) = cursor.page() {
                if !*provisional {
                    cache.insert(here, bytes);
                }
                if here == page {
                    let result = use_page(bytes);
                    cursor.advance();
                    return result;
                }
            }
            if cursor.ended() || here > page {
                // The size was measured at open, so this means the blob changed under us.
                return Err(Error::io(format!(
                    "gzip: stream ended at {} before page {page}; did the blob change?",
                    cursor.position()
                )));
            }
            cursor.advance();
        }
    }

    /// The index of a cursor positioned at or before `target`, restarting one if that is
    /// cheaper than continuing any live one.
    fn choose_cursor(&mut self, target: u64) -> Result<usize> {
        // Restart points at or before the page start (see cursor.rs on page heads).
        let limit = target;
        let wanted = self
            .zinfo
            .checkpoints
            .partition_point(|c| c.out <= limit)
            .saturating_sub(1);
        // Outside a provisional decode, restart only where it is proven: at the last
        // proven checkpoint before the one wanted (the decode proves those between), or
        // at a learned checkpoint whose origin is proven.
        let provisional = self.provisional;
        let start = if provisional {
            wanted
        } else {
            if let Some(e) = self.proofs.failure_at_or_before(wanted) {
                return Err(e);
            }
            self.proofs.proven_at_or_before(wanted)
        };
        let proofs = &self.proofs;
        let usable =
            |origin: Option<usize>| provisional || origin.is_none_or(|k| proofs.is_proven(k));
        let zinfo_out = self.zinfo.checkpoints.get(start).map(|c| c.out);
        let learned_out = self.learned.before(limit, &usable).map(|l| l.out);
        let best_out = zinfo_out.max(learned_out).unwrap_or(0);
        let restart_cost = target.saturating_sub(best_out) + RESTART_COST;

        let live = self
            .cursors
            .iter()
            .enumerate()
            .filter(|(_, c)| c.page_start() <= target && !c.ended() && c.page().is_some())
            .filter(|(_, c)| usable(c.origin))
            .min_by_key(|(_, c)| target - c.page_start());
        if let Some((index, cursor)) = live {
            if target - cursor.page_start() <= restart_cost {
                return Ok(index);
            }
        }

        let (restart, origin) = if learned_out > zinfo_out {
            self.counters.learned_starts += 1;
            let point = self.learned.before(limit, &usable).ok_or_else(|| {
                Error::internal("gzip: the learned checkpoint chosen a moment ago is gone")
            })?;
            let restart = Restart {
                in_byte: point.in_byte,
                bits: point.bits,
                out: point.out,
                history: point.history.clone(),
                member_start: false,
            };
            (restart, point.origin.filter(|&k| !proofs.is_proven(k)))
        } else {
            if start < wanted {
                self.counters.proof_starts += 1;
            }
            let origin = (!proofs.is_proven(start)).then_some(start);
            (self.zinfo_restart(start)?, origin)
        };
        self.counters.cursor_starts += 1;

        let capacity = self.options.max_cursors.max(1);
        let index = if self.cursors.len() < capacity {
            self.cursors.push(Cursor::new()?);
            self.cursors.len() - 1
        } else {
            let (victim, _) = self
                .cursors
                .iter()
                .enumerate()
                .min_by_key(|(_, c)| c.last_used)
                .ok_or_else(|| {
                    Error::internal("gzip: no cursor to recycle, though the cursor table is full")
                })?;
            victim
        };
        if let Err(e) = self.cursors[index].restart(&self.blob, &restart, origin) {
            // A failed restart leaves the cursor half positioned: drop it.
            self.drop_cursor(index);
            return Err(e);
        }
        Ok(index)
    }

    /// A restart at zinfo checkpoint `index`. Once proven, its history is cut to what
    /// the proof found deflate may refer back to (none before a member start).
    fn zinfo_restart(&self, index: usize) -> Result<Restart> {
        let cp = self
            .zinfo
            .checkpoints
            .get(index)
            .ok_or_else(|| Error::bad(format!("zinfo: no checkpoint {index}")))?;
        let mut history = Zinfo::window(&self.zinfo_file, cp)?;
        if let Some(keep) = self.proofs.history_len(index) {
            history.drain(..history.len().saturating_sub(keep));
        }
        Ok(Restart {
            in_byte: cp.in_byte,
            bits: cp.bits,
            out: cp.out,
            history,
            member_start: cp.out == 0,
        })
    }
}

fn short_page(page: u64) -> Error {
    Error::io(format!(
        "gzip: page {page} is shorter than the measured size says"
    ))
}

#[cfg(test)]
#[path = "reader_tests.rs"]
mod tests;
