//! The component's WASI stderr, kept in memory so that a trap can say why it happened.
//!
//! Rust's std in the guest writes two things there before it aborts: a panic's message
//! (`thread '…' panicked at FILE:LINE:COL:` and the message), and a failed allocation
//! (`memory allocation of N bytes failed`). The host shows neither as-is; the trap
//! report ([`super::trap`]) picks the line that says what went wrong.
//!
//! The buffer keeps only the last [`KEEP`] bytes and never refuses a write: a chatty
//! guest cannot grow host memory without bound, and a full buffer must not become a trap
//! of its own (wasmtime's `MemoryOutputPipe` traps the guest once its capacity is used up).

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Bytes of guest stderr kept: a panic message with its location, or the allocation
/// failure line, fits many times over.
pub const KEEP: usize = 4096;

/// A shared handle to one store's stderr buffer: the WASI context holds one clone, the
/// device another to read after a call.
#[derive(Clone, Default)]
pub struct GuestStderr(Arc<Mutex<Vec<u8>>>);

impl GuestStderr {
    fn buffer(&self) -> MutexGuard<'_, Vec<u8>> {
        // A writer that panicked mid-append leaves at worst a torn line; keep going.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn append(&self, bytes: &[u8]) {
        let mut buffer = self.buffer();
        buffer.extend_from_slice(bytes);
        // Trim only when twice the bound is reached, so that trimming is rare.
        if buffer.len() > 2 * KEEP {
            let cut = buffer.len() - KEEP;
            buffer.drain(..cut);
        }
    }

    /// What the guest wrote since the last `take` (its last [`KEEP`] bytes at least),
    /// as text; the buffer is empty afterwards.
    pub fn take(&self) -> String {
        let mut buffer = self.buffer();
        let text = String::from_utf8_lossy(&buffer).into_owned();
        buffer.clear();
        text
    }
}

impl IsTerminal for GuestStderr {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestStderr {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for GuestStderr {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Always ready: older bytes are dropped instead of refusing new ones.
        Ok(KEEP)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestStderr {
    async fn ready(&mut self) {}
}

impl AsyncWrite for GuestStderr {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.append(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_tail_and_never_refuses() {
        let mut s = GuestStderr::default();
        for _ in 0..10_000 {
            s.write(Bytes::from_static(b"0123456789")).unwrap();
        }
        s.write(Bytes::from_static(b"\nthe last line\n")).unwrap();
        assert_eq!(s.check_write().unwrap(), KEEP);
        let text = s.take();
        assert!(text.len() <= 2 * KEEP, "{}", text.len());
        assert!(text.ends_with("the last line\n"));
        assert_eq!(s.take(), "");
    }
}
