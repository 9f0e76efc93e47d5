//! A zinfo is untrusted (issue 10, item 1): each checkpoint is proven before it serves a
//! byte, by decoding to it from a checkpoint already proven and comparing its `in`, `bits`
//! and window; checkpoint 0's `in` must be the real gzip header length. A checkpoint that
//! fails is an error naming the zinfo, the checkpoint and the field, never wrong bytes.
//!
//! The layer is the `large` fixture (Debian files, `gzip -9`, 12 checkpoints 4 MiB apart).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;

const HEADER: usize = 12;
const RECORD: usize = 32785;
const WINDOW: usize = 32768;

/// Byte offset of checkpoint `k`'s record in a v2 zinfo.
fn record(k: usize) -> usize {
    HEADER + k * RECORD
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// The `out` of checkpoint `k`.
fn out_of(zinfo: &[u8], k: usize) -> u64 {
    le64(zinfo, record(k) + 8)
}

struct Layer {
    meta: PathBuf,
    blob: PathBuf,
    zinfo: Vec<u8>,
    meta_size: u64,
}

fn large() -> Layer {
    let f = fixture("large");
    let meta = f.join("meta.erofs");
    Layer {
        meta_size: std::fs::metadata(&meta).unwrap().len(),
        meta,
        blob: f.join("layer.tar.gz"),
        zinfo: std::fs::read(f.join("layer.zinfo")).unwrap(),
    }
}

/// `cat --offset OFFSET --length LENGTH` of the large layer with `zinfo` as its zinfo.
fn cat(layer: &Layer, zinfo: &[u8], offset: u64, length: u64) -> std::process::Output {
    cat_with(layer, zinfo, offset, length, &[])
}

/// The same, with `extra` options before the device's.
fn cat_with(
    layer: &Layer,
    zinfo: &[u8],
    offset: u64,
    length: u64,
    extra: &[&str],
) -> std::process::Output {
    let tmp = TempDir::new("zproof");
    let z = tmp.path().join("tampered.zinfo");
    std::fs::write(&z, zinfo).unwrap();
    let s = |p: &std::path::Path| p.to_string_lossy().into_owned();
    let mut args = vec!["cat".to_string(), s(&component())];
    args.extend(extra.iter().map(|e| e.to_string()));
    args.extend([
        "--tarindex".into(),
        s(&layer.meta),
        "--zinfo".into(),
        s(&z),
        "--offset".into(),
        offset.to_string(),
        "--length".into(),
        length.to_string(),
        s(&layer.blob),
    ]);
    run_host(&args, Duration::from_secs(120))
}

/// The read must fail, naming the zinfo, the checkpoint and `words`, with nothing (and
/// so no wrong byte) written.
fn expect_refused(case: &str, out: &std::process::Output, words: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{case}: succeeded; {} bytes written",
        out.stdout.len()
    );
    assert!(!stderr.contains("panicked"), "{case}: panicked: {stderr}");
    for w in words {
        assert!(stderr.contains(w), "{case}: error lacks `{w}`: {stderr}");
    }
    assert!(
        out.stdout.is_empty(),
        "{case}: wrote {} bytes before failing",
        out.stdout.len()
    );
}

#[test]
fn a_tampered_window_is_refused_before_it_serves_a_byte() {
    let layer = large();
    let good = expected_device("large");
    let out2 = out_of(&layer.zinfo, 2);
    let offset = layer.meta_size + out2 + 65536;
    let length = 1 << 20;

    // The honest zinfo serves the range, and it is the right bytes.
    let ok = cat(&layer, &layer.zinfo, offset, length);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(ok.stdout == good[offset as usize..(offset + length) as usize]);

    // The attack: XOR checkpoint 2's window. Before the proof, this served
    // 27,980 wrong bytes with exit 0.
    let mut bad = layer.zinfo.clone();
    let w = record(2) + 17;
    for b in &mut bad[w..w + WINDOW] {
        *b ^= 0x5a;
    }
    let out = cat(&layer, &bad, offset, length);
    expect_refused("window XOR", &out, &["zinfo: checkpoint 2: field `window`"]);

    // One byte of the window is enough.
    let mut one = layer.zinfo.clone();
    one[w + WINDOW - 1] ^= 1;
    let out = cat(&layer, &one, offset, length);
    expect_refused(
        "one window byte",
        &out,
        &["zinfo: checkpoint 2: field `window`"],
    );

    // Bytes before the bad checkpoint are still served, and right.
    let out1 = out_of(&layer.zinfo, 1);
    let before = layer.meta_size + out1 + 4096;
    let ok = cat(&layer, &bad, before, 65536);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(ok.stdout == good[before as usize..before as usize + 65536]);
}

#[test]
fn a_tampered_in_or_bits_is_refused() {
    let layer = large();
    let offset = layer.meta_size + out_of(&layer.zinfo, 2) + 65536;

    let mut bad_in = layer.zinfo.clone();
    let at = record(2);
    let in2 = le64(&bad_in, at);
    bad_in[at..at + 8].copy_from_slice(&(in2 + 1).to_le_bytes());
    let out = cat(&layer, &bad_in, offset, 1 << 20);
    expect_refused("in + 1", &out, &["zinfo: checkpoint 2: field `in`"]);

    let mut bad_bits = layer.zinfo.clone();
    let bits = bad_bits[at + 16];
    bad_bits[at + 16] = if bits == 0 { 3 } else { bits - 1 };
    let out = cat(&layer, &bad_bits, offset, 1 << 20);
    expect_refused("bits changed", &out, &["zinfo: checkpoint 2: field `bits`"]);
}

#[test]
fn checkpoint_zero_must_start_after_the_real_gzip_header() {
    let layer = large();
    let mut bad = layer.zinfo.clone();
    // 11 instead of the 10-byte header of `gzip -9` (no name: the fixture was piped).
    bad[record(0)..record(0) + 8].copy_from_slice(&11u64.to_le_bytes());
    let out = cat(&layer, &bad, layer.meta_size, 4096);
    expect_refused(
        "checkpoint 0 in",
        &out,
        &["zinfo: checkpoint 0: field `in` is 11", "gzip header"],
    );
}

/// A real layer: Debian's perl library and kernel headers, `gzip -9`, indexed by us.
/// Its text compresses with back-references, so a wrong window changes bytes (the large
/// fixture's synthetic files barely refer back).
fn debian_layer(tmp: &TempDir) -> Option<Layer> {
    let parts = ["share/perl", "include/linux"];
    if parts
        .iter()
        .any(|p| !std::path::Path::new("/usr").join(p).is_dir())
    {
        skip(
            "zinfo_proof::a_real_layer",
            "needs /usr/share/perl and /usr/include/linux",
        );
        return None;
    }
    let blob = tmp.path().join("layer.tar.gz");
    let script = format!(
        "tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -cf - -C /usr {} | gzip -9 -n > '{}'",
        parts.join(" "),
        blob.display()
    );
    let status = std::process::Command::new("sh")
        .args(["-c", &script])
        .status()
        .unwrap();
    assert!(status.success(), "{script}");
    let meta = tmp.path().join("meta.erofs");
    let zinfo = tmp.path().join("layer.zinfo");
    let s = |p: &std::path::Path| p.to_string_lossy().into_owned();
    let out = run_host(
        &[
            "index".to_string(),
            s(&component()),
            "--tarindex".into(),
            s(&meta),
            "--zinfo".into(),
            s(&zinfo),
            s(&blob),
        ],
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(Layer {
        meta_size: std::fs::metadata(&meta).unwrap().len(),
        meta,
        blob,
        zinfo: std::fs::read(zinfo).unwrap(),
    })
}

#[test]
fn a_real_layer_with_a_tampered_window_fails_instead_of_serving_wrong_bytes() {
    let tmp = TempDir::new("zproof-real");
    let Some(layer) = debian_layer(&tmp) else {
        return;
    };
    let offset = layer.meta_size + out_of(&layer.zinfo, 2) + 65536;
    let length = 1u64 << 20;
    let mut bad = layer.zinfo.clone();
    let w = record(2) + 17;
    for b in &mut bad[w..w + WINDOW] {
        *b ^= 0x5a;
    }
    // With and without the open-time header sample (which, on the old reader, was all
    // that stood between this zinfo and 294,223 wrong bytes with exit 0).
    for samples in [None, Some("0")] {
        let extra = match samples {
            Some(n) => vec!["--header-samples", n],
            None => vec![],
        };
        let out = cat_with(&layer, &bad, offset, length, &extra);
        expect_refused(
            &format!("real layer, window XOR, header samples {samples:?}"),
            &out,
            &["zinfo: checkpoint 2: field `window`"],
        );
    }
    // The honest zinfo serves the same range.
    let ok = cat(&layer, &layer.zinfo, offset, length);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(ok.stdout.len() as u64, length);
}

/// `cat` of `length` bytes at `offset` of the large layer with `--stats`, no open-time
/// header sample, and `extra` arguments: the output and the bytes the device decoded.
fn cat_decoded(offset: u64, length: u64, extra: &[&str]) -> (std::process::Output, Option<u64>) {
    let f = fixture("large");
    let s = |p: PathBuf| p.to_string_lossy().into_owned();
    let mut args = vec![
        "cat".to_string(),
        s(component()),
        "--tarindex".into(),
        s(f.join("meta.erofs")),
        "--zinfo".into(),
        s(f.join("layer.zinfo")),
        "--header-samples".into(),
        "0".into(),
        "--stats".into(),
        "--offset".into(),
        offset.to_string(),
        "--length".into(),
        length.to_string(),
        s(f.join("layer.tar.gz")),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let out = run_host(&args, Duration::from_secs(120));
    let decoded = String::from_utf8_lossy(&out.stderr)
        .lines()
        .find_map(|l| l.strip_prefix("device: "))
        .and_then(|l| l.split(" B decoded").next())
        .and_then(|n| n.parse().ok());
    (out, decoded)
}

/// `--zinfo-sha256` (WIT `open-options.zinfo-sha256`): a zinfo whose digest the user
/// pinned serves from its last checkpoint without decoding the stream up to it, with the
/// same bytes; a pin of another digest is refused at open, naming the option.
#[test]
fn a_pinned_zinfo_skips_the_proofs_and_a_wrong_pin_is_refused() {
    use sha2::{Digest, Sha256};
    let layer = large();
    let last = (layer.zinfo.len() - HEADER) / RECORD - 1;
    assert!(last >= 4, "the large fixture has {} checkpoints", last + 1);
    let at = layer.meta_size + out_of(&layer.zinfo, last) + 65536;
    let digest = hex::encode(Sha256::digest(&layer.zinfo));

    let (proven, proven_decoded) = cat_decoded(at, 4096, &[]);
    assert!(
        proven.status.success(),
        "{}",
        String::from_utf8_lossy(&proven.stderr)
    );
    let (pinned, pinned_decoded) = cat_decoded(at, 4096, &["--zinfo-sha256", &digest]);
    assert!(
        pinned.status.success(),
        "{}",
        String::from_utf8_lossy(&pinned.stderr)
    );
    assert!(
        pinned.stdout == proven.stdout,
        "a pinned zinfo served other bytes"
    );
    let (proven_decoded, pinned_decoded) = (proven_decoded.unwrap(), pinned_decoded.unwrap());
    eprintln!(
        "4 KiB after checkpoint {last}: {proven_decoded} B decoded with every checkpoint proven, {pinned_decoded} B with the zinfo pinned"
    );
    // Proving decodes the stream from checkpoint 0 up to the last one; pinned, only the
    // tar-size measure and the read's own page are decoded.
    assert!(
        pinned_decoded + out_of(&layer.zinfo, last) / 2 < proven_decoded,
        "pinning saved too little: {pinned_decoded} B vs {proven_decoded} B decoded"
    );

    let mut wrong = digest.into_bytes();
    wrong[0] = if wrong[0] == b'0' { b'1' } else { b'0' };
    let wrong = String::from_utf8(wrong).unwrap();
    let (refused, _) = cat_decoded(at, 4096, &["--zinfo-sha256", &wrong]);
    expect_refused("a wrong pin", &refused, &["zinfo-sha256", &wrong]);
    let (malformed, _) = cat_decoded(at, 4096, &["--zinfo-sha256", "sha256:xyz"]);
    expect_refused(
        "a malformed pin",
        &malformed,
        &["zinfo-sha256", "64 hex digits"],
    );
}
