//! The one thing the network client needs from the outside world: send a request, get a
//! response (or an error), and wait. In the component this is `wasi:http`
//! (`wasi_transport.rs`); in unit tests it is a scripted fake.

use crate::error::{Error, Kind, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    /// Only for publishing (`index --push`): starting a blob upload.
    Post,
    /// Only for publishing: finishing a blob upload, pushing a manifest.
    Put,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: Method,
    /// An absolute `http://` or `https://` URL (already checked by `url::Url::parse`).
    pub url: String,
    pub headers: Vec<(String, String)>,
    /// The request body (empty for GET and HEAD). Sent with its `Content-Length`.
    pub body: Vec<u8>,
}

impl HttpRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpResponse {
    pub status: u16,
    /// Names as the server sent them; compare case-insensitively (see [`HttpResponse::header`]).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// Every value of header `name` (case-insensitive), in order.
    pub fn header_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Sends HTTP requests. Implementations follow no redirects and add no authentication of
/// their own (the host may add `Authorization: Basic` for hosts it holds credentials for).
///
/// Errors from [`Transport::send`] use the crate's error cases this way, so that callers
/// know what a retry can fix:
/// - [`Kind::Io`]: the exchange failed (connection refused or reset, DNS, TLS, timeout,
///   a body cut short). Transient: the caller may retry.
/// - [`Kind::OutOfRange`]: the response body is longer than `max_body` (reading stopped
///   there, or before reading when `Content-Length` said so). The message names the status.
/// - [`Kind::Unsupported`]: the request was not sent and never will be: the host's
///   allow-list denied it, or it cannot be expressed. Not worth retrying.
/// - [`Kind::BadInput`]: the response could not be understood at the HTTP level.
pub trait Transport {
    fn send(&self, req: &HttpRequest, max_body: u64) -> Result<HttpResponse>;
    /// Block for `ms` milliseconds (retry backoff).
    fn sleep_ms(&self, ms: u64);
    /// Send `req` without waiting for the answer, which [`Transport::finish`] collects:
    /// the request travels (and the host reads its body) while the caller works. The
    /// default only remembers the request and sends it in `finish` (no overlap).
    fn start(&self, req: &HttpRequest) -> Result<Started> {
        Ok(Started::Deferred(req.clone()))
    }
    /// The answer to a [`Transport::start`]ed request, as [`Transport::send`] gives it.
    fn finish(&self, started: Started, max_body: u64) -> Result<HttpResponse> {
        match started {
            Started::Sent(pending) => pending.wait(max_body),
            Started::Deferred(req) => self.send(&req, max_body),
        }
    }
    /// The answer to a [`Transport::start`]ed request with its body still to read, so
    /// that its first bytes can be used while the rest arrives: the response (its body
    /// empty) and a reader of the body. A `Content-Length` above `max_body` is refused
    /// as in [`Transport::send`].
    fn open(&self, started: Started, max_body: u64) -> Result<(HttpResponse, Box<dyn BodyReader>)> {
        match started {
            Started::Sent(pending) => pending.open(max_body),
            Started::Deferred(req) => {
                let mut resp = self.send(&req, max_body)?;
                let body = std::mem::take(&mut resp.body);
                Ok((resp, Box::new(InMemory { body, at: 0 })))
            }
        }
    }
}

/// The body of an opened answer ([`Transport::open`]), read piece by piece.
pub trait BodyReader {
    /// The next `n` bytes of the body, blocking until they are in; fewer only where the
    /// body ends. Errors as [`Transport::send`]'s (a body cut short is [`Kind::Io`]).
    fn read(&mut self, n: u64) -> Result<Vec<u8>>;
}

/// A body already in memory, as a [`BodyReader`].
struct InMemory {
    body: Vec<u8>,
    at: usize,
}

impl BodyReader for InMemory {
    fn read(&mut self, n: u64) -> Result<Vec<u8>> {
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        let end = self.at.saturating_add(n).min(self.body.len());
        let piece = self.body.get(self.at..end).unwrap_or_default().to_vec();
        self.at = end;
        Ok(piece)
    }
}

/// An answer on its way (see [`Transport::start`]).
pub trait Pending {
    /// Block until the answer is in; read its body up to `max_body` bytes.
    fn wait(self: Box<Self>, max_body: u64) -> Result<HttpResponse>;
    /// Block until the answer's headers are in; the body is read through the reader.
    fn open(self: Box<Self>, max_body: u64) -> Result<(HttpResponse, Box<dyn BodyReader>)>;
}

/// A started request (dropping it abandons the request).
pub enum Started {
    /// Not sent yet: sent when its answer is asked for.
    Deferred(HttpRequest),
    /// Sent; the answer is on its way.
    Sent(Box<dyn Pending>),
}

impl<T: Transport + ?Sized> Transport for Box<T> {
    fn send(&self, req: &HttpRequest, max_body: u64) -> Result<HttpResponse> {
        (**self).send(req, max_body)
    }
    fn sleep_ms(&self, ms: u64) {
        (**self).sleep_ms(ms)
    }
    fn start(&self, req: &HttpRequest) -> Result<Started> {
        (**self).start(req)
    }
    fn finish(&self, started: Started, max_body: u64) -> Result<HttpResponse> {
        (**self).finish(started, max_body)
    }
    fn open(&self, started: Started, max_body: u64) -> Result<(HttpResponse, Box<dyn BodyReader>)> {
        (**self).open(started, max_body)
    }
}

/// The error a transport returns when a body passes `max_body`.
pub fn body_too_large(url: &str, status: u16, max_body: u64) -> Error {
    Error::out_of_range(format!(
        "{url}: HTTP {status}: response body is longer than the {max_body} bytes expected"
    ))
    .with_status(status)
}

/// Whether a failed exchange may succeed when tried again (see [`Transport`]).
pub fn is_transient(err: &Error) -> bool {
    !err.is(Kind::Unsupported)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_case_insensitive() {
        let resp = HttpResponse {
            status: 200,
            headers: vec![
                ("content-range".into(), "bytes 0-0/1".into()),
                ("Link".into(), "a".into()),
                ("LINK".into(), "b".into()),
            ],
            body: vec![],
        };
        assert_eq!(resp.header("Content-Range"), Some("bytes 0-0/1"));
        assert_eq!(resp.header_all("link").collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(resp.header("x"), None);
        assert!(is_transient(&Error::io("reset")));
        assert!(!is_transient(&Error::unsupported("denied")));
        assert!({
            let e = body_too_large("u", 200, 5);
            e.is(Kind::OutOfRange) && e.http_status == Some(200)
        });
    }
}
