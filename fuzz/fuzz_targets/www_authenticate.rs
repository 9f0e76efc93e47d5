//! `WWW-Authenticate` challenges (RFC 9110 §11.6.1) and what follows from them: the token
//! URL built from a Bearer realm, and the token response JSON. Input: the header value,
//! then optionally a NUL byte and a token response body.
#![no_main]

use erofs_component::remote::auth::{parse_challenges, parse_token, token_url, Challenge};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    erofs_fuzz::bound_memory(64);
    let (header, body) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let _ = parse_token(body);
    let Ok(header) = std::str::from_utf8(header) else {
        return;
    };
    let Ok(challenges) = parse_challenges(header) else {
        return;
    };
    for c in challenges {
        if let Challenge::Bearer { realm, service, .. } = c {
            let _ = token_url(&realm, service.as_deref(), "library/debian");
            let _ = token_url(&realm, service.as_deref(), "a/b?c&d=e f");
        }
    }
});
