//! One layer of an image, mounted read-only at its own private directory, for the merge
//! to stack: `--backend fuse` serves the tree from the sandbox; `--backend loop` serves
//! the device as a file from the sandbox and lets the kernel's EROFS loop-mount it (after
//! the sandbox verified the metadata, unless --no-verify).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use fuser::BackgroundSession;

use super::layers::PlannedLayer;
use super::merge::unmount_any;
use crate::bridge::fuse::access_watch::AccessWatch;
use crate::bridge::fuse::{self, ErofsFuse};
use crate::bridge::loop_backing::{DeviceFile, IMAGE_NAME};
use crate::commands::mount::{Backend, VerifyLevel};
use crate::mount_registry as mounts;
use crate::net::blob_counters::LayerTraffic;
use crate::sandbox::{verify_image, DevicePool, FilesystemPool, Runtime};

/// How a layer is served.
pub struct LayerOptions {
    pub backend: Backend,
    pub instances: usize,
    pub verify: bool,
    /// How deep that check goes (`--verify`).
    pub verify_depth: VerifyLevel,
    /// Show `trusted.overlay.*` as `user.overlay.*` (unprivileged merges).
    pub user_overlay_xattrs: bool,
    /// The mount's watch on reads (background fetch, --record).
    pub watch: Arc<AccessWatch>,
}

/// A mounted layer. Dropping it unmounts it.
pub struct LayerMount {
    /// Where the layer's tree is visible (a lowerdir of the merge).
    pub dir: PathBuf,
    /// The FUSE server: the tree itself (fuse), or the device file (loop).
    session: Option<BackgroundSession>,
    /// loop: the private FUSE mount that holds `device.img`.
    backing: Option<PathBuf>,
    /// loop: the kernel's EROFS is mounted at `dir`.
    kernel_mount: bool,
}

impl LayerMount {
    /// True while every part of the layer is still served.
    pub fn is_live(&self) -> bool {
        let session_ok = self
            .session
            .as_ref()
            .is_some_and(|s| !s.guard.is_finished());
        let kernel_ok = !self.kernel_mount || mounts::mounted_at(&self.dir).is_some();
        session_ok && kernel_ok
    }

    /// The paths to detach if the server dies: the layer, then its backing mount.
    pub fn paths(&self) -> Vec<PathBuf> {
        let mut p = vec![self.dir.clone()];
        p.extend(self.backing.clone());
        p
    }

    /// Unmount, in order: the kernel's EROFS, the FUSE server, the backing directory.
    pub fn teardown(&mut self) {
        if self.kernel_mount && mounts::mounted_at(&self.dir).is_some() {
            if let Err(e) = unmount_any(&self.dir, false) {
                tracing::warn!("{}: {e}; detaching lazily", self.dir.display());
                if let Err(e) = unmount_any(&self.dir, true) {
                    tracing::warn!("{}: lazy unmount: {e}", self.dir.display());
                }
            }
        }
        self.kernel_mount = false;
        if let Some(session) = self.session.take() {
            // Unmounts the FUSE mount (if still there) and joins the session thread.
            if let Err(e) = session.umount_and_join() {
                tracing::debug!("FUSE session end: {e}");
            }
        }
        for dir in self.backing.take().into_iter().chain([self.dir.clone()]) {
            if mounts::mounted_at(&dir).is_some() {
                if let Err(e) = unmount_any(&dir, true) {
                    tracing::warn!("{}: lazy unmount: {e}", dir.display());
                }
            }
            if let Err(e) = std::fs::remove_dir(&dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!("{}: removing: {e}", dir.display());
                }
            }
        }
    }
}

impl Drop for LayerMount {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Mount `layer` at `dir` (created here; `backing` for the loop backend's device file).
pub fn mount_layer(
    runtime: &Arc<Runtime>,
    layer: &PlannedLayer,
    dir: &Path,
    backing: &Path,
    o: &LayerOptions,
    traffic: Option<LayerTraffic>,
) -> Result<LayerMount> {
    let (spec, limits) = layer.device.spec_with_blob(layer.source.clone())?;
    let name = format!("layer{}:{}", layer.index, short(&layer.digest));
    let mkdir =
        |d: &Path| std::fs::create_dir_all(d).with_context(|| format!("{}: creating", d.display()));
    mkdir(dir)?;
    // From here on, dropping `mounted` undoes what was made.
    let mut mounted = LayerMount {
        dir: dir.to_path_buf(),
        session: None,
        backing: None,
        kernel_mount: false,
    };
    match o.backend {
        Backend::Fuse => {
            let pool = FilesystemPool::open(runtime.clone(), &spec, limits, o.instances)?;
            let mut fs = ErofsFuse::new(pool)
                .map_err(|e| anyhow!("layer {}: {}: {e}", layer.index, spec.meta_name()))?;
            if o.user_overlay_xattrs {
                fs = fs.with_user_overlay_xattrs();
            }
            fs = fs
                .with_access_watch(o.watch.clone(), layer.index)
                .with_stats_file(
                    mounts::stats_file::stats_path(dir)?,
                    format!("layer {} {}", layer.index, layer.digest),
                    traffic,
                )
                .context("starting the stats writer")?;
            mounted.session = Some(fuse::session(fs, dir, &name, o.instances)?);
        }
        Backend::Loop => {
            if o.verify {
                verify_image(runtime.clone(), &spec, limits, o.verify_depth.depth())
                    .with_context(|| format!("layer {} ({})", layer.index, layer.digest))?;
            }
            mkdir(backing)?;
            mounted.backing = Some(backing.to_path_buf());
            let pool = DevicePool::open(runtime.clone(), spec.clone(), limits, o.instances)?;
            mounted.session = Some(fuse::session(
                DeviceFile::new(pool),
                backing,
                &name,
                o.instances,
            )?);
            let status = Command::new("mount")
                .args(["-t", "erofs", "-o", "loop,ro,nosuid,nodev"])
                .arg(backing.join(IMAGE_NAME))
                .arg(dir)
                .status()
                .context("running mount(8)")?;
            if !status.success() {
                bail!(
                    "layer {} ({}): the kernel refused to mount its image (mount -t erofs -o loop,ro: {status})",
                    layer.index,
                    layer.digest
                );
            }
            mounted.kernel_mount = true;
        }
        Backend::Nbd => bail!("--backend nbd: a whole-image mount takes fuse or loop"),
    }
    Ok(mounted)
}

/// The first 12 hex digits of a digest, for names.
fn short(digest: &str) -> &str {
    let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
    hex.get(..12).unwrap_or(hex)
}
