//! Registry authentication, as far as the component takes part in it.
//!
//! Credentials are the host's business: for requests bound for the registry or its token
//! realm, the host adds `Authorization: Basic …` when the user configured credentials.
//! The component only answers Bearer challenges (RFC 6750 and the distribution token
//! protocol): on a 401 it asks the challenge's realm for a token with `service` and
//! `scope=repository:REPO:pull`, keeps it, and sends `Authorization: Bearer TOKEN` to the
//! registry only. A later 401 (an expired token in a long-lived mount) gets a new one.

// Parses outside data under erofs-image's lint rules (`parser_modules!` in lib.rs).

use std::cell::RefCell;

use serde::Deserialize;

use super::net::{Check, Net};
use super::transport::{HttpResponse, Method};
use super::url::{encode_query_value, shorten, Url};
use crate::error::{Error, Kind, Result};

/// The most we read of a token response: JWTs are a few KiB.
const MAX_TOKEN_RESPONSE: u64 = 1 << 20;
/// The longest token we put in a header.
const MAX_TOKEN: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic {
        realm: Option<String>,
    },
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    /// A scheme we do not speak (or a Bearer challenge without a realm).
    Other {
        scheme: String,
    },
}

/// Parse a `WWW-Authenticate` value (RFC 9110 §11.6.1): one or more challenges, each a
/// scheme and then a token68 or comma-separated `name=value` parameters, values being
/// tokens or quoted strings (which may hold commas and backslash escapes).
pub fn parse_challenges(value: &str) -> Result<Vec<Challenge>> {
    let raw = parse_raw(value)
        .map_err(|e| e.context(&format!("WWW-Authenticate `{}`", shorten(value))))?;
    Ok(raw.into_iter().map(to_challenge).collect())
}

type RawChallenge = (String, Vec<(String, String)>);

fn parse_raw(value: &str) -> Result<Vec<RawChallenge>> {
    let b = value.as_bytes();
    let mut i = 0;
    let mut out: Vec<RawChallenge> = Vec::new();
    // True right after a scheme name (no comma since): a bare token here is a token68.
    let mut after_scheme = false;
    loop {
        // Separators: blanks and commas; a comma ends a scheme's token68 position.
        let next = skip(b, i, |c| matches!(c, b' ' | b'\t' | b','));
        if b.get(i..next).is_some_and(|sep| sep.contains(&b',')) {
            after_scheme = false;
        }
        i = next;
        let Some(&first) = b.get(i) else {
            break;
        };
        // A token: a scheme, a parameter name, or a token68.
        let start = i;
        i = skip(b, i, is_token_char);
        if start == i {
            return Err(Error::bad(format!(
                "unexpected {:?} at byte {i}",
                char::from(first)
            )));
        }
        let name = value.get(start..i).unwrap_or_default();
        let mut j = skip(b, i, is_blank);
        if b.get(j) == Some(&b'=') {
            // `name=value`, or a token68 ending in `=` padding (`abc==`, or `abc=` at
            // the end of the challenge).
            let equals = j;
            j = skip(b, j, |c| c == b'=');
            let padding = j.saturating_sub(equals) > 1;
            j = skip(b, j, is_blank);
            if padding || b.get(j).is_none_or(|&c| c == b',') {
                i = j;
                after_scheme = false;
                continue;
            }
            let (param_value, next) = read_value(value, j)?;
            i = next;
            let Some(current) = out.last_mut() else {
                return Err(Error::bad(format!("parameter `{name}` before any scheme")));
            };
            current.1.push((name.to_ascii_lowercase(), param_value));
            after_scheme = false;
        } else if after_scheme {
            // A token68 (e.g. `Negotiate abc`): nothing we use.
            i = j;
            after_scheme = false;
        } else {
            // A new challenge's scheme.
            out.push((name.to_string(), Vec::new()));
            i = j;
            after_scheme = true;
        }
    }
    if out.is_empty() {
        return Err(Error::bad("no challenge"));
    }
    Ok(out)
}

/// The index of the first byte at or after `i` that `keep` refuses (or the end). Only
/// advances over bytes that exist, so it never passes `b.len()`.
fn skip(b: &[u8], mut i: usize, keep: impl Fn(u8) -> bool) -> usize {
    while b.get(i).is_some_and(|&c| keep(c)) {
        i = i.saturating_add(1);
    }
    i
}

fn is_blank(c: u8) -> bool {
    matches!(c, b' ' | b'\t')
}

/// RFC 9110 tchar, plus `/` and `+` so that unquoted URLs and token68 values pass.
fn is_token_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/:".contains(&c)
}

/// A quoted string or a bare token starting at byte `i`; returns it and the next index.
fn read_value(value: &str, i: usize) -> Result<(String, usize)> {
    let b = value.as_bytes();
    if b.get(i) == Some(&b'"') {
        // A quoted string: a backslash takes the next byte literally.
        let mut i = i.saturating_add(1);
        let mut out = Vec::new();
        while let Some(&c) = b.get(i) {
            match (c, b.get(i.saturating_add(1))) {
                (b'\\', Some(&escaped)) => {
                    out.push(escaped);
                    i = i.saturating_add(2);
                }
                (b'"', _) => {
                    return Ok((
                        String::from_utf8_lossy(&out).into_owned(),
                        i.saturating_add(1),
                    ))
                }
                _ => {
                    out.push(c);
                    i = i.saturating_add(1);
                }
            }
        }
        return Err(Error::bad("unterminated quoted string"));
    }
    // A bare token, up to a comma or a blank (both ASCII, so the slice is on char
    // boundaries).
    let end = skip(b, i, |c| !matches!(c, b',' | b' ' | b'\t'));
    match value.get(i..end) {
        Some(token) if !token.is_empty() => Ok((token.to_string(), end)),
        _ => Err(Error::bad(format!("empty value at byte {i}"))),
    }
}

fn to_challenge((scheme, params): RawChallenge) -> Challenge {
    let get = |key: &str| {
        params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    if scheme.eq_ignore_ascii_case("basic") {
        Challenge::Basic {
            realm: get("realm"),
        }
    } else if scheme.eq_ignore_ascii_case("bearer") {
        match get("realm") {
            Some(realm) => Challenge::Bearer {
                realm,
                service: get("service").filter(|s| !s.is_empty()),
                scope: get("scope").filter(|s| !s.is_empty()),
            },
            None => Challenge::Other { scheme },
        }
    } else {
        Challenge::Other { scheme }
    }
}

/// The token-request URL: the realm plus `service` (when the challenge named one) and
/// `scope=repository:REPO:pull`, each value percent-encoded.
pub fn token_url(realm: &str, service: Option<&str>, repository: &str) -> Result<Url> {
    let base = Url::parse(realm).map_err(|e| e.context("token realm"))?;
    let mut query = String::new();
    if let Some(service) = service {
        query.push_str("service=");
        query.push_str(&encode_query_value(service));
        query.push('&');
    }
    query.push_str("scope=");
    query.push_str(&encode_query_value(&format!(
        "repository:{repository}:pull"
    )));
    let sep = if base.path_and_query.contains('?') {
        if base.path_and_query.ends_with(['?', '&']) {
            ""
        } else {
            "&"
        }
    } else {
        "?"
    };
    Ok(Url {
        path_and_query: format!("{}{sep}{query}", base.path_and_query),
        ..base
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub token: String,
    /// Seconds the server says the token lives (informational: a 401 triggers renewal).
    pub expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct TokenJson {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<serde_json::Value>,
}

/// Parse a token response: `token`, or `access_token` (OAuth2 spelling), and
/// `expires_in`.
pub fn parse_token(body: &[u8]) -> Result<Token> {
    let json: TokenJson = serde_json::from_slice(body)
        .map_err(|e| Error::bad(format!("token response is not the expected JSON: {e}")))?;
    let token = json
        .token
        .filter(|t| !t.is_empty())
        .or(json.access_token.filter(|t| !t.is_empty()))
        .ok_or_else(|| Error::bad("token response has neither `token` nor `access_token`"))?;
    if token.len() > MAX_TOKEN {
        return Err(Error::bad(format!(
            "token is {} bytes, above the limit of {MAX_TOKEN}",
            token.len()
        )));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::bad(
            "token holds characters that cannot go in an HTTP header",
        ));
    }
    Ok(Token {
        token,
        expires_in: json.expires_in.and_then(|v| v.as_u64()),
    })
}

/// The authentication state for one repository on one registry.
pub struct Auth {
    /// `scheme://api_host/`: where the Bearer token may be sent.
    registry: Url,
    repository: String,
    token: Option<Token>,
}

impl Auth {
    pub fn new(registry: Url, repository: &str) -> Self {
        Self {
            registry,
            repository: repository.to_string(),
            token: None,
        }
    }

    #[cfg(test)]
    pub(crate) fn set_token(&mut self, token: Token) {
        self.token = Some(token);
    }

    pub fn token(&self) -> Option<&Token> {
        self.token.as_ref()
    }

    pub fn is_registry(&self, url: &Url) -> bool {
        self.registry.same_origin(url)
    }

    /// The `Authorization` header for `url`: our Bearer token, for the registry only.
    pub fn headers_for(&self, url: &Url) -> Vec<(String, String)> {
        match &self.token {
            Some(t) if self.is_registry(url) => {
                vec![("Authorization".to_string(), format!("Bearer {}", t.token))]
            }
            _ => Vec::new(),
        }
    }

    /// After a 401 from the registry: obtain a (new) token as its challenge asks, or
    /// explain why we cannot.
    pub fn on_unauthorized(&mut self, net: &Net, resp: &HttpResponse) -> Result<()> {
        let mut challenges = Vec::new();
        for value in resp.header_all("www-authenticate") {
            challenges
                .extend(parse_challenges(value).map_err(|e| e.context(&self.registry.authority))?);
        }
        let bearer = challenges.iter().find_map(|c| match c {
            Challenge::Bearer { realm, service, .. } => Some((realm.clone(), service.clone())),
            _ => None,
        });
        let registry = &self.registry.authority;
        let Some((realm, service)) = bearer else {
            if challenges
                .iter()
                .any(|c| matches!(c, Challenge::Basic { .. }))
            {
                return Err(Error::io(format!(
                    "authentication required: registry {registry} asks for HTTP Basic \
                     credentials, which are missing or were refused; give them to the host \
                     (--username with --password-stdin, or ~/.docker/config.json)"
                )));
            }
            return Err(Error::io(format!(
                "authentication required: registry {registry} answered 401 without a \
                 Bearer or Basic challenge"
            )));
        };
        let url = token_url(&realm, service.as_deref(), &self.repository)
            .map_err(|e| e.context(registry))?;
        let accept = |_: &Url| vec![("Accept".to_string(), "application/json".to_string())];
        let (_, answer) = net
            .fetch(
                Method::Get,
                &url,
                &accept,
                MAX_TOKEN_RESPONSE,
                &super::net::accept_any,
            )
            .map_err(|e| e.context(&format!("token request to {}", url.authority)))?;
        net.bump(|s| s.token_fetches = s.token_fetches.saturating_add(1));
        match answer.status {
            200 => {}
            401 | 403 => {
                return Err(Error::io(format!(
                    "authentication required: the token server {} refused access to \
                     repository {} (HTTP {}); if it is private, give the host credentials \
                     (--username with --password-stdin, or ~/.docker/config.json)",
                    url.authority, self.repository, answer.status
                )))
            }
            s => {
                return Err(Error::io(format!(
                    "token server {}: HTTP {s}",
                    url.authority
                )))
            }
        }
        let token = parse_token(&answer.body).map_err(|e| e.context(&url.authority))?;
        self.token = Some(token);
        Ok(())
    }
}

/// A request to the registry (or wherever it redirects) that answers a 401 from the
/// registry by getting a token and trying once more. Without `auth` (a plain URL), a 401
/// is an "authentication required" error. Other statuses are returned to the caller.
pub fn fetch_with_auth(
    net: &Net,
    auth: Option<&RefCell<Auth>>,
    method: Method,
    url: &Url,
    extra: &[(String, String)],
    max_body: u64,
    check: Check<'_>,
) -> Result<(Url, HttpResponse)> {
    let mut renewed = false;
    loop {
        let headers = |u: &Url| {
            let mut h = extra.to_vec();
            if let Some(auth) = auth {
                h.extend(auth.borrow().headers_for(u));
            }
            h
        };
        // A 401 is for us to handle here, never a reason to retry blindly.
        let check401 = |u: &Url, r: &HttpResponse| match r.status {
            401 => Ok(()),
            _ => check(u, r),
        };
        let (last, resp) = net
            .fetch(method, url, &headers, max_body, &check401)
            .map_err(|e| match e.kind {
                Kind::Io => e.context(&url.to_string()),
                _ => e,
            })?;
        if resp.status != 401 {
            return Ok((last, resp));
        }
        let Some(auth) = auth else {
            return Err(Error::io(format!(
                "{last}: authentication required (HTTP 401)"
            )));
        };
        if !auth.borrow().is_registry(&last) {
            // Storage behind a redirect refused us: the caller decides.
            return Ok((last, resp));
        }
        if renewed {
            let a = auth.borrow();
            return Err(Error::io(format!(
                "{last}: the registry refused a fresh token for repository {} (HTTP 401): \
                 the repository does not exist, or it needs credentials the host did not \
                 supply",
                a.repository
            )));
        }
        auth.borrow_mut().on_unauthorized(net, &resp)?;
        renewed = true;
    }
}
