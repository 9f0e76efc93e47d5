//! Registry credentials. They come from `--username` with `--password-stdin`, from the
//! environment (`EROFS_REGISTRY_USERNAME` / `EROFS_REGISTRY_PASSWORD`), or from docker's
//! config file ([`super::docker_config`]: `auths`, `credHelpers`, `credsStore`). Never
//! from argv, never logged, never written to disk, and never given to the component: the
//! host adds the Authorization header itself, where a challenge asks for it
//! ([`super::credential_policy`]).

use std::io::Read;

use anyhow::{bail, Context, Result};
use base64::Engine;

#[derive(Clone)]
pub struct Credentials {
    username: String,
    password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <password hidden>)", self.username)
    }
}

impl Credentials {
    pub(crate) fn new(username: String, password: String) -> Credentials {
        Credentials { username, password }
    }

    #[cfg(test)]
    pub(crate) fn username(&self) -> &str {
        &self.username
    }

    /// The value of an `Authorization: Basic` header.
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// Find credentials for `registry`: its `host[:port]` as the user wrote it (e.g.
/// `127.0.0.1:5000`, `[::1]:5000`, `ghcr.io`; `docker.io` for Docker Hub).
pub fn find(
    registry: &str,
    username: Option<&str>,
    password_stdin: bool,
) -> Result<Option<Credentials>> {
    if let Some(user) = username {
        if !password_stdin {
            bail!("--username needs --password-stdin (passwords are never taken from the command line)");
        }
        let mut password = String::new();
        std::io::stdin()
            .read_to_string(&mut password)
            .context("reading the password from stdin")?;
        let password = password.trim_end_matches(['\n', '\r']).to_string();
        return Ok(Some(Credentials {
            username: user.to_string(),
            password,
        }));
    }
    if password_stdin {
        bail!("--password-stdin needs --username");
    }
    let from_env = |name: &str| {
        crate::env::non_empty(name)
            .map(|v| {
                v.into_string()
                    .map_err(|_| anyhow::anyhow!("{name}: not valid UTF-8"))
            })
            .transpose()
    };
    match (
        from_env("EROFS_REGISTRY_USERNAME")?,
        from_env("EROFS_REGISTRY_PASSWORD")?,
    ) {
        (Some(username), Some(password)) => return Ok(Some(Credentials { username, password })),
        (Some(_), None) | (None, Some(_)) => bail!(
            "EROFS_REGISTRY_USERNAME and EROFS_REGISTRY_PASSWORD go together; only one is set"
        ),
        (None, None) => {}
    }
    super::docker_config::lookup(registry)
}
