//! Helpers shared by the builder's unit tests: an in-memory device for erofs-image and a
//! plain tar entry.

use crate::build::tar::{Entry, Kind};

/// A whole device (`META ‖ tar`) in memory.
pub(crate) struct Mem(pub(crate) Vec<u8>);

impl erofs_image::ReadAt for Mem {
    fn read_exact_at(
        &mut self,
        offset: u64,
        buf: &mut [u8],
    ) -> std::result::Result<(), erofs_image::Error> {
        let start = offset as usize;
        let src = self
            .0
            .get(start..start + buf.len())
            .ok_or_else(|| erofs_image::Error::Io(format!("read past the end at {offset}")))?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
}

/// An entry of `kind` at `path`: mode 0644, owned by root, header and data at offset 0.
pub(crate) fn entry(path: &str, kind: Kind) -> Entry {
    Entry {
        offset: 0,
        path: path.as_bytes().to_vec(),
        link: Vec::new(),
        kind,
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: 1_700_000_000,
        mtime_nsec: 0,
        size: 0,
        data_offset: 0,
        dev_major: 0,
        dev_minor: 0,
        xattrs: Vec::new(),
    }
}
