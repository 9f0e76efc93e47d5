//! erofs-host: serve EROFS tar-index container layers from a sandboxed WebAssembly
//! component. See README.md for the architecture.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};

use erofs_host::commands::usage::{is_usage, EXIT_USAGE};
use erofs_host::commands::{bench, cat, index, mount, pull, serve_nbd, stats, umount, verify};
use erofs_host::snapshotter;

#[derive(Debug, Parser)]
#[command(
    name = "erofs-host",
    version,
    about = "Lazily read EROFS tar-index container layers through a sandboxed WebAssembly component",
    long_about = "Lazily read EROFS tar-index container layers (mkfs.erofs --tar=i) through a sandboxed \
WebAssembly component. The device is the metadata image followed by the uncompressed tar; gzip layers \
are read at random through a zinfo checkpoint index. The component parses every untrusted byte, \
with a memory cap and a per-call deadline.\n\nExit status: 0 on success, 1 on an error, 2 on a usage \
error (a bad or missing option, or options that do not go together).\n\nSet RUST_LOG=debug (or -v) for more detail."
)]
struct Cli {
    /// Debug logging (as RUST_LOG=debug for erofs-host), with wasm backtraces of traps
    #[arg(short, long, global = true)]
    verbose: bool,

    /// No progress display (it appears only on a terminal, for work over about a second)
    #[arg(short, long, global = true)]
    quiet: bool,

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
    /// Print a mount's counters per layer: bytes fetched, requests, cache hits
    Stats(stats::StatsArgs),
    /// Check the whole EROFS metadata inside the sandbox (what --backend loop/nbd do first)
    Verify(verify::VerifyArgs),
    /// Export the device over NBD (TCP or a unix socket), read-only
    ServeNbd(serve_nbd::ServeNbdArgs),
    /// Build a layer's tar index (META) and zinfo inside the sandbox, from the blob alone
    Index(index::IndexArgs),
    /// Serve containerd's Snapshots API (a proxy plugin): containers start from layers
    /// mounted lazily from the registry
    Snapshotter(snapshotter::SnapshotterArgs),
    /// Pull an image into containerd without downloading its layers: manifest and config
    /// into its content store, the image created, each layer prepared lazily through the
    /// snapshotter
    Pull(pull::PullArgs),
    /// Print a shell completion script: `source <(erofs-host completions bash)`
    Completions {
        /// The shell to complete for
        shell: clap_complete::Shell,
    },
    /// Write the manual pages (erofs-host.1 and one per command) into DIR (`just man`)
    #[command(hide = true)]
    ManPages {
        /// The directory to write into (created if missing)
        dir: PathBuf,
    },
}

/// The log filter without RUST_LOG: warnings; with -v, erofs-host's own debug lines too
/// (not wasmtime's or cranelift's, which are for their developers).
fn default_log_filter(verbose: bool) -> &'static str {
    if verbose {
        "warn,erofs_host=debug,erofs_nbd=debug"
    } else {
        "warn"
    }
}

fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    use std::io::Write;
    let mut command = Cli::command();
    // Into memory first: clap_complete panics on a write error (a closed pipe).
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "erofs-host", &mut script);
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(&script)
        .and_then(|()| stdout.flush())
        .context("writing the completion script to stdout")
}

fn man_pages(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    clap_mangen::generate_to(Cli::command(), dir)
        .with_context(|| format!("{}: writing the manual pages", dir.display()))
}

fn main() -> ExitCode {
    // clap exits by itself on a usage error (code 2) or for --help/--version (code 0).
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_log_filter(cli.verbose).into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    erofs_host::progress::set_quiet(cli.quiet);
    let result = match cli.command {
        Command::Cat(args) => cat::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Mount(args) => mount::run(args),
        Command::Umount(args) => umount::run(args),
        Command::Stats(args) => stats::run(args),
        Command::Verify(args) => verify::run(args),
        Command::ServeNbd(args) => serve_nbd::run(args),
        Command::Index(args) => index::run(args),
        Command::Snapshotter(args) => snapshotter::run(args),
        Command::Pull(args) => pull::run(args),
        Command::Completions { shell } => completions(shell),
        Command::ManPages { dir } => man_pages(&dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_usage(&e) => {
            eprintln!("erofs-host: error: {e:#}");
            eprintln!("For more information, try '--help'.");
            ExitCode::from(EXIT_USAGE)
        }
        Err(e) => {
            eprintln!("erofs-host: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
