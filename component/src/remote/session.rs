//! One repository on one registry, spoken to with the distribution API: manifests by tag
//! or digest, whole small blobs checked against their digest, the referrers API, and (for
//! publishing) blob uploads and manifest pushes. Authentication is the shared [`Auth`]:
//! the host adds the user's credentials; the component answers Bearer challenges.


use std::cell::RefCell;

use super::auth::{send_with_auth, Access, Auth};
use super::manifest::sha256_digest;
use super::net::{accept_any, Net};
use super::reference::{validate_digest, Reference};
use super::transport::{HttpResponse, Method, Transport};
use super::url::{encode_query_value, shorten, Url};
use super::RemoteOptions;
use crate::error::{Error, Result};

/// Response bodies we read but do not use (upload answers, error documents): a registry's
/// JSON error is well under this.
const MAX_IGNORED_BODY: u64 = 64 << 10;

/// A manifest or index as fetched: its bytes, the `Content-Type` the registry named, and
/// the digest of the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub body: Vec<u8>,
    pub media_type: Option<String>,
    pub digest: String,
}

pub struct Session {
    pub net: Net,
    pub auth: RefCell<Auth>,
    /// `scheme://api_host/`.
    pub base: Url,
    pub reference: Reference,
}

impl Session {
    /// Parse `reference` and set up the client for its repository, asking tokens for
    /// `access`.
    pub fn open(
        reference: &str,
        transport: Box<dyn Transport>,
        opts: &RemoteOptions,
        access: Access,
    ) -> Result<Session> {
        let reference = Reference::parse(reference)?;
        let base = reference.api_base(opts.insecure)?;
        let auth = RefCell::new(Auth::with_access(
            base.clone(),
            &reference.repository,
            access,
        ));
        Ok(Session {
            net: Net::new(transport, opts),
            auth,
            base,
            reference,
        })
    }

    /// `REGISTRY/REPO`, for messages.
    pub fn name(&self) -> String {
        format!("{}/{}", self.reference.registry, self.reference.repository)
    }

    /// `/v2/<repository>/<rest>` on the registry.
    pub fn url(&self, rest: &str) -> Result<Url> {
        self.base
            .resolve(&format!("/v2/{}/{rest}", self.reference.repository))
    }

    fn send(
        &self,
        method: Method,
        url: &Url,
        headers: &[(String, String)],
        body: &[u8],
        max_body: u64,
    ) -> Result<(Url, HttpResponse)> {
        send_with_auth(
            &self.net,
            Some(&self.auth),
            method,
            url,
            headers,
            body,
            max_body,
            &accept_any,
        )
    }

    /// GET a manifest or index by tag or digest; `Ok(None)` on 404. With `expect`, the
    /// bytes must hash to it.
    pub fn get_manifest(
        &self,
        reference: &str,
        accept: &[&str],
        expect: Option<&str>,
    ) -> Result<Option<Fetched>> {
        let url = self.url(&format!("manifests/{reference}"))?;
        let headers = [
            ("Accept".to_string(), accept.join(", ")),
            ("Accept-Encoding".to_string(), "identity".to_string()),
        ];
        let (_, resp) = self.send(Method::Get, &url, &headers, &[], self.net.max_manifest)?;
        match resp.status {
            200 => {}
            404 => return Ok(None),
            s => return Err(Error::io(format!("{url}: HTTP {s}")).with_status(s)),
        }
        check_identity(&url, &resp)?;
        let digest = sha256_digest(&resp.body);
        if let Some(expect) = expect {
            if digest != expect {
                return Err(Error::bad(format!(
                    "{url}: the manifest's digest is {digest}, not the {expect} asked for"
                )));
            }
        }
        Ok(Some(Fetched {
            media_type: content_type(&resp),
            body: resp.body,
            digest,
        }))
    }

    /// GET a whole blob of `size` bytes (at most `limit`) and check its size and digest.
    /// `what` names it in messages ("the image config", "the tar index of layer 0").
    pub fn get_blob(&self, what: &str, digest: &str, size: u64, limit: u64) -> Result<Vec<u8>> {
        let digest = validate_digest(digest).map_err(|e| e.context(what))?;
        if size > limit {
            return Err(Error::out_of_range(format!(
                "{what} {digest} is {size} bytes, above the limit of {limit}"
            )));
        }
        let url = self.url(&format!("blobs/{digest}"))?;
        let headers = [("Accept-Encoding".to_string(), "identity".to_string())];
        let (last, resp) = self.send(Method::Get, &url, &headers, &[], limit)?;
        match resp.status {
            200 => {}
            404 => {
                return Err(Error::io(format!(
                    "{what}: blob {digest} is not in repository {} (HTTP 404)",
                    self.name()
                ))
                .with_status(404))
            }
            s => return Err(Error::io(format!("{what}: {last}: HTTP {s}")).with_status(s)),
        }
        check_identity(&last, &resp)?;
        if resp.body.len() as u64 != size {
            return Err(Error::bad(format!(
                "{what} {digest}: the registry sent {} bytes, its descriptor says {size}",
                resp.body.len()
            )));
        }
        let got = sha256_digest(&resp.body);
        if got != digest {
            return Err(Error::bad(format!(
                "{what}: the blob's digest is {got}, not the {digest} its descriptor names"
            )));
        }
        Ok(resp.body)
    }

    /// The referrers API (`GET /v2/<name>/referrers/<digest>`, OCI distribution 1.1),
    /// filtered by `artifact_type` where the registry filters. `Ok(None)` when the
    /// registry does not have the API (any answer but 200, such as docker-registry 2.8's
    /// 404).
    pub fn get_referrers(&self, digest: &str, artifact_type: &str) -> Result<Option<Fetched>> {
        let url = self.url(&format!(
            "referrers/{digest}?artifactType={}",
            encode_query_value(artifact_type)
        ))?;
        let headers = [
            ("Accept".to_string(), super::manifest::OCI_INDEX.to_string()),
            ("Accept-Encoding".to_string(), "identity".to_string()),
        ];
        let (_, resp) = self.send(Method::Get, &url, &headers, &[], self.net.max_manifest)?;
        if resp.status != 200 {
            return Ok(None);
        }
        check_identity(&url, &resp)?;
        Ok(Some(Fetched {
            media_type: content_type(&resp),
            digest: sha256_digest(&resp.body),
            body: resp.body,
        }))
    }

    /// Whether the repository has the blob (HEAD: 200 yes, 404 no).
    pub fn has_blob(&self, digest: &str) -> Result<bool> {
        let url = self.url(&format!("blobs/{digest}"))?;
        let (last, resp) = self.send(Method::Head, &url, &[], &[], 0)?;
        match resp.status {
            200 => Ok(true),
            404 => Ok(false),
            s => Err(Error::io(format!("{last}: HEAD: HTTP {s}")).with_status(s)),
        }
    }

    /// Upload `bytes` as blob `digest`, monolithically: `POST /blobs/uploads/` opens a
    /// session, `PUT <location>?digest=` sends every byte and closes it.
    pub fn upload_blob(&self, digest: &str, bytes: &[u8]) -> Result<()> {
        let start = self.url("blobs/uploads/")?;
        let (last, resp) = self.send(Method::Post, &start, &[], &[], MAX_IGNORED_BODY)?;
        if resp.status != 202 {
            return Err(refused(&last, "starting a blob upload", &resp));
        }
        let location = resp.header("location").ok_or_else(|| {
            Error::bad(format!(
                "{last}: HTTP 202 without a Location for the upload"
            ))
        })?;
        let session = last
            .resolve(location)
            .map_err(|e| e.context(&format!("{last}: upload Location `{}`", shorten(location))))?;
        if !session.same_origin(&self.base) {
            return Err(Error::unsupported(format!(
                "{last}: the upload Location {session} is on another host; uploads go to \
                 the registry only"
            )));
        }
        let sep = if session.path_and_query.contains('?') {
            '&'
        } else {
            '?'
        };
        let put = Url {
            path_and_query: format!(
                "{}{sep}digest={}",
                session.path_and_query,
                encode_query_value(digest)
            ),
            ..session
        };
        let headers = [(
            "Content-Type".to_string(),
            "application/octet-stream".to_string(),
        )];
        let (last, resp) = self.send(Method::Put, &put, &headers, bytes, MAX_IGNORED_BODY)?;
        if resp.status != 201 {
            return Err(refused(&last, &format!("uploading blob {digest}"), &resp));
        }
        Ok(())
    }

    /// PUT a manifest or index under `reference` (a tag or its digest). Returns the
    /// response (its `OCI-Subject` header tells whether the registry indexed the
    /// subject).
    pub fn put_manifest(
        &self,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Result<HttpResponse> {
        let url = self.url(&format!("manifests/{reference}"))?;
        let headers = [("Content-Type".to_string(), media_type.to_string())];
        let (last, resp) = self.send(Method::Put, &url, &headers, body, MAX_IGNORED_BODY)?;
        if resp.status != 201 {
            return Err(refused(
                &last,
                &format!("pushing manifest {reference}"),
                &resp,
            ));
        }
        Ok(resp)
    }
}

/// The error for a registry that did not accept a write, with its error document.
fn refused(url: &Url, what: &str, resp: &HttpResponse) -> Error {
    let detail = String::from_utf8_lossy(&resp.body);
    let detail = detail.trim();
    let hint = if resp.status == 401 || resp.status == 403 {
        " (no push access to the repository: check the credentials given to the host)"
    } else {
        ""
    };
    Error::io(format!(
        "{url}: {what}: HTTP {}{hint}{}",
        resp.status,
        if detail.is_empty() {
            String::new()
        } else {
            format!(": {}", shorten(detail))
        }
    ))
    .with_status(resp.status)
}

fn content_type(resp: &HttpResponse) -> Option<String> {
    resp.header("content-type")
        .map(|t| t.split(';').next().unwrap_or("").trim().to_string())
        .filter(|t| !t.is_empty())
}

/// Digests are of the bytes as stored: a compressed transfer would hash differently.
fn check_identity(url: &Url, resp: &HttpResponse) -> Result<()> {
    match resp.header("content-encoding") {
        Some(enc) if !enc.trim().eq_ignore_ascii_case("identity") => Err(Error::io(format!(
            "{url}: sent with Content-Encoding `{}`, though identity was asked",
            shorten(enc)
        ))),
        _ => Ok(()),
    }
}
