//! `--prefetch FILE`: what to fetch first. FILE is either a list of paths, one per line
//! (`/usr/bin/python3`; blank lines and `#` comments are skipped), or an access log
//! written by `--record` (one JSON object per line: `{"path":…,"offset":…,"len":…}`).
//! Both kinds may be mixed. A path alone means the whole file.

use std::path::Path;

use anyhow::{bail, Context, Result};

/// One thing to fetch: a file, or a region of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// Absolute path in the image, components separated by `/`.
    pub path: String,
    /// `None`: the whole file.
    pub region: Option<(u64, u64)>,
}

/// The largest prefetch list read: 64 MiB is far beyond any access log (a line per MiB
/// of file read), and keeps a wrong file from filling memory.
const MAX_LIST: u64 = 64 << 20;

pub fn read(path: &Path) -> Result<Vec<Wanted>> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("--prefetch {}", path.display()))?
        .len();
    if len > MAX_LIST {
        bail!(
            "--prefetch {}: {len} bytes; a prefetch list is at most {MAX_LIST}",
            path.display()
        );
    }
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "--prefetch {}: reading (UTF-8 text expected)",
            path.display()
        )
    })?;
    parse(&text).with_context(|| format!("--prefetch {}", path.display()))
}

pub fn parse(text: &str) -> Result<Vec<Wanted>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let wanted = if line.starts_with('{') {
            let v: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("line {}: not a JSON object", n + 1))?;
            let path = v["path"]
                .as_str()
                .with_context(|| format!("line {}: no \"path\" string", n + 1))?;
            let region = match (v["offset"].as_u64(), v["len"].as_u64()) {
                (Some(o), Some(l)) => Some((o, l)),
                (None, None) => None,
                _ => bail!("line {}: \"offset\" and \"len\" go together", n + 1),
            };
            Wanted {
                path: path.to_string(),
                region,
            }
        } else {
            Wanted {
                path: line.to_string(),
                region: None,
            }
        };
        if !wanted.path.starts_with('/') {
            bail!("line {}: {}: not an absolute path", n + 1, wanted.path);
        }
        out.push(wanted);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_logs() {
        let got = parse(
            "# comment\n/usr/bin/python3\n\n{\"path\":\"/etc/x\",\"offset\":1048576,\"len\":1048576}\n",
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                Wanted {
                    path: "/usr/bin/python3".into(),
                    region: None
                },
                Wanted {
                    path: "/etc/x".into(),
                    region: Some((1 << 20, 1 << 20))
                },
            ]
        );
        assert!(parse("relative/path\n").is_err());
        assert!(parse("{\"offset\":1}\n").is_err());
        assert!(parse("{\"path\":\"/a\",\"offset\":1}\n").is_err());
        assert!(parse("{not json\n").is_err());
    }
}
