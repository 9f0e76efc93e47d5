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
    // This mount's layers only (`STATE/<mount id>.layers/N`, the id a hash of the
    // mountpoint): the tests of this binary run in parallel.
    use std::os::unix::ffi::OsStrExt;
    let id = &sha256_hex(mnt.as_os_str().as_bytes())[..16];
    let left: Vec<String> = mounts_mentioning(&mnt.to_string_lossy())
        .into_iter()
        .chain(mounts_mentioning(&format!("{id}.layers/")))
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
    build_python_image(&tmp.path().join("buildah"), &reg.addr());

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
        no_leftovers(tag, &mnt);
        eprintln!(
            "buildah image ({tag}, {} layers): {n} entries equal the kernel's view; python3 ran",
            layers.len()
        );
        if tag == "oci" {
            published_index_mount(&reference, &mnt, &kernel.merged, layers.len());
        } else {
            // Nothing published for this manifest: the error names the first layer and
            // says how to publish.
            let out = ImageMount::mount_with(&reference, &mnt, None, &[]);
            assert!(!out.status.success(), "{tag}: mounted without any index");
            assert_stderr_contains(&out, &format!("layer 0 ({})", layers[0].0));
            assert_stderr_contains(&out, "no published index");
            assert_stderr_contains(&out, "--push");
            no_leftovers("no published index", &mnt);
        }
        drop(kernel);
    }
}

/// `index --push --aufs` publishes every layer's index (whiteouts converted) next to the image; the mount by tag then
/// finds them with no --tarindex-dir, and serves the same tree as the kernel, python3
/// included, with per-layer counters in `erofs-host stats`.
fn published_index_mount(reference: &str, mnt: &Path, kernel: &Path, layers: usize) {
    let c = component().to_string_lossy().into_owned();
    let oci = format!("oci://{reference}");
    let out = run_host(
        &[
            "index",
            &c,
            &oci,
            "--push",
            "--aufs",
            "--insecure",
            "--quiet",
        ],
        T,
    );
    assert!(
        out.status.success(),
        "index --push: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = ImageMount::new_with(reference, mnt, None, &[]);
    let n = assert_same_tree("published index", mnt, kernel, true);
    let py = Command::new("chroot")
        .arg(mnt)
        .args([
            "/usr/bin/python3",
            "-c",
            "import json, email, http.client; print('ok')",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&py.stdout).trim(),
        "ok",
        "published index: chroot python3: {}",
        String::from_utf8_lossy(&py.stderr)
    );
    let stats = run_host(&["stats", &*mnt.to_string_lossy(), "--json"], T);
    assert!(
        stats.status.success(),
        "stats: {}",
        String::from_utf8_lossy(&stats.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    let rows = v["layers"].as_array().unwrap();
    assert_eq!(rows.len(), layers, "stats: one row per layer: {v}");
    assert!(
        rows.iter().all(|r| r["bytes_fetched"].is_u64()),
        "stats: {v}"
    );
    let out = m.umount();
    assert!(
        out.status.success(),
        "umount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(m);
    no_leftovers("published index", mnt);
    eprintln!("published index: {n} entries equal the kernel's view; python3 ran");
}

/// `erofs-host stats MNT --json`.
fn stats_of(mnt: &Path) -> serde_json::Value {
    let out = run_host(&["stats", &*mnt.to_string_lossy(), "--json"], T);
    assert!(
        out.status.success(),
        "stats: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Poll the stats (published once a second) until `done` says so; the whole value then.
fn stats_until(
    mnt: &Path,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    // Generous: the fixtures are small, but the machine may be loaded.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let v = stats_of(mnt);
        if done(&v) {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: never reached: {v}"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

fn total(v: &serde_json::Value, key: &str) -> u64 {
    v["total"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("stats: no total.{key}: {v}"))
}

/// Every regular file under `root`, sorted.
fn regular_files(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                dirs.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn record_prefetch_and_background_fetch_fill_the_cache() {
    let name = "record_prefetch_and_background_fetch_fill_the_cache";
    if !is_root() {
        return skip(name, "needs root (overlay mounts)");
    }
    let Some(reg) = Registry::start("warm", "multilayer") else {
        return;
    };
    let tmp = TempDir::new("image-warm");
    let index = tmp.path().join("index");
    fixture_index_dir(&reg, "multilayer", &index);
    let reference = reg.image("multilayer")["reference"]
        .as_str()
        .unwrap()
        .to_string();
    let mnt = tmp.path().join("mnt");
    let log = tmp.path().join("access.log");
    let cache = |n: &str| tmp.path().join(n).to_string_lossy().into_owned();

    // 1. A run that reads a few files, recorded.
    let c1 = cache("cache1");
    let m = ImageMount::new(
        &reference,
        &mnt,
        &index,
        &[
            "--cache-dir",
            &c1,
            "--background-fetch",
            "0",
            "--record",
            &log.to_string_lossy(),
        ],
    );
    let files: Vec<_> = regular_files(&mnt)
        .into_iter()
        .filter(|p| std::fs::metadata(p).unwrap().len() > 0)
        .step_by(3)
        .take(8)
        .collect();
    let contents: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
    drop(m);
    no_leftovers("--record", &mnt);
    let recorded = std::fs::read_to_string(&log).unwrap();
    for f in &files {
        let rel = format!("\"/{}\"", f.strip_prefix(&mnt).unwrap().display());
        assert!(
            recorded.contains(&rel),
            "{rel} not in the access log:\n{recorded}"
        );
    }

    // 2. Mounted again with that log as --prefetch and an empty cache: once the prefetch
    //    is done, the same reads come from the disk cache.
    let c2 = cache("cache2");
    let m = ImageMount::new(
        &reference,
        &mnt,
        &index,
        &[
            "--cache-dir",
            &c2,
            "--background-fetch",
            "0",
            "--prefetch",
            &log.to_string_lossy(),
        ],
    );
    let before = stats_until(&mnt, "prefetch done", |v| {
        v["layers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["prefetch_done"] == true)
    });
    assert!(
        total(&before, "background_bytes_fetched") > 0,
        "the prefetch fetched nothing: {before}"
    );
    for (f, want) in files.iter().zip(&contents) {
        assert_eq!(&std::fs::read(f).unwrap(), want, "{}", f.display());
    }
    let after = stats_until(&mnt, "hits published", |v| total(v, "disk_cache_hits") > 0);
    eprintln!(
        "prefetch: {} regions; then the reads: {} disk-cache hits, {} more network requests (prefetch made {})",
        recorded.lines().count(),
        total(&after, "disk_cache_hits"),
        total(&after, "registry_requests") - total(&before, "registry_requests"),
        total(&before, "registry_requests"),
    );
    drop(m);
    no_leftovers("--prefetch", &mnt);

    // 3. The background fetch goes through every layer; then every file reads with no
    //    request to the network.
    let c3 = cache("cache3");
    let m = ImageMount::new(
        &reference,
        &mnt,
        &index,
        &["--cache-dir", &c3, "--background-fetch", "1G"],
    );
    let done = stats_until(&mnt, "background fetch done", |v| {
        v["layers"].as_array().unwrap().iter().all(|l| {
            l["background_total"].as_u64().unwrap_or(0) > 0
                && l["background_done"] == l["background_total"]
        })
    });
    let network = total(&done, "registry_requests");
    let mut bytes = 0;
    for f in regular_files(&mnt) {
        bytes += std::fs::read(&f).unwrap().len();
    }
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let after = stats_of(&mnt);
    assert_eq!(
        total(&after, "registry_requests"),
        network,
        "reading every file ({bytes} bytes) after the background fetch went to the network: {after}"
    );
    assert!(total(&after, "disk_cache_hits") > 0, "{after}");
    let table = run_host(&["stats", &*mnt.to_string_lossy()], T);
    eprintln!("{}", String::from_utf8_lossy(&table.stdout));
    drop(m);
    no_leftovers("--background-fetch", &mnt);
}
