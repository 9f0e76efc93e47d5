//! Checkpoints learned while decoding (issue: fast random reads).
//!
//! zinfo checkpoints sit every ~4 MiB, so a cold random read may inflate up to 4 MiB
//! before it reaches its target. Whenever a cursor passes a deflate block boundary about
//! `interval` bytes after the nearest known checkpoint, we keep a new one in memory:
//! the boundary's bit position and the 32 KiB of output before it. Later reads then
//! restart within ~`interval` of their target. The store holds at most `max` of them
//! (32 KiB each); when full, the one least recently used for a restart is dropped.

use super::cursor::{Learned, Learner};

pub struct LearnedCheckpoints {
    /// Sorted by `out`.
    points: Vec<Entry>,
    interval: u64,
    max: usize,
    tick: u64,
    /// `out` offsets of the zinfo checkpoints, sorted: learning next to them is wasted.
    fixed: Vec<u64>,
}

struct Entry {
    point: Learned,
    last_used: u64,
}

impl LearnedCheckpoints {
    pub fn new(interval: u64, max: usize, fixed: Vec<u64>) -> Self {
        Self {
            points: Vec::new(),
            interval,
            max,
            tick: 0,
            fixed,
        }
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// The learned checkpoint with the greatest `out` not above `limit` whose origin is
    /// `usable` (see [`Learned::origin`]).
    pub fn before(
        &mut self,
        limit: u64,
        usable: &dyn Fn(Option<usize>) -> bool,
    ) -> Option<&Learned> {
        let after = self.points.partition_point(|e| e.point.out <= limit);
        let index = self
            .points
            .get(..after)?
            .iter()
            .rposition(|e| usable(e.point.origin))?;
        self.tick += 1;
        let entry = self.points.get_mut(index)?;
        entry.last_used = self.tick;
        Some(&entry.point)
    }

    /// Is there a known checkpoint (learned or from the zinfo) within `interval` of `out`?
    fn covered(&self, out: u64) -> bool {
        let near = |sorted_before: Option<u64>, sorted_after: Option<u64>| {
            sorted_before.is_some_and(|b| out - b < self.interval)
                || sorted_after.is_some_and(|a| a - out < self.interval)
        };
        let i = self.points.partition_point(|e| e.point.out <= out);
        let learned_before = i
            .checked_sub(1)
            .and_then(|k| self.points.get(k))
            .map(|e| e.point.out);
        let learned_after = self.points.get(i).map(|e| e.point.out);
        let j = self.fixed.partition_point(|&o| o <= out);
        let fixed_before = j.checked_sub(1).and_then(|k| self.fixed.get(k)).copied();
        let fixed_after = self.fixed.get(j).copied();
        near(learned_before, learned_after) || near(fixed_before, fixed_after)
    }
}

impl Learner for LearnedCheckpoints {
    fn wants_boundary(&self, since: u64) -> bool {
        self.max > 0 && self.interval > 0 && since >= self.interval
    }

    fn offer(&mut self, at_out: u64, make: &mut dyn FnMut() -> Learned) -> bool {
        if self.max == 0 || self.interval == 0 || self.covered(at_out) {
            return false;
        }
        if self.points.len() >= self.max {
            // Full: drop the least recently used.
            if let Some((victim, _)) = self
                .points
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.last_used)
            {
                self.points.remove(victim);
            }
        }
        self.tick += 1;
        let point = make();
        let at = self.points.partition_point(|e| e.point.out <= point.out);
        self.points.insert(
            at,
            Entry {
                point,
                last_used: self.tick,
            },
        );
        true
    }
}

/// A learner that never learns, for cold reads and for size discovery.
pub struct NoLearning;

impl Learner for NoLearning {
    fn wants_boundary(&self, _since: u64) -> bool {
        false
    }
    fn offer(&mut self, _at_out: u64, _make: &mut dyn FnMut() -> Learned) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn learned(out: u64) -> Learned {
        Learned {
            in_byte: out / 3 + 10,
            bits: 0,
            out,
            history: Vec::new(),
            origin: None,
        }
    }

    #[test]
    fn keeps_spacing_and_bound() {
        let mut store = LearnedCheckpoints::new(1000, 2, vec![0, 10_000]);
        assert!(
            !store.offer(500, &mut || learned(500)),
            "too close to the zinfo's 0"
        );
        assert!(store.offer(2000, &mut || learned(2000)));
        assert!(
            !store.offer(2500, &mut || learned(2500)),
            "too close to 2000"
        );
        assert!(store.offer(4000, &mut || learned(4000)));
        assert_eq!(store.before(3999, &|_| true).map(|l| l.out), Some(2000));
        // Full: the least recently used (4000; 2000 was just used) goes.
        assert!(store.offer(6000, &mut || learned(6000)));
        assert_eq!(store.len(), 2);
        assert_eq!(store.before(5999, &|_| true).map(|l| l.out), Some(2000));
        assert_eq!(store.before(100, &|_| true).map(|l| l.out), None);
    }
}
