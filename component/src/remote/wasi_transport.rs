//! The component's [`Transport`]: `wasi:http/outgoing-handler`, used synchronously
//! (block on the response future, then `blocking_read` the body), and the monotonic clock
//! for backoff. The host decides which requests leave the sandbox; a denial comes back as
//! `HTTP-request-denied` and is reported naming the host.

use wasi::http::outgoing_handler;
use wasi::http::types::{
    ErrorCode, Fields, IncomingResponse, Method as WasiMethod, OutgoingBody, OutgoingRequest,
    RequestOptions, Scheme as WasiScheme,
};
use wasi::io::streams::StreamError;

use wasi::http::types::FutureIncomingResponse;

use super::transport::{
    body_too_large, BodyReader, HttpRequest, HttpResponse, Method, Pending, Started, Transport,
};
use super::url::{Scheme, Url};
use crate::error::{Error, Result};

const USER_AGENT: &str = concat!("erofs-wasm/", env!("CARGO_PKG_VERSION"));

/// Bytes asked of the body stream per read.
const READ_PIECE: u64 = 1 << 20;

/// Timeouts passed to the host with each request (the host may cap them further). They
/// keep a dead server from holding a read until the embedder's call deadline.
#[derive(Debug, Clone, Copy)]
pub struct WasiTransport {
    pub connect_timeout_ms: u64,
    pub first_byte_timeout_ms: u64,
    pub between_bytes_timeout_ms: u64,
}

impl Default for WasiTransport {
    fn default() -> Self {
        // 5 s to connect, 10 s to the first byte and between bytes: generous for a
        // registry, and short enough that a retry still fits in a 30 s call deadline.
        Self {
            connect_timeout_ms: 5_000,
            first_byte_timeout_ms: 10_000,
            between_bytes_timeout_ms: 10_000,
        }
    }
}

fn ns(ms: u64) -> u64 {
    ms.saturating_mul(1_000_000)
}

/// An `error-code` as our error: denials and malformed requests are not worth a retry;
/// everything else is an I/O error.
fn from_code(url: &Url, code: ErrorCode) -> Error {
    match code {
        ErrorCode::HttpRequestDenied => Error::unsupported(format!(
            "request to {} denied by the host: {} is not on its network allow-list",
            url, url.authority
        )),
        ErrorCode::HttpRequestUriInvalid
        | ErrorCode::HttpRequestMethodInvalid
        | ErrorCode::HttpRequestUriTooLong => Error::unsupported(format!(
            "{url}: the host cannot send this request ({code:?})"
        )),
        other => Error::io(format!("{url}: {}", describe(&other))),
    }
}

fn describe(code: &ErrorCode) -> String {
    let text = format!("{code:?}");
    text.strip_prefix("ErrorCode::")
        .unwrap_or(&text)
        .to_string()
}

fn bad_request(url: &Url, what: &str) -> Error {
    Error::unsupported(format!("{url}: the host refused the request's {what}"))
}

impl Transport for WasiTransport {
    fn send(&self, req: &HttpRequest, max_body: u64) -> Result<HttpResponse> {
        let started = self.start(req)?;
        self.finish(started, max_body)
    }

    fn sleep_ms(&self, ms: u64) {
        wasi::clocks::monotonic_clock::subscribe_duration(ns(ms)).block();
    }

    /// `outgoing-handler.handle` returns at once: the host sends the request and reads
    /// the answer (its body too) while the component goes on.
    fn start(&self, req: &HttpRequest) -> Result<Started> {
        let url = Url::parse(&req.url)
            .map_err(|e| Error::unsupported(format!("cannot send to this URL: {}", e.message())))?;
        let mut entries: Vec<(String, Vec<u8>)> = req
            .headers
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v.as_bytes().to_vec()))
            .collect();
        if !entries.iter().any(|(n, _)| n == "user-agent") {
            entries.push(("user-agent".to_string(), USER_AGENT.as_bytes().to_vec()));
        }
        let sends_body = matches!(req.method, Method::Post | Method::Put);
        if sends_body {
            entries.retain(|(n, _)| n != "content-length");
            entries.push((
                "content-length".to_string(),
                req.body.len().to_string().into_bytes(),
            ));
        }
        let fields = Fields::from_list(&entries)
            .map_err(|e| Error::unsupported(format!("{url}: bad request header ({e:?})")))?;
        let request = OutgoingRequest::new(fields);
        let method = match req.method {
            Method::Get => WasiMethod::Get,
            Method::Head => WasiMethod::Head,
            Method::Post => WasiMethod::Post,
            Method::Put => WasiMethod::Put,
        };
        let scheme = match url.scheme {
            Scheme::Http => WasiScheme::Http,
            Scheme::Https => WasiScheme::Https,
        };
        request
            .set_method(&method)
            .map_err(|()| bad_request(&url, "method"))?;
        request
            .set_scheme(Some(&scheme))
            .map_err(|()| bad_request(&url, "scheme"))?;
        request
            .set_authority(Some(&url.authority))
            .map_err(|()| bad_request(&url, "authority"))?;
        request
            .set_path_with_query(Some(&url.path_and_query))
            .map_err(|()| bad_request(&url, "path"))?;
        let options = RequestOptions::new();
        // An error here only means the host does not support that timeout.
        let _ = options.set_connect_timeout(Some(ns(self.connect_timeout_ms)));
        let _ = options.set_first_byte_timeout(Some(ns(self.first_byte_timeout_ms)));
        let _ = options.set_between_bytes_timeout(Some(ns(self.between_bytes_timeout_ms)));

        let outgoing_body = request
            .body()
            .map_err(|()| Error::io(format!("{url}: request body already taken")))?;
        let future =
            outgoing_handler::handle(request, Some(options)).map_err(|c| from_code(&url, c))?;
        // The body is written after `handle`: the host consumes it as it sends.
        write_body(
            outgoing_body,
            &url,
            if sends_body { &req.body } else { &[] },
        )?;
        Ok(Started::Sent(Box::new(WasiPending {
            future,
            url,
            head: req.method == Method::Head,
        })))
    }
}

/// A request `outgoing-handler.handle` took: its answer, when it comes.
struct WasiPending {
    future: FutureIncomingResponse,
    url: Url,
    head: bool,
}

/// An answer whose headers are in.
struct Answer {
    response: IncomingResponse,
    status: u16,
    headers: Vec<(String, String)>,
    content_length: Option<u64>,
}

impl WasiPending {
    /// Block until the response headers are in.
    fn answer(&self) -> Result<Answer> {
        let url = &self.url;
        let response = loop {
            match self.future.get() {
                Some(Ok(Ok(response))) => break response,
                Some(Ok(Err(code))) => return Err(from_code(url, code)),
                Some(Err(())) => return Err(Error::io(format!("{url}: response already taken"))),
                None => self.future.subscribe().block(),
            }
        };
        let status = response.status();
        let headers: Vec<(String, String)> = {
            let fields = response.headers();
            let entries = fields.entries();
            entries
                .into_iter()
                .map(|(n, v)| (n, String::from_utf8_lossy(&v).into_owned()))
                .collect()
        };
        let content_length = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse::<u64>().ok());
        Ok(Answer {
            response,
            status,
            headers,
            content_length,
        })
    }
}

impl Pending for WasiPending {
    fn wait(self: Box<Self>, max_body: u64) -> Result<HttpResponse> {
        let Answer {
            response,
            status,
            headers,
            content_length,
        } = self.answer()?;
        let url = &self.url;
        if self.head {
            return Ok(HttpResponse {
                status,
                headers,
                body: Vec::new(),
            });
        }
        if content_length.is_some_and(|n| n > max_body) {
            return Err(body_too_large(&url.to_string(), status, max_body));
        }
        let expected = content_length.unwrap_or(0).min(max_body);
        let body = read_body(&response, url, status, max_body, expected)?;
        if let Some(n) = content_length {
            if body.len() as u64 != n {
                return Err(Error::io(format!(
                    "{url}: HTTP {status}: body ended after {} of {n} bytes",
                    body.len()
                )));
            }
        }
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }

    fn open(self: Box<Self>, max_body: u64) -> Result<(HttpResponse, Box<dyn BodyReader>)> {
        let answer = self.answer()?;
        let url = self.url.clone();
        let status = answer.status;
        if answer.content_length.is_some_and(|n| n > max_body) {
            return Err(body_too_large(&url.to_string(), status, max_body));
        }
        let body = answer
            .response
            .consume()
            .map_err(|()| Error::io(format!("{url}: response body already taken")))?;
        let stream = body
            .stream()
            .map_err(|()| Error::io(format!("{url}: response body stream already taken")))?;
        let head = HttpResponse {
            status,
            headers: answer.headers,
            body: Vec::new(),
        };
        let reader = WasiBodyReader {
            stream,
            _body: body,
            _response: answer.response,
            url,
            status,
            got: 0,
            length: answer.content_length,
            max_body,
        };
        Ok((head, Box::new(reader)))
    }
}

/// An opened answer's body. Fields drop in order: the stream is a child of the body,
/// which is a child of the response.
struct WasiBodyReader {
    stream: wasi::io::streams::InputStream,
    _body: wasi::http::types::IncomingBody,
    _response: IncomingResponse,
    url: Url,
    status: u16,
    /// Body bytes read so far, and what Content-Length promised.
    got: u64,
    length: Option<u64>,
    max_body: u64,
}

impl BodyReader for WasiBodyReader {
    fn read(&mut self, n: u64) -> Result<Vec<u8>> {
        let (url, status) = (&self.url, self.status);
        let mut out = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
        while (out.len() as u64) < n {
            let room = n - out.len() as u64;
            match self.stream.blocking_read(room.min(READ_PIECE)) {
                Ok(bytes) => out.extend_from_slice(&bytes),
                Err(StreamError::Closed) => {
                    let got = self.got.saturating_add(out.len() as u64);
                    if let Some(length) = self.length.filter(|&l| got < l) {
                        return Err(Error::io(format!(
                            "{url}: HTTP {status}: body ended after {got} of {length} bytes"
                        )));
                    }
                    break;
                }
                Err(StreamError::LastOperationFailed(e)) => {
                    let cause = match wasi::http::types::http_error_code(&e) {
                        Some(code) => describe(&code),
                        None => e.to_debug_string(),
                    };
                    return Err(Error::io(format!(
                        "{url}: HTTP {status}: reading the body failed after {} bytes: {cause}",
                        self.got.saturating_add(out.len() as u64)
                    )));
                }
            }
        }
        self.got = self.got.saturating_add(out.len() as u64);
        if self.got > self.max_body {
            return Err(body_too_large(&url.to_string(), status, self.max_body));
        }
        Ok(out)
    }
}

/// Bytes handed to one `blocking-write-and-flush` (the most WASI 0.2 allows per call).
const WRITE_PIECE: usize = 4096;

/// Write `bytes` as the request body and finish it.
fn write_body(body: OutgoingBody, url: &Url, bytes: &[u8]) -> Result<()> {
    let failed = |what: &str, e: StreamError| {
        let cause = match e {
            StreamError::Closed => "the host closed the stream".to_string(),
            StreamError::LastOperationFailed(e) => e.to_debug_string(),
        };
        Error::io(format!("{url}: {what} the request body failed: {cause}"))
    };
    {
        let stream = body
            .write()
            .map_err(|()| Error::io(format!("{url}: request body stream already taken")))?;
        for piece in bytes.chunks(WRITE_PIECE) {
            stream
                .blocking_write_and_flush(piece)
                .map_err(|e| failed("writing", e))?;
        }
        // The stream is a child of the body: it is dropped before the body finishes.
    }
    OutgoingBody::finish(body, None).map_err(|code| from_code(url, code))
}

/// Read the whole body, stopping with an error once it passes `max_body`.
fn read_body(
    response: &IncomingResponse,
    url: &Url,
    status: u16,
    max_body: u64,
    expected: u64,
) -> Result<Vec<u8>> {
    let body = response
        .consume()
        .map_err(|()| Error::io(format!("{url}: response body already taken")))?;
    let stream = body
        .stream()
        .map_err(|()| Error::io(format!("{url}: response body stream already taken")))?;
    let mut out = Vec::with_capacity(usize::try_from(expected).unwrap_or(0));
    let result = loop {
        // Ask for one byte more than allowed, to notice a body that is too long.
        let room = max_body.saturating_sub(out.len() as u64).saturating_add(1);
        match stream.blocking_read(room.min(READ_PIECE)) {
            Ok(bytes) => {
                out.extend_from_slice(&bytes);
                if out.len() as u64 > max_body {
                    break Err(body_too_large(&url.to_string(), status, max_body));
                }
            }
            Err(StreamError::Closed) => break Ok(()),
            Err(StreamError::LastOperationFailed(e)) => {
                let cause = match wasi::http::types::http_error_code(&e) {
                    Some(code) => describe(&code),
                    None => e.to_debug_string(),
                };
                break Err(Error::io(format!(
                    "{url}: HTTP {status}: reading the body failed after {} bytes: {cause}",
                    out.len()
                )));
            }
        }
    };
    // The stream is a child of the body: drop it first.
    drop(stream);
    drop(body);
    result.map(|()| out)
}
