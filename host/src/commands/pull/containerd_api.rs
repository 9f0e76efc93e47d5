//! What `erofs-host pull` asks of containerd, over its own socket (containerd 1.6's gRPC
//! API): a lease that keeps everything from the garbage collector while the pull runs,
//! content writes, the image record, and the snapshots of the layers through the
//! snapshotter. Every request carries the namespace and the lease.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    CreateImageRequest, CreateRequest as CreateLeaseRequest, DeleteRequest as DeleteLeaseRequest,
    Image, UpdateImageRequest, WriteAction, WriteContentRequest,
};
use containerd_client::types::{Descriptor, Mount};
use containerd_client::Client;
use tonic::{Code, Request, Status};

pub struct Containerd {
    client: Client,
    namespace: String,
    lease: Option<String>,
}

/// What a Prepare of a layer came to.
pub enum Prepared {
    /// The snapshotter has the layer committed under its chain ID (mounted lazily).
    Exists,
    /// An empty active snapshot: the layer must be unpacked into these mounts.
    Unpack(Vec<Mount>),
}

fn status(what: &str, e: Status) -> anyhow::Error {
    anyhow!("containerd: {what}: {} ({:?})", e.message(), e.code())
}

impl Containerd {
    pub async fn connect(socket: &Path, namespace: &str) -> Result<Containerd> {
        let client = Client::from_path(socket)
            .await
            .with_context(|| format!("{}: connecting to containerd", socket.display()))?;
        Ok(Containerd {
            client,
            namespace: namespace.to_string(),
            lease: None,
        })
    }

    fn request<T>(&self, message: T) -> Result<Request<T>> {
        let mut r = Request::new(message);
        let md = r.metadata_mut();
        md.insert(
            "containerd-namespace",
            self.namespace
                .parse()
                .with_context(|| format!("--namespace {}: not a header value", self.namespace))?,
        );
        if let Some(lease) = &self.lease {
            md.insert("containerd-lease", lease.parse()?);
        }
        Ok(r)
    }

    /// Take a lease for the rest of the pull (given back by [`Self::end_lease`]).
    pub async fn begin_lease(&mut self) -> Result<()> {
        let id = format!(
            "erofs-host-pull-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
        );
        let req = self.request(CreateLeaseRequest {
            id: id.clone(),
            labels: HashMap::new(),
        })?;
        self.client
            .leases()
            .create(req)
            .await
            .map_err(|e| status("creating a lease", e))?;
        self.lease = Some(id);
        Ok(())
    }

    pub async fn end_lease(&mut self) {
        let Some(id) = self.lease.take() else { return };
        let req = match self.request(DeleteLeaseRequest {
            id: id.clone(),
            sync: false,
        }) {
            Ok(r) => r,
            Err(e) => return tracing::warn!("lease {id}: {e:#}"),
        };
        if let Err(e) = self.client.leases().delete(req).await {
            tracing::warn!("containerd: deleting lease {id}: {}", e.message());
        }
    }

    /// Write `bytes` (digest `digest`) into the content store with `labels`; content
    /// already there gets the labels too.
    pub async fn write_content(
        &self,
        digest: &str,
        bytes: &[u8],
        labels: HashMap<String, String>,
    ) -> Result<()> {
        let total = i64::try_from(bytes.len()).context("content too large")?;
        let reference = format!("erofs-host-pull-{digest}");
        let messages = vec![
            WriteContentRequest {
                action: WriteAction::Write as i32,
                r#ref: reference.clone(),
                total,
                expected: digest.to_string(),
                offset: 0,
                data: bytes.to_vec(),
                labels: HashMap::new(),
            },
            WriteContentRequest {
                action: WriteAction::Commit as i32,
                r#ref: reference,
                total,
                expected: digest.to_string(),
                offset: total,
                data: Vec::new(),
                labels,
            },
        ];
        let req = self.request(tokio_stream::iter(messages))?;
        match self.client.content().write(req).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(_)) => {}
                        Ok(None) => return Ok(()),
                        Err(e) if e.code() == Code::AlreadyExists => return Ok(()),
                        Err(e) => return Err(status(&format!("writing {digest}"), e)),
                    }
                }
            }
            Err(e) if e.code() == Code::AlreadyExists => Ok(()),
            Err(e) => Err(status(&format!("writing {digest}"), e)),
        }
    }

    /// Create the image `name` pointing at `target`, or point it there if it exists.
    pub async fn put_image(&self, name: &str, target: Descriptor) -> Result<()> {
        let image = Image {
            name: name.to_string(),
            labels: HashMap::new(),
            target: Some(target),
            created_at: None,
            updated_at: None,
        };
        let req = self.request(CreateImageRequest {
            image: Some(image.clone()),
        })?;
        match self.client.images().create(req).await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Code::AlreadyExists => {
                let req = self.request(UpdateImageRequest {
                    image: Some(image),
                    update_mask: None,
                })?;
                self.client
                    .images()
                    .update(req)
                    .await
                    .map_err(|e| status(&format!("updating image {name}"), e))?;
                Ok(())
            }
            Err(e) => Err(status(&format!("creating image {name}"), e)),
        }
    }

    /// True when `snapshotter` has `key` (committed layers are found by chain ID).
    pub async fn has_snapshot(&self, snapshotter: &str, key: &str) -> Result<bool> {
        let req = self.request(StatSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: key.to_string(),
        })?;
        match self.client.snapshots().stat(req).await {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Code::NotFound => Ok(false),
            Err(e) => Err(status(&format!("stat snapshot {key}"), e)),
        }
    }

    pub async fn prepare(
        &self,
        snapshotter: &str,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Prepared> {
        let req = self.request(PrepareSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: key.to_string(),
            parent: parent.to_string(),
            labels,
        })?;
        match self.client.snapshots().prepare(req).await {
            Ok(r) => Ok(Prepared::Unpack(r.into_inner().mounts)),
            Err(e) if e.code() == Code::AlreadyExists => Ok(Prepared::Exists),
            Err(e) if e.code() == Code::Unavailable || e.message().contains("not found") => {
                bail!(
                    "containerd: preparing {key} with snapshotter {snapshotter}: {} (is the snapshotter running, and configured as [proxy_plugins.{snapshotter}]?)",
                    e.message()
                )
            }
            Err(e) => Err(status(&format!("preparing {key}"), e)),
        }
    }

    pub async fn commit(
        &self,
        snapshotter: &str,
        name: &str,
        key: &str,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        let req = self.request(CommitSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            name: name.to_string(),
            key: key.to_string(),
            labels,
        })?;
        self.client
            .snapshots()
            .commit(req)
            .await
            .map_err(|e| status(&format!("committing {key} as {name}"), e))?;
        Ok(())
    }

    pub async fn remove_snapshot(&self, snapshotter: &str, key: &str) {
        let req = match self.request(RemoveSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: key.to_string(),
        }) {
            Ok(r) => r,
            Err(e) => return tracing::warn!("{key}: {e:#}"),
        };
        if let Err(e) = self.client.snapshots().remove(req).await {
            tracing::warn!("containerd: removing snapshot {key}: {}", e.message());
        }
    }
}
