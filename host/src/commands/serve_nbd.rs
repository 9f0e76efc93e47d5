//! `erofs-host serve-nbd`: export the device, read-only, over NBD (TCP or a unix socket).
//!
//! The EROFS metadata is verified inside the sandbox first (unless `--no-verify`), so a
//! client that hands the export to a kernel never shows it a malformed image. Reads are
//! served by a [`DevicePool`] of sandboxed instances shared by every client (as a
//! [`PoolSource`]); the protocol itself is the `erofs-nbd` crate. A component error fails one request with `EIO` and no
//! data, a range past the end gets `EINVAL`, and a trap costs one request (`EIO`): the
//! instance is rebuilt for the next one. SIGINT or SIGTERM stop the server cleanly (the
//! unix socket file is removed).

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use erofs_nbd::{BlockSource, Listen, Server, ServerConfig};

use super::device_args::DeviceArgs;
use crate::bridge::nbd::{PoolSource, MAX_REQUEST};
use crate::defaults;
use crate::sandbox::{verify_image, Depth, DevicePool, Runtime};

#[derive(Debug, Args)]
pub struct ServeNbdArgs {
    #[command(flatten)]
    pub device: DeviceArgs,

    /// Where to listen: IP:PORT (e.g. 127.0.0.1:10809; port 0 picks a free one) or
    /// unix:PATH
    #[arg(long, value_name = "ADDR")]
    pub listen: String,

    /// Name of the export [default: the blob's file name]
    #[arg(long, value_name = "NAME")]
    pub export_name: Option<String>,

    /// Skip the check of the whole EROFS metadata in the sandbox before exporting
    #[arg(long)]
    pub no_verify: bool,

    /// Sandboxed instances serving reads (independent streams, other files or other
    /// clients, run in parallel; one sequential stream stays on one instance, so a gzip
    /// layer is never decoded twice)
    #[arg(long, value_name = "N", default_value_t = defaults::NBD_INSTANCES)]
    pub instances: usize,

    /// Reader threads per client connection (enough to overlap a pipelined client's
    /// requests)
    #[arg(long, value_name = "N", default_value_t = defaults::NBD_WORKERS)]
    pub workers: usize,
}

/// `IP:PORT` or `unix:PATH`.
pub fn parse_listen(text: &str) -> Result<Listen> {
    if let Some(path) = text.strip_prefix("unix:") {
        if path.is_empty() {
            bail!("--listen unix:PATH needs a path");
        }
        return Ok(Listen::Unix(PathBuf::from(path)));
    }
    let addr: SocketAddr = text.parse().map_err(|_| {
        anyhow!("--listen {text}: expected IP:PORT (e.g. 127.0.0.1:10809) or unix:PATH")
    })?;
    Ok(Listen::Tcp(addr))
}

/// A socket file left behind by a server that died (nobody accepts on it) is removed;
/// anything else at the path is an error, never overwritten.
fn clear_stale_socket(path: &Path) -> Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(()); // Nothing there.
    };
    if !meta.file_type().is_socket() {
        bail!(
            "--listen unix:{}: the path exists and is not a socket",
            path.display()
        );
    }
    match UnixStream::connect(path) {
        Ok(_) => bail!(
            "--listen unix:{}: another server is listening there",
            path.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            std::fs::remove_file(path)
                .with_context(|| format!("removing the stale socket {}", path.display()))?;
            tracing::info!(path = %path.display(), "removed a stale socket");
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("checking {}", path.display())),
    }
}

/// The export name when none is given: the blob's file name, or the last path segment of
/// a URL or oci:// reference (without any query or fragment).
fn default_export_name(blob: &str) -> String {
    let path = blob.split(['?', '#']).next().unwrap_or_default();
    let last = path
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default();
    if last.is_empty() {
        "erofs".into()
    } else {
        last.into()
    }
}

/// Set by the SIGINT/SIGTERM handler; polled by `run`.
static SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_signal: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    SIGNALLED.store(true, Ordering::SeqCst);
}

/// Routes SIGINT and SIGTERM to `SIGNALLED`. SA_RESETHAND restores the default action
/// after the first signal, so a second Ctrl-C ends a shutdown that hangs.
fn install_signal_handlers() -> Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is a valid starting value; the handler only does an
        // atomic store, and the struct outlives the call.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_RESETHAND;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(io::Error::last_os_error()).context("installing a signal handler");
        }
    }
    Ok(())
}

pub fn run(args: ServeNbdArgs) -> Result<()> {
    let listen = parse_listen(&args.listen)?;
    let export_name = args
        .export_name
        .clone()
        .unwrap_or_else(|| default_export_name(&args.device.blob));
    // Address problems are reported before the (longer) verification.
    if let Listen::Unix(path) = &listen {
        clear_stale_socket(path)?;
    }
    let (spec, limits) = args.device.spec()?;
    let runtime = Runtime::load(&args.device.component)?;
    if !args.no_verify {
        let r = verify_image(runtime.clone(), &spec, limits, Depth::Metadata)?.report;
        eprintln!(
            "verified: {} entries ({} directories, {} regular files), {} bytes of file data",
            r.entries, r.directories, r.regular_files, r.data_bytes
        );
    }
    let source = PoolSource(DevicePool::open(runtime, spec, limits, args.instances)?);
    let size = source.size();

    let config = ServerConfig {
        export_name,
        description: Some(format!(
            "erofs-wasm: {} (read-only, sandboxed)",
            default_export_name(&args.device.blob)
        )),
        max_request: MAX_REQUEST,
        workers_per_connection: args.workers,
    };
    // Handlers first: a signal from here on stops the server cleanly (socket removed).
    install_signal_handlers()?;
    let where_ = args.listen.clone();
    let source = Arc::new(source);
    let server = Server::bind(listen, config, Arc::clone(&source) as Arc<dyn BlockSource>)
        .with_context(|| format!("--listen {where_}: cannot listen"))?;

    let uri = server.uri();
    let stop = Arc::new(AtomicBool::new(false));
    let serving = {
        let stop = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("nbd-accept".into())
            .spawn(move || server.serve(stop))
            .context("starting the server thread")?
    };
    // The URI line is what scripts wait for: the socket accepts from here on.
    eprintln!("serving {uri}");
    tracing::info!(size, "export ready");

    // Wait for a signal, or for the server to end on its own (an accept error).
    while !SIGNALLED.load(Ordering::SeqCst) && !serving.is_finished() {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Release);
    let result = serving
        .join()
        .map_err(|_| anyhow!("the server thread panicked"))?;
    result.context("serving NBD")?;
    source.0.log_stats();
    eprintln!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert!(matches!(
            parse_listen("127.0.0.1:10809"),
            Ok(Listen::Tcp(_))
        ));
        assert!(matches!(parse_listen("[::1]:0"), Ok(Listen::Tcp(_))));
        match parse_listen("unix:/run/x.sock") {
            Ok(Listen::Unix(p)) => assert_eq!(p, PathBuf::from("/run/x.sock")),
            other => panic!("{other:?}"),
        }
        assert!(parse_listen("unix:").is_err());
        assert!(parse_listen("localhost").is_err());
    }

    #[test]
    fn export_name_defaults_to_the_blob_name() {
        assert_eq!(default_export_name("/x/layer.tar.gz"), "layer.tar.gz");
        assert_eq!(default_export_name("layer.tar"), "layer.tar");
        assert_eq!(
            default_export_name("https://h/v2/r/blobs/sha256:ab?x=1#f"),
            "sha256:ab"
        );
        assert_eq!(default_export_name("oci://reg.io/lib/alpine:3"), "alpine:3");
        assert_eq!(default_export_name("/"), "erofs");
    }
}
