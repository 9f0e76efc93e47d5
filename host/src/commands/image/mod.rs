//! A whole image mounted as one read-only root filesystem
//! (`erofs-host mount COMPONENT oci://REG/REPO:TAG MOUNTPOINT`, no `--layer`).
//!
//! 1. The component lists the manifest's layers (through an index by `--platform`),
//!    refusing zstd and other layer types by name ([`layers`]).
//! 2. Each layer's index is found by digest in `--tarindex-dir`, or else published next
//!    to the image in the registry (found and checked by the component), and each layer is
//!    mounted at a private directory, `STATE/<id>.layers/N`, parsed in the sandbox as a
//!    single-layer mount is (`--backend fuse`, or `loop` for the kernel's EROFS)
//!    ([`layer_mount`]).
//! 3. The layers are merged at the mountpoint, top layer first: the kernel's overlayfs
//!    as root, fuse-overlayfs without root, with `--upper DIR` as a writable layer
//!    ([`merge`]).
//!
//! 4. With `--cache-dir`, a thread of its own fetches `--prefetch FILE` first, then the
//!    rest of every layer at a bounded rate (`--background-fetch`), into the on-disk
//!    cache ([`warm`]); `--record FILE` writes the run's access log.
//!
//! Teardown is the reverse (merge, then each layer top down), on every path: a mount
//! that fails half-way drops what it made, and `erofs-host umount` finds the layer
//! directories in the registration when the server died.

pub mod layer_mount;
pub mod layers;
pub mod merge;
pub mod prefetch_list;
pub mod warm;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use self::layer_mount::{mount_layer, LayerMount, LayerOptions};
use self::merge::{mount_merge, Merge, MergeKind, Upper};
use self::warm::{WarmLayer, WarmPlan, Warmer};
use crate::bridge::fuse::access_watch::AccessWatch;
use crate::commands::device_args::parse_size;
use crate::commands::mount::{announce_ready, wait_signal, Backend, MountArgs};
use crate::defaults;
use crate::mount_registry::{self as mounts, Registration};
use crate::net::blob_counters::{BackgroundCounters, LayerTraffic};
use crate::sandbox::{BlobSource, Runtime};

/// The options of a whole-image mount.
#[derive(Debug, Args, Clone)]
pub struct ImageArgs {
    /// Whole image: the directory holding each layer's index, named by layer digest:
    /// `sha256-<hex>.meta` and, for gzip layers, `sha256-<hex>.zinfo` (make them with
    /// `erofs-host index ... --layer N --aufs`) [default: the index published next to the
    /// image (`erofs-host index COMPONENT oci://... --push`), checked against the image's
    /// layer digests and diff_ids]
    #[arg(long, value_name = "DIR")]
    pub tarindex_dir: Option<PathBuf>,

    /// Whole image: a writable layer on top, kept in DIR/upper (with overlayfs' DIR/work);
    /// without it the merged tree is read-only
    #[arg(long, value_name = "DIR")]
    pub upper: Option<PathBuf>,

    /// Whole image: how the layers are merged [default: kernel as root (no extra process,
    /// the kernel's own OCI-compatible whiteouts), fuse-overlayfs otherwise (overlayfs
    /// needs root outside a user namespace)]
    #[arg(long, value_enum, value_name = "HOW")]
    pub merge: Option<MergeKind>,

    /// Whole image, with --cache-dir: after mounting, fetch the rest of every layer into
    /// the cache at most RATE bytes a second, pausing while the foreground reads; 0 turns
    /// it off (a third of a 100 Mbit/s link: the foreground keeps most of a slow link)
    #[arg(long, value_name = "RATE", value_parser = parse_size, default_value = defaults::BACKGROUND_FETCH_RATE)]
    pub background_fetch: u64,

    /// Whole image, with --cache-dir: fetch these first, at full speed: a list of paths
    /// (one per line) or an access log written by --record
    #[arg(long, value_name = "FILE")]
    pub prefetch: Option<PathBuf>,

    /// Whole image (fuse backend): write the access log of this run to FILE, one JSON line
    /// per file region in order of first access (for --prefetch)
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
}

/// Everything a whole-image mount made, torn down in reverse order on drop.
struct ImageMount {
    dir: PathBuf,
    layers: Vec<LayerMount>,
    merge: Option<Merge>,
    warmer: Option<Warmer>,
}

impl ImageMount {
    fn teardown(&mut self) {
        // The background fetch first: it reads the layers' blobs.
        drop(self.warmer.take());
        if let Some(mut merge) = self.merge.take() {
            merge.teardown();
        }
        // Top layer first: the reverse of mounting.
        while let Some(mut layer) = self.layers.pop() {
            layer.teardown();
        }
        let _ = std::fs::remove_dir(self.dir.join("empty"));
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("{}: removing: {e}", self.dir.display());
            }
        }
    }

    /// True while the merge and every layer are served.
    fn is_live(&mut self) -> bool {
        self.layers.iter().all(LayerMount::is_live)
            && self.merge.as_mut().is_some_and(Merge::is_live)
    }
}

impl Drop for ImageMount {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Mount one layer at `dir/N` (its counters wired to the mount's stats), and what the
/// warm thread needs to open it again.
fn open_layer(
    runtime: &Arc<Runtime>,
    layer: &layers::PlannedLayer,
    dir: &Path,
    options: &LayerOptions,
) -> Result<(LayerMount, WarmLayer)> {
    let at = dir.join(layer.index.to_string());
    let backing = dir.join(format!("{}.device", layer.index));
    let background = Arc::new(BackgroundCounters::default());
    let traffic = match &layer.source {
        BlobSource::Remote { egress, .. } => Some(LayerTraffic {
            per_blob: egress.per_blob.clone(),
            hex: layer
                .digest
                .strip_prefix("sha256:")
                .unwrap_or(&layer.digest)
                .to_ascii_lowercase(),
            background: background.clone(),
        }),
        BlobSource::Local(_) => None,
    };
    let what = || format!("layer {} ({})", layer.index, layer.digest);
    let mounted =
        mount_layer(runtime, layer, &at, &backing, options, traffic).with_context(what)?;
    let (spec, limits) = layer
        .device
        .spec_with_blob(layer.source.clone())
        .with_context(what)?;
    let warm = WarmLayer {
        index: layer.index,
        spec,
        limits,
        counters: background,
    };
    Ok((mounted, warm))
}

/// Where a mountpoint's layers are mounted.
pub fn layers_dir(mountpoint: &Path) -> Result<PathBuf> {
    Ok(mounts::state_dir()?.join(format!("{}.layers", mounts::mount_id(mountpoint))))
}

/// Serve a whole image at `mountpoint` until a stop signal or an external unmount.
pub fn serve(args: &MountArgs, mountpoint: &Path, signals: &libc::sigset_t) -> Result<()> {
    let image = &args.image;
    let merge_kind = image.merge.unwrap_or_else(MergeKind::default_for_user);
    match args.backend {
        Backend::Fuse => {}
        Backend::Loop if !merge::is_root() => bail!(
            "--backend loop needs root: it attaches a loop device and mounts the kernel's EROFS"
        ),
        Backend::Loop => {}
        Backend::Nbd => bail!("--backend nbd: a whole-image mount takes fuse or loop"),
    }
    let index_dir = image.tarindex_dir.as_deref();
    if let Some(dir) = index_dir {
        if !dir.is_dir() {
            bail!("--tarindex-dir {}: not a directory", dir.display());
        }
    }
    let cache_dir = args.device.remote.cache_dir.as_deref();
    if cache_dir.is_none() && image.prefetch.is_some() {
        bail!("--prefetch: what it fetches is kept in the on-disk cache; it needs --cache-dir DIR");
    }
    if image.record.is_some() && args.backend != Backend::Fuse {
        bail!("--record: the access log comes from the FUSE tree servers; it needs --backend fuse");
    }
    let prefetch = image
        .prefetch
        .as_deref()
        .map(prefetch_list::read)
        .transpose()?
        .unwrap_or_default();
    let watch = Arc::new(AccessWatch::new(image.record.as_deref())?);
    let upper = image.upper.as_deref().map(Upper::prepare).transpose()?;

    let runtime = Runtime::load(&args.device.component)?;
    let plan = layers::plan(&args.device, &runtime, index_dir)?;
    tracing::info!(
        "{}: manifest {}, {} layers",
        args.device.blob,
        plan.manifest_digest,
        plan.layers.len()
    );

    let dir = layers_dir(mountpoint)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("{}: creating", dir.display()))?;
    let mut made = ImageMount {
        dir: dir.clone(),
        layers: Vec::new(),
        merge: None,
        warmer: None,
    };
    let options = LayerOptions {
        backend: args.backend,
        instances: args.instances,
        verify: !args.no_verify,
        verify_depth: args.verify,
        user_overlay_xattrs: merge_kind == MergeKind::FuseOverlayfs,
        watch: watch.clone(),
    };
    // Every layer opens at once: each open is a few round trips to the registry (its
    // published index, its first bytes), which need not wait for the layer below.
    let opened: Vec<Result<(LayerMount, WarmLayer)>> = std::thread::scope(|scope| {
        let threads: Vec<_> = plan
            .layers
            .iter()
            .map(|layer| {
                let (runtime, dir, options) = (&runtime, &dir, &options);
                scope.spawn(move || open_layer(runtime, layer, dir, options))
            })
            .collect();
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a layer's mount thread panicked")))
            })
            .collect()
    });
    // Everything mounted goes into `made` first, so that a failure unwinds it all.
    let mut warm_layers = Vec::new();
    let mut first_error = None;
    for result in opened {
        match result {
            Ok((mounted, warm)) => {
                made.layers.push(mounted);
                warm_layers.push(warm);
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    let mut lowers: Vec<PathBuf> = made.layers.iter().rev().map(|l| l.dir.clone()).collect();
    // A single read-only layer still goes through the merge (its whiteouts must hide),
    // and overlayfs wants two lowers without an upper: an empty one goes below.
    if lowers.len() == 1 && upper.is_none() {
        let empty = dir.join("empty");
        std::fs::create_dir_all(&empty)
            .with_context(|| format!("{}: creating", empty.display()))?;
        lowers.push(empty);
    }
    made.merge = Some(mount_merge(
        merge_kind,
        &lowers,
        upper.as_ref(),
        mountpoint,
    )?);

    let mut registration =
        Registration::of_self(mountpoint, &format!("{:?}", args.backend).to_lowercase())?;
    // Top layer first, each before its backing mount: the order to detach them in.
    registration.layers = made
        .layers
        .iter()
        .rev()
        .flat_map(LayerMount::paths)
        .collect();
    registration.layers_dir = Some(dir);
    let registered = mounts::register(&registration)?;
    if cache_dir.is_none() || (image.background_fetch == 0 && prefetch.is_empty()) {
        // Nothing to warm: nothing is pending.
        for l in &warm_layers {
            l.counters
                .prefetch_done
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
    } else {
        made.warmer = Some(Warmer::start(
            runtime.clone(),
            WarmPlan {
                layers: warm_layers,
                prefetch,
                rate: image.background_fetch,
                watch,
            },
        )?);
    }
    announce_ready(args.notify_ready, mountpoint)?;

    loop {
        if let Some(sig) = wait_signal(signals, Duration::from_millis(500)) {
            tracing::info!("signal {sig}: unmounting {}", mountpoint.display());
            break;
        }
        if !made.is_live() {
            tracing::info!(
                "{}: the merge or a layer went away; stopping",
                mountpoint.display()
            );
            break;
        }
    }
    made.teardown();
    // Forget the registration (and an empty log).
    drop(registered);
    Ok(())
}

/// `erofs-host umount` after the server died: detach what is left of the layers (top
/// first, lazily: nothing serves them any more) and remove their directories.
pub fn clear_leftovers(layers: &[PathBuf], dir: Option<&Path>) {
    for path in layers {
        if mounts::mounted_at(path).is_some() || mounts::is_dead_fuse_mount(path) {
            if let Err(e) = merge::unmount_any(path, true) {
                tracing::warn!("{}: lazy unmount: {e}", path.display());
            }
        }
        let _ = std::fs::remove_dir(path);
    }
    if let Some(dir) = dir {
        let _ = std::fs::remove_dir(dir.join("empty"));
        let _ = std::fs::remove_dir(dir);
    }
}
