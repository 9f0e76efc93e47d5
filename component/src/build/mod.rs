//! The index builder: from a layer blob (gzip or plain tar), streamed once in pieces of any
//! size, build the EROFS tar-index metadata image (`META`; `docs/formats.md`, *Tar-index
//! EROFS layout*) and, for gzip, the zinfo checkpoint index (`ZINFO`; *zinfo* there).
//! I/O-free: the caller feeds bytes.
//!
//! ```text
//! blob bytes ─► sha256(blob) ─► ZinfoWriter (inflate, checkpoints) ─► sha256(tar)
//!                                                                  └► TarReader ─► TreeBuilder
//! finish(): TreeBuilder::finish ─► erofs_writer::write_image ─► META
//! ```
//!
//! Memory: the tar is never buffered. What is kept is the tree (names and metadata, no
//! file data), extension headers of one member at a time (capped at 8 MiB), the zinfo
//! records (32 KiB per checkpoint: 7 MiB for a 450 MB tar at the default span), and a
//! 256 KiB inflate buffer.

pub mod erofs_writer;
pub mod session;
pub mod tar;
pub mod tree;
pub mod xattr;
pub mod zinfo_writer;

#[cfg(test)]
mod fixture_tests;
#[cfg(test)]
mod indexer_tests;
#[cfg(test)]
mod test_support;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use tar::TarReader;
use tree::{TreeBuilder, TreeOptions};
use zinfo_writer::ZinfoWriter;

/// Default distance between zinfo checkpoints: 2 MiB of uncompressed tar.
///
/// A cold random read restarts at the checkpoint before it, so it inflates (and, for a
/// remote blob, downloads) on average half a span: 1 MiB here against SOCI's 4 MiB span,
/// half the latency of a first read of a file or a lazy fetch. Each checkpoint costs
/// 32 KiB of zinfo, so 2 MiB keeps the zinfo at 1.6% of the tar (7 MiB for a 450 MB
/// layer), which is fetched whole at mount; 1 MiB would double that for gains the reader
/// already gets by learning 1 MiB checkpoints in the areas actually read. nydus' zran
/// uses at most 2 MiB for the same trade-off.
pub const DEFAULT_SPAN: u64 = 2 << 20;

/// Smallest span accepted: each checkpoint stores a 32 KiB window, so below 64 KiB the
/// zinfo would be over half the size of the tar it indexes.
pub const MIN_SPAN: u64 = 64 << 10;

/// What the blob is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BlobFormat {
    /// Decide from the first two bytes (gzip magic 1f 8b, else tar).
    #[default]
    Detect,
    Gzip,
    Tar,
}

#[derive(Debug, Clone, Copy)]
pub struct IndexOptions {
    pub format: BlobFormat,
    /// Translate aufs whiteouts (`--aufs`).
    pub aufs: bool,
    /// zinfo span in uncompressed bytes (gzip only).
    pub span: u64,
    /// The image UUID; None derives it from the blob's SHA-256.
    pub uuid: Option<[u8; 16]>,
}

impl Default for IndexOptions {
    fn default() -> Self {
        Self {
            format: BlobFormat::Detect,
            aufs: false,
            span: DEFAULT_SPAN,
            uuid: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexStats {
    /// Tar members read (extension headers not counted).
    pub entries: u64,
    /// Inodes in the image.
    pub inodes: u64,
    pub blob_size: u64,
    /// Uncompressed stream size (the whole tar, with its padding).
    pub tar_size: u64,
    /// Tar bytes parsed, through the end-of-archive marker (the device slot's extent).
    pub tar_parsed: u64,
    pub blob_sha256: [u8; 32],
    /// The layer's diff_id.
    pub tar_sha256: [u8; 32],
    pub checkpoints: u32,
    pub span: u64,
    /// Things skipped on purpose (volume labels, aufs internals), for the report.
    pub notes: Vec<String>,
}

#[derive(Debug)]
pub struct Index {
    pub meta: Vec<u8>,
    /// Present exactly when the blob was gzip.
    pub zinfo: Option<Vec<u8>>,
    pub stats: IndexStats,
}

enum Decoder {
    /// Waiting for the first two bytes to decide.
    Detect(Vec<u8>),
    Gzip(Box<ZinfoWriter>),
    Tar,
}

/// The streaming builder. Call [`Indexer::write`] with consecutive pieces of the blob,
/// then [`Indexer::finish`]. After an error every later call returns that error.
pub struct Indexer {
    options: IndexOptions,
    decoder: Decoder,
    parts: Parts,
    failed: Option<Error>,
}

/// The consumers of the uncompressed stream, apart from the decoder.
struct Parts {
    tar: TarReader,
    tree: TreeBuilder,
    tar_hash: Sha256,
    tar_size: u64,
    blob_hash: Sha256,
    blob_size: u64,
}

impl Parts {
    /// The next tar bytes. `hash`: add them to the tar digest (a plain tar's digest is
    /// the blob's, computed once: SHA-256 is the costliest step in the sandbox).
    fn uncompressed(&mut self, bytes: &[u8], hash: bool) -> Result<()> {
        if hash {
            self.tar_hash.update(bytes);
        }
        self.tar_size += bytes.len() as u64;
        let tree = &mut self.tree;
        self.tar.feed(bytes, &mut |entry| tree.add(entry))
    }
}

impl Indexer {
    pub fn new(options: IndexOptions) -> Result<Self> {
        if options.span < MIN_SPAN {
            return Err(Error::bad(format!(
                "index: span {} is below the minimum of {MIN_SPAN} bytes",
                options.span
            )));
        }
        let decoder = match options.format {
            BlobFormat::Detect => Decoder::Detect(Vec::new()),
            BlobFormat::Gzip => Decoder::Gzip(Box::new(ZinfoWriter::new(options.span)?)),
            BlobFormat::Tar => Decoder::Tar,
        };
        Ok(Self {
            options,
            decoder,
            parts: Parts {
                tar: TarReader::new(),
                tree: TreeBuilder::new(TreeOptions { aufs: options.aufs }),
                tar_hash: Sha256::new(),
                tar_size: 0,
                blob_hash: Sha256::new(),
                blob_size: 0,
            },
            failed: None,
        })
    }

    /// Blob bytes fed, uncompressed tar bytes produced, and tar members read so far.
    pub fn progress(&self) -> (u64, u64, u64) {
        (
            self.parts.blob_size,
            self.parts.tar_size,
            self.parts.tar.entries,
        )
    }

    /// What the blob is, once known: [`BlobFormat::Detect`] until its first two bytes
    /// have come (or the caller named the format).
    pub fn format(&self) -> BlobFormat {
        match self.decoder {
            Decoder::Detect(_) => BlobFormat::Detect,
            Decoder::Gzip(_) => BlobFormat::Gzip,
            Decoder::Tar => BlobFormat::Tar,
        }
    }

    /// Feed the next piece of the blob.
    pub fn write(&mut self, chunk: &[u8]) -> Result<()> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let result = self.write_inner(chunk);
        if let Err(e) = &result {
            self.failed = Some(e.clone());
        }
        result
    }

    fn write_inner(&mut self, chunk: &[u8]) -> Result<()> {
        self.parts.blob_hash.update(chunk);
        self.parts.blob_size += chunk.len() as u64;
        if let Decoder::Detect(head) = &mut self.decoder {
            head.extend_from_slice(chunk);
            if head.len() < 2 {
                return Ok(());
            }
            let head = std::mem::take(head);
            self.decoder = self.decide(&head)?;
            return self.decode(&head);
        }
        self.decode(chunk)
    }

    fn decide(&self, head: &[u8]) -> Result<Decoder> {
        Ok(if head.starts_with(&[0x1f, 0x8b]) {
            Decoder::Gzip(Box::new(ZinfoWriter::new(self.options.span)?))
        } else {
            Decoder::Tar
        })
    }

    fn decode(&mut self, bytes: &[u8]) -> Result<()> {
        let parts = &mut self.parts;
        match &mut self.decoder {
            Decoder::Detect(_) => Ok(()),
            Decoder::Tar => parts.uncompressed(bytes, false),
            Decoder::Gzip(z) => z.feed(bytes, &mut |out| parts.uncompressed(out, true)),
        }
    }

    /// The blob has ended: check it is complete and build the outputs.
    pub fn finish(mut self) -> Result<Index> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        if let Decoder::Detect(head) = &mut self.decoder {
            let head = std::mem::take(head);
            self.decoder = self.decide(&head)?;
            self.decode(&head)?;
        }
        let plain = matches!(self.decoder, Decoder::Tar);
        let (zinfo, checkpoints) = match self.decoder {
            Decoder::Gzip(z) => {
                let (file, _) = z.finish()?;
                let count = file
                    .get(0..4)
                    .and_then(|b| <[u8; 4]>::try_from(b).ok())
                    .map_or(0, u32::from_le_bytes);
                (Some(file), count)
            }
            _ => (None, 0),
        };
        let parts = self.parts;
        let tar_parsed = parts.tar.finish()?;
        let entries = parts.tar.entries;
        let mut notes = parts.tar.notes.clone();
        if parts.tree.absolute_names > 0 {
            notes.push(format!(
                "tar: {} absolute member names were made relative to the root",
                parts.tree.absolute_names
            ));
        }
        if parts.tree.dropped > 0 {
            notes.push(format!(
                "aufs: {} `.wh..wh.*` internal entries dropped",
                parts.tree.dropped
            ));
        }
        let tree = parts.tree.finish()?;
        let blob_sha256: [u8; 32] = parts.blob_hash.finalize().into();
        // A plain tar is the blob: one digest for both.
        let tar_sha256: [u8; 32] = if plain {
            blob_sha256
        } else {
            parts.tar_hash.finalize().into()
        };
        let uuid = self.options.uuid.unwrap_or_else(|| uuid_from(&blob_sha256));
        let (meta, inodes) = erofs_writer::write_image(&tree, tar_parsed, uuid)?;
        Ok(Index {
            meta,
            zinfo,
            stats: IndexStats {
                entries,
                inodes,
                blob_size: parts.blob_size,
                tar_size: parts.tar_size,
                tar_parsed,
                blob_sha256,
                tar_sha256,
                checkpoints,
                span: self.options.span,
                notes,
            },
        })
    }
}

/// A version-8 (custom) RFC 9562 UUID from the first 16 bytes of the blob digest.
pub fn uuid_from(digest: &[u8; 32]) -> [u8; 16] {
    let mut u = [0u8; 16];
    u.copy_from_slice(&digest[..16]);
    u[6] = (u[6] & 0x0f) | 0x80;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}

/// Index a whole blob held in memory (tests and small callers).
pub fn index_bytes(blob: &[u8], options: IndexOptions) -> Result<Index> {
    let mut indexer = Indexer::new(options)?;
    for piece in blob.chunks(1 << 20) {
        indexer.write(piece)?;
    }
    indexer.finish()
}
