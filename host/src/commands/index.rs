//! `erofs-host index`: build a layer's tar index (META) and, for a gzip blob, its zinfo,
//! inside the sandbox ([`index_blob`]), and write them atomically: each output goes to a
//! temporary file beside it and is renamed into place only when the whole build
//! succeeded, so an error or Ctrl-C never leaves a partial file under the name asked for.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;

use super::device_args::{parse_size, RemoteArgs};
use super::publish;
use super::usage::usage;
use crate::atomic_output;
use crate::defaults;
use crate::progress::Progress;
use crate::sandbox::{
    index_blob, BlobSource, IndexOutput, IndexProgress, IndexRequest, Limits, Runtime,
};

#[derive(Debug, Args)]
pub struct IndexArgs {
    /// The erofs-wasm component (.wasm), e.g. target/wasm32-wasip2/release/erofs_component.wasm
    pub component: PathBuf,

    /// The layer blob (gzip'd or plain tar): a path, an http(s):// URL, or
    /// oci://REGISTRY/REPO:TAG | oci://REGISTRY/REPO@sha256:... (see --layer, --blob-digest)
    pub blob: String,

    /// Where to write the EROFS tar-index metadata image (mount META ‖ tar). Not with
    /// --push, which publishes the index of every layer instead
    #[arg(
        long,
        value_name = "OUT_META",
        required_unless_present = "push",
        conflicts_with = "push"
    )]
    pub tarindex: Option<PathBuf>,

    /// Where to write the zinfo checkpoint index: required for a gzip blob, refused for a
    /// plain tar (which is read directly)
    #[arg(long, value_name = "OUT_ZINFO", conflicts_with = "push")]
    pub zinfo: Option<PathBuf>,

    /// oci:// only: index every layer of the image (for --platform) and publish the
    /// indexes next to it, as an OCI artifact whose subject is the image manifest, under
    /// the referrers fallback tag sha256-<hex> where the registry has no referrers API.
    /// `mount`, `cat`, `verify` and `serve-nbd` then find it without --tarindex. Needs push
    /// access to the repository
    #[arg(long)]
    pub push: bool,

    /// Translate aufs whiteouts, as image layers use them: `.wh.NAME` becomes an overlay
    /// whiteout, `.wh..wh..opq` an opaque directory; other `.wh..wh.*` are dropped
    /// [default: off, names are kept as they are in the tar]
    #[arg(long)]
    pub aufs: bool,

    /// Uncompressed bytes between zinfo checkpoints. A cold random read inflates half a
    /// span on average (SOCI uses 4M, nydus <= 2M); each checkpoint costs 32 KiB of zinfo,
    /// so 2M keeps the zinfo at 1.6% of the tar. At least 64K
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = defaults::INDEX_SPAN)]
    pub span_size: u64,

    #[command(flatten)]
    pub remote: RemoteArgs,

    /// Cap on the component's memory [default: 256M, for the tree of a few hundred
    /// thousand entries (names and metadata, no file data), the zinfo (32 KiB per
    /// checkpoint) and the copies of the outputs; 128M more for remote blobs, for
    /// fetched chunks]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub memory_limit: Option<u64>,

    /// Deadline for one call into the component, in seconds [default 30 for local blobs:
    /// a call indexes 1 MiB, well under a second, so a guest busy for 30 s is stuck; 120
    /// for remote ones: a call may wait for retries with backoff]
    #[arg(long, value_name = "SECONDS")]
    pub call_timeout: Option<f64>,
    // No `--quiet` here: the global one silences the progress (it may follow the
    // command's arguments too).
}

pub fn run(args: IndexArgs) -> Result<()> {
    // Before any thread exists, so that every thread inherits it.
    atomic_output::take_over_termination_signals()?;
    let blob = args.remote.source(&args.blob)?;
    let limits = limits(&args, &blob)?;
    if args.push {
        return push(&args, &blob, limits);
    }
    let Some(tarindex) = args.tarindex.clone() else {
        return Err(usage(
            "--tarindex OUT_META is needed (or --push, for an oci:// image)",
        ));
    };
    if args.zinfo.as_deref() == Some(tarindex.as_path()) {
        return Err(usage("--tarindex and --zinfo name the same file"));
    }
    let request = IndexRequest {
        aufs: args.aufs,
        span: Some(args.span_size),
        blob_digest: args.remote.blob_digest.clone(),
        want_zinfo: Some(args.zinfo.is_some()),
    };
    let runtime = Runtime::load(&args.component)?;
    let mut progress = IndexProgressDisplay::default();
    let started = Instant::now();
    let result = index_blob(&runtime, &blob, &request, limits, &mut |p| progress.show(p));
    drop(progress);
    let output = result?;
    let mut outputs = vec![(tarindex.as_path(), output.meta.as_slice())];
    if let (Some(path), Some(zinfo)) = (&args.zinfo, &output.zinfo) {
        outputs.push((path.as_path(), zinfo.as_slice()));
    }
    atomic_output::write_all(&outputs)?;
    report(&args, &tarindex, &output, started.elapsed())
}

/// `--push`: every layer indexed in the sandbox, then published (see [`publish`]).
fn push(args: &IndexArgs, blob: &BlobSource, limits: Limits) -> Result<()> {
    let runtime = Runtime::load(&args.component)?;
    let mut progress = IndexProgressDisplay::default();
    let mut show = |p: &IndexProgress| progress.show(p);
    let mut indexer = publish::SandboxIndexer {
        runtime: &runtime,
        aufs: args.aufs,
        span: args.span_size,
        limits,
        on_progress: &mut show,
    };
    let result = publish::push_image(&runtime, blob, limits, &mut indexer);
    drop(progress);
    result
}

fn limits(args: &IndexArgs, blob: &BlobSource) -> Result<Limits> {
    let remote = matches!(blob, BlobSource::Remote { .. });
    let memory = args.memory_limit.unwrap_or(
        defaults::INDEX_MEMORY
            + if remote {
                defaults::MEMORY_REMOTE_EXTRA
            } else {
                0
            },
    );
    let timeout = args.call_timeout.unwrap_or(if remote {
        defaults::CALL_TIMEOUT_REMOTE_SECS
    } else {
        defaults::CALL_TIMEOUT_LOCAL_SECS
    });
    if !(timeout > 0.0 && timeout < defaults::CALL_TIMEOUT_MAX_SECS) {
        return Err(usage(format!(
            "--call-timeout {timeout}: must be between 0 and {} seconds",
            defaults::CALL_TIMEOUT_MAX_SECS
        )));
    }
    Ok(Limits {
        memory,
        call_timeout: Duration::from_secs_f64(timeout),
    })
}

fn report(args: &IndexArgs, tarindex: &Path, output: &IndexOutput, took: Duration) -> Result<()> {
    let s = &output.stats;
    let mut lines = vec![format!(
        "meta: {} ({} bytes, {} inodes from {} tar entries)",
        tarindex.display(),
        output.meta.len(),
        s.inodes,
        s.entries
    )];
    if let (Some(path), Some(z)) = (&args.zinfo, &output.zinfo) {
        use sha2::{Digest, Sha256};
        lines.push(format!(
            "zinfo: {} ({} bytes, {} checkpoints, span {}, sha256 {} for --zinfo-sha256)",
            path.display(),
            z.len(),
            s.checkpoints,
            s.span_size,
            hex::encode(Sha256::digest(z))
        ));
    }
    lines.push(format!(
        "blob: {} bytes, digest {}",
        s.blob_size, s.blob_digest
    ));
    lines.push(format!("tar: {} bytes, diff_id {}", s.tar_size, s.diff_id));
    lines.extend(s.notes.iter().map(|note| format!("note: {note}")));
    tracing::info!("indexed in {:.3} s", took.as_secs_f64());
    // `index … | head` closes the pipe early: quiet, as `verify` (coreutils' way).
    super::verify::print_lines(&lines)
}

/// Progress of a build ([`Progress`]: on a terminal only, after about a second, never
/// with `--quiet`): a bar of blob bytes with the entries so far when the blob's size is
/// known, else a spinner with both counts. Made at the first report, which is the first
/// time the size may be known (a remote blob's comes with its first response).
#[derive(Default)]
struct IndexProgressDisplay {
    shown: Option<(Progress, bool)>,
}

impl IndexProgressDisplay {
    fn show(&mut self, p: &IndexProgress) {
        let (progress, sized) = self.shown.get_or_insert_with(|| match p.blob_size {
            Some(size) => (Progress::bytes("indexing", size), true),
            None => (Progress::spinner("indexing"), false),
        });
        if *sized {
            progress.set_position(p.blob_bytes);
            progress.set_message(format!("{} entries", p.entries));
        } else {
            progress.set_message(format!(
                "{:.1} MiB of blob, {} entries",
                p.blob_bytes as f64 / (1 << 20) as f64,
                p.entries
            ));
        }
    }
}
