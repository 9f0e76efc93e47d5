//! No-panic invariant of the device under random damage: flip bytes of the zinfo, the
//! metadata or the gzip blob of small fixtures, then open and read everything. Any error is
//! fine; a panic, a hang or an out-of-bounds read is not. Iterations are bounded so this
//! runs in seconds (raise FUZZ_ITERATIONS for a longer run).

use std::path::PathBuf;

use erofs_component::gzran::Options;
use erofs_component::source::{MemSource, SizedSource};
use erofs_component::tarindex::Device;
use rand::{rngs::SmallRng, Rng, SeedableRng};

fn read(dir: &str, name: &str) -> Vec<u8> {
    std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures")
            .join(dir)
            .join(name),
    )
    .unwrap()
}

fn source(name: &'static str, bytes: Vec<u8>) -> SizedSource {
    SizedSource::new(name, Box::new(MemSource(bytes))).unwrap()
}

fn flip(rng: &mut SmallRng, bytes: &mut [u8], focus: usize) {
    if bytes.is_empty() {
        return;
    }
    for _ in 0..rng.gen_range(1..8) {
        // Half the flips land in the first `focus` bytes (headers), half anywhere.
        let limit = if rng.gen_bool(0.5) {
            focus.min(bytes.len())
        } else {
            bytes.len()
        };
        let at = rng.gen_range(0..limit);
        bytes[at] = match rng.gen_range(0..4) {
            0 => 0,
            1 => 0xff,
            2 => bytes[at] ^ (1 << rng.gen_range(0..8)),
            _ => rng.gen(),
        };
    }
}

#[test]
fn random_damage_never_panics() {
    let iterations: usize = std::env::var("FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let mut rng = SmallRng::seed_from_u64(0xE40F5);
    let fixtures = ["aufs", "pigz", "multimember"];
    let mut opened = 0;
    for i in 0..iterations {
        let dir = fixtures[i % fixtures.len()];
        let (mut meta, mut blob, mut zinfo) = (
            read(dir, "meta.erofs"),
            read(dir, "layer.tar.gz"),
            read(dir, "layer.zinfo"),
        );
        match rng.gen_range(0..4) {
            0 => flip(&mut rng, &mut zinfo, 12 + 17),
            1 => flip(&mut rng, &mut meta, 2048),
            2 => flip(&mut rng, &mut blob, 64),
            _ => {
                let cut = rng.gen_range(0..blob.len());
                blob.truncate(cut);
            }
        }
        let options = Options {
            cache_bytes: 64 * 1024,
            max_cursors: 2,
            learn_interval: 64 * 1024,
            max_learned: 4,
            ..Default::default()
        };
        let Ok(mut dev) = Device::open(
            source("meta", meta),
            source("blob", blob),
            Some(source("zinfo", zinfo)),
            options,
        ) else {
            continue;
        };
        opened += 1;
        let size = dev.size();
        let mut off = 0;
        while off < size {
            match dev.pread(off, 300_000) {
                Ok(bytes) if !bytes.is_empty() => off += bytes.len() as u64,
                _ => break,
            }
        }
        for _ in 0..20 {
            let _ = dev.pread(rng.gen_range(0..size + 10), rng.gen_range(0..100_000));
        }
    }
    eprintln!("{iterations} damaged inputs, {opened} still opened; no panic");
}
