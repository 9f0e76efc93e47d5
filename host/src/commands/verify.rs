//! `erofs-host verify`: walk the whole EROFS image inside the sandbox, as the loop and
//! NBD backends do before a kernel sees the image ([`verify_image`]).

use anyhow::Result;
use clap::Args;

use super::device_args::DeviceArgs;
use crate::progress::Progress;
use crate::sandbox::{verify_image, Runtime};

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn run(args: VerifyArgs) -> Result<()> {
    let (spec, limits) = args.device.spec()?;
    let runtime = Runtime::load(&args.device.component)?;
    // One call into the component walks every inode, so there is no count to show as it
    // goes: a spinner and the time so far.
    let progress = Progress::spinner("verifying the metadata in the sandbox");
    let r = verify_image(runtime, &spec, limits)?;
    progress.finish();
    println!(
        "ok: {} directories, {} regular files, {} symlinks, {} special files, {} entries, {} hard links, {} bytes of file data",
        r.directories, r.regular_files, r.symlinks, r.special_files, r.entries, r.hard_links, r.data_bytes
    );
    Ok(())
}
