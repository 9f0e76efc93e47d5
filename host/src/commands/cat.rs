//! `erofs-host cat`: the device bytes to stdout.

use std::io::Write;

use anyhow::{Context, Result};
use clap::Args;

use super::device_args::{parse_size, DeviceArgs};
use crate::progress::Progress;
use crate::sandbox::{parallel_read, Runtime, SandboxedDevice};

#[derive(Debug, Args)]
pub struct CatArgs {
    #[command(flatten)]
    pub device: DeviceArgs,

    /// First device byte to write
    #[arg(long, default_value_t = 0, value_parser = parse_size)]
    pub offset: u64,

    /// Bytes to write [default: to the end of the device]
    #[arg(long, value_parser = parse_size)]
    pub length: Option<u64>,

    /// Print the device's counters to stderr when done
    #[arg(long)]
    pub stats: bool,

    /// Sandboxed instances decoding parts of the read at once, each from its own zinfo
    /// checkpoint; the output stays in order.
    /// The total memory cap is N × --memory-limit (each instance has its own).
    /// [default: 1: each further instance must first prove its part's checkpoint by
    /// decoding the blob from its start, so today more instances add work; more than 4
    /// only add start-up work in any case]. A plain tar, or a range inside one span,
    /// always uses one.
    #[arg(long, alias = "instances", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub jobs: Option<u32>,
}

/// Bytes per call into the component on the one-instance path: large enough that the
/// per-call cost (~2 µs) is nothing, small enough to keep memory flat.
const CHUNK: u32 = 4 << 20;

pub fn run(args: CatArgs) -> Result<()> {
    let (spec, limits) = args.device.spec()?;
    let runtime = Runtime::load(&args.device.component)?;
    let mut device = SandboxedDevice::open(runtime, spec, limits)?;
    let end = match args.length {
        Some(len) => args.offset.saturating_add(len).min(device.size()),
        None => device.size(),
    };
    let jobs = args
        .jobs
        .map_or_else(parallel_read::default_jobs, |n| n as usize);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let progress = Progress::bytes("cat", end.saturating_sub(args.offset));
    let mut others = Vec::new();
    if jobs > 1 {
        let mut written = 0u64;
        let mut closed = false;
        let read = parallel_read::read_parallel(&mut device, jobs, args.offset..end, |bytes| {
            if !write_stdout(&mut out, bytes)? {
                closed = true;
                anyhow::bail!("stdout closed");
            }
            written += bytes.len() as u64;
            progress.set_position(written);
            Ok(())
        });
        match read {
            Err(_) if closed => return Ok(()),
            read => others = read?,
        }
    } else {
        let mut pos = args.offset;
        while pos < end {
            let want = (end - pos).min(CHUNK as u64) as u32;
            let bytes = device
                .pread(pos, want)
                .with_context(|| format!("reading device offset {pos}"))?;
            // The sandbox already holds the device to its contract; cat checks its own
            // arithmetic too: never more than it asked for, never nothing before the end.
            if bytes.is_empty() {
                anyhow::bail!("device returned no bytes at offset {pos}, before its end {end}");
            }
            if bytes.len() > want as usize {
                anyhow::bail!(
                    "device returned {} bytes at offset {pos}, more than the {want} asked for; refused",
                    bytes.len()
                );
            }
            if !write_stdout(&mut out, &bytes)? {
                return Ok(());
            }
            pos += bytes.len() as u64;
            progress.set_position(pos - args.offset);
        }
    }
    progress.finish();
    match out.flush() {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
        flushed => flushed.context("writing to stdout")?,
    }
    if args.stats {
        print_stats(&mut device)?;
        for (i, other) in others.iter_mut().enumerate() {
            let s = other.stats().map_err(|e| anyhow::anyhow!("{e}"))?;
            eprintln!(
                "instance {}: {} B decoded, cache {} hits / {} misses, {} cursor starts, blob {} reads / {} B",
                i + 2,
                s.bytes_decoded,
                s.cache_hits,
                s.cache_misses,
                s.cursor_starts,
                s.blob_reads,
                s.blob_bytes_read
            );
        }
    }
    Ok(())
}

/// Writes `bytes` to stdout: `false` when the reader closed the pipe (`cat … | head`),
/// which ends cat quietly, as coreutils do (the reader has what it wanted).
fn write_stdout(out: &mut impl Write, bytes: &[u8]) -> Result<bool> {
    match out.write_all(bytes) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("writing to stdout"),
    }
}

/// `--stats`: the device's counters, the remote fetcher's, and the host's egress ones.
pub fn print_stats(device: &mut SandboxedDevice) -> Result<()> {
    let s = device.stats()?;
    eprintln!(
        "device: {} B decoded, cache {} hits / {} misses, {} cursor starts ({} from learned checkpoints), {} learned, blob {} reads / {} B",
        s.bytes_decoded, s.cache_hits, s.cache_misses, s.cursor_starts, s.learned_starts, s.learned_checkpoints, s.blob_reads, s.blob_bytes_read
    );
    eprintln!(
        "header check on open: {} files, {} tar reads / {} B, {} blob reads, {} remote requests",
        s.header_check_files,
        s.header_check_tar_reads,
        s.header_check_tar_bytes,
        s.header_check_blob_reads,
        s.header_check_requests
    );
    let r = device.remote_stats()?;
    if r.requests > 0 {
        eprintln!(
            "remote (component): {} requests, {} B fetched, {} retries, {} chunk hits",
            r.requests, r.bytes_fetched, r.retries, r.chunk_hits
        );
    }
    if let Some(egress) = device.spec().blob.egress() {
        use std::sync::atomic::Ordering::Relaxed;
        let e = &egress.stats;
        eprintln!(
            "network (host): {} requests, {} B fetched, {} range-cache hits ({} B), {} refused",
            e.requests.load(Relaxed),
            e.bytes_fetched.load(Relaxed),
            e.cache_hits.load(Relaxed),
            e.cache_bytes.load(Relaxed),
            e.denied.load(Relaxed)
        );
        let c = egress.connections();
        eprintln!(
            "connections (host): {} opened ({} over HTTP/2), {} requests reused one",
            c.opened.load(Relaxed),
            c.http2.load(Relaxed),
            c.reused.load(Relaxed)
        );
    }
    Ok(())
}
