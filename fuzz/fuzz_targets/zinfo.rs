//! The zinfo checkpoint index: parse and validate, then read every checkpoint's window
//! and look checkpoints up. Input: blob size (u64 LE), then the zinfo file.
#![no_main]

use erofs_component::gzran::zinfo::Zinfo;
use erofs_fuzz::{mem, take_u64};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    erofs_fuzz::bound_memory(64);
    let (blob_size, zinfo) = take_u64(data);
    let file = mem("zinfo", zinfo);
    let Ok(z) = Zinfo::parse(&file, blob_size) else {
        return;
    };
    for cp in &z.checkpoints {
        let _ = cp.bit_position();
        let _ = Zinfo::window(&file, cp);
        let _ = z.checkpoint_before(cp.out);
        let _ = z.checkpoint_before(cp.out.wrapping_sub(1));
    }
    let _ = z.checkpoint_before(u64::MAX);
});
