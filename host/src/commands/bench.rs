//! `erofs-host bench`: throughput and per-read latency of the device, as the component
//! serves it (the host-component boundary included).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use rand::{rngs::SmallRng, Rng, SeedableRng};

use super::device_args::{parse_size, DeviceArgs};
use super::usage::usage;
use super::verify::print_lines;
use crate::defaults;
use crate::sandbox::runtime::FileKind;
use crate::sandbox::{format_size, Runtime, SandboxedDevice};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Pattern {
    /// Consecutive reads from offset 0 to the end of the device
    Seq,
    /// Reads at random io-size-aligned offsets (fixed seed, so runs compare)
    Random,
    /// Whole small regular files (1 byte to io-size each) through the filesystem
    /// interface, each once, in random order (fixed seed): first reads, so every one
    /// pays the per-file tar header check
    Files,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub device: DeviceArgs,

    #[arg(long, value_enum, default_value_t = Pattern::Seq)]
    pub pattern: Pattern,

    /// Bytes per read
    #[arg(long, value_parser = parse_size, default_value = defaults::BENCH_IO_SIZE)]
    pub io_size: u64,

    /// Number of reads [default: the whole device for seq, 2000 for random, every small
    /// file for files]
    #[arg(long)]
    pub count: Option<u64>,

    /// Every read starts cold: no decoded-byte cache, no live cursor, no learned
    /// checkpoints; each restarts from the zinfo (the reference's behaviour)
    #[arg(long)]
    pub cold: bool,

    /// Read the whole device once before timing (fills the cache and learns checkpoints)
    #[arg(long, conflicts_with = "cold")]
    pub warm: bool,

    /// Seed for the random pattern
    #[arg(long, default_value_t = defaults::BENCH_SEED)]
    pub seed: u64,

    /// Print one JSON object instead of text
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: BenchArgs) -> Result<()> {
    let (mut spec, limits) = args.device.spec()?;
    if args.cold {
        spec.options.cache_bytes = Some(0);
        spec.options.max_cursors = Some(0);
        spec.options.learn_interval = Some(0);
    }
    let io = u32::try_from(args.io_size)
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| usage("--io-size must be 1 byte to 4 GiB"))?;
    // A read needs its buffer and one copy beside the cache and the fixed needs.
    let cache = spec.options.cache_bytes.unwrap_or(0);
    let need = args
        .io_size
        .saturating_mul(2)
        .saturating_add(cache)
        .saturating_add(defaults::MEMORY_FIXED);
    if need > limits.memory {
        return Err(usage(format!(
            "--io-size {} does not fit under --memory-limit {}: two copies of a read, --decode-cache {} and the {} the component needs besides take {}",
            format_size(args.io_size),
            format_size(limits.memory),
            format_size(cache),
            format_size(defaults::MEMORY_FIXED),
            format_size(need)
        )));
    }
    let started = Instant::now();
    let runtime = Runtime::load(&args.device.component)?;
    if args.pattern == Pattern::Files {
        let device = SandboxedDevice::open_filesystem(runtime, spec, limits)?;
        return small_files(&args, device, io, started.elapsed());
    }
    let mut device = SandboxedDevice::open(runtime, spec, limits)?;
    let open_time = started.elapsed();
    let size = device.size();

    if args.warm {
        let mut pos = 0;
        while pos < size {
            pos += device
                .pread(pos, 4 << 20)
                .with_context(|| format!("warm-up read at {pos}"))?
                .len() as u64;
        }
    }

    let slots = (size / io as u64).max(1);
    let count = args.count.unwrap_or(match args.pattern {
        Pattern::Seq => size.div_ceil(io as u64),
        Pattern::Random | Pattern::Files => defaults::BENCH_RANDOM_COUNT,
    });
    let mut rng = SmallRng::seed_from_u64(args.seed);
    let mut latencies = Vec::with_capacity(count as usize);
    let mut bytes = 0u64;
    let timed = Instant::now();
    for i in 0..count {
        let offset = match args.pattern {
            Pattern::Seq => (i % slots) * io as u64,
            Pattern::Random | Pattern::Files => rng.gen_range(0..slots) * io as u64,
        };
        let t = Instant::now();
        let got = device
            .pread(offset, io)
            .with_context(|| format!("read at {offset}"))?;
        latencies.push(t.elapsed());
        bytes += got.len() as u64;
    }
    let elapsed = timed.elapsed().as_secs_f64().max(1e-9);
    latencies.sort_unstable();
    let pct = |p: f64| percentile_us(&latencies, p);
    let mb_per_s = bytes as f64 / elapsed / 1e6;
    let reads_per_s = count as f64 / elapsed;
    let stats = device.stats()?;
    if args.json {
        let report = serde_json::json!({
            "pattern": format!("{:?}", args.pattern).to_lowercase(),
            "io_size": io,
            "count": count,
            "cold": args.cold,
            "warm": args.warm,
            "bytes": bytes,
            "seconds": elapsed,
            "mb_per_s": mb_per_s,
            "reads_per_s": reads_per_s,
            "p50_us": pct(0.50),
            "p99_us": pct(0.99),
            "open_ms": open_time.as_secs_f64() * 1e3,
            "device_size": size,
            "bytes_decoded": stats.bytes_decoded,
            "cache_hits": stats.cache_hits,
            "cache_misses": stats.cache_misses,
            "cursor_starts": stats.cursor_starts,
            "learned_starts": stats.learned_starts,
            "learned_checkpoints": stats.learned_checkpoints,
            "blob_reads": stats.blob_reads,
            "blob_bytes_read": stats.blob_bytes_read,
        });
        print_lines(&[report.to_string()])?;
    } else {
        print_lines(&[format!(
            "{:?} {} B x {count}{}: {mb_per_s:.1} MB/s, {reads_per_s:.0} reads/s, p50 {:.1} us, p99 {:.1} us (open {:.1} ms)",
            args.pattern,
            io,
            if args.cold { " cold" } else if args.warm { " warm" } else { "" },
            pct(0.5),
            pct(0.99),
            open_time.as_secs_f64() * 1e3
        )])?;
        print_lines(&[format!(
            "decoded {} B, cache hits {} / misses {}, cursor starts {} ({} learned), {} learned checkpoints, blob {} reads / {} B",
            stats.bytes_decoded,
            stats.cache_hits,
            stats.cache_misses,
            stats.cursor_starts,
            stats.learned_starts,
            stats.learned_checkpoints,
            stats.blob_reads,
            stats.blob_bytes_read
        )])?;
    }
    Ok(())
}

/// `--pattern files`: find the regular files of 1 byte to `io` bytes (untimed), then
/// read `--count` of them (default all) whole, each once, in random order.
fn small_files(
    args: &BenchArgs,
    mut fs: SandboxedDevice,
    io: u32,
    open_time: Duration,
) -> Result<()> {
    let mut files = Vec::new();
    let mut dirs = vec![fs.root()?];
    while let Some(dir) = dirs.pop() {
        let mut cookie = 0;
        loop {
            let entries = fs
                .readdir(dir, cookie, 1024)
                .with_context(|| format!("readdir of inode {dir}"))?;
            let Some(last) = entries.last() else { break };
            cookie = last.next_cookie;
            for e in entries {
                if e.name == b"." || e.name == b".." {
                    continue;
                }
                match e.kind {
                    FileKind::Directory => dirs.push(e.ino),
                    FileKind::Regular => {
                        let size = fs.getattr(e.ino)?.size;
                        if (1..=u64::from(io)).contains(&size) {
                            files.push((e.ino, size));
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    // Hard links list an inode more than once: read each once.
    files.sort_unstable();
    files.dedup();
    let mut rng = SmallRng::seed_from_u64(args.seed);
    for i in (1..files.len()).rev() {
        files.swap(i, rng.gen_range(0..=i));
    }
    files.truncate(args.count.map_or(files.len(), |n| n as usize));
    if files.is_empty() {
        return Err(usage(format!(
            "--pattern files: no regular file of 1 byte to {} in the image",
            format_size(u64::from(io))
        )));
    }
    let mut latencies = Vec::with_capacity(files.len());
    let mut bytes = 0u64;
    let timed = Instant::now();
    for &(ino, size) in &files {
        let t = Instant::now();
        // At most `io` bytes: one call.
        let len = u32::try_from(size).unwrap_or(io);
        let got = fs
            .read(ino, 0, len)
            .with_context(|| format!("read of inode {ino}"))?;
        latencies.push(t.elapsed());
        bytes += got.len() as u64;
    }
    let elapsed = timed.elapsed().as_secs_f64().max(1e-9);
    latencies.sort_unstable();
    let pct = |p: f64| percentile_us(&latencies, p);
    let count = files.len();
    let reads_per_s = count as f64 / elapsed;
    let stats = fs.stats()?;
    let remote = fs.remote_stats()?;
    if args.json {
        let report = serde_json::json!({
            "pattern": "files",
            "max_file_size": io,
            "count": count,
            "bytes": bytes,
            "seconds": elapsed,
            "reads_per_s": reads_per_s,
            "mb_per_s": bytes as f64 / elapsed / 1e6,
            "p50_us": pct(0.50),
            "p99_us": pct(0.99),
            "open_ms": open_time.as_secs_f64() * 1e3,
            "bytes_decoded": stats.bytes_decoded,
            "cache_hits": stats.cache_hits,
            "cache_misses": stats.cache_misses,
            "cursor_starts": stats.cursor_starts,
            "blob_reads": stats.blob_reads,
            "blob_bytes_read": stats.blob_bytes_read,
            "remote_requests": remote.requests,
        });
        print_lines(&[report.to_string()])?;
    } else {
        print_lines(&[format!(
            "files of 1 B to {io} B x {count}: {reads_per_s:.0} files/s, p50 {:.1} us, p99 {:.1} us (open {:.1} ms)",
            pct(0.5),
            pct(0.99),
            open_time.as_secs_f64() * 1e3
        )])?;
        print_lines(&[format!(
            "decoded {} B, cache hits {} / misses {}, cursor starts {}, blob {} reads / {} B, {} remote requests",
            stats.bytes_decoded,
            stats.cache_hits,
            stats.cache_misses,
            stats.cursor_starts,
            stats.blob_reads,
            stats.blob_bytes_read,
            remote.requests
        )])?;
    }
    Ok(())
}

/// The `p` quantile (0..=1) of sorted latencies, in microseconds.
fn percentile_us(sorted: &[Duration], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted
        .get(idx)
        .copied()
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
        * 1e6
}
