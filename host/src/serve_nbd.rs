//! `erofs-host serve-nbd`: export the device over NBD. (Being written.)

use anyhow::{bail, Result};
use clap::Args;

use crate::cli::DeviceArgs;

#[derive(Debug, Args)]
pub struct ServeNbdArgs {
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn run(_args: ServeNbdArgs) -> Result<()> {
    bail!("serve-nbd is not implemented yet")
}
