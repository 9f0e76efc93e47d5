//! Challenge parsing, token URLs and responses, and the Bearer flow.

use std::cell::RefCell;

use crate::error::Kind;
use crate::remote::auth::*;
use crate::remote::fake::{resp, FakeTransport};
use crate::remote::net::{accept_any, Net};
use crate::remote::transport::Method;
use crate::remote::url::Url;
use crate::remote::RemoteOptions;

fn bearer(realm: &str, service: Option<&str>, scope: Option<&str>) -> Challenge {
    Challenge::Bearer {
        realm: realm.into(),
        service: service.map(Into::into),
        scope: scope.map(Into::into),
    }
}

#[test]
fn parses_docker_hub_challenge() {
    let c = parse_challenges(
        r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/ubuntu:pull""#,
    )
    .unwrap();
    assert_eq!(
        c,
        [bearer(
            "https://auth.docker.io/token",
            Some("registry.docker.io"),
            Some("repository:library/ubuntu:pull")
        )]
    );
}

#[test]
fn parses_tricky_challenges() {
    // Commas and escapes inside quotes, unquoted values, odd spacing and case, and two
    // challenges in one header.
    let c = parse_challenges(
        "Basic realm=\"Registry, \\\"main\\\"\" , BEARER Realm = https://h/t , \
         scope=\"repository:a/b:pull,push\",service=reg",
    )
    .unwrap();
    assert_eq!(
        c,
        [
            Challenge::Basic {
                realm: Some("Registry, \"main\"".into())
            },
            bearer("https://h/t", Some("reg"), Some("repository:a/b:pull,push")),
        ]
    );
    let c = parse_challenges("Negotiate abc+/==, Bearer realm=\"https://x/\"").unwrap();
    assert_eq!(
        c,
        [
            Challenge::Other {
                scheme: "Negotiate".into()
            },
            bearer("https://x/", None, None)
        ]
    );
    assert_eq!(
        parse_challenges("Bearer service=\"s\"").unwrap(),
        [Challenge::Other {
            scheme: "Bearer".into()
        }]
    );
    assert_eq!(
        parse_challenges("Basic").unwrap(),
        [Challenge::Basic { realm: None }]
    );
}

#[test]
fn rejects_broken_challenges() {
    for bad in [
        "",
        "  ,",
        "Bearer realm=\"unterminated",
        "realm=x",
        "Bearer \"x\"",
        "Bearer realm=\"a\"\"b\"",
    ] {
        assert!(parse_challenges(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn builds_token_urls() {
    let u = token_url(
        "https://auth.docker.io/token",
        Some("registry.docker.io"),
        "library/ubuntu",
    )
    .unwrap();
    assert_eq!(
        u.to_string(),
        "https://auth.docker.io/token?service=registry.docker.io&scope=repository%3Alibrary%2Fubuntu%3Apull"
    );
    let u = token_url("https://h/t?x=1", None, "a").unwrap();
    assert_eq!(u.to_string(), "https://h/t?x=1&scope=repository%3Aa%3Apull");
    let u = token_url("https://h/t?", Some("a b"), "a").unwrap();
    assert_eq!(
        u.to_string(),
        "https://h/t?service=a%20b&scope=repository%3Aa%3Apull"
    );
    assert!(token_url("/relative", None, "a").is_err());
}

#[test]
fn parses_token_json() {
    let t = parse_token(br#"{"token":"abc","expires_in":300,"issued_at":"x"}"#).unwrap();
    assert_eq!(
        t,
        Token {
            token: "abc".into(),
            expires_in: Some(300)
        }
    );
    let t = parse_token(br#"{"access_token":"xyz","expires_in":-1}"#).unwrap();
    assert_eq!(
        t,
        Token {
            token: "xyz".into(),
            expires_in: None
        }
    );
    let t = parse_token(br#"{"token":"","access_token":"z"}"#).unwrap();
    assert_eq!(t.token, "z");
    for bad in [
        &b"{}"[..],
        b"[]",
        b"not json",
        br#"{"token":"a b"}"#,
        br#"{"token":"a\r\nX: y"}"#,
        br#"{"token":7}"#,
    ] {
        assert!(
            parse_token(bad).is_err(),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

fn setup() -> (FakeTransport, Net, RefCell<Auth>, Url) {
    let fake = FakeTransport::new();
    let net = Net::new(Box::new(fake.clone()), &RemoteOptions::default());
    let reg = Url::parse("https://reg.io/").unwrap();
    let auth = RefCell::new(Auth::new(reg, "org/app"));
    let url = Url::parse("https://reg.io/v2/org/app/manifests/latest").unwrap();
    (fake, net, auth, url)
}

const CHALLENGE: (&str, &str) = (
    "WWW-Authenticate",
    r#"Bearer realm="https://auth.reg.io/token",service="reg.io",scope="repository:org/app:pull""#,
);

#[test]
fn bearer_flow_and_refresh() {
    let (fake, net, auth, url) = setup();
    fake.push(resp(401, &[CHALLENGE], b""));
    fake.push(resp(200, &[], br#"{"token":"t1"}"#));
    fake.push(resp(200, &[], b"manifest"));
    let (_, r) =
        fetch_with_auth(&net, Some(&auth), Method::Get, &url, &[], 100, &accept_any).unwrap();
    assert_eq!(r.body, b"manifest");
    let reqs = fake.requests();
    assert_eq!(reqs[0].header("authorization"), None);
    assert_eq!(
        reqs[1].url,
        "https://auth.reg.io/token?service=reg.io&scope=repository%3Aorg%2Fapp%3Apull"
    );
    assert_eq!(
        reqs[1].header("authorization"),
        None,
        "no credentials of our own"
    );
    assert_eq!(reqs[2].header("authorization"), Some("Bearer t1"));
    // The token expires: the next 401 brings a new one.
    fake.push(resp(401, &[CHALLENGE], b""));
    fake.push(resp(200, &[], br#"{"access_token":"t2"}"#));
    fake.push(resp(200, &[], b"again"));
    let (_, r) =
        fetch_with_auth(&net, Some(&auth), Method::Get, &url, &[], 100, &accept_any).unwrap();
    assert_eq!(r.body, b"again");
    let reqs = fake.requests();
    assert_eq!(reqs[3].header("authorization"), Some("Bearer t1"));
    assert_eq!(reqs[5].header("authorization"), Some("Bearer t2"));
    assert_eq!(net.stats().token_fetches, 2);
    assert_eq!(net.stats().retries, 0);
}

#[test]
fn refused_fresh_token_is_an_error() {
    let (fake, net, auth, url) = setup();
    fake.push(resp(401, &[CHALLENGE], b""));
    fake.push(resp(200, &[], br#"{"token":"t1"}"#));
    fake.push(resp(401, &[CHALLENGE], b""));
    let err =
        fetch_with_auth(&net, Some(&auth), Method::Get, &url, &[], 100, &accept_any).unwrap_err();
    assert!(err.message().contains("refused a fresh token"), "{err}");
    assert_eq!(fake.remaining(), 0);
}

#[test]
fn basic_challenge_and_token_refusal() {
    let (fake, net, auth, url) = setup();
    fake.push(resp(
        401,
        &[("www-authenticate", "Basic realm=\"Registry\"")],
        b"",
    ));
    let err =
        fetch_with_auth(&net, Some(&auth), Method::Get, &url, &[], 100, &accept_any).unwrap_err();
    assert!(
        err.is(Kind::Io)
            && err.message().contains("authentication required")
            && err.message().contains("Basic"),
        "{err}"
    );
    fake.push(resp(401, &[CHALLENGE], b""));
    fake.push(resp(401, &[], b""));
    let err =
        fetch_with_auth(&net, Some(&auth), Method::Get, &url, &[], 100, &accept_any).unwrap_err();
    assert!(
        err.message().contains("token server auth.reg.io refused"),
        "{err}"
    );
    fake.push(resp(401, &[], b""));
    let err =
        fetch_with_auth(&net, Some(&auth), Method::Get, &url, &[], 100, &accept_any).unwrap_err();
    assert!(err.message().contains("without a Bearer or Basic"), "{err}");
    fake.push(resp(401, &[], b""));
    let err = fetch_with_auth(&net, None, Method::Get, &url, &[], 100, &accept_any).unwrap_err();
    assert!(err.message().contains("authentication required"), "{err}");
}

#[test]
fn token_goes_to_the_registry_only() {
    let (_, _, auth, _) = setup();
    auth.borrow_mut().set_token(Token {
        token: "t".into(),
        expires_in: None,
    });
    let a = auth.borrow();
    assert_eq!(
        a.headers_for(&Url::parse("https://reg.io:443/v2/").unwrap())
            .len(),
        1
    );
    assert!(a
        .headers_for(&Url::parse("https://s3.io/blob").unwrap())
        .is_empty());
    assert!(a
        .headers_for(&Url::parse("https://reg.io:8443/v2/").unwrap())
        .is_empty());
}

#[test]
fn plain_http_realm_is_refused() {
    let (fake, net, auth, url) = setup();
    fake.push(resp(
        401,
        &[(
            "WWW-Authenticate",
            "Bearer realm=\"http://auth.reg.io/token\"",
        )],
        b"",
    ));
    let err =
        fetch_with_auth(&net, Some(&auth), Method::Get, &url, &[], 100, &accept_any).unwrap_err();
    assert!(err.message().contains("plain http"), "{err}");
}
