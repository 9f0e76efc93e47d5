//! The one thing the network client needs from the outside world: send a request, get a
//! response (or an error), and wait. In the component this is `wasi:http`
//! (`wasi_transport.rs`); in unit tests it is a scripted fake.

use crate::error::{Error, Kind, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: Method,
    /// An absolute `http://` or `https://` URL (already checked by `url::Url::parse`).
    pub url: String,
    pub headers: Vec<(String, String)>,
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
}

impl<T: Transport + ?Sized> Transport for Box<T> {
    fn send(&self, req: &HttpRequest, max_body: u64) -> Result<HttpResponse> {
        (**self).send(req, max_body)
    }
    fn sleep_ms(&self, ms: u64) {
        (**self).sleep_ms(ms)
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
