//! The user-space half of the attach: our NBD server on a private unix socket, and the
//! client side of the handshake that the kernel's ioctl interface leaves to user space.

use std::io::{self, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use erofs_nbd::{Listen, Server, ServerConfig};

use super::{PoolSource, MAX_REQUEST};

/// The one export of the private server.
pub const EXPORT_NAME: &str = "erofs";

/// Handshake constants of the NBD protocol (fixed newstyle).
const NBDMAGIC: u64 = u64::from_be_bytes(*b"NBDMAGIC");
const IHAVEOPT: u64 = u64::from_be_bytes(*b"IHAVEOPT");
const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
const FLAG_NO_ZEROES: u16 = 1 << 1;
const OPT_GO: u32 = 7;
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const REP_ERROR_BIT: u32 = 1 << 31;
const INFO_EXPORT: u16 = 0;
/// Transmission flag: the export is read-only.
pub const TRANSMIT_READ_ONLY: u16 = 1 << 1;

/// Client side of the fixed-newstyle handshake, up to the transmission phase: asks for
/// `export` with `NBD_OPT_GO` and returns its size and transmission flags. Structured
/// replies are not negotiated: the kernel only understands simple replies.
pub fn go_handshake(stream: &UnixStream, export: &str) -> Result<(u64, u16)> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut s = stream;
    let greeting = read_array::<18>(&mut s)?;
    let word = |at: usize| u64::from_be_bytes(greeting[at..at + 8].try_into().unwrap_or([0; 8]));
    if word(0) != NBDMAGIC || word(8) != IHAVEOPT {
        bail!("the server is not a newstyle NBD server");
    }
    let server_flags = u16::from_be_bytes([greeting[16], greeting[17]]);
    if server_flags & FLAG_FIXED_NEWSTYLE == 0 {
        bail!("the server does not speak fixed newstyle");
    }
    // Client flags echo the two we understand; with NO_ZEROES the export reply has no
    // 124-byte padding (irrelevant for GO, but it is the modern choice).
    let client_flags = u32::from(server_flags & (FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES));
    let mut request = client_flags.to_be_bytes().to_vec();
    // NBD_OPT_GO: name length, name, and zero information requests.
    let mut data = (export.len() as u32).to_be_bytes().to_vec();
    data.extend_from_slice(export.as_bytes());
    data.extend_from_slice(&0u16.to_be_bytes());
    request.extend_from_slice(&IHAVEOPT.to_be_bytes());
    request.extend_from_slice(&OPT_GO.to_be_bytes());
    request.extend_from_slice(&(data.len() as u32).to_be_bytes());
    request.extend_from_slice(&data);
    s.write_all(&request)?;

    let mut export_info = None;
    loop {
        let header = read_array::<20>(&mut s)?;
        let magic = u64::from_be_bytes(header[0..8].try_into().unwrap_or([0; 8]));
        let option = u32::from_be_bytes(header[8..12].try_into().unwrap_or([0; 4]));
        let kind = u32::from_be_bytes(header[12..16].try_into().unwrap_or([0; 4]));
        let len = u32::from_be_bytes(header[16..20].try_into().unwrap_or([0; 4]));
        if magic != OPTION_REPLY_MAGIC || option != OPT_GO {
            bail!("malformed option reply (magic {magic:#x}, option {option})");
        }
        if len > 64 * 1024 {
            bail!("option reply of {len} bytes is too long");
        }
        let mut payload = vec![0u8; len as usize];
        s.read_exact(&mut payload)?;
        match kind {
            REP_ACK => break,
            REP_INFO if payload.len() == 12 && payload[..2] == INFO_EXPORT.to_be_bytes() => {
                let size = u64::from_be_bytes(payload[2..10].try_into().unwrap_or([0; 8]));
                let flags = u16::from_be_bytes([payload[10], payload[11]]);
                export_info = Some((size, flags));
            }
            // Other information (name, block sizes...) is not needed here.
            REP_INFO => {}
            k if k & REP_ERROR_BIT != 0 => bail!(
                "the server refused export `{export}` (reply {k:#x}: {})",
                String::from_utf8_lossy(&payload)
            ),
            k => bail!("unexpected option reply type {k:#x}"),
        }
    }
    export_info.ok_or_else(|| anyhow!("the server acknowledged GO without the export's size"))
}

fn read_array<const N: usize>(mut r: impl Read) -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    r.read_exact(&mut b)?;
    Ok(b)
}

/// Our NBD server, reachable only through the one connection made at start.
pub struct LocalServer {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<io::Result<()>>,
}

impl LocalServer {
    /// Serves `source` on a unix socket in a fresh 0700 directory, connects to it, then
    /// removes the socket file and the directory so nobody else can connect.
    pub fn start(source: PoolSource) -> Result<(LocalServer, UnixStream)> {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "erofs-nbd-attach-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("{}: creating", dir.display()))?;
        let path = dir.join("nbd.sock");
        let config = ServerConfig {
            export_name: EXPORT_NAME.into(),
            description: None,
            max_request: MAX_REQUEST,
            workers_per_connection: 4,
        };
        let bound = Server::bind(Listen::Unix(path.clone()), config, Arc::new(source));
        let connected = bound.and_then(|server| {
            let stream = UnixStream::connect(&path)?;
            Ok((server, stream))
        });
        // The socket file goes away now, whatever happened: the listener stays open but
        // is unreachable, and the accepted connection does not need the path.
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_dir(&dir);
        let (server, stream) = connected.context("starting the in-process NBD server")?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::Builder::new()
            .name("nbd-attach-server".into())
            .spawn(move || server.serve(flag))
            .context("starting the NBD server thread")?;
        Ok((LocalServer { stop, thread }, stream))
    }

    /// Stops accepting, lets in-flight replies go out, closes and joins (bounded by the
    /// server's own drain timeout).
    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        match self.thread.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("NBD server: {e}"),
            Err(_) => tracing::warn!("the NBD server thread panicked"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use erofs_nbd::{BlockSource, ReadError};

    struct Bytes(Vec<u8>);
    impl BlockSource for Bytes {
        fn size(&self) -> u64 {
            self.0.len() as u64
        }
        fn read_at(&self, offset: u64, len: u32) -> Result<Vec<u8>, ReadError> {
            let at = offset as usize;
            Ok(self.0[at..at + len as usize].to_vec())
        }
    }

    /// The user-space half of the attach: handshake with GO, then simple-reply reads on
    /// the same socket, as the kernel would send them.
    #[test]
    fn handshake_then_kernel_style_reads() {
        let dir = std::env::temp_dir().join(format!("erofs-attach-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let config = ServerConfig {
            export_name: EXPORT_NAME.into(),
            ..ServerConfig::default()
        };
        let server = Server::bind(
            Listen::Unix(path.clone()),
            config,
            Arc::new(Bytes(data.clone())),
        )
        .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let serving = thread::spawn(move || server.serve(flag));

        let sock = UnixStream::connect(&path).unwrap();
        let (size, flags) = go_handshake(&sock, EXPORT_NAME).unwrap();
        assert_eq!(size, data.len() as u64);
        assert_ne!(flags & TRANSMIT_READ_ONLY, 0);
        // A kernel-style request: magic, flags 0, READ, cookie, offset, length.
        let mut req = 0x2560_9513u32.to_be_bytes().to_vec();
        req.extend_from_slice(&0u16.to_be_bytes());
        req.extend_from_slice(&0u16.to_be_bytes());
        req.extend_from_slice(&77u64.to_be_bytes());
        req.extend_from_slice(&1000u64.to_be_bytes());
        req.extend_from_slice(&4096u32.to_be_bytes());
        (&sock).write_all(&req).unwrap();
        let reply = read_array::<16>(&sock).unwrap();
        assert_eq!(reply[..4], 0x6744_6698u32.to_be_bytes());
        assert_eq!(reply[4..8], [0; 4]);
        assert_eq!(reply[8..16], 77u64.to_be_bytes());
        let mut body = vec![0u8; 4096];
        (&sock).read_exact(&mut body).unwrap();
        assert!(body == data[1000..5096]);

        // Asking for another export is refused with the server's error, not a hang.
        let other = UnixStream::connect(&path).unwrap();
        let err = go_handshake(&other, "nope").unwrap_err().to_string();
        assert!(err.contains("refused export `nope`"), "{err}");

        stop.store(true, Ordering::Release);
        serving.join().unwrap().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
