//! The two small blobs `erofs-host pull` hands to containerd as they are: the image
//! manifest and its config, fetched by digest from the registry and checked against that
//! digest (and the config against its size) before containerd sees a byte. The layers are
//! never fetched here: the snapshotter mounts them lazily.
//!
//! A registry that answers 401 with a `Bearer` challenge gets one anonymous token request
//! to the realm it names (Docker Hub's public images); the credentials of the
//! `erofs-host` commands are not used here.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};

use crate::net::http_send::{tls_config, Sender, Timeouts};

/// Manifests above this are refused (containerd's own limit is 4 MiB).
const MANIFEST_MAX: usize = 4 << 20;
/// Image configs above this are refused (real ones are a few KiB; a huge history is
/// rarely above 1 MiB).
const CONFIG_MAX: usize = 16 << 20;

pub struct RegistryFetch {
    sender: Arc<Sender>,
    base: String,
    repository: String,
    token: Option<String>,
}

/// A fetched blob and the media type the registry sent with it.
pub struct Fetched {
    pub bytes: Vec<u8>,
    pub content_type: Option<String>,
}

impl RegistryFetch {
    /// `registry` as the component normalized it (Docker Hub is `docker.io`).
    pub fn new(
        registry: &str,
        repository: &str,
        insecure: bool,
        ca_file: Option<&std::path::Path>,
    ) -> Result<RegistryFetch> {
        let host = if registry == "docker.io" {
            "registry-1.docker.io"
        } else {
            registry
        };
        Ok(RegistryFetch {
            sender: Sender::new(tls_config(ca_file)?, Timeouts::default()),
            base: format!("{}://{host}", if insecure { "http" } else { "https" }),
            repository: repository.to_string(),
            token: None,
        })
    }

    pub async fn manifest(&mut self, digest: &str) -> Result<Fetched> {
        let url = format!("{}/v2/{}/manifests/{digest}", self.base, self.repository);
        let accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
        let f = self.get(&url, accept, MANIFEST_MAX).await?;
        check_digest(&url, &f.bytes, digest, None)?;
        Ok(f)
    }

    pub async fn blob(&mut self, digest: &str, size: u64) -> Result<Fetched> {
        let url = format!("{}/v2/{}/blobs/{digest}", self.base, self.repository);
        let f = self.get(&url, "*/*", CONFIG_MAX).await?;
        check_digest(&url, &f.bytes, digest, Some(size))?;
        Ok(f)
    }

    async fn get(&mut self, url: &str, accept: &str, max: usize) -> Result<Fetched> {
        let mut response = self.send(url, accept).await?;
        if response.status() == http::StatusCode::UNAUTHORIZED && self.token.is_none() {
            let challenge = response
                .headers()
                .get(http::header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            self.token = Some(self.anonymous_token(url, &challenge).await?);
            response = self.send(url, accept).await?;
        }
        if !response.status().is_success() {
            bail!("GET {url}: {}", response.status());
        }
        let content_type = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(';').next().unwrap_or(s).trim().to_string());
        let bytes = read_body(url, response, max).await?;
        Ok(Fetched {
            bytes,
            content_type,
        })
    }

    async fn send(
        &self,
        url: &str,
        accept: &str,
    ) -> Result<http::Response<wasmtime_wasi_http::WasiBody>> {
        let mut request = http::Request::get(url).header(http::header::ACCEPT, accept);
        if let Some(token) = &self.token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(empty_body())
            .with_context(|| format!("GET {url}: building the request"))?;
        self.sender
            .send(request)
            .await
            .map_err(|e| anyhow::anyhow!("GET {url}: {e:?}"))
    }

    /// One anonymous token from the realm of a `Bearer` challenge.
    async fn anonymous_token(&self, url: &str, challenge: &str) -> Result<String> {
        let Some(params) = challenge.strip_prefix("Bearer ") else {
            bail!("GET {url}: 401 without a Bearer challenge ({challenge:?}): the registry wants credentials, which `erofs-host pull` does not send");
        };
        let param = |name: &str| {
            params.split(',').find_map(|p| {
                let (k, v) = p.trim().split_once('=')?;
                (k == name).then(|| v.trim_matches('"').to_string())
            })
        };
        let Some(realm) = param("realm") else {
            bail!("GET {url}: Bearer challenge without a realm: {challenge:?}");
        };
        let mut query = Vec::new();
        for name in ["service", "scope"] {
            if let Some(v) = param(name) {
                query.push(format!("{name}={}", v.replace(' ', "%20")));
            }
        }
        let token_url = if query.is_empty() {
            realm
        } else {
            format!("{realm}?{}", query.join("&"))
        };
        let request = http::Request::get(&token_url)
            .body(empty_body())
            .with_context(|| format!("GET {token_url}: building the request"))?;
        let response = self
            .sender
            .send(request)
            .await
            .map_err(|e| anyhow::anyhow!("GET {token_url}: {e:?}"))?;
        if !response.status().is_success() {
            bail!("GET {token_url} (anonymous token): {}", response.status());
        }
        let body = read_body(&token_url, response, 1 << 20).await?;
        let v: serde_json::Value = serde_json::from_slice(&body)
            .with_context(|| format!("GET {token_url}: not a JSON token answer"))?;
        v.get("token")
            .or_else(|| v.get("access_token"))
            .and_then(|t| t.as_str())
            .map(str::to_string)
            .with_context(|| format!("GET {token_url}: no `token` in the answer"))
    }
}

fn empty_body() -> wasmtime_wasi_http::WasiBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

async fn read_body(
    url: &str,
    response: http::Response<wasmtime_wasi_http::WasiBody>,
    max: usize,
) -> Result<Vec<u8>> {
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| anyhow::anyhow!("GET {url}: reading the body: {e:?}"))?;
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > max {
                bail!("GET {url}: the body is over {max} bytes");
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(bytes)
}

fn check_digest(url: &str, bytes: &[u8], digest: &str, size: Option<u64>) -> Result<()> {
    let got = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
    if got != digest {
        bail!("GET {url}: the body's digest is {got}, not {digest}");
    }
    if let Some(size) = size {
        if bytes.len() as u64 != size {
            bail!(
                "GET {url}: {} bytes, not the {size} its descriptor says",
                bytes.len()
            );
        }
    }
    Ok(())
}
