//! The host's side of the component's network access: which hosts it may reach, which
//! requests get the user's credentials, the on-disk range cache, and the counters.
//!
//! Policy:
//! - allowed at the start: the registry (or the blob URL's host);
//! - added as they appear: the token realm that the registry's 401 challenge names, and
//!   redirect targets of blob requests (registries redirect to blob storage);
//! - plain http only with `--insecure`;
//! - everything else is refused with `HttpRequestDenied`, which the component sees.
//!
//! Credentials go, as `Authorization: Basic`, only where the registry's challenge asks
//! for them ([`super::credential_policy`]), and only on requests that carry no
//! Authorization of their own (the component sends the Bearer tokens it obtained).
//! Redirect targets never get them.
//!
//! Methods: GET and HEAD everywhere allowed. POST and PUT (blob uploads and manifest
//! pushes) only when the command publishes (`index --push`, [`EgressPolicy::allow_writes`]),
//! and then only to the registry itself: a mount never writes, and a publish never sends
//! bytes to a token realm or a storage host.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use super::blob_counters::{blob_hex, PerBlob};
use super::credential_policy::{CredentialPolicy, Learned};
use super::credentials::Credentials;
use super::http_send::{self, Timeouts};
use super::range_cache::{Key, RangeCache};

/// Responses larger than this are streamed, not put in the range cache (the component
/// asks for a few MiB at a time; a larger one is something else).
const CACHEABLE_MAX: u64 = 64 << 20;

/// How many recent range-cache hits are remembered, to drop them when the component
/// rejects what it read: more than the ranges one call reads (a 32 MiB read in 1 MiB
/// chunks, with readahead), few enough to drop without harm (a refetch each).
const RECENT_HITS: usize = 256;

#[derive(Debug, Default)]
pub struct EgressStats {
    pub requests: AtomicU64,
    pub bytes_fetched: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_bytes: AtomicU64,
    pub denied: AtomicU64,
}

/// The hosts a policy lets through, grown as responses name more (under one lock).
#[derive(Debug, Default)]
struct Hosts {
    allowed: HashSet<String>,
    /// Which requests get the credentials, learned from the registry's challenges.
    credentials: CredentialPolicy,
}

pub struct EgressPolicy {
    hosts: Mutex<Hosts>,
    /// The registry (or blob URL host) the policy was made for: the only host writes go to.
    origin: Option<String>,
    /// Whether POST and PUT may go to `origin` (set for `index --push`).
    writes: AtomicBool,
    credentials: Option<Credentials>,
    insecure: bool,
    /// The pooled sender every store of the device shares.
    sender: Arc<http_send::Sender>,
    timeouts: Timeouts,
    cache: Option<RangeCache>,
    /// Range-cache entries served lately, newest last (see [`RECENT_HITS`]).
    recent_hits: Mutex<VecDeque<Key>>,
    pub stats: EgressStats,
    /// The same traffic split by blob (per layer of a whole image).
    pub per_blob: Arc<PerBlob>,
}

impl EgressPolicy {
    /// A policy that refuses everything: for devices whose blob is a local file.
    pub fn deny_all() -> anyhow::Result<Arc<EgressPolicy>> {
        Self::new(None, None, false, None, Timeouts::default(), None)
    }

    pub fn new(
        origin: Option<String>,
        credentials: Option<Credentials>,
        insecure: bool,
        ca_file: Option<&std::path::Path>,
        timeouts: Timeouts,
        cache: Option<RangeCache>,
    ) -> anyhow::Result<Arc<EgressPolicy>> {
        let have_credentials = credentials.is_some();
        Ok(Arc::new(EgressPolicy {
            hosts: Mutex::new(Hosts {
                allowed: origin.iter().cloned().collect(),
                credentials: CredentialPolicy::new(origin.clone(), have_credentials),
            }),
            origin,
            writes: AtomicBool::new(false),
            credentials,
            insecure,
            sender: http_send::Sender::new(http_send::tls_config(ca_file)?, timeouts),
            timeouts,
            cache,
            recent_hits: Mutex::new(VecDeque::new()),
            stats: EgressStats::default(),
            per_blob: Arc::default(),
        }))
    }

    /// Connections the policy's sender opened, and requests that reused one.
    pub fn connections(&self) -> &super::connector::ConnectionStats {
        &self.sender.connections
    }

    /// Let POST and PUT through to the registry (publishing an index).
    pub fn allow_writes(&self) {
        self.writes.store(true, Ordering::Relaxed);
    }

    /// The host sets. A poisoned lock is an error, not an answer: a thread panicked
    /// while it held the lock, and the request fails rather than being called "denied".
    fn hosts(&self) -> Result<MutexGuard<'_, Hosts>, HttpError> {
        self.hosts.lock().map_err(|_| {
            tracing::error!("egress: the host list's lock is poisoned (a thread panicked)");
            HttpError::InternalError(Some("egress policy lock poisoned".into()))
        })
    }

    /// Learn the hosts a response legitimately sends us to, and from the origin's
    /// challenges, who gets the credentials.
    fn observe(
        &self,
        request_path: &str,
        from_origin: bool,
        response: &http::Response<WasiBody>,
    ) -> Result<(), HttpError> {
        if response.status() == http::StatusCode::UNAUTHORIZED && from_origin {
            let values = response
                .headers()
                .get_all(http::header::WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok());
            let mut hosts = self.hosts()?;
            for learned in hosts.credentials.learn(values) {
                match learned {
                    Learned::Nothing | Learned::Basic => {}
                    Learned::Realm { authority } => {
                        tracing::debug!("egress: allowing token realm {authority}");
                        hosts.allowed.insert(authority);
                    }
                    Learned::Refused { authority, why } => {
                        tracing::warn!("egress: refusing token realm {authority}: {why}");
                        hosts.allowed.remove(&authority);
                    }
                }
            }
        }
        if response.status().is_redirection() && request_path.contains("/blobs/") {
            let location = response
                .headers()
                .get(http::header::LOCATION)
                .and_then(|v| v.to_str().ok());
            if let Some(authority) = location.and_then(authority_of) {
                let mut hosts = self.hosts()?;
                if hosts.credentials.refusal(&authority).is_none() {
                    tracing::debug!("egress: allowing blob redirect target {authority}");
                    hosts.allowed.insert(authority);
                }
            }
        }
        Ok(())
    }
}

fn authority_of(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    let authority = uri.authority()?;
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme() == Some(&http::uri::Scheme::HTTP) {
            80
        } else {
            443
        });
    Some(format!("{}:{port}", authority.host()))
}

/// The authority of a request as `host:port`, with the scheme's default port filled in,
/// so that `registry:443` and `registry` are the same host.
pub(crate) fn request_authority(uri: &http::Uri) -> Option<String> {
    authority_of(&uri.to_string())
}

/// The range-cache key of a cacheable blob range request: a GET of
/// `…/blobs/sha256:HEX` with one `Range: bytes=A-B`.
fn cache_key(request: &http::Request<WasiBody>) -> Option<Key> {
    if request.method() != http::Method::GET {
        return None;
    }
    let uri = request.uri();
    let hex = blob_hex(uri)?;
    let range = request.headers().get(http::header::RANGE)?.to_str().ok()?;
    let (start, end) = range.strip_prefix("bytes=")?.split_once('-')?;
    let (start, end): (u64, u64) = (start.parse().ok()?, end.parse().ok()?);
    let origin = format!("{}://{}", uri.scheme_str()?, request_authority(uri)?);
    (start <= end && end - start < CACHEABLE_MAX).then_some(Key {
        origin,
        hex,
        start,
        end,
    })
}

/// Whether a response is exactly the answer to `key`: a 206 whose Content-Range names
/// the very range asked (`bytes START-END/TOTAL`, END below a numeric TOTAL), whose
/// Content-Length (when given) is the range's length, and with no Content-Encoding.
/// Returns the total. Anything else may be honest, but is not for the cache.
fn exact_answer(key: &Key, response: &http::Response<WasiBody>) -> Option<u64> {
    let headers = response.headers();
    if response.status() != http::StatusCode::PARTIAL_CONTENT {
        return None;
    }
    if let Some(encoding) = headers.get(http::header::CONTENT_ENCODING) {
        if !encoding.as_bytes().eq_ignore_ascii_case(b"identity") {
            return None;
        }
    }
    if headers.get_all(http::header::CONTENT_RANGE).iter().count() != 1 {
        return None;
    }
    let range = headers.get(http::header::CONTENT_RANGE)?.to_str().ok()?;
    let (span, total) = range.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (start, end) = span.split_once('-')?;
    let (start, end, total): (u64, u64, u64) =
        (start.parse().ok()?, end.parse().ok()?, total.parse().ok()?);
    if (start, end) != (key.start, key.end) || end >= total {
        return None;
    }
    match header_number(headers, http::header::CONTENT_LENGTH, None) {
        Some(length) if length != key.len() => None,
        _ => Some(total),
    }
}

/// A header's number: the whole value, or what follows the last `last_of` (the total of
/// a `Content-Range: bytes A-B/TOTAL`).
fn header_number(
    headers: &http::HeaderMap,
    name: http::header::HeaderName,
    last_of: Option<char>,
) -> Option<u64> {
    let text = headers.get(name)?.to_str().ok()?;
    let text = match last_of {
        Some(sep) => text.rsplit(sep).next()?,
        None => text,
    };
    text.parse::<u64>().ok()
}

/// The same GET or HEAD request with an empty body (None for other methods, whose body
/// cannot be replayed).
fn bodiless_copy(request: &http::Request<WasiBody>) -> Option<http::Request<WasiBody>> {
    if request.method() != http::Method::GET && request.method() != http::Method::HEAD {
        return None;
    }
    let mut copy = http::Request::new(full_body(Bytes::new()));
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    Some(copy)
}

fn full_body(bytes: Bytes) -> WasiBody {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// The `WasiHttpHooks` of one store: a handle on the shared policy.
pub struct Egress(pub Arc<EgressPolicy>);

type ResponseFuture = Box<
    dyn std::future::Future<
            Output = wasmtime_wasi_http::Result<(http::Response<WasiBody>, BodyDone)>,
        > + Send,
>;

type BodyDone = Box<dyn std::future::Future<Output = Result<(), HttpError>> + Send>;

/// The body-completion future of a response that needs no more work.
fn done() -> BodyDone {
    Box::new(async { Ok(()) })
}

impl EgressPolicy {
    /// Step 1: refuse a host outside the allow-list, and plain http without
    /// `--insecure`. Returns whether the request goes to the origin (the registry the
    /// user named).
    fn admit(&self, request: &http::Request<WasiBody>) -> Result<bool, HttpError> {
        let authority = request_authority(request.uri()).ok_or(HttpError::HttpRequestUriInvalid)?;
        let plain = request.uri().scheme() == Some(&http::uri::Scheme::HTTP);
        let (allowed, origin, refusal) = {
            let hosts = self.hosts()?;
            (
                hosts.allowed.contains(&authority),
                hosts.credentials.is_origin(&authority),
                hosts.credentials.refusal(&authority).map(str::to_string),
            )
        };
        let reads_only = matches!(*request.method(), http::Method::GET | http::Method::HEAD);
        let may_write = self.writes.load(Ordering::Relaxed)
            && self.origin.as_deref() == Some(authority.as_str())
            && matches!(*request.method(), http::Method::POST | http::Method::PUT);
        let why = if plain && !self.insecure {
            Some("plain http needs --insecure".to_string())
        } else if let Some(refusal) = refusal {
            Some(refusal)
        } else if !allowed {
            Some("not an allowed host".to_string())
        } else if !reads_only && !may_write {
            Some("only GET and HEAD: this command does not publish to the registry".to_string())
        } else {
            None
        };
        if let Some(why) = why {
            self.stats.denied.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("egress: refused {} {authority} ({why})", request.method());
            return Err(HttpError::HttpRequestDenied);
        }
        Ok(origin)
    }

    /// Step 2: the user's credentials, on a request that carries no Authorization of its
    /// own and that a challenge asked them for. Returns whether they were added. A
    /// header that cannot be built fails the request: going on without the credentials
    /// would hide why the registry then says 401.
    fn add_credentials(&self, request: &mut http::Request<WasiBody>) -> Result<bool, HttpError> {
        let Some(creds) = &self.credentials else {
            return Ok(false);
        };
        if request.headers().contains_key(http::header::AUTHORIZATION)
            || !self.hosts()?.credentials.wants_credentials(request.uri())
        {
            return Ok(false);
        }
        let mut value = http::HeaderValue::from_str(&creds.basic_header()).map_err(|e| {
            tracing::error!("egress: the credentials do not fit an Authorization header: {e}");
            HttpError::InternalError(Some("credentials not representable as a header".into()))
        })?;
        value.set_sensitive(true);
        request
            .headers_mut()
            .insert(http::header::AUTHORIZATION, value);
        Ok(true)
    }

    /// Step 3: a blob range already in the range cache, answered as the 206 the
    /// registry would send.
    fn cached_response(
        &self,
        key: &Option<Key>,
    ) -> Result<Option<http::Response<WasiBody>>, HttpError> {
        let (Some(cache), Some(key)) = (&self.cache, key) else {
            return Ok(None);
        };
        let Some(hit) = cache.get(key) else {
            return Ok(None);
        };
        if let Ok(mut recent) = self.recent_hits.lock() {
            if recent.len() >= RECENT_HITS {
                recent.pop_front();
            }
            recent.push_back(key.clone());
        }
        let (start, end) = (key.start, key.end);
        self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
        self.stats
            .cache_bytes
            .fetch_add(hit.bytes.len() as u64, Ordering::Relaxed);
        self.per_blob.update(&key.hex, |c| {
            c.disk_cache_hits += 1;
            c.disk_cache_bytes += hit.bytes.len() as u64;
        });
        let response = http::Response::builder()
            .status(http::StatusCode::PARTIAL_CONTENT)
            .header(
                http::header::CONTENT_RANGE,
                format!("bytes {start}-{end}/{}", hit.total),
            )
            .header(http::header::CONTENT_LENGTH, hit.bytes.len())
            .body(full_body(Bytes::from(hit.bytes)))
            .map_err(|_| HttpError::HttpProtocolError)?;
        Ok(Some(response))
    }

    /// The component rejected what it read (corrupt data): drop the range-cache
    /// entries served lately, so that a bad answer kept once is fetched again rather
    /// than replayed for good.
    pub fn forget_recent_cache_hits(&self) {
        let Some(cache) = &self.cache else { return };
        let recent: Vec<Key> = match self.recent_hits.lock() {
            Ok(mut recent) => recent.drain(..).collect(),
            Err(_) => {
                tracing::error!("egress: the recent-hits lock is poisoned (a thread panicked)");
                return;
            }
        };
        for key in &recent {
            cache.forget(key);
        }
    }

    /// Step 5: an exact 206 for a cacheable range ([`exact_answer`]) is read whole
    /// (within the call deadline: no wasm runs meanwhile), kept, and handed on as the
    /// same bytes; any other response streams through untouched.
    async fn keep_in_cache(
        &self,
        key: Option<Key>,
        hex: Option<&str>,
        response: http::Response<WasiBody>,
    ) -> Result<http::Response<WasiBody>, HttpError> {
        let count = |n: u64| {
            if let Some(hex) = hex {
                self.per_blob.update(hex, |c| c.bytes_fetched += n);
            }
        };
        let length = header_number(response.headers(), http::header::CONTENT_LENGTH, None);
        let exact = key
            .as_ref()
            .and_then(|key| Some((key, exact_answer(key, &response)?)));
        match (&self.cache, exact) {
            (Some(cache), Some((key, total))) => {
                // A body that is cut short or too slow fails here; the component sees
                // the error.
                let (parts, body) = response.into_parts();
                let bytes = tokio::time::timeout(self.timeouts.cached_body, body.collect())
                    .await
                    .map_err(|_| {
                        tracing::warn!(
                            "egress: {} took over {:?} to send {} bytes; giving up",
                            key.origin,
                            self.timeouts.cached_body,
                            key.len()
                        );
                        HttpError::ConnectionReadTimeout
                    })??
                    .to_bytes();
                self.stats
                    .bytes_fetched
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                count(bytes.len() as u64);
                if bytes.len() as u64 == key.len() {
                    cache.put(key, total, &bytes);
                }
                Ok(http::Response::from_parts(parts, full_body(bytes)))
            }
            _ => {
                self.stats
                    .bytes_fetched
                    .fetch_add(length.unwrap_or(0), Ordering::Relaxed);
                count(length.unwrap_or(0));
                Ok(response)
            }
        }
    }
}

impl WasiHttpHooks for Egress {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: BodyDone,
    ) -> ResponseFuture {
        let policy = self.0.clone();
        Box::new(async move {
            let from_origin = policy.admit(&request)?;
            let had_authorization = request.headers().contains_key(http::header::AUTHORIZATION);
            let sent_basic = policy.add_credentials(&mut request)?;
            let key = cache_key(&request);
            if let Some(response) = policy.cached_response(&key)? {
                return Ok((response, done()));
            }
            // A copy to resend if the origin answers with a Basic challenge (the
            // component's requests are GET or HEAD, with no body).
            let resend = (!had_authorization && !sent_basic && from_origin)
                .then(|| bodiless_copy(&request))
                .flatten();
            // Step 4: the request goes out; its response may extend the allow-list.
            let path = request.uri().path().to_string();
            let hex = blob_hex(request.uri());
            let count_request = || {
                policy.stats.requests.fetch_add(1, Ordering::Relaxed);
                if let Some(hex) = &hex {
                    policy.per_blob.update(hex, |c| c.requests += 1);
                }
            };
            count_request();
            let mut response = policy.sender.send(request).await?;
            policy.observe(&path, from_origin, &response)?;
            let unauthorized = response.status() == http::StatusCode::UNAUTHORIZED;
            if let (true, Some(mut again)) = (unauthorized, resend) {
                // The origin asked for Basic (this answer's challenge, or an earlier one
                // another instance saw): the same request once more, with them.
                if policy.add_credentials(&mut again)? {
                    count_request();
                    response = policy.sender.send(again).await?;
                    policy.observe(&path, from_origin, &response)?;
                }
            }
            let response = policy.keep_in_cache(key, hex.as_deref(), response).await?;
            Ok((response, done()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities() {
        assert_eq!(
            authority_of("https://auth.example/token"),
            Some("auth.example:443".into())
        );
        assert_eq!(
            authority_of("http://127.0.0.1:5000/v2/"),
            Some("127.0.0.1:5000".into())
        );
        assert_eq!(authority_of("/relative"), None);
    }
}

#[cfg(test)]
mod method_tests {
    use super::*;

    fn request(method: &str, url: &str) -> http::Request<WasiBody> {
        http::Request::builder()
            .method(method)
            .uri(url)
            .body(full_body(Bytes::new()))
            .unwrap()
    }

    #[test]
    fn writes_only_when_publishing_and_only_to_the_registry() {
        let policy = EgressPolicy::new(
            Some("127.0.0.1:5000".into()),
            None,
            false,
            None,
            Timeouts::default(),
            None,
        )
        .unwrap();
        policy.hosts().unwrap().allowed.insert("auth.io:443".into());
        let url = "https://127.0.0.1:5000/v2/r/blobs/uploads/";
        assert!(policy.admit(&request("GET", url)).is_ok());
        assert!(policy.admit(&request("HEAD", url)).is_ok());
        assert!(policy.admit(&request("POST", url)).is_err());
        assert!(policy.admit(&request("PUT", url)).is_err());
        policy.allow_writes();
        assert!(policy.admit(&request("POST", url)).is_ok());
        assert!(policy.admit(&request("PUT", url)).is_ok());
        assert!(policy.admit(&request("DELETE", url)).is_err());
        assert!(policy
            .admit(&request("PUT", "https://auth.io/token"))
            .is_err());
        assert!(policy
            .admit(&request("GET", "https://auth.io/token"))
            .is_ok());
    }
}

#[cfg(test)]
#[path = "egress_tests.rs"]
mod hostile_server_tests;
