//! `erofs-host snapshotter`: containerd's Snapshots gRPC service, served on a unix
//! socket as a proxy plugin, that starts containers from lazily mounted image layers.
//!
//! - [`labels`]: the labels that name a layer of an image on Prepare;
//! - [`store`]: the snapshots, in `ROOT/state.json`, and their directories;
//! - [`layer_mounts`]: one `erofs-host mount` daemon per lazily mounted layer;
//! - [`service`]: the snapshotter interface (overlayfs mounts, Prepare that mounts a
//!   layer and answers AlreadyExists, fallback to an ordinary unpack).
//!
//! Layer daemons outlive the snapshotter (running containers keep their layers); on
//! start every lazily mounted layer in the state is checked and mounted again if gone.

// tonic::Status (176 bytes) is the error of the API served here: every path returns it to
// containerd as it is, so boxing it would only add an allocation and an unbox per answer.
#![allow(clippy::result_large_err)]

pub mod labels;
pub mod layer_mounts;
pub mod service;
pub mod store;

use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;

use self::layer_mounts::Mounter;
use self::service::ErofsSnapshotter;
use self::store::{Kind, Store};

#[derive(Debug, Args)]
pub struct SnapshotterArgs {
    /// The erofs-wasm component (.wasm), e.g. target/wasm32-wasip2/release/erofs_component.wasm
    pub component: PathBuf,

    /// The snapshotter's state and snapshots (state.json, snapshots/<id>/{fs,work});
    /// keep it on the disk containerd's own root is on (active snapshots are written here)
    #[arg(long, value_name = "DIR")]
    pub root: PathBuf,

    /// The unix socket to serve on: containerd's `[proxy_plugins.erofs-wasm] address`
    #[arg(long, value_name = "SOCKET")]
    pub address: PathBuf,

    /// Allow plain http:// to registries (default: https only)
    #[arg(long)]
    pub insecure: bool,

    /// Keep fetched compressed ranges of layer blobs here, shared by every layer mount
    /// and kept across restarts [default: none, each mount fetches what it reads]
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

pub fn run(args: SnapshotterArgs) -> Result<()> {
    if crate::mount_registry::private::euid() != 0 {
        bail!("erofs-host snapshotter needs root: it mounts layers and overlayfs for containerd, which runs as root");
    }
    let component = crate::mount_registry::absolute(&args.component)?;
    if !component.is_file() {
        bail!("{}: no such component", component.display());
    }
    let root = crate::mount_registry::absolute(&args.root)?;
    let store = Store::open(&root)?;
    let mounter = Mounter {
        exe: std::env::current_exe().context("finding erofs-host's own path")?,
        component,
        insecure: args.insecure,
        cache_dir: args
            .cache_dir
            .as_deref()
            .map(crate::mount_registry::absolute)
            .transpose()?,
    };
    restore_layers(&store, &mounter);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(args.address, ErofsSnapshotter::new(store, mounter)))
}

/// Mount again every lazily mounted layer whose daemon no longer serves it.
fn restore_layers(store: &Store, mounter: &Mounter) {
    for (name, record) in store.all() {
        let Some(layer) = &record.remote else {
            continue;
        };
        if record.kind != Kind::Committed {
            continue;
        }
        let dir = store.fs_dir(record.id);
        match mounter.restore(layer, &dir) {
            Ok(how) => tracing::info!("snapshot {name}: {} {how}", dir.display()),
            Err(e) => tracing::error!(
                "snapshot {name}: layer {} of {} could not be mounted again: {e:#}; containers of this image fail until it is removed and pulled again",
                layer.layer_digest,
                layer.image
            ),
        }
    }
}

async fn serve(address: PathBuf, snapshotter: ErofsSnapshotter) -> Result<()> {
    // A socket left by a previous run is replaced; anything else at that path is not ours.
    match std::fs::symlink_metadata(&address) {
        Ok(md) if md.file_type().is_socket() => std::fs::remove_file(&address)
            .with_context(|| format!("{}: removing the old socket", address.display()))?,
        Ok(_) => bail!(
            "--address {}: exists and is not a socket",
            address.display()
        ),
        Err(_) => {}
    }
    if let Some(dir) = address.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: creating", dir.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(&address)
        .with_context(|| format!("{}: binding", address.display()))?;
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    eprintln!("erofs-host snapshotter: serving on {}", address.display());
    // On a stop signal, requests in flight get a grace period; containerd keeps its
    // connection open, so the server is then dropped rather than drained.
    let (stopping, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .add_service(containerd_snapshots::server(Arc::new(snapshotter)))
        .serve_with_incoming_shutdown(incoming, async {
            let _ = stopped.await;
        });
    let result = tokio::select! {
        r = server => r.with_context(|| format!("{}: serving", address.display())),
        () = async {
            stop_signal().await;
            let _ = stopping.send(());
            tokio::time::sleep(STOP_GRACE).await;
        } => Ok(()),
    };
    let _ = std::fs::remove_file(&address);
    eprintln!("erofs-host snapshotter: stopped (layer mounts stay served)");
    result
}

/// How long requests in flight may finish after a stop signal. 3 s: a Prepare that is
/// mounting a layer needs about a second; one cut off leaves an orphan that Cleanup removes.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// SIGINT or SIGTERM.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot watch SIGTERM/SIGINT: stop the snapshotter with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
