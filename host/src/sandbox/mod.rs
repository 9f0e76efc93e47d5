//! The sandbox: everything that runs the component and talks to it.
//!
//! - [`runtime`]: the wasmtime engine, the precompiled-component cache, the linker and
//!   the epoch ticker behind call deadlines.
//! - [`host_file`]: the host `vfile`s (local files) the component reads.
//! - [`device`]: one device served by one sandboxed instance (memory cap, call deadline,
//!   rebuild after a trap).
//! - [`errors`]: why a call failed, and the one table from component errors to errno.
//! - [`trap`]: why the component trapped (memory cap, deadline, panic), in one line
//!   that names the option to change; the memory cap that records refused growth.
//! - [`guest_stderr`]: the component's stderr, kept in memory for the trap report.
//! - [`filesystem_pool`]: instances that serve the EROFS *filesystem* to FUSE threads.
//! - [`device_pool`]: instances that serve the raw *device* bytes, routed by offset
//!   (NBD, the loop backend's device file).
//! - [`parallel_read`]: a long device read decoded by several instances at once, in
//!   order (`cat --jobs`).
//! - [`verify`]: the whole-image check before a kernel sees an image.
//! - [`pins`]: what the first open of a device fixes for every later instance (META and
//!   zinfo bytes, the OCI manifest digest, the sizes).
//! - [`registry`]: the component's `registry` calls (inspect an image, publish an index).
//! - [`image_layers`]: the layers of an image manifest, listed by the component.
//! - [`indexer`]: one tar-index build ([`index_blob`]): the blob streamed once into the
//!   component's builder.

pub mod device;
pub mod device_pool;
pub mod errors;
pub mod filesystem_pool;
pub mod guest_stderr;
pub(crate) mod host_file;
pub mod image_layers;
pub mod indexer;
pub mod parallel_read;
pub mod pins;
pub mod registry;
pub mod runtime;
pub mod trap;
pub mod verify;

pub use device::{BlobSource, DeviceSpec, Limits, Mode, SandboxedDevice};
pub use device_pool::DevicePool;
pub use errors::CallError;
pub use filesystem_pool::FilesystemPool;
pub use image_layers::list_image_layers;
pub use indexer::{index_blob, IndexRequest};
pub use runtime::{IndexOutput, IndexProgress, IndexStats, OpenOptions, Runtime, VerifyReport};
pub use trap::{format_size, Trap, TrapCause};
pub use verify::{verify_image, Depth, Verified};
