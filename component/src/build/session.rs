//! One build as the WIT `builder.indexer` sees it: an [`Indexer`] with the checks around
//! it that do not belong to the tar or the writers. I/O-free like the rest of `build/`:
//! a remote blob comes in as a [`Source`] (the component's network client), read front to
//! back.
//!
//! - the options from the embedder (span, a 16-byte UUID, an expected digest), checked
//!   before any byte is read;
//! - `pump` for a source the component reads itself, a piece at a time, so that each call
//!   into the sandbox stays short (the embedder's per-call deadline) and reports progress;
//! - the blob digest, compared at `finish` with the one the manifest or the caller named.
//!   The digest is computed over exactly the bytes that were indexed, so a blob that does
//!   not match its manifest never yields an index.

use super::{BlobFormat, Index, IndexOptions, Indexer};
use crate::error::{Error, Result};
use crate::remote::reference::validate_digest;
use crate::source::Source;

/// The options as the WIT gives them: everything optional.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    pub format: BlobFormat,
    pub aufs: Option<bool>,
    pub span: Option<u64>,
    pub uuid: Option<Vec<u8>>,
    pub blob_digest: Option<String>,
}

/// How far a build has come (the WIT `index-progress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub blob_bytes: u64,
    pub blob_size: Option<u64>,
    pub tar_bytes: u64,
    pub entries: u64,
    /// Whether the blob is gzip, once known.
    pub gzip: Option<bool>,
    pub done: bool,
}

/// A blob the component reads itself, and how far it has read.
struct Pull {
    source: Box<dyn Source>,
    size: u64,
    offset: u64,
}

pub struct Session {
    /// `None` once `finish` ran: the session is spent.
    indexer: Option<Indexer>,
    expected_digest: Option<String>,
    pull: Option<Pull>,
}

impl Session {
    /// A build fed with [`Session::push`].
    pub fn new(options: SessionOptions) -> Result<Self> {
        let expected_digest = options
            .blob_digest
            .as_deref()
            .map(|d| validate_digest(d).map_err(|e| e.context("index: blob-digest option")))
            .transpose()?;
        let uuid = match &options.uuid {
            None => None,
            Some(bytes) => Some(<[u8; 16]>::try_from(bytes.as_slice()).map_err(|_| {
                Error::bad(format!(
                    "index: the uuid option has {} bytes; a UUID has 16",
                    bytes.len()
                ))
            })?),
        };
        let defaults = IndexOptions::default();
        let indexer = Indexer::new(IndexOptions {
            format: options.format,
            aufs: options.aufs.unwrap_or(defaults.aufs),
            span: options.span.unwrap_or(defaults.span),
            uuid,
        })?;
        Ok(Self {
            indexer: Some(indexer),
            expected_digest,
            pull: None,
        })
    }

    /// A build that reads `source` itself with [`Session::pump`]. `digest` is the digest
    /// the source's own metadata names (an OCI layer's, from its manifest); when the
    /// options name one too, both must agree.
    pub fn pulling(
        mut options: SessionOptions,
        source: Box<dyn Source>,
        digest: Option<String>,
    ) -> Result<Self> {
        if let (Some(asked), Some(found)) = (&options.blob_digest, &digest) {
            if asked != found {
                return Err(Error::bad(format!(
                    "index: the blob-digest option {asked} is not the layer's digest {found}"
                )));
            }
        }
        if options.blob_digest.is_none() {
            options.blob_digest = digest;
        }
        let size = source.size()?;
        let mut session = Self::new(options)?;
        session.pull = Some(Pull {
            source,
            size,
            offset: 0,
        });
        Ok(session)
    }

    fn indexer(&mut self) -> Result<&mut Indexer> {
        self.indexer
            .as_mut()
            .ok_or_else(|| Error::bad("index: this indexer has finished; create a new one"))
    }

    /// Feed the next piece of the blob.
    pub fn push(&mut self, chunk: &[u8]) -> Result<()> {
        if self.pull.is_some() {
            return Err(Error::unsupported(
                "index: this indexer fetches its blob itself; call pump, not push",
            ));
        }
        self.indexer()?.write(chunk)
    }

    /// Read up to `max_bytes` more of a pulled blob and feed them.
    pub fn pump(&mut self, max_bytes: u64) -> Result<Progress> {
        let Some(mut pull) = self.pull.take() else {
            return Err(Error::unsupported(
                "index: this indexer is fed by push; pump is for remote blobs",
            ));
        };
        let result = self.pump_from(&mut pull, max_bytes);
        self.pull = Some(pull);
        result?;
        Ok(self.progress())
    }

    fn pump_from(&mut self, pull: &mut Pull, max_bytes: u64) -> Result<()> {
        // Pieces of at most 1 MiB: the unit the network client fetches and caches in.
        const PIECE: u64 = 1 << 20;
        let end = pull.offset.saturating_add(max_bytes).min(pull.size);
        while pull.offset < end {
            let want = (end - pull.offset).min(PIECE) as u32;
            let bytes = pull.source.pread(pull.offset, want)?;
            if bytes.is_empty() {
                return Err(Error::io(format!(
                    "blob: no bytes at offset {} before its end at {}",
                    pull.offset, pull.size
                ))
                .in_file("blob")
                .at(pull.offset));
            }
            // State: `bytes` are the blob's bytes [offset, offset + len); the indexer has
            // seen exactly [0, offset).
            self.indexer()?.write(&bytes)?;
            pull.offset += bytes.len() as u64;
        }
        Ok(())
    }

    pub fn progress(&self) -> Progress {
        let (blob_bytes, tar_bytes, entries) =
            self.indexer.as_ref().map_or((0, 0, 0), Indexer::progress);
        let gzip = match self.indexer.as_ref().map(Indexer::format) {
            Some(BlobFormat::Gzip) => Some(true),
            Some(BlobFormat::Tar) => Some(false),
            Some(BlobFormat::Detect) | None => None,
        };
        let (blob_size, done) = match &self.pull {
            Some(p) => (Some(p.size), p.offset >= p.size),
            None => (None, false),
        };
        Progress {
            blob_bytes,
            blob_size,
            tar_bytes,
            entries,
            gzip,
            done,
        }
    }

    /// The blob has ended: build the outputs, after the completeness and digest checks.
    pub fn finish(&mut self) -> Result<Index> {
        let indexer = self
            .indexer
            .take()
            .ok_or_else(|| Error::bad("index: this indexer has finished already"))?;
        if let Some(p) = &self.pull {
            if p.offset < p.size {
                return Err(Error::bad(format!(
                    "index: finish after {} of the blob's {} bytes; pump until done",
                    p.offset, p.size
                )));
            }
        }
        let index = indexer.finish()?;
        if let Some(expected) = &self.expected_digest {
            let got = digest_text(&index.stats.blob_sha256);
            if &got != expected {
                return Err(Error::bad(format!(
                    "blob: its digest is {got}, not {expected}: the blob is not the one named"
                ))
                .in_file("blob"));
            }
        }
        Ok(index)
    }
}

/// `sha256:<64 lower-case hex digits>`.
pub fn digest_text(sha256: &[u8; 32]) -> String {
    let mut s = String::with_capacity(71);
    s.push_str("sha256:");
    for b in sha256 {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::tar::tests::{end, member};
    use crate::build::zinfo_writer::tests::gzip;
    use crate::error::Kind;
    use crate::source::MemSource;

    fn blob() -> Vec<u8> {
        let mut tar = member("./a", b'0', &[7u8; 3000], "");
        tar.extend(end());
        gzip(&tar)
    }

    fn sha(bytes: &[u8]) -> String {
        use sha2::Digest;
        digest_text(&sha2::Sha256::digest(bytes).into())
    }

    #[test]
    fn push_and_pump_give_the_same_index() {
        let blob = blob();
        let mut pushed = Session::new(SessionOptions::default()).unwrap();
        for piece in blob.chunks(100) {
            pushed.push(piece).unwrap();
        }
        let pushed = pushed.finish().unwrap();
        let mut pulled = Session::pulling(
            SessionOptions::default(),
            Box::new(MemSource(blob.clone())),
            Some(sha(&blob)),
        )
        .unwrap();
        assert!(!pulled.progress().done);
        let p = pulled.pump(10).unwrap();
        assert_eq!(
            (p.blob_bytes, p.blob_size, p.done),
            (10, Some(blob.len() as u64), false)
        );
        assert!(pulled.finish().is_err(), "finish before the end is refused");
        let mut pulled = Session::pulling(
            SessionOptions::default(),
            Box::new(MemSource(blob.clone())),
            Some(sha(&blob)),
        )
        .unwrap();
        while !pulled.pump(1 << 20).unwrap().done {}
        let pulled = pulled.finish().unwrap();
        assert_eq!(pushed.meta, pulled.meta);
        assert_eq!(pushed.zinfo, pulled.zinfo);
    }

    #[test]
    fn a_wrong_digest_gives_no_index() {
        let blob = blob();
        let wrong = sha(b"something else");
        let mut s = Session::pulling(
            SessionOptions::default(),
            Box::new(MemSource(blob.clone())),
            Some(wrong.clone()),
        )
        .unwrap();
        s.pump(u64::MAX).unwrap();
        let e = s.finish().unwrap_err();
        assert!(e.to_string().contains(&wrong), "{e}");
        let options = SessionOptions {
            blob_digest: Some(wrong),
            ..Default::default()
        };
        let mut s = Session::new(options.clone()).unwrap();
        s.push(&blob).unwrap();
        assert!(s.finish().is_err());
        // The option and the manifest disagree: refused before any byte is read.
        assert!(
            Session::pulling(options, Box::new(MemSource(blob.clone())), Some(sha(&blob))).is_err()
        );
    }

    #[test]
    fn options_are_checked() {
        let bad_uuid = SessionOptions {
            uuid: Some(vec![0; 15]),
            ..Default::default()
        };
        assert!(Session::new(bad_uuid).is_err());
        let bad_digest = SessionOptions {
            blob_digest: Some("md5:00".into()),
            ..Default::default()
        };
        assert!(Session::new(bad_digest).is_err());
        let small_span = SessionOptions {
            span: Some(4096),
            ..Default::default()
        };
        assert!(Session::new(small_span).is_err());
        let uuid = SessionOptions {
            uuid: Some((1..=16).collect()),
            ..Default::default()
        };
        let mut s = Session::new(uuid).unwrap();
        s.push(&blob()).unwrap();
        let index = s.finish().unwrap();
        assert_eq!(
            &index.meta[1024 + 48..1024 + 64],
            &(1..=16).collect::<Vec<u8>>()[..]
        );
    }

    #[test]
    fn misuse_is_an_error_not_a_panic() {
        let mut s = Session::new(SessionOptions::default()).unwrap();
        assert_eq!(s.pump(1).unwrap_err().kind, Kind::Unsupported);
        s.push(&blob()).unwrap();
        s.finish().unwrap();
        assert!(s.push(b"x").is_err());
        assert!(s.finish().is_err());
        let mut p =
            Session::pulling(SessionOptions::default(), Box::new(MemSource(blob())), None).unwrap();
        assert_eq!(p.push(b"x").unwrap_err().kind, Kind::Unsupported);
    }
}
