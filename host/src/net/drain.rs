//! A response body read ahead of its consumer: a task pulls the body off the connection
//! as fast as the link gives it, into memory (bounded), while the component may still
//! be decoding the previous range. The connection goes back to the pool as soon as the
//! body is in, not when the component gets round to reading it.
//!
//! A body that stalls (nothing for the between-bytes timeout) or breaks off is resumed:
//! for a 206 with a known range, the rest is asked for again (`Range` from the first
//! missing byte) on another connection, at most [`MAX_RESUMES`] times; the consumer sees
//! one unbroken body. Anything else fails the body, as before.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::BodyExt;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use wasmtime_wasi_http::{Error as HttpError, WasiBody};

/// Bytes of one response held in memory before its reader takes them. 32 MiB: above the
/// largest range the component asks for with its defaults (a 16 MiB readahead window and
/// a 1 MiB chunk), so a prefetched range arrives whole; a larger body (a server that
/// ignores Range) waits for its reader beyond it.
pub const BUFFER_BYTES: usize = 32 << 20;

/// Resumes of one body after a stall or a cut. 2: a second bad connection in a row is
/// more likely a bad server than bad luck; the component's own retries take over.
pub const MAX_RESUMES: u32 = 2;

/// Asks again for the bytes of the range from blob offset `from` on (its first argument)
/// and returns the new response.
pub type Resend = Box<
    dyn Fn(u64) -> Pin<Box<dyn std::future::Future<Output = Result<Resumed, HttpError>> + Send>>
        + Send
        + Sync,
>;

/// A resumed answer: the response, already checked to start at the asked offset.
pub type Resumed = http::Response<hyper::body::Incoming>;

/// What a body may be resumed from: the range its 206 covers, and how to ask again.
pub struct Resume {
    /// First and last byte of the range (inclusive), from its Content-Range.
    pub start: u64,
    pub end: u64,
    pub resend: Resend,
}

type Piece = Result<(Bytes, OwnedSemaphorePermit), HttpError>;

/// Read `body` ahead in a task; `held` (the origin's request slot) is released when the
/// body is all in. Returns the body the consumer reads.
pub fn read_ahead(
    body: hyper::body::Incoming,
    between_bytes: Duration,
    resume: Option<Resume>,
    held: Option<OwnedSemaphorePermit>,
) -> WasiBody {
    let (tx, rx) = mpsc::unbounded_channel();
    let budget = Arc::new(Semaphore::new(BUFFER_BYTES));
    tokio::spawn(async move {
        pump(body, between_bytes, resume, budget, tx).await;
        drop(held);
    });
    Ahead { rx }.boxed_unsync()
}

/// Move the body's bytes into the channel; on a stall or a cut, resume if we can.
async fn pump(
    mut body: hyper::body::Incoming,
    between_bytes: Duration,
    resume: Option<Resume>,
    budget: Arc<Semaphore>,
    tx: mpsc::UnboundedSender<Piece>,
) {
    let mut received: u64 = 0;
    let mut resumes = 0u32;
    loop {
        let (failure, error) = match tokio::time::timeout(between_bytes, body.frame()).await {
            Ok(None) => return,
            Ok(Some(Ok(frame))) => {
                let Ok(data) = frame.into_data() else {
                    // Trailers: registries send none, and the component reads none.
                    continue;
                };
                received = received.saturating_add(data.len() as u64);
                // Wait for room in the buffer (a body bigger than BUFFER_BYTES waits for
                // its reader); a frame larger than the whole budget takes all of it.
                let want = u32::try_from(data.len().min(BUFFER_BYTES)).unwrap_or(u32::MAX);
                let Ok(permit) = budget.clone().acquire_many_owned(want).await else {
                    return;
                };
                if tx.send(Ok((data, permit))).is_err() {
                    // The reader is gone; dropping `body` closes this connection.
                    return;
                }
                continue;
            }
            Ok(Some(Err(e))) => (format!("the body broke off: {e}"), HttpError::from(e)),
            Err(_) => (
                format!("no data for {between_bytes:?}"),
                HttpError::ConnectionReadTimeout,
            ),
        };
        // State: the body failed after `received` bytes. Resume it on a new request
        // when it is a known range with bytes still missing, else fail it.
        let next = resume
            .as_ref()
            .filter(|_| resumes < MAX_RESUMES)
            .and_then(|r| {
                let from = r.start.checked_add(received)?;
                (from <= r.end).then_some((r, from))
            });
        let Some((r, from)) = next else {
            tracing::warn!("http: {failure} after {received} bytes; giving up on this response");
            // A send error means the reader is gone: nobody is left to tell.
            let _ = tx.send(Err(error));
            return;
        };
        resumes += 1;
        tracing::warn!(
            "http: {failure} after {received} bytes; asking for bytes {from}-{} on another connection",
            r.end
        );
        match (r.resend)(from).await {
            Ok(response) => {
                // The old connection is dropped with its body: the pool never reuses it.
                body = response.into_body();
            }
            Err(e) => {
                tracing::warn!("http: resuming at byte {from} failed: {e}");
                // As above: an error only when the reader is gone.
                let _ = tx.send(Err(e));
                return;
            }
        }
    }
}

/// The consumer's side: frames in order, each freeing its room in the buffer.
struct Ahead {
    rx: mpsc::UnboundedReceiver<Piece>,
}

impl http_body::Body for Ahead {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok((data, permit)))) => {
                drop(permit);
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}
