//! Proof tests: honest zinfos serve every byte right and are proven on the way; a
//! tampered `in`, `bits` or window is refused, naming the checkpoint and the field, and
//! no byte is served from it; a pinned zinfo skips the proofs; provisional reads prove
//! nothing.

use sha2::{Digest, Sha256};

use super::*;
use crate::build::zinfo_writer::tests::{gzip, sample};
use crate::build::zinfo_writer::ZinfoWriter;
use crate::error::Kind;
use crate::gzran::{GzRan, Options};
use crate::source::MemSource;

const RECORD: usize = 17 + WINDOW_SIZE;

fn zinfo_of(blob: &[u8], span: u64) -> Vec<u8> {
    let mut writer = ZinfoWriter::new(span).unwrap();
    writer.feed(blob, &mut |_| Ok(())).unwrap();
    writer.finish().unwrap().0
}

fn src(name: &'static str, bytes: &[u8]) -> SizedSource {
    SizedSource::new(name, Box::new(MemSource(bytes.to_vec()))).unwrap()
}

fn open_with(blob: &[u8], zinfo: &[u8], options: Options, trust: ZinfoTrust) -> Result<GzRan> {
    GzRan::open_with_trust(src("blob", blob), src("zinfo", zinfo), options, trust)
}

/// Every read restarts from a checkpoint: no cache, no live cursor, no learning.
fn cold() -> Options {
    Options {
        cache_bytes: 0,
        max_cursors: 0,
        learn_interval: 0,
        max_learned: 0,
        ..Options::default()
    }
}

fn read(gz: &mut GzRan, offset: u64, len: u64) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    gz.read_into(offset, len, &mut out)?;
    Ok(out)
}

fn out_of(zinfo: &[u8], k: usize) -> u64 {
    let at = 12 + k * RECORD + 8;
    u64::from_le_bytes(zinfo[at..at + 8].try_into().unwrap())
}

fn count(zinfo: &[u8]) -> usize {
    u32::from_le_bytes(zinfo[0..4].try_into().unwrap()) as usize
}

/// A blob of a few checkpoints 256 KiB apart, and its zinfo.
fn layer() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let data = sample(1_500_000);
    let blob = gzip(&data);
    let zinfo = zinfo_of(&blob, 256 << 10);
    assert!(count(&zinfo) >= 5, "{} checkpoints", count(&zinfo));
    (data, blob, zinfo)
}

#[test]
fn honest_checkpoints_are_proven_on_first_touch_and_serve_right_bytes() {
    let (data, blob, zinfo) = layer();
    let n = count(&zinfo);
    for options in [cold(), Options::default()] {
        let mut gz = open_with(&blob, &zinfo, options, ZinfoTrust::Untrusted).unwrap();
        assert_eq!(gz.proven_count(), 1, "only checkpoint 0 at open");
        // Far first: the decode from checkpoint 0 proves every checkpoint it passes.
        let k = n - 2;
        let at = out_of(&zinfo, k) + 5000;
        assert_eq!(
            read(&mut gz, at, 4096).unwrap(),
            data[at as usize..][..4096]
        );
        assert_eq!(gz.proven_count(), k + 1);
        assert_eq!(gz.counters.proof_starts, 1);
        // Nearer ones now restart at their own checkpoint, with no proof decode.
        let starts = gz.counters.proof_starts;
        let at = out_of(&zinfo, 2) + 100;
        assert_eq!(
            read(&mut gz, at, 70_000).unwrap(),
            data[at as usize..][..70_000]
        );
        assert_eq!(gz.counters.proof_starts, starts);
        // forget() keeps proofs.
        gz.forget();
        assert_eq!(gz.proven_count(), k + 1);
        let all = read(&mut gz, 0, data.len() as u64).unwrap();
        assert!(all == data);
        assert_eq!(gz.proven_count(), n);
    }
}

/// gzip `data` (one member, level 6) with a sync flush every `every` bytes: a block
/// ends there, followed by an empty stored block (two restart points at one output).
fn gzip_flushed(data: &[u8], every: usize) -> Vec<u8> {
    use libz_rs_sys as z;
    let mut s = Box::<z::z_stream>::default();
    let mut out = vec![0u8; data.len() + data.len() / 50 + 4096];
    // SAFETY: a default stream; 31 = gzip wrapper; the buffers outlive every call.
    unsafe {
        let rc = z::deflateInit2_(
            &mut *s,
            6,
            z::Z_DEFLATED,
            31,
            8,
            z::Z_DEFAULT_STRATEGY,
            z::zlibVersion(),
            std::mem::size_of::<z::z_stream>() as i32,
        );
        assert_eq!(rc, z::Z_OK);
        s.next_out = out.as_mut_ptr();
        s.avail_out = out.len() as u32;
        let pieces: Vec<&[u8]> = data.chunks(every).collect();
        for (i, piece) in pieces.iter().enumerate() {
            s.next_in = piece.as_ptr();
            s.avail_in = piece.len() as u32;
            let last = i + 1 == pieces.len();
            let flush = if last { z::Z_FINISH } else { z::Z_SYNC_FLUSH };
            let rc = z::deflate(&mut *s, flush);
            assert_eq!(rc, if last { z::Z_STREAM_END } else { z::Z_OK });
        }
        let n = s.total_out as usize;
        z::deflateEnd(&mut *s);
        out.truncate(n);
    }
    out
}

#[test]
fn checkpoints_closer_than_a_window_and_members_are_proven() {
    // Checkpoints every ~12 KB: a proof reaches the next one before 32 KiB are decoded,
    // so its history comes partly from the restart's. Several members: a member's first
    // checkpoint has no history at all.
    let mut blob = Vec::new();
    let mut data = Vec::new();
    for part in 0..3usize {
        let piece: Vec<u8> = sample(90_000 + part * 7).into_iter().rev().collect();
        blob.extend_from_slice(&gzip_flushed(&piece, 12_000));
        data.extend_from_slice(&piece);
    }
    let zinfo = zinfo_of(&blob, 10_000);
    let n = count(&zinfo);
    assert!(n >= 20, "{n} checkpoints");
    let mut gz = open_with(&blob, &zinfo, cold(), ZinfoTrust::Untrusted).unwrap();
    for k in (1..n).rev() {
        let at = out_of(&zinfo, k);
        let len = 3000.min(data.len() as u64 - at);
        assert_eq!(
            read(&mut gz, at, len).unwrap(),
            data[at as usize..][..len as usize]
        );
    }
    assert_eq!(gz.proven_count(), n);
    // Restarting at each proven one gives the right bytes.
    for k in 1..n {
        let at = out_of(&zinfo, k) + 1;
        assert_eq!(read(&mut gz, at, 100).unwrap(), data[at as usize..][..100]);
    }
}

#[test]
fn a_checkpoint_after_an_empty_block_is_proven_too() {
    // After a sync flush the first restart point is the data block's end, the second the
    // empty stored block's end, at the same output. Move checkpoint 1 to the second.
    let data = sample(200_000);
    let blob = gzip_flushed(&data, 50_000);
    let mut zinfo = zinfo_of(&blob, 40_000);
    let at = 12 + RECORD;
    let in_byte = u64::from_le_bytes(zinfo[at..at + 8].try_into().unwrap());
    let bits = u64::from(zinfo[at + 16]);
    // The stored block: 3 header bits, padding to a byte, then LEN and NLEN.
    let header_end = (in_byte * 8 - bits + 3).div_ceil(8);
    assert_eq!(&blob[header_end as usize..][..4], &[0, 0, 0xff, 0xff]);
    zinfo[at..at + 8].copy_from_slice(&(header_end + 4).to_le_bytes());
    zinfo[at + 16] = 0;
    let mut gz = open_with(&blob, &zinfo, cold(), ZinfoTrust::Untrusted).unwrap();
    let from = out_of(&zinfo, 1) + 7;
    assert_eq!(
        read(&mut gz, from, 5000).unwrap(),
        data[from as usize..][..5000]
    );
    assert!(gz.proven_count() >= 2);
}

/// Open with a tampered zinfo and read just after checkpoint `k`: the error.
fn tampered_read(tamper: impl Fn(&mut Vec<u8>), k: usize) -> (GzRan, Error) {
    let (data, blob, mut zinfo) = layer();
    let good = zinfo.clone();
    tamper(&mut zinfo);
    let mut gz = open_with(&blob, &zinfo, cold(), ZinfoTrust::Untrusted).unwrap();
    // Before the tampered checkpoint all is served, and right.
    let before = out_of(&good, k - 1) + 10;
    assert_eq!(
        read(&mut gz, before, 1000).unwrap(),
        data[before as usize..][..1000]
    );
    let at = out_of(&good, k) + 65536;
    let mut out = Vec::new();
    let e = gz.read_into(at, 1 << 20, &mut out).unwrap_err();
    assert!(
        out.is_empty(),
        "{} bytes served before the error",
        out.len()
    );
    (gz, e)
}

#[test]
fn a_tampered_window_is_refused() {
    let w = 12 + 2 * RECORD + 17;
    let (mut gz, e) = tampered_read(|z| z[w + WINDOW_SIZE - 7] ^= 0x40, 2);
    assert!(e.is(Kind::BadInput));
    assert_eq!(e.file.as_deref(), Some("zinfo"));
    assert_eq!(e.field.as_deref(), Some("window"));
    let text = e.to_string();
    assert!(
        text.contains("zinfo: checkpoint 2: field `window`"),
        "{text}"
    );
    assert!(text.contains("1 of the 32768 bytes"), "{text}");
    // Every later read that needs it fails the same way, at once.
    let at = gz.size() - 10;
    let again = read(&mut gz, at, 10).unwrap_err();
    assert_eq!(again, e);
}

#[test]
fn tampered_in_and_bits_are_refused() {
    let at = 12 + 2 * RECORD;
    let (_, e) = tampered_read(
        |z| {
            let v = u64::from_le_bytes(z[at..at + 8].try_into().unwrap());
            z[at..at + 8].copy_from_slice(&(v + 1).to_le_bytes());
        },
        2,
    );
    assert_eq!(e.field.as_deref(), Some("in"), "{e}");
    assert!(e.to_string().contains("checkpoint 2: field `in`"), "{e}");
    let (_, e) = tampered_read(|z| z[at + 16] = (z[at + 16] + 1) % 8, 2);
    assert_eq!(e.field.as_deref(), Some("bits"), "{e}");
    // An `out` where the stream has no block boundary at all.
    let (_, e) = tampered_read(
        |z| {
            let v = u64::from_le_bytes(z[at + 8..at + 16].try_into().unwrap());
            z[at + 8..at + 16].copy_from_slice(&(v + 3).to_le_bytes());
        },
        2,
    );
    assert!(
        matches!(e.field.as_deref(), Some("out") | Some("in") | Some("bits")),
        "{e}"
    );
}

#[test]
fn checkpoint_zero_must_follow_the_real_header() {
    let (_, blob, mut zinfo) = layer();
    zinfo[12..20].copy_from_slice(&11u64.to_le_bytes());
    let e = open_with(&blob, &zinfo, cold(), ZinfoTrust::Untrusted)
        .err()
        .unwrap();
    assert!(
        e.to_string()
            .contains("checkpoint 0: field `in` is 11, but the blob's gzip header is 10 bytes"),
        "{e}"
    );
    let (_, blob, mut zinfo) = layer();
    zinfo[12 + 16] = 2;
    let e = open_with(&blob, &zinfo, cold(), ZinfoTrust::Untrusted)
        .err()
        .unwrap();
    assert_eq!(e.field.as_deref(), Some("bits"), "{e}");
}

#[test]
fn a_pinned_zinfo_is_trusted_only_with_its_digest() {
    let (data, blob, zinfo) = layer();
    let digest: [u8; 32] = Sha256::digest(&zinfo).into();
    let mut gz = open_with(&blob, &zinfo, cold(), ZinfoTrust::Pinned(digest)).unwrap();
    assert_eq!(gz.proven_count(), count(&zinfo));
    let at = gz.size() - 5000;
    assert_eq!(read(&mut gz, at, 5000).unwrap(), data[at as usize..]);
    assert_eq!(gz.counters.proof_starts, 0);
    let mut other = digest;
    other[0] ^= 1;
    let e = open_with(&blob, &zinfo, cold(), ZinfoTrust::Pinned(other))
        .err()
        .unwrap();
    assert_eq!(e.field.as_deref(), Some("sha256"), "{e}");
}

#[test]
fn a_pin_is_64_hex_digits_with_or_without_its_prefix() {
    let hex: String = (0..32).map(|i| format!("{:02x}", i * 7)).collect();
    let want: [u8; 32] = std::array::from_fn(|i| (i * 7) as u8);
    for text in [hex.clone(), format!("sha256:{hex}"), hex.to_uppercase()] {
        assert_eq!(
            ZinfoTrust::pinned_from_text(&text).unwrap(),
            ZinfoTrust::Pinned(want),
            "{text}"
        );
    }
    for bad in [
        "",
        "sha256:",
        &hex[..62],
        "zz",
        &format!("+{}", &hex[1..]),
        &format!("{hex}00"),
        &format!("sha512:{hex}"),
    ] {
        let e = ZinfoTrust::pinned_from_text(bad).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("zinfo-sha256"), "{bad}: {e}");
    }
    // Not ASCII: refused, not a panic on a char boundary.
    let e = ZinfoTrust::pinned_from_text(&"é".repeat(32)).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("zinfo-sha256"), "{e}");
}

#[test]
fn provisional_reads_prove_nothing_and_leave_nothing() {
    let (data, blob, zinfo) = layer();
    let mut gz = open_with(&blob, &zinfo, Options::default(), ZinfoTrust::Untrusted).unwrap();
    gz.begin_provisional();
    let at = out_of(&zinfo, 3) + 10;
    assert_eq!(
        read(&mut gz, at, 1000).unwrap(),
        data[at as usize..][..1000]
    );
    assert_eq!(gz.proven_count(), 1);
    assert_eq!(gz.counters.proof_starts, 0);
    gz.end_provisional();
    // Serving again: the same read now proves its way there.
    assert_eq!(
        read(&mut gz, at, 1000).unwrap(),
        data[at as usize..][..1000]
    );
    assert_eq!(gz.counters.proof_starts, 1);
    assert!(gz.proven_count() >= 4);
}
