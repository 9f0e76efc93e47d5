//! The EROFS filesystem on a device: `erofs_image::Filesystem` (the parser) plus the
//! device it reads through. The bindings layer exports this as the WIT `filesystem`.
//!
//! Errors come back as the component's [`Error`]: the EROFS reader's own cases keep their
//! meaning (`Corrupt` stays corrupt), and a failed device read is the device's original
//! structured error, not its string copy.
//!
//! A regular file is read only once its tar header has vouched for it
//! ([`FirstReads`]): a file the index points at the wrong bytes fails with a
//! `mismatch` error, the others read on.

use erofs_image::{Attr, DirEntry, FileType, Filesystem as Image, VerifyLimits, VerifyReport};

use crate::defaults::MAX_READDIR;
use crate::error::Result;
use crate::tarindex::binding::check_all;
use crate::tarindex::{Device, FirstReads};

pub struct Filesystem {
    image: Image,
    device: Device,
    first_reads: FirstReads,
}

impl Filesystem {
    pub fn open(mut device: Device) -> Result<Self> {
        let image = Image::open(&mut device).map_err(|e| device.lift(e))?;
        let first_reads = FirstReads::new(device.meta_size());
        Ok(Self {
            image,
            device,
            first_reads,
        })
    }

    pub fn device(&mut self) -> &mut Device {
        &mut self.device
    }

    pub fn device_ref(&self) -> &Device {
        &self.device
    }

    pub fn root(&self) -> u64 {
        self.image.root_nid()
    }

    /// Run one reader operation, with its error lifted to the component's.
    fn call<T>(
        &mut self,
        op: impl FnOnce(&Image, &mut Device) -> std::result::Result<T, erofs_image::Error>,
    ) -> Result<T> {
        self.device.take_read_error();
        op(&self.image, &mut self.device).map_err(|e| self.device.lift(e))
    }

    pub fn getattr(&mut self, nid: u64) -> Result<Attr> {
        self.call(|img, dev| img.getattr(dev, nid))
    }

    pub fn lookup(&mut self, parent: u64, name: &[u8]) -> Result<Attr> {
        self.call(|img, dev| {
            let (nid, _) = img.lookup(dev, parent, name)?;
            img.getattr(dev, nid)
        })
    }

    pub fn readdir(&mut self, nid: u64, cookie: u64, max: u32) -> Result<Vec<DirEntry>> {
        let max = usize::try_from(max)
            .unwrap_or(MAX_READDIR)
            .clamp(1, MAX_READDIR);
        self.call(|img, dev| img.readdir(dev, nid, cookie, max))
    }

    pub fn read(&mut self, nid: u64, offset: u64, len: u32) -> Result<Vec<u8>> {
        if !self.first_reads.is_good(nid) {
            let attr = self.getattr(nid)?;
            if attr.file_type() == FileType::Regular {
                self.first_reads
                    .ensure(&self.image, &mut self.device, nid, attr.size)?;
            }
        }
        self.call(|img, dev| img.read(dev, nid, offset, len))
    }

    pub fn readlink(&mut self, nid: u64) -> Result<Vec<u8>> {
        self.call(|img, dev| img.readlink(dev, nid))
    }

    pub fn listxattr(&mut self, nid: u64) -> Result<Vec<Vec<u8>>> {
        self.call(|img, dev| img.listxattr(dev, nid))
    }

    pub fn getxattr(&mut self, nid: u64, name: &[u8]) -> Result<Vec<u8>> {
        self.call(|img, dev| img.getxattr(dev, nid, name))
    }

    /// Walk the whole tree with the default limits (depth 1024, 4M entries), checking
    /// xattrs and every chunk address.
    pub fn verify(&mut self) -> Result<VerifyReport> {
        self.call(|img, dev| img.verify(dev, VerifyLimits::default()))
    }

    /// Device offset of the first data byte of regular file `nid` (tests).
    #[cfg(test)]
    pub fn physical_extents(&mut self, nid: u64) -> Result<u64> {
        let size = self.getattr(nid)?.size;
        let exts = self.call(|img, dev| img.physical_extents(dev, nid, 0, size))?;
        exts.first()
            .and_then(|x| x.physical)
            .ok_or_else(|| crate::error::Error::internal("no data"))
    }

    /// Check every regular file's tar header, in tar order (reads the whole tar once).
    /// Returns the number of files checked.
    pub fn verify_headers(&mut self) -> Result<u64> {
        self.device.take_read_error();
        check_all(&self.image, &mut self.device)
    }
}
