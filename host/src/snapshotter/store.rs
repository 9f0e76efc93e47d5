//! The snapshotter's state: every snapshot (its kind, parent, labels, times, and for a
//! layer mounted from the registry what was mounted) in one JSON file, `ROOT/state.json`,
//! rewritten whole and renamed into place after each change, so a crash leaves the
//! previous state or the new one. Each snapshot owns `ROOT/snapshots/<id>/`: `fs` (its
//! tree: an upper directory, an unpacked layer, or the mountpoint of a lazily mounted
//! layer) and `work` (overlayfs' work directory, for active snapshots).
//!
//! The rules are containerd's: a parent must be committed; only an active snapshot can
//! be committed; a snapshot with children cannot be removed.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tonic::Status;

/// What a snapshot is, as containerd's snapshots API says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    View,
    Active,
    Committed,
}

/// A layer served lazily from the registry by an `erofs-host mount` daemon at `fs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteLayer {
    /// `oci://REGISTRY/REPO@MANIFEST_DIGEST`.
    pub image: String,
    pub layer_digest: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: u64,
    pub kind: Kind,
    /// The parent's key; empty for none.
    pub parent: String,
    pub labels: HashMap<String, String>,
    pub created: SystemTime,
    pub updated: SystemTime,
    #[serde(default)]
    pub remote: Option<RemoteLayer>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    next_id: u64,
    snapshots: BTreeMap<String, Record>,
}

pub struct Store {
    root: PathBuf,
    state: State,
}

impl Store {
    /// Load `root/state.json` (a fresh store when there is none).
    pub fn open(root: &Path) -> Result<Store> {
        std::fs::create_dir_all(root.join("snapshots"))
            .with_context(|| format!("{}: creating", root.display()))?;
        let path = root.join("state.json");
        let state = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{}: not a snapshotter state file", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(e).with_context(|| format!("{}: reading", path.display())),
        };
        Ok(Store {
            root: root.to_path_buf(),
            state,
        })
    }

    /// Write the state: a temporary file beside it, synced, renamed over it.
    fn save(&self) -> Result<(), Status> {
        let path = self.root.join("state.json");
        let tmp = self.root.join("state.json.tmp");
        let write = || -> std::io::Result<()> {
            let bytes = serde_json::to_vec_pretty(&self.state)?;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| Status::internal(format!("{}: writing: {e}", path.display())))
    }

    pub fn get(&self, key: &str) -> Result<&Record, Status> {
        self.state
            .snapshots
            .get(key)
            .ok_or_else(|| Status::not_found(format!("snapshot {key} does not exist")))
    }

    pub fn all(&self) -> impl Iterator<Item = (&String, &Record)> {
        self.state.snapshots.iter()
    }

    pub fn dir(&self, id: u64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string())
    }

    pub fn fs_dir(&self, id: u64) -> PathBuf {
        self.dir(id).join("fs")
    }

    pub fn work_dir(&self, id: u64) -> PathBuf {
        self.dir(id).join("work")
    }

    /// Check that `key` is free and `parent` (if any) is committed.
    pub fn check_new(&self, key: &str, parent: &str) -> Result<(), Status> {
        if self.state.snapshots.contains_key(key) {
            return Err(Status::already_exists(format!(
                "snapshot {key} already exists"
            )));
        }
        if !parent.is_empty() {
            let p = self.get(parent)?;
            if p.kind != Kind::Committed {
                return Err(Status::failed_precondition(format!(
                    "parent {parent} is not committed ({:?})",
                    p.kind
                )));
            }
        }
        Ok(())
    }

    /// A fresh id, saved before its directory is made (so no two snapshots share one).
    pub fn allocate_id(&mut self) -> Result<u64, Status> {
        self.state.next_id += 1;
        let id = self.state.next_id;
        self.save()?;
        Ok(id)
    }

    pub fn insert(&mut self, key: &str, record: Record) -> Result<(), Status> {
        self.state.snapshots.insert(key.to_string(), record);
        self.save()
    }

    /// Forget `key` (its directory is the caller's to remove).
    pub fn remove(&mut self, key: &str) -> Result<Record, Status> {
        if let Some((child, _)) = self.state.snapshots.iter().find(|(_, r)| r.parent == key) {
            return Err(Status::failed_precondition(format!(
                "snapshot {key} has a child ({child}): remove it first"
            )));
        }
        let record = self
            .state
            .snapshots
            .remove(key)
            .ok_or_else(|| Status::not_found(format!("snapshot {key} does not exist")))?;
        if let Err(e) = self.save() {
            self.state.snapshots.insert(key.to_string(), record);
            return Err(e);
        }
        Ok(record)
    }

    /// Commit active snapshot `key` as `name`, with `labels`.
    pub fn commit(
        &mut self,
        name: &str,
        key: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), Status> {
        let active = self.get(key)?;
        if active.kind != Kind::Active {
            return Err(Status::failed_precondition(format!(
                "snapshot {key} is {:?}, not active: only an active snapshot is committed",
                active.kind
            )));
        }
        if self.state.snapshots.contains_key(name) {
            return Err(Status::already_exists(format!(
                "snapshot {name} already exists"
            )));
        }
        let now = SystemTime::now();
        let committed = Record {
            kind: Kind::Committed,
            labels,
            created: now,
            updated: now,
            ..active.clone()
        };
        self.state.snapshots.remove(key);
        self.insert(name, committed)
    }

    /// Set the labels of `key` (`paths`: `labels` for all of them, `labels.NAME` for one;
    /// none: all).
    pub fn update_labels(
        &mut self,
        key: &str,
        labels: HashMap<String, String>,
        paths: &[String],
    ) -> Result<Record, Status> {
        let record = self
            .state
            .snapshots
            .get_mut(key)
            .ok_or_else(|| Status::not_found(format!("snapshot {key} does not exist")))?;
        if paths.is_empty() {
            record.labels = labels;
        } else {
            for path in paths {
                if path == "labels" {
                    record.labels = labels.clone();
                } else if let Some(name) = path.strip_prefix("labels.") {
                    match labels.get(name) {
                        Some(v) => record.labels.insert(name.to_string(), v.clone()),
                        None => record.labels.remove(name),
                    };
                } else {
                    return Err(Status::invalid_argument(format!(
                        "cannot update field {path} of snapshot {key}: only labels change"
                    )));
                }
            }
        }
        record.updated = SystemTime::now();
        let updated = record.clone();
        self.save()?;
        Ok(updated)
    }

    /// The trees under `key`, top first: its parent's, the grandparent's, ...
    pub fn lower_dirs(&self, key: &str) -> Result<Vec<PathBuf>, Status> {
        let mut dirs = Vec::new();
        let mut parent = self.get(key)?.parent.clone();
        while !parent.is_empty() {
            let p = self.get(&parent)?;
            dirs.push(self.fs_dir(p.id));
            if dirs.len() > self.state.snapshots.len() {
                return Err(Status::internal(format!("snapshot {key}: a parent cycle")));
            }
            parent = p.parent.clone();
        }
        Ok(dirs)
    }

    /// Directories under `ROOT/snapshots` that no snapshot owns.
    pub fn orphan_dirs(&self) -> Vec<PathBuf> {
        let owned: std::collections::HashSet<String> = self
            .state
            .snapshots
            .values()
            .map(|r| r.id.to_string())
            .collect();
        let Ok(entries) = std::fs::read_dir(self.root.join("snapshots")) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|e| !owned.contains(&*e.file_name().to_string_lossy()))
            .map(|e| e.path())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u64, kind: Kind, parent: &str) -> Record {
        Record {
            id,
            kind,
            parent: parent.into(),
            labels: HashMap::new(),
            created: SystemTime::UNIX_EPOCH,
            updated: SystemTime::UNIX_EPOCH,
            remote: None,
        }
    }

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("snap-store-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn state_survives_a_reopen_and_rules_hold() {
        let root = tmp("rules");
        let mut s = Store::open(&root).unwrap();
        let a = s.allocate_id().unwrap();
        s.insert("a", record(a, Kind::Active, "")).unwrap();
        // A parent must be committed.
        assert_eq!(
            s.check_new("b", "a").unwrap_err().code(),
            tonic::Code::FailedPrecondition
        );
        s.commit("base", "a", HashMap::new()).unwrap();
        let b = s.allocate_id().unwrap();
        s.check_new("b", "base").unwrap();
        s.insert("b", record(b, Kind::Active, "base")).unwrap();
        assert_eq!(s.lower_dirs("b").unwrap(), vec![s.fs_dir(a)]);
        // A snapshot with a child stays.
        assert_eq!(
            s.remove("base").unwrap_err().code(),
            tonic::Code::FailedPrecondition
        );
        drop(s);
        let mut s = Store::open(&root).unwrap();
        assert_eq!(s.get("base").unwrap().kind, Kind::Committed);
        assert_eq!(s.allocate_id().unwrap(), b + 1);
        s.remove("b").unwrap();
        s.remove("base").unwrap();
        assert!(s.get("base").is_err());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn labels_update_by_path() {
        let root = tmp("labels");
        let mut s = Store::open(&root).unwrap();
        let mut r = record(1, Kind::Committed, "");
        r.labels.insert("keep".into(), "1".into());
        r.labels.insert("drop".into(), "1".into());
        s.insert("c", r).unwrap();
        let new: HashMap<String, String> = [("add".to_string(), "2".to_string())].into();
        let r = s
            .update_labels(
                "c",
                new.clone(),
                &["labels.add".into(), "labels.drop".into()],
            )
            .unwrap();
        assert_eq!(r.labels.len(), 2);
        assert_eq!(r.labels["add"], "2");
        assert!(s.update_labels("c", new, &["parent".into()]).is_err());
        let _ = std::fs::remove_dir_all(&root);
    }
}
