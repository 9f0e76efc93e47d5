//! The one sandboxed call behind a whole-image mount: the component fetches the image
//! manifest (through an index by platform) over `wasi:http`, through the process's
//! egress policy, parses it and classifies every layer. The host never parses it.

use std::time::Duration;

use anyhow::{bail, Result};

use super::device::{new_store, BlobSource, Limits};
use super::errors::describe;
use super::runtime::{wt, ImageInfo, Runtime};
use crate::defaults;

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
    let limits = Limits {
        memory: defaults::IMAGE_LIST_MEMORY,
        call_timeout: Duration::from_secs_f64(defaults::IMAGE_LIST_TIMEOUT_SECS),
    };
    let mut store = new_store(runtime, &limits, egress);
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
