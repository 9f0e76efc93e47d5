//! The tar-index device, `meta ‖ tar` (docs/formats.md, "The device"): the layout checks
//! on the metadata's superblock ([`layout`]), the policy on which inputs go together
//! ([`policy`]), and the device that routes reads to the metadata or the tar
//! ([`device`]).

pub mod device;
pub mod layout;
pub mod policy;

pub use device::{Device, Tar};
pub use layout::{check_layout, Layout};
