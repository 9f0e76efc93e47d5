//! A whole image mounted as one read-only root filesystem
//! (`erofs-host mount COMPONENT oci://REG/REPO:TAG MOUNTPOINT`, no `--layer`).
//!
//! 1. The component lists the manifest's layers (through an index by `--platform`),
//!    refusing zstd and other layer types by name ([`layers`]).
//! 2. Each layer's index is found by digest in `--tarindex-dir`, and each layer is
//!    mounted at a private directory, `STATE/<id>.layers/N`, parsed in the sandbox as a
//!    single-layer mount is (`--backend fuse`, or `loop` for the kernel's EROFS)
//!    ([`layer_mount`]).
//! 3. The layers are merged at the mountpoint, top layer first: the kernel's overlayfs
//!    as root, fuse-overlayfs without root, with `--upper DIR` as a writable layer
//!    ([`merge`]).
//!
//! Teardown is the reverse (merge, then each layer top down), on every path: a mount
//! that fails half-way drops what it made, and `erofs-host umount` finds the layer
//! directories in the registration when the server died.

pub mod layer_mount;
pub mod layers;
pub mod merge;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use self::layer_mount::{mount_layer, LayerMount, LayerOptions};
use self::merge::{mount_merge, Merge, MergeKind, Upper};
use crate::commands::mount::{announce_ready, wait_signal, Backend, MountArgs};
use crate::mount_registry::{self as mounts, Registration};
use crate::sandbox::Runtime;

/// The options of a whole-image mount.
#[derive(Debug, Args, Clone)]
pub struct ImageArgs {
    /// Whole image: the directory holding each layer's index, named by layer digest:
    /// `sha256-<hex>.meta` and, for gzip layers, `sha256-<hex>.zinfo` (make them with
    /// `erofs-host index ... --layer N --aufs`)
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
}

/// Everything a whole-image mount made, torn down in reverse order on drop.
struct ImageMount {
    dir: PathBuf,
    layers: Vec<LayerMount>,
    merge: Option<Merge>,
}

impl ImageMount {
    fn teardown(&mut self) {
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
    let Some(index_dir) = &image.tarindex_dir else {
        bail!(
            "{}: a whole-image mount (no --layer) needs the layers' indexes: pass --tarindex-dir DIR holding sha256-<hex>.meta (and .zinfo for gzip layers) per layer digest, or choose one layer with --layer N --tarindex META",
            args.device.blob
        );
    };
    if !index_dir.is_dir() {
        bail!("--tarindex-dir {}: not a directory", index_dir.display());
    }
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
    };
    let options = LayerOptions {
        backend: args.backend,
        instances: args.instances,
        verify: !args.no_verify,
        verify_depth: args.verify,
        user_overlay_xattrs: merge_kind == MergeKind::FuseOverlayfs,
    };
    for layer in &plan.layers {
        let at = dir.join(layer.index.to_string());
        let backing = dir.join(format!("{}.device", layer.index));
        let mounted = mount_layer(&runtime, layer, &at, &backing, &options)
            .with_context(|| format!("layer {} ({})", layer.index, layer.digest))?;
        made.layers.push(mounted);
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
