//! Every tunable default of the component in one place, each with its reason. The WIT
//! documents the ones an embedder can change (`open-options`, `remote-options`); hosts
//! may use these constants instead of repeating the numbers.

// ---- gzip random access (gzran::Options, WIT `open-options`) ----

/// Bytes of decoded tar pages kept: 32 MiB is a FUSE readahead window and a few hot
/// files, in 1,024 pages, for about 2% of a 2 GiB memory cap.
pub const CACHE_BYTES: u64 = 32 << 20;

/// Live inflater cursors per device: 4 is enough for a few files read at once (each costs
/// ~300 KiB: zlib window, input buffer, two pages); a fifth stream recycles the least
/// recently used.
pub const MAX_CURSORS: usize = 4;

/// Uncompressed distance between learned checkpoints: 1 MiB measured ~4x faster random
/// reads than the zinfo's 4 MiB spacing, for 32 KiB of memory per MiB of tar.
pub const LEARN_INTERVAL: u64 = 1 << 20;

/// Learned checkpoints kept: 256 is at most 8 MiB of windows (256 MiB of tar covered).
pub const MAX_LEARNED: usize = 256;

/// A live cursor is reused for a target this far ahead of it rather than restarting at a
/// nearer checkpoint: a restart costs a dictionary load and an input refill, about as
/// much as inflating 64 KiB.
pub const RESTART_COST: u64 = 64 * 1024;

/// Compressed bytes read from the blob per refill: 256 KiB of deflate input is about
/// 0.5-1 ms of inflate work, large enough to amortise a host call, small enough for
/// random reads.
pub const INPUT_READ_SIZE: usize = 256 * 1024;

/// Consecutive inflate calls that may make no progress (no input consumed, no output
/// produced, room on both sides) before the stream is refused. zlib can return once
/// without progress while it settles its bit buffer at a block end; a second is allowed
/// for the member switch; a third means the stream is stuck and would loop forever.
pub const MAX_INFLATE_STALLS: u32 = 2;

// ---- the device and the filesystem ----

/// Metadata images up to this size are read into memory once at open, so filesystem
/// operations cost no host call for metadata. 64 MiB covers layers with about a million
/// inodes; larger ones are read through the vfile as needed.
pub const META_IN_MEMORY_LIMIT: u64 = 64 << 20;

/// The most directory entries one `readdir` call returns, whatever the caller asks: a
/// FUSE readdir buffer holds about 100-200; this bounds the reply's memory.
pub const MAX_READDIR: usize = 4096;

// ---- the remote client (remote::RemoteOptions, WIT `remote-options`) ----

/// Bytes per cached chunk; requests are aligned to chunks. 1 MiB: a request for 1 MiB
/// costs barely more than one for 64 KiB at usual round-trip times, and it holds about
/// one zinfo span (4 MiB of tar) of compressed data.
pub const CHUNK_SIZE: u64 = 1 << 20;

/// Largest readahead window of a sequential stream (it starts at four chunks and doubles
/// up to this). 16 MiB: tens of milliseconds of transfer on a fast link, so under latency a
/// stream pays one round trip per several spans. Capped at half the chunk cache.
pub const READAHEAD_MAX: u64 = 16 << 20;

/// Bytes of fetched chunks kept (least recently used out first). 32 MiB: two full
/// readahead windows, so prefetched chunks survive interleaved streams. It counts against
/// the instance's memory limit. 0 turns caching and readahead off.
pub const CHUNK_CACHE_BYTES: u64 = 32 << 20;

/// Attempts after the first, for connection errors, 408/429/5xx and responses that fail
/// their checks. 4: five attempts with about 1.5 s of backoff in all, well inside a 30 s
/// call deadline.
pub const MAX_RETRIES: u32 = 4;

/// First backoff, doubled for each further retry. 100 ms: long enough for a restarting
/// proxy or a reset connection pool, short next to a human's patience.
pub const BACKOFF_INITIAL_MS: u64 = 100;

/// Backoff ceiling. 2 s: retries never stall a read for long.
pub const BACKOFF_MAX_MS: u64 = 2000;

/// A server that ignores Range sends the whole blob; a blob up to this size is then kept
/// in memory once and served from there. 64 MiB: most layers such a server would hold, at
/// a bounded memory cost. Larger blobs fail with a clear error instead of being
/// downloaded again on every read.
pub const FULL_BODY_LIMIT: u64 = 64 << 20;

/// Redirects followed per request. 5: registries redirect once, to blob storage; this
/// leaves room for a CDN hop without allowing loops.
pub const MAX_REDIRECTS: u32 = 5;

/// Largest chunk size accepted. 64 MiB: one chunk must fit the cache many times over
/// and a single response must stay a bounded allocation.
pub const MAX_CHUNK_SIZE: u64 = 64 << 20;

/// Largest manifest or index read. 4 MiB: the size the distribution spec asks registries
/// to accept.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
