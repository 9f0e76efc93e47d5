//! gzip framing and inflate through the random-access reader: open (validates the zinfo
//! against the blob and decodes from the last checkpoint to find the size), then reads at
//! the start, across a page boundary, in the middle, at the end and past it, cold and warm.
//! Input: zinfo length (u32 LE), the zinfo, then the gzip blob.
#![no_main]

use erofs_component::gzran::{GzRan, Options};
use erofs_fuzz::{mem, split_prefixed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    erofs_fuzz::bound_memory(256);
    let (zinfo, blob) = split_prefixed(data);
    let options = Options {
        // Small, so the cache and cursor eviction paths run on small inputs.
        cache_bytes: 128 << 10,
        max_cursors: 2,
        learn_interval: 64 << 10,
        max_learned: 8,
        ..Default::default()
    };
    let Ok(mut gz) = GzRan::open(mem("blob", blob), mem("zinfo", zinfo), options) else {
        return;
    };
    let size = gz.size();
    let reads = [
        (0, 4096),
        (32768 - 100, 200),
        (size / 2, 70_000),
        (size.saturating_sub(1), 10),
        (size, 10),
        (size / 3, 1),
        (0, 4096),
    ];
    let mut first = Vec::new();
    for (offset, len) in reads {
        let mut out = Vec::new();
        let ok = gz.read_into(offset, len, &mut out).is_ok();
        if ok {
            let want = offset.saturating_add(len).min(size).saturating_sub(offset);
            assert_eq!(
                out.len() as u64,
                want,
                "read of {len} at {offset} (size {size})"
            );
        }
        first.push(ok.then_some(out));
    }
    // Cold again, in the other order: whatever path serves a range (cache, live cursor,
    // zinfo or learned checkpoint), the bytes are the same.
    gz.forget();
    for ((offset, len), before) in reads.iter().zip(&first).rev() {
        let mut out = Vec::new();
        if let (Ok(()), Some(before)) = (gz.read_into(*offset, *len, &mut out), before) {
            assert!(
                out == *before,
                "read of {len} at {offset} differs cold and warm"
            );
        }
    }
});
