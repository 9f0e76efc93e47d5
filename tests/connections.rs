//! Connections to a registry (issue 13), counted, never timed: the host's pool reuses
//! them, HTTP/2 carries everything on one connection when the registry offers it by
//! ALPN, a tag costs one manifest request, an open's checks ask for each range once, and
//! a mount's cold reads and parallel readers open no connection of their own.
//!
//! Against the test registry (Basic auth, TLS) through the harness's emulated link with
//! no delay (link.py), which logs every connection it carried; the HTTP/1.1 fault proxy
//! behind it logs every request. `--link-only` relays straight to the registry, whose
//! Go server offers HTTP/2 by ALPN.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::registry::Registry;
use common::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(180);

fn registry() -> Option<&'static Registry> {
    static R: OnceLock<Option<Registry>> = OnceLock::new();
    R.get_or_init(|| Registry::start_tls("basic", &["--images", "large"]))
        .as_ref()
}

/// A link in front of the registry: through the fault proxy, or straight to it.
fn link(reg: &Registry, straight: bool) -> Value {
    let mut extra = vec!["--rtt-ms", "0"];
    if straight {
        extra.push("--link-only");
    }
    reg.proxy("none", &extra)
}

fn json_lines(path: &str) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The proxy's request log once it has stopped growing for 200 ms (at most 5 s): the
/// proxy logs a request after its answer is sent, so the client may be done first.
fn settled(path: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut log = json_lines(path);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let again = json_lines(path);
        if again.len() == log.len() {
            return again;
        }
        log = again;
    }
    log
}

/// The connections the link carried, once `want` of them have closed (the link logs a
/// connection when it closes, a moment after the client exits), or after 10 s.
fn closed_connections(px: &Value, want: usize) -> usize {
    let log = px["links_log"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = json_lines(log).len();
        if n >= want || Instant::now() > deadline {
            // A little longer, so that one too many would show.
            std::thread::sleep(Duration::from_millis(300));
            return json_lines(log).len();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `large` through `px`: the host command's arguments up to (not including) extras.
fn large_args(cmd: &str, reg: &Registry, px: &Value) -> Vec<String> {
    let reference = reg
        .oci("large")
        .replace(&reg.s("registry"), px["proxy"].as_str().unwrap());
    let f = fixture("large");
    vec![
        cmd.into(),
        component().to_string_lossy().into_owned(),
        reference,
        "--tarindex".into(),
        f.join("meta.erofs").to_string_lossy().into_owned(),
        "--zinfo".into(),
        f.join("layer.zinfo").to_string_lossy().into_owned(),
        "--ca-file".into(),
        reg.s("ca_file"),
    ]
}

fn run(reg: &Registry, a: &[String]) -> std::process::Output {
    let env = reg.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    run_host_with(a, &env, None, T)
}

/// `connections (host): N opened (M over HTTP/2), K requests reused one` from `--stats`.
fn host_connections(stderr: &str) -> (u64, u64, u64) {
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("connections (host): "))
        .unwrap_or_else(|| panic!("no connection counters in:\n{stderr}"));
    let number = |w: Option<&str>| -> u64 {
        w.and_then(|w| w.trim_start_matches('(').parse().ok())
            .unwrap_or_else(|| panic!("unreadable connection counters: {line}"))
    };
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = |i: usize| words.get(i).copied();
    // N opened (M over HTTP/2), K requests reused one
    (number(at(0)), number(at(2)), number(at(5)))
}

fn cat_large(reg: &Registry, px: &Value) -> String {
    let mut a = large_args("cat", reg, px);
    a.push("--stats".into());
    let out = run(reg, &a);
    assert!(
        out.status.success(),
        "cat: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        sha256_hex(&out.stdout) == sha256_hex(&expected_device("large")),
        "cat of large over oci://: device bytes differ"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_cat_reuses_its_connections_and_asks_for_each_range_once() {
    let Some(reg) = registry() else { return };
    let px = link(reg, false);
    let stderr = cat_large(reg, &px);
    let (opened, h2, reused) = host_connections(&stderr);
    let log = settled(px["log"].as_str().unwrap());
    // The fault proxy speaks HTTP/1.1: a few connections, each carrying several requests.
    assert_eq!(h2, 0, "{stderr}");
    assert!((1..=4).contains(&opened), "{opened} connections: {stderr}");
    assert_eq!(
        opened + reused,
        log.len() as u64,
        "every request is on a new or a reused connection: {stderr}\n{log:?}"
    );
    assert!(reused >= log.len() as u64 / 2, "{stderr}");
    assert_eq!(closed_connections(&px, opened as usize), opened as usize);
    // The tag is resolved once (its challenge, then the manifest); the device is opened
    // by the digest it names without fetching the manifest again.
    let manifests: Vec<&Value> = log
        .iter()
        .filter(|r| r["path"].as_str().unwrap().contains("/manifests/"))
        .collect();
    let statuses: Vec<&Value> = manifests.iter().map(|r| &r["status"]).collect();
    assert_eq!(statuses, [401, 200], "{manifests:?}");
    assert!(manifests
        .iter()
        .all(|r| r["path"].as_str().unwrap().ends_with("/manifests/latest")));
    // The open's checks and the read ask for every range once, and fetch the blob once.
    let ranges: Vec<&str> = log.iter().filter_map(|r| r["range"].as_str()).collect();
    let distinct: HashSet<&str> = ranges.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        ranges.len(),
        "a range asked twice: {ranges:?}"
    );
    let bytes: u64 = log
        .iter()
        .filter(|r| r["range"].is_string())
        .map(|r| r["bytes"].as_u64().unwrap())
        .sum();
    let blob_size = reg.image("large")["layer_size"].as_u64().unwrap();
    assert_eq!(bytes, blob_size, "{ranges:?}");
}

#[test]
fn http2_by_alpn_carries_a_cat_on_one_connection() {
    let Some(reg) = registry() else { return };
    let px = link(reg, true);
    let stderr = cat_large(reg, &px);
    assert_eq!(host_connections(&stderr).0, 1, "{stderr}");
    assert_eq!(host_connections(&stderr).1, 1, "not HTTP/2: {stderr}");
    assert_eq!(closed_connections(&px, 1), 1);
}

#[test]
fn a_mount_its_cold_reads_and_parallel_readers_share_one_http2_connection() {
    let Some(reg) = registry() else { return };
    if !is_root() || !Path::new("/dev/fuse").exists() {
        return skip("mount over HTTP/2", "needs root and /dev/fuse");
    }
    let px = link(reg, true);
    let dir = TempDir::new("h2mnt");
    let mp = dir.path().join("m");
    std::fs::create_dir(&mp).unwrap();
    let mut a = large_args("mount", reg, &px);
    a.insert(3, mp.to_string_lossy().into_owned());
    let out = run(reg, &a);
    assert!(
        out.status.success(),
        "mount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let guard = MountGuard(mp.clone());
    let expected: Value =
        serde_json::from_slice(&std::fs::read(fixture("large").join("expected.json")).unwrap())
            .unwrap();
    let files: Vec<(String, String, u64)> = expected["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["mode"].as_str().unwrap().starts_with("0o10"))
        .map(|e| {
            let text = |k: &str| e[k].as_str().unwrap().to_string();
            (text("path"), text("sha256"), e["size"].as_u64().unwrap())
        })
        .collect();
    let check = |(path, sha, _): &(String, String, u64)| {
        let got = std::fs::read(mp.join(path)).unwrap();
        assert_eq!(&sha256_hex(&got), sha, "{path}");
    };
    // A cold read of a small file in the middle of the tar, then the 8 largest files
    // read at once.
    let small: Vec<_> = files.iter().filter(|f| f.2 <= 4096).collect();
    check(small[small.len() / 2]);
    let mut largest: Vec<_> = files.iter().collect();
    largest.sort_by_key(|f| std::cmp::Reverse(f.2));
    std::thread::scope(|s| {
        for f in largest.iter().take(8) {
            s.spawn(|| check(f));
        }
    });
    drop(guard);
    // The whole mount, from its open to its unmount: one connection.
    assert_eq!(closed_connections(&px, 1), 1);
}
