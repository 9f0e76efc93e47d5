//! HTTP byte ranges: parsing `Content-Range`, and checking that a 206 answers exactly the
//! range a blob read asked for.

use super::transport::HttpResponse;

/// A parsed `Content-Range`: first and last byte (absent in `bytes */TOTAL`), and the
/// total (absent when the server wrote `*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    pub range: Option<(u64, u64)>,
    pub total: Option<u64>,
}

/// `bytes START-END/TOTAL` (TOTAL may be `*`), or `bytes */TOTAL` (for a 416).
pub fn parse_content_range(value: &str) -> Option<ContentRange> {
    let value = value.trim();
    let unit = value.get(..6)?;
    if !unit.eq_ignore_ascii_case("bytes ") {
        return None;
    }
    let (range, total) = value.get(6..)?.trim_start().split_once('/')?;
    let number = |s: &str| {
        let s = s.trim();
        (!s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    let total = match total.trim() {
        "*" => None,
        t => Some(number(t)?),
    };
    let range = match range.trim() {
        "*" => None,
        r => {
            let (a, b) = r.split_once('-')?;
            let (a, b) = (number(a)?, number(b)?);
            if a > b {
                return None;
            }
            Some((a, b))
        }
    };
    // RFC 9110 §14.4: a range whose last byte is at or past the complete length is
    // invalid (found by the content_range fuzz target: `bytes N-M/M` was accepted).
    if let (Some((_, last)), Some(total)) = (range, total) {
        if last >= total {
            return None;
        }
    }
    Some(ContentRange { range, total })
}

/// Why a response cannot be used, if it cannot: content coding, and for a 206 exactly
/// one `Content-Range` equal to `want` and a body of exactly the asked length.
pub(crate) fn check_partial(
    resp: &HttpResponse,
    a: u64,
    b: u64,
    total: Option<u64>,
) -> std::result::Result<(), String> {
    check_partial_head(resp, a, b, total)?;
    let asked = b.saturating_sub(a);
    if len_u64(resp.body.len()) != asked {
        return Err(format!(
            "HTTP 206 body is {} bytes, {asked} were asked for",
            resp.body.len(),
        ));
    }
    Ok(())
}

/// [`check_partial`] on the headers alone (the body is still to be read): also a
/// `Content-Length`, when given, must be the asked length.
pub(crate) fn check_partial_head(
    resp: &HttpResponse,
    a: u64,
    b: u64,
    total: Option<u64>,
) -> std::result::Result<(), String> {
    if let Some(enc) = resp.header("content-encoding") {
        if !enc.trim().eq_ignore_ascii_case("identity") {
            return Err(format!(
                "response has Content-Encoding `{}`",
                enc.escape_default()
            ));
        }
    }
    let last = b.saturating_sub(1);
    let mut ranges = resp.header_all("content-range");
    let (Some(cr), None) = (ranges.next(), ranges.next()) else {
        return Err("HTTP 206 without exactly one Content-Range".into());
    };
    let want = format!(
        "bytes {a}-{last}/{}",
        total.map_or("*".to_string(), |t| t.to_string())
    );
    match parse_content_range(cr) {
        Some(ContentRange {
            range: Some((s, e)),
            total: t,
        }) if s == a && e == last && (total.is_none() || t == total) => {}
        _ => {
            return Err(format!(
                "Content-Range `{}` does not match the request ({want})",
                cr.escape_default()
            ))
        }
    }
    let asked = b.saturating_sub(a);
    match resp.header("content-length").map(|v| v.trim().parse::<u64>()) {
        Some(Ok(n)) if n != asked => Err(format!(
            "HTTP 206 Content-Length is {n}, {asked} bytes were asked for"
        )),
        Some(Err(_)) => Err("HTTP 206 with a Content-Length that is not a number".into()),
        _ => Ok(()),
    }
}

/// A buffer length as u64 (usize is at most 64 bits on every target).
pub(crate) fn len_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}
