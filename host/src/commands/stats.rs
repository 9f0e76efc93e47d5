//! `erofs-host stats`: what a mount of ours has cost so far, per layer: bytes fetched
//! from the registry, range requests, cache hits, bytes decoded. The numbers come from
//! the stats files the mount's server publishes (`mount_registry::stats_file`), found
//! through its registration, both read from the caller's private state directory with
//! the same checks as `umount` (no symlink, the caller's own, not writable by others).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;

use crate::mount_registry::stats_file::{read_stats, stats_path, TreeStats};
use crate::mount_registry::{absolute, read_registration, Registration};

#[derive(Debug, Args)]
#[command(
    long_about = "Print what a mount made by `erofs-host mount` has cost so far: per layer (one \
layer, or every layer of a whole-image mount) the bytes fetched from the registry, the range \
requests sent, the decoded-page cache hits and the bytes decoded, with a total row. Use it to see \
how lazy a workload really is (how much of a layer it pulled), or whether a cache helps.\n\n\
The server publishes its counters at most once a second, so the last second may be missing. \
A layer whose server has not published yet (or a backend that does not publish, loop and nbd) \
shows zeros and says so. Counters restart when a sandbox instance is rebuilt after a trap."
)]
pub struct StatsArgs {
    /// The mountpoint given to `erofs-host mount`
    pub mountpoint: PathBuf,

    /// Print JSON (for scripts) instead of a table
    #[arg(long)]
    pub json: bool,
}

/// One row: a served tree and its counters (zeros, `published: false`, when it has no
/// stats file yet).
#[derive(Debug, Serialize)]
struct Row {
    layer: String,
    published: bool,
    #[serde(flatten)]
    stats: TreeStats,
}

#[derive(Debug, Serialize)]
struct Report {
    mountpoint: PathBuf,
    backend: String,
    layers: Vec<Row>,
    total: TreeStats,
}

pub fn run(args: StatsArgs) -> Result<()> {
    let mp = absolute(&args.mountpoint)?;
    let Some(reg) = read_registration(&mp)? else {
        bail!(
            "{}: not a mount of erofs-host (no registration of yours for it; a mount made by another user is theirs to ask about)",
            mp.display()
        );
    };
    let mut layers = Vec::new();
    let mut total = TreeStats {
        label: "total".into(),
        ..TreeStats::default()
    };
    for (name, dir) in served_trees(&reg) {
        let path = stats_path(&dir)?;
        let found = read_stats(&path)?;
        let published = found.is_some();
        let stats = found.unwrap_or_default();
        total.add(&stats);
        layers.push(Row {
            layer: if stats.label.is_empty() {
                name
            } else {
                stats.label.clone()
            },
            published,
            stats,
        });
    }
    let report = Report {
        mountpoint: mp,
        backend: reg.backend.clone(),
        layers,
        total,
    };
    let text = if args.json {
        let mut t = serde_json::to_string_pretty(&report)?;
        t.push('\n');
        t
    } else {
        table(&report)
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("writing the stats to stdout")
}

/// The trees a registration's server serves, bottom layer first, each with a name for a
/// row that has no stats file: the mountpoint itself for a single layer; for a whole
/// image, its layer directories (`<id>.layers/N`; the loop backend's `N.device` backing
/// mounts are not trees).
fn served_trees(reg: &Registration) -> Vec<(String, PathBuf)> {
    if reg.layers.is_empty() {
        return vec![("layer".into(), reg.mountpoint.clone())];
    }
    let mut trees: Vec<(u32, PathBuf)> = reg
        .layers
        .iter()
        .filter_map(|p| {
            let index = p.file_name()?.to_str()?.parse::<u32>().ok()?;
            Some((index, p.clone()))
        })
        .collect();
    trees.sort();
    trees
        .into_iter()
        .map(|(i, p)| (format!("layer {i}"), p))
        .collect()
}

fn table(r: &Report) -> String {
    let mut s = format!("{} ({} backend)\n", r.mountpoint.display(), r.backend);
    let head = [
        "LAYER",
        "FETCHED",
        "REQUESTS",
        "CACHE HITS",
        "DECODED",
        "NET FETCHED",
        "DISK HITS",
        "BG FETCHED",
        "BG DONE",
    ];
    let mut rows: Vec<[String; COLUMNS]> = vec![head.map(String::from)];
    for row in &r.layers {
        let mut label = row.layer.clone();
        if !row.published {
            label.push_str(" (no stats yet)");
        }
        rows.push(cells(&label, &row.stats));
    }
    rows.push(cells("total", &r.total));
    let width = |c: usize| rows.iter().map(|r| r[c].len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..COLUMNS).map(width).collect();
    for row in &rows {
        let mut line = format!("{:<w$}", row[0], w = widths[0]);
        for (cell, w) in row.iter().zip(&widths).skip(1) {
            line.push_str(&format!("  {cell:>w$}"));
        }
        s.push_str(line.trim_end());
        s.push('\n');
    }
    if r.layers.iter().any(|l| !l.published) {
        s.push_str(
            "(no stats yet: the server has not published counters (it does once a second), or its backend does not)\n",
        );
    }
    s
}

/// The table's columns: FETCHED and REQUESTS are what the component received and asked
/// for (disk-cache answers included); NET FETCHED and DISK HITS split a whole image's
/// traffic into network and on-disk cache; BG the background fetch (bytes, and how far
/// through the layer's tar it is).
const COLUMNS: usize = 9;

fn cells(label: &str, t: &TreeStats) -> [String; COLUMNS] {
    let done = (t.background_done.saturating_mul(100))
        .checked_div(t.background_total)
        .map_or_else(|| "-".to_string(), |p| format!("{p}%"));
    [
        label.to_string(),
        t.bytes_fetched.to_string(),
        t.requests.to_string(),
        t.cache_hits.to_string(),
        t.bytes_decoded.to_string(),
        t.registry_bytes_fetched.to_string(),
        t.disk_cache_hits.to_string(),
        t.background_bytes_fetched.to_string(),
        done,
    ]
}
