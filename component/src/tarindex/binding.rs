//! Binding the tar index to its blob (issue 16): which files get their tar header checked
//! ([`header_check`](super::header_check)), and when.
//!
//! - On open, [`check_sample`]: a few regular files spread over the tar (the first, the
//!   last, and the first after each of a few equal steps through the tar), so an index from
//!   another layer fails at once with a clear error, for a few 512-byte reads.
//! - On the first read of each file, [`FirstReads`]: that file's header, once; the answer
//!   is remembered in a bitmap by nid (good) or a bounded map (bad).
//! - On request, [`check_all`] (`verify --deep`): every regular file, in tar order, so
//!   the whole tar is read once, front to back.

use std::collections::HashMap;

use erofs_image::{Filesystem as Image, RegularFile};

use super::device::Device;
use super::header_check::{check_file, Mismatch};
use crate::error::{Error, Kind, Result};

/// Regular files whose header is checked on open: the first and the last in tar order and
/// six between. Eight 512-byte reads catch an index of another layer (every file of it
/// would miss) at a cost of well under a millisecond locally and eight range requests for
/// a remote plain tar; 0 turns the check off.
pub const DEFAULT_HEADER_SAMPLES: u32 = 8;

/// Directory entries the sampling walk visits at most: the walk reads only metadata (in
/// memory up to 64 MiB), and 1 Mi entries is a large layer; past it the sample comes from
/// the entries visited.
pub const SAMPLE_WALK_LIMIT: u64 = 1 << 20;

/// Directory entries `verify --deep` visits at most (the same bound as `verify`).
pub const DEEP_WALK_LIMIT: u64 = 1 << 22;

/// Mismatched files whose error is kept: beyond this many, a broken file is checked again
/// on each read (still an error, just not a remembered one).
const MAX_REMEMBERED_BAD: usize = 4096;

/// What the open-time check did, for `device-stats`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SampleReport {
    /// Files whose header was checked.
    pub files: u32,
    /// Tar reads the check made, and their bytes.
    pub tar_reads: u64,
    pub tar_bytes: u64,
    /// Blob reads (vfile preads) and remote requests it added.
    pub blob_reads: u64,
    pub remote_requests: u64,
}

/// A file to check: where its data starts, its nid and size, and the path it was met by.
struct Candidate {
    data: u64,
    nid: u64,
    size: u64,
    path: Vec<u8>,
}

impl Candidate {
    fn of(file: RegularFile) -> Option<Self> {
        Some(Self {
            data: file.data_start?,
            nid: file.nid,
            size: file.size,
            path: file.path,
        })
    }
}

/// The mismatch as an error naming the file by the path it was met by.
fn named(m: &Mismatch, path: &[u8]) -> Error {
    m.to_error(&super::header_check::shown(path))
}

/// Check the headers of up to `samples` regular files spread over the tar.
pub fn check_sample(image: &Image, dev: &mut Device, samples: u32) -> Result<SampleReport> {
    let before = counters(dev);
    if samples == 0 {
        return Ok(SampleReport::default());
    }
    let slices = u64::from(samples.saturating_sub(2));
    let meta_size = dev.meta_size();
    let mut first: Option<Candidate> = None;
    let mut last: Option<Candidate> = None;
    let boundaries = sample_boundaries(dev, slices);
    let mut between: Vec<Option<Candidate>> = boundaries.iter().map(|_| None).collect();
    image
        .for_each_regular_file(dev, SAMPLE_WALK_LIMIT, true, &mut |_, file| {
            let Some(c) = Candidate::of(file) else {
                return Ok(());
            };
            // Slot k takes the earliest file whose header starts at or after boundary k
            // (a big file spanning a boundary does not leave it empty: the next file
            // takes it).
            let header = c.data.saturating_sub(meta_size).saturating_sub(512);
            for (&boundary, slot) in boundaries.iter().zip(between.iter_mut()) {
                if header >= boundary && slot.as_ref().is_none_or(|s| c.data < s.data) {
                    *slot = Some(Candidate {
                        path: c.path.clone(),
                        ..c
                    });
                }
            }
            if samples >= 2 && last.as_ref().is_none_or(|l| c.data > l.data) {
                last = Some(Candidate {
                    path: c.path.clone(),
                    ..c
                });
            }
            if first.as_ref().is_none_or(|f| c.data < f.data) {
                first = Some(c);
            }
            Ok(())
        })
        .map_err(|e| dev.lift(e))?;
    let mut chosen: Vec<Candidate> = first.into_iter().chain(last).collect();
    chosen.extend(between.into_iter().flatten());
    chosen.sort_by_key(|c| c.data);
    chosen.dedup_by_key(|c| c.data);
    // Every sampled header is read in turn: a remote blob asks for all their bytes at once.
    let headers: Vec<(u64, u64)> = chosen
        .iter()
        .map(|c| (c.data.saturating_sub(meta_size).saturating_sub(512), 512))
        .collect();
    dev.will_need_tar(&headers);
    for c in &chosen {
        match check_file(image, dev, c.nid, c.size) {
            Ok(Ok(())) => {}
            Ok(Err(m)) => return Err(named(&m, &c.path)),
            // A metadata defect of this one file is for its own operations to report
            // (a FUSE mount serves the rest of the tree): the sample goes on without it.
            Err(e) if matches!(e.kind, Kind::Corrupt | Kind::Unsupported | Kind::OutOfRange) => {}
            Err(e) => return Err(e),
        }
    }
    let after = counters(dev);
    Ok(SampleReport {
        files: u32::try_from(chosen.len()).unwrap_or(u32::MAX),
        tar_reads: after.0 - before.0,
        tar_bytes: after.1 - before.1,
        blob_reads: after.2 - before.2,
        remote_requests: after.3 - before.3,
    })
}

/// Tar offsets from which the between-samples are taken: `slices` points spread evenly
/// through the tar. For a gzip blob they are zinfo checkpoints (the first file after a
/// checkpoint costs a short decode; one elsewhere, up to a whole span), for a plain tar
/// equal steps.
fn sample_boundaries(dev: &Device, slices: u64) -> Vec<u64> {
    let tar_size = dev.tar_size();
    let steps = (1..=slices).map(|k| {
        u64::try_from(u128::from(tar_size) * u128::from(k) / u128::from(slices + 1))
            .unwrap_or(u64::MAX)
    });
    match dev.cheap_offsets() {
        // Checkpoint 0 is the tar's start, which the first file covers.
        Some(points) if points.len() > 1 => {
            let points = points.get(1..).unwrap_or_default();
            let mut picked: Vec<u64> = steps
                .filter_map(|step| {
                    points
                        .iter()
                        .copied()
                        .find(|&p| p >= step)
                        .or(points.last().copied())
                })
                .collect();
            picked.dedup();
            picked
        }
        _ => steps.collect(),
    }
}

/// (tar reads, tar bytes, blob reads, remote requests) of the device so far.
fn counters(dev: &Device) -> (u64, u64, u64, u64) {
    let (reads, bytes) = dev.check_reads();
    let requests = dev.remote_stats().map_or(0, |r| r.requests);
    (reads, bytes, dev.blob_reads(), requests)
}

/// Check every regular file's header, in tar order. Returns the number of files checked.
pub fn check_all(image: &Image, dev: &mut Device) -> Result<u64> {
    let mut all: Vec<(u64, u64, u64)> = Vec::new();
    let end = image
        .for_each_regular_file(dev, DEEP_WALK_LIMIT, false, &mut |_, file| {
            if let Some(data) = file.data_start {
                all.push((data, file.nid, file.size));
            }
            Ok(())
        })
        .map_err(|e| dev.lift(e))?;
    if end.truncated {
        return Err(Error::unsupported(format!(
            "the tree has more than {DEEP_WALK_LIMIT} entries, the most a deep check walks"
        )));
    }
    all.sort_unstable();
    for &(_, nid, size) in &all {
        if let Err(m) = check_file(image, dev, nid, size)? {
            let path = path_of(image, dev, nid)?;
            return Err(m.to_error(&path));
        }
    }
    Ok(all.len() as u64)
}

/// A path that leads to `nid`, for a message (a walk of the tree: only on failures).
fn path_of(image: &Image, dev: &mut Device, nid: u64) -> Result<String> {
    let mut found: Option<Vec<u8>> = None;
    image
        .for_each_regular_file(dev, DEEP_WALK_LIMIT, true, &mut |_, file| {
            if file.nid == nid && found.is_none() {
                found = Some(file.path);
            }
            Ok(())
        })
        .map_err(|e| dev.lift(e))?;
    Ok(match found {
        Some(path) => super::header_check::shown(&path),
        None => format!("nid {nid}"),
    })
}

/// The first-read check: each regular file's header is checked once; the answer is kept.
pub struct FirstReads {
    /// One bit per possible nid (inodes live in the metadata, 32 bytes apart): set once
    /// the file's header matched.
    good: Vec<u64>,
    /// Files whose header did not match, with the error they get on every read.
    bad: HashMap<u64, Error>,
}

impl FirstReads {
    /// For a device whose metadata is `meta_size` bytes: a bitmap of `meta_size / 256`
    /// bytes (0.4% of the metadata, which is in memory anyway).
    pub fn new(meta_size: u64) -> Self {
        let words = (meta_size / 32).div_ceil(64).saturating_add(1);
        Self {
            good: vec![0; usize::try_from(words).unwrap_or(0)],
            bad: HashMap::new(),
        }
    }

    fn bit(&self, nid: u64) -> Option<(usize, u64)> {
        let word = usize::try_from(nid / 64).ok()?;
        (word < self.good.len()).then_some((word, 1u64 << (nid % 64)))
    }

    /// True once file `nid`'s header has matched.
    pub fn is_good(&self, nid: u64) -> bool {
        self.bit(nid)
            .and_then(|(w, m)| self.good.get(w).map(|v| v & m != 0))
            .unwrap_or(false)
    }

    /// Files found good so far.
    pub fn good_count(&self) -> u64 {
        self.good.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Ok when regular file `nid` of `size` bytes may be read: its header matched now or
    /// before. A mismatch is an error for this file on this and every later read; a
    /// failure to read the header is returned as it is and the check runs again next time.
    pub fn ensure(&mut self, image: &Image, dev: &mut Device, nid: u64, size: u64) -> Result<()> {
        // The benchmark's reference build only (Cargo.toml): no check at all.
        if cfg!(feature = "no-header-check") || self.is_good(nid) {
            return Ok(());
        }
        if let Some(e) = self.bad.get(&nid) {
            return Err(e.clone());
        }
        match check_file(image, dev, nid, size)? {
            Ok(()) => {
                // The header vouches for the file: later reads skip the check.
                if let Some((w, m)) = self.bit(nid) {
                    if let Some(v) = self.good.get_mut(w) {
                        *v |= m;
                    }
                }
                Ok(())
            }
            Err(m) => {
                let e = m.to_error(&path_of(image, dev, nid)?);
                if self.bad.len() < MAX_REMEMBERED_BAD {
                    self.bad.insert(nid, e.clone());
                }
                Err(e)
            }
        }
    }
}

#[cfg(test)]
#[path = "binding_tests.rs"]
mod tests;
