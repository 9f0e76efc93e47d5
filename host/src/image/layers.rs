//! Which layers an image has, and where each one's index is: the component lists the
//! manifest's layers (it parses the manifest; the host never does), then each layer's
//! META and ZINFO are looked up by digest in `--tarindex-dir`.
//!
//! Naming in the index directory: `sha256-<hex>.meta` (the EROFS tar index, made with
//! aufs whiteout conversion so that overlayfs sees OCI whiteouts) and, for gzip layers,
//! `sha256-<hex>.zinfo`, where `sha256:<hex>` is the layer's (compressed) digest in the
//! manifest. `:` is replaced by `-` because it separates overlayfs' `lowerdir` entries
//! and is awkward in file names on some systems.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Result};
use wasmtime::{Store, StoreLimitsBuilder};
use wasmtime_wasi::WasiCtx;

use crate::cli::DeviceArgs;
use crate::egress::Egress;
use crate::runtime::{wt, ImageInfo, ImageLayer, Runtime, StoreState};
use crate::sandbox::{describe, BlobSource};

/// Memory cap for the one call that lists the layers: a 4 MiB manifest (the largest the
/// component reads), its parse and the HTTP buffers fit well inside 64 MiB.
const LIST_MEMORY: usize = 64 << 20;

/// Deadline for listing the layers, in epoch ticks of 10 ms: 120 s, the same as any
/// remote call (token round trips, an index and a manifest, each with retries).
const LIST_DEADLINE_TICKS: u64 = 12_000;

/// One layer to mount: its place in the manifest and the device arguments that open it.
pub struct PlannedLayer {
    pub index: u32,
    pub digest: String,
    pub device: DeviceArgs,
}

/// The layers to mount, bottom first, each with its device arguments ready.
pub struct Plan {
    pub manifest_digest: String,
    pub layers: Vec<PlannedLayer>,
}

/// The file names of a layer's index in `--tarindex-dir`.
pub fn index_names(digest: &str) -> (String, String) {
    let stem = digest.replace(':', "-");
    (format!("{stem}.meta"), format!("{stem}.zinfo"))
}

/// List the image's layers in the sandbox and find each one's index.
pub fn plan(device: &DeviceArgs, runtime: &Arc<Runtime>, index_dir: &Path) -> Result<Plan> {
    let info = list_layers(device, runtime)?;
    let pinned = format!(
        "oci://{}/{}@{}",
        info.registry, info.repository, info.manifest_digest
    );
    let mut layers = Vec::with_capacity(info.layers.len());
    for layer in &info.layers {
        let (meta, zinfo) = find_index(index_dir, layer, &pinned)?;
        let mut args = device.clone();
        // Every layer comes from the manifest just listed, by digest: a tag moved
        // meanwhile cannot mix two images.
        args.blob = pinned.clone();
        args.layer = Some(layer.index);
        args.blob_digest = Some(layer.digest.clone());
        args.tarindex = Some(meta);
        args.zinfo = zinfo;
        // `-o` can only hold what `is_whole_image` lets through (platform, insecure,
        // ro), which applies to every layer alike: it stays.
        layers.push(PlannedLayer {
            index: layer.index,
            digest: layer.digest.clone(),
            device: args,
        });
    }
    Ok(Plan {
        manifest_digest: info.manifest_digest,
        layers,
    })
}

fn find_index(dir: &Path, layer: &ImageLayer, image: &str) -> Result<(PathBuf, Option<PathBuf>)> {
    let (meta_name, zinfo_name) = index_names(&layer.digest);
    let meta = dir.join(&meta_name);
    let zinfo = dir.join(&zinfo_name);
    let how = format!(
        "make it with `erofs-host index COMPONENT {image} --layer {} --aufs --tarindex {}{}`",
        layer.index,
        meta.display(),
        if layer.gzip {
            format!(" --zinfo {}", zinfo.display())
        } else {
            String::new()
        }
    );
    if !meta.is_file() {
        bail!(
            "layer {} ({}): no tar index {} in --tarindex-dir; {how}",
            layer.index,
            layer.digest,
            meta.display()
        );
    }
    match (layer.gzip, zinfo.is_file()) {
        (true, true) => Ok((meta, Some(zinfo))),
        (true, false) => bail!(
            "layer {} ({}) is gzip ({}) but {} is missing; {how}",
            layer.index,
            layer.digest,
            layer.media_type,
            zinfo.display()
        ),
        (false, true) => bail!(
            "layer {} ({}) is an uncompressed tar ({}), yet {} exists: a zinfo belongs to a gzip layer; remove it",
            layer.index,
            layer.digest,
            layer.media_type,
            zinfo.display()
        ),
        (false, false) => Ok((meta, None)),
    }
}

/// One sandboxed call: the component fetches and parses the manifest (through an index
/// by platform) over `wasi:http`, through this process's egress policy.
fn list_layers(device: &DeviceArgs, runtime: &Arc<Runtime>) -> Result<ImageInfo> {
    let BlobSource::Remote {
        location: _,
        options,
        egress,
    } = device.image_source()?
    else {
        bail!("{}: a whole-image mount needs an oci:// reference", device.blob);
    };
    let limits = StoreLimitsBuilder::new()
        .memory_size(LIST_MEMORY)
        .instances(4)
        .tables(16)
        .memories(4)
        .build();
    let state = StoreState {
        wasi: WasiCtx::builder().build(),
        table: Default::default(),
        limits,
        http: wasmtime_wasi_http::WasiHttpCtx::new(),
        egress: Egress(egress),
    };
    let mut store = Store::new(&runtime.engine, state);
    store.limiter(|s| &mut s.limits);
    store.set_epoch_deadline(LIST_DEADLINE_TICKS);
    store.epoch_deadline_trap();
    let bindings = runtime
        .pre
        .instantiate(&mut store)
        .map_err(|e| wt(e, "starting the component"))?;
    let platform = device.platform_choice()?;
    let info = bindings
        .erofs_reader_tarindex()
        .call_image_layers(&mut store, &device.blob, platform.as_deref(), options)
        .map_err(|e| wt(e, &format!("{}: listing the layers", device.blob)))?
        .map_err(|e| anyhow::anyhow!("{}: {}", device.blob, describe(&e)))?;
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_file_names() {
        let (m, z) = index_names("sha256:abcd");
        assert_eq!((m.as_str(), z.as_str()), ("sha256-abcd.meta", "sha256-abcd.zinfo"));
    }
}
