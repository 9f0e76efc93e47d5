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
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use crate::credentials::Credentials;
use crate::http_send::{self, Timeouts};
use crate::range_cache::RangeCache;

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

pub struct EgressPolicy {
    allowed: Mutex<HashSet<String>>,
    /// Hosts that get the credentials: the registry and its token realms.
    credentialed: Mutex<HashSet<String>>,
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
            allowed: Mutex::new(origin.clone()),
            credentialed: Mutex::new(origin),
            credentials,
            insecure,
            tls: http_send::tls_config(ca_file)?,
            timeouts,
            cache,
            stats: EgressStats::default(),
        }))
    }

    fn is_allowed(&self, authority: &str) -> bool {
        self.allowed
            .lock()
            .map(|a| a.contains(authority))
            .unwrap_or(false)
    }

    fn gets_credentials(&self, authority: &str) -> bool {
        self.credentialed
            .lock()
            .map(|a| a.contains(authority))
            .unwrap_or(false)
    }

    /// Learn the hosts a response legitimately sends us to.
    fn observe(
        &self,
        request_path: &str,
        from_credentialed: bool,
        response: &http::Response<WasiBody>,
    ) {
        let header = |name: http::header::HeaderName| {
            response.headers().get(name).and_then(|v| v.to_str().ok())
        };
        if response.status() == http::StatusCode::UNAUTHORIZED && from_credentialed {
            if let Some(realm) = header(http::header::WWW_AUTHENTICATE).and_then(realm_of) {
                if let Some(authority) = authority_of(&realm) {
                    tracing::debug!("egress: allowing token realm {authority}");
                    if let Ok(mut a) = self.allowed.lock() {
                        a.insert(authority.clone());
                    }
                    if let Ok(mut c) = self.credentialed.lock() {
                        c.insert(authority);
                    }
                }
            }
        }
        if response.status().is_redirection() && request_path.contains("/blobs/") {
            if let Some(authority) = header(http::header::LOCATION).and_then(authority_of) {
                tracing::debug!("egress: allowing blob redirect target {authority}");
                if let Ok(mut a) = self.allowed.lock() {
                    a.insert(authority);
                }
            }
        }
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

fn full_body(bytes: Bytes) -> WasiBody {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// The `WasiHttpHooks` of one store: a handle on the shared policy.
pub struct Egress(pub Arc<EgressPolicy>);

type ResponseFuture = Box<
    dyn std::future::Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<WasiBody>,
                Box<dyn std::future::Future<Output = Result<(), HttpError>> + Send>,
            )>,
        > + Send,
>;

impl WasiHttpHooks for Egress {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: Box<dyn std::future::Future<Output = Result<(), HttpError>> + Send>,
    ) -> ResponseFuture {
        let policy = self.0.clone();
        Box::new(async move {
            let done =
                || Box::new(async { Ok(()) }) as Box<dyn std::future::Future<Output = _> + Send>;
            let authority =
                request_authority(request.uri()).ok_or(HttpError::HttpRequestUriInvalid)?;
            let plain = request.uri().scheme() == Some(&http::uri::Scheme::HTTP);
            if !policy.is_allowed(&authority) || (plain && !policy.insecure) {
                policy.stats.denied.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "egress: refused {} {} ({})",
                    request.method(),
                    authority,
                    if plain && !policy.insecure {
                        "plain http needs --insecure"
                    } else {
                        "not an allowed host"
                    }
                );
                return Err(HttpError::HttpRequestDenied);
            }
            let credentialed = policy.gets_credentials(&authority);
            if credentialed && !request.headers().contains_key(http::header::AUTHORIZATION) {
                if let Some(creds) = &policy.credentials {
                    if let Ok(value) = http::HeaderValue::from_str(&creds.basic_header()) {
                        let mut value = value;
                        value.set_sensitive(true);
                        request
                            .headers_mut()
                            .insert(http::header::AUTHORIZATION, value);
                    }
                }
            }
            let key = cache_key(&request);
            if let (Some(cache), Some((hex, start, end))) = (&policy.cache, &key) {
                if let Some(hit) = cache.get(hex, *start, *end) {
                    policy.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
                    policy
                        .stats
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
                    return Ok((response, done()));
                }
            }
            let path = request.uri().path().to_string();
            policy.stats.requests.fetch_add(1, Ordering::Relaxed);
            let response = http_send::send(request, policy.tls.clone(), policy.timeouts).await?;
            policy.observe(&path, credentialed, &response);
            let length = response
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let total = response
                .headers()
                .get(http::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit('/').next())
                .and_then(|v| v.parse::<u64>().ok());
            match (&policy.cache, key, total) {
                (Some(cache), Some((hex, start, end)), Some(total))
                    if response.status() == http::StatusCode::PARTIAL_CONTENT
                        && length == Some(end - start + 1) =>
                {
                    // Read the range whole, keep it, and hand the same bytes on. A body
                    // that is cut short fails here; the component sees the error.
                    let (parts, body) = response.into_parts();
                    let bytes = body.collect().await?.to_bytes();
                    policy
                        .stats
                        .bytes_fetched
                        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    if bytes.len() as u64 == end - start + 1 {
                        cache.put(&hex, start, end, total, &bytes);
                    }
                    Ok((http::Response::from_parts(parts, full_body(bytes)), done()))
                }
                _ => {
                    policy
                        .stats
                        .bytes_fetched
                        .fetch_add(length.unwrap_or(0), Ordering::Relaxed);
                    Ok((response, done()))
                }
            }
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
