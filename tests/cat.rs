//! `erofs-host cat` against the reference fixtures: the whole device, and the edges.

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(120);

#[test]
fn whole_device_sha256_matches_for_every_fixture() {
    for dir in ALL_FIXTURES {
        let out = run_host(&[&["cat".to_string()][..], &device_args(dir)].concat(), T);
        assert!(
            out.status.success(),
            "{dir}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let want = expected_device(dir);
        assert_eq!(out.stdout.len(), want.len(), "{dir}: device size");
        assert_eq!(
            sha256_hex(&out.stdout),
            sha256_hex(&want),
            "{dir}: device sha256"
        );
        // The tar part is what the fixture's expected.json recorded from the kernel run.
        let expected: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixture(dir).join("expected.json")).unwrap())
                .unwrap();
        let meta = expected["meta_size"].as_u64().unwrap() as usize;
        assert_eq!(
            sha256_hex(&out.stdout[meta..]),
            expected["tar_sha256"].as_str().unwrap(),
            "{dir}: tar sha256"
        );
    }
}

#[test]
fn v1_zinfo_gives_the_same_device() {
    let mut args = device_args("basic");
    let z = args
        .iter()
        .position(|a| a.ends_with("layer.zinfo"))
        .unwrap();
    args[z] = fixture("basic")
        .join("layer.v1.zinfo")
        .to_string_lossy()
        .into_owned();
    let out = run_host(&[&["cat".to_string()][..], &args].concat(), T);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        sha256_hex(&out.stdout),
        sha256_hex(&expected_device("basic"))
    );
}

/// Offsets at the edges: 0, the meta end ±1, every checkpoint ±1, member boundaries,
/// the last byte, and past the end.
#[test]
fn edge_reads_match_the_uncompressed_tar() {
    for dir in ["basic", "multimember", "large"] {
        let want = expected_device(dir);
        let meta = std::fs::metadata(fixture(dir).join("meta.erofs"))
            .unwrap()
            .len();
        let size = want.len() as u64;
        let mut points = vec![
            0,
            meta - 1,
            meta,
            meta + 1,
            size - 1,
            size,
            size + 1,
            size + 4096,
        ];
        let z = std::fs::read(fixture(dir).join("layer.zinfo")).unwrap();
        let have = u32::from_le_bytes(z[0..4].try_into().unwrap()) as usize;
        for i in 0..have {
            let at = 12 + i * 32785;
            // Checkpoint outs; in multimember every checkpoint is also a member boundary.
            let out = u64::from_le_bytes(z[at + 8..at + 16].try_into().unwrap());
            points.extend([meta + out.saturating_sub(1), meta + out, meta + out + 1]);
        }
        for p in points {
            let len = 33_000u64;
            let args = [
                &["cat".to_string()][..],
                &device_args(dir),
                &[
                    "--offset".into(),
                    p.to_string(),
                    "--length".into(),
                    len.to_string(),
                ],
            ]
            .concat();
            let out = run_host(&args, T);
            assert!(
                out.status.success(),
                "{dir} @{p}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let lo = (p as usize).min(want.len());
            let hi = (p + len).min(size) as usize;
            assert!(
                out.stdout == want[lo..hi.max(lo)],
                "{dir}: bytes at offset {p} differ"
            );
        }
    }
}

#[test]
fn help_is_clear() {
    for cmd in [&["--help"][..], &["cat", "--help"], &["bench", "--help"]] {
        let out = run_host(cmd, T);
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage"), "{text}");
    }
}

#[test]
fn bench_json_has_the_fields() {
    let args = [
        &["bench".to_string()][..],
        &device_args("basic"),
        &[
            "--pattern".into(),
            "random".into(),
            "--io-size".into(),
            "4096".into(),
            "--count".into(),
            "50".into(),
            "--json".into(),
        ],
    ]
    .concat();
    let out = run_host(&args, T);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for k in ["mb_per_s", "reads_per_s", "p50_us", "p99_us"] {
        assert!(v[k].as_f64().is_some(), "{k} missing in {v}");
    }
}
