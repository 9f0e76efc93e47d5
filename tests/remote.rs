//! Network sources against a real registry on 127.0.0.1 (Debian's docker-registry, started
//! by tests/registry/harness.py with a self-signed CA): oci:// and https:// blobs through
//! `cat` and `mount`, Basic and token auth, platforms and layers, faults from a proxy, the
//! egress allow-list and the range cache.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::registry::Registry;
use common::*;

const T: Duration = Duration::from_secs(180);

fn basic_registry() -> Option<&'static Registry> {
    static R: OnceLock<Option<Registry>> = OnceLock::new();
    R.get_or_init(|| Registry::start_tls("basic", &[])).as_ref()
}

fn token_registry() -> Option<&'static Registry> {
    static R: OnceLock<Option<Registry>> = OnceLock::new();
    R.get_or_init(|| {
        Registry::start_tls(
            "token",
            &["--token-ttl", "4", "--images", "basic,pigz,large"],
        )
    })
    .as_ref()
}

/// `erofs-host CMD COMPONENT BLOB --tarindex … [--zinfo …] --ca-file CA EXTRA…` for a fixture.
fn args(cmd: &str, blob: &str, fixture_dir: &str, ca: &str, extra: &[&str]) -> Vec<String> {
    let f = fixture(fixture_dir);
    let mut a = vec![
        cmd.to_string(),
        component().to_string_lossy().into_owned(),
        blob.to_string(),
    ];
    a.extend([
        "--tarindex".into(),
        f.join("meta.erofs").to_string_lossy().into_owned(),
    ]);
    if fixture_dir != "plain-tar" {
        a.extend([
            "--zinfo".into(),
            f.join("layer.zinfo").to_string_lossy().into_owned(),
        ]);
    }
    a.extend(["--ca-file".into(), ca.to_string()]);
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn run(reg: &Registry, a: &[String]) -> Output {
    reg.run_host(a, T)
}

fn assert_device(out: &Output, dir: &str, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        sha256_hex(&out.stdout) == sha256_hex(&expected_device(dir)),
        "{what}: device bytes differ"
    );
}

#[test]
fn oci_cat_gives_the_exact_device_for_every_fixture() {
    let Some(reg) = basic_registry() else { return };
    for dir in ALL_FIXTURES {
        let reference = reg.oci(dir);
        let out = run(
            reg,
            &args("cat", &reference, dir, &reg.s("ca_file"), &["--stats"]),
        );
        assert_device(&out, dir, dir);
    }
    // A digest reference: the manifest is verified against it.
    let reference = format!(
        "oci://{}",
        reg.image("basic")["digest_reference"].as_str().unwrap()
    );
    assert_device(
        &run(
            reg,
            &args("cat", &reference, "basic", &reg.s("ca_file"), &[]),
        ),
        "basic",
        "digest reference",
    );
}

#[test]
fn password_from_stdin_and_no_credentials() {
    let Some(reg) = basic_registry() else { return };
    let reference = reg.oci("pigz");
    let mut a = args(
        "cat",
        &reference,
        "pigz",
        &reg.s("ca_file"),
        &["--username", &reg.s("username"), "--password-stdin"],
    );
    let out = run_host_with(&a, &[], Some(reg.s("password").as_bytes()), T);
    assert_device(&out, "pigz", "--password-stdin");
    // Without credentials the registry's Basic challenge is a clear error.
    a.truncate(a.len() - 3);
    let out = run_host_with(&a, &[("HOME", "/nonexistent")], None, T);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.to_lowercase().contains("auth"), "{err}");
    // Credentials on the command line are refused outright.
    let out = run_host(
        &args(
            "cat",
            &reference,
            "pigz",
            &reg.s("ca_file"),
            &["-o", "oci.password=x"],
        ),
        T,
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("never taken from the command line"));
}

#[test]
fn token_auth_with_expiring_tokens() {
    let Some(reg) = token_registry() else { return };
    let reference = reg.oci("large");
    // A proxy that answers 401 (expired token) to every third authorized request: the
    // component fetches a new token and carries on.
    let proxy = reg.proxy("expire-token", &["--every", "3", "--first", "3"]);
    let via_proxy = reference.replace(&reg.s("registry"), proxy["proxy"].as_str().unwrap());
    let out = run(
        reg,
        &args("cat", &via_proxy, "large", &reg.s("ca_file"), &["--stats"]),
    );
    assert_device(&out, "large", "token refresh");
    // And through a FUSE mount, with the 4 s token lifetime passing during the reads.
    if is_root() && Path::new("/dev/fuse").exists() {
        let m = RemoteMount::new(
            reg,
            &args("mount", &reference, "large", &reg.s("ca_file"), &[]),
        );
        std::thread::sleep(Duration::from_secs(5));
        let failures = compare_tree(&m.path(), &fixture("large").join("expected.json"));
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}

#[test]
fn platforms_layers_and_media_types() {
    let Some(reg) = basic_registry() else { return };
    let ca = reg.s("ca_file");
    let multi = reg.oci("multi");
    assert_device(
        &run(reg, &args("cat", &multi, "basic", &ca, &[])),
        "basic",
        "index, default platform",
    );
    assert_device(
        &run(
            reg,
            &args(
                "cat",
                &multi,
                "basic",
                &ca,
                &["--platform", "linux/arm64/v8"],
            ),
        ),
        "basic",
        "arm64 entry without variant",
    );
    assert_device(
        &run(
            reg,
            &args("cat", &multi, "pigz", &ca, &["--platform", "linux/arm/v7"]),
        ),
        "pigz",
        "arm/v7",
    );
    let nomedia = reg.oci("nomediatype");
    assert_device(
        &run(reg, &args("cat", &nomedia, "basic", &ca, &[])),
        "basic",
        "manifest without mediaType",
    );
    let docker = reg.oci("docker");
    assert_device(
        &run(reg, &args("cat", &docker, "basic", &ca, &[])),
        "basic",
        "docker schema 2",
    );
    let multilayer = reg.image("multilayer");
    let ml = format!("oci://{}", multilayer["reference"].as_str().unwrap());
    assert_device(
        &run(reg, &args("cat", &ml, "plain-tar", &ca, &["--layer", "1"])),
        "plain-tar",
        "--layer 1",
    );
    let pigz_digest = multilayer["layers"][2]["digest"].as_str().unwrap();
    assert_device(
        &run(
            reg,
            &args("cat", &ml, "pigz", &ca, &["--blob-digest", pigz_digest]),
        ),
        "pigz",
        "--blob-digest",
    );
    let o = format!(
        "oci.layer=0,oci.tarindex={}",
        fixture("aufs").join("meta.erofs").display()
    );
    assert_device(
        &run(reg, &args("cat", &ml, "aufs", &ca, &["-o", &o])),
        "aufs",
        "-o oci.layer",
    );
    // zstd is refused clearly; a gzip layer without a zinfo too.
    let zstd = reg.oci("zstd");
    let out = run(reg, &args("cat", &zstd, "aufs", &ca, &[]));
    assert_stderr_contains(&out, "zstd");
    let basic = reg.oci("basic");
    let mut a = args("cat", &basic, "basic", &ca, &[]);
    let z = a.iter().position(|x| x == "--zinfo").unwrap();
    a.drain(z..z + 2);
    let out = run(reg, &a);
    assert_stderr_contains(&out, "zinfo");
}

#[test]
fn plain_https_urls_with_range_requests() {
    let Some(reg) = basic_registry() else { return };
    // The registry's blob URL needs auth; the proxy's redirect target (a signed URL on a
    // blob store) does not. Fetch the blob through a plain URL: the registry's own blob
    // endpoint, with the host adding Basic auth.
    let digest = reg.image("pigz")["layer_digest"].as_str().unwrap();
    let url = format!(
        "https://{}/v2/fixtures/pigz/blobs/{digest}",
        reg.s("registry")
    );
    assert_device(
        &run(reg, &args("cat", &url, "pigz", &reg.s("ca_file"), &[])),
        "pigz",
        "https URL",
    );
    // http:// needs --insecure.
    let plain = url.replace("https://", "http://");
    let out = run(reg, &args("cat", &plain, "pigz", &reg.s("ca_file"), &[]));
    assert!(!out.status.success());
    assert_stderr_contains(&out, "insecure");
}

#[test]
fn faults_give_the_right_bytes_or_an_error_never_wrong_bytes() {
    let Some(reg) = basic_registry() else { return };
    let reference = reg.oci("basic");
    let want = sha256_hex(&expected_device("basic"));
    for fault in [
        "reset",
        "500",
        "long",
        "short",
        "long-honest",
        "short-honest",
        "truncate",
        "stall",
        "ignore-range",
        "slow",
        "redirect",
    ] {
        for every in ["2", "1"] {
            let proxy = reg.proxy(fault, &["--every", every, "--match", "/blobs/"]);
            let via = reference.replace(&reg.s("registry"), proxy["proxy"].as_str().unwrap());
            let started = Instant::now();
            let out = run(
                reg,
                &args("cat", &via, "basic", &reg.s("ca_file"), &["--stats"]),
            );
            let took = started.elapsed();
            let what = format!("fault {fault} every {every}");
            assert!(took < Duration::from_secs(150), "{what}: took {took:?}");
            if out.status.success() {
                assert_eq!(sha256_hex(&out.stdout), want, "{what}: WRONG BYTES");
            } else {
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(!err.contains("panicked"), "{what}: {err}");
                // With retries that succeed (every 2nd request faulted), every fault but a
                // too-large ignore-range must be survived.
                assert!(
                    every == "1" || fault == "ignore-range",
                    "{what}: failed although retries could succeed: {err}"
                );
                // Whatever was written before the error is the device's own bytes.
                let good = expected_device("basic");
                assert!(
                    good.starts_with(&out.stdout),
                    "{what}: wrong bytes before the error"
                );
            }
            eprintln!(
                "{what}: {}",
                if out.status.success() {
                    "right bytes"
                } else {
                    "clean error"
                }
            );
        }
    }
}

#[test]
fn hosts_outside_the_allow_list_are_refused() {
    let Some(reg) = basic_registry() else { return };
    // A server on 127.0.0.1 that redirects every request to 127.0.0.2: a blob URL that
    // is not a registry blob path, so its redirect target is not allowed.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten().take(20) {
            use std::io::{Read, Write};
            let mut stream = stream;
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.2:9/elsewhere\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    let url = format!("http://127.0.0.1:{port}/layer.tar.gz");
    let out = run(
        reg,
        &args("cat", &url, "pigz", &reg.s("ca_file"), &["--insecure"]),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("denied") || err.contains("allow"), "{err}");
}

#[test]
fn the_range_cache_serves_a_second_run() {
    let Some(reg) = basic_registry() else { return };
    let cache = TempDir::new("rangecache");
    let reference = reg.oci("pigz");
    let dir = cache.path().to_string_lossy().into_owned();
    let cat = args(
        "cat",
        &reference,
        "pigz",
        &reg.s("ca_file"),
        &["--stats", "--cache-dir", &dir],
    );
    let first = run(reg, &cat);
    assert_device(&first, "pigz", "first run");
    let second = run(reg, &cat);
    assert_device(&second, "pigz", "second run");
    let stats = String::from_utf8_lossy(&second.stderr);
    let hits: u64 = stats
        .split("range-cache hits")
        .next()
        .and_then(|s| s.rsplit(", ").next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    assert!(hits > 0, "no range-cache hits on the second run: {stats}");
}

#[test]
fn oci_mount_matches_the_kernel_view_for_every_fixture() {
    let Some(reg) = basic_registry() else { return };
    if !is_root() || !Path::new("/dev/fuse").exists() {
        return skip("oci mount", "needs root and /dev/fuse");
    }
    for dir in ALL_FIXTURES {
        let reference = reg.oci(dir);
        let m = RemoteMount::new(reg, &args("mount", &reference, dir, &reg.s("ca_file"), &[]));
        let failures = compare_tree(&m.path(), &fixture(dir).join("expected.json"));
        assert!(
            failures.is_empty(),
            "{dir} over oci://: {}",
            failures.join("\n")
        );
        eprintln!("{dir} over oci:// through FUSE: 0 failed");
    }
}

/// A mount of a remote layer, unmounted on drop.
struct RemoteMount {
    dir: TempDir,
}

impl RemoteMount {
    fn new(reg: &Registry, a: &[String]) -> RemoteMount {
        let dir = TempDir::new("rmnt");
        let mp = dir.path().join("m");
        std::fs::create_dir(&mp).unwrap();
        // mount COMPONENT BLOB MOUNTPOINT …
        let mut full = a[..3].to_vec();
        full.push(mp.to_string_lossy().into_owned());
        full.extend(a[3..].iter().cloned());
        let out = run(reg, &full);
        assert!(
            out.status.success(),
            "mount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        RemoteMount { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("m")
    }
}

impl Drop for RemoteMount {
    fn drop(&mut self) {
        let mp = self.path().to_string_lossy().into_owned();
        if !run_host(&["umount", &mp], T).status.success() {
            let _ = run_host(&["umount", "--lazy", &mp], T);
        }
    }
}

#[test]
fn a_stalled_body_is_resumed_on_another_connection() {
    let Some(reg) = basic_registry() else { return };
    let reference = reg.oci("pigz");
    // The first blob response stops after half its body and stays silent for 40 s: the
    // host's 15 s between-bytes timeout gives up on that connection and asks for the
    // rest of the range on another one; the component sees one whole answer.
    let proxy = reg.proxy(
        "stall",
        &["--match", "/blobs/", "--limit", "1", "--delay-ms", "40000"],
    );
    let via = reference.replace(&reg.s("registry"), proxy["proxy"].as_str().unwrap());
    let started = Instant::now();
    let out = run(
        reg,
        &args("cat", &via, "pigz", &reg.s("ca_file"), &["--stats"]),
    );
    let took = started.elapsed();
    assert_device(&out, "pigz", "stalled body");
    assert!(
        took < Duration::from_secs(35),
        "took {took:?}: the stall was not cut short"
    );
    assert_stderr_contains(&out, "0 retries");
    let log: Vec<serde_json::Value> = std::fs::read_to_string(proxy["log"].as_str().unwrap())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let stalled = log
        .iter()
        .find(|r| r["fault"] == "stall")
        .expect("a stalled request in the proxy log");
    let start_of = |r: &serde_json::Value| -> Option<(u64, u64)> {
        let range = r["range"].as_str()?.strip_prefix("bytes=")?;
        let (a, b) = range.split_once('-')?;
        Some((a.parse().ok()?, b.parse().ok()?))
    };
    let (a, b) = start_of(stalled).expect("the stalled request had a range");
    let sent = stalled["bytes"].as_u64().unwrap();
    let resumed = log.iter().find(|r| start_of(r) == Some((a + sent, b)));
    let resumed =
        resumed.unwrap_or_else(|| panic!("no request for bytes {}-{b}: {log:?}", a + sent));
    assert_ne!(
        resumed["conn"], stalled["conn"],
        "resumed on the stalled connection"
    );
    assert_eq!(resumed["status"], 206);
}

#[test]
fn mount_with_the_password_on_stdin() {
    let Some(reg) = basic_registry() else { return };
    if !is_root() || !Path::new("/dev/fuse").exists() {
        return skip("mount --password-stdin", "needs root and /dev/fuse");
    }
    let dir = TempDir::new("pwmnt");
    let mp = dir.path().join("m");
    std::fs::create_dir(&mp).unwrap();
    let a = args(
        "mount",
        &reg.oci("aufs"),
        "aufs",
        &reg.s("ca_file"),
        &["--username", &reg.s("username"), "--password-stdin"],
    );
    let mut full = a[..3].to_vec();
    full.push(mp.to_string_lossy().into_owned());
    full.extend(a[3..].iter().cloned());
    // HOME elsewhere: no docker config to fall back on; the password comes only from stdin.
    let out = run_host_with(
        &full,
        &[("HOME", "/nonexistent")],
        Some(reg.s("password").as_bytes()),
        T,
    );
    assert!(
        out.status.success(),
        "mount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let failures = compare_tree(&mp, &fixture("aufs").join("expected.json"));
    let _ = run_host(&["umount", &mp.to_string_lossy()], T);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
