//! The one sandboxed call behind a whole-image mount: the component fetches the image
//! manifest (through an index by platform) over `wasi:http`, through the process's
//! egress policy, parses it and classifies every layer. The host never parses it.

use std::time::Duration;

use anyhow::{bail, Result};
use wasmtime::{Store, StoreLimitsBuilder};
use wasmtime_wasi::WasiCtx;

use super::device::{BlobSource, MAX_INSTANCES, MAX_MEMORIES, MAX_TABLES};
use super::errors::describe;
use super::runtime::{wt, ImageInfo, Runtime, StoreState, EPOCH_TICK};
use crate::defaults;
use crate::net::egress::Egress;

/// List the layers of the image `reference` (an `oci://` reference) in a fresh
/// instance. `source` is that image as a remote blob source (its egress and options).
pub fn list_image_layers(
    runtime: &Runtime,
    source: BlobSource,
    reference: &str,
    platform: Option<&str>,
) -> Result<ImageInfo> {
    let BlobSource::Remote {
        options, egress, ..
    } = source
    else {
        bail!("{reference}: a whole image is listed from a registry (an oci:// reference)");
    };
    let limits = StoreLimitsBuilder::new()
        .memory_size(usize::try_from(defaults::IMAGE_LIST_MEMORY).unwrap_or(usize::MAX))
        .instances(MAX_INSTANCES)
        .tables(MAX_TABLES)
        .memories(MAX_MEMORIES)
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
    let deadline = Duration::from_secs_f64(defaults::IMAGE_LIST_TIMEOUT_SECS);
    store.set_epoch_deadline((deadline.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64);
    store.epoch_deadline_trap();
    let bindings = runtime
        .pre
        .instantiate(&mut store)
        .map_err(|e| wt(e, "starting the component"))?;
    bindings
        .erofs_reader_tarindex()
        .call_image_layers(&mut store, reference, platform, options)
        .map_err(|e| wt(e, &format!("{reference}: listing the layers")))?
        .map_err(|e| anyhow::anyhow!("{reference}: {}", describe(&e)))
}
