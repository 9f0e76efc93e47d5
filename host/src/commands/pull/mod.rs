//! `erofs-host pull COMPONENT IMAGE --containerd SOCKET`: an image into containerd with
//! its layers left in the registry, as stargz's `ctr-remote rpull` does (containerd
//! 1.6's own `ctr pull` passes no image labels to the snapshotter):
//!
//! 1. the component resolves IMAGE (through an image index by `--platform`) and reads the
//!    layers and the config's diff_ids ([`registry_fetch`] then fetches the manifest and
//!    the config by digest, checked against it);
//! 2. both go into containerd's content store, under a lease, with the labels that keep
//!    them (and the layers' snapshots) from its garbage collector;
//! 3. each layer is prepared through the snapshotter with the image labels set
//!    (`containerd.io/snapshot.ref` = its chain ID, `…/cri.image-ref`,
//!    `…/cri.layer-digest`, `…/cri.manifest-digest`): the snapshotter mounts it lazily and
//!    answers AlreadyExists;
//! 4. the image record is created (or moved) to point at the manifest.
//!
//! Afterwards `ctr run --snapshotter erofs-wasm IMAGE ID CMD` starts a container.

pub mod containerd_api;
pub mod registry_fetch;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use sha2::{Digest, Sha256};

use self::containerd_api::{Containerd, Prepared};
use self::registry_fetch::RegistryFetch;
use super::device_args::RemoteArgs;
use super::usage::usage;
use crate::defaults;
use crate::sandbox::{list_image_layers, registry, Limits, Runtime};
use crate::snapshotter::labels as snapshot_labels;

#[derive(Debug, Args)]
pub struct PullArgs {
    /// The erofs-wasm component (.wasm), e.g. target/wasm32-wasip2/release/erofs_component.wasm
    pub component: PathBuf,

    /// The image as containerd names it: REGISTRY/REPO:TAG or REGISTRY/REPO@sha256:...
    pub image: String,

    /// containerd's socket (its `[grpc] address`)
    #[arg(
        long,
        value_name = "SOCKET",
        default_value = "/run/containerd/containerd.sock"
    )]
    pub containerd: PathBuf,

    /// The containerd namespace (`ctr -n`; Kubernetes' is k8s.io) [default: default, as ctr's]
    #[arg(long, value_name = "NS", default_value = "default")]
    pub namespace: String,

    /// The proxy plugin name of `erofs-host snapshotter` in containerd's config
    /// [default: erofs-wasm, as the README's configuration names it]
    #[arg(long, value_name = "NAME", default_value = "erofs-wasm")]
    pub snapshotter: String,

    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// The chain IDs of a layer stack (OCI image spec): the first is its diff_id, each next
/// one `sha256(previous + " " + diff_id)`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut chain: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match chain.last() {
            None => diff_id.clone(),
            Some(previous) => format!(
                "sha256:{}",
                hex::encode(Sha256::digest(format!("{previous} {diff_id}").as_bytes()))
            ),
        };
        chain.push(next);
    }
    chain
}

pub fn run(args: PullArgs) -> Result<()> {
    if args.remote.layer.is_some() || args.remote.blob_digest.is_some() {
        return Err(usage(
            "--layer and --blob-digest pick one layer: `pull` takes the whole image",
        ));
    }
    if args.image.contains("://") {
        return Err(usage(format!(
            "{}: name the image as containerd does (REGISTRY/REPO:TAG), without a scheme",
            args.image
        )));
    }
    let reference = format!("oci://{}", args.image);
    let runtime = Runtime::load(&args.component)?;
    let source = args.remote.source(&reference)?;
    let platform = args.remote.platform.as_deref();
    // Resolve and inspect in the sandbox: the registry's answers are parsed there.
    let listed = list_image_layers(&runtime, source.clone(), &reference, platform)?;
    let limits = Limits {
        memory: defaults::IMAGE_LIST_MEMORY,
        call_timeout: Duration::from_secs_f64(defaults::IMAGE_LIST_TIMEOUT_SECS),
    };
    let pinned = format!(
        "oci://{}/{}@{}",
        listed.registry, listed.repository, listed.manifest_digest
    );
    let image = registry::inspect(&runtime, &args.remote.source(&pinned)?, platform, limits)?;
    if image.manifest_digest != listed.manifest_digest {
        bail!(
            "{}: the manifest moved while it was read ({} then {})",
            args.image,
            listed.manifest_digest,
            image.manifest_digest
        );
    }
    let diff_ids: Vec<String> = image.layers.iter().map(|l| l.diff_id.clone()).collect();
    let chains = chain_ids(&diff_ids);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let mut fetch = RegistryFetch::new(
            &listed.registry,
            &listed.repository,
            args.remote.insecure,
            args.remote.ca_file.as_deref(),
        )?;
        let manifest = fetch.manifest(&listed.manifest_digest).await?;
        let config = ManifestConfig::of(&manifest.bytes, &listed.manifest_digest)?;
        let config_bytes = fetch.blob(&config.digest, config.size).await?;

        let mut containerd = Containerd::connect(&args.containerd, &args.namespace).await?;
        containerd.begin_lease().await?;
        let result = put_everything(
            &containerd,
            &args,
            &image.manifest_digest,
            &manifest,
            &config,
            &config_bytes.bytes,
            &image.layers,
            &chains,
        )
        .await;
        containerd.end_lease().await;
        let size: u64 = image.layers.iter().map(|l| l.size).sum();
        result?;
        println!(
            "{}: manifest {}, {} layers ({} bytes in its layer blobs) prepared lazily by snapshotter {}",
            args.image,
            image.manifest_digest,
            image.layers.len(),
            size,
            args.snapshotter
        );
        Ok(())
    })
}

/// The config descriptor of a manifest, read for the content labels (the component
/// already checked the manifest; this reads one field of bytes whose digest matched).
struct ManifestConfig {
    /// The manifest's own `mediaType` (absent in some OCI manifests).
    manifest_media_type: Option<String>,
    digest: String,
    size: u64,
}

impl ManifestConfig {
    fn of(manifest: &[u8], digest: &str) -> Result<ManifestConfig> {
        let v: serde_json::Value = serde_json::from_slice(manifest)
            .with_context(|| format!("manifest {digest}: not JSON"))?;
        let config = &v["config"];
        let field = |name: &str| {
            config[name]
                .as_str()
                .map(str::to_string)
                .with_context(|| format!("manifest {digest}: no config.{name}"))
        };
        Ok(ManifestConfig {
            manifest_media_type: v["mediaType"].as_str().map(str::to_string),
            digest: field("digest")?,
            size: config["size"]
                .as_u64()
                .with_context(|| format!("manifest {digest}: no config.size"))?,
        })
    }
}

#[allow(clippy::too_many_arguments)]
async fn put_everything(
    containerd: &Containerd,
    args: &PullArgs,
    manifest_digest: &str,
    manifest: &registry_fetch::Fetched,
    config: &ManifestConfig,
    config_bytes: &[u8],
    layers: &[crate::sandbox::runtime::IndexedLayer],
    chains: &[String],
) -> Result<()> {
    let snapshotter = &args.snapshotter;
    // Content: the config keeps the top layer's snapshot; the manifest keeps the config
    // (and names the layers, which are not in the store).
    let mut config_labels = HashMap::new();
    if let Some(top) = chains.last() {
        config_labels.insert(
            format!("containerd.io/gc.ref.snapshot.{snapshotter}"),
            top.clone(),
        );
    }
    containerd
        .write_content(&config.digest, config_bytes, config_labels)
        .await?;
    let mut manifest_labels = HashMap::from([(
        "containerd.io/gc.ref.content.config".to_string(),
        config.digest.clone(),
    )]);
    for (i, layer) in layers.iter().enumerate() {
        manifest_labels.insert(
            format!("containerd.io/gc.ref.content.l.{i}"),
            layer.digest.clone(),
        );
    }
    containerd
        .write_content(manifest_digest, &manifest.bytes, manifest_labels)
        .await?;

    // The layers, bottom first, each on its parent.
    let mut parent = String::new();
    for (i, (layer, chain)) in layers.iter().zip(chains).enumerate() {
        if containerd.has_snapshot(snapshotter, chain).await? {
            tracing::info!("layer {i} ({}): {chain} is there already", layer.digest);
            parent = chain.clone();
            continue;
        }
        let labels = HashMap::from([
            (snapshot_labels::TARGET.to_string(), chain.clone()),
            (snapshot_labels::IMAGE_REF.to_string(), args.image.clone()),
            (
                snapshot_labels::LAYER_DIGEST.to_string(),
                layer.digest.clone(),
            ),
            (
                snapshot_labels::MANIFEST_DIGEST.to_string(),
                manifest_digest.to_string(),
            ),
        ]);
        let key = format!(
            "extract-{}-{chain}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
        );
        match containerd
            .prepare(snapshotter, &key, &parent, labels)
            .await?
        {
            Prepared::Exists => {}
            Prepared::Unpack(_mounts) => {
                containerd.remove_snapshot(snapshotter, &key).await;
                bail!(
                    "layer {i} ({}) was not mounted lazily: the snapshotter's log says why (no published index: `erofs-host index COMPONENT oci://{} --push --aufs`); `ctr images pull --snapshotter {snapshotter}` downloads and unpacks it instead",
                    layer.digest,
                    args.image
                );
            }
        }
        eprintln!("layer {i} ({}): mounted lazily as {chain}", layer.digest);
        parent = chain.clone();
    }

    let media_type = config
        .manifest_media_type
        .clone()
        .or_else(|| manifest.content_type.clone())
        .filter(|t| t.contains("manifest"))
        .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".to_string());
    let target = containerd_client::types::Descriptor {
        media_type,
        digest: manifest_digest.to_string(),
        size: i64::try_from(manifest.bytes.len()).context("manifest size")?,
        annotations: HashMap::new(),
    };
    containerd.put_image(&args.image, target).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let a = "sha256:aaaa".to_string();
        let b = "sha256:bbbb".to_string();
        let c = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(c[0], a);
        assert_eq!(
            c[1],
            format!(
                "sha256:{}",
                hex::encode(Sha256::digest(b"sha256:aaaa sha256:bbbb"))
            )
        );
    }
}
