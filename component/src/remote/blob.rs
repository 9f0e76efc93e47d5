//! A remote blob read with HTTP Range requests, as a [`Source`].
//!
//! Reads are served from an LRU cache of aligned chunks. Missing chunks of one read are
//! fetched together (adjacent ones in one request), and a read that continues a
//! sequential stream also fetches the chunks after it, in a window that doubles up to
//! `readahead_max`. Every response is checked (status, `Content-Range`, body length)
//! before a byte of it is used; failures are retried with backoff, and after the last
//! attempt the read fails with an I/O error naming the URL, the range and the cause.

use std::cell::RefCell;
use std::num::NonZeroUsize;

use lru::LruCache;

use super::auth::{fetch_with_auth, Auth};
use super::manifest::sha256_digest;
use super::net::Net;
use super::transport::{HttpResponse, Method};
use super::url::Url;
use super::RemoteOptions;
use crate::defaults;
use crate::error::{Error, Kind, Result};
use crate::source::{RemoteStats, Source};

/// Sequential streams tracked at once (like the inflater's cursors: a few files read
/// side by side each keep their own readahead).
const MAX_STREAMS: usize = 4;

struct Stream {
    /// Offset of the last read and end of the furthest one.
    last_offset: u64,
    end: u64,
    /// Current readahead window in bytes (0 until the stream proves sequential).
    window: u64,
    used: u64,
}

struct State {
    chunks: Option<LruCache<u64, Vec<u8>>>,
    streams: Vec<Stream>,
    tick: u64,
    /// The whole blob, when a server ignored Range and the blob was small enough to keep.
    full: Option<Vec<u8>>,
    /// Where the registry last redirected blob requests (presigned storage URLs).
    redirect: Option<Url>,
}

impl State {
    /// Find the stream this read continues, or start a new one (replacing the least
    /// recently used). Returns its index and whether the read was sequential.
    fn touch_stream(&mut self, offset: u64, end: u64, slack: u64) -> (usize, bool) {
        self.tick += 1;
        let tick = self.tick;
        for (i, s) in self.streams.iter_mut().enumerate() {
            if offset >= s.last_offset && offset <= s.end.saturating_add(slack) {
                s.last_offset = offset;
                s.end = s.end.max(end);
                s.used = tick;
                return (i, true);
            }
        }
        let fresh = Stream {
            last_offset: offset,
            end,
            window: 0,
            used: tick,
        };
        if self.streams.len() < MAX_STREAMS {
            self.streams.push(fresh);
            return (self.streams.len() - 1, false);
        }
        let oldest = (0..self.streams.len())
            .min_by_key(|&i| self.streams[i].used)
            .unwrap_or(0);
        self.streams[oldest] = fresh;
        (oldest, false)
    }
}

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
    chunk_size: u64,
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

/// A parsed `Content-Range`: first and last byte (absent in `bytes */TOTAL`), and the
/// total (absent when the server wrote `*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    pub range: Option<(u64, u64)>,
    pub total: Option<u64>,
}

/// `bytes START-END/TOTAL` (TOTAL may be `*`), or `bytes */TOTAL` (for a 416).
pub fn parse_content_range(value: &str) -> Option<ContentRange> {
    let value = value.trim();
    let unit = value.get(..6)?;
    if !unit.eq_ignore_ascii_case("bytes ") {
        return None;
    }
    let (range, total) = value[6..].trim_start().split_once('/')?;
    let number = |s: &str| {
        let s = s.trim();
        (!s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    let total = match total.trim() {
        "*" => None,
        t => Some(number(t)?),
    };
    let range = match range.trim() {
        "*" => None,
        r => {
            let (a, b) = r.split_once('-')?;
            let (a, b) = (number(a)?, number(b)?);
            if a > b {
                return None;
            }
            Some((a, b))
        }
    };
    // RFC 9110 §14.4: a range whose last byte is at or past the complete length is
    // invalid (found by the content_range fuzz target: `bytes N-M/M` was accepted).
    if let (Some((_, last)), Some(total)) = (range, total) {
        if last >= total {
            return None;
        }
    }
    Some(ContentRange { range, total })
}

/// Why a response cannot be used, if it cannot: content coding, and for a 206 exactly
/// one `Content-Range` equal to `want` and a body of exactly the asked length.
fn check_partial(
    resp: &HttpResponse,
    a: u64,
    b: u64,
    total: Option<u64>,
) -> std::result::Result<(), String> {
    if let Some(enc) = resp.header("content-encoding") {
        if !enc.trim().eq_ignore_ascii_case("identity") {
            return Err(format!(
                "response has Content-Encoding `{}`",
                enc.escape_default()
            ));
        }
    }
    let mut ranges = resp.header_all("content-range");
    let (Some(cr), None) = (ranges.next(), ranges.next()) else {
        return Err("HTTP 206 without exactly one Content-Range".into());
    };
    let want = format!(
        "bytes {a}-{}/{}",
        b - 1,
        total.map_or("*".to_string(), |t| t.to_string())
    );
    match parse_content_range(cr) {
        Some(ContentRange {
            range: Some((s, e)),
            total: t,
        }) if s == a && e == b - 1 && (total.is_none() || t == total) => {}
        _ => {
            return Err(format!(
                "Content-Range `{}` does not match the request ({want})",
                cr.escape_default()
            ))
        }
    }
    if resp.body.len() as u64 != b - a {
        return Err(format!(
            "HTTP 206 body is {} bytes, {} were asked for",
            resp.body.len(),
            b - a
        ));
    }
    Ok(())
}

impl RemoteBlob {
    fn with(
        net: Net,
        url: Url,
        size: u64,
        auth: Option<Auth>,
        digest: Option<String>,
        opts: &RemoteOptions,
    ) -> Result<Self> {
        let chunk_size = opts.chunk_size;
        if chunk_size == 0 || chunk_size > defaults::MAX_CHUNK_SIZE {
            return Err(Error::bad(format!(
                "chunk size {chunk_size} is not between 1 byte and 64 MiB"
            )));
        }
        let capacity = usize::try_from(opts.cache_bytes / chunk_size).unwrap_or(usize::MAX);
        // Readahead beyond half the cache would evict itself before use.
        let readahead_max = opts
            .readahead_max
            .min((capacity as u64 / 2).saturating_mul(chunk_size));
        Ok(Self {
            net,
            auth: auth.map(RefCell::new),
            url,
            size,
            digest,
            chunk_size,
            readahead_max,
            // A read's own chunks plus a full readahead window go in one request.
            max_request: readahead_max.saturating_add(chunk_size),
            full_body_cap: opts.memory_cap_for_full_body,
            state: RefCell::new(State {
                chunks: NonZeroUsize::new(capacity).map(LruCache::new),
                streams: Vec::new(),
                tick: 0,
                full: None,
                redirect: None,
            }),
        })
    }

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
        Self::with(net, url, size, auth, digest, opts)
    }

    /// A plain URL: learn the size with a one-byte Range request (`bytes=0-0`), which
    /// also shows whether the server honours Range. A server that ignores it sends the
    /// whole blob, which is kept if it is small enough.
    pub fn probe(net: Net, url: Url, opts: &RemoteOptions) -> Result<Self> {
        net.check_scheme(&url)?;
        let blob = Self::with(net, url, 0, None, None, opts)?;
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
                blob.size = resp.body.len() as u64;
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
            .saturating_mul(self.chunk_size)
            .min(self.size)
    }

    /// Fetch bytes `a..b` (chunk-aligned, inside the blob), checked.
    fn fetch(&self, st: &mut State, a: u64, b: u64) -> Result<Fetched> {
        let len = b - a;
        let whole = a == 0 && b == self.size;
        let keep_whole = self.size <= self.full_body_cap;
        let max_body = if keep_whole { len.max(self.size) } else { len };
        let check = |_: &Url, r: &HttpResponse| match r.status {
            206 => check_partial(r, a, b, Some(self.size)),
            200 if r.body.len() as u64 != self.size => Err(format!(
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
                    let mut e = e.context(&format!("bytes {a}-{}", b - 1));
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
                        "{last}: bytes {a}-{} are outside the blob (HTTP 416), though its size \
                         should be {}",
                        b - 1,
                        self.size
                    )))
                }
                s => return Err(Error::io(format!("{last}: bytes {a}-{}: HTTP {s}", b - 1))),
            }
        }
    }

    fn read(&self, st: &mut State, offset: u64, end: u64) -> Result<Vec<u8>> {
        if let Some(full) = &st.full {
            return Ok(full[offset as usize..end as usize].to_vec());
        }
        let cs = self.chunk_size;
        let (first, last) = (offset / cs, (end - 1) / cs);
        let n_chunks = self.size.div_ceil(cs);
        let (stream, sequential) = st.touch_stream(offset, end, cs);
        let mut out = vec![0u8; (end - offset) as usize];
        let copy = |out: &mut [u8], c: u64, data: &[u8]| {
            let c_start = c * cs;
            let from = offset.max(c_start);
            let to = end.min(c_start + data.len() as u64);
            if from < to {
                out[(from - offset) as usize..(to - offset) as usize]
                    .copy_from_slice(&data[(from - c_start) as usize..(to - c_start) as usize]);
            }
        };
        // Runs of missing chunks, as [start, end) chunk indexes.
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let mut hits = 0;
        for c in first..=last {
            match st.chunks.as_mut().and_then(|cache| cache.get(&c)) {
                Some(data) => {
                    copy(&mut out, c, data);
                    hits += 1;
                }
                None => match runs.last_mut() {
                    Some(run) if run.1 == c => run.1 = c + 1,
                    _ => runs.push((c, c + 1)),
                },
            }
        }
        let misses: u64 = runs.iter().map(|r| r.1 - r.0).sum();
        self.net.bump(|s| {
            s.chunk_hits += hits;
            s.chunk_misses += misses;
        });
        if runs.is_empty() {
            return Ok(out);
        }
        if sequential && self.readahead_max > 0 {
            let s = &mut st.streams[stream];
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
            if let Some(run) = runs.last_mut().filter(|r| r.1 == last + 1) {
                let limit = last.saturating_add(1).saturating_add(extra).min(n_chunks);
                while run.1 < limit
                    && !st
                        .chunks
                        .as_ref()
                        .is_some_and(|cache| cache.contains(&run.1))
                {
                    run.1 += 1;
                }
            }
        }
        let per_request = (self.max_request / cs).max(1);
        for (run_start, run_end) in runs {
            let mut c = run_start;
            while c < run_end {
                let piece_end = run_end.min(c.saturating_add(per_request));
                let (a, b) = (c * cs, self.chunk_end(piece_end - 1));
                match self.fetch(st, a, b)? {
                    Fetched::Full(body) => {
                        out.copy_from_slice(&body[offset as usize..end as usize]);
                        st.chunks = None;
                        st.full = Some(body);
                        return Ok(out);
                    }
                    Fetched::Range(body) => {
                        for k in c..piece_end {
                            let from = ((k - c) * cs) as usize;
                            let to = (self.chunk_end(k) - a) as usize;
                            let data = &body[from..to];
                            if (first..=last).contains(&k) {
                                copy(&mut out, k, data);
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
        Ok(out)
    }
}

fn range_headers(a: u64, b: u64) -> Vec<(String, String)> {
    vec![
        ("Range".to_string(), format!("bytes={a}-{}", b - 1)),
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

    fn pread(&self, offset: u64, len: u32) -> Result<Vec<u8>> {
        let end = offset.saturating_add(len as u64).min(self.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut st = self
            .state
            .try_borrow_mut()
            .map_err(|_| Error::io("remote blob: re-entrant read"))?;
        self.read(&mut st, offset, end)
    }
}

/// Whether every attempt failed on a server that answered a Range request with the
/// whole body (HTTP 200).
fn ignored_range(e: &Error) -> bool {
    e.is(Kind::Io) && e.http_status == Some(200)
}
