//! Crafted bad inputs: each must give a clear error that names the file and field, and
//! must never panic, hang or return wrong bytes.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;

const RECORD: usize = 32785;

/// A named way to spoil the inputs, and the words its error must contain.
type Case = (&'static str, Box<dyn Fn(&mut Inputs)>, &'static str);

struct Inputs {
    meta: Vec<u8>,
    blob: Vec<u8>,
    zinfo: Option<Vec<u8>>,
}

fn inputs(dir: &str) -> Inputs {
    let f = fixture(dir);
    let blob = if dir == "plain-tar" {
        "layer.tar"
    } else {
        "layer.tar.gz"
    };
    Inputs {
        meta: std::fs::read(f.join("meta.erofs")).unwrap(),
        blob: std::fs::read(f.join(blob)).unwrap(),
        zinfo: (dir != "plain-tar").then(|| std::fs::read(f.join("layer.zinfo")).unwrap()),
    }
}

/// What `cat` may have written before it failed.
enum Written<'a> {
    Nothing,
    /// A prefix of the good device.
    PrefixOf(&'a [u8]),
    /// Anything: gzip can only check its CRC at the end of a member, so a corruption that
    /// still inflates (inside a stored block) is found after earlier bytes went out.
    Unchecked,
}

/// Run `cat` on the inputs; it must fail with `expect` in its message, without a panic.
fn expect_error(case: &str, i: &Inputs, expect: &str, written: Written) {
    let tmp = TempDir::new("bad");
    let write = |name: &str, bytes: &[u8]| -> PathBuf {
        let p = tmp.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let meta = write("meta.erofs", &i.meta);
    let blob = write("blob", &i.blob);
    let mut args = vec!["cat".into(), component().to_string_lossy().into_owned()];
    args.extend(["--tarindex".into(), meta.to_string_lossy().into_owned()]);
    if let Some(z) = &i.zinfo {
        args.extend([
            "--zinfo".into(),
            write("layer.zinfo", z).to_string_lossy().into_owned(),
        ]);
    }
    args.push(blob.to_string_lossy().into_owned());
    let out = run_host(&args, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{case}: succeeded but should fail");
    assert!(!stderr.contains("panicked"), "{case}: panicked: {stderr}");
    // Every trap message says one of these (sandbox/trap.rs).
    for trap in ["trapped", "ran out of memory", "was interrupted"] {
        assert!(
            !stderr.contains(trap),
            "{case}: the component trapped instead of refusing: {stderr}"
        );
    }
    assert!(
        stderr.contains(expect),
        "{case}: error does not mention `{expect}`: {stderr}"
    );
    match written {
        Written::PrefixOf(good) => assert!(
            good.starts_with(&out.stdout),
            "{case}: wrote bytes that are not the device's"
        ),
        Written::Nothing => assert!(
            out.stdout.is_empty(),
            "{case}: wrote {} bytes before failing",
            out.stdout.len()
        ),
        Written::Unchecked => {}
    }
}

fn set_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn set_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
fn zinfo_mut(i: &mut Inputs) -> &mut Vec<u8> {
    i.zinfo.as_mut().unwrap()
}

#[test]
fn zinfo_defects() {
    let cases: Vec<Case> = vec![
        (
            "truncated zinfo",
            Box::new(|i| {
                let z = zinfo_mut(i);
                z.truncate(z.len() - 1000);
            }),
            "zinfo: field `have`",
        ),
        (
            "zinfo shorter than its header",
            Box::new(|i| zinfo_mut(i).truncate(7)),
            "12-byte header",
        ),
        ("empty zinfo", Box::new(|i| zinfo_mut(i).clear()), "zinfo"),
        (
            "have = 0",
            Box::new(|i| set_u32(zinfo_mut(i), 0, 0)),
            "`have` is 0",
        ),
        (
            "have = 0xFFFFFFFF",
            Box::new(|i| set_u32(zinfo_mut(i), 0, u32::MAX)),
            "`have` is 4294967295",
        ),
        (
            "have one too many (reads as v1)",
            Box::new(|i| {
                let z = zinfo_mut(i);
                let h = u32::from_le_bytes(z[0..4].try_into().unwrap());
                set_u32(z, 0, h + 1);
            }),
            "checkpoint 1: field `out`",
        ),
        (
            "have one too few",
            Box::new(|i| {
                let z = zinfo_mut(i);
                let h = u32::from_le_bytes(z[0..4].try_into().unwrap());
                set_u32(z, 0, h - 1);
            }),
            "needs a file of",
        ),
        (
            "span_size = 0",
            Box::new(|i| set_u64(zinfo_mut(i), 4, 0)),
            "`span_size` is 0",
        ),
        (
            "bits = 9",
            Box::new(|i| zinfo_mut(i)[12 + RECORD + 16] = 9),
            "checkpoint 1: field `bits` is 9",
        ),
        (
            "first checkpoint not at 0",
            Box::new(|i| set_u64(zinfo_mut(i), 12 + 8, 5)),
            "checkpoint 0: field `out`",
        ),
        (
            "out not increasing",
            Box::new(|i| {
                let z = zinfo_mut(i);
                let o = u64::from_le_bytes(z[12 + RECORD + 8..][..8].try_into().unwrap());
                set_u64(z, 12 + 2 * RECORD + 8, o);
            }),
            "checkpoint 2: field `out`",
        ),
        (
            "in not increasing",
            Box::new(|i| set_u64(zinfo_mut(i), 12 + 2 * RECORD, 11)),
            "checkpoint 2: field `in`",
        ),
        (
            "in inside the gzip header",
            Box::new(|i| set_u64(zinfo_mut(i), 12, 3)),
            "checkpoint 0: field `in` is 3",
        ),
        (
            "in past the blob",
            Box::new(|i| set_u64(zinfo_mut(i), 12 + RECORD, 1 << 40)),
            "not inside the",
        ),
    ];
    for (case, tamper, expect) in cases {
        let mut i = inputs("basic");
        tamper(&mut i);
        expect_error(case, &i, expect, Written::Nothing);
    }
}

#[test]
fn gzip_defects() {
    let good_basic = expected_device("basic");
    // The blob cut inside the last member: found when measuring the tar size at open.
    let mut i = inputs("basic");
    let len = i.blob.len();
    i.blob.truncate(len - 5000);
    expect_error(
        "blob truncated mid-member",
        &i,
        "blob ends at offset",
        Written::Nothing,
    );

    // Deflate garbage inside a compressed block: found when a read reaches it, and
    // nothing wrong is written before.
    let mut i = inputs("basic");
    for b in &mut i.blob[2_000_000..2_000_400] {
        *b = 0;
    }
    expect_error(
        "corrupt deflate data",
        &i,
        "corrupt deflate data",
        Written::PrefixOf(&good_basic),
    );

    // Zeros inside a stored block still inflate: the member's CRC-32 catches them when
    // the whole member has been decoded from its start, as `cat` does.
    let mut i = inputs("basic");
    for b in &mut i.blob[6_000_000..6_000_400] {
        *b = 0;
    }
    expect_error("corrupt stored block", &i, "CRC32 is", Written::Unchecked);

    // Garbage after the last checkpoint: found by the time the end of the stream is
    // read (at open if it breaks the deflate stream, else by the member's CRC-32). Here
    // it still inflates, and the open-time tar header check (issue 16), which reads the
    // last file's header in that tail from the last (unproven) checkpoint, finds the
    // damaged bytes first. A failure there is confirmed on proven bytes (issue 10 item 1),
    // decoding the member from its start: its CRC-32 names the real fault, the blob.
    let mut i = inputs("large");
    let len = i.blob.len();
    for b in &mut i.blob[len - 3000..len - 2000] {
        *b ^= 0x5a;
    }
    expect_error("corrupt data in the tail", &i, "CRC32 is", Written::Nothing);

    // A single-member fixture whose only checkpoint is 0: the whole member is decoded
    // from its start when measuring, so the trailer's CRC and ISIZE are checked.
    let mut i = inputs("pigz");
    let len = i.blob.len();
    i.blob[len - 8] ^= 1;
    expect_error("CRC mismatch", &i, "CRC32 is", Written::Nothing);
    let mut i = inputs("pigz");
    let len = i.blob.len();
    i.blob[len - 1] ^= 1;
    expect_error("ISIZE mismatch", &i, "ISIZE", Written::Nothing);

    // Bytes after the last member that are not another member.
    let mut i = inputs("pigz");
    i.blob.extend_from_slice(b"trailing garbage");
    expect_error("trailing garbage", &i, "no gzip magic", Written::Nothing);

    // A gzip blob given without its zinfo.
    let mut i = inputs("basic");
    i.zinfo = None;
    expect_error(
        "gzip blob without zinfo",
        &i,
        "no zinfo was given",
        Written::Nothing,
    );

    // The zinfo of another layer.
    let mut i = inputs("pigz");
    i.zinfo = Some(std::fs::read(fixture("basic").join("layer.zinfo")).unwrap());
    expect_error("zinfo of another layer", &i, "zinfo", Written::Nothing);

    // An empty blob.
    let mut i = inputs("basic");
    i.blob.clear();
    expect_error(
        "empty blob",
        &i,
        "not inside the 0-byte blob",
        Written::Nothing,
    );
}

#[test]
fn metadata_defects() {
    let cases: Vec<Case> = vec![
        (
            "bad superblock magic",
            Box::new(|i| i.meta[1024] ^= 0xff),
            "corrupt image: meta: bad superblock magic",
        ),
        (
            "meta size not a multiple of 512",
            Box::new(|i| i.meta.extend([0u8; 100])),
            "not a multiple of the 512-byte block size",
        ),
        (
            "meta one block longer",
            Box::new(|i| i.meta.extend([0u8; 512])),
            "field `blocks`",
        ),
        (
            "meta too small",
            Box::new(|i| i.meta.truncate(512)),
            "has no superblock",
        ),
        (
            "blkszbits 12",
            Box::new(|i| i.meta[1024 + 12] = 12),
            // 4 KiB blocks: the superblock's block count no longer fits the file.
            "bytes of metadata but the device has",
        ),
        (
            "no device table",
            Box::new(|i| i.meta[1024 + 80] &= !0x08),
            "no device table",
        ),
        (
            "uniaddr mismatch",
            Box::new(|i| {
                let at =
                    u16::from_le_bytes([i.meta[1024 + 88], i.meta[1024 + 89]]) as usize * 128 + 68;
                i.meta[at] ^= 1;
            }),
            "uniaddr",
        ),
        (
            "device table outside the image",
            Box::new(|i| {
                i.meta[1024 + 88] = 0xff;
                i.meta[1024 + 89] = 0xff;
            }),
            "device table past end of metadata",
        ),
    ];
    for (case, tamper, expect) in cases {
        let mut i = inputs("basic");
        tamper(&mut i);
        // Keep the superblock checksum right, so the defect under test is the one found.
        if i.meta.len() >= 1536 {
            fix_superblock_checksum(&mut i.meta);
        }
        expect_error(case, &i, expect, Written::Nothing);
    }
    // A bad superblock checksum on its own.
    let mut i = inputs("basic");
    i.meta[1024 + 100] ^= 1;
    expect_error(
        "superblock checksum",
        &i,
        "superblock checksum",
        Written::Nothing,
    );
    // A plain tar shorter than the metadata's device table says.
    let mut i = inputs("plain-tar");
    i.blob.truncate(100_000);
    expect_error(
        "tar shorter than the device table",
        &i,
        "device table addresses",
        Written::Nothing,
    );
}

#[test]
fn missing_files_are_named() {
    let args = [
        "cat",
        "/nonexistent/c.wasm",
        "--tarindex",
        "/x/meta",
        "/x/blob",
    ];
    let out = run_host(&args, Duration::from_secs(30));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/c.wasm"), "{stderr}");
    let mut args = device_args("basic");
    args.insert(0, "cat".into());
    let z = args
        .iter()
        .position(|a| a.ends_with("layer.zinfo"))
        .unwrap();
    args[z] = "/nonexistent/layer.zinfo".into();
    let out = run_host(&args, Duration::from_secs(30));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/layer.zinfo: cannot open"));
}
