//! Command-line arguments shared by the subcommands, with the defaults and their reasons.

use std::path::PathBuf;
use std::sync::atomic::AtomicI64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::runtime::OpenOptions;
use crate::sandbox::{DeviceSpec, Limits};

/// The component, the layer and its index: what every device-serving command takes.
#[derive(Debug, Args, Clone)]
pub struct DeviceArgs {
    /// The erofs-wasm component (.wasm), e.g. target/wasm32-wasip2/release/erofs_component.wasm
    pub component: PathBuf,

    /// The layer blob: a gzip layer (with --zinfo) or an uncompressed tar
    pub blob: PathBuf,

    /// The EROFS tar-index metadata image (`mkfs.erofs --tar=i`)
    #[arg(long, value_name = "META")]
    pub tarindex: Option<PathBuf>,

    /// The zinfo checkpoint index of a gzip blob (`mkfs.erofs --gzinfo`)
    #[arg(long, value_name = "ZINFO")]
    pub zinfo: Option<PathBuf>,

    /// erofs-utils option spelling: oci.tarindex=PATH,oci.zinfo=PATH
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,

    /// Decoded-byte cache in the component [default 32M: a FUSE readahead window and a
    /// few hot files]. 0 turns it off.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub cache_size: Option<u64>,

    /// Live inflater cursors per device [default 4: a few files read at once]
    #[arg(long, value_name = "N")]
    pub max_cursors: Option<u32>,

    /// Distance between checkpoints learned while decoding [default 1M]; 0 turns it off
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub learn_interval: Option<u64>,

    /// Cap on the component's memory [default: 192M plus the cache size, for the cache,
    /// learned checkpoints (<= 8M), cursors and a 32M read]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub memory_limit: Option<u64>,

    /// Deadline for one call into the component, in seconds [default 30: a 32 MiB read
    /// takes well under a second; a stuck guest is stopped]
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    pub call_timeout: f64,

    /// Testing only: make the component trap on the blob read that follows N more
    /// blob reads, once (to check that a trap costs one request, not the mount)
    #[arg(long, value_name = "N", hide = true)]
    pub inject_trap_after_blob_reads: Option<i64>,
}

impl DeviceArgs {
    /// The metadata image path, from --tarindex or -o oci.tarindex= (for messages).
    pub fn tarindex_path(&self) -> PathBuf {
        self.spec()
            .map(|(spec, _)| spec.meta)
            .unwrap_or_else(|_| PathBuf::from("meta"))
    }

    /// Resolve -o options and defaults into what the sandbox needs.
    pub fn spec(&self) -> Result<(DeviceSpec, Limits)> {
        let mut tarindex = self.tarindex.clone();
        let mut zinfo = self.zinfo.clone();
        for list in &self.options {
            for opt in list.split(',').filter(|o| !o.is_empty()) {
                let (key, value) = opt.split_once('=').unwrap_or((opt, ""));
                match key {
                    "oci.tarindex" => tarindex = Some(PathBuf::from(value)),
                    "oci.zinfo" => zinfo = Some(PathBuf::from(value)),
                    "ro" => {}
                    _ => bail!(
                        "-o {opt}: unknown option (known: oci.tarindex=PATH, oci.zinfo=PATH, ro)"
                    ),
                }
            }
        }
        let meta = tarindex
            .context("no metadata image: pass --tarindex META (or -o oci.tarindex=META)")?;
        let cache = self.cache_size.unwrap_or(32 << 20);
        let memory = self.memory_limit.unwrap_or(cache + (192 << 20));
        if !(self.call_timeout > 0.0 && self.call_timeout < 86_400.0) {
            bail!(
                "--call-timeout {}: must be between 0 and 86400 seconds",
                self.call_timeout
            );
        }
        let options = OpenOptions {
            cache_bytes: Some(cache),
            max_cursors: self.max_cursors,
            learn_interval: self.learn_interval,
            max_learned: None,
        };
        Ok((
            DeviceSpec {
                meta,
                blob: self.blob.clone(),
                zinfo,
                options,
                trap_after_blob_reads: self
                    .inject_trap_after_blob_reads
                    .map(|n| Arc::new(AtomicI64::new(n))),
            },
            Limits {
                memory,
                call_timeout: Duration::from_secs_f64(self.call_timeout),
            },
        ))
    }
}

/// Parse sizes such as `4096`, `128K`, `32M`, `1G`, `64MiB` (binary units).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size (e.g. 4096, 128K, 32M)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(format!("`{text}`: unknown unit `{unit}` (use K, M, G)")),
    };
    number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("`{text}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("128K"), Ok(128 << 10));
        assert_eq!(parse_size("32MiB"), Ok(32 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("x").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
