//! NBD: a sandboxed device as an NBD export (the protocol itself is the `erofs-nbd`
//! crate), for `serve-nbd` and for the kernel attach of `--backend nbd` ([`attach`],
//! with its private in-process server in [`local_server`]).

pub(crate) mod attach;
pub(crate) mod local_server;

use erofs_nbd::{BlockSource, ReadError};

use crate::sandbox::DevicePool;

/// Largest read a client may ask for (advertised in NBD_INFO_BLOCK_SIZE): the Linux
/// kernel's NBD driver sends at most 32 MiB, and a 32 MiB read fits the sandbox's default
/// memory budget.
pub(crate) const MAX_REQUEST: u32 = 32 << 20;

/// A [`DevicePool`] as an NBD export. A request outside the device is `Invalid` (EINVAL
/// to the client); every other failure (the component's, or a trap) is `Io` (EIO): NBD
/// has no finer errors a kernel would act on.
pub(crate) struct PoolSource(pub(crate) DevicePool);

impl BlockSource for PoolSource {
    fn size(&self) -> u64 {
        self.0.size()
    }

    fn read_at(&self, offset: u64, len: u32) -> Result<Vec<u8>, ReadError> {
        match self.0.pread(offset, len) {
            Ok(bytes) => Ok(bytes),
            Err(e) if e.is_out_of_range() => Err(ReadError::Invalid(e.to_string())),
            Err(e) => Err(ReadError::Io(format!("device offset {offset} +{len}: {e}"))),
        }
    }
}
