//! The tar-index device, `meta ‖ tar` (docs/formats.md, "The device"): the layout checks
//! on the metadata's superblock ([`layout`]), the policy on which inputs go together
//! ([`policy`]), and the device that routes reads to the metadata or the tar
//! ([`device`]), and the binding of the index to its blob: each file's tar header
//! ([`header_check`]) checked on open for a sample, on first read, or for all
//! ([`binding`]).

pub mod binding;
pub mod device;
pub mod header_check;
pub mod layout;
pub mod policy;

pub use binding::{FirstReads, SampleReport, DEFAULT_HEADER_SAMPLES};
pub use device::{Device, Tar};
pub use layout::{check_layout, Layout};
