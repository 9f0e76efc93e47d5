//! The test registry (tests/registry/harness.py: Debian's docker-registry on 127.0.0.1 with
//! a self-signed CA) and the proxies in front of it, for the end-to-end network tests.

use std::process::Command;

use serde_json::Value;

use super::{root, skip};

pub struct Registry {
    pub info: Value,
}

impl Registry {
    pub fn start(auth: &str, extra: &[&str]) -> Option<Registry> {
        let workdir =
            std::env::temp_dir().join(format!("erofs-e2e-registry-{auth}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&workdir);
        let pid = std::process::id().to_string();
        let out = Command::new("python3")
            .arg(root().join("tests/registry/harness.py"))
            .args(["start", "--auth", auth, "--tls", "--workdir"])
            .arg(&workdir)
            .args(["--watch-pid", &pid, "--max-lifetime", "1800"])
            .args(extra)
            .output()
            .ok()?;
        if !out.status.success() {
            let text = String::from_utf8_lossy(&out.stderr);
            skip(
                "registry tests",
                &format!("the test registry did not start: {text}"),
            );
            return None;
        }
        Some(Registry {
            info: serde_json::from_slice(&out.stdout).ok()?,
        })
    }

    pub fn s(&self, key: &str) -> String {
        self.info[key].as_str().unwrap_or_default().to_string()
    }

    pub fn image(&self, name: &str) -> &Value {
        &self.info["images"][name]
    }

    /// `oci://` reference of an image, by tag.
    pub fn oci(&self, name: &str) -> String {
        format!(
            "oci://{}",
            self.image(name)["reference"].as_str().unwrap_or_default()
        )
    }

    /// Credentials through the environment (the host reads them; the component never does).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("EROFS_REGISTRY_USERNAME", self.s("username")),
            ("EROFS_REGISTRY_PASSWORD", self.s("password")),
        ]
    }

    /// A proxy with a fault in front of this registry.
    pub fn proxy(&self, fault: &str, extra: &[&str]) -> Value {
        let out = Command::new("python3")
            .arg(root().join("tests/registry/harness.py"))
            .args(["proxy", "--workdir", &self.s("workdir"), "--fault", fault])
            .args(["--watch-pid", &std::process::id().to_string()])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "proxy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}
