//! A registry on 127.0.0.1 for the end-to-end tests: Debian's docker-registry started by
//! tests/registry/harness.py, with the fixtures pushed, stopped when dropped (the harness
//! also watches this test process and stops the registry if the process dies).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use super::{root, run_host_with, skip};

/// The name the network tests use.
pub type Registry = HarnessRegistry;

/// A running harness registry and what the harness printed about it (`registry`, `url`,
/// `workdir`, `ca_file`, `username`, `password`, `images`).
pub struct HarnessRegistry {
    pub info: Value,
    workdir: PathBuf,
}

impl HarnessRegistry {
    /// `harness.py start ARGS…` in a fresh work directory named by `tag`. When the registry
    /// cannot start (docker-registry missing, say), `test` is skipped loudly and `None`
    /// comes back.
    pub fn start(test: &str, tag: &str, args: &[&str]) -> Option<HarnessRegistry> {
        let workdir = std::env::temp_dir().join(format!("erofs-e2e-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&workdir);
        let out = Command::new("python3")
            .arg(root().join("tests/registry/harness.py"))
            .arg("start")
            .args(args)
            .arg("--workdir")
            .arg(&workdir)
            .args(["--watch-pid", &std::process::id().to_string()])
            .args(["--max-lifetime", "1800"])
            .output()
            .ok()?;
        if !out.status.success() {
            let text = String::from_utf8_lossy(&out.stderr);
            skip(test, &format!("the test registry did not start: {text}"));
            return None;
        }
        Some(HarnessRegistry {
            info: serde_json::from_slice(&out.stdout).ok()?,
            workdir,
        })
    }

    /// A TLS registry with `auth` (the harness's `--auth`: none, basic, token) and the
    /// harness options `extra`, for the network tests.
    pub fn start_tls(auth: &str, extra: &[&str]) -> Option<HarnessRegistry> {
        let mut args = vec!["--auth", auth, "--tls"];
        args.extend(extra);
        Self::start("registry tests", &format!("registry-{auth}"), &args)
    }

    /// A string field of the harness's report ("" when absent).
    pub fn s(&self, key: &str) -> String {
        self.info[key].as_str().unwrap_or_default().to_string()
    }

    /// `host:port` of the registry.
    pub fn addr(&self) -> String {
        self.s("registry")
    }

    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    /// The harness's report on one pushed image (`reference`, `manifest_digest`, `layers`…).
    pub fn image(&self, name: &str) -> &Value {
        &self.info["images"][name]
    }

    /// `oci://` reference of a pushed image, by tag.
    pub fn oci(&self, name: &str) -> String {
        format!(
            "oci://{}",
            self.image(name)["reference"].as_str().unwrap_or_default()
        )
    }

    /// The registry's credentials as the host reads them from the environment (the
    /// component never sees them).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("EROFS_REGISTRY_USERNAME", self.s("username")),
            ("EROFS_REGISTRY_PASSWORD", self.s("password")),
        ]
    }

    /// `erofs-host ARGS…` with this registry's credentials in the environment.
    pub fn run_host<S: AsRef<std::ffi::OsStr>>(&self, args: &[S], timeout: Duration) -> Output {
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        run_host_with(args, &env, None, timeout)
    }

    /// A proxy in front of this registry (`harness.py proxy --fault FAULT EXTRA…`), and
    /// what the harness printed about it (`proxy`: its `host:port`, `log`…).
    pub fn proxy(&self, fault: &str, extra: &[&str]) -> Value {
        let out = Command::new("python3")
            .arg(root().join("tests/registry/harness.py"))
            .args(["proxy", "--fault", fault, "--workdir"])
            .arg(&self.workdir)
            .args(["--watch-pid", &std::process::id().to_string()])
            .args(extra)
            .output()
            .unwrap_or_else(|e| panic!("harness.py proxy: {e}"));
        assert!(
            out.status.success(),
            "harness.py proxy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("harness.py proxy printed no JSON: {e}"))
    }
}

impl Drop for HarnessRegistry {
    fn drop(&mut self) {
        let _ = Command::new("python3")
            .arg(root().join("tests/registry/harness.py"))
            .args(["stop", "--workdir"])
            .arg(&self.workdir)
            .output();
    }
}
