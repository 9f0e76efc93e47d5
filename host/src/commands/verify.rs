//! `erofs-host verify`: walk the whole EROFS image inside the sandbox, as the loop and
//! NBD backends do before a kernel sees the image ([`verify_image`]); `--deep` also
//! checks every regular file's tar header, reading the whole tar.

use anyhow::{Context, Result};
use clap::Args;

use super::device_args::DeviceArgs;
use crate::progress::Progress;
use crate::sandbox::{verify_image, Depth, Runtime};

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub device: DeviceArgs,

    /// Also check the tar header before every regular file's data (type, size, name):
    /// proves every file's bytes are the tar's own for that name. Reads the whole tar
    /// (fine for a local blob; for a remote one it downloads the layer)
    #[arg(long)]
    pub deep: bool,
}

pub fn run(args: VerifyArgs) -> Result<()> {
    let (spec, limits) = args.device.spec()?;
    let runtime = Runtime::load(&args.device.component)?;
    let depth = if args.deep {
        Depth::Deep
    } else {
        Depth::Metadata
    };
    // One call into the component walks every inode, so there is no count to show as it
    // goes: a spinner and the time so far.
    let progress = Progress::spinner(if args.deep {
        "verifying the metadata and every tar header in the sandbox"
    } else {
        "verifying the metadata in the sandbox"
    });
    let v = verify_image(runtime, &spec, limits, depth)?;
    progress.finish();
    let r = &v.report;
    let mut lines = vec![format!(
        "ok: {} directories, {} regular files, {} symlinks, {} special files, {} entries, {} hard links, {} bytes of file data",
        r.directories, r.regular_files, r.symlinks, r.special_files, r.entries, r.hard_links, r.data_bytes
    )];
    lines.push(match v.headers_checked {
        Some(n) => format!(
            "ok: the tar headers of all {n} regular files with data match the index (the whole tar was read)"
        ),
        None => "note: the tar headers of a sample of files were checked; --deep checks every file's (reads the whole tar)".to_string(),
    });
    print_lines(&lines)
}

/// Writes `lines` to stdout. A reader that stops early (`verify … | head`) closes the
/// pipe: that ends the output quietly, as coreutils do, instead of the panic of
/// `println!`. Any other write error is reported.
pub(crate) fn print_lines(lines: &[String]) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let written = lines
        .iter()
        .try_for_each(|line| writeln!(out, "{line}"))
        .and_then(|()| out.flush());
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing to stdout"),
    }
}
