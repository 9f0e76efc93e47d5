//! The component's `registry` interface, one call per fresh sandboxed instance: inspect an
//! image (its layers and diff_ids) and push a published index. The component sends every
//! request through `wasi:http`, so through the blob source's egress policy; the host adds
//! the credentials. A push needs the policy to allow writes
//! ([`EgressPolicy::allow_writes`](crate::net::egress::EgressPolicy::allow_writes)).

use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use wasmtime::Store;

use super::device::{new_store, BlobSource, Limits};
use super::errors::describe;
use super::runtime::{
    BlobLocation, Image, LayerIndex, Pushed, Reader, RemoteOptions, Runtime, StoreState,
};

/// The reference and remote options of an `oci://` blob source.
fn oci_of(blob: &BlobSource) -> Result<(&str, RemoteOptions, &BlobSource)> {
    match blob {
        BlobSource::Remote {
            location: BlobLocation::Oci(o),
            options,
            ..
        } => Ok((o.reference.as_str(), *options, blob)),
        _ => bail!("publishing an index needs an oci://REGISTRY/REPO:TAG image"),
    }
}

/// A store with the sandbox's memory cap and call deadline, its `wasi:http` through the
/// blob source's egress policy, and an instance in it.
fn instance(
    runtime: &Runtime,
    blob: &BlobSource,
    limits: Limits,
) -> Result<(Store<StoreState>, Reader)> {
    let egress = blob
        .egress()
        .ok_or_else(|| anyhow!("publishing an index needs a registry"))?
        .clone();
    let mut store = new_store(runtime, &limits, egress);
    let bindings = runtime
        .pre
        .instantiate(&mut store)
        .map_err(|e| anyhow!("instantiating the component: {e:#}"))?;
    Ok((store, bindings))
}

/// The image manifest of the blob source's reference for `platform`, with its layers and
/// diff_ids.
pub fn inspect(
    runtime: &Runtime,
    blob: &BlobSource,
    platform: Option<&str>,
    limits: Limits,
) -> Result<Image> {
    let (reference, options, blob) = oci_of(blob)?;
    let (mut store, bindings) = instance(runtime, blob, limits)?;
    match bindings
        .erofs_reader_registry()
        .call_inspect(&mut store, reference, platform, options)
    {
        Ok(Ok(image)) => Ok(image),
        Ok(Err(e)) => bail!("{reference}: {}", describe(&e)),
        Err(trap) => bail!("{reference}: the component trapped while reading the image: {trap:#}"),
    }
}

/// Publish `layers` as the index of image manifest `manifest_digest`.
pub fn push(
    runtime: &Arc<Runtime>,
    blob: &BlobSource,
    manifest_digest: &str,
    layers: &[LayerIndex],
    limits: Limits,
) -> Result<Pushed> {
    let (reference, options, blob) = oci_of(blob)?;
    let (mut store, bindings) = instance(runtime, blob, limits)?;
    match bindings.erofs_reader_registry().call_push(
        &mut store,
        reference,
        manifest_digest,
        layers,
        options,
    ) {
        Ok(Ok(pushed)) => Ok(pushed),
        Ok(Err(e)) => bail!("{reference}: publishing the index: {}", describe(&e)),
        Err(trap) => bail!(
            "{reference}: the component trapped while publishing the index (the memory cap \
             or the call deadline, see --memory-limit and --call-timeout): {trap:#}"
        ),
    }
}
