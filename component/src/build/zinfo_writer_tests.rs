//! zinfo writer tests: every checkpoint restarts a raw inflater at the right output, our
//! zinfo parser accepts the file, members and hostile streams are handled.

use super::*;
use crate::gzran::inflate::RawInflater;
use crate::gzran::zinfo::Zinfo;
use crate::source::{MemSource, SizedSource};

/// gzip `data` with zlib-rs's deflate (level 6, minimal header).
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut s = Box::<z::z_stream>::default();
    let mut out = vec![0u8; data.len() + data.len() / 100 + 1024];
    // SAFETY: a default stream; 31 = gzip wrapper; buffers outlive the calls.
    unsafe {
        assert_eq!(
            z::deflateInit2_(
                &mut *s,
                6,
                z::Z_DEFLATED,
                31,
                8,
                z::Z_DEFAULT_STRATEGY,
                z::zlibVersion(),
                std::mem::size_of::<z::z_stream>() as i32
            ),
            z::Z_OK
        );
        s.next_in = data.as_ptr();
        s.avail_in = data.len() as u32;
        s.next_out = out.as_mut_ptr();
        s.avail_out = out.len() as u32;
        assert_eq!(z::deflate(&mut *s, z::Z_FINISH), z::Z_STREAM_END);
        let n = s.total_out as usize;
        z::deflateEnd(&mut *s);
        out.truncate(n);
    }
    out
}

/// Text-like data with long repeats and random stretches (varied deflate blocks).
pub fn sample(len: usize) -> Vec<u8> {
    let mut x = 88172645463325252u64;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x.is_multiple_of(3) {
            out.extend((0..(x % 200) as u8).map(|i| i.wrapping_mul(31)));
        } else {
            out.extend(format!("line {} of the sample {}\n", x % 1000, x >> 50).bytes());
        }
    }
    out.truncate(len);
    out
}

fn build(blob: &[u8], span: u64, piece: usize) -> Result<(Vec<u8>, Vec<u8>)> {
    let mut w = ZinfoWriter::new(span)?;
    let mut out = Vec::new();
    for p in blob.chunks(piece) {
        w.feed(p, &mut |o| {
            out.extend_from_slice(o);
            Ok(())
        })?;
    }
    let (zinfo, size) = w.finish()?;
    assert_eq!(size, out.len() as u64);
    Ok((zinfo, out))
}

/// Restart at every checkpoint and compare 40 KiB of output with the data.
fn check_checkpoints(blob: &[u8], zinfo: &[u8], data: &[u8]) -> usize {
    let file = SizedSource::new("zinfo", Box::new(MemSource(zinfo.to_vec()))).unwrap();
    let z = Zinfo::parse(&file, blob.len() as u64).unwrap();
    assert_eq!(z.version, 2);
    for cp in &z.checkpoints {
        let history = Zinfo::window(&file, cp).unwrap();
        let out = cp.out as usize;
        assert_eq!(history, data[out - history.len()..out], "window at {out}");
        let mut inf = RawInflater::new().unwrap();
        let prime = (cp.bits > 0).then(|| (cp.bits, blob[cp.in_byte as usize - 1]));
        inf.restart(prime, &history).unwrap();
        let want = &data[out..(out + 40_000).min(data.len())];
        let mut got = vec![0u8; want.len()];
        let mut filled = 0;
        let mut input = &blob[cp.in_byte as usize..];
        while filled < want.len() {
            let step = inf.inflate(input, &mut got[filled..], false).unwrap();
            input = &input[step.consumed..];
            filled += step.produced;
            if step.produced == 0 && step.consumed == 0 {
                break;
            }
        }
        assert_eq!(&got[..filled], want, "restart at out {out}");
    }
    z.checkpoints.len()
}

#[test]
fn checkpoints_restart_exactly() {
    let data = sample(3 << 20);
    let blob = gzip(&data);
    let (zinfo, out) = build(&blob, 256 << 10, 10_000).unwrap();
    assert_eq!(out, data);
    let count = check_checkpoints(&blob, &zinfo, &data);
    assert!(count >= 10, "{count} checkpoints");
    // The first is the member start: in 10, bits 0, out 0, an all-zero window.
    assert_eq!(
        &zinfo[12..29],
        &[10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    );
    assert!(zinfo[29..29 + WINDOW].iter().all(|&b| b == 0));
    // The same bytes whatever the piece size.
    assert_eq!(build(&blob, 256 << 10, 1).unwrap().0, zinfo);
    assert_eq!(build(&blob, 256 << 10, 1 << 20).unwrap().0, zinfo);
}

#[test]
fn members_start_checkpoints() {
    let a = sample(100_000);
    let b = sample(70_000);
    let mut blob = gzip(&a);
    let second_at = blob.len();
    blob.extend(gzip(&b));
    blob.extend(gzip(b""));
    let (zinfo, out) = build(&blob, 1 << 30, 4096).unwrap();
    assert_eq!(out, [a.clone(), b.clone()].concat());
    let count = check_checkpoints(&blob, &zinfo, &out);
    // One per member; the empty last member's sits at the end of the output (harmless: a
    // read there returns nothing, and the parser accepts it).
    assert_eq!(count, 3, "one per member");
    let in2 = u64::from_le_bytes(zinfo[12 + RECORD..12 + RECORD + 8].try_into().unwrap());
    assert_eq!(in2, second_at as u64 + 10);
}

#[test]
fn hostile_streams() {
    let data = sample(50_000);
    let blob = gzip(&data);
    let e = build(&blob[..blob.len() - 20], 4096, 999)
        .unwrap_err()
        .to_string();
    assert!(e.contains("inside a gzip member"), "{e}");
    let mut bad = blob.clone();
    bad[blob.len() - 6] ^= 0xff; // the ISIZE/CRC trailer
    assert!(build(&bad, 4096, 999).is_err());
    let mut trailing = blob.clone();
    trailing.extend([0u8; 16]);
    let e = build(&trailing, 4096, 999).unwrap_err().to_string();
    assert!(e.contains("blob offset"), "{e}");
    let e = build(b"not gzip at all", 4096, 999)
        .unwrap_err()
        .to_string();
    assert!(e.contains("gzip"), "{e}");
    assert!(build(&[], 4096, 1).is_err());
    assert!(ZinfoWriter::new(0).is_err());
}
