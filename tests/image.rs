//! Whole-image mounts (issue 12): `erofs-host mount COMPONENT oci://REG/REPO:TAG MNT`
//! without `--layer` mounts every layer and merges them. The merged tree must equal the
//! kernel's view of the same image (kernel EROFS of each layer's META ‖ tar, under the
//! kernel's overlayfs), entry by entry; teardown must leave nothing on every path.
//!
//! - fixture layers pushed as one three-layer image (aufs whiteouts + opaque dir, a
//!   plain tar, a pigz layer), with the fixtures' META/ZINFO in a --tarindex-dir;
//! - an image built by buildah (tests/image/build.sh), indexed layer by layer, with a
//!   python3 userland that must run under chroot.

mod common;
#[path = "image/support.rs"]
mod support;

use std::path::Path;
use std::process::Command;

use common::*;
use support::*;

/// The fixtures' META/ZINFO under the names a --tarindex-dir uses, for every layer of
/// `image` (entries of the harness's `layers`).
fn fixture_index_dir(reg: &Registry, image: &str, dir: &Path) -> Vec<LayerDevice> {
    std::fs::create_dir_all(dir).unwrap();
    let mut devices = Vec::new();
    for l in reg.image(image)["layers"].as_array().unwrap() {
        let fixture_name = l["fixture"].as_str().unwrap();
        let f = fixture(fixture_name);
        let stem = l["digest"].as_str().unwrap().replace(':', "-");
        std::fs::copy(f.join("meta.erofs"), dir.join(format!("{stem}.meta"))).unwrap();
        let tar = if fixture_name == "plain-tar" {
            f.join("layer.tar")
        } else {
            std::fs::copy(f.join("layer.zinfo"), dir.join(format!("{stem}.zinfo"))).unwrap();
            tar_of(
                &f.join("layer.tar.gz"),
                true,
                &dir.join(format!("{stem}.tar")),
            )
        };
        devices.push(LayerDevice {
            meta: f.join("meta.erofs"),
            tar,
        });
    }
    devices
}

fn no_leftovers(what: &str, mnt: &Path) {
    let left: Vec<String> = mounts_mentioning(&mnt.to_string_lossy())
        .into_iter()
        .chain(mounts_mentioning(".layers/"))
        .collect();
    assert!(
        left.is_empty(),
        "{what}: mounts left behind:\n{}",
        left.join("\n")
    );
}

#[test]
fn fixture_layers_merge_like_the_kernel() {
    if !is_root() {
        return skip(
            "fixture_layers_merge_like_the_kernel",
            "needs root (loop and overlay mounts)",
        );
    }
    let Some(reg) = Registry::start("merge", "multilayer") else {
        return;
    };
    let tmp = TempDir::new("image-merge");
    let index = tmp.path().join("index");
    let devices = fixture_index_dir(&reg, "multilayer", &index);
    let kernel = KernelView::new(tmp.path(), &devices);
    let reference = reg.image("multilayer")["reference"]
        .as_str()
        .unwrap()
        .to_string();
    for extra in [
        &[][..],
        &["--backend", "loop"][..],
        &["--merge", "fuse-overlayfs"][..],
    ] {
        let what = format!("multilayer {extra:?}");
        let mnt = tmp.path().join("mnt");
        let m = ImageMount::new(&reference, &mnt, &index, extra);
        let by_kernel = !extra.contains(&"fuse-overlayfs");
        let n = assert_same_tree(&what, &mnt, &kernel.merged, by_kernel);
        // Whiteouts hide, opaque directories hide what is below them.
        assert!(
            !mnt.join("etc/removed").exists(),
            "{what}: a whiteout shows"
        );
        let out = m.umount();
        assert!(
            out.status.success(),
            "{what}: umount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        drop(m);
        no_leftovers(&what, &mnt);
        eprintln!("{what}: {n} entries equal the kernel's view; unmounted cleanly");
    }
}

#[test]
fn upper_layer_takes_writes() {
    if !is_root() {
        return skip("upper_layer_takes_writes", "needs root (overlay mounts)");
    }
    let Some(reg) = Registry::start("upper", "multilayer") else {
        return;
    };
    let tmp = TempDir::new("image-upper");
    let index = tmp.path().join("index");
    fixture_index_dir(&reg, "multilayer", &index);
    let reference = reg.image("multilayer")["reference"]
        .as_str()
        .unwrap()
        .to_string();
    let mnt = tmp.path().join("mnt");
    let upper = tmp.path().join("rw");
    let m = ImageMount::new(
        &reference,
        &mnt,
        &index,
        &["--upper", upper.to_str().unwrap()],
    );
    std::fs::write(mnt.join("etc/new"), b"new").unwrap();
    std::fs::remove_file(mnt.join("opaque/kept")).unwrap();
    assert_eq!(std::fs::read(upper.join("upper/etc/new")).unwrap(), b"new");
    assert!(!mnt.join("opaque/kept").exists());
    drop(m);
    no_leftovers("--upper", &mnt);
}

#[test]
fn failures_unwind_and_umount_clears_a_dead_server() {
    if !is_root() {
        return skip(
            "failures_unwind_and_umount_clears_a_dead_server",
            "needs root",
        );
    }
    let Some(reg) = Registry::start("fail", "multilayer,zstd,docker") else {
        return;
    };
    let tmp = TempDir::new("image-fail");
    let index = tmp.path().join("index");
    fixture_index_dir(&reg, "multilayer", &index);
    fixture_index_dir(&reg, "docker", &index);
    let mnt = tmp.path().join("mnt");
    let r = |name: &str| reg.image(name)["reference"].as_str().unwrap().to_string();

    // A zstd layer is refused by name, before anything is mounted.
    let out = ImageMount::mount(&r("zstd"), &mnt, &index, &[]);
    assert!(!out.status.success());
    let digest = reg.image("zstd")["layers"][0]["digest"].as_str().unwrap();
    assert_stderr_contains(&out, "zstd layers are not supported");
    assert_stderr_contains(&out, digest);
    no_leftovers("zstd", &mnt);

    // A missing zinfo for the top layer: the two layers below were mounted, and are
    // taken down again; the message names the file.
    let top = reg.image("multilayer")["layers"][2]["digest"]
        .as_str()
        .unwrap();
    let zinfo = index.join(format!("{}.zinfo", top.replace(':', "-")));
    let saved = tmp.path().join("saved.zinfo");
    std::fs::rename(&zinfo, &saved).unwrap();
    let out = ImageMount::mount(&r("multilayer"), &mnt, &index, &[]);
    assert!(!out.status.success());
    assert_stderr_contains(&out, &zinfo.to_string_lossy());
    no_leftovers("missing zinfo", &mnt);
    std::fs::rename(&saved, &zinfo).unwrap();

    // nbd is not a whole-image backend.
    let out = ImageMount::mount(&r("multilayer"), &mnt, &index, &["--backend", "nbd"]);
    assert!(!out.status.success());
    assert_stderr_contains(&out, "fuse or loop");
    no_leftovers("nbd", &mnt);

    // The server killed: umount still takes the merge and every layer down.
    let m = ImageMount::new(&r("multilayer"), &mnt, &index, &[]);
    let reg_file = std::fs::read_dir("/run/erofs-wasm")
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .find(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .contains(&*mnt.to_string_lossy())
        })
        .expect("the mount's registration");
    let pid = serde_json::from_slice::<serde_json::Value>(&std::fs::read(&reg_file).unwrap())
        .unwrap()["pid"]
        .as_i64()
        .unwrap();
    // SAFETY: killing the server this test started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = m.umount();
    assert!(
        out.status.success(),
        "umount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(m);
    no_leftovers("killed server", &mnt);

    // A Docker schema 2 image of one layer mounts too (one layer: an empty one below).
    let m = ImageMount::new(&r("docker"), &mnt, &index, &[]);
    assert!(mnt.join("sizes").is_dir());
    drop(m);
    no_leftovers("docker", &mnt);
}

/// Index one layer blob with our own `erofs-host index` (whiteouts converted: --aufs).
fn index_layer(blob: &Path, gzip: bool, meta: &Path, zinfo: &Path) {
    let mut a: Vec<String> = vec![
        "index".into(),
        component().to_string_lossy().into_owned(),
        blob.to_string_lossy().into_owned(),
        "--aufs".into(),
        "--quiet".into(),
        "--tarindex".into(),
        meta.to_string_lossy().into_owned(),
    ];
    if gzip {
        a.push("--zinfo".into());
        a.push(zinfo.to_string_lossy().into_owned());
    }
    let out = run_host(&a, T);
    assert!(
        out.status.success(),
        "erofs-host index {}: {}",
        blob.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn buildah_image_matches_the_kernel_and_runs_python() {
    let name = "buildah_image_matches_the_kernel_and_runs_python";
    if !is_root() {
        return skip(name, "needs root (loop and overlay mounts, chroot)");
    }
    if Command::new("buildah").arg("--version").output().is_err() {
        return skip(
            name,
            "buildah is not installed (apt-get install -y buildah)",
        );
    }
    let Some(reg) = Registry::start("buildah", "aufs") else {
        return;
    };
    let tmp = TempDir::new("image-buildah");
    let work = tmp.path().join("buildah");
    std::fs::create_dir_all(&work).unwrap();
    let out = Command::new("sh")
        .arg(root().join("tests/image/build.sh"))
        .arg(&work)
        .arg(reg.addr())
        .arg("test/python")
        .output()
        .unwrap();
    // The vfs storage is plain directories: removing them leaves nothing.
    let _ = std::fs::remove_dir_all(&work);
    assert!(
        out.status.success(),
        "build.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    for tag in ["oci", "v2s2"] {
        let dir = tmp.path().join(tag);
        std::fs::create_dir_all(&dir).unwrap();
        let layers = fetch_layers(&reg.addr(), "test/python", tag, &dir);
        assert!(layers.len() >= 4, "{tag}: {} layers", layers.len());
        let index = dir.join("index");
        std::fs::create_dir_all(&index).unwrap();
        let mut devices = Vec::new();
        for (digest, media_type, blob) in &layers {
            let gzip = media_type.contains("gzip");
            let stem = digest.replace(':', "-");
            let meta = index.join(format!("{stem}.meta"));
            index_layer(blob, gzip, &meta, &index.join(format!("{stem}.zinfo")));
            let tar = tar_of(blob, gzip, &dir.join(format!("{stem}.tar")));
            devices.push(LayerDevice { meta, tar });
        }
        let kernel_dir = dir.join("kernel");
        std::fs::create_dir_all(&kernel_dir).unwrap();
        let kernel = KernelView::new(&kernel_dir, &devices);
        let mnt = dir.join("mnt");
        let reference = format!("{}/test/python:{tag}", reg.addr());
        let m = ImageMount::new(&reference, &mnt, &index, &[]);
        let n = assert_same_tree(tag, &mnt, &kernel.merged, true);
        // The OCI semantics, spelled out.
        for gone in [
            "etc/file-to-delete",
            "etc/dir-to-delete",
            "opt/replaced/old1",
            "opt/replaced/old-sub",
            "data/short-lived",
        ] {
            assert!(!mnt.join(gone).exists(), "{tag}: {gone} shows");
        }
        assert_eq!(
            std::fs::read(mnt.join("data/copyup.txt")).unwrap(),
            b"first line\nsecond line\n"
        );
        assert_eq!(
            std::fs::read(mnt.join("opt/replaced/new")).unwrap(),
            b"new\n"
        );
        assert!(mnt.join("data/dir-to-file").is_file() && mnt.join("data/file-to-dir").is_dir());
        // A real program runs from it.
        let py = Command::new("chroot")
            .arg(&mnt)
            .args(["/usr/bin/python3", "-c", "import json, email, http.client, sys; print(json.dumps({'ok': sys.version_info[0]}))"])
            .output()
            .unwrap();
        assert!(
            py.status.success(),
            "{tag}: chroot python3: {}",
            String::from_utf8_lossy(&py.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&py.stdout).trim(), r#"{"ok": 3}"#);
        let out = m.umount();
        assert!(
            out.status.success(),
            "{tag}: umount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        drop(m);
        drop(kernel);
        no_leftovers(tag, &mnt);
        eprintln!(
            "buildah image ({tag}, {} layers): {n} entries equal the kernel's view; python3 ran",
            layers.len()
        );
    }
}
