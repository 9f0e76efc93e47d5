//! erofs-host: serve EROFS tar-index container layers from a sandboxed WebAssembly
//! component. See README.md for the architecture.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use erofs_host::commands::{bench, cat, index, mount, serve_nbd, umount, verify};

#[derive(Debug, Parser)]
#[command(
    name = "erofs-host",
    version,
    about = "Lazily read EROFS tar-index container layers through a sandboxed WebAssembly component",
    long_about = "Lazily read EROFS tar-index container layers (mkfs.erofs --tar=i) through a sandboxed \
WebAssembly component. The device is the metadata image followed by the uncompressed tar; gzip layers \
are read at random through a zinfo checkpoint index. The component parses every untrusted byte, \
with a memory cap and a per-call deadline.\n\nSet RUST_LOG=debug for more detail."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write the device bytes (meta ‖ tar), or a range of them, to stdout
    Cat(cat::CatArgs),
    /// Measure read throughput and latency of the device
    Bench(bench::BenchArgs),
    /// Mount a layer (FUSE with the image parsed in the sandbox, or a kernel backend)
    Mount(mount::MountArgs),
    /// Unmount a layer mounted by `erofs-host mount` and stop its server
    Umount(umount::UmountArgs),
    /// Check the whole EROFS metadata inside the sandbox (what --backend loop/nbd do first)
    Verify(verify::VerifyArgs),
    /// Export the device over NBD (TCP or a unix socket), read-only
    ServeNbd(serve_nbd::ServeNbdArgs),
    /// Build a layer's tar index (META) and zinfo inside the sandbox, from the blob alone
    Index(index::IndexArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Cat(args) => cat::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Mount(args) => mount::run(args),
        Command::Umount(args) => umount::run(args),
        Command::Verify(args) => verify::run(args),
        Command::ServeNbd(args) => serve_nbd::run(args),
        Command::Index(args) => index::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("erofs-host: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
