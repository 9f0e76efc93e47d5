//! The snapshotter's lazily mounted layers: each one an `erofs-host mount` daemon of its
//! own (the single-layer mount by digest, the image pinned by its manifest digest, the
//! index found where `erofs-host index --push` published it), serving the layer's tree
//! from the sandbox over FUSE at the snapshot's `fs` directory. A daemon outlives the
//! snapshotter: running containers keep their layers across a restart of it, and on
//! start the snapshotter mounts again only what is gone (a reboot, a killed daemon).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::store::RemoteLayer;
use crate::mount_registry as mounts;

/// How layers are mounted: the same for every layer of a snapshotter.
#[derive(Debug, Clone)]
pub struct Mounter {
    /// This program (it runs `erofs-host mount` and `umount`).
    pub exe: PathBuf,
    pub component: PathBuf,
    pub insecure: bool,
    pub cache_dir: Option<PathBuf>,
}

/// Whether a layer is served at a directory.
#[derive(Debug, PartialEq, Eq)]
pub enum Served {
    Live,
    /// A FUSE mount whose server died.
    Dead,
    NotMounted,
}

pub fn served_at(dir: &Path) -> Served {
    if mounts::is_dead_fuse_mount(dir) {
        Served::Dead
    } else if mounts::mounted_at(dir).is_some() {
        Served::Live
    } else {
        Served::NotMounted
    }
}

impl Mounter {
    /// The `erofs-host mount` arguments of `layer` at `dir`.
    fn mount_args(&self, layer: &RemoteLayer, dir: &Path) -> Vec<std::ffi::OsString> {
        let mut a: Vec<std::ffi::OsString> = vec![
            "mount".into(),
            self.component.clone().into(),
            layer.image.clone().into(),
            dir.into(),
            "--blob-digest".into(),
            layer.layer_digest.clone().into(),
            "--quiet".into(),
        ];
        if self.insecure {
            a.push("--insecure".into());
        }
        if let Some(cache) = &self.cache_dir {
            a.push("--cache-dir".into());
            a.push(cache.into());
        }
        a
    }

    /// Mount `layer` at `dir` (created here); returns once the daemon serves it.
    pub fn mount(&self, layer: &RemoteLayer, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: creating", dir.display()))?;
        let out = Command::new(&self.exe)
            .args(self.mount_args(layer, dir))
            .stdin(std::process::Stdio::null())
            .output()
            .with_context(|| format!("running {} mount", self.exe.display()))?;
        if !out.status.success() {
            bail!(
                "{} layer {}: {}",
                layer.image,
                layer.layer_digest,
                String::from_utf8_lossy(&out.stderr)
                    .trim()
                    .trim_start_matches("erofs-host: error: ")
            );
        }
        tracing::info!(
            "{}: layer {} of {} mounted lazily",
            dir.display(),
            layer.layer_digest,
            layer.image
        );
        Ok(())
    }

    /// Unmount the layer at `dir` and stop its daemon (a dead mount is detached).
    pub fn unmount(&self, dir: &Path) -> Result<()> {
        if served_at(dir) == Served::NotMounted {
            return Ok(());
        }
        let out = Command::new(&self.exe)
            .arg("umount")
            .arg(dir)
            .stdin(std::process::Stdio::null())
            .output()
            .with_context(|| format!("running {} umount", self.exe.display()))?;
        if !out.status.success() {
            bail!(
                "{}: {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr)
                    .trim()
                    .trim_start_matches("erofs-host: error: ")
            );
        }
        Ok(())
    }

    /// On start: mount `layer` at `dir` again unless its daemon still serves it.
    pub fn restore(&self, layer: &RemoteLayer, dir: &Path) -> Result<&'static str> {
        match served_at(dir) {
            Served::Live => Ok("still served"),
            Served::Dead => {
                self.unmount(dir)?;
                self.mount(layer, dir)?;
                Ok("mounted again (its server had died)")
            }
            Served::NotMounted => {
                self.mount(layer, dir)?;
                Ok("mounted again")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_args_pin_the_layer() {
        let m = Mounter {
            exe: "erofs-host".into(),
            component: "c.wasm".into(),
            insecure: true,
            cache_dir: Some("/cache".into()),
        };
        let layer = RemoteLayer {
            image: "oci://r/a@sha256:m".into(),
            layer_digest: "sha256:l".into(),
        };
        let a: Vec<String> = m
            .mount_args(&layer, Path::new("/s/1/fs"))
            .into_iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            a,
            [
                "mount",
                "c.wasm",
                "oci://r/a@sha256:m",
                "/s/1/fs",
                "--blob-digest",
                "sha256:l",
                "--quiet",
                "--insecure",
                "--cache-dir",
                "/cache"
            ]
        );
    }
}
