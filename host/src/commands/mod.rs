//! The subcommands of `erofs-host`. Each file is one command (its arguments and `run`);
//! [`device_args`] holds what they share: the arguments that name a device, resolved
//! once into the sandbox's inputs; [`usage`] the errors in how a command was called
//! (exit code 2). A command never calls into another command.

pub mod bench;
pub mod cat;
pub mod device_args;
pub mod image;
pub mod index;
pub mod mount;
pub mod publish;
pub mod pull;
pub mod serve_nbd;
pub mod stats;
pub mod umount;
pub mod usage;
pub mod verify;

pub use device_args::DeviceArgs;
