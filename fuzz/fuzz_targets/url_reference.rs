//! URL and image-reference parsing: `Url::parse`, `resolve` of a `Location` value against
//! it, origin comparison, the token-query encoder, `Reference::parse` (`oci://…`) and
//! digest validation. A parsed URL, written out, parses back to itself. Input: a base
//! text, then optionally a newline and a reference text.
#![no_main]

use erofs_component::remote::reference::{validate_digest, Reference};
use erofs_component::remote::url::{encode_query_value, shorten, Url};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    erofs_fuzz::bound_memory(16);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (base, reference) = text.split_once('\n').unwrap_or((text, ""));
    let _ = shorten(text);
    let _ = encode_query_value(text);
    let _ = validate_digest(base);
    if let Ok(r) = Reference::parse(base) {
        let _ = (r.manifest_ref(), r.is_docker_hub());
        let _ = Url::parse(&format!(
            "https://{}/v2/{}/manifests/{}",
            r.api_host,
            r.repository,
            r.manifest_ref()
        ));
    }
    let Ok(url) = Url::parse(base) else {
        return;
    };
    let again = Url::parse(&url.to_string());
    assert!(again.as_ref() == Ok(&url), "{base:?} -> {url} -> {again:?}");
    let _ = url.host();
    if let Ok(next) = url.resolve(reference) {
        let _ = url.same_origin(&next);
        let again = Url::parse(&next.to_string());
        assert!(
            again.as_ref() == Ok(&next),
            "{reference:?} on {url} -> {next} -> {again:?}"
        );
    }
});
