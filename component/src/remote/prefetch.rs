//! Ranges of a remote blob requested ahead of a sequential reader, so that the network
//! works while the component decodes.
//!
//! Why here and not in the host: the component knows what a stream will read next (its
//! readahead window, in whole chunks), so what it asks ahead is what it then uses; a host
//! guessing from past requests would fetch ranges that do not line up with the next
//! ones. The host does its half: it reads each answer's body as it arrives, so a range
//! asked ahead is already in memory when the reader gets to it.
//!
//! A prefetch is only a head start. It is sent once, to where the last read went (the
//! registry, or the storage URL it redirected to), with the token the last read used,
//! and it is used only if it is exactly the 206 a read would accept; anything else
//! (an error, a 401, a redirect, a wrong Content-Range) is dropped, counted as a retry,
//! and the read fetches those chunks itself, with its retries, redirects and token
//! renewal.

use std::cell::RefCell;
use std::num::NonZeroU64;

use super::auth::Auth;
use super::content_range::check_partial_head;
use super::net::Net;
use super::transport::{BodyReader, HttpRequest, Method, Started};
use super::url::Url;
use crate::error::Result;

/// Ranges in flight ahead of the readers of one blob. 2: while the reader consumes one
/// window as it arrives, the next is already asked for, so the link does not wait for a
/// request to travel; each is a readahead window (up to 16 MiB) that the host reads
/// ahead into its memory.
pub const MAX_AHEAD: usize = 2;

/// Ranges in flight for [`Source::will_need`](crate::source::Source::will_need) hints
/// (a mount's header checks, a zinfo's first and last span), beside the streams' own. 4:
/// the header sample's spans go out in two rounds instead of eight, on at most four
/// connections; with a stream's [`MAX_AHEAD`] and a read's own request that stays below
/// the host's eight requests per origin.
pub const MAX_HINTED: usize = 4;

/// Where a range asked ahead is.
enum Flow {
    /// Sent; no answer looked at yet.
    Asked(Started),
    /// The answer was the asked 206; its body is read chunk by chunk as readers need them.
    Open(Box<dyn BodyReader>),
}

/// One range asked ahead: chunks up to `end` (blob bytes `a..b`), delivered up to `next`.
pub struct Ahead {
    /// The next chunk to deliver (the ones before it were handed to the cache).
    pub next: u64,
    pub end: u64,
    /// The range's first chunk.
    first: u64,
    a: u64,
    b: u64,
    flow: Option<Flow>,
    /// Asked for a hint, not for a stream: not counted against a stream's MAX_AHEAD.
    pub hinted: bool,
}

/// Where the chunks of a range go, and how long each is.
pub struct Chunks<'a> {
    /// Byte span `[start, end)` of chunk `c`.
    pub span: &'a dyn Fn(u64) -> (u64, u64),
    /// Take chunk `c`'s bytes.
    pub put: &'a mut dyn FnMut(u64, Vec<u8>),
}

impl Ahead {
    /// Ask for chunks `first..end` (bytes `a..b`) of the blob at `url`; `headers` are
    /// the range request's own (the token for `url` is added).
    pub fn start(
        net: &Net,
        auth: Option<&RefCell<Auth>>,
        url: &Url,
        headers: Vec<(String, String)>,
        chunks: (u64, u64),
        bytes: (u64, u64),
    ) -> Result<Ahead> {
        let mut headers = headers;
        if let Some(auth) = auth {
            headers.extend(auth.borrow().headers_for(url));
        }
        let req = HttpRequest {
            method: Method::Get,
            url: url.to_string(),
            headers,
            body: Vec::new(),
        };
        let started = net.start(&req)?;
        Ok(Ahead {
            next: chunks.0,
            end: chunks.1,
            first: chunks.0,
            a: bytes.0,
            b: bytes.1,
            flow: Some(Flow::Asked(started)),
            hinted: false,
        })
    }

    /// Whether chunk `c` is still to come from this range.
    pub fn holds(&self, c: u64) -> bool {
        (self.next..self.end).contains(&c)
    }

    /// Whether some of the range's chunks were handed over.
    fn delivered_any(&self) -> bool {
        self.next > self.first
    }

    /// Chunks still to come.
    pub fn unread(&self) -> u64 {
        self.end.saturating_sub(self.next)
    }

    /// Hand the chunks from `next` up to `upto` (inclusive, within the range) to
    /// `chunks.put`, in order, waiting for each to arrive. Returns whether the range has
    /// more to give; false when it is done, or when its answer was not exactly the asked
    /// 206 of a blob of `size` bytes or its body failed (counted as a retry: the chunks
    /// not delivered are then fetched by the read, with its retries).
    pub fn deliver(&mut self, net: &Net, size: u64, upto: u64, chunks: Chunks<'_>) -> bool {
        let reader = match self.flow.take() {
            Some(Flow::Open(reader)) => Some(reader),
            Some(Flow::Asked(started)) => {
                let len = self.b.saturating_sub(self.a);
                match net.open(started, len) {
                    Ok((resp, reader))
                        if resp.status == 206
                            && check_partial_head(&resp, self.a, self.b, Some(size)).is_ok() =>
                    {
                        Some(reader)
                    }
                    Ok(_) | Err(_) => None,
                }
            }
            None => None,
        };
        let Some(mut reader) = reader else {
            return self.failed(net);
        };
        while self.next < self.end && self.next <= upto {
            let (start, end) = (chunks.span)(self.next);
            let want = end.saturating_sub(start);
            match reader.read(want) {
                Ok(data) if data.len() as u64 == want => {
                    net.bump(|s| s.bytes_fetched = s.bytes_fetched.saturating_add(want));
                    (chunks.put)(self.next, data);
                    self.next = self.next.saturating_add(1);
                }
                Ok(_) | Err(_) => return self.failed(net),
            }
        }
        if self.next >= self.end {
            return false;
        }
        self.flow = Some(Flow::Open(reader));
        true
    }

    fn failed(&mut self, net: &Net) -> bool {
        net.bump(|s| s.retries = s.retries.saturating_add(1));
        self.flow = None;
        false
    }
}

/// The ranges asked ahead of the readers of one blob, oldest first.
#[derive(Default)]
pub struct Queue {
    ranges: Vec<Ahead>,
}

/// What [`Queue::ask`] needs to know of the blob and the stream.
pub struct Ask<'a> {
    pub net: &'a Net,
    pub auth: Option<&'a RefCell<Auth>>,
    /// Where the stream's reads go (the registry, or the storage it redirected to).
    pub url: &'a Url,
    /// The first chunk that may be asked for, and the stream's window in bytes.
    pub next: u64,
    pub window: u64,
    pub n_chunks: u64,
    pub chunk_size: NonZeroU64,
    pub readahead_max: u64,
    pub cached: &'a dyn Fn(u64) -> bool,
    /// Byte span `[start, end)` of a chunk, and the headers of a range request.
    pub span: &'a dyn Fn(u64) -> (u64, u64),
    pub headers: &'a dyn Fn(u64, u64) -> Vec<(String, String)>,
}

impl Queue {
    pub fn clear(&mut self) {
        self.ranges.clear();
    }

    /// Whether chunk `c` is still to come from a range asked ahead.
    pub fn holds(&self, c: u64) -> bool {
        self.ranges.iter().any(|a| a.holds(c))
    }

    /// The ranges asked ahead of streams (not for hints).
    fn streams(&self) -> impl Iterator<Item = &Ahead> {
        self.ranges.iter().filter(|a| !a.hinted)
    }

    /// Ranges in flight for hints.
    pub fn hinted(&self) -> usize {
        self.ranges.iter().filter(|a| a.hinted).count()
    }

    /// Drop the oldest hinted range that has already handed over some of its chunks
    /// (the read it was asked for took what it needed); returns whether one was dropped.
    /// A hint's range is a guess at the chunks a read will need, so its tail may never
    /// be read: this keeps such tails from holding hint slots.
    pub fn drop_used_hint(&mut self) -> bool {
        let used = self
            .ranges
            .iter()
            .position(|a| a.hinted && a.delivered_any());
        match used {
            Some(i) => {
                self.ranges.remove(i);
                true
            }
            None => false,
        }
    }

    /// Keep `ahead` (asked for a hint) until a read collects it.
    pub fn push_hinted(&mut self, mut ahead: Ahead) {
        ahead.hinted = true;
        self.ranges.push(ahead);
    }

    /// Have the ranges that hold any of chunks `first..=last` hand their chunks up to
    /// `last` to `chunks.put`; a range that is done, or did not come back as asked, is
    /// dropped (its missing chunks are then fetched as misses).
    pub fn collect(&mut self, net: &Net, size: u64, (first, last): (u64, u64), chunks: Chunks<'_>) {
        let Chunks { span, put } = chunks;
        self.ranges.retain_mut(|a| {
            if a.next > last || a.end <= first {
                return true;
            }
            a.deliver(
                net,
                size,
                last,
                Chunks {
                    span,
                    put: &mut *put,
                },
            )
        });
    }

    /// Keep a stream's next windows asked for: a new range when none is in flight or at
    /// most a quarter of the largest window's chunks (at least 2) are still to come, up
    /// to MAX_AHEAD ranges; each is the stream's window (four chunks at first, doubling
    /// with each range, up to readahead_max), skipping chunks cached or asked for.
    /// Returns the chunk after the last one asked for and the window.
    pub fn ask(&mut self, ask: Ask<'_>) -> (u64, u64) {
        let cs = ask.chunk_size.get();
        let (mut next, mut window) = (ask.next, ask.window);
        let low_water = (ask.readahead_max / ask.chunk_size / 4).max(2);
        let taken = |q: &Queue, c: u64| (ask.cached)(c) || q.holds(c);
        while self.streams().count() < MAX_AHEAD {
            let unread: u64 = self.streams().map(Ahead::unread).sum();
            if self.streams().next().is_some() && unread > low_water {
                break;
            }
            while next < ask.n_chunks && taken(self, next) {
                next = next.saturating_add(1);
            }
            if next >= ask.n_chunks {
                break;
            }
            window = if window == 0 {
                cs.saturating_mul(4)
            } else {
                window.saturating_mul(2)
            }
            .min(ask.readahead_max);
            let want = window.div_ceil(cs).max(1);
            let mut end = next;
            while end < ask.n_chunks && end.saturating_sub(next) < want && !taken(self, end) {
                end = end.saturating_add(1);
            }
            let a = (ask.span)(next).0;
            let b = (ask.span)(end.saturating_sub(1)).1;
            let headers = (ask.headers)(a, b);
            match Ahead::start(ask.net, ask.auth, ask.url, headers, (next, end), (a, b)) {
                Ok(ahead) => self.ranges.push(ahead),
                // Not sent (the host refused it): the read itself will say why.
                Err(_) => break,
            }
            next = end;
        }
        (next, window)
    }
}
