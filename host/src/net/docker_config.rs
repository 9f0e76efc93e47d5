//! Registry credentials from docker's `config.json` (`$DOCKER_CONFIG/config.json` or
//! `~/.docker/config.json`), looked up the way docker does:
//!
//! 1. `credHelpers[REGISTRY]`: run `docker-credential-NAME get` for that registry;
//! 2. else `credsStore`: the same with that helper, for every registry;
//! 3. `auths`: a key matches when, with any `http://` or `https://` taken off and cut at
//!    the first `/`, it equals the registry's `host[:port]` as the user wrote it (so
//!    `127.0.0.1:5000` and `https://127.0.0.1:5000/v2/` match `127.0.0.1:5000`, and
//!    `127.0.0.1` does not: another port is another registry). IPv6 literals keep their
//!    brackets (`[::1]:5000`). Docker Hub answers to `https://index.docker.io/v1/`,
//!    `index.docker.io`, `docker.io` and `registry-1.docker.io`.
//!
//! A helper that says "credentials not found" means none (and `auths` is tried); any
//! other helper failure is an error naming the helper.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use base64::Engine;
use serde::Deserialize;

use super::credentials::Credentials;

/// The key docker keeps Docker Hub's credentials under (and asks helpers for).
const HUB_KEY: &str = "https://index.docker.io/v1/";
const HUB_NAMES: [&str; 3] = ["index.docker.io", "docker.io", "registry-1.docker.io"];

/// `registry`: its `host[:port]` as written in the reference (`docker.io` for the Hub).
pub fn lookup(registry: &str) -> Result<Option<Credentials>> {
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
    let config: Config = serde_json::from_slice(&text)
        .with_context(|| format!("{}: not a docker config file", path.display()))?;
    find_in(&config, registry, &path, &|name| {
        PathBuf::from(format!("docker-credential-{name}"))
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Config {
    #[serde(default)]
    auths: std::collections::BTreeMap<String, AuthEntry>,
    creds_store: Option<String>,
    #[serde(default)]
    cred_helpers: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
}

fn is_hub(name: &str) -> bool {
    HUB_NAMES.iter().any(|h| h.eq_ignore_ascii_case(name)) || name == HUB_KEY
}

/// A config key as docker compares it: no scheme, nothing from the first `/` on.
fn key_host(key: &str) -> &str {
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    rest.split('/').next().unwrap_or(rest)
}

fn same_registry(key: &str, registry: &str) -> bool {
    let host = key_host(key);
    host.eq_ignore_ascii_case(registry) || (is_hub(registry) && is_hub(host))
}

/// The lookup, apart from where the file and the helpers are (for the tests).
fn find_in(
    config: &Config,
    registry: &str,
    path: &Path,
    helper_program: &dyn Fn(&str) -> PathBuf,
) -> Result<Option<Credentials>> {
    // Helpers are asked for the Hub under its v1 key, for others under host[:port].
    let server = if is_hub(registry) { HUB_KEY } else { registry };
    let helper = config
        .cred_helpers
        .iter()
        .find(|(key, _)| same_registry(key, registry))
        .map(|(_, name)| (name, "credHelpers"))
        .or(config.creds_store.as_ref().map(|name| (name, "credsStore")));
    if let Some((name, field)) = helper.filter(|(name, _)| !name.is_empty()) {
        let program = helper_program(name);
        let found = from_helper(&program, server)
            .with_context(|| format!("{}: {field} helper `{name}`", path.display()))?;
        if found.is_some() {
            return Ok(found);
        }
    }
    // The exact key first, then any key that names the same registry.
    let entry = config
        .auths
        .get(registry)
        .map(|e| (registry, e))
        .or_else(|| {
            config
                .auths
                .iter()
                .find(|(key, _)| same_registry(key, registry))
                .map(|(key, e)| (key.as_str(), e))
        });
    let Some((key, entry)) = entry else {
        return Ok(None);
    };
    from_entry(key, entry).with_context(|| format!("{}: auths.{key}", path.display()))
}

fn from_entry(key: &str, entry: &AuthEntry) -> Result<Option<Credentials>> {
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.trim().is_empty()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .context("auth is not base64")?;
        let decoded = String::from_utf8(decoded).context("auth is not UTF-8")?;
        let Some((username, password)) = decoded.split_once(':') else {
            bail!("auth is not user:password");
        };
        return Ok(Some(Credentials::new(username.into(), password.into())));
    }
    if let (Some(username), Some(password)) = (&entry.username, &entry.password) {
        return Ok(Some(Credentials::new(username.clone(), password.clone())));
    }
    if entry.identitytoken.is_some() {
        bail!("{key} has only an identity token (OAuth refresh token), which erofs-host does not support; log in with a password or token instead");
    }
    Ok(None)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HelperAnswer {
    username: String,
    secret: String,
}

/// `PROGRAM get` with the server on stdin, as the docker credential helper protocol says.
fn from_helper(program: &Path, server: &str) -> Result<Option<Credentials>> {
    let mut child = Command::new(program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", program.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(server.as_bytes())
            .with_context(|| format!("writing to {}", program.display()))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {}", program.display()))?;
    if !out.status.success() {
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // The protocol's "no such credentials" answer.
        if said.to_ascii_lowercase().contains("credentials not found") {
            return Ok(None);
        }
        bail!(
            "{} get {server} failed ({}): {}",
            program.display(),
            out.status,
            said.trim()
        );
    }
    let answer: HelperAnswer = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{}: not a credential helper answer", program.display()))?;
    if answer.username == "<token>" {
        bail!("{server}: the helper holds an identity token (OAuth refresh token), which erofs-host does not support");
    }
    Ok(Some(Credentials::new(answer.username, answer.secret)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> Config {
        serde_json::from_str(json).unwrap()
    }

    fn user(found: Result<Option<Credentials>>) -> Option<String> {
        found.unwrap().map(|c| c.username().to_string())
    }

    fn no_helper(_: &str) -> PathBuf {
        PathBuf::from("/nonexistent/docker-credential-none")
    }

    fn auth(user: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:pw"))
    }

    #[test]
    fn keys_match_host_and_port_as_docker_does() {
        let c = config(&format!(
            r#"{{"auths": {{"127.0.0.1": {{"auth": "{}"}}, "127.0.0.1:5000": {{"auth": "{}"}},
                "https://reg.example:8443/v2/": {{"auth": "{}"}}, "[::1]:5000": {{"auth": "{}"}},
                "https://index.docker.io/v1/": {{"auth": "{}"}}}}}}"#,
            auth("noport"),
            auth("withport"),
            auth("url"),
            auth("v6"),
            auth("hub")
        ));
        let p = Path::new("config.json");
        assert_eq!(
            user(find_in(&c, "127.0.0.1:5000", p, &no_helper)).as_deref(),
            Some("withport")
        );
        assert_eq!(
            user(find_in(&c, "127.0.0.1", p, &no_helper)).as_deref(),
            Some("noport")
        );
        assert_eq!(user(find_in(&c, "127.0.0.1:6000", p, &no_helper)), None);
        assert_eq!(
            user(find_in(&c, "reg.example:8443", p, &no_helper)).as_deref(),
            Some("url")
        );
        assert_eq!(user(find_in(&c, "reg.example", p, &no_helper)), None);
        assert_eq!(
            user(find_in(&c, "[::1]:5000", p, &no_helper)).as_deref(),
            Some("v6")
        );
        for hub in ["docker.io", "registry-1.docker.io", "index.docker.io"] {
            assert_eq!(
                user(find_in(&c, hub, p, &no_helper)).as_deref(),
                Some("hub")
            );
        }
    }

    #[test]
    fn hub_aliases_and_username_password_fields() {
        let c = config(r#"{"auths": {"docker.io": {"username": "u", "password": "p"}}}"#);
        let p = Path::new("config.json");
        assert_eq!(
            user(find_in(&c, "docker.io", p, &no_helper)).as_deref(),
            Some("u")
        );
        let c = config(r#"{"auths": {"x:1": {"identitytoken": "t"}}}"#);
        let err = find_in(&c, "x:1", p, &no_helper).err().unwrap();
        assert!(format!("{err:#}").contains("identity token"), "{err:#}");
    }

    /// A fake `docker-credential-NAME`: answers for `127.0.0.1:5000` only.
    fn helper_dir() -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("erofs-cred-helper-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("docker-credential-fake");
        std::fs::write(
            &script,
            "#!/bin/sh\n[ \"$1\" = get ] || exit 2\nread -r server\n\
             if [ \"$server\" = 127.0.0.1:5000 ]; then\n\
             echo '{\"ServerURL\":\"127.0.0.1:5000\",\"Username\":\"helped\",\"Secret\":\"s\"}'\n\
             else echo 'credentials not found in native keychain'; exit 1; fi\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    #[test]
    fn credential_helpers_and_stores() {
        let dir = helper_dir();
        let program = |name: &str| dir.join(format!("docker-credential-{name}"));
        let p = Path::new("config.json");
        let c = config(r#"{"credHelpers": {"127.0.0.1:5000": "fake"}}"#);
        assert_eq!(
            user(find_in(&c, "127.0.0.1:5000", p, &program)).as_deref(),
            Some("helped")
        );
        assert_eq!(user(find_in(&c, "127.0.0.1:5001", p, &program)), None);
        let c = config(&format!(
            r#"{{"credsStore": "fake", "auths": {{"other:1": {{"auth": "{}"}}}}}}"#,
            auth("fromfile")
        ));
        assert_eq!(
            user(find_in(&c, "127.0.0.1:5000", p, &program)).as_deref(),
            Some("helped")
        );
        // Not in the store: the file's entry.
        assert_eq!(
            user(find_in(&c, "other:1", p, &program)).as_deref(),
            Some("fromfile")
        );
        let c = config(r#"{"credsStore": "missing"}"#);
        let err = find_in(&c, "127.0.0.1:5000", p, &program).err().unwrap();
        assert!(
            format!("{err:#}").contains("credsStore helper `missing`"),
            "{err:#}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
