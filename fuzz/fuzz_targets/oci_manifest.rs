//! OCI / Docker manifest and index JSON: parse, then pick a platform from an index and a
//! layer from a manifest (by index, by digest, and the only-layer default), and classify
//! every media type.
#![no_main]

use erofs_component::remote::manifest::{
    choose_layer, choose_platform, compression_of, parse_document, Document, Platform,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    erofs_fuzz::bound_memory(64);
    let Ok(doc) = parse_document(data) else {
        return;
    };
    match doc {
        Document::Index(entries) => {
            for want in [
                "linux/amd64",
                "linux/arm64/v8",
                "linux/arm/v7",
                "windows/amd64",
            ] {
                if let Ok(p) = Platform::parse(want) {
                    let _ = choose_platform(&entries, &p);
                }
            }
            for e in &entries {
                if let Some(mt) = &e.media_type {
                    let _ = compression_of(mt);
                }
            }
        }
        Document::Manifest(layers) => {
            let _ = choose_layer(&layers, None, None);
            let _ = choose_layer(&layers, Some(0), None);
            let _ = choose_layer(&layers, Some(u32::MAX), None);
            for (i, l) in layers.iter().enumerate().take(8) {
                let _ = choose_layer(&layers, None, Some(&l.digest));
                let _ = choose_layer(&layers, u32::try_from(i).ok(), Some(&l.digest));
                if let Some(mt) = &l.media_type {
                    let _ = compression_of(mt);
                }
            }
        }
    }
});
