//! Interoperability with real NBD clients installed on the machine: nbdinfo and nbdcopy
//! (libnbd-bin) and qemu-img (qemu-utils). A missing tool prints a loud SKIPPED line.

mod common;

use std::fs;
use std::time::Duration;

use common::*;
use erofs_nbd::Listen;

/// A few MiB, deliberately not a multiple of 512.
const SIZE: usize = 6 * 1024 * 1024 + 2 * 4096 + 321;
const LIMIT: Duration = Duration::from_secs(120);

fn unix_server(dir: &TempDir, poison: Option<(u64, u64)>) -> TestServer {
    TestServer::start(
        Listen::Unix(dir.path("nbd.sock")),
        pseudo_random(SIZE, 11),
        poison,
    )
}

/// Pulls `"key": value` out of nbdinfo's JSON without a JSON library.
fn json_field<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let at = json.find(&format!("\"{key}\""))?;
    let rest = json[at + key.len() + 2..].trim_start().strip_prefix(':')?;
    let rest = rest.trim_start();
    let end = rest.find([',', '\n', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim())
}

fn check_nbdinfo_json(server: &TestServer, dir: &TempDir) {
    let run = run_tool(&dir.0, "nbdinfo", &["--json", &server.uri], LIMIT);
    assert!(run.ok(), "nbdinfo failed: {}", run.stderr);
    let size = SIZE.to_string();
    let max = MAX_REQUEST.to_string();
    let expected = [
        ("export-size", size.as_str()),
        ("is_read_only", "true"),
        ("export-name", "\"layer0\""),
        ("can_multi_conn", "true"),
        ("can_flush", "true"),
        ("can_trim", "false"),
        ("protocol", "\"newstyle-fixed\""),
        ("block_size_maximum", max.as_str()),
        ("block_size_minimum", "1"),
        ("block_size_preferred", "4096"),
        ("structured", "true"),
    ];
    for (field, want) in expected {
        assert_eq!(
            json_field(&run.stdout, field),
            Some(want),
            "{field}: {}",
            run.stdout
        );
    }
}

#[test]
fn nbdinfo_json_over_tcp_and_unix() {
    if !have_tool("nbdinfo") {
        return;
    }
    let dir = TempDir::new("nbdinfo");
    let tcp = TestServer::start(
        Listen::Tcp("127.0.0.1:0".parse().expect("addr")),
        pseudo_random(SIZE, 11),
        None,
    );
    check_nbdinfo_json(&tcp, &dir);
    let unix = unix_server(&dir, None);
    check_nbdinfo_json(&unix, &dir);

    // The default export "" works too and reports the canonical name.
    let default_uri = format!("nbd://{}", tcp.addr);
    let run = run_tool(&dir.0, "nbdinfo", &["--json", &default_uri], LIMIT);
    assert!(run.ok(), "nbdinfo default export: {}", run.stderr);
    assert_eq!(
        json_field(&run.stdout, "export-size"),
        Some(SIZE.to_string().as_str())
    );

    // An unknown export is refused.
    let bad_uri = format!("nbd://{}/nope", tcp.addr);
    let run = run_tool(&dir.0, "nbdinfo", &["--json", &bad_uri], LIMIT);
    assert!(!run.ok(), "nbdinfo should fail on an unknown export");
    assert_healthy(&tcp);
}

#[test]
fn nbdinfo_list() {
    if !have_tool("nbdinfo") {
        return;
    }
    let dir = TempDir::new("nbdlist");
    let server = TestServer::tcp(SIZE);
    let uri = format!("nbd://{}", server.addr);
    let run = run_tool(&dir.0, "nbdinfo", &["--list", "--json", &uri], LIMIT);
    assert!(run.ok(), "nbdinfo --list failed: {}", run.stderr);
    assert_eq!(
        run.stdout.matches("\"export-name\"").count(),
        1,
        "{}",
        run.stdout
    );
    assert_eq!(
        json_field(&run.stdout, "export-name"),
        Some("\"layer0\""),
        "{}",
        run.stdout
    );
    assert_eq!(
        json_field(&run.stdout, "description"),
        Some("\"pseudo-random test export\""),
        "{}",
        run.stdout
    );
    let run = run_tool(&dir.0, "nbdinfo", &["--list", &uri], LIMIT);
    assert!(run.ok(), "nbdinfo --list (text) failed: {}", run.stderr);
    assert!(run.stdout.contains("layer0"), "{}", run.stdout);
}

fn copy_and_compare(dir: &TempDir, server: &TestServer, tool: &str, out_name: &str) {
    let out = dir.path(out_name);
    let out_s = out.to_string_lossy().into_owned();
    let run = match tool {
        "nbdcopy" => run_tool(&dir.0, "nbdcopy", &[&server.uri, &out_s], LIMIT),
        _ => run_tool(
            &dir.0,
            "qemu-img",
            &["convert", "-f", "raw", "-O", "raw", &server.uri, &out_s],
            LIMIT,
        ),
    };
    assert!(run.ok(), "{tool} failed: {} {}", run.stdout, run.stderr);
    let mut got = fs::read(&out).expect("read copy");
    if tool == "qemu-img" && got.len() != server.data.len() {
        // qemu creates raw files in whole 512-byte sectors: the export is followed by
        // zero padding up to the next multiple of 512, which is not export data.
        let padded = server.data.len().div_ceil(512) * 512;
        assert_eq!(got.len(), padded, "{tool}: size");
        assert!(got[server.data.len()..].iter().all(|&b| b == 0));
        got.truncate(server.data.len());
    }
    assert_eq!(got.len(), server.data.len(), "{tool}: size");
    assert!(got == *server.data, "{tool}: bytes differ");
}

#[test]
fn nbdcopy_gives_exact_bytes() {
    if !have_tool("nbdcopy") {
        return;
    }
    let dir = TempDir::new("nbdcopy");
    let tcp = TestServer::tcp(SIZE);
    copy_and_compare(&dir, &tcp, "nbdcopy", "tcp.img");
    let unix = unix_server(&dir, None);
    copy_and_compare(&dir, &unix, "nbdcopy", "unix.img");
    assert_healthy(&tcp);
}

#[test]
fn qemu_img_convert_gives_exact_bytes() {
    if !have_tool("qemu-img") {
        return;
    }
    let dir = TempDir::new("qemu");
    let tcp = TestServer::tcp(SIZE);
    copy_and_compare(&dir, &tcp, "qemu-img", "tcp.img");
    let unix = unix_server(&dir, None);
    copy_and_compare(&dir, &unix, "qemu-img", "unix.img");
    assert_healthy(&tcp);
}

#[test]
fn four_concurrent_nbdcopy_clients() {
    if !have_tool("nbdcopy") {
        return;
    }
    let dir = TempDir::new("nbdcopy4");
    let server = TestServer::tcp(SIZE);
    let outs: Vec<String> = (0..4)
        .map(|i| {
            dir.path(&format!("c{i}.img"))
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    // Start all four before waiting for any, so they really overlap.
    let mut children: Vec<ChildGuard> = outs
        .iter()
        .map(|out| {
            let child = std::process::Command::new("nbdcopy")
                .args([server.uri.as_str(), out.as_str()])
                .stdin(std::process::Stdio::null())
                .spawn()
                .expect("spawn nbdcopy");
            ChildGuard(Some(child))
        })
        .collect();
    for (i, c) in children.iter_mut().enumerate() {
        let status = c.wait_timeout(LIMIT);
        assert!(
            status.is_some_and(|s| s.success()),
            "nbdcopy #{i}: {status:?}"
        );
    }
    for out in &outs {
        let got = fs::read(out).expect("read copy");
        assert!(got == *server.data, "{out}: bytes differ");
    }
    assert_healthy(&server);
}

/// The reference server turned read errors into zeros. Here a failing read must make
/// the copy fail, never produce a silently wrong image.
#[test]
fn read_errors_fail_the_copy() {
    let poison = Some((3 * 1024 * 1024, 3 * 1024 * 1024 + 512));
    let dir = TempDir::new("poison");
    let server = unix_server(&dir, poison);
    let out = dir.path("out.img");
    let out_s = out.to_string_lossy().into_owned();
    let mut ran = 0;
    if have_tool("nbdcopy") {
        let run = run_tool(&dir.0, "nbdcopy", &[&server.uri, &out_s], LIMIT);
        assert!(!run.ok(), "nbdcopy must report the read error");
        eprintln!("nbdcopy on a failing export said: {}", run.stderr.trim());
        assert!(run.status.is_some(), "nbdcopy hung");
        ran += 1;
    }
    if have_tool("qemu-img") {
        let run = run_tool(
            &dir.0,
            "qemu-img",
            &["convert", "-f", "raw", "-O", "raw", &server.uri, &out_s],
            LIMIT,
        );
        assert!(!run.ok(), "qemu-img must report the read error");
        eprintln!("qemu-img on a failing export said: {}", run.stderr.trim());
        assert!(run.status.is_some(), "qemu-img hung");
        ran += 1;
    }
    if ran > 0 {
        assert_healthy(&server);
    }
}
