//! `Retry-After` (RFC 9110 §10.2.3) on a 429 or 503: how long the server asks us to wait.

use std::time::{Duration, SystemTime};

/// The wait a `Retry-After` value asks for: delay-seconds (`120`) or an HTTP date
/// (`Wed, 21 Oct 2015 07:28:00 GMT`, measured from `now`; a date in the past means no
/// wait). None when the value is neither (the caller then treats the answer as final).
pub fn parse(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // More digits than a u64 holds is a wait longer than any budget.
        return Some(
            value
                .parse::<u64>()
                .map(Duration::from_secs)
                .unwrap_or(Duration::MAX),
        );
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Whether a status may carry a `Retry-After` worth honouring by resending.
pub fn applies_to(status: http::StatusCode) -> bool {
    status == http::StatusCode::TOO_MANY_REQUESTS || status == http::StatusCode::SERVICE_UNAVAILABLE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_and_dates() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        assert_eq!(parse("2", now), Some(Duration::from_secs(2)));
        assert_eq!(parse(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(parse("99999999999999999999999", now), Some(Duration::MAX));
        assert_eq!(
            parse("Wed, 21 Oct 2015 07:28:03 GMT", now),
            Some(Duration::from_secs(3))
        );
        // The obsolete RFC 850 and asctime forms are dates too.
        assert_eq!(
            parse("Wednesday, 21-Oct-15 07:28:05 GMT", now),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            parse("Wed Oct 21 07:28:01 2015", now),
            Some(Duration::from_secs(1))
        );
        // In the past: no wait.
        assert_eq!(
            parse("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        for bad in ["", "-1", "1.5", "soon", "Wed, 32 Oct 2015 07:28:00 GMT"] {
            assert_eq!(parse(bad, now), None, "{bad:?}");
        }
        assert!(applies_to(http::StatusCode::TOO_MANY_REQUESTS));
        assert!(applies_to(http::StatusCode::SERVICE_UNAVAILABLE));
        assert!(!applies_to(http::StatusCode::INTERNAL_SERVER_ERROR));
    }
}
