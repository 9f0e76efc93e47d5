//! containerd remote snapshotter (issue 15): a real containerd (Debian 12's 1.6, with its
//! own root, state and socket under a temp dir, the CRI plugin off, our proxy plugin in
//! its config), `erofs-host snapshotter`, and a registry on loopback holding the buildah
//! image and its published index. Then:
//!
//! - `erofs-host pull` + `ctr run --rm --snapshotter erofs-wasm IMAGE ID python3 …` runs
//!   from lazily mounted layers, fetching a fraction of the image (printed beside it);
//! - after a restart of the snapshotter (with one layer's mount lost meanwhile) the
//!   layer is mounted again and the image runs again;
//! - an image whose top layer has no published index: `erofs-host pull` says the layer
//!   was not mounted lazily; containerd's own `ctr pull` (in another namespace) finds the
//!   lower layers committed, unpacks the top one through the snapshotter's fallback, and
//!   it runs;
//! - removing the image removes its snapshots, and their layer mounts with them.
//!
//! Everything stops and unmounts on every path (guards), failure included.

mod common;
// The registry and mountinfo helpers of the whole-image tests (the rest is theirs).
#[path = "image/support.rs"]
#[allow(dead_code)]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use support::*;

const PLUGIN: &str = "erofs-wasm";
const PY: &str =
    "import json, email, http.client, sys; print(json.dumps({'ok': sys.version_info[0]}))";

/// A daemon of the test, stopped (SIGTERM, then SIGKILL) and reaped on drop.
struct Daemon {
    name: &'static str,
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    fn spawn(name: &'static str, cmd: &mut Command, log: PathBuf) -> Daemon {
        let file = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Daemon {
            name,
            child: Some(child),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until `ready` holds, or fail with the daemon's log.
    fn wait_for(&mut self, what: &str, ready: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "{} exited ({status}) before {what}:\n{}",
                    self.name,
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{}: no {what} after 30 s:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: signalling the child this guard started.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// On drop: every mount left under `dir` detached (the snapshotter's layer mounts, the
/// overlays containerd made), deepest first.
struct MountsUnder(PathBuf);

impl Drop for MountsUnder {
    fn drop(&mut self) {
        let needle = self.0.to_string_lossy().into_owned();
        let mut points: Vec<String> = mounts_mentioning(&needle)
            .iter()
            .filter_map(|line| line.split(' ').nth(4).map(str::to_string))
            .filter(|p| p.starts_with(&needle))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let umount = Command::new(host_bin())
                .args(["umount", &p])
                .stderr(Stdio::null())
                .status();
            if !umount.is_ok_and(|s| s.success()) {
                let _ = Command::new("umount").arg("-l").arg(&p).status();
            }
        }
    }
}

fn tool_missing(name: &str) -> bool {
    Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
}

fn containerd_config(dir: &Path, snapshotter_socket: &Path) -> PathBuf {
    let d = dir.display();
    let config = format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[proxy_plugins.{PLUGIN}]
  type = "snapshot"
  address = "{}"
"#,
        snapshotter_socket.display()
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, config).unwrap();
    path
}

struct Harness {
    dir: PathBuf,
    snap_root: PathBuf,
    snap_socket: PathBuf,
    socket: PathBuf,
}

impl Harness {
    fn start_snapshotter(&self, n: u32) -> Daemon {
        let mut cmd = Command::new(host_bin());
        cmd.arg("snapshotter")
            .arg(component())
            .arg("--root")
            .arg(&self.snap_root)
            .arg("--address")
            .arg(&self.snap_socket)
            .arg("--insecure")
            .env("RUST_LOG", "info");
        let mut d = Daemon::spawn(
            "erofs-host snapshotter",
            &mut cmd,
            self.dir.join(format!("snapshotter.{n}.log")),
        );
        let log = d.log.clone();
        d.wait_for("its socket", || {
            std::fs::read_to_string(&log).is_ok_and(|l| l.contains("serving on"))
        });
        d
    }

    fn ctr(&self, namespace: &str, args: &[&str]) -> std::process::Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", namespace])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn run_python(&self, namespace: &str, image: &str, id: &str) -> String {
        let out = self.ctr(
            namespace,
            &[
                "run",
                "--rm",
                "--snapshotter",
                PLUGIN,
                image,
                id,
                "/usr/bin/python3",
                "-c",
                PY,
            ],
        );
        assert!(
            out.status.success(),
            "ctr run {image}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn pull(&self, image: &str) -> std::process::Output {
        run_host(
            &[
                "pull".as_ref(),
                component().as_os_str(),
                image.as_ref(),
                "--containerd".as_ref(),
                self.socket.as_os_str(),
                "--insecure".as_ref(),
            ],
            T,
        )
    }

    /// The `fs` directories of the snapshots mounted lazily (from the state file).
    fn layer_dirs(&self) -> Vec<PathBuf> {
        let state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.snap_root.join("state.json")).unwrap())
                .unwrap();
        let mut dirs: Vec<PathBuf> = state["snapshots"]
            .as_object()
            .unwrap()
            .values()
            .filter(|r| !r["remote"].is_null())
            .map(|r| {
                self.snap_root
                    .join("snapshots")
                    .join(r["id"].as_u64().unwrap().to_string())
                    .join("fs")
            })
            .collect();
        dirs.sort();
        dirs
    }

    /// The bytes the layer mounts fetched, from their published counters (each server
    /// publishes them once a second: one more second lets the last reads in).
    fn bytes_fetched(&self, dirs: &[PathBuf]) -> u64 {
        std::thread::sleep(Duration::from_millis(1500));
        dirs.iter()
            .map(|d| {
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    let out = run_host(&["stats".as_ref(), d.as_os_str(), "--json".as_ref()], T);
                    assert!(out.status.success(), "stats {}: {out:?}", d.display());
                    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                    let published = v["layers"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .all(|l| l["published"].as_bool() == Some(true));
                    if published || Instant::now() > deadline {
                        assert!(published, "{}: no stats published", d.display());
                        return v["total"]["bytes_fetched"].as_u64().unwrap();
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
            .sum()
    }
}

fn is_mounted(dir: &Path) -> bool {
    let needle = format!(" {} ", dir.display());
    mounts_mentioning(&dir.to_string_lossy())
        .iter()
        .any(|l| l.contains(&needle))
}

#[test]
fn containerd_runs_an_image_from_lazily_mounted_layers() {
    let name = "containerd_runs_an_image_from_lazily_mounted_layers";
    if !is_root() {
        return skip(name, "needs root (containerd, FUSE and overlay mounts)");
    }
    for tool in ["containerd", "ctr", "runc", "buildah"] {
        if tool_missing(tool) {
            return skip(
                name,
                &format!("{tool} is not installed (tests/setup.sh: apt-get install -y containerd runc buildah)"),
            );
        }
    }
    let Some(reg) = Registry::start("containerd", "aufs") else {
        return;
    };
    let tmp = TempDir::new("containerd");
    let dir = tmp.path().to_path_buf();
    let _mounts = MountsUnder(dir.clone());

    // The image: four layers built by buildah, python3 from this machine.
    support::build_python_image(&dir.join("buildah"), &reg.addr());
    // The same image with uncompressed layers: a gzip layer's reads are lazy only past
    // the checkpoints already proven, each proven by a decode from a proven point
    // (docs/formats.md), so a cold read far into a gzip layer fetches the blob up to it;
    // a plain tar layer fetches what is read, which is what this figure shows. A 64 MiB
    // layer that nothing reads goes on top, as real images hold much a workload never
    // touches (the cold-start benchmarks of the field add one too).
    let image = push_uncompressed(&reg.addr(), "plain", 64);
    // Its twin with another top layer, and no index published.
    let unindexed = push_uncompressed(&reg.addr(), "noindex", 1);
    let out = run_host(
        &[
            "index".as_ref(),
            component().as_os_str(),
            format!("oci://{image}").as_ref(),
            "--push".as_ref(),
            "--aufs".as_ref(),
            "--insecure".as_ref(),
            "--quiet".as_ref(),
        ],
        T,
    );
    assert!(
        out.status.success(),
        "index --push: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let h = Harness {
        snap_root: dir.join("snapshotter"),
        snap_socket: dir.join("snapshotter.sock"),
        socket: dir.join("containerd.sock"),
        dir: dir.clone(),
    };
    let mut snapshotter = h.start_snapshotter(1);
    let config = containerd_config(&dir, &h.snap_socket);
    let mut containerd = Daemon::spawn(
        "containerd",
        Command::new("containerd").arg("--config").arg(&config),
        dir.join("containerd.log"),
    );
    containerd.wait_for("its socket answering", || {
        h.ctr("default", &["version"]).status.success()
    });

    // Pull without the layers, then run.
    let out = h.pull(&image);
    assert!(
        out.status.success(),
        "erofs-host pull: {}\nsnapshotter log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        snapshotter.log()
    );
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    let image_size: u64 = said
        .split(" bytes in its layer blobs")
        .next()
        .and_then(|s| s.rsplit('(').next())
        .and_then(|s| s.split(' ').next_back())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no image size in {said:?}"));
    let layers = h.layer_dirs();
    assert!(layers.len() >= 5, "{} layers mounted lazily", layers.len());
    assert!(
        layers.iter().all(|d| is_mounted(d)),
        "a layer is not mounted"
    );
    assert_eq!(h.run_python("default", &image, "lazy-1"), r#"{"ok": 3}"#);
    let fetched = h.bytes_fetched(&layers);
    eprintln!(
        "ctr run from lazily mounted layers: fetched {fetched} bytes of an image of {image_size} bytes ({:.1}%)",
        100.0 * fetched as f64 / image_size as f64
    );
    assert!(
        fetched * 3 < image_size,
        "fetched {fetched} of {image_size} bytes: not lazy"
    );

    // Restart the snapshotter, with one layer's mount lost meanwhile: it comes back.
    snapshotter.stop();
    let lost = layers[0].clone();
    let out = run_host(&["umount".as_ref(), lost.as_os_str()], T);
    assert!(out.status.success(), "umount {}: {out:?}", lost.display());
    assert!(!is_mounted(&lost));
    let mut snapshotter = h.start_snapshotter(2);
    // containerd dials the plugin again on its own gRPC backoff (a second or more).
    containerd.wait_for("the snapshotter reached again", || {
        h.ctr("default", &["snapshots", "--snapshotter", PLUGIN, "ls"])
            .status
            .success()
    });
    assert!(
        is_mounted(&lost),
        "not mounted again after the restart:\n{}",
        snapshotter.log()
    );
    assert_eq!(h.run_python("default", &image, "lazy-2"), r#"{"ok": 3}"#);
    eprintln!("after a snapshotter restart (one layer mounted again): the image ran again");

    // No published index: our pull says so; containerd's own pull falls back to an
    // ordinary unpack through the snapshotter.
    let out = h.pull(&unindexed);
    assert!(
        !out.status.success(),
        "pull of an image without an index succeeded"
    );
    assert_stderr_contains(&out, "was not mounted lazily");
    let out = h.ctr(
        "fallback",
        &[
            "images",
            "pull",
            "--plain-http",
            "--snapshotter",
            PLUGIN,
            &unindexed,
        ],
    );
    assert!(
        out.status.success(),
        "ctr images pull: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        h.run_python("fallback", &unindexed, "unpacked"),
        r#"{"ok": 3}"#
    );
    let log = snapshotter.log();
    assert!(
        log.contains("FALLING BACK") || log.contains("not mounted lazily"),
        "the fallback is not logged:\n{log}"
    );
    assert_eq!(
        h.layer_dirs().len(),
        layers.len(),
        "the fallback mounted layers"
    );

    // Removing the images removes their snapshots, and the layer mounts with them (the
    // lazily mounted layers are shared by both namespaces' images).
    for (namespace, name) in [("fallback", &unindexed), ("default", &image)] {
        let out = h.ctr(namespace, &["images", "rm", "--sync", name]);
        assert!(
            out.status.success(),
            "ctr images rm {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while layers.iter().any(|d| is_mounted(d)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let left: Vec<&PathBuf> = layers.iter().filter(|d| is_mounted(d)).collect();
    assert!(
        left.is_empty(),
        "still mounted after the image was removed: {left:?}\n{}",
        snapshotter.log()
    );
    assert!(h.layer_dirs().is_empty(), "snapshots left in the state");
    eprintln!(
        "image removed: its {} layer mounts went with it",
        layers.len()
    );

    containerd.stop();
    snapshotter.stop();
    drop(_mounts);
    let left = mounts_mentioning(&dir.to_string_lossy());
    assert!(left.is_empty(), "mounts left behind:\n{}", left.join("\n"));
}

/// Push a copy of `REGISTRY/test/python:oci` with uncompressed layers and an unread top
/// layer of `top_mib` MiB as `test/python:TAG` (tests/containerd/uncompressed.py); the
/// image's name as containerd names it.
fn push_uncompressed(registry: &str, tag: &str, top_mib: u32) -> String {
    let pushed = Command::new("python3")
        .arg(root().join("tests/containerd/uncompressed.py"))
        .args([registry, "test/python", "oci", tag, &top_mib.to_string()])
        .output()
        .unwrap();
    assert!(
        pushed.status.success(),
        "uncompressed.py {tag}: {}",
        String::from_utf8_lossy(&pushed.stderr)
    );
    format!("{registry}/test/python:{tag}")
}
