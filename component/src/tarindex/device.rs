//! The tar-index device: `meta ‖ uncompressed tar` (docs/formats.md, "The device").
//!
//! Once the metadata passes the layout checks (layout.rs), the tar must be at least as
//! long as device slot 0's block count says. The device size is then the metadata size
//! plus the exact tar size: never the reference's 8 EiB probe constant.

use crate::defaults::META_IN_MEMORY_LIMIT;
use crate::error::{Error, Kind, Result};
use crate::gzran::{GzRan, Options};
use crate::source::{RemoteStats, SizedSource};

use super::binding::{check_sample, SampleReport, DEFAULT_HEADER_SAMPLES};
use super::layout::{check_layout, Layout, BLOCK};
use super::policy::check_plain_head;

/// Where the tar bytes come from.
pub enum Tar {
    /// The blob is the uncompressed tar.
    Plain(SizedSource),
    /// The blob is gzip; the zinfo gives random access.
    Gzip(Box<GzRan>),
}

enum Meta {
    InMemory(Vec<u8>),
    Source(SizedSource),
}

pub struct Device {
    meta: Meta,
    tar: Tar,
    layout: Layout,
    tar_size: u64,
    /// The structured error of the last failed read by the EROFS reader, which can only
    /// carry a string across `ReadAt`; `fs.rs` takes it back (see `take_read_error`).
    read_error: Option<Error>,
    /// Tar reads made for header checks (binding.rs), and their bytes.
    check_reads: u64,
    check_bytes: u64,
    /// What the open-time header check did.
    sample: SampleReport,
}

impl Device {
    /// [`Device::open_with`] with the default header sample.
    pub fn open(
        meta: SizedSource,
        blob: SizedSource,
        zinfo: Option<SizedSource>,
        options: Options,
    ) -> Result<Self> {
        Self::open_with(meta, blob, zinfo, options, DEFAULT_HEADER_SAMPLES)
    }

    /// Open the device: check the metadata's layout, the zinfo and the tar size, then the
    /// tar headers of `header_samples` files spread over the tar (binding.rs; 0: none).
    pub fn open_with(
        meta: SizedSource,
        blob: SizedSource,
        zinfo: Option<SizedSource>,
        options: Options,
        header_samples: u32,
    ) -> Result<Self> {
        let layout = check_layout(&meta)?;
        let tar = match zinfo {
            Some(zinfo) => Tar::Gzip(Box::new(GzRan::open(blob, zinfo, options)?)),
            None => {
                check_plain_head(&blob.read_clamped(0, 2)?)?;
                Tar::Plain(blob)
            }
        };
        let tar_size = match &tar {
            Tar::Plain(blob) => blob.size,
            Tar::Gzip(gz) => gz.size(),
        };
        let needed = layout.tar_blocks.saturating_mul(BLOCK);
        if tar_size < needed {
            return Err(Error::bad(format!(
                "blob: the tar is {tar_size} bytes, but the metadata's device table addresses {} blocks ({needed} bytes)",
                layout.tar_blocks
            )));
        }
        let meta = if meta.size <= META_IN_MEMORY_LIMIT {
            Meta::InMemory(meta.read_exact(0, meta.size as usize)?)
        } else {
            Meta::Source(meta)
        };
        let mut device = Self {
            meta,
            tar,
            layout,
            tar_size,
            read_error: None,
            check_reads: 0,
            check_bytes: 0,
            sample: SampleReport::default(),
        };
        if header_samples > 0 {
            device.sample = device.check_sample_provisionally(header_samples)?;
            // Start serving cold, as without the check: its cursors began at checkpoints,
            // and a stream that took one over (or restarted at a point it learned, or
            // skipped a page it cached) would not decode its member from the start, so
            // it could not check the member's CRC-32 at the end.
            if let Tar::Gzip(gz) = &mut device.tar {
                gz.forget();
            }
        }
        Ok(device)
    }

    /// The open-time header sample (binding.rs), for a gzip blob read provisionally: its
    /// reads may restart at zinfo checkpoints not yet proven (proving them would decode
    /// the stream up to the last sampled file), and nothing they decode is kept. That is
    /// sound because the sample only refuses: every file's header is checked again, on
    /// proven bytes, before its first read. A provisional failure may be the zinfo's
    /// fault, so it is confirmed on proven bytes, whose error (a checkpoint's, or the
    /// same mismatch) is the one returned.
    fn check_sample_provisionally(&mut self, samples: u32) -> Result<SampleReport> {
        let image = erofs_image::Filesystem::open(self).map_err(|e| self.lift(e))?;
        let Tar::Gzip(gz) = &mut self.tar else {
            return check_sample(&image, self, samples);
        };
        gz.begin_provisional();
        let provisional = check_sample(&image, self, samples);
        if let Tar::Gzip(gz) = &mut self.tar {
            gz.end_provisional();
        }
        match provisional {
            Ok(report) => Ok(report),
            Err(e) if e.is(Kind::Io) => Err(e),
            Err(_) => check_sample(&image, self, samples),
        }
    }

    /// What the open-time header check did.
    pub fn sample_report(&self) -> SampleReport {
        self.sample
    }

    /// Tar reads made by header checks so far, and their bytes.
    pub fn check_reads(&self) -> (u64, u64) {
        (self.check_reads, self.check_bytes)
    }

    /// Tar offsets where a cold read starts cheaply: a gzip blob's checkpoints (a read
    /// elsewhere first decodes from the checkpoint before it); None for a plain tar,
    /// where every offset is as cheap.
    pub fn cheap_offsets(&self) -> Option<Vec<u64>> {
        match &self.tar {
            Tar::Plain(_) => None,
            Tar::Gzip(gz) => Some(gz.checkpoint_offsets()),
        }
    }

    /// pread calls made to the blob so far.
    pub fn blob_reads(&self) -> u64 {
        match &self.tar {
            Tar::Plain(blob) => blob.reads.get(),
            Tar::Gzip(gz) => gz.blob().reads.get(),
        }
    }

    /// Tell a remote blob which tar bytes `[at, at+len)` reads are about to need, so it
    /// asks for all of them at once ([`crate::source::Source::will_need`]). For a gzip
    /// blob these are the compressed spans a provisional decode from the zinfo's
    /// checkpoints reads.
    pub fn will_need_tar(&self, spans: &[(u64, u64)]) {
        match &self.tar {
            Tar::Plain(blob) => {
                let ranges: Vec<_> = spans
                    .iter()
                    .map(|&(at, len)| (at, at.saturating_add(len)))
                    .collect();
                blob.will_need(&ranges);
            }
            Tar::Gzip(gz) => {
                let ranges: Vec<_> = spans
                    .iter()
                    .map(|&(at, len)| gz.blob_span(at, len))
                    .collect();
                gz.blob().will_need(&ranges);
            }
        }
    }

    /// Up to `len` tar bytes at tar offset `at` (fewer at the tar's end), for the header
    /// checks, which count them.
    pub fn pread_tar(&mut self, at: u64, len: u64) -> Result<Vec<u8>> {
        let len = u32::try_from(len)
            .map_err(|_| Error::internal(format!("header check: a tar read of {len} bytes")))?;
        let bytes = self.pread(self.layout.meta_size.saturating_add(at), len)?;
        self.check_reads += 1;
        self.check_bytes += bytes.len() as u64;
        Ok(bytes)
    }

    /// The reader's error as the component's: the device's own error when a device read
    /// failed (the reader passes those up unchanged), else the reader's case.
    pub fn lift(&mut self, e: erofs_image::Error) -> Error {
        match self.take_read_error() {
            Some(original) if original.to_image() == e => original,
            _ => Error::from(e),
        }
    }

    /// The error behind the EROFS reader's last failed device read, if any; cleared.
    pub fn take_read_error(&mut self) -> Option<Error> {
        self.read_error.take()
    }

    pub fn meta_size(&self) -> u64 {
        self.layout.meta_size
    }

    pub fn tar_size(&self) -> u64 {
        self.tar_size
    }

    pub fn size(&self) -> u64 {
        self.layout.meta_size + self.tar_size
    }

    /// The remote fetcher's counters, when the blob is remote.
    pub fn remote_stats(&self) -> Option<RemoteStats> {
        match &self.tar {
            Tar::Plain(blob) => blob.remote_stats(),
            Tar::Gzip(gz) => gz.blob().remote_stats(),
        }
    }

    pub fn tar(&self) -> &Tar {
        &self.tar
    }

    pub fn tar_mut(&mut self) -> &mut Tar {
        &mut self.tar
    }

    /// Bytes `[offset, offset+len)` of the device, clamped to its end: the bytes that
    /// exist, then nothing.
    pub fn pread(&mut self, offset: u64, len: u32) -> Result<Vec<u8>> {
        let end = offset.saturating_add(len as u64).min(self.size());
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity((end - offset) as usize);
        let meta_end = self.layout.meta_size;
        if offset < meta_end {
            let upto = end.min(meta_end);
            match &self.meta {
                Meta::InMemory(bytes) => {
                    out.extend_from_slice(&bytes[offset as usize..upto as usize])
                }
                Meta::Source(meta) => {
                    out.extend_from_slice(&meta.read_exact(offset, (upto - offset) as usize)?)
                }
            }
        }
        if end > meta_end {
            let tar_from = offset.max(meta_end) - meta_end;
            let tar_len = end - meta_end - tar_from;
            match &mut self.tar {
                Tar::Plain(blob) => {
                    out.extend_from_slice(&blob.read_exact(tar_from, tar_len as usize)?)
                }
                Tar::Gzip(gz) => gz.read_into(tar_from, tar_len, &mut out)?,
            }
        }
        if out.len() as u64 != end - offset {
            // The pieces above are exact by construction: this is a bug, not bad input.
            return Err(Error::internal(format!(
                "device: read at {offset} produced {} bytes instead of {}",
                out.len(),
                end - offset
            )));
        }
        Ok(out)
    }
}

/// The EROFS reader reads the device through this.
impl erofs_image::ReadAt for Device {
    fn read_exact_at(
        &mut self,
        offset: u64,
        buf: &mut [u8],
    ) -> std::result::Result<(), erofs_image::Error> {
        let len = u32::try_from(buf.len()).map_err(|_| {
            erofs_image::Error::Range(format!("read of {} bytes is too large", buf.len()))
        })?;
        let bytes = self.pread(offset, len).map_err(|e| {
            let image = e.to_image();
            self.read_error = Some(e);
            image
        })?;
        if bytes.len() != buf.len() {
            return Err(erofs_image::Error::Corrupt(format!(
                "device read of {} bytes at {offset} passes the device end ({})",
                buf.len(),
                self.size()
            )));
        }
        buf.copy_from_slice(&bytes);
        Ok(())
    }

    fn size(&self) -> u64 {
        Device::size(self)
    }
}
