//! Registry credentials. They come from `--username` with `--password-stdin`, from the
//! environment (`EROFS_REGISTRY_USERNAME` / `EROFS_REGISTRY_PASSWORD`), or from
//! `~/.docker/config.json` (`auths`). Never from argv, never logged, never written to disk,
//! and never given to the component: the host adds the Authorization header itself.

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
    /// The value of an `Authorization: Basic` header.
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// Find credentials for `registry` (its authority, e.g. `127.0.0.1:5000`).
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
    docker_config(registry)
}

/// `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`, key `auths.<registry>.auth`
/// (base64 of `user:password`). Docker Hub is keyed `https://index.docker.io/v1/`.
fn docker_config(registry: &str) -> Result<Option<Credentials>> {
    let path = match crate::env::path("DOCKER_CONFIG") {
        Some(dir) => dir.join("config.json"),
        None => match crate::env::path("HOME") {
            Some(home) => home.join(".docker/config.json"),
            None => return Ok(None),
        },
    };
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        // No config file (or no such home): no credentials, as for docker itself.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e).with_context(|| format!("{}: cannot read", path.display())),
    };
    let config: serde_json::Value = serde_json::from_slice(&text)
        .with_context(|| format!("{}: not valid JSON", path.display()))?;
    let hub = matches!(
        registry,
        "registry-1.docker.io" | "docker.io" | "index.docker.io"
    );
    let keys: Vec<String> = if hub {
        vec![
            "https://index.docker.io/v1/".into(),
            "docker.io".into(),
            "index.docker.io".into(),
        ]
    } else {
        vec![
            registry.to_string(),
            format!("https://{registry}"),
            format!("http://{registry}"),
        ]
    };
    for key in keys {
        let Some(auth) = config["auths"][&key]["auth"].as_str() else {
            continue;
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .with_context(|| format!("{}: auths.{key}.auth is not base64", path.display()))?;
        let decoded = String::from_utf8(decoded)
            .with_context(|| format!("{}: auths.{key}.auth is not UTF-8", path.display()))?;
        let Some((username, password)) = decoded.split_once(':') else {
            bail!("{}: auths.{key}.auth is not user:password", path.display());
        };
        return Ok(Some(Credentials {
            username: username.into(),
            password: password.into(),
        }));
    }
    Ok(None)
}
