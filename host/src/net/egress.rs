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
//! Credentials go, as `Authorization: Basic`, only to the registry and its token realm,
//! and only on requests that carry no Authorization of their own (the component sends
//! the Bearer tokens it obtained). Redirect targets never get them.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use super::credentials::Credentials;
use super::http_send::{self, Timeouts};
use super::range_cache::RangeCache;

/// Responses larger than this are streamed, not put in the range cache (the component
/// asks for a few MiB at a time; a larger one is something else).
const CACHEABLE_MAX: u64 = 64 << 20;

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
    /// Hosts that get the credentials: the registry and its token realms.
    credentialed: HashSet<String>,
}

pub struct EgressPolicy {
    hosts: Mutex<Hosts>,
    credentials: Option<Credentials>,
    insecure: bool,
    tls: Arc<rustls::ClientConfig>,
    timeouts: Timeouts,
    cache: Option<RangeCache>,
    pub stats: EgressStats,
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
        let origin: HashSet<String> = origin.into_iter().collect();
        Ok(Arc::new(EgressPolicy {
            hosts: Mutex::new(Hosts {
                allowed: origin.clone(),
                credentialed: origin,
            }),
            credentials,
            insecure,
            tls: http_send::tls_config(ca_file)?,
            timeouts,
            cache,
            stats: EgressStats::default(),
        }))
    }

    /// The host sets. A poisoned lock is an error, not an answer: a thread panicked
    /// while it held the lock, and the request fails rather than being called "denied".
    fn hosts(&self) -> Result<MutexGuard<'_, Hosts>, HttpError> {
        self.hosts.lock().map_err(|_| {
            tracing::error!("egress: the host list's lock is poisoned (a thread panicked)");
            HttpError::InternalError(Some("egress policy lock poisoned".into()))
        })
    }

    /// Learn the hosts a response legitimately sends us to.
    fn observe(
        &self,
        request_path: &str,
        from_credentialed: bool,
        response: &http::Response<WasiBody>,
    ) -> Result<(), HttpError> {
        let header = |name: http::header::HeaderName| {
            response.headers().get(name).and_then(|v| v.to_str().ok())
        };
        if response.status() == http::StatusCode::UNAUTHORIZED && from_credentialed {
            if let Some(realm) = header(http::header::WWW_AUTHENTICATE).and_then(realm_of) {
                if let Some(authority) = authority_of(&realm) {
                    tracing::debug!("egress: allowing token realm {authority}");
                    let mut hosts = self.hosts()?;
                    hosts.allowed.insert(authority.clone());
                    hosts.credentialed.insert(authority);
                }
            }
        }
        if response.status().is_redirection() && request_path.contains("/blobs/") {
            if let Some(authority) = header(http::header::LOCATION).and_then(authority_of) {
                tracing::debug!("egress: allowing blob redirect target {authority}");
                self.hosts()?.allowed.insert(authority);
            }
        }
        Ok(())
    }
}

/// The `realm="..."` of a WWW-Authenticate challenge (only to extend the allow-list; the
/// component parses the challenge for itself).
fn realm_of(challenge: &str) -> Option<String> {
    let start = challenge.find("realm=")? + "realm=".len();
    let rest = &challenge[start..];
    let value = match rest.strip_prefix('"') {
        Some(quoted) => &quoted[..quoted.find('"')?],
        None => rest.split([',', ' ']).next()?,
    };
    Some(value.to_string())
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
fn request_authority(uri: &http::Uri) -> Option<String> {
    authority_of(&uri.to_string())
}

/// `(digest hex, start, end)` of a cacheable blob range request.
fn cache_key(request: &http::Request<WasiBody>) -> Option<(String, u64, u64)> {
    if request.method() != http::Method::GET {
        return None;
    }
    let path = request.uri().path();
    let hex = path.split("/blobs/sha256:").nth(1)?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let range = request.headers().get(http::header::RANGE)?.to_str().ok()?;
    let (start, end) = range.strip_prefix("bytes=")?.split_once('-')?;
    let (start, end): (u64, u64) = (start.parse().ok()?, end.parse().ok()?);
    (start <= end && end - start < CACHEABLE_MAX).then(|| (hex.to_ascii_lowercase(), start, end))
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
    /// `--insecure`. Returns the request's authority and whether it gets credentials.
    fn admit(&self, request: &http::Request<WasiBody>) -> Result<(String, bool), HttpError> {
        let authority = request_authority(request.uri()).ok_or(HttpError::HttpRequestUriInvalid)?;
        let plain = request.uri().scheme() == Some(&http::uri::Scheme::HTTP);
        let (allowed, credentialed) = {
            let hosts = self.hosts()?;
            (
                hosts.allowed.contains(&authority),
                hosts.credentialed.contains(&authority),
            )
        };
        let why = if plain && !self.insecure {
            Some("plain http needs --insecure")
        } else if !allowed {
            Some("not an allowed host")
        } else {
            None
        };
        if let Some(why) = why {
            self.stats.denied.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("egress: refused {} {authority} ({why})", request.method());
            return Err(HttpError::HttpRequestDenied);
        }
        Ok((authority, credentialed))
    }

    /// Step 2: the user's credentials, on a credentialed host's request that carries no
    /// Authorization of its own. A header that cannot be built fails the request: going
    /// on without the credentials would hide why the registry then says 401.
    fn add_credentials(&self, request: &mut http::Request<WasiBody>) -> Result<(), HttpError> {
        let Some(creds) = &self.credentials else {
            return Ok(());
        };
        if request.headers().contains_key(http::header::AUTHORIZATION) {
            return Ok(());
        }
        let mut value = http::HeaderValue::from_str(&creds.basic_header()).map_err(|e| {
            tracing::error!("egress: the credentials do not fit an Authorization header: {e}");
            HttpError::InternalError(Some("credentials not representable as a header".into()))
        })?;
        value.set_sensitive(true);
        request
            .headers_mut()
            .insert(http::header::AUTHORIZATION, value);
        Ok(())
    }

    /// Step 3: a blob range already in the range cache, answered as the 206 the
    /// registry would send.
    fn cached_response(
        &self,
        key: &Option<(String, u64, u64)>,
    ) -> Result<Option<http::Response<WasiBody>>, HttpError> {
        let (Some(cache), Some((hex, start, end))) = (&self.cache, key) else {
            return Ok(None);
        };
        let Some(hit) = cache.get(hex, *start, *end) else {
            return Ok(None);
        };
        self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
        self.stats
            .cache_bytes
            .fetch_add(hit.bytes.len() as u64, Ordering::Relaxed);
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

    /// Step 5: a complete 206 for a cacheable range is read whole, kept, and handed on
    /// as the same bytes; any other response streams through untouched.
    async fn keep_in_cache(
        &self,
        key: Option<(String, u64, u64)>,
        response: http::Response<WasiBody>,
    ) -> Result<http::Response<WasiBody>, HttpError> {
        let headers = response.headers();
        let length = header_number(headers, http::header::CONTENT_LENGTH, None);
        let total = header_number(headers, http::header::CONTENT_RANGE, Some('/'));
        match (&self.cache, key, total) {
            (Some(cache), Some((hex, start, end)), Some(total))
                if response.status() == http::StatusCode::PARTIAL_CONTENT
                    && length == Some(end - start + 1) =>
            {
                // A body that is cut short fails here; the component sees the error.
                let (parts, body) = response.into_parts();
                let bytes = body.collect().await?.to_bytes();
                self.stats
                    .bytes_fetched
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                if bytes.len() as u64 == end - start + 1 {
                    cache.put(&hex, start, end, total, &bytes);
                }
                Ok(http::Response::from_parts(parts, full_body(bytes)))
            }
            _ => {
                self.stats
                    .bytes_fetched
                    .fetch_add(length.unwrap_or(0), Ordering::Relaxed);
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
            let (_, credentialed) = policy.admit(&request)?;
            if credentialed {
                policy.add_credentials(&mut request)?;
            }
            let key = cache_key(&request);
            if let Some(response) = policy.cached_response(&key)? {
                return Ok((response, done()));
            }
            // Step 4: the request goes out; its response may extend the allow-list.
            let path = request.uri().path().to_string();
            policy.stats.requests.fetch_add(1, Ordering::Relaxed);
            let response = http_send::send(request, policy.tls.clone(), policy.timeouts).await?;
            policy.observe(&path, credentialed, &response)?;
            let response = policy.keep_in_cache(key, response).await?;
            Ok((response, done()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn realms_and_authorities() {
        assert_eq!(
            realm_of(
                r#"Bearer realm="https://auth.example:8443/token",service="registry",scope="repository:a:pull""#
            ),
            Some("https://auth.example:8443/token".into())
        );
        assert_eq!(
            realm_of("Bearer realm=https://a/token,service=x"),
            Some("https://a/token".into())
        );
        assert_eq!(realm_of("Basic"), None);
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
