//! `erofs-host stats`: a FUSE mount of a local gzip layer publishes its counters, which
//! grow when files are read; a path that is not one of our mounts is a clear error.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(120);

/// A mount made with `erofs-host mount`, unmounted (and its server stopped) on drop.
struct Mounted {
    dir: TempDir,
}

impl Mounted {
    fn new(fixture_dir: &str) -> Mounted {
        let args = device_args(fixture_dir);
        let dir = TempDir::new("stats");
        let mp = dir.path().join("m");
        std::fs::create_dir(&mp).unwrap();
        // mount COMPONENT BLOB MOUNTPOINT --tarindex … [--zinfo …]
        let mut full = vec!["mount".to_string(), args[0].clone()];
        full.push(args[args.len() - 1].clone());
        full.push(mp.to_string_lossy().into_owned());
        full.extend(args[1..args.len() - 1].iter().cloned());
        full.extend(["--backend".into(), "fuse".into()]);
        let m = Mounted { dir };
        let out = run_host(&full, T);
        assert!(
            out.status.success(),
            "mount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        m
    }

    fn path(&self) -> String {
        self.dir.path().join("m").to_string_lossy().into_owned()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let mp = self.path();
        if !run_host(&["umount", &mp], T).status.success() {
            let _ = run_host(&["umount", "--lazy", &mp], T);
        }
    }
}

fn stats_json(mp: &str) -> Value {
    let out = run_host(&["stats", mp, "--json"], T);
    assert!(
        out.status.success(),
        "stats: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn read_every_file(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let ft = entry.file_type().unwrap();
        if ft.is_dir() {
            total += read_every_file(&entry.path());
        } else if ft.is_file() {
            total += std::fs::read(entry.path()).map_or(0, |b| b.len() as u64);
        }
    }
    total
}

#[test]
fn reads_show_up_in_the_counters() {
    if !is_root() || !Path::new("/dev/fuse").exists() {
        return skip("stats", "needs root and /dev/fuse");
    }
    let m = Mounted::new("large");
    let read = read_every_file(Path::new(&m.path()));
    assert!(read > 0, "the fixture has file data");
    // The server publishes once a second.
    let deadline = Instant::now() + Duration::from_secs(10);
    let layer = loop {
        let v = stats_json(&m.path());
        let layer = v["layers"][0].clone();
        if layer["bytes_decoded"].as_u64().unwrap_or(0) > 0 || Instant::now() > deadline {
            assert_eq!(v["layers"].as_array().map(Vec::len), Some(1), "{v}");
            assert_eq!(v["total"]["bytes_decoded"], layer["bytes_decoded"], "{v}");
            break layer;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(layer["published"], true, "{layer}");
    // (Not compared with `read`: the last second may not be published yet, and files
    // that share data, hard links, are decoded once.)
    assert!(layer["bytes_decoded"].as_u64().unwrap_or(0) > 0, "{layer}");
    assert!(
        layer["blob_bytes_read"].as_u64().unwrap_or(0) > 0,
        "{layer}"
    );
    // A local blob: nothing fetched.
    assert_eq!(layer["bytes_fetched"], 0, "{layer}");
    assert_eq!(layer["requests"], 0, "{layer}");
    let out = run_host(&["stats", &m.path()], T);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && table.contains("total"), "{table}");
    assert!(table.contains("FETCHED"), "{table}");
}

#[test]
fn a_path_that_is_not_our_mount_is_an_error() {
    let dir = TempDir::new("stats-none");
    let out = run_host(&["stats", &dir.path().to_string_lossy()], T);
    assert_eq!(out.status.code(), Some(1));
    assert_stderr_contains(&out, "not a mount of erofs-host");
}
