//! The index builder's tar parser (component/src/build/tar), through the builder: the
//! input is a plain tar, fed in pieces whose size comes from the first byte, then the
//! tree and the EROFS writer build the metadata. Whatever it builds must open in the EROFS
//! reader.
#![no_main]

use erofs_component::build::{BlobFormat, IndexOptions, Indexer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    erofs_fuzz::bound_memory(256);
    let Some((&piece, tar)) = data.split_first() else {
        return;
    };
    let options = IndexOptions {
        format: BlobFormat::Tar,
        uuid: Some([7; 16]),
        ..IndexOptions::default()
    };
    let Ok(mut indexer) = Indexer::new(options) else {
        return;
    };
    let piece = usize::from(piece).max(1) * 7;
    for chunk in tar.chunks(piece) {
        if indexer.write(chunk).is_err() {
            return;
        }
    }
    let Ok(index) = indexer.finish() else {
        return;
    };
    struct Meta<'a>(&'a [u8], u64);
    impl erofs_image::ReadAt for Meta<'_> {
        fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), erofs_image::Error> {
            let end = offset.saturating_add(buf.len() as u64);
            if end > self.1 {
                return Err(erofs_image::Error::Io("past the end".into()));
            }
            // The tar region reads as zeros: enough for opening and walking the tree.
            buf.fill(0);
            let start = usize::try_from(offset).unwrap_or(usize::MAX);
            if let Some(meta) = self.0.get(start..) {
                let n = meta.len().min(buf.len());
                buf[..n].copy_from_slice(&meta[..n]);
            }
            Ok(())
        }
        fn size(&self) -> u64 {
            self.1
        }
    }
    let size = index.meta.len() as u64 + index.stats.tar_parsed;
    let mut dev = Meta(&index.meta, size);
    let fs = erofs_image::Filesystem::open(&mut dev);
    assert!(
        fs.is_ok(),
        "the builder wrote an image the reader refuses: {:?}",
        fs.err()
    );
});
