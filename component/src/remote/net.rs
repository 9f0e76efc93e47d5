//! A [`Transport`] with the policies every request shares: counters, the `https`-only
//! rule, bounded retries with exponential backoff, and redirects.

use std::cell::Cell;

use super::transport::{
    is_transient, BodyReader, HttpRequest, HttpResponse, Method, Started, Transport,
};
use super::url::{shorten, Scheme, Url};
use super::RemoteOptions;
use crate::error::{Error, Result};
use crate::source::RemoteStats;

pub struct Net {
    transport: Box<dyn Transport>,
    stats: Cell<RemoteStats>,
    pub max_retries: u32,
    backoff_initial_ms: u64,
    backoff_max_ms: u64,
    pub max_redirects: u32,
    pub allow_http: bool,
    /// Largest manifest or index read.
    pub max_manifest: u64,
}

/// Whether a status is worth another attempt: timeouts, throttling, server errors.
pub fn retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500..=599)
}

/// Judges a final response: `Err(cause)` makes it a failed attempt, to be retried.
pub type Check<'a> = &'a dyn Fn(&Url, &HttpResponse) -> std::result::Result<(), String>;

/// A [`Check`] that accepts every response.
pub fn accept_any(_: &Url, _: &HttpResponse) -> std::result::Result<(), String> {
    Ok(())
}

pub fn is_redirect(status: u16) -> bool {
    matches!(status, 301 | 302 | 303 | 307 | 308)
}

impl Net {
    pub fn new(transport: Box<dyn Transport>, opts: &RemoteOptions) -> Self {
        Self {
            transport,
            stats: Cell::new(RemoteStats::default()),
            max_retries: opts.max_retries,
            backoff_initial_ms: opts.backoff_initial_ms,
            backoff_max_ms: opts.backoff_max_ms,
            max_redirects: opts.max_redirects,
            allow_http: opts.insecure,
            max_manifest: opts.max_manifest_bytes,
        }
    }

    pub fn stats(&self) -> RemoteStats {
        self.stats.get()
    }

    pub fn bump(&self, f: impl FnOnce(&mut RemoteStats)) {
        let mut s = self.stats.get();
        f(&mut s);
        self.stats.set(s);
    }

    /// Refuse plain `http` unless insecure mode is on.
    pub fn check_scheme(&self, url: &Url) -> Result<()> {
        if url.scheme == Scheme::Http && !self.allow_http {
            return Err(Error::unsupported(format!(
                "{url}: plain http is refused; use https, or allow it with the `insecure` remote option"
            )));
        }
        Ok(())
    }

    /// One exchange, counted.
    pub fn send(&self, req: &HttpRequest, max_body: u64) -> Result<HttpResponse> {
        self.bump(|s| s.requests += 1);
        let resp = self.transport.send(req, max_body)?;
        self.bump(|s| s.bytes_fetched += resp.body.len() as u64);
        Ok(resp)
    }

    /// One exchange started without waiting for its answer ([`Transport::start`]);
    /// counted once it is really sent.
    pub fn start(&self, req: &HttpRequest) -> Result<Started> {
        let started = self.transport.start(req)?;
        if matches!(started, Started::Sent(_)) {
            self.bump(|s| s.requests += 1);
        }
        Ok(started)
    }

    /// The answer to [`Net::start`].
    pub fn finish(&self, started: Started, max_body: u64) -> Result<HttpResponse> {
        if matches!(started, Started::Deferred(_)) {
            self.bump(|s| s.requests += 1);
        }
        let resp = self.transport.finish(started, max_body)?;
        self.bump(|s| s.bytes_fetched += resp.body.len() as u64);
        Ok(resp)
    }

    /// The answer to [`Net::start`] with its body still to read ([`Transport::open`]);
    /// the caller counts the body bytes it reads.
    pub fn open(
        &self,
        started: Started,
        max_body: u64,
    ) -> Result<(HttpResponse, Box<dyn BodyReader>)> {
        if matches!(started, Started::Deferred(_)) {
            self.bump(|s| s.requests += 1);
        }
        self.transport.open(started, max_body)
    }

    /// Wait before retry number `retry` (1-based): the initial backoff doubled each time,
    /// capped.
    pub fn backoff(&self, retry: u32) {
        self.bump(|s| s.retries += 1);
        let shift = retry.saturating_sub(1).min(32);
        let ms = self
            .backoff_initial_ms
            .saturating_mul(1u64 << shift)
            .min(self.backoff_max_ms);
        if ms > 0 {
            self.transport.sleep_ms(ms);
        }
    }

    /// A GET or HEAD of `url` that retries transient failures (connection errors, 408,
    /// 429, 5xx, and responses `check` rejects) and follows redirects, asking `headers`
    /// for each hop's headers (so that a token goes only where it belongs). Returns the
    /// final URL and response; an error only when every attempt failed or the request
    /// cannot be made.
    pub fn fetch(
        &self,
        method: Method,
        url: &Url,
        headers: &dyn Fn(&Url) -> Vec<(String, String)>,
        max_body: u64,
        check: Check<'_>,
    ) -> Result<(Url, HttpResponse)> {
        self.exchange(method, url, headers, &[], max_body, check)
    }

    /// [`Net::fetch`] with a request body (a blob upload or a manifest push). The body
    /// goes with every attempt and every redirect hop: the registry requests it sends are
    /// idempotent (a PUT by digest), or start a fresh upload session (a POST).
    pub fn exchange(
        &self,
        method: Method,
        url: &Url,
        headers: &dyn Fn(&Url) -> Vec<(String, String)>,
        body: &[u8],
        max_body: u64,
        check: Check<'_>,
    ) -> Result<(Url, HttpResponse)> {
        // The last failed attempt: its cause, and its HTTP status when it got a response.
        let mut last_cause = String::new();
        let mut last_status = None;
        for attempt in 0..=self.max_retries {
            if attempt > 0 {
                self.backoff(attempt);
            }
            let mut current = url.clone();
            let mut hops = 0u32;
            let outcome = loop {
                self.check_scheme(&current)?;
                let req = HttpRequest {
                    method,
                    url: current.to_string(),
                    headers: headers(&current),
                    body: body.to_vec(),
                };
                let resp = match self.send(&req, max_body) {
                    Ok(resp) => resp,
                    Err(e) if is_transient(&e) => break Err((e.http_status, e.message())),
                    Err(e) => return Err(e),
                };
                if is_redirect(resp.status) {
                    current = self.follow(&current, &resp, &mut hops)?;
                    continue;
                }
                if retryable_status(resp.status) {
                    break Err((
                        Some(resp.status),
                        format!("{current}: HTTP {}", resp.status),
                    ));
                }
                if let Err(cause) = check(&current, &resp) {
                    break Err((Some(resp.status), format!("{current}: {cause}")));
                }
                break Ok((current, resp));
            };
            match outcome {
                Ok(done) => return Ok(done),
                Err((status, cause)) => {
                    last_status = status;
                    last_cause = cause;
                }
            }
        }
        let err = Error::io(format!(
            "giving up after {} attempts; last: {last_cause}",
            self.max_retries.saturating_add(1)
        ));
        Err(match last_status {
            Some(status) => err.with_status(status),
            None => err,
        })
    }

    /// The target of a redirect response, checked: a `Location` that resolves, not too
    /// many hops, and no downgrade to plain http unless insecure.
    pub fn follow(&self, from: &Url, resp: &HttpResponse, hops: &mut u32) -> Result<Url> {
        *hops += 1;
        if *hops > self.max_redirects {
            return Err(Error::io(format!(
                "{from}: more than {} redirects",
                self.max_redirects
            )));
        }
        let location = resp.header("location").ok_or_else(|| {
            Error::io(format!(
                "{from}: HTTP {} redirect without a Location header",
                resp.status
            ))
        })?;
        let target = from
            .resolve(location)
            .map_err(|e| e.context(&format!("{from}: redirect to `{}`", shorten(location))))?;
        self.check_scheme(&target)?;
        self.bump(|s| s.redirects += 1);
        Ok(target)
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::{resp, FakeTransport};
    use super::*;
    use crate::error::Kind;

    fn net(fake: &FakeTransport) -> Net {
        Net::new(Box::new(fake.clone()), &RemoteOptions::default())
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let fake = FakeTransport::new();
        let n = net(&fake);
        for r in 1..=7 {
            n.backoff(r);
        }
        assert_eq!(fake.slept(), [100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(n.stats().retries, 7);
    }

    #[test]
    fn fetch_retries_then_succeeds() {
        let fake = FakeTransport::new();
        fake.push_err(Error::io("connection reset"));
        fake.push(resp(503, &[], b""));
        fake.push(resp(200, &[], b"ok"));
        let n = net(&fake);
        let url = Url::parse("https://h/x").unwrap();
        let (_, r) = n
            .fetch(Method::Get, &url, &|_| vec![], 10, &accept_any)
            .unwrap();
        assert_eq!(r.body, b"ok");
        assert_eq!(fake.slept(), [100, 200]);
        let s = n.stats();
        assert_eq!((s.requests, s.retries, s.bytes_fetched), (3, 2, 2));
    }

    #[test]
    fn fetch_gives_up_with_last_cause() {
        let fake = FakeTransport::new();
        for _ in 0..5 {
            fake.push(resp(502, &[], b""));
        }
        let err = net(&fake)
            .fetch(
                Method::Get,
                &Url::parse("https://h/x").unwrap(),
                &|_| vec![],
                10,
                &accept_any,
            )
            .unwrap_err();
        assert!(
            err.is(Kind::Io)
                && err.message().contains("5 attempts")
                && err.message().contains("HTTP 502"),
            "{err}"
        );
        assert_eq!(fake.remaining(), 0);
    }

    #[test]
    fn fetch_does_not_retry_denials_or_plain_http() {
        let fake = FakeTransport::new();
        fake.push_err(Error::unsupported("request to evil.io denied"));
        let n = net(&fake);
        let err = n
            .fetch(
                Method::Get,
                &Url::parse("https://evil.io/").unwrap(),
                &|_| vec![],
                10,
                &accept_any,
            )
            .unwrap_err();
        assert!(err.message().contains("denied"));
        assert_eq!(n.stats().requests, 1);
        let err = n
            .fetch(
                Method::Get,
                &Url::parse("http://h/").unwrap(),
                &|_| vec![],
                10,
                &accept_any,
            )
            .unwrap_err();
        assert!(err.message().contains("`insecure` remote option"), "{err}");
    }

    #[test]
    fn fetch_follows_redirects_with_per_hop_headers() {
        let fake = FakeTransport::new();
        fake.push(resp(307, &[("Location", "https://cdn.io/blob?sig=1")], b""));
        fake.push(resp(302, &[("location", "/final")], b""));
        fake.push(resp(200, &[], b"data"));
        let n = net(&fake);
        let start = Url::parse("https://reg.io/v2/r/blobs/x").unwrap();
        let hdrs = |u: &Url| {
            if u.host() == "reg.io" {
                vec![("Authorization".to_string(), "Bearer t".to_string())]
            } else {
                vec![]
            }
        };
        let (last, r) = n
            .fetch(Method::Get, &start, &hdrs, 10, &accept_any)
            .unwrap();
        assert_eq!(last.to_string(), "https://cdn.io/final");
        assert_eq!(r.body, b"data");
        let reqs = fake.requests();
        assert_eq!(reqs[0].header("authorization"), Some("Bearer t"));
        assert_eq!(reqs[1].url, "https://cdn.io/blob?sig=1");
        assert_eq!(reqs[1].header("authorization"), None);
        assert_eq!(n.stats().redirects, 2);
    }

    #[test]
    fn redirect_limits() {
        let fake = FakeTransport::new();
        for _ in 0..6 {
            fake.push(resp(302, &[("Location", "/again")], b""));
        }
        let n = net(&fake);
        let err = n
            .fetch(
                Method::Get,
                &Url::parse("https://h/").unwrap(),
                &|_| vec![],
                10,
                &accept_any,
            )
            .unwrap_err();
        assert!(err.message().contains("more than 5 redirects"), "{err}");
        let fake = FakeTransport::new();
        fake.push(resp(302, &[], b""));
        fake.push(resp(302, &[("Location", "http://h/plain")], b""));
        let n = net(&fake);
        let url = Url::parse("https://h/").unwrap();
        assert!(n
            .fetch(Method::Get, &url, &|_| vec![], 10, &accept_any)
            .unwrap_err()
            .message()
            .contains("Location"));
        assert!(n
            .fetch(Method::Get, &url, &|_| vec![], 10, &accept_any)
            .unwrap_err()
            .message()
            .contains("plain http"));
    }
}
