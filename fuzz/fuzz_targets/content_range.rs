//! `Content-Range` values of range responses: `bytes START-END/TOTAL`, `bytes */TOTAL`.
//! Whatever parses must be a consistent range.
#![no_main]

use erofs_component::remote::blob::parse_content_range;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    erofs_fuzz::bound_memory(16);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(cr) = parse_content_range(text) {
        if let Some((first, last)) = cr.range {
            assert!(first <= last, "{text:?} parsed as {cr:?}");
            if let Some(total) = cr.total {
                assert!(last < total, "{text:?} parsed as {cr:?}");
            }
        }
    }
});
