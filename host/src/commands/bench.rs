//! `erofs-host bench`: throughput and per-read latency of the device, as the component
//! serves it (the host-component boundary included).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use rand::{rngs::SmallRng, Rng, SeedableRng};

use super::device_args::{parse_size, DeviceArgs};
use super::usage::usage;
use crate::defaults;
use crate::sandbox::{format_size, Runtime, SandboxedDevice};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Pattern {
    /// Consecutive reads from offset 0 to the end of the device
    Seq,
    /// Reads at random io-size-aligned offsets (fixed seed, so runs compare)
    Random,
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

    /// Number of reads [default: the whole device for seq, 2000 for random]
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
        Pattern::Random => defaults::BENCH_RANDOM_COUNT,
    });
    let mut rng = SmallRng::seed_from_u64(args.seed);
    let mut latencies = Vec::with_capacity(count as usize);
    let mut bytes = 0u64;
    let timed = Instant::now();
    for i in 0..count {
        let offset = match args.pattern {
            Pattern::Seq => (i % slots) * io as u64,
            Pattern::Random => rng.gen_range(0..slots) * io as u64,
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
    let pct = |p: f64| -> f64 {
        let idx = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies
            .get(idx)
            .copied()
            .unwrap_or(Duration::ZERO)
            .as_secs_f64()
            * 1e6
    };
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
        println!("{report}");
    } else {
        println!(
            "{:?} {} B x {count}{}: {mb_per_s:.1} MB/s, {reads_per_s:.0} reads/s, p50 {:.1} us, p99 {:.1} us (open {:.1} ms)",
            args.pattern,
            io,
            if args.cold { " cold" } else if args.warm { " warm" } else { "" },
            pct(0.5),
            pct(0.99),
            open_time.as_secs_f64() * 1e3
        );
        println!(
            "decoded {} B, cache hits {} / misses {}, cursor starts {} ({} learned), {} learned checkpoints, blob {} reads / {} B",
            stats.bytes_decoded,
            stats.cache_hits,
            stats.cache_misses,
            stats.cursor_starts,
            stats.learned_starts,
            stats.learned_checkpoints,
            stats.blob_reads,
            stats.blob_bytes_read
        );
    }
    Ok(())
}
