//! What the first open of a device fixes for every later instance of the same mount.
//!
//! A device is opened again whenever an instance is (re)built: pool growth, and the
//! rebuild after a trap. Every such instance must serve the device the first one served
//! and `verify` checked, so the first open pins:
//!
//! - the META and the zinfo: read once ([`Snapshot`], with their SHA-256); every instance
//!   and `verify` get the same bytes, never the path again;
//! - an `oci://…:TAG`: resolved once, by the first open in the component, which reports
//!   `REGISTRY/REPO@MANIFEST-DIGEST` and the layer's index, digest and size
//!   (`device.resolved-layer`; the manifest is content-addressed, so it names the layer
//!   for good); every later instance opens that manifest by digest and that layer by
//!   index, and must report the same layer digest and size;
//! - the device's size and metadata size, and a local blob's file size: a reopen that
//!   finds another size fails, naming both;
//! - for an index published next to the image (found again by each instance through the
//!   registry's referrers, which anyone with push access can change), the SHA-256 of the
//!   metadata the first instance served: a reopen that finds other metadata fails.
//!
//! Every clone of a [`DeviceSpec`](super::DeviceSpec) shares one `Pins` (an `Arc`), and
//! one command makes one spec, so one mount has one set of pins.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use super::host_file::Snapshot;
use super::runtime::{OciBlob, ResolvedLayer, WitError};
use super::CallError;

/// The pins of one device (see the module comment). Empty until the first open.
#[derive(Debug, Default)]
pub struct Pins {
    meta: Mutex<Option<Snapshot>>,
    zinfo: Mutex<Option<Snapshot>>,
    oci: OnceLock<OciBlob>,
    first: OnceLock<FirstOpen>,
}

/// What the first instance reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirstOpen {
    pub size: u64,
    pub meta_size: u64,
    /// The local blob file's size (none for a remote blob).
    pub blob_size: Option<u64>,
    /// `sha256:<hex>` of device bytes `0..meta_size`, for a published index only (a
    /// META from the user is pinned by its snapshot).
    pub meta_digest: Option<String>,
    /// The OCI layer's digest and compressed size, as the open resolved them (none for a
    /// local blob or a URL).
    pub layer: Option<(String, u64)>,
}

/// A shared handle: cloned with the spec.
pub type SharedPins = Arc<Pins>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain values, consistent between statements: a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn io(text: String) -> CallError {
    CallError::Component(WitError::Io(text))
}

impl Pins {
    /// The META's bytes: read from `path` on the first call, the same bytes after.
    pub fn meta(&self, path: &Path) -> Result<Snapshot, CallError> {
        Self::snapshot(&self.meta, path)
    }

    /// The zinfo's bytes, likewise.
    pub fn zinfo(&self, path: &Path) -> Result<Snapshot, CallError> {
        Self::snapshot(&self.zinfo, path)
    }

    fn snapshot(cell: &Mutex<Option<Snapshot>>, path: &Path) -> Result<Snapshot, CallError> {
        let mut slot = lock(cell);
        if let Some(s) = slot.as_ref() {
            return Ok(s.clone());
        }
        let s = Snapshot::read(path).map_err(|e| io(format!("{e:#}")))?;
        tracing::debug!(snapshot = ?s, "read once; every instance is given these bytes");
        // State change: from now on every instance gets these bytes, whatever the file
        // holds later.
        *slot = Some(s.clone());
        Ok(s)
    }

    /// The META's digest, once it was read (for messages and `verify`).
    pub fn meta_digest(&self) -> Option<String> {
        lock(&self.meta).as_ref().map(|s| s.digest.clone())
    }

    /// The OCI layer pinned by the first open, if it was pinned already.
    pub fn oci(&self) -> Option<&OciBlob> {
        self.oci.get()
    }

    /// Pin the layer an open of `asked` resolved, unless another instance pinned first;
    /// the pinned one either way. `asked` named its manifest by tag (see
    /// [`names_a_tag`]); `resolved` is what the component reported.
    pub fn pin_oci(&self, asked: &OciBlob, resolved: &ResolvedLayer) -> &OciBlob {
        // State change: every later open of this device uses this reference.
        self.oci.get_or_init(|| {
            tracing::info!(
                "{}: pinned to {} layer {} ({}) for the life of this device",
                asked.reference,
                resolved.reference,
                resolved.layer_index,
                resolved.layer_digest
            );
            OciBlob {
                reference: resolved.reference.clone(),
                // By index: the digest-named manifest fixes which blob that is (a digest
                // could name two positions of one manifest).
                layer: Some(resolved.layer_index),
                digest: None,
                // The digest names one image manifest: no platform to choose any more.
                platform: None,
            }
        })
    }

    /// Record the first open, or check a reopen against it. `what` names the device.
    pub fn check_open(&self, what: &str, now: FirstOpen) -> Result<(), CallError> {
        let first = self.first.get_or_init(|| now.clone());
        if *first == now {
            return Ok(());
        }
        let mut diffs = Vec::new();
        if first.size != now.size {
            diffs.push(format!("device size {} (was {})", now.size, first.size));
        }
        if first.meta_size != now.meta_size {
            diffs.push(format!(
                "metadata size {} (was {})",
                now.meta_size, first.meta_size
            ));
        }
        if first.blob_size != now.blob_size {
            diffs.push(format!(
                "blob file size {} (was {})",
                show(now.blob_size),
                show(first.blob_size)
            ));
        }
        if first.layer != now.layer {
            let layer = |l: &Option<(String, u64)>| {
                l.as_ref()
                    .map_or_else(|| "-".to_string(), |(d, n)| format!("{d} ({n} bytes)"))
            };
            diffs.push(format!(
                "layer {} (was {})",
                layer(&now.layer),
                layer(&first.layer)
            ));
        }
        if first.meta_digest != now.meta_digest {
            diffs.push(format!(
                "metadata {} (was {})",
                now.meta_digest.as_deref().unwrap_or("-"),
                first.meta_digest.as_deref().unwrap_or("-")
            ));
        }
        Err(io(format!(
            "{what}: reopened for a new sandbox instance, the device is not the one first \
             opened: {}; the blob or its index changed during the mount, so nothing more is \
             served from it",
            diffs.join(", ")
        )))
    }
}

fn show(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_string(), |n| n.to_string())
}

/// True when an `oci://` reference names its manifest by tag (so it must be pinned),
/// false when it names a digest (`…@sha256:…`), which is immutable already.
pub fn names_a_tag(reference: &str) -> bool {
    !reference.contains('@')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(size: u64) -> FirstOpen {
        FirstOpen {
            size,
            meta_size: 4096,
            blob_size: Some(size),
            meta_digest: None,
            layer: Some(("sha256:00".into(), size)),
        }
    }

    #[test]
    fn a_reopen_must_match_the_first_open() {
        let pins = Pins::default();
        assert!(pins.check_open("d", open(10)).is_ok());
        assert!(pins.check_open("d", open(10)).is_ok());
        let err = pins.check_open("d", open(11)).unwrap_err().to_string();
        assert!(err.contains("device size 11 (was 10)"), "{err}");
        assert!(err.contains("blob file size 11 (was 10)"), "{err}");
        assert!(
            err.contains("layer sha256:00 (11 bytes) (was sha256:00 (10 bytes))"),
            "{err}"
        );
    }

    #[test]
    fn a_snapshot_survives_the_file() {
        let dir = std::env::temp_dir().join(format!("pins-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("meta");
        std::fs::write(&path, b"first").unwrap();
        let pins = Pins::default();
        let a = pins.meta(&path).unwrap();
        std::fs::write(&path, b"second, longer").unwrap();
        let b = pins.meta(&path).unwrap();
        assert_eq!(&*b.bytes, b"first");
        assert_eq!(a.digest, b.digest);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tags_and_digests() {
        assert!(names_a_tag("oci://127.0.0.1:5000/a/b:latest"));
        assert!(names_a_tag("oci://busybox"));
        assert!(!names_a_tag("oci://r/a@sha256:00"));
    }
}
