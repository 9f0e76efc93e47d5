//! `erofs-host cat --jobs N`: parts decoded on N instances at once, written in order.
//! The output must be byte-identical to `gzip -dc` (the expected device) for every N,
//! and a part that fails must stop the output with a clear error, never write wrong bytes.

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(180);

fn cat(args: &[String], extra: &[&str]) -> std::process::Output {
    let mut all = vec!["cat".to_string()];
    all.extend(args.iter().cloned());
    all.extend(extra.iter().map(|s| s.to_string()));
    run_host(&all, T)
}

#[test]
fn every_job_count_gives_the_device_of_gzip_dc() {
    for dir in ["basic", "multimember", "pigz", "large", "plain-tar"] {
        let want = sha256_hex(&expected_device(dir));
        for jobs in 1..=4 {
            let out = cat(&device_args(dir), &["--jobs", &jobs.to_string()]);
            assert!(
                out.status.success(),
                "{dir} --jobs {jobs}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(sha256_hex(&out.stdout), want, "{dir} --jobs {jobs}");
        }
    }
}

/// Ranges that start and end inside parts, and one inside a single part.
#[test]
fn ranges_across_parts_match() {
    let want = expected_device("large");
    let meta = std::fs::metadata(fixture("large").join("meta.erofs"))
        .unwrap()
        .len() as usize;
    for (offset, length) in [
        (1, want.len() - 2),
        (meta + 5_000_000, 17_000_001),
        (meta + 100, 1000),
        (want.len() - 3, 10),
    ] {
        let out = cat(
            &device_args("large"),
            &[
                "--jobs",
                "3",
                "--offset",
                &offset.to_string(),
                "--length",
                &length.to_string(),
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let end = (offset + length).min(want.len());
        assert_eq!(
            sha256_hex(&out.stdout),
            sha256_hex(&want[offset..end]),
            "--offset {offset} --length {length}"
        );
    }
}

/// Deflate data zeroed in the middle of the blob decodes to other bytes (no inflate
/// error): the decode of that part then ends in another state than the next checkpoint,
/// the boundary's proof fails, the run exits non-zero naming it, and what was written is
/// a prefix of the right device.
#[test]
fn a_failing_part_stops_the_output_with_a_clear_error() {
    let tmp = TempDir::new("parallel-cat");
    let f = fixture("large");
    let mut blob = std::fs::read(f.join("layer.tar.gz")).unwrap();
    let at = blob.len() * 3 / 5;
    blob[at..at + 4096].fill(0);
    let bad = tmp.path().join("layer.tar.gz");
    std::fs::write(&bad, &blob).unwrap();
    let mut args = device_args("large");
    *args.last_mut().unwrap() = bad.to_string_lossy().into_owned();
    let want = expected_device("large");
    // One instance reads straight through, so only the member's CRC-32 at its end shows
    // the damage, after the bytes before it went out: it must fail, at least.
    let out = cat(&args, &["--jobs", "1", "--header-samples", "0"]);
    assert!(
        !out.status.success(),
        "--jobs 1: a corrupt blob was read whole"
    );
    for jobs in ["2", "4"] {
        let out = cat(&args, &["--jobs", jobs, "--header-samples", "0"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "--jobs {jobs}: a corrupt blob was read whole"
        );
        assert!(
            out.stdout.len() < want.len() && out.stdout[..] == want[..out.stdout.len()],
            "--jobs {jobs}: the output is not a prefix of the right device ({} bytes)",
            out.stdout.len()
        );
        // Either the host's boundary check or, first, the component's own proof of the
        // part's checkpoint (each instance proves it by decoding up to it; issue 10 item 1).
        assert!(
            stderr.contains("does not continue the decode before it")
                || stderr.contains("zinfo: checkpoint"),
            "--jobs {jobs}: {stderr}"
        );
    }
}

/// A change made to a zinfo file.
type Spoil = Box<dyn Fn(&mut Vec<u8>)>;

/// A zinfo whose checkpoint 2 lies (its window XORed, or its `in` or `bits` changed):
/// the part that starts there decodes other bytes than the decode through it (or none),
/// so the run fails and nothing from the part before it on is written. Never wrong bytes.
#[test]
fn a_lying_checkpoint_is_caught_at_its_boundary() {
    const RECORD: usize = 17 + 32768;
    let record2 = 12 + 2 * RECORD;
    let f = fixture("large");
    let zinfo = std::fs::read(f.join("layer.zinfo")).unwrap();
    let want = expected_device("large");
    let tmp = TempDir::new("parallel-cat-zinfo");
    let cases: [(&str, Spoil); 3] = [
        (
            "window",
            Box::new(move |z: &mut Vec<u8>| {
                for b in &mut z[record2 + 17..record2 + RECORD] {
                    *b ^= 0x5a;
                }
            }),
        ),
        ("in", Box::new(move |z: &mut Vec<u8>| z[record2] ^= 0x01)),
        (
            "bits",
            Box::new(move |z: &mut Vec<u8>| z[record2 + 16] = (z[record2 + 16] + 1) % 8),
        ),
    ];
    for (field, spoil) in cases {
        let mut bad = zinfo.clone();
        spoil(&mut bad);
        let path = tmp.path().join(format!("{field}.zinfo"));
        std::fs::write(&path, &bad).unwrap();
        let mut args = device_args("large");
        let z = args
            .iter()
            .position(|a| a.ends_with("layer.zinfo"))
            .unwrap();
        args[z] = path.to_string_lossy().into_owned();
        let out = cat(&args, &["--jobs", "2", "--header-samples", "0"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if field == "window" && out.status.success() {
            // The data after this checkpoint never reaches back into its window (no
            // match spans it): a wrong window changes no byte, and what came out must
            // be the whole device, exactly.
            assert!(out.stdout == want, "{field}: success with wrong bytes");
            continue;
        }
        assert!(!out.status.success(), "{field}: read whole: {stderr}");
        assert!(
            out.stdout.len() <= want.len() && out.stdout[..] == want[..out.stdout.len()],
            "{field}: wrong bytes written ({} bytes); {stderr}",
            out.stdout.len()
        );
    }
}

#[test]
fn help_states_the_total_memory_cap() {
    let out = run_host(&["cat", "--help"], T);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("--jobs"), "{text}");
    assert!(text.contains("N × --memory-limit"), "{text}");
}
