//! The EROFS filesystem on a device: `erofs_image::Filesystem` (the parser) plus the
//! device it reads through. The bindings layer exports this as the WIT `filesystem`.
//!
//! Errors come back as the component's [`Error`]: the EROFS reader's own cases keep their
//! meaning (`Corrupt` stays corrupt), and a failed device read is the device's original
//! structured error, not its string copy.

use erofs_image::{Attr, DirEntry, Filesystem as Image, VerifyLimits, VerifyReport};

use crate::defaults::MAX_READDIR;
use crate::error::{Error, Result};
use crate::tarindex::Device;

pub struct Filesystem {
    image: Image,
    device: Device,
}

impl Filesystem {
    pub fn open(mut device: Device) -> Result<Self> {
        let image = Image::open(&mut device).map_err(|e| lift(&mut device, e))?;
        Ok(Self { image, device })
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
        op(&self.image, &mut self.device).map_err(|e| lift(&mut self.device, e))
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
}

/// The reader's error as the component's: the device's own error when a device read
/// failed (the reader passes those up unchanged), else the reader's case.
fn lift(device: &mut Device, e: erofs_image::Error) -> Error {
    match device.take_read_error() {
        Some(original) if original.to_image() == e => original,
        _ => Error::from(e),
    }
}
