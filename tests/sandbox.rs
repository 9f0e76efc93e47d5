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
        meta: f.join("meta.erofs"),
        blob: BlobSource::Local(f.join("layer.tar.gz")),
        zinfo: Some(f.join("layer.zinfo")),
        trap_after_blob_reads: None,
        options: OpenOptions {
            cache_bytes: Some(cache),
            max_cursors: None,
            learn_interval: None,
            max_learned: None,
            header_samples: None,
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
