//! The transmission phase of one connection.
//!
//! The connection's own thread is the *reader*: it parses request headers in order,
//! answers cheap commands itself and hands reads to a small pool of *workers* through a
//! bounded queue. Every reply (header plus data) is written whole while holding the writer
//! lock, so replies from different threads never interleave on the wire; they may leave
//! in any order, which the protocol allows because each carries the request's cookie.

use std::io::{self, Read};
use std::net::Shutdown;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;

use tracing::{debug, error, warn};

use crate::net::Stream;
use crate::proto::*;
use crate::{BlockSource, ExportInfo, ReadError};

/// Upper bound on worker threads per connection, whatever the configuration says.
const MAX_WORKERS: usize = 64;

/// A read that passed validation and waits for a worker.
struct ReadJob {
    cookie: u64,
    offset: u64,
    len: u32,
}

/// State shared by the reader and the workers of one connection.
struct Shared {
    /// The write half. Holding the lock for a whole reply keeps replies atomic.
    writer: Mutex<Stream>,
    /// Set once a write failed: the client is gone, so remaining work is skipped.
    broken: AtomicBool,
    source: Arc<dyn BlockSource>,
    /// Whether `NBD_OPT_STRUCTURED_REPLY` was negotiated for this connection.
    structured: bool,
    peer: String,
}

impl Shared {
    /// Writes one complete reply. On failure the connection is marked broken and the
    /// socket shut down, which also wakes the reader blocked in `read`.
    fn send(&self, parts: &[&[u8]]) {
        if self.broken.load(Ordering::Acquire) {
            return;
        }
        // A poisoned lock only means another thread panicked mid-write; the stream is then
        // out of step, so treat it like any other write failure.
        let result = match self.writer.lock() {
            Ok(mut w) => write_all_parts(&mut *w, parts),
            Err(_) => Err(io::Error::other("writer lock poisoned")),
        };
        if let Err(e) = result {
            debug!(peer = %self.peer, error = %e, "reply could not be sent; dropping connection");
            self.mark_broken();
        }
    }

    fn mark_broken(&self) {
        self.broken.store(true, Ordering::Release);
        if let Ok(w) = self.writer.lock() {
            w.shutdown(Shutdown::Both);
        }
    }

    /// Success without payload (FLUSH, zero-length READ). A simple reply is allowed for
    /// such replies even when structured replies were negotiated, except for READ.
    fn reply_ok(&self, cookie: u64, is_read: bool) {
        if self.structured && is_read {
            let hdr = chunk_header(cookie, REPLY_FLAG_DONE, REPLY_TYPE_NONE, 0);
            self.send(&[&hdr]);
        } else {
            self.send(&[&simple_reply(cookie, 0)]);
        }
    }

    /// An error reply. It never carries data: a simple reply is just the 16-byte header
    /// with the error set; a structured one is a single final ERROR chunk.
    fn reply_error(&self, cookie: u64, errno: u32, message: &str) {
        if self.structured {
            self.send(&[&error_chunk(cookie, errno, message)]);
        } else {
            self.send(&[&simple_reply(cookie, errno)]);
        }
    }

    /// Successful read: the data goes out in one piece, either after a simple reply
    /// header or as one OFFSET_DATA chunk flagged DONE (the data is complete before the
    /// header is written, so no error can surface mid-chunk).
    fn reply_data(&self, job: &ReadJob, data: &[u8]) {
        if self.structured {
            let hdr = chunk_header(
                job.cookie,
                REPLY_FLAG_DONE,
                REPLY_TYPE_OFFSET_DATA,
                8 + job.len,
            );
            self.send(&[&hdr, &job.offset.to_be_bytes(), data]);
        } else {
            self.send(&[&simple_reply(job.cookie, 0), data]);
        }
    }

    /// Executes one validated read against the source and replies. A panic in the source
    /// is contained here and reported as EIO, so one bad read cannot leave the client
    /// waiting forever for its reply.
    fn do_read(&self, job: ReadJob) {
        if self.broken.load(Ordering::Acquire) {
            return;
        }
        let source = &self.source;
        let result = catch_unwind(AssertUnwindSafe(|| source.read_at(job.offset, job.len)));
        match result {
            Ok(Ok(data)) if data.len() == job.len as usize => self.reply_data(&job, &data),
            Ok(Ok(data)) => {
                // Never pad or cut: a wrong-sized answer is a source bug and an I/O error.
                error!(
                    peer = %self.peer, offset = job.offset, len = job.len, got = data.len(),
                    "block source returned the wrong number of bytes"
                );
                self.reply_error(job.cookie, EIO, "read failed");
            }
            Ok(Err(ReadError::Io(msg))) => {
                warn!(peer = %self.peer, offset = job.offset, len = job.len, %msg, "read failed");
                self.reply_error(job.cookie, EIO, "read failed");
            }
            Ok(Err(ReadError::Invalid(msg))) => {
                warn!(peer = %self.peer, offset = job.offset, len = job.len, %msg, "read refused");
                self.reply_error(job.cookie, EINVAL, "read refused by the block source");
            }
            Err(_) => {
                error!(peer = %self.peer, offset = job.offset, len = job.len, "block source panicked");
                self.reply_error(job.cookie, EIO, "read failed");
            }
        }
    }
}

/// Why the reader loop stopped.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// `NBD_CMD_DISC`: finish in-flight requests, then close.
    Disconnect,
    /// The client hung up or the socket failed (including a server-initiated shutdown).
    Hangup,
    /// The client broke the protocol in a way that leaves the stream out of step.
    Violation,
}

/// Serves requests until the client disconnects or misbehaves. `reader` must be the same
/// buffered reader the handshake used, so that no byte already read is lost.
pub(crate) fn serve<R: Read>(
    reader: &mut R,
    writer: Stream,
    export: &ExportInfo,
    source: Arc<dyn BlockSource>,
    structured: bool,
    workers: usize,
    peer: String,
) {
    let shared = Arc::new(Shared {
        writer: Mutex::new(writer),
        broken: AtomicBool::new(false),
        source,
        structured,
        peer,
    });

    // The queue holds at most one waiting job per worker, so a client that pipelines
    // aggressively is slowed down (the reader blocks) instead of growing memory: at most
    // `workers` reads of `max_request` bytes are being produced at any time.
    let workers = workers.clamp(1, MAX_WORKERS);
    let (tx, rx) = sync_channel::<ReadJob>(workers);
    let rx = Arc::new(Mutex::new(rx));
    let mut pool = Vec::with_capacity(workers);
    for i in 0..workers {
        let shared = Arc::clone(&shared);
        let rx = Arc::clone(&rx);
        match thread::Builder::new()
            .name(format!("nbd-read-{i}"))
            .spawn(move || worker_loop(&shared, &rx))
        {
            Ok(h) => pool.push(h),
            Err(e) => warn!(error = %e, "could not start a read worker"),
        }
    }
    // Without any worker the rendezvous queue would block forever: read inline instead.
    let inline = pool.is_empty();

    let end = reader_loop(reader, &shared, export, |job| {
        if inline {
            shared.do_read(job);
        } else if let Err(returned) = tx.send(job) {
            // Only possible if every worker died; answer rather than leave it hanging.
            shared.reply_error(returned.0.cookie, EIO, "server worker unavailable");
        }
    });

    // A protocol violation leaves the stream out of step: hang up at once, which also
    // makes the workers skip whatever is still queued.
    if end == End::Violation {
        shared.mark_broken();
    }
    // Closing the queue lets each worker finish the jobs already queued and exit; joining
    // them guarantees every accepted request has been answered before the socket closes.
    drop(tx);
    for h in pool {
        let _ = h.join();
    }
    debug!(peer = %shared.peer, ?end, "transmission finished");
    // Every accepted request has been answered: close both directions.
    shared.mark_broken();
}

fn worker_loop(shared: &Shared, rx: &Mutex<Receiver<ReadJob>>) {
    loop {
        // Take the next job; the lock is held only while waiting for it, not while reading.
        let job = match rx.lock() {
            Ok(guard) => guard.recv(),
            Err(poisoned) => poisoned.into_inner().recv(),
        };
        match job {
            Ok(job) => shared.do_read(job),
            Err(_) => return, // queue closed: the reader has finished
        }
    }
}

/// Parses and dispatches requests in arrival order. Validated reads go to `dispatch`;
/// everything else is answered here.
fn reader_loop<R: Read>(
    reader: &mut R,
    shared: &Shared,
    export: &ExportInfo,
    mut dispatch: impl FnMut(ReadJob),
) -> End {
    loop {
        let mut raw = [0u8; REQUEST_LEN];
        if let Err(e) = reader.read_exact(&mut raw) {
            // EOF between requests is a plain hard disconnect by the client; anything
            // else is a transport failure. Both end the connection quietly.
            debug!(peer = %shared.peer, error = %e, "request stream ended");
            return End::Hangup;
        }
        let req = match Request::parse(&raw) {
            Ok(r) => r,
            Err(BadMagic(magic)) => {
                // We cannot find the next request boundary any more: hang up.
                warn!(peer = %shared.peer, magic, "bad request magic; closing connection");
                return End::Violation;
            }
        };
        if shared.broken.load(Ordering::Acquire) {
            return End::Hangup;
        }

        match req.kind {
            CMD_READ => {
                // FUA is meaningless for a read and DF is always honoured (one chunk), so
                // both are tolerated; any other flag is invalid for READ.
                if req.flags & !(CMD_FLAG_FUA | CMD_FLAG_DF) != 0 {
                    shared.reply_error(req.cookie, EINVAL, "unsupported flags for read");
                    continue;
                }
                let end = req.offset.checked_add(u64::from(req.len));
                if req.offset > export.size || end.is_none_or(|e| e > export.size) {
                    shared.reply_error(req.cookie, EINVAL, "read beyond end of export");
                } else if req.len > export.max_request {
                    shared.reply_error(req.cookie, EINVAL, "read larger than maximum payload");
                } else if req.len == 0 {
                    // The specification leaves zero-length reads unspecified but asks the
                    // server not to disconnect: answer "success, no data".
                    shared.reply_ok(req.cookie, true);
                } else {
                    dispatch(ReadJob {
                        cookie: req.cookie,
                        offset: req.offset,
                        len: req.len,
                    });
                }
            }
            CMD_WRITE => {
                // The payload follows the header and must be consumed to stay in step.
                // Anything above the 32 MiB the specification calls acceptable (or our
                // own maximum, if larger) is treated as abuse and ends the session.
                let limit = export.max_request.max(WRITE_DRAIN_FLOOR);
                if req.len > limit {
                    warn!(peer = %shared.peer, len = req.len, "oversized write payload; closing");
                    return End::Violation;
                }
                if let Err(e) = discard(reader, u64::from(req.len)) {
                    debug!(peer = %shared.peer, error = %e, "client left inside a write payload");
                    return End::Hangup;
                }
                shared.reply_error(req.cookie, EPERM, "export is read-only");
            }
            CMD_TRIM | CMD_WRITE_ZEROES => {
                shared.reply_error(req.cookie, EPERM, "export is read-only");
            }
            CMD_FLUSH => {
                // Nothing is ever written, so there is nothing to persist.
                shared.reply_ok(req.cookie, false);
            }
            CMD_DISC => {
                // No reply; in-flight reads are completed by the caller before closing.
                debug!(peer = %shared.peer, "client requested disconnect");
                return End::Disconnect;
            }
            other => {
                debug!(peer = %shared.peer, command = other, "unknown command");
                shared.reply_error(req.cookie, EINVAL, "unknown command");
            }
        }
    }
}
