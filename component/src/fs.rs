//! The EROFS filesystem on a device: `erofs_image::Filesystem` (the parser) plus the
//! device it reads through. The bindings layer exports this as the WIT `filesystem`.

use erofs_image::{Attr, DirEntry, Filesystem as Image, VerifyLimits, VerifyReport};

use crate::tarindex::Device;

pub use erofs_image::Error as FsError;

pub struct Filesystem {
    image: Image,
    device: Device,
}

/// The most directory entries one `readdir` call returns, whatever the caller asks: a
/// FUSE readdir buffer holds about 100-200; this bounds the reply's memory.
pub const MAX_READDIR: usize = 4096;

impl Filesystem {
    pub fn open(mut device: Device) -> Result<Self, FsError> {
        let image = Image::open(&mut device)?;
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

    pub fn getattr(&mut self, nid: u64) -> Result<Attr, FsError> {
        self.image.getattr(&mut self.device, nid)
    }

    pub fn lookup(&mut self, parent: u64, name: &[u8]) -> Result<Attr, FsError> {
        let (nid, _) = self.image.lookup(&mut self.device, parent, name)?;
        self.image.getattr(&mut self.device, nid)
    }

    pub fn readdir(&mut self, nid: u64, cookie: u64, max: u32) -> Result<Vec<DirEntry>, FsError> {
        let max = (max as usize).clamp(1, MAX_READDIR);
        self.image.readdir(&mut self.device, nid, cookie, max)
    }

    pub fn read(&mut self, nid: u64, offset: u64, len: u32) -> Result<Vec<u8>, FsError> {
        self.image.read(&mut self.device, nid, offset, len)
    }

    pub fn readlink(&mut self, nid: u64) -> Result<Vec<u8>, FsError> {
        self.image.readlink(&mut self.device, nid)
    }

    pub fn listxattr(&mut self, nid: u64) -> Result<Vec<Vec<u8>>, FsError> {
        self.image.listxattr(&mut self.device, nid)
    }

    pub fn getxattr(&mut self, nid: u64, name: &[u8]) -> Result<Vec<u8>, FsError> {
        self.image.getxattr(&mut self.device, nid, name)
    }

    /// Walk the whole tree with the default limits (depth 1024, 4M entries), checking
    /// xattrs and every chunk address.
    pub fn verify(&mut self) -> Result<VerifyReport, FsError> {
        self.image.verify(&mut self.device, VerifyLimits::default())
    }
}
