//! The NBD server's handshake and request parsing, driven over an in-memory socket pair:
//! the input is everything a client sends (client flags, options, then requests); the
//! server's answers are drained and thrown away. Reads at some offsets fail, so the error
//! replies run too.
#![no_main]

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Once};
use std::thread;

use erofs_nbd::{serve_unix_client, BlockSource, ReadError, ServerConfig};
use libfuzzer_sys::fuzz_target;

/// A 1 MiB export whose reads fail in every 64 KiB block whose number is 3 mod 4.
struct Export;

impl BlockSource for Export {
    fn size(&self) -> u64 {
        1 << 20
    }
    fn read_at(&self, offset: u64, len: u32) -> Result<Vec<u8>, ReadError> {
        match (offset >> 16) % 4 {
            3 => Err(ReadError::Io("planted failure".into())),
            _ => Ok(vec![0xA5; len as usize]),
        }
    }
}

static IGNORE_SIGPIPE: Once = Once::new();

fuzz_target!(|data: &[u8]| {
    erofs_fuzz::bound_memory(64);
    // The server may hang up while the client still writes: that must be EPIPE, not a
    // signal that ends the fuzzer (libFuzzer's C main does not ignore SIGPIPE as Rust's does).
    IGNORE_SIGPIPE.call_once(|| {
        // SAFETY: setting a signal's disposition to SIG_IGN has no other effect.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
    });
    let Ok((server, client)) = UnixStream::pair() else {
        return;
    };
    let Ok(mut reader) = client.try_clone() else {
        return;
    };
    let input = data.to_vec();
    let sender = thread::spawn(move || {
        let mut client = client;
        // A write error means the server hung up, which it may do.
        let _ = client.write_all(&input);
        let _ = client.shutdown(Shutdown::Write);
    });
    let drain = thread::spawn(move || {
        let mut sink = [0u8; 64 << 10];
        while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
    });
    let config = ServerConfig {
        export_name: "disk".into(),
        description: Some("fuzz".into()),
        max_request: 1 << 20,
        workers_per_connection: 2,
    };
    let served = serve_unix_client(server, &config, Arc::new(Export));
    assert!(served.is_ok(), "valid configuration refused: {served:?}");
    let _ = sender.join();
    let _ = drain.join();
});
