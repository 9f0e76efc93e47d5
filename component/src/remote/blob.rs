//! A remote blob read with HTTP Range requests, as a [`Source`].
//!
//! Reads are served from an LRU cache of aligned chunks. Missing chunks of one read are
//! fetched together (adjacent ones in one request), and a read that continues a
//! sequential stream also fetches the chunks after it, in a window that doubles up to
//! `readahead_max`; a stream also keeps up to [`super::prefetch::MAX_AHEAD`] further windows
//! in flight (requested, not yet used), so that the network works while the component
//! decodes. Every response is checked (status, `Content-Range`, body length)
//! before a byte of it is used; failures are retried with backoff, and after the last
//! attempt the read fails with an I/O error naming the URL, the range and the cause.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::num::{NonZeroU64, NonZeroUsize};

use lru::LruCache;

use super::auth::{fetch_with_auth, Auth};
pub use super::content_range::{parse_content_range, ContentRange};
use super::content_range::{check_partial, len_u64};
use super::manifest::sha256_digest;
use super::net::Net;
use super::prefetch::{Ahead, Ask, Chunks, Queue, MAX_HINTED};
use super::streams::Streams;
use super::transport::{HttpResponse, Method};
use super::url::Url;
use super::RemoteOptions;
use crate::defaults;
use crate::error::{Error, Kind, Result};
use crate::source::{RemoteStats, Source};

struct State {
    chunks: Option<LruCache<u64, Vec<u8>>>,
    streams: Streams,
    /// The whole blob, when a server ignored Range and the blob was small enough to keep.
    full: Option<Vec<u8>>,
    /// Where the registry last redirected blob requests (presigned storage URLs).
    redirect: Option<Url>,
    /// Ranges asked ahead of sequential streams, and for hints.
    ahead: Queue,
    /// Hinted chunk runs `[start, end)` waiting for a hint slot, oldest first.
    hints: VecDeque<(u64, u64)>,
}

/// Hinted chunk runs kept waiting for a slot; a hint past these is dropped (it is only
/// a hint: its reads fetch their chunks themselves). 64: a header sample is 8 runs.
const MAX_PENDING_HINTS: usize = 64;

enum Fetched {
    Range(Vec<u8>),
    Full(Vec<u8>),
}

pub struct RemoteBlob {
    net: Net,
    auth: Option<RefCell<Auth>>,
    url: Url,
    size: u64,
    /// Checked against a whole-blob download.
    digest: Option<String>,
    chunk_size: NonZeroU64,
    readahead_max: u64,
    max_request: u64,
    full_body_cap: u64,
    state: RefCell<State>,
}

impl std::fmt::Debug for RemoteBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteBlob")
            .field("url", &self.url.to_string())
            .field("size", &self.size)
            .field("chunk_size", &self.chunk_size)
            .field("stats", &self.net.stats())
            .finish_non_exhaustive()
    }
}

impl RemoteBlob {
    /// A registry blob whose size the manifest gave.
    pub fn new(
        net: Net,
        url: Url,
        size: u64,
        auth: Option<Auth>,
        digest: Option<String>,
        opts: &RemoteOptions,
    ) -> Result<Self> {
        net.check_scheme(&url)?;
        let chunk_size = NonZeroU64::new(opts.chunk_size)
            .filter(|c| c.get() <= defaults::MAX_CHUNK_SIZE)
            .ok_or_else(|| {
                Error::bad(format!(
                    "chunk size {} is not between 1 byte and 64 MiB",
                    opts.chunk_size
                ))
            })?;
        let chunks_in_cache = opts.cache_bytes / chunk_size;
        // More chunks than memory can index: the cache is bounded by memory first.
        let capacity = usize::try_from(chunks_in_cache).unwrap_or(usize::MAX);
        // Readahead beyond half the cache would evict itself before use.
        let readahead_max = opts
            .readahead_max
            .min((chunks_in_cache / 2).saturating_mul(chunk_size.get()));
        Ok(Self {
            net,
            auth: auth.map(RefCell::new),
            url,
            size,
            digest,
            chunk_size,
            readahead_max,
            // A read's own chunks plus a full readahead window go in one request.
            max_request: readahead_max.saturating_add(chunk_size.get()),
            full_body_cap: opts.memory_cap_for_full_body,
            state: RefCell::new(State {
                chunks: NonZeroUsize::new(capacity).map(LruCache::new),
                streams: Streams::default(),
                full: None,
                redirect: None,
                ahead: Queue::default(),
                hints: VecDeque::new(),
            }),
        })
    }


    /// A plain URL: learn the size with a one-byte Range request (`bytes=0-0`), which
    /// also shows whether the server honours Range. A server that ignores it sends the
    /// whole blob, which is kept if it is small enough.
    pub fn probe(net: Net, url: Url, opts: &RemoteOptions) -> Result<Self> {
        let blob = Self::new(net, url, 0, None, None, opts)?;
        let check = |_: &Url, r: &HttpResponse| match r.status {
            206 => check_partial(r, 0, 1, None),
            200 | 416 | 400..=499 => Ok(()),
            s => Err(format!("unexpected HTTP {s}")),
        };
        let headers = range_headers(0, 1);
        let cap = blob.full_body_cap.max(1);
        let (last, resp) = fetch_with_auth(
            &blob.net,
            None,
            Method::Get,
            &blob.url,
            &headers,
            cap,
            &check,
        )
        .map_err(|e| {
            if ignored_range(&e) {
                let m = format!(
                    "size probe: {}; a server that ignores Range cannot serve a blob above \
                     the {cap}-byte full-body limit",
                    e.message()
                );
                Error::io(m).with_status(200)
            } else {
                e.context("size probe")
            }
        })?;
        let mut blob = blob;
        match resp.status {
            206 => {
                let total = resp
                    .header("content-range")
                    .and_then(parse_content_range)
                    .and_then(|c| c.total)
                    .ok_or_else(|| {
                        Error::io(format!("{last}: the server does not say the blob's size (Content-Range total `*`)"))
                    })?;
                blob.size = total;
            }
            200 => {
                blob.size = len_u64(resp.body.len());
                blob.state.get_mut().full = Some(resp.body);
            }
            416 => match resp.header("content-range").and_then(parse_content_range) {
                Some(ContentRange {
                    range: None,
                    total: Some(0),
                }) => blob.size = 0,
                _ => {
                    return Err(Error::io(format!(
                        "{last}: HTTP 416 to a request for the first byte"
                    )))
                }
            },
            404 => return Err(Error::io(format!("{last}: not found (HTTP 404)"))),
            s => return Err(Error::io(format!("{last}: HTTP {s}"))),
        }
        if !last.same_origin(&blob.url) {
            blob.state.get_mut().redirect = Some(last);
        }
        Ok(blob)
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    pub fn stats(&self) -> RemoteStats {
        self.net.stats()
    }

    fn chunk_end(&self, c: u64) -> u64 {
        c.saturating_add(1)
            .saturating_mul(self.chunk_size.get())
            .min(self.size)
    }

    /// Fetch bytes `a..b` (chunk-aligned, inside the blob), checked.
    fn fetch(&self, st: &mut State, a: u64, b: u64) -> Result<Fetched> {
        let len = b
            .checked_sub(a)
            .filter(|&n| n > 0)
            .ok_or_else(|| Error::internal(format!("remote blob: empty fetch {a}..{b}")))?;
        let last_byte = b.saturating_sub(1);
        let whole = a == 0 && b == self.size;
        let keep_whole = self.size <= self.full_body_cap;
        let max_body = if keep_whole { len.max(self.size) } else { len };
        let check = |_: &Url, r: &HttpResponse| match r.status {
            206 => check_partial(r, a, b, Some(self.size)),
            200 if len_u64(r.body.len()) != self.size => Err(format!(
                "HTTP 200 (Range ignored) with {} bytes; the blob has {}",
                r.body.len(),
                self.size
            )),
            200 if !(keep_whole || whole) => Err("HTTP 200: the server ignored Range".into()),
            200 => match &self.digest {
                Some(d) if sha256_digest(&r.body) != *d => {
                    Err(format!("the whole blob does not match its digest {d}"))
                }
                _ => Ok(()),
            },
            400..=499 => Ok(()),
            s => Err(format!("unexpected HTTP {s}")),
        };
        let headers = range_headers(a, b);
        let mut from_redirect = st.redirect.is_some();
        loop {
            let start = st.redirect.clone().unwrap_or_else(|| self.url.clone());
            let result = fetch_with_auth(
                &self.net,
                self.auth.as_ref(),
                Method::Get,
                &start,
                &headers,
                max_body,
                &check,
            );
            let (last, resp) = match result {
                Ok(done) => done,
                Err(e) => {
                    // Start again from the registry next time.
                    st.redirect = None;
                    let mut e = e.context(&format!("bytes {a}-{last_byte}"));
                    if !keep_whole && ignored_range(&e) {
                        let m = format!(
                            "{}; a server that ignores Range cannot serve a blob above the \
                             {}-byte full-body limit",
                            e.message(),
                            self.full_body_cap
                        );
                        e = Error::io(m).with_status(200);
                    }
                    return Err(e);
                }
            };
            match resp.status {
                206 | 200 => {
                    if !last.same_origin(&self.url) {
                        st.redirect = Some(last);
                    }
                    return Ok(if resp.status == 206 || !keep_whole {
                        Fetched::Range(resp.body)
                    } else {
                        Fetched::Full(resp.body)
                    });
                }
                // A presigned storage URL expired or was refused: ask the registry again.
                _ if from_redirect => {
                    st.redirect = None;
                    from_redirect = false;
                }
                404 => return Err(Error::io(format!("{last}: blob not found (HTTP 404)"))),
                416 => {
                    return Err(Error::bad(format!(
                        "{last}: bytes {a}-{last_byte} are outside the blob (HTTP 416), though \
                         its size should be {}",
                        self.size
                    )))
                }
                s => return Err(Error::io(format!("{last}: bytes {a}-{last_byte}: HTTP {s}"))),
            }
        }
    }

    /// Bytes `offset..end` (inside the blob, not empty): from the whole blob if it is held,
    /// else from cached chunks, fetching the missing ones (and readahead) in runs.
    fn read(&self, st: &mut State, offset: u64, end: u64) -> Result<Vec<u8>> {
        let want = Want { offset, end };
        // State 1: a server ignored Range earlier and the whole blob is in memory.
        if let Some(full) = &st.full {
            return Ok(want.of_whole(full)?.to_vec());
        }
        let cs = self.chunk_size.get();
        let first = offset / self.chunk_size;
        let last = end.saturating_sub(1) / self.chunk_size;
        let (stream, sequential) = st.streams.touch(offset, end, cs);
        let mut out = vec![0u8; to_usize(want.len())?];
        // State 2: a sequential stream has its next windows asked for (after this read:
        // the read's own chunks always come through `fetch`, with its retries), and the
        // ranges asked ahead hand over the chunks this read needs as they arrive.
        if sequential {
            self.ask_ahead(st, stream, last.saturating_add(1));
        }
        self.collect_ahead(st, first, last);
        // State 3: copy the cached chunks; the missing ones form runs to fetch.
        let mut runs = self.copy_cached(st, &want, &mut out, first, last)?;
        if runs.is_empty() {
            if sequential {
                self.ask_ahead(st, stream, last.saturating_add(1));
            }
            return Ok(out);
        }
        // State 4: a sequential read grows its stream's window and stretches the last run.
        if sequential && self.readahead_max > 0 {
            self.extend_readahead(st, stream, &mut runs, last);
            // The next windows go out now, beside this read's own request, rather than
            // one round trip after it (when the link would sit idle meanwhile).
            let after = runs.last().map_or(0, |r| r.1).max(last.saturating_add(1));
            self.ask_ahead(st, stream, after);
        }
        // State 5: fetch each run in requests of at most max_request bytes.
        let per_request = (self.max_request / self.chunk_size).max(1);
        for (run_start, run_end) in runs {
            let mut c = run_start;
            while c < run_end {
                let piece_end = run_end.min(c.saturating_add(per_request));
                let a = c.saturating_mul(cs);
                let b = self.chunk_end(piece_end.saturating_sub(1));
                match self.fetch(st, a, b)? {
                    Fetched::Full(body) => {
                        // The server sent the whole blob: keep it and drop the chunk cache
                        // and whatever was asked ahead.
                        out.copy_from_slice(want.of_whole(&body)?);
                        st.chunks = None;
                        st.full = Some(body);
                        st.ahead.clear();
                        st.hints.clear();
                        return Ok(out);
                    }
                    Fetched::Range(body) => {
                        for k in c..piece_end {
                            let data = slice(&body, a, k.saturating_mul(cs), self.chunk_end(k))?;
                            if (first..=last).contains(&k) {
                                want.copy_chunk(&mut out, k.saturating_mul(cs), data)?;
                            }
                            if let Some(cache) = st.chunks.as_mut() {
                                cache.put(k, data.to_vec());
                            }
                        }
                    }
                }
                c = piece_end;
            }
        }
        // State 6: a sequential stream keeps its next windows asked for.
        if sequential {
            self.ask_ahead(st, stream, last.saturating_add(1));
        }
        Ok(out)
    }

    /// Whether chunk `c` is cached or asked ahead.
    fn have_or_asked(st: &State, c: u64) -> bool {
        st.chunks.as_ref().is_some_and(|cache| cache.contains(&c)) || st.ahead.holds(c)
    }

    /// Have the ranges asked ahead hand over the chunks of `first..=last` to the cache.
    fn collect_ahead(&self, st: &mut State, first: u64, last: u64) {
        let cs = self.chunk_size.get();
        let span = |k: u64| (k.saturating_mul(cs), self.chunk_end(k));
        let State { ahead, chunks, .. } = st;
        let mut put = |k: u64, data: Vec<u8>| {
            if let Some(cache) = chunks.as_mut() {
                cache.put(k, data);
            }
        };
        let chunks = Chunks {
            span: &span,
            put: &mut put,
        };
        ahead.collect(&self.net, self.size, (first, last), chunks);
        self.start_hints(st);
    }

    /// Queue the chunk runs that `ranges` (blob bytes `[start, end)`) touch and that are
    /// neither cached nor asked for, in requests of at most `max_request` bytes, and
    /// start as many as there are hint slots.
    fn hint(&self, st: &mut State, ranges: &[(u64, u64)]) {
        if self.readahead_max == 0 || st.chunks.is_none() || st.full.is_some() {
            return;
        }
        let mut runs: Vec<(u64, u64)> = ranges
            .iter()
            .map(|&(a, b)| (a, b.min(self.size)))
            .filter(|&(a, b)| a < b)
            .map(|(a, b)| {
                let first = a / self.chunk_size;
                let last = b.saturating_sub(1) / self.chunk_size;
                (first, last.saturating_add(1))
            })
            .collect();
        runs.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for run in runs {
            match merged.last_mut() {
                Some(last) if run.0 <= last.1 => last.1 = last.1.max(run.1),
                _ => merged.push(run),
            }
        }
        let per_request = (self.max_request / self.chunk_size).max(1);
        for (start, end) in merged {
            let mut c = start;
            while c < end && st.hints.len() < MAX_PENDING_HINTS {
                let piece_end = end.min(c.saturating_add(per_request));
                st.hints.push_back((c, piece_end));
                c = piece_end;
            }
        }
        self.start_hints(st);
    }

    /// Start the waiting hinted runs while there are hint slots ([`MAX_HINTED`]); the
    /// chunks of a run cached or asked for since it was queued are skipped.
    fn start_hints(&self, st: &mut State) {
        let cs = self.chunk_size.get();
        while let Some((first, end)) = st.hints.pop_front() {
            let mut c = first;
            while c < end && Self::have_or_asked(st, c) {
                c = c.saturating_add(1);
            }
            let mut e = c;
            while e < end && !Self::have_or_asked(st, e) {
                e = e.saturating_add(1);
            }
            if e < end {
                st.hints.push_front((e, end));
            }
            if c >= e {
                continue;
            }
            if st.ahead.hinted() >= MAX_HINTED && !st.ahead.drop_used_hint() {
                st.hints.push_front((c, e));
                return;
            }
            let (a, b) = (c.saturating_mul(cs), self.chunk_end(e.saturating_sub(1)));
            let url = st.redirect.clone().unwrap_or_else(|| self.url.clone());
            let headers = range_headers(a, b);
            match Ahead::start(&self.net, self.auth.as_ref(), &url, headers, (c, e), (a, b)) {
                Ok(ahead) => st.ahead.push_hinted(ahead),
                // Not sent (the host refused it): the reads will say why.
                Err(_) => {
                    st.hints.clear();
                    return;
                }
            }
        }
    }

    /// Keep stream `stream`'s next windows asked for, from chunk `from` on
    /// ([`prefetch::Queue::ask`]).
    fn ask_ahead(&self, st: &mut State, stream: usize, from: u64) {
        if self.readahead_max == 0 || st.chunks.is_none() {
            return;
        }
        // Only a stream whose reads have already missed sequentially (its window was
        // opened by `extend_readahead`) asks ahead: a small file's second read of the
        // same chunk costs no speculative request.
        let Some((next, window)) = st
            .streams
            .get(stream)
            .map(|s| (s.ahead_to.max(from), s.window))
            .filter(|&(_, window)| window > 0)
        else {
            return;
        };
        let cs = self.chunk_size.get();
        let url = st.redirect.clone().unwrap_or_else(|| self.url.clone());
        let State { ahead, chunks, .. } = st;
        let cached = |c: u64| chunks.as_ref().is_some_and(|cache| cache.contains(&c));
        let span = |k: u64| (k.saturating_mul(cs), self.chunk_end(k));
        let (next, window) = ahead.ask(Ask {
            net: &self.net,
            auth: self.auth.as_ref(),
            url: &url,
            next,
            window,
            n_chunks: self.size.div_ceil(cs),
            chunk_size: self.chunk_size,
            readahead_max: self.readahead_max,
            cached: &cached,
            span: &span,
            headers: &range_headers,
        });
        if let Some(s) = st.streams.get_mut(stream) {
            s.ahead_to = next;
            s.window = window;
        }
    }

    /// Copy the cached chunks among `first..=last` into `out` and count hits and misses;
    /// returns the runs of missing chunks, as `[start, end)` chunk indexes.
    fn copy_cached(
        &self,
        st: &mut State,
        want: &Want,
        out: &mut [u8],
        first: u64,
        last: u64,
    ) -> Result<Vec<(u64, u64)>> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let mut hits = 0u64;
        for c in first..=last {
            match st.chunks.as_mut().and_then(|cache| cache.get(&c)) {
                Some(data) => {
                    want.copy_chunk(out, c.saturating_mul(self.chunk_size.get()), data)?;
                    hits = hits.saturating_add(1);
                }
                None => match runs.last_mut() {
                    Some(run) if run.1 == c => run.1 = c.saturating_add(1),
                    _ => runs.push((c, c.saturating_add(1))),
                },
            }
        }
        let misses = runs
            .iter()
            .fold(0u64, |n, r| n.saturating_add(r.1.saturating_sub(r.0)));
        self.net.bump(|s| {
            s.chunk_hits = s.chunk_hits.saturating_add(hits);
            s.chunk_misses = s.chunk_misses.saturating_add(misses);
        });
        Ok(runs)
    }

    /// Grow stream `stream`'s readahead window and, if the last missing run ends at the
    /// read's last chunk, stretch it over the window's chunks that are not cached.
    fn extend_readahead(&self, st: &mut State, stream: usize, runs: &mut [(u64, u64)], last: u64) {
        let cs = self.chunk_size.get();
        let Some(s) = st.streams.get_mut(stream) else {
            return;
        };
        // The first sequential read already asks for a zinfo span's worth (4 chunks
        // of 1 MiB): with 20 ms of latency per request, starting at one chunk costs
        // two extra round trips before the window is useful.
        s.window = if s.window == 0 {
            cs.saturating_mul(4)
        } else {
            s.window.saturating_mul(2)
        }
        .min(self.readahead_max);
        let extra = s.window.div_ceil(cs);
        let after_last = last.saturating_add(1);
        let n_chunks = self.size.div_ceil(cs);
        if let Some(run) = runs.last_mut().filter(|r| r.1 == after_last) {
            let limit = after_last.saturating_add(extra).min(n_chunks);
            while run.1 < limit && !Self::have_or_asked(st, run.1) {
                run.1 = run.1.saturating_add(1);
            }
        }
    }
}

/// The bytes a read wants, `offset..end` of the blob.
struct Want {
    offset: u64,
    end: u64,
}

impl Want {
    fn len(&self) -> u64 {
        self.end.saturating_sub(self.offset)
    }

    /// The wanted bytes of the whole blob `full`.
    fn of_whole<'a>(&self, full: &'a [u8]) -> Result<&'a [u8]> {
        slice(full, 0, self.offset, self.end)
    }

    /// Copy the part of chunk `data` (which starts at blob offset `c_start`) that the read
    /// wants into `out` (which starts at `self.offset`).
    fn copy_chunk(&self, out: &mut [u8], c_start: u64, data: &[u8]) -> Result<()> {
        let from = self.offset.max(c_start);
        let to = self.end.min(c_start.saturating_add(len_u64(data.len())));
        if from >= to {
            return Ok(());
        }
        let dst = span(self.offset, from, to)?;
        let dst = out
            .get_mut(dst)
            .ok_or_else(|| Error::internal("remote blob: copy past the read buffer"))?;
        dst.copy_from_slice(slice(data, c_start, from, to)?);
        Ok(())
    }
}

/// Bytes `from..to` (blob offsets) of `buf`, which holds the blob from offset `base`.
/// Every caller has checked the lengths; a miss is a bug here, not bad input.
fn slice(buf: &[u8], base: u64, from: u64, to: u64) -> Result<&[u8]> {
    buf.get(span(base, from, to)?).ok_or_else(|| {
        Error::internal(format!(
            "remote blob: bytes {from}..{to} outside a buffer of {} at {base}",
            buf.len()
        ))
    })
}

/// `from..to` relative to `base`, as buffer indexes.
fn span(base: u64, from: u64, to: u64) -> Result<std::ops::Range<usize>> {
    let rel = |v: u64| {
        v.checked_sub(base)
            .ok_or_else(|| Error::internal(format!("remote blob: offset {v} before {base}")))
            .and_then(to_usize)
    };
    Ok(rel(from)?..rel(to)?)
}

fn to_usize(v: u64) -> Result<usize> {
    usize::try_from(v).map_err(|_| Error::unsupported(format!("{v} bytes do not fit in memory")))
}


fn range_headers(a: u64, b: u64) -> Vec<(String, String)> {
    vec![
        ("Range".to_string(), format!("bytes={a}-{}", b.saturating_sub(1))),
        ("Accept-Encoding".to_string(), "identity".to_string()),
    ]
}

impl Source for RemoteBlob {
    fn size(&self) -> Result<u64> {
        Ok(self.size)
    }

    fn remote_stats(&self) -> Option<RemoteStats> {
        Some(self.stats())
    }

    fn will_need(&self, ranges: &[(u64, u64)]) {
        // Inside a read (cannot happen: hints come between reads), the hint is dropped.
        if let Ok(mut st) = self.state.try_borrow_mut() {
            self.hint(&mut st, ranges);
        }
    }

    fn pread(&self, offset: u64, len: u32) -> Result<Vec<u8>> {
        let end = offset.saturating_add(u64::from(len)).min(self.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut st = self
            .state
            .try_borrow_mut()
            .map_err(|_| Error::internal("remote blob: re-entrant read"))?;
        self.read(&mut st, offset, end)
    }
}

/// Whether every attempt failed on a server that answered a Range request with the
/// whole body (HTTP 200).
fn ignored_range(e: &Error) -> bool {
    e.is(Kind::Io) && e.http_status == Some(200)
}
