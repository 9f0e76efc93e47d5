//! The small part of URLs (RFC 3986) the network client needs: absolute `http`/`https`
//! URLs, resolving a redirect's `Location` against the URL that was asked, and
//! percent-encoding query values.
//!
//! Only ASCII URLs without user information are accepted: credentials belong to the host,
//! never to a URL the component builds or follows.

// Parses outside data under erofs-image's lint rules (`parser_modules!` in lib.rs).

use std::fmt;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    fn default_port(self) -> &'static str {
        match self {
            Scheme::Http => "80",
            Scheme::Https => "443",
        }
    }
}

/// An absolute URL split the way `wasi:http` wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub scheme: Scheme,
    /// `host[:port]`, host in lower case (IPv6 literals in brackets).
    pub authority: String,
    /// Path and query, always starting with `/`; no fragment.
    pub path_and_query: String,
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}{}",
            self.scheme.as_str(),
            self.authority,
            self.path_and_query
        )
    }
}

/// Longest URL accepted (from a user, a challenge or a `Location` header).
const MAX_URL: usize = 8192;

impl Url {
    /// Parse an absolute `http://` or `https://` URL.
    pub fn parse(text: &str) -> Result<Url> {
        if text.len() > MAX_URL {
            return Err(Error::bad(format!(
                "URL is {} bytes long, above the limit of {MAX_URL}",
                text.len()
            )));
        }
        let (scheme_text, rest) = split_scheme(text)
            .ok_or_else(|| Error::bad(format!("`{}` is not an absolute URL", shorten(text))))?;
        let scheme = match scheme_text.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            other => {
                return Err(Error::unsupported(format!(
                    "URL scheme `{other}` (only http and https are supported)"
                )))
            }
        };
        let rest = rest
            .strip_prefix("//")
            .ok_or_else(|| Error::bad(format!("`{}`: no `//` after the scheme", shorten(text))))?;
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = parse_authority(&rest[..end], text)?;
        let path_and_query = clean_path(&rest[end..], text)?;
        Ok(Url {
            scheme,
            authority,
            path_and_query,
        })
    }

    /// The host without the port (brackets kept for IPv6 literals).
    pub fn host(&self) -> &str {
        host_of(&self.authority)
    }

    /// Same scheme, host and port (a default port written out counts as the same).
    pub fn same_origin(&self, other: &Url) -> bool {
        self.scheme == other.scheme
            && normalize_port(self.scheme, &self.authority)
                == normalize_port(other.scheme, &other.authority)
    }

    /// Resolve `reference` (a `Location` value: absolute, scheme-relative, absolute-path,
    /// query-only or relative-path) against this URL, as RFC 3986 §5.2 describes.
    pub fn resolve(&self, reference: &str) -> Result<Url> {
        let reference = reference.trim();
        if reference.is_empty() {
            return Err(Error::bad("empty URL reference"));
        }
        if split_scheme(reference).is_some() {
            return Url::parse(reference);
        }
        if let Some(rest) = reference.strip_prefix("//") {
            return Url::parse(&format!("{}://{rest}", self.scheme.as_str()));
        }
        let reference = reference.split('#').next().unwrap_or("");
        let base_path = self.path_and_query.split('?').next().unwrap_or("/");
        let joined = if reference.starts_with('/') {
            reference.to_string()
        } else if reference.starts_with('?') {
            format!("{base_path}{reference}")
        } else if reference.is_empty() {
            self.path_and_query.clone()
        } else {
            let dir = match base_path.rfind('/') {
                Some(i) => &base_path[..=i],
                None => "/",
            };
            format!("{dir}{reference}")
        };
        let full = format!("{}://{}{joined}", self.scheme.as_str(), self.authority);
        Url::parse(&full)
    }
}

/// `scheme:` at the start (RFC 3986: ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )).
fn split_scheme(text: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = text.split_once(':')?;
    let mut chars = scheme.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    (first_ok && rest_ok).then_some((scheme, rest))
}

fn parse_authority(authority: &str, whole: &str) -> Result<String> {
    if authority.is_empty() {
        return Err(Error::bad(format!("`{}`: no host", shorten(whole))));
    }
    if authority.contains('@') {
        return Err(Error::bad(format!(
            "`{}`: credentials in URLs are not accepted (the host supplies credentials)",
            host_of(authority.rsplit('@').next().unwrap_or(""))
        )));
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '~' | ':');
    let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
        let (literal, after) = inner
            .split_once(']')
            .ok_or_else(|| Error::bad(format!("`{}`: unclosed `[` in host", shorten(whole))))?;
        if literal.is_empty()
            || !literal
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return Err(Error::bad(format!("`{}`: bad IPv6 host", shorten(whole))));
        }
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| {
                Error::bad(format!("`{}`: junk after the IPv6 host", shorten(whole)))
            })?),
        };
        // The host is the bracketed literal, checked non-empty above.
        (literal, port)
    } else {
        if !authority.chars().all(ok) {
            return Err(Error::bad(format!(
                "`{}`: bad character in host `{}`",
                shorten(whole),
                authority.escape_default()
            )));
        }
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(Error::bad(format!("`{}`: no host", shorten(whole))));
    }
    if let Some(port) = port {
        if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::bad(format!(
                "`{}`: bad port `{port}`",
                shorten(whole)
            )));
        }
    }
    Ok(authority.to_ascii_lowercase())
}

/// Path and query from the rest of a URL: drop the fragment, require printable ASCII,
/// start with `/`, and remove `.` and `..` segments.
fn clean_path(rest: &str, whole: &str) -> Result<String> {
    let rest = rest.split('#').next().unwrap_or("");
    if let Some(bad) = rest.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(Error::bad(format!(
            "`{}`: character {:?} is not allowed in a URL (percent-encode it)",
            shorten(whole),
            bad
        )));
    }
    let (path, query) = match rest.find('?') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let path = if path.is_empty() { "/" } else { path };
    Ok(format!("{}{query}", remove_dot_segments(path)))
}

/// RFC 3986 §5.2.4 for a path that starts with `/`.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => trailing_slash = i == last,
            ".." => {
                out.pop();
                trailing_slash = i == last;
            }
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut result = String::with_capacity(path.len());
    for seg in &out {
        result.push('/');
        result.push_str(seg);
    }
    if trailing_slash || result.is_empty() {
        result.push('/');
    }
    result
}

fn host_of(authority: &str) -> &str {
    if authority.starts_with('[') {
        match authority.find(']') {
            Some(i) => &authority[..=i],
            None => authority,
        }
    } else {
        authority.split(':').next().unwrap_or(authority)
    }
}

fn normalize_port(scheme: Scheme, authority: &str) -> String {
    let host = host_of(authority);
    let port = authority[host.len()..].strip_prefix(':').unwrap_or("");
    if port.is_empty() || port == scheme.default_port() {
        host.to_string()
    } else {
        format!("{host}:{port}")
    }
}

/// Percent-encode a query value: everything except RFC 3986's unreserved characters.
pub fn encode_query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len().saturating_mul(3));
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// At most 200 characters of untrusted text, for error messages.
pub fn shorten(text: &str) -> String {
    const MAX: usize = 200;
    if text.chars().count() <= MAX {
        text.escape_default().to_string()
    } else {
        let cut: String = text.chars().take(MAX).collect();
        format!("{}...", cut.escape_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_absolute_urls() {
        let u = Url::parse("HTTPS://Registry.Example:5000/v2/a/b?x=1#frag").unwrap();
        assert_eq!(u.scheme, Scheme::Https);
        assert_eq!(u.authority, "registry.example:5000");
        assert_eq!(u.host(), "registry.example");
        assert_eq!(u.path_and_query, "/v2/a/b?x=1");
        assert_eq!(u.to_string(), "https://registry.example:5000/v2/a/b?x=1");
        assert_eq!(Url::parse("http://h").unwrap().path_and_query, "/");
        let v6 = Url::parse("http://[::1]:8080/x").unwrap();
        assert_eq!(v6.host(), "[::1]");
        assert_eq!(v6.authority, "[::1]:8080");
    }

    #[test]
    fn rejects_bad_urls() {
        for bad in [
            "ftp://h/x",
            "h/x",
            "https:/h",
            "https:///x",
            "https://user:pw@h/x",
            "https://h:99999999/x",
            "https://h:/x",
            "https://h/a b",
            "https://h/\r\nX: y",
            "https://h/ü",
            "https://[::1/x",
            "https://h\\x/",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad} should fail");
        }
        let err = Url::parse("https://user:secret@h/x").unwrap_err();
        assert!(!err.message().contains("secret"), "{err}");
    }

    #[test]
    fn resolves_locations() {
        let base = Url::parse("https://reg.io/v2/r/blobs/sha256:ab?x=1").unwrap();
        let r = |l: &str| base.resolve(l).unwrap().to_string();
        assert_eq!(r("https://s3.aws/b?sig=1"), "https://s3.aws/b?sig=1");
        assert_eq!(r("//cdn.io/p"), "https://cdn.io/p");
        assert_eq!(r("/other/path"), "https://reg.io/other/path");
        assert_eq!(r("?y=2"), "https://reg.io/v2/r/blobs/sha256:ab?y=2");
        assert_eq!(r("data/x"), "https://reg.io/v2/r/blobs/data/x");
        assert_eq!(r("../../x/./y"), "https://reg.io/v2/x/y");
        assert_eq!(r("../../../../../x"), "https://reg.io/x");
        assert_eq!(r("a/#frag"), "https://reg.io/v2/r/blobs/a/");
        assert!(base.resolve("").is_err());
        assert!(base.resolve("gopher://x/").is_err());
    }

    #[test]
    fn same_origin_normalizes_default_ports() {
        let a = Url::parse("https://reg.io/a").unwrap();
        assert!(a.same_origin(&Url::parse("https://REG.io:443/b").unwrap()));
        assert!(!a.same_origin(&Url::parse("http://reg.io/a").unwrap()));
        assert!(!a.same_origin(&Url::parse("https://reg.io:5000/a").unwrap()));
        assert!(!a.same_origin(&Url::parse("https://cdn.reg.io/a").unwrap()));
    }

    #[test]
    fn encodes_query_values() {
        assert_eq!(
            encode_query_value("repository:library/busy box:pull"),
            "repository%3Alibrary%2Fbusy%20box%3Apull"
        );
        assert_eq!(encode_query_value("a-b.c_d~e"), "a-b.c_d~e");
        assert_eq!(encode_query_value("é&="), "%C3%A9%26%3D");
    }
}
