//! Every default setting of the host, in one place, each with its reason. The clap
//! arguments take their `default_value` from here, and the code that computes a default
//! (the memory cap, the call deadline) uses the same constants. The host passes these
//! values to the component explicitly, so the component's own defaults do not have to
//! be repeated (or kept in step) here.

/// Decoded-byte cache in the component: a FUSE readahead window (1 MiB) and a few hot
/// files fit; 0 turns it off.
pub(crate) const DECODE_CACHE: &str = "32M";

/// Live inflater cursors per device: a few files read at once each keep their stream
/// position; more cost memory (a 32 KiB window and inflater state each) for little.
pub(crate) const MAX_CURSORS: u32 = 4;

/// Distance between checkpoints learned while decoding a gzip layer: a later read near
/// any point decodes at most 1 MiB from a checkpoint. 0 turns learning off.
pub(crate) const LEARN_INTERVAL: &str = "1M";

/// Files whose tar header is checked when a device opens: eight 512-byte tar reads
/// (well under a millisecond locally, a few range requests for a remote blob) catch a
/// META of another layer before anything is served.
pub(crate) const HEADER_SAMPLES: u32 = 8;

/// Memory for the component besides its decode cache: learned checkpoints (at most
/// 8 MiB), the cursors, and one 32 MiB read with its copies, with room to spare.
pub(crate) const MEMORY_BASE: u64 = 192 << 20;

/// The least memory the component needs besides its decode cache; a `--memory-limit`
/// below the cache plus this is refused before any work. Measured: 8 MiB is the least
/// with which `cat` of tests/fixtures/large runs without a cache (the instance, its
/// stack and one 4 MiB read with its copy); learned checkpoints may take 8 MiB more.
pub(crate) const MEMORY_FIXED: u64 = 16 << 20;

/// More memory for a remote blob: 32 MiB of fetched chunks, and a whole small blob from
/// a server that ignores Range.
pub(crate) const MEMORY_REMOTE_EXTRA: u64 = 128 << 20;

/// Deadline of one call for a local blob: a 32 MiB read takes well under a second, so a
/// guest still busy after 30 s is stuck.
pub(crate) const CALL_TIMEOUT_LOCAL_SECS: f64 = 30.0;

/// Deadline of one call for a remote blob: a read may wait for several retries with
/// backoff before it gives up by itself.
pub(crate) const CALL_TIMEOUT_REMOTE_SECS: f64 = 120.0;

/// The longest deadline accepted (a day): anything longer is a typo, not a setting.
pub(crate) const CALL_TIMEOUT_MAX_SECS: f64 = 86_400.0;

/// `index`: uncompressed bytes between zinfo checkpoints. A cold random read inflates (and
/// for a remote blob downloads) half a span on average: 1 MiB here against SOCI's 4 MiB
/// span; each checkpoint costs 32 KiB of zinfo, so 2 MiB keeps the zinfo at 1.6% of the
/// tar, and readers learn finer checkpoints where they actually read. nydus' zran uses at
/// most 2 MiB for the same trade-off.
pub(crate) const INDEX_SPAN: &str = "2M";

/// `index`: memory for the component: the tree of a few hundred thousand entries (names
/// and metadata, never file data), the zinfo (32 KiB per checkpoint: 7 MiB for a 450 MB
/// tar) and the copies of both outputs on their way out.
pub(crate) const INDEX_MEMORY: u64 = 256 << 20;

/// Bound of the on-disk range cache (`--cache-dir`): a few large layers.
pub(crate) const RANGE_CACHE_SIZE: &str = "1G";

/// Whole image: the background fetch's bandwidth cap, bytes a second. 4 MiB/s is a third
/// of a 100 Mbit/s link and 3% of 1 Gbit/s: on the slow links where a lazy mount matters
/// most, the foreground keeps two thirds even while it reads, and the rest of an image
/// of a few hundred MB still arrives within minutes. It also pauses while the foreground
/// reads.
pub(crate) const BACKGROUND_FETCH_RATE: &str = "4M";

/// `mount`: sandboxed instances. A sequential reader through two instances decodes the
/// stream twice (measured: a tar of the tree 2x slower); more pay off only for
/// independent random readers.
pub(crate) const MOUNT_INSTANCES: usize = 1;

/// `serve-nbd` and `--backend nbd`: sandboxed instances. Independent streams (other
/// files, other clients) run in parallel, while one sequential stream stays on one
/// instance (the device pool routes by affinity), so a gzip layer is never decoded twice.
pub(crate) const NBD_INSTANCES: usize = 4;

/// `serve-nbd`: reader threads per client connection, enough to overlap a pipelined
/// client's requests.
pub(crate) const NBD_WORKERS: usize = 4;

/// `umount`: seconds to wait for the server to exit after SIGTERM; teardown is a few
/// unmounts, well under a second, so 10 s means it is stuck.
pub(crate) const UMOUNT_TIMEOUT_SECS: u64 = 10;

/// `bench`: bytes per read, the size of a typical small-file or page-cache read.
pub(crate) const BENCH_IO_SIZE: &str = "32K";

/// `bench --pattern random`: reads per run, enough for stable percentiles.
pub(crate) const BENCH_RANDOM_COUNT: u64 = 2000;

/// `bench`: the random pattern's seed, fixed so runs compare.
pub(crate) const BENCH_SEED: u64 = 1;

/// Memory cap of the one call that lists an image's layers: a 4 MiB manifest (the
/// largest the component reads), its parse and the HTTP buffers fit well inside 64 MiB.
pub(crate) const IMAGE_LIST_MEMORY: u64 = 64 << 20;

/// Deadline of the call that lists an image's layers: as for any remote call (token
/// round trips, an index and a manifest, each with retries and backoff).
pub(crate) const IMAGE_LIST_TIMEOUT_SECS: f64 = CALL_TIMEOUT_REMOTE_SECS;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::device_args::parse_size;

    #[test]
    fn size_defaults_parse() {
        assert_eq!(parse_size(DECODE_CACHE), Ok(32 << 20));
        assert_eq!(parse_size(LEARN_INTERVAL), Ok(1 << 20));
        assert_eq!(parse_size(RANGE_CACHE_SIZE), Ok(1 << 30));
        assert_eq!(parse_size(BENCH_IO_SIZE), Ok(32 << 10));
        assert_eq!(parse_size(INDEX_SPAN), Ok(2 << 20));
    }
}
