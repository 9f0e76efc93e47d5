//! The WIT glue (wasm32 only): imported `vfile`s become [`Source`]s, and the exported
//! `tarindex` interface wraps [`Device`]. No logic lives here.

use std::cell::RefCell;

use crate::device::{Device, Tar};
use crate::error::Error;
use crate::gzran::Options;
use crate::source::{SizedSource, Source};

wit_bindgen::generate!({
    path: "../wit",
    world: "reader",
});

use erofs::reader::types::Error as WitError;
use erofs::reader::vfile::Vfile;
use exports::erofs::reader::tarindex::{self, DeviceStats, GuestDevice, OpenOptions};

impl From<Error> for WitError {
    fn from(e: Error) -> Self {
        match e {
            Error::BadInput(m) => WitError::BadInput(m),
            Error::Io(m) => WitError::Io(m),
            Error::OutOfRange(m) => WitError::OutOfRange(m),
            Error::Unsupported(m) => WitError::Unsupported(m),
        }
    }
}

fn from_wit(e: WitError) -> Error {
    match e {
        WitError::BadInput(m) => Error::BadInput(m),
        WitError::Io(m) => Error::Io(m),
        WitError::OutOfRange(m) => Error::OutOfRange(m),
        WitError::Unsupported(m) => Error::Unsupported(m),
    }
}

/// An embedder's vfile seen as a [`Source`].
struct ImportedFile(Vfile);

impl Source for ImportedFile {
    fn size(&self) -> crate::error::Result<u64> {
        self.0.size().map_err(from_wit)
    }
    fn pread(&self, offset: u64, len: u32) -> crate::error::Result<Vec<u8>> {
        self.0.pread(offset, len).map_err(from_wit)
    }
}

struct Component;

impl tarindex::Guest for Component {
    type Device = DeviceResource;

    fn open(
        meta: Vfile,
        blob: Vfile,
        zinfo: Option<Vfile>,
        options: OpenOptions,
    ) -> Result<tarindex::Device, WitError> {
        let defaults = Options::default();
        let options = Options {
            cache_bytes: options.cache_bytes.unwrap_or(defaults.cache_bytes),
            max_cursors: options
                .max_cursors
                .map_or(defaults.max_cursors, |n| n as usize),
            learn_interval: options.learn_interval.unwrap_or(defaults.learn_interval),
            max_learned: options
                .max_learned
                .map_or(defaults.max_learned, |n| n as usize),
        };
        let meta = SizedSource::new("meta", Box::new(ImportedFile(meta)))?;
        let blob = SizedSource::new("blob", Box::new(ImportedFile(blob)))?;
        let zinfo = zinfo
            .map(|z| SizedSource::new("zinfo", Box::new(ImportedFile(z))))
            .transpose()?;
        let device = Device::open(meta, blob, zinfo, options)?;
        Ok(tarindex::Device::new(DeviceResource(RefCell::new(device))))
    }
}

struct DeviceResource(RefCell<Device>);

impl GuestDevice for DeviceResource {
    fn size(&self) -> u64 {
        self.0.borrow().size()
    }

    fn meta_size(&self) -> u64 {
        self.0.borrow().meta_size()
    }

    fn pread(&self, offset: u64, len: u32) -> Result<Vec<u8>, WitError> {
        Ok(self.0.borrow_mut().pread(offset, len)?)
    }

    fn stats(&self) -> DeviceStats {
        let device = self.0.borrow();
        match device.tar() {
            Tar::Plain(blob) => DeviceStats {
                bytes_decoded: 0,
                cache_hits: 0,
                cache_misses: 0,
                blob_bytes_read: blob.bytes_read.get(),
                blob_reads: blob.reads.get(),
                cursor_starts: 0,
                learned_starts: 0,
                learned_checkpoints: 0,
            },
            Tar::Gzip(gz) => DeviceStats {
                bytes_decoded: gz.decoded(),
                cache_hits: gz.counters.cache_hits,
                cache_misses: gz.counters.cache_misses,
                blob_bytes_read: gz.blob().bytes_read.get(),
                blob_reads: gz.blob().reads.get(),
                cursor_starts: gz.counters.cursor_starts,
                learned_starts: gz.counters.learned_starts,
                learned_checkpoints: gz.learned_count() as u32,
            },
        }
    }
}

export!(Component);
