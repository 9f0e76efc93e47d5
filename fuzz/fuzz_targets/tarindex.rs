//! The tar-index device checks: the metadata's superblock and device table against a plain
//! tar (layout.rs, device.rs), then device reads across the meta/tar boundary and the
//! EROFS root on top. Input: metadata length (u32 LE), the metadata (its superblock
//! checksum is recomputed), the tar size (u64 LE, up to 1 TiB; the tar is virtual), then
//! the tar's first bytes.
#![no_main]

use erofs_component::fs::Filesystem;
use erofs_component::gzran::Options;
use erofs_component::source::SizedSource;
use erofs_component::tarindex::Device;
use erofs_fuzz::{mem, reseal, split_prefixed, take_u64, Padded};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    erofs_fuzz::bound_memory(128);
    let (meta, rest) = split_prefixed(data);
    let (tar_size, head) = take_u64(rest);
    let mut meta = meta.to_vec();
    reseal(&mut meta);
    let tar = Padded {
        head: head.to_vec(),
        size: tar_size % (1 << 40),
    };
    let Ok(blob) = SizedSource::new("blob", Box::new(tar)) else {
        return;
    };
    let Ok(mut dev) = Device::open(mem("meta", &meta), blob, None, Options::default()) else {
        return;
    };
    let size = dev.size();
    assert_eq!(size, dev.meta_size() + dev.tar_size());
    let meta_size = dev.meta_size();
    for (offset, len) in [
        (0, 4096),
        (meta_size.saturating_sub(100), 200),
        (size.saturating_sub(10), 100),
        (size, 1),
        (u64::MAX - 1, 4096),
    ] {
        if let Ok(bytes) = dev.pread(offset, len) {
            let want = offset
                .saturating_add(u64::from(len))
                .min(size)
                .saturating_sub(offset);
            assert_eq!(bytes.len() as u64, want, "device read of {len} at {offset}");
        }
    }
    let Ok(mut fs) = Filesystem::open(dev) else {
        return;
    };
    let root = fs.root();
    let _ = fs.getattr(root);
    if let Ok(entries) = fs.readdir(root, 0, 64) {
        for e in entries.iter().take(16) {
            let _ = fs.lookup(root, &e.name);
            let _ = fs.read(e.nid, 0, 4096);
        }
    }
});
