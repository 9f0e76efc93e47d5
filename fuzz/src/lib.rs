//! Helpers shared by the fuzz targets: the allocation bound, cutting one fuzz input into
//! the several inputs a parser takes, and in-memory byte sources.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;

use erofs_component::error::Result;
use erofs_component::source::{MemSource, SizedSource, Source};

/// Splits `data` at a little-endian u32 length prefix: `(first, rest)`. A prefix larger
/// than what follows takes everything; fewer than 4 bytes give two empty parts.
pub fn split_prefixed(data: &[u8]) -> (&[u8], &[u8]) {
    let Some((len, rest)) = data.split_first_chunk::<4>() else {
        return (&[], &[]);
    };
    let len = (u32::from_le_bytes(*len) as usize).min(rest.len());
    rest.split_at(len)
}

/// A little-endian u64 from the front of `data` (zero-padded), and the rest.
pub fn take_u64(data: &[u8]) -> (u64, &[u8]) {
    let n = data.len().min(8);
    let mut b = [0u8; 8];
    b[..n].copy_from_slice(&data[..n]);
    (u64::from_le_bytes(b), &data[n..])
}

/// A named in-memory source.
pub fn mem(name: &'static str, bytes: &[u8]) -> SizedSource {
    match SizedSource::new(name, Box::new(MemSource(bytes.to_vec()))) {
        Ok(s) => s,
        // MemSource::size cannot fail.
        Err(e) => panic!("in-memory source: {e}"),
    }
}

/// `head` followed by a deterministic pattern up to `size` bytes, without allocating the
/// pattern: a large device or tar that costs nothing until it is read.
pub struct Padded {
    pub head: Vec<u8>,
    pub size: u64,
}

/// The pattern byte at `offset` past the head: not all zeros, so that reads of it reach
/// the parsers' non-zero paths too.
pub fn pattern(offset: u64) -> u8 {
    (offset.wrapping_mul(0x9E37_79B9) >> 24) as u8
}

impl Padded {
    /// Fill `buf` with the bytes at `offset` (the caller checked the range).
    pub fn fill(&self, offset: u64, buf: &mut [u8]) {
        let from_head = usize::try_from(offset)
            .ok()
            .and_then(|start| self.head.get(start..))
            .unwrap_or(&[]);
        let n = from_head.len().min(buf.len());
        buf[..n].copy_from_slice(&from_head[..n]);
        for (i, b) in buf.iter_mut().enumerate().skip(n) {
            *b = pattern(offset.wrapping_add(i as u64));
        }
    }
}

impl Source for Padded {
    fn size(&self) -> Result<u64> {
        Ok(self.size)
    }
    fn pread(&self, offset: u64, len: u32) -> Result<Vec<u8>> {
        let end = offset.saturating_add(u64::from(len)).min(self.size);
        let n = end.saturating_sub(offset) as usize;
        let mut buf = vec![0u8; n];
        self.fill(offset, &mut buf);
        Ok(buf)
    }
}

/// Recompute the EROFS superblock checksum (crc32c over the superblock block with the
/// checksum field zeroed), so that mutated images get past it and reach the parsers
/// behind it. The reader's check of the checksum itself is covered by unit tests.
pub fn reseal(meta: &mut [u8]) {
    erofs_image::reseal_superblock(meta);
}

/// The allocation bound of the running target, in bytes (set by [`bound_memory`]).
static LIMIT: AtomicUsize = AtomicUsize::new(usize::MAX);
/// Bytes the Rust code holds now.
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// Every Rust allocation of a fuzz target goes through this: when the bytes held at once
/// would pass the target's bound, it aborts with a message, which libFuzzer reports as a
/// crash and saves the input. (libFuzzer's own `-malloc_limit_mb` needs a sanitizer's
/// allocator, which a `--sanitizer none` build does not have.)
pub struct Bounded;

#[global_allocator]
static ALLOCATOR: Bounded = Bounded;

fn over_bound(size: usize, limit: usize) -> ! {
    let msg = format!(
        "erofs-fuzz: allocation of {size} bytes passes the bound of {} MiB held at once\n",
        limit >> 20
    );
    // Not through the allocator: write(2) of the bytes the format made, then abort.
    // SAFETY: the pointer and length describe `msg`, alive for the call.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
    }
    std::process::abort()
}

// SAFETY: every call forwards to `System` unchanged; the counters only observe.
unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.account(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.account(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            self.account(new_size - layout.size());
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        System.realloc(ptr, layout, new_size)
    }
}

impl Bounded {
    fn account(&self, size: usize) {
        let live = LIVE.fetch_add(size, Ordering::Relaxed).saturating_add(size);
        let limit = LIMIT.load(Ordering::Relaxed);
        if live > limit {
            // Lift the bound first, so that formatting the message can allocate.
            LIMIT.store(usize::MAX, Ordering::Relaxed);
            over_bound(size, limit);
        }
    }
}

/// Set the target's allocation bound: at most `mib` MiB held by Rust code at once.
/// A panic lifts the bound, so that its report (backtrace symbols) can be written.
pub fn bound_memory(mib: usize) {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            LIMIT.store(usize::MAX, Ordering::Relaxed);
            report(info);
        }));
    });
    LIMIT.store(mib << 20, Ordering::Relaxed);
}
