//! The sandbox: a trap fails only its own call, the instance is rebuilt, and the next
//! call works; a deadline stops a call; the memory cap holds.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use erofs_host::sandbox::{BlobSource, CallError, DeviceSpec, Limits, SandboxedDevice};
use erofs_host::sandbox::{OpenOptions, Runtime};

fn spec(dir: &str, cache: u64) -> DeviceSpec {
    let f = fixture(dir);
    DeviceSpec {
        meta: Some(f.join("meta.erofs")),
        blob: BlobSource::Local(f.join("layer.tar.gz")),
        zinfo: Some(f.join("layer.zinfo")),
        trap_after_blob_reads: None,
        pins: Default::default(),
        options: OpenOptions {
            cache_bytes: Some(cache),
            max_cursors: None,
            learn_interval: None,
            max_learned: None,
            header_samples: None,
            zinfo_sha256: None,
        },
    }
}

fn runtime() -> Arc<Runtime> {
    Runtime::load(&component()).unwrap()
}

#[test]
fn a_trap_fails_one_call_and_the_next_call_works() {
    let want = expected_device("large");
    let limits = Limits {
        memory: 32 << 20,
        call_timeout: Duration::from_secs(30),
    };
    let mut dev = SandboxedDevice::open(runtime(), spec("large", 1 << 20), limits).unwrap();
    assert!(dev.pread(0, 4096).unwrap() == want[..4096]);
    // A 48 MiB read cannot fit under a 32 MiB cap: the guest's allocation traps.
    let Err(err) = dev.pread(0, 48 << 20) else {
        panic!("a 48 MiB read under a 32 MiB cap must fail")
    };
    assert!(matches!(err, CallError::Trap(_)), "{err}");
    assert_eq!(err.errno(), libc::EIO);
    assert_eq!(dev.traps, 1);
    // The next call rebuilds the instance and reads correctly.
    assert!(dev.pread(5_000_000, 70_000).unwrap() == want[5_000_000..5_070_000]);
    assert_eq!(dev.traps, 1);
}

#[test]
fn a_deadline_stops_a_long_call() {
    let limits = Limits {
        memory: 256 << 20,
        call_timeout: Duration::from_secs(30),
    };
    let mut dev = SandboxedDevice::open(runtime(), spec("large", 0), limits).unwrap();
    // Decoding 48 MB takes ~100 ms at best: a 20 ms deadline stops it, with no hang.
    dev.set_call_timeout(Duration::from_millis(20));
    let Err(err) = dev.pread(0, 48 << 20) else {
        panic!("the deadline must stop the call")
    };
    assert!(matches!(err, CallError::Trap(_)), "{err}");
    assert!(err.to_string().contains("interrupt"), "{err}");
    // With time to work, the rebuilt instance reads correctly.
    dev.set_call_timeout(Duration::from_secs(30));
    let want = expected_device("large");
    assert!(dev.pread(1_000_000, 100_000).unwrap() == want[1_000_000..1_100_000]);
}

#[test]
fn component_errors_are_not_traps() {
    let limits = Limits {
        memory: 256 << 20,
        call_timeout: Duration::from_secs(30),
    };
    let mut bad = spec("basic", 0);
    bad.zinfo = Some(fixture("large").join("layer.zinfo"));
    let err = SandboxedDevice::open(runtime(), bad, limits)
        .err()
        .expect("must fail");
    assert!(err.to_string().contains("bad input"), "{err}");
}

/// Issue 10.4: the META is read once. Every instance is handed the bytes the first open
/// read, so a META swapped on disk after the open changes nothing, even for an instance
/// built after it (here: the rebuild after a trap). Before, each instance reopened the
/// path and served the new file.
#[test]
fn a_meta_swapped_on_disk_after_the_open_changes_nothing() {
    let dir = TempDir::new("metaswap");
    let meta = dir.path().join("meta.erofs");
    let original = std::fs::read(fixture("large").join("meta.erofs")).unwrap();
    std::fs::write(&meta, &original).unwrap();
    let mut s = spec("large", 1 << 20);
    s.meta = Some(meta.clone());
    let limits = Limits {
        memory: 32 << 20,
        call_timeout: Duration::from_secs(30),
    };
    let mut dev = SandboxedDevice::open(runtime(), s, limits).unwrap();
    let meta_size = dev.meta_size();
    assert_eq!(meta_size, original.len() as u64);
    let len = meta_size as u32;
    assert!(dev.pread(0, len).unwrap() == original);
    // Swap the file: every byte of its last block changed (the same size, so a size check
    // alone would not notice). Renamed over, as an editor or `cp` to a temp name would.
    let mut swapped = original.clone();
    let n = swapped.len();
    for b in &mut swapped[n - 512..] {
        *b ^= 0x5a;
    }
    let tmp = dir.path().join("meta.new");
    std::fs::write(&tmp, &swapped).unwrap();
    std::fs::rename(&tmp, &meta).unwrap();
    // Force a new instance: a 48 MiB read under a 32 MiB cap traps.
    assert!(matches!(dev.pread(0, 48 << 20), Err(CallError::Trap(_))));
    assert_eq!(dev.traps, 1);
    let after = dev.pread(0, len).expect("the rebuilt instance must open");
    assert!(
        after == original,
        "the rebuilt instance serves the META swapped on disk"
    );
    let want = expected_device("large");
    assert!(dev.pread(5_000_000, 70_000).unwrap() == want[5_000_000..5_070_000]);
}

/// Issue 10.3 (local half): a blob file whose size changed after the open is refused by
/// every later instance, naming both sizes, instead of being served under the old index.
#[test]
fn a_blob_that_changed_size_after_the_open_is_refused_on_reopen() {
    let dir = TempDir::new("blobgrow");
    let blob = dir.path().join("layer.tar.gz");
    std::fs::copy(fixture("large").join("layer.tar.gz"), &blob).unwrap();
    let mut s = spec("large", 1 << 20);
    s.blob = BlobSource::Local(blob.clone());
    let limits = Limits {
        memory: 32 << 20,
        call_timeout: Duration::from_secs(30),
    };
    let mut dev = SandboxedDevice::open(runtime(), s, limits).unwrap();
    assert!(dev.pread(0, 4096).is_ok());
    // Zero padding after the last member is harmless to a reader, but it is not the
    // blob that was opened.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&blob)
        .unwrap();
    std::io::Write::write_all(&mut f, &[0u8; 4096]).unwrap();
    drop(f);
    assert!(matches!(dev.pread(0, 48 << 20), Err(CallError::Trap(_))));
    let err = dev
        .pread(0, 4096)
        .expect_err("a reopen must notice the new size");
    let text = err.to_string();
    assert!(text.contains("blob file size"), "{text}");
    assert!(text.contains("not the one first opened"), "{text}");
}
