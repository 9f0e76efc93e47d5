//! Issue 16: the tar index is bound to its blob by the tar headers. A META of another
//! layer is refused (cat, verify, mount); a META that points one file at another file's
//! bytes fails that file with EIO and nothing else; every right pair of the fixtures
//! passes, the deep check included, with no false alarm.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(180);

/// `dir`'s device arguments with the metadata image replaced by `meta`.
fn with_meta(dir: &str, meta: &Path) -> Vec<String> {
    let mut args = device_args(dir);
    let i = args.iter().position(|a| a.ends_with("meta.erofs")).unwrap();
    args[i] = meta.to_string_lossy().into_owned();
    args
}

fn host(cmd: &str, args: &[String], extra: &[&str]) -> Output {
    let mut full = vec![cmd.to_string()];
    full.extend(args.iter().cloned());
    full.extend(extra.iter().map(|s| s.to_string()));
    run_host(&full, T)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// basic's META with large's blob and zinfo: the mixed-up user.
fn mixed_up() -> Vec<String> {
    with_meta("large", &fixture("basic").join("meta.erofs"))
}

fn assert_mismatch(out: &Output, what: &str) {
    assert!(!out.status.success(), "{what} succeeded");
    let e = stderr(out);
    assert!(
        e.contains("tarindex does not match the blob: ") && e.contains(" at tar offset "),
        "{what}: {e}"
    );
}

#[test]
fn a_meta_of_another_layer_is_refused_by_cat_and_verify() {
    let args = mixed_up();
    let out = host("cat", &args, &[]);
    assert_mismatch(&out, "cat");
    assert!(out.stdout.is_empty(), "cat wrote bytes before failing");
    assert_mismatch(&host("verify", &args, &[]), "verify");
    assert_mismatch(&host("verify", &args, &["--deep"]), "verify --deep");
    // Without the open-time sample the device is raw bytes (cat does not read files),
    // but the deep check still refuses it.
    assert!(
        host("cat", &args, &["--header-samples", "0", "--length", "1"])
            .status
            .success()
    );
    assert_mismatch(
        &host("verify", &args, &["--deep", "--header-samples", "0"]),
        "verify --deep without the sample",
    );
}

#[test]
fn every_right_pair_passes_the_sample_and_the_deep_check() {
    for dir in ALL_FIXTURES {
        let args = device_args(dir);
        let out = host("cat", &args, &["--stats", "--length", "1"]);
        assert!(out.status.success(), "{dir}: {}", stderr(&out));
        let e = stderr(&out);
        let line = e
            .lines()
            .find(|l| l.starts_with("header check on open: "))
            .unwrap_or_else(|| panic!("{dir}: no header-check line in {e}"));
        eprintln!("{dir}: {line}");
        let files: u32 = line
            .trim_start_matches("header check on open: ")
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!((2..=8).contains(&files), "{dir}: {line}");
        assert!(line.ends_with(", 0 remote requests"), "{dir}: {line}");

        let out = host("verify", &args, &["--deep"]);
        assert!(out.status.success(), "{dir}: {}", stderr(&out));
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.contains("ok: the tar headers of all "),
            "{dir}: {said}"
        );
    }
}

/// The tar block where each regular file's data starts, by GNU tar's own listing
/// (`-R`: the block of each member's header; none of `large`'s names needs an
/// extension header, so the data is the next block).
fn data_blocks(dir: &str) -> Vec<(String, u64, u32)> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "gzip -dc '{}' | tar -tvR",
            fixture(dir).join("layer.tar.gz").display()
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "tar -tvR failed");
    let mut files = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 || !f[2].starts_with('-') {
            continue;
        }
        let block: u32 = f[1].trim_end_matches(':').parse().unwrap();
        let size: u64 = f[4].parse().unwrap();
        files.push((f[7].trim_start_matches("./").to_string(), size, block + 1));
    }
    files
}

/// large's META with the chunk index of `victim` pointed at `donor`'s data (two files
/// of the same size), written to a temporary directory.
fn rewritten_meta() -> (TempDir, PathBuf, String, String) {
    let files = data_blocks("large");
    let (victim, donor) = files
        .iter()
        .enumerate()
        .find_map(|(i, a)| {
            files[i + 1..]
                .iter()
                .find(|b| b.1 == a.1 && a.1 > 0)
                .map(|b| (a.clone(), b.clone()))
        })
        .expect("two files of the same size in large");
    let mut meta = std::fs::read(fixture("large").join("meta.erofs")).unwrap();
    // An 8-byte chunk index entry: startblk_hi 0, device_id 1 (the tar), startblk_lo.
    let mut entry = vec![0u8, 0, 1, 0];
    entry.extend_from_slice(&victim.2.to_le_bytes());
    let at = meta
        .windows(8)
        .position(|w| w == entry.as_slice())
        .expect("the victim's chunk index entry");
    meta[at + 4..at + 8].copy_from_slice(&donor.2.to_le_bytes());
    fix_superblock_checksum(&mut meta);
    let tmp = TempDir::new("rewritten");
    let path = tmp.path().join("meta.erofs");
    std::fs::write(&path, &meta).unwrap();
    (tmp, path, victim.0, donor.0)
}

#[test]
fn the_deep_check_names_a_file_pointed_at_another_files_bytes() {
    let (_tmp, meta, victim, _donor) = rewritten_meta();
    let args = with_meta("large", &meta);
    // The metadata itself is well-formed: only the tar headers tell.
    let plain = host("verify", &args, &["--header-samples", "0"]);
    assert!(plain.status.success(), "{}", stderr(&plain));
    let out = host("verify", &args, &["--deep"]);
    assert_mismatch(&out, "verify --deep");
    assert!(stderr(&out).contains(&victim), "{}", stderr(&out));
}

fn fuse_available() -> bool {
    common::fuse_available("binding FUSE tests")
}

#[test]
fn a_fuse_mount_of_a_mixed_up_pair_refuses_or_never_serves_wrong_bytes() {
    if !fuse_available() {
        return;
    }
    let args = mixed_up();
    let e = match HostMount::new(&args, &[]) {
        Ok(_) => panic!("mounted basic's META over large's blob"),
        Err(e) => e,
    };
    assert!(e.contains("tarindex does not match the blob: "), "{e}");

    // Without the open-time sample: every file whose bytes would be wrong fails.
    let m = HostMount::new(&args, &["--header-samples", "0"]).unwrap();
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("basic").join("expected.json")).unwrap())
            .unwrap();
    let (mut failed, mut right) = (0, 0);
    for entry in expected["entries"].as_array().unwrap() {
        let (Some(want), Some(size)) = (entry["sha256"].as_str(), entry["size"].as_u64()) else {
            continue;
        };
        if size == 0 {
            continue;
        }
        let path = m.path().join(entry["path"].as_str().unwrap());
        match std::fs::read(&path) {
            Ok(bytes) => {
                assert_eq!(sha256_hex(&bytes), want, "{}: wrong bytes", path.display());
                right += 1;
            }
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EIO), "{}: {e}", path.display());
                failed += 1;
            }
        }
    }
    eprintln!("mixed-up pair: {failed} files EIO, {right} right");
    assert!(failed > 300, "{failed} failed, {right} right");
}

#[test]
fn a_file_pointed_at_another_files_bytes_is_eio_and_the_rest_reads() {
    if !fuse_available() {
        return;
    }
    let (_tmp, meta, victim, donor) = rewritten_meta();
    let args = with_meta("large", &meta);
    let m = HostMount::new(&args, &["--header-samples", "0"]).unwrap();
    let mp = m.path();
    let e = std::fs::read(mp.join(&victim)).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{victim}: {e}");
    // Again (the answer is remembered), and its metadata is still there.
    let e = std::fs::read(mp.join(&victim)).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{victim}: {e}");
    assert!(std::fs::metadata(mp.join(&victim)).unwrap().size() > 0);
    // Every other file reads right, the donor included.
    let failures = compare_tree(&mp, &fixture("large").join("expected.json"));
    assert!(
        failures.iter().all(|f| f.contains(&victim)),
        "other files failed: {failures:#?}"
    );
    assert!(!failures.is_empty(), "the victim's read did not show");
    assert!(std::fs::read(mp.join(&donor)).is_ok());
    drop(m);

    // With the default sample the mount either refuses or fails that file the same way.
    match HostMount::new(&args, &[]) {
        Err(e) => assert!(e.contains("tarindex does not match the blob"), "{e}"),
        Ok(m) => {
            let e = std::fs::read(m.path().join(&victim)).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EIO));
        }
    }
}

#[test]
fn loop_with_verify_deep_refuses_before_the_kernel_sees_the_image() {
    if !fuse_available() {
        return;
    }
    let (_tmp, meta, victim, _) = rewritten_meta();
    let args = with_meta("large", &meta);
    let e = match HostMount::new(&args, &["--backend", "loop", "--verify", "deep"]) {
        Ok(_) => panic!("loop-mounted a rewritten index with --verify deep"),
        Err(e) => e,
    };
    assert!(
        e.contains("tarindex does not match the blob") && e.contains(&victim),
        "{e}"
    );
    // The right pair passes the same check and mounts.
    let m = HostMount::new(
        &device_args("large"),
        &["--backend", "loop", "--verify", "deep"],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(compare_tree(&m.path(), &fixture("large").join("expected.json")).is_empty());
}
