//! Which requests get the user's registry credentials (`Authorization: Basic`).
//!
//! Nothing gets them up front. They go only where a challenge from the registry the user
//! named (the *origin*) asks for them:
//! - a `Basic` challenge from the origin: the origin's requests get them (the egress
//!   resends the challenged request once, with them);
//! - a `Bearer` challenge from the origin: the challenge's token realm gets them, on that
//!   realm's exact scheme, host, port and path; the origin itself never does (the
//!   component sends it the Bearer token it obtained).
//!
//! Clear text: a plain-http request gets them only on the origin, the host the user
//! named with `--insecure`. A realm on another host must be https: a plain-http realm
//! elsewhere is refused outright (with the reason) when the user has credentials, so the
//! token request cannot leave carrying them, nor fail later for want of them.

use std::collections::{HashMap, HashSet};

/// A token realm that gets the credentials: scheme, `host:port` and path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Realm {
    https: bool,
    authority: String,
    path: String,
}

/// What a challenge from the origin taught the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Learned {
    /// Nothing new (no challenge we act on, or one already known).
    Nothing,
    /// The origin asked for Basic credentials: resend the challenged request with them.
    Basic,
    /// A Bearer realm to allow (its `host:port`); it gets the credentials when
    /// `credentialed`.
    Realm { authority: String },
    /// A Bearer realm refused: plain http on another host than the origin.
    Refused { authority: String, why: String },
}

#[derive(Debug, Default)]
pub struct CredentialPolicy {
    /// The registry (or blob URL host) the user named, as `host:port`.
    origin: Option<String>,
    /// Whether the user gave credentials at all (without them nothing is refused for
    /// their sake: an anonymous token request carries nothing to leak).
    have_credentials: bool,
    /// The origin's challenge asked for Basic.
    basic_origin: bool,
    realms: HashSet<Realm>,
    /// Hosts refused, with the reason for the message.
    refused: HashMap<String, String>,
}

impl CredentialPolicy {
    pub fn new(origin: Option<String>, have_credentials: bool) -> CredentialPolicy {
        CredentialPolicy {
            origin,
            have_credentials,
            ..CredentialPolicy::default()
        }
    }

    pub fn is_origin(&self, authority: &str) -> bool {
        self.origin.as_deref() == Some(authority)
    }

    /// Why requests to `authority` are refused, if they are.
    pub fn refusal(&self, authority: &str) -> Option<&str> {
        self.refused.get(authority).map(String::as_str)
    }

    /// Whether a request to `uri` (which carries no Authorization of its own) gets the
    /// credentials.
    pub fn wants_credentials(&self, uri: &http::Uri) -> bool {
        if !self.have_credentials {
            return false;
        }
        let Some(authority) = super::egress::request_authority(uri) else {
            return false;
        };
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        // Plain http on the origin is the host the user named with --insecure.
        let origin = self.is_origin(&authority);
        let realm = Realm {
            https,
            authority,
            path: uri.path().to_string(),
        };
        // A realm elsewhere is only ever recorded when it is https (see `learn_realm`).
        ((https || origin) && self.realms.contains(&realm)) || (origin && self.basic_origin)
    }

    /// Learn from the `WWW-Authenticate` values of a 401 from the origin.
    pub fn learn<'a>(&mut self, challenges: impl Iterator<Item = &'a str>) -> Vec<Learned> {
        let mut learned = Vec::new();
        for value in challenges {
            let scheme = value.split([' ', '\t', ',']).next().unwrap_or_default();
            if scheme.eq_ignore_ascii_case("basic") {
                if self.have_credentials && !self.basic_origin {
                    self.basic_origin = true;
                    learned.push(Learned::Basic);
                }
            } else if scheme.eq_ignore_ascii_case("bearer") {
                if let Some(realm) = realm_of(value) {
                    learned.push(self.learn_realm(&realm));
                }
            }
        }
        learned
    }

    fn learn_realm(&mut self, realm: &str) -> Learned {
        let Ok(uri) = realm.parse::<http::Uri>() else {
            return Learned::Nothing;
        };
        let Some(authority) = super::egress::request_authority(&uri) else {
            return Learned::Nothing;
        };
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        if self.have_credentials && !https && !self.is_origin(&authority) {
            let why = format!(
                "the token realm {realm} is plain http on another host than the registry; \
                 credentials go in clear text only to the registry named with --insecure, \
                 so a realm elsewhere must be https"
            );
            self.refused.insert(authority.clone(), why.clone());
            return Learned::Refused { authority, why };
        }
        if self.have_credentials {
            self.realms.insert(Realm {
                https,
                authority: authority.clone(),
                path: uri.path().to_string(),
            });
        }
        Learned::Realm { authority }
    }
}

/// The `realm="..."` of a WWW-Authenticate challenge (the component parses the
/// challenge fully for itself; the host needs only the realm).
pub fn realm_of(challenge: &str) -> Option<String> {
    let start = challenge.find("realm=")? + "realm=".len();
    let rest = challenge.get(start..)?;
    let value = match rest.strip_prefix('"') {
        Some(quoted) => quoted.get(..quoted.find('"')?)?,
        None => rest.split([',', ' ']).next()?,
    };
    Some(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(text: &str) -> http::Uri {
        text.parse().unwrap()
    }

    #[test]
    fn nothing_gets_credentials_before_a_challenge() {
        let p = CredentialPolicy::new(Some("reg:443".into()), true);
        assert!(!p.wants_credentials(&uri("https://reg/v2/a/manifests/t")));
    }

    #[test]
    fn a_basic_challenge_credentials_the_registry_only() {
        let mut p = CredentialPolicy::new(Some("reg:443".into()), true);
        assert_eq!(
            p.learn(["Basic realm=\"Registry\""].into_iter()),
            vec![Learned::Basic]
        );
        assert!(p.wants_credentials(&uri("https://reg/v2/a/blobs/sha256:00")));
        assert!(!p.wants_credentials(&uri("https://other/v2/")));
        // Once known, not learned again (no second resend).
        assert_eq!(p.learn(["Basic"].into_iter()), vec![]);
    }

    #[test]
    fn a_bearer_challenge_credentials_the_realm_only() {
        let mut p = CredentialPolicy::new(Some("reg:443".into()), true);
        let learned =
            p.learn(["Bearer realm=\"https://auth:8443/token\",service=\"r\""].into_iter());
        assert_eq!(
            learned,
            vec![Learned::Realm {
                authority: "auth:8443".into()
            }]
        );
        assert!(p.wants_credentials(&uri("https://auth:8443/token?scope=x")));
        assert!(!p.wants_credentials(&uri("https://auth:8443/other")));
        assert!(!p.wants_credentials(&uri("http://auth:8443/token")));
        assert!(!p.wants_credentials(&uri("https://reg/v2/a/manifests/t")));
    }

    #[test]
    fn clear_text_only_to_the_named_host() {
        let mut p = CredentialPolicy::new(Some("127.0.0.1:5000".into()), true);
        let learned = p.learn(["Bearer realm=\"http://127.0.0.2:9/token\""].into_iter());
        assert!(
            matches!(&learned[..], [Learned::Refused { authority, .. }] if authority == "127.0.0.2:9")
        );
        assert!(p.refusal("127.0.0.2:9").is_some());
        assert!(!p.wants_credentials(&uri("http://127.0.0.2:9/token")));
        // A plain-http realm on the named host itself is fine.
        p.learn(["Bearer realm=\"http://127.0.0.1:5000/token\""].into_iter());
        assert!(p.wants_credentials(&uri("http://127.0.0.1:5000/token")));
        assert!(!p.wants_credentials(&uri("http://127.0.0.1:5000/v2/")));
    }

    #[test]
    fn without_credentials_nothing_is_refused_or_sent() {
        let mut p = CredentialPolicy::new(Some("127.0.0.1:5000".into()), false);
        let learned = p.learn(["Bearer realm=\"http://127.0.0.2:9/token\"", "Basic"].into_iter());
        assert_eq!(
            learned,
            vec![Learned::Realm {
                authority: "127.0.0.2:9".into()
            }]
        );
        assert!(!p.wants_credentials(&uri("http://127.0.0.2:9/token")));
    }

    #[test]
    fn realms() {
        assert_eq!(
            realm_of(r#"Bearer realm="https://auth.example:8443/token",service="registry""#),
            Some("https://auth.example:8443/token".into())
        );
        assert_eq!(
            realm_of("Bearer realm=https://a/token,service=x"),
            Some("https://a/token".into())
        );
        assert_eq!(realm_of("Basic"), None);
        assert_eq!(realm_of("Bearer realm=\"unterminated"), None);
    }
}
