//! Helpers of the whole-image tests: the registry, the kernel's reference view of an
//! image, a tree snapshot that compares every entry, and mount guards that clean up on
//! every path.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::common::*;

pub const T: Duration = Duration::from_secs(300);

/// A plain-HTTP registry on 127.0.0.1 without auth, holding `images`; stopped on drop.
pub struct Registry(HarnessRegistry);

impl std::ops::Deref for Registry {
    type Target = HarnessRegistry;
    fn deref(&self) -> &HarnessRegistry {
        &self.0
    }
}

impl Registry {
    pub fn start(tag: &str, images: &str) -> Option<Registry> {
        let args = ["--auth", "none", "--images", images];
        HarnessRegistry::start("image tests", &format!("image-reg-{tag}"), &args).map(Registry)
    }
}

/// Build the test image (tests/image/build.sh: four buildah layers, python3 from this
/// machine) in `work` and push it to `registry` as `test/python:oci` and `:v2s2`. The vfs
/// storage is plain directories: removing `work` afterwards leaves nothing.
pub fn build_python_image(work: &Path, registry: &str) {
    std::fs::create_dir_all(work).unwrap();
    let out = Command::new("sh")
        .arg(root().join("tests/image/build.sh"))
        .arg(work)
        .arg(registry)
        .arg("test/python")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(work);
    assert!(
        out.status.success(),
        "build.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The lines of /proc/self/mountinfo that mention `needle`.
pub fn mounts_mentioning(needle: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

/// `erofs-host mount COMPONENT REF MNT --insecure [--tarindex-dir DIR] EXTRA…`, unmounted
/// with `erofs-host umount` on drop (and lazily by hand if that fails). Without a
/// --tarindex-dir the layers' indexes published next to the image are used.
pub struct ImageMount {
    pub mnt: PathBuf,
}

impl ImageMount {
    pub fn mount(reference: &str, mnt: &Path, index_dir: &Path, extra: &[&str]) -> Output {
        Self::mount_with(reference, mnt, Some(index_dir), extra)
    }

    pub fn mount_with(
        reference: &str,
        mnt: &Path,
        index_dir: Option<&Path>,
        extra: &[&str],
    ) -> Output {
        std::fs::create_dir_all(mnt).unwrap();
        let mut a: Vec<String> = vec![
            "mount".into(),
            component().to_string_lossy().into_owned(),
            format!("oci://{reference}"),
            mnt.to_string_lossy().into_owned(),
            "--insecure".into(),
        ];
        if let Some(dir) = index_dir {
            a.push("--tarindex-dir".into());
            a.push(dir.to_string_lossy().into_owned());
        }
        a.extend(extra.iter().map(|s| s.to_string()));
        run_host(&a, T)
    }

    pub fn new(reference: &str, mnt: &Path, index_dir: &Path, extra: &[&str]) -> ImageMount {
        Self::new_with(reference, mnt, Some(index_dir), extra)
    }

    pub fn new_with(
        reference: &str,
        mnt: &Path,
        index_dir: Option<&Path>,
        extra: &[&str],
    ) -> ImageMount {
        let out = Self::mount_with(reference, mnt, index_dir, extra);
        let m = ImageMount {
            mnt: mnt.to_path_buf(),
        };
        assert!(
            out.status.success(),
            "mount {reference} {extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        m
    }

    pub fn umount(&self) -> Output {
        run_host(&["umount".as_ref(), self.mnt.as_os_str()], T)
    }
}

impl Drop for ImageMount {
    fn drop(&mut self) {
        let out = self.umount();
        if !out.status.success() && !mounts_mentioning(&self.mnt.to_string_lossy()).is_empty() {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

/// One layer as the kernel sees it: the device META ‖ uncompressed tar in a file.
pub struct LayerDevice {
    pub meta: PathBuf,
    pub tar: PathBuf,
}

/// The reference: each layer's device loop-mounted by the kernel's EROFS, stacked by the
/// kernel's overlayfs (top layer first). Everything is unmounted on drop.
pub struct KernelView {
    pub merged: PathBuf,
    mounts: Vec<PathBuf>,
}

impl KernelView {
    pub fn new(dir: &Path, layers: &[LayerDevice]) -> KernelView {
        let mut view = KernelView {
            merged: dir.join("merged"),
            mounts: Vec::new(),
        };
        let mut lowers = Vec::new();
        for (i, l) in layers.iter().enumerate() {
            let image = dir.join(format!("layer{i}.img"));
            let mut dev = std::fs::read(&l.meta).unwrap();
            dev.extend(std::fs::read(&l.tar).unwrap());
            std::fs::write(&image, dev).unwrap();
            let at = dir.join(format!("layer{i}"));
            std::fs::create_dir_all(&at).unwrap();
            let ok = Command::new("mount")
                .args(["-t", "erofs", "-o", "loop,ro"])
                .arg(&image)
                .arg(&at)
                .status()
                .unwrap()
                .success();
            assert!(ok, "kernel EROFS mount of layer {i} failed");
            view.mounts.push(at.clone());
            lowers.push(at.to_string_lossy().into_owned());
        }
        if lowers.len() == 1 {
            let empty = dir.join("empty");
            std::fs::create_dir_all(&empty).unwrap();
            lowers.insert(0, empty.to_string_lossy().into_owned());
        }
        lowers.reverse();
        std::fs::create_dir_all(&view.merged).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "overlay", "-o"])
            .arg(format!("ro,lowerdir={}", lowers.join(":")))
            .arg("reference")
            .arg(&view.merged)
            .status()
            .unwrap()
            .success();
        assert!(ok, "kernel overlay of the layers failed");
        view.mounts.push(view.merged.clone());
        view
    }
}

impl Drop for KernelView {
    fn drop(&mut self) {
        while let Some(m) = self.mounts.pop() {
            drop(MountGuard(m));
        }
    }
}

/// Xattrs that belong to the merge itself, not to the image: overlayfs' and
/// fuse-overlayfs' own.
fn is_overlay_xattr(name: &str) -> bool {
    ["trusted.overlay.", "user.overlay.", "user.fuseoverlayfs."]
        .iter()
        .any(|p| name.starts_with(p))
}

/// Every entry below `root`: path → what `stat` and friends show (mode, owner, size,
/// link count, nanosecond mtime, content sha256, symlink target, device numbers, xattrs
/// other than the merge's own).
///
/// `dir_nlink: false` leaves out the link count of directories: overlayfs reports 1 for
/// a merged directory, fuse-overlayfs counts subdirectories; neither is the image's.
pub fn snapshot(root: &Path, dir_nlink: bool) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let ft = md.file_type();
            let nlink = if ft.is_dir() && !dir_nlink {
                String::new()
            } else {
                format!(" nlink {}", md.nlink())
            };
            let mut d = format!(
                "mode {:o} uid {} gid {} size {}{nlink} mtime {}.{:09}",
                md.mode(),
                md.uid(),
                md.gid(),
                md.size(),
                md.mtime(),
                md.mtime_nsec()
            );
            if ft.is_file() {
                d += &format!(" sha256 {}", sha256_hex(&std::fs::read(&p).unwrap()));
            } else if ft.is_symlink() {
                d += &format!(" -> {}", std::fs::read_link(&p).unwrap().display());
            } else if ft.is_char_device() || ft.is_block_device() {
                let r = md.rdev();
                d += &format!(" rdev {}:{}", libc::major(r), libc::minor(r));
            }
            let xattrs = read_xattrs(&p).unwrap_or_else(|e| panic!("{rel}: {e}"));
            for (k, v) in xattrs.iter().filter(|(k, _)| !is_overlay_xattr(k)) {
                d += &format!(" xattr {k}={v}");
            }
            out.insert(rel, d);
            if ft.is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

/// The differences between two snapshots, one line each.
pub fn differences(got: &BTreeMap<String, String>, want: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    for (path, w) in want {
        match got.get(path) {
            None => out.push(format!("{path}: missing (kernel: {w})")),
            Some(g) if g != w => out.push(format!("{path}:\n    got    {g}\n    kernel {w}")),
            Some(_) => {}
        }
    }
    for path in got.keys().filter(|p| !want.contains_key(*p)) {
        out.push(format!("{path}: present, but not in the kernel's view"));
    }
    out
}

/// Assert that the merged tree equals the kernel's view, entry by entry.
pub fn assert_same_tree(what: &str, got: &Path, kernel: &Path, dir_nlink: bool) -> usize {
    let want = snapshot(kernel, dir_nlink);
    let have = snapshot(got, dir_nlink);
    let diffs = differences(&have, &want);
    assert!(
        diffs.is_empty(),
        "{what}: {} of {} entries differ:\n{}",
        diffs.len(),
        want.len(),
        diffs
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    want.len()
}

/// Fetch the manifest `repo:tag` and every layer blob into `dir` (plain HTTP, with
/// Python's urllib: no code of ours reads them). Returns (digest, media type, blob path)
/// per layer, bottom first.
pub fn fetch_layers(
    registry: &str,
    repo: &str,
    tag: &str,
    dir: &Path,
) -> Vec<(String, String, PathBuf)> {
    let script = r#"
import json, sys, urllib.request
reg, repo, tag, out = sys.argv[1:5]
accept = ", ".join(["application/vnd.oci.image.manifest.v1+json",
                    "application/vnd.docker.distribution.manifest.v2+json"])
req = urllib.request.Request(f"http://{reg}/v2/{repo}/manifests/{tag}", headers={"Accept": accept})
manifest = json.load(urllib.request.urlopen(req))
for layer in manifest["layers"]:
    path = f"{out}/{layer['digest'].replace(':', '-')}.blob"
    with urllib.request.urlopen(f"http://{reg}/v2/{repo}/blobs/{layer['digest']}") as r, open(path, "wb") as f:
        f.write(r.read())
    print(layer["digest"], layer["mediaType"], path)
"#;
    let out = Command::new("python3")
        .args(["-c", script, registry, repo, tag])
        .arg(dir)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "fetching {repo}:{tag}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let mut f = l.split(' ');
            let (d, m, p) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
            (d.to_string(), m.to_string(), PathBuf::from(p))
        })
        .collect()
}

/// The uncompressed tar of a blob (gzip -dc, or the blob itself).
pub fn tar_of(blob: &Path, gzip: bool, out: &Path) -> PathBuf {
    if !gzip {
        return blob.to_path_buf();
    }
    let file = std::fs::File::create(out).unwrap();
    let ok = Command::new("gzip")
        .arg("-dc")
        .arg(blob)
        .stdout(file)
        .status()
        .unwrap()
        .success();
    assert!(ok, "gzip -dc {}", blob.display());
    out.to_path_buf()
}
