//! containerd's snapshotter interface over the [`Store`]: overlayfs mounts over the
//! snapshots' trees, and a Prepare that mounts an image layer lazily from the registry
//! when its labels name one (then commits it under the chain ID and answers
//! AlreadyExists, which tells containerd the layer is there and needs no download).
//!
//! A layer whose labels are incomplete, or whose mount fails (no published index, a
//! registry down), falls back to the ordinary path, logged with the reason: an empty
//! active snapshot that containerd unpacks the downloaded layer into.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use containerd_snapshots::api::types::Mount;
use containerd_snapshots::{Info, Kind as ApiKind, Snapshotter, Usage};
use tonic::Status;

use super::labels::{self, RemoteRequest};
use super::layer_mounts::Mounter;
use super::store::{Kind, Record, RemoteLayer, Store};

pub struct ErofsSnapshotter {
    store: Arc<Mutex<Store>>,
    mounter: Arc<Mounter>,
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

impl ErofsSnapshotter {
    pub fn new(store: Store, mounter: Mounter) -> ErofsSnapshotter {
        ErofsSnapshotter {
            store: Arc::new(Mutex::new(store)),
            mounter: Arc::new(mounter),
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, Store>, Status> {
        self.store
            .lock()
            .map_err(|_| Status::internal("snapshotter state lock poisoned"))
    }

    /// A new view or active snapshot, its directories made, and its mounts.
    fn create(
        &self,
        kind: Kind,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Status> {
        let mut store = self.lock()?;
        store.check_new(&key, &parent)?;
        let id = store.allocate_id()?;
        let mut dirs = vec![store.fs_dir(id)];
        if kind == Kind::Active {
            dirs.push(store.work_dir(id));
        }
        for d in &dirs {
            std::fs::create_dir_all(d)
                .map_err(|e| internal(format!("{}: creating: {e}", d.display())))?;
        }
        let now = SystemTime::now();
        let record = Record {
            id,
            kind,
            parent,
            labels,
            created: now,
            updated: now,
            remote: None,
        };
        store.insert(&key, record)?;
        mounts_of(&store, &key)
    }

    /// Mount the layer `request` names and commit it under its target. Ok when it is
    /// committed (now or before).
    async fn mount_remote(
        &self,
        request: &RemoteRequest,
        parent: &str,
        labels: &HashMap<String, String>,
    ) -> anyhow::Result<()> {
        let (id, dir) = {
            let mut store = self.lock()?;
            if let Ok(existing) = store.get(&request.target) {
                if existing.kind == Kind::Committed && existing.parent == parent {
                    return Ok(());
                }
            }
            store.check_new(&request.target, parent)?;
            let id = store.allocate_id()?;
            (id, store.fs_dir(id))
        };
        let layer = RemoteLayer {
            image: request.image.clone(),
            layer_digest: request.layer_digest.clone(),
        };
        let mounter = self.mounter.clone();
        let (l, d) = (layer.clone(), dir.clone());
        let mounted = tokio::task::spawn_blocking(move || mounter.mount(&l, &d)).await?;
        if let Err(e) = mounted {
            remove_dir(&dir);
            return Err(e);
        }
        let now = SystemTime::now();
        let record = Record {
            id,
            kind: Kind::Committed,
            parent: parent.to_string(),
            labels: labels.clone(),
            created: now,
            updated: now,
            remote: Some(layer),
        };
        let inserted = self.lock().and_then(|mut s| {
            s.check_new(&request.target, parent)?;
            s.insert(&request.target, record)
        });
        if let Err(e) = inserted {
            // Lost a race with another Prepare of the same layer, or the state is
            // unwritable: this mount is nobody's.
            if let Err(u) = self.mounter.unmount(&dir) {
                tracing::warn!("{}: {u:#}", dir.display());
            }
            remove_dir(&dir);
            if e.code() == tonic::Code::AlreadyExists {
                return Ok(());
            }
            return Err(e.into());
        }
        Ok(())
    }
}

/// Remove a snapshot's directory, unless something is still mounted in it (never walk
/// into a served layer).
fn remove_dir(fs_dir: &std::path::Path) {
    let Some(dir) = fs_dir.parent() else { return };
    if crate::mount_registry::mounted_at(fs_dir).is_some() {
        tracing::warn!("{}: still mounted; left in place", fs_dir.display());
        return;
    }
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!("{}: removing: {e}", dir.display());
        }
    }
}

/// The mounts of snapshot `key`: overlayfs over its parents' trees (top first), with
/// its own `fs` as the upper directory when it is active; a bind mount where overlayfs
/// has nothing to merge (an active snapshot without parent, a view of one layer).
pub fn mounts_of(store: &Store, key: &str) -> Result<Vec<Mount>, Status> {
    let record = store.get(key)?;
    let lowers = store.lower_dirs(key)?;
    let fs = store.fs_dir(record.id);
    let path = |p: &PathBuf| p.to_string_lossy().into_owned();
    let bind = |source: &PathBuf, rw: &str| Mount {
        r#type: "bind".into(),
        source: path(source),
        target: String::new(),
        options: vec![rw.into(), "rbind".into()],
    };
    let lowerdir = format!(
        "lowerdir={}",
        lowers.iter().map(path).collect::<Vec<_>>().join(":")
    );
    let overlay = |options: Vec<String>| Mount {
        r#type: "overlay".into(),
        source: "overlay".into(),
        target: String::new(),
        options,
    };
    Ok(vec![match (record.kind, lowers.len()) {
        (Kind::Active, 0) => bind(&fs, "rw"),
        (Kind::Active, _) => overlay(vec![
            format!("workdir={}", path(&store.work_dir(record.id))),
            format!("upperdir={}", path(&fs)),
            lowerdir,
        ]),
        (_, 0) => bind(&fs, "ro"),
        (_, 1) => bind(&lowers[0], "ro"),
        (_, _) => overlay(vec![lowerdir]),
    }])
}

fn info_of(name: &str, r: &Record) -> Info {
    Info {
        kind: match r.kind {
            Kind::View => ApiKind::View,
            Kind::Active => ApiKind::Active,
            Kind::Committed => ApiKind::Committed,
        },
        name: name.to_string(),
        parent: r.parent.clone(),
        labels: r.labels.clone(),
        created_at: r.created,
        updated_at: r.updated,
    }
}

/// Bytes and inodes under `dir` (not crossing into other filesystems).
fn disk_usage(dir: &std::path::Path) -> std::io::Result<Usage> {
    use std::os::unix::fs::MetadataExt;
    let top = std::fs::symlink_metadata(dir)?;
    let mut usage = Usage::default();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let md = entry.metadata()?;
            if md.dev() != top.dev() {
                continue;
            }
            usage.inodes += 1;
            usage.size += (md.blocks() * 512) as i64;
            if md.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok(usage)
}

#[tonic::async_trait]
impl Snapshotter for ErofsSnapshotter {
    type Error = Status;

    async fn stat(&self, key: String) -> Result<Info, Status> {
        let store = self.lock()?;
        Ok(info_of(&key, store.get(&key)?))
    }

    async fn update(&self, info: Info, fieldpaths: Option<Vec<String>>) -> Result<Info, Status> {
        let mut store = self.lock()?;
        let paths = fieldpaths.unwrap_or_default();
        let record = store.update_labels(&info.name, info.labels, &paths)?;
        Ok(info_of(&info.name, &record))
    }

    async fn usage(&self, key: String) -> Result<Usage, Status> {
        let (record, fs) = {
            let store = self.lock()?;
            let r = store.get(&key)?.clone();
            let fs = store.fs_dir(r.id);
            (r, fs)
        };
        if record.remote.is_some() {
            // Served from the registry: nothing of it is on this disk but the cache.
            return Ok(Usage::default());
        }
        tokio::task::spawn_blocking(move || disk_usage(&fs))
            .await
            .map_err(internal)?
            .map_err(|e| internal(format!("snapshot {key}: usage: {e}")))
    }

    async fn mounts(&self, key: String) -> Result<Vec<Mount>, Status> {
        let store = self.lock()?;
        mounts_of(&store, &key)
    }

    async fn prepare(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Status> {
        // The layer committed already (another namespace's pull, an earlier one):
        // containerd finds it by its target and parent and downloads nothing.
        if let Some(target) = labels.get(labels::TARGET) {
            let store = self.lock()?;
            if let Ok(existing) = store.get(target) {
                if existing.kind == Kind::Committed && existing.parent == parent {
                    return Err(Status::already_exists(format!("target snapshot {target}")));
                }
            }
        }
        match labels::remote_request(&labels) {
            None => {}
            Some(Err(why)) => tracing::info!(
                "prepare {key}: not mounted lazily ({why}); containerd downloads and unpacks it"
            ),
            Some(Ok(request)) => match self.mount_remote(&request, &parent, &labels).await {
                Ok(()) => {
                    return Err(Status::already_exists(format!(
                        "target snapshot {}",
                        request.target
                    )))
                }
                Err(e) => tracing::warn!(
                    "prepare {key}: layer {} of {}: FALLING BACK to a full download and unpack: {e:#}",
                    request.layer_digest,
                    request.image
                ),
            },
        }
        self.create(Kind::Active, key, parent, labels)
    }

    async fn view(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Status> {
        self.create(Kind::View, key, parent, labels)
    }

    async fn commit(
        &self,
        name: String,
        key: String,
        labels: HashMap<String, String>,
    ) -> Result<(), Status> {
        self.lock()?.commit(&name, &key, labels)
    }

    async fn remove(&self, key: String) -> Result<(), Status> {
        let (record, fs) = {
            let store = self.lock()?;
            let r = store.get(&key)?.clone();
            let fs = store.fs_dir(r.id);
            (r, fs)
        };
        if record.remote.is_some() {
            let mounter = self.mounter.clone();
            let dir = fs.clone();
            tokio::task::spawn_blocking(move || mounter.unmount(&dir))
                .await
                .map_err(internal)?
                .map_err(|e| {
                    Status::failed_precondition(format!("snapshot {key}: unmounting: {e:#}"))
                })?;
        }
        self.lock()?.remove(&key)?;
        tokio::task::spawn_blocking(move || remove_dir(&fs))
            .await
            .map_err(internal)?;
        Ok(())
    }

    async fn clear(&self) -> Result<(), Status> {
        let orphans = self.lock()?.orphan_dirs();
        for dir in orphans {
            let fs = dir.join("fs");
            if let Err(e) = self.mounter.unmount(&fs) {
                tracing::warn!("cleanup: {e:#}");
                continue;
            }
            tracing::info!("cleanup: removing {}", dir.display());
            remove_dir(&fs);
        }
        Ok(())
    }

    type InfoStream = tokio_stream::Iter<std::vec::IntoIter<Result<Info, Status>>>;

    async fn list(
        &self,
        _snapshotter: String,
        _filters: Vec<String>,
    ) -> Result<Self::InfoStream, Status> {
        // Every snapshot: containerd applies its filters to what it walks.
        let store = self.lock()?;
        let infos: Vec<Result<Info, Status>> =
            store.all().map(|(k, r)| Ok(info_of(k, r))).collect();
        Ok(tokio_stream::iter(infos))
    }
}
