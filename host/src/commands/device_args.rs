//! The command-line arguments that name a device, shared by the subcommands, and their
//! resolution into what the sandbox needs ([`DeviceArgs::spec`]). The defaults and their
//! reasons are in [`crate::defaults`].
//!
//! A command resolves its arguments once: for a remote blob that makes the one egress
//! policy of the run (allow-list, credentials, range cache, counters), which travels
//! inside the [`DeviceSpec`] to every instance opened from it.

use std::path::PathBuf;
#[cfg(feature = "fault-injection")]
use std::sync::atomic::AtomicI64;
#[cfg(feature = "fault-injection")]
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use super::usage::usage;
use crate::defaults;
use crate::net::credentials;
use crate::net::egress::EgressPolicy;
use crate::net::http_send::Timeouts;
use crate::net::range_cache::RangeCache;
use crate::sandbox::runtime::{BlobLocation, OciBlob, OpenOptions, RemoteOptions};
use crate::sandbox::{format_size, BlobSource, DeviceSpec, Limits};

/// The component, the layer and its index: what every device-serving command takes.
#[derive(Debug, Args, Clone)]
pub struct DeviceArgs {
    /// The erofs-wasm component (.wasm), e.g. target/wasm32-wasip2/release/erofs_component.wasm
    pub component: PathBuf,

    /// The layer blob: a path, an http(s):// URL (read with Range requests), or
    /// oci://REGISTRY/REPO:TAG | oci://REGISTRY/REPO@sha256:... (see --layer, --blob-digest)
    pub blob: String,

    /// The EROFS tar-index metadata image (`mkfs.erofs --tar=i`, `erofs-host index`).
    /// Without it, an oci:// layer uses the index published next to its image
    /// (`erofs-host index ... --push`), found through the registry's referrers API or tag
    #[arg(long, value_name = "META")]
    pub tarindex: Option<PathBuf>,

    /// The zinfo checkpoint index of a gzip blob (`mkfs.erofs --gzinfo`)
    #[arg(long, value_name = "ZINFO")]
    pub zinfo: Option<PathBuf>,

    /// Trust the zinfo whose SHA-256 is HEX (`erofs-host index` prints it for a zinfo
    /// it built): a zinfo with another digest is refused, and its checkpoints serve
    /// without first being proven by decoding to them, which saves the first read past
    /// each one a decode from the checkpoint before. It vouches for the zinfo as far as
    /// you trust where HEX came from [default: none, every checkpoint is proven: a zinfo
    /// is untrusted input, and one published next to an image is not pinned on its own,
    /// since anyone who may push there may replace both the zinfo and any digest stored
    /// beside it]
    #[arg(long, value_name = "HEX")]
    pub zinfo_sha256: Option<String>,

    /// erofs-utils option spelling: oci.tarindex=PATH,oci.zinfo=PATH,oci.layer=N,
    /// oci.blob=sha256:...,oci.platform=os/arch[/variant],oci.insecure
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,

    #[command(flatten)]
    pub remote: RemoteArgs,

    /// Decoded-byte cache in the component (a FUSE readahead window and a few hot
    /// files). 0 turns it off.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = defaults::DECODE_CACHE)]
    pub decode_cache: u64,

    /// Regular files whose tar header is checked when the device opens (the first, the
    /// last and some between), so that a META of another layer is refused at once; 0
    /// turns it off (each file is still checked on its first read through FUSE)
    #[arg(long, value_name = "N", default_value_t = defaults::HEADER_SAMPLES)]
    pub header_samples: u32,

    /// Live inflater cursors per device (a few files read at once)
    #[arg(long, value_name = "N", default_value_t = defaults::MAX_CURSORS)]
    pub max_cursors: u32,

    /// Distance between checkpoints learned while decoding; 0 turns it off
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = defaults::LEARN_INTERVAL)]
    pub learn_interval: u64,

    /// Cap on the component's memory [default: 192M plus the decode cache, for learned
    /// checkpoints (<= 8M), cursors and a 32M read; 128M more for remote blobs: 32M of
    /// fetched chunks and a whole small blob from a server that ignores Range]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub memory_limit: Option<u64>,

    /// Deadline for one call into the component, in seconds [default 30 for local blobs:
    /// a 32 MiB read takes well under a second, so a guest still busy is stuck; 120 for
    /// remote ones: a read may wait for retries with backoff]
    #[arg(long, value_name = "SECONDS")]
    pub call_timeout: Option<f64>,

    #[command(flatten)]
    pub faults: FaultInjectionArgs,
}

/// Where a remote blob is and how to reach it: what every command that reads a blob
/// takes besides its path or URL (the device commands, and `index`).
#[derive(Debug, Args, Clone)]
pub struct RemoteArgs {
    /// oci:// only: the layer to read, by its index in the image manifest
    #[arg(long, value_name = "N")]
    pub layer: Option<u32>,

    /// oci:// only: the layer to read, by digest (sha256:...)
    #[arg(long, value_name = "DIGEST")]
    pub blob_digest: Option<String>,

    /// oci:// only: the platform to pick from an image index [default linux/amd64]
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,

    /// Registry user; the password is read from stdin (--password-stdin). Without them:
    /// EROFS_REGISTRY_USERNAME/EROFS_REGISTRY_PASSWORD, then ~/.docker/config.json
    #[arg(long, value_name = "USER")]
    pub username: Option<String>,

    /// Read the registry password from stdin (never from the command line)
    #[arg(long)]
    pub password_stdin: bool,

    /// Also trust the CA certificates in this PEM file (a private registry)
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,

    /// Allow plain http:// to the registry or blob URL (default: https only)
    #[arg(long)]
    pub insecure: bool,

    /// Keep fetched compressed ranges of registry blobs here, across runs and processes
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Bound of the --cache-dir cache
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = defaults::RANGE_CACHE_SIZE)]
    pub cache_size: u64,
}

/// Testing hooks on the command line (the `fault-injection` feature, on by default so
/// that the e2e tests can drive the built binary; a build without it has no such flag).
#[cfg(feature = "fault-injection")]
#[derive(Debug, Args, Clone, Default)]
pub struct FaultInjectionArgs {
    /// Testing only: make the component trap on the blob read that follows N more
    /// blob reads, once (to check that a trap costs one request, not the mount)
    #[arg(long, value_name = "N", hide = true)]
    pub inject_trap_after_blob_reads: Option<i64>,
}

/// Testing hooks on the command line: none in a build without `fault-injection`.
#[cfg(not(feature = "fault-injection"))]
#[derive(Debug, Args, Clone, Default)]
pub struct FaultInjectionArgs {}

/// Everything `-o` can say.
#[derive(Default)]
struct EroFsUtilsOptions {
    tarindex: Option<PathBuf>,
    zinfo: Option<PathBuf>,
    layer: Option<u32>,
    blob: Option<String>,
    platform: Option<String>,
    insecure: bool,
}

impl DeviceArgs {
    /// The metadata image path, from --tarindex or -o oci.tarindex= (for messages).
    pub fn tarindex_path(&self) -> PathBuf {
        self.dash_o()
            .ok()
            .and_then(|o| o.tarindex)
            .or_else(|| self.tarindex.clone())
            .unwrap_or_else(|| PathBuf::from("meta"))
    }

    fn dash_o(&self) -> Result<EroFsUtilsOptions> {
        let mut o = EroFsUtilsOptions::default();
        for list in &self.options {
            for opt in list.split(',').filter(|o| !o.is_empty()) {
                let (key, value) = opt.split_once('=').unwrap_or((opt, ""));
                match key {
                    "oci.tarindex" => o.tarindex = Some(PathBuf::from(value)),
                    "oci.zinfo" => o.zinfo = Some(PathBuf::from(value)),
                    "oci.layer" => o.layer = Some(value.parse().map_err(|_| usage(format!("-o {opt}: not a layer index")))?),
                    // erofs-utils takes a bare hex digest too.
                    "oci.blob" if value.starts_with("sha256:") => o.blob = Some(value.to_string()),
                    "oci.blob" => o.blob = Some(format!("sha256:{value}")),
                    "oci.platform" => o.platform = Some(value.to_string()),
                    "oci.insecure" => o.insecure = true,
                    "oci.username" | "oci.password" => return Err(usage(format!(
                        "-o {key}: credentials are never taken from the command line; use --username with --password-stdin, EROFS_REGISTRY_USERNAME/PASSWORD, or ~/.docker/config.json"
                    ))),
                    "ro" => {}
                    _ => return Err(usage(format!(
                        "-o {opt}: unknown option (known: oci.tarindex, oci.zinfo, oci.layer, oci.blob, oci.platform, oci.insecure, ro)"
                    ))),
                }
            }
        }
        Ok(o)
    }

    /// True when `blob` is an `oci://` image and nothing picks one layer or its index
    /// (--layer, --blob-digest, --tarindex, --zinfo, or their -o spellings): the
    /// whole image is meant (see `image/`).
    pub fn is_whole_image(&self) -> Result<bool> {
        let o = self.dash_o()?;
        Ok(self.blob.starts_with("oci://")
            && self.remote.layer.is_none()
            && o.layer.is_none()
            && self.remote.blob_digest.is_none()
            && o.blob.is_none()
            && self.tarindex.is_none()
            && o.tarindex.is_none()
            && self.zinfo.is_none()
            && o.zinfo.is_none())
    }

    /// The platform asked for (--platform or -o oci.platform), if any.
    pub fn platform_choice(&self) -> Result<Option<String>> {
        Ok(self.remote.platform.clone().or(self.dash_o()?.platform))
    }

    /// The `oci://` image itself, no layer chosen, with this process's egress policy:
    /// what a whole-image mount lists the layers through.
    pub fn image_source(&self) -> Result<BlobSource> {
        let o = self.dash_o()?;
        let request = RemoteRequest {
            layer: None,
            digest: None,
            platform: self.remote.platform.clone().or(o.platform),
            insecure: self.remote.insecure || o.insecure,
        };
        let deadline = Duration::from_secs_f64(self.call_timeout_secs()?);
        self.remote.blob_source(&self.blob, request, deadline)
    }

    /// The deadline of one call into the component, checked.
    fn call_timeout_secs(&self) -> Result<f64> {
        let is_remote = self.blob.contains("://");
        let call_timeout = self.call_timeout.unwrap_or(if is_remote {
            defaults::CALL_TIMEOUT_REMOTE_SECS
        } else {
            defaults::CALL_TIMEOUT_LOCAL_SECS
        });
        if !(call_timeout > 0.0 && call_timeout < defaults::CALL_TIMEOUT_MAX_SECS) {
            return Err(usage(format!(
                "--call-timeout {call_timeout}: must be between 0 and {} seconds",
                defaults::CALL_TIMEOUT_MAX_SECS
            )));
        }
        Ok(call_timeout)
    }

    /// Resolve -o options and defaults into what the sandbox needs.
    pub fn spec(&self) -> Result<(DeviceSpec, Limits)> {
        let o = self.dash_o()?;
        let remote = RemoteRequest {
            layer: self.remote.layer.or(o.layer),
            digest: self.remote.blob_digest.clone().or(o.blob),
            platform: self.remote.platform.clone().or(o.platform),
            insecure: self.remote.insecure || o.insecure,
        };
        let deadline = Duration::from_secs_f64(self.call_timeout_secs()?);
        let blob = self.remote.blob_source(&self.blob, remote, deadline)?;
        self.spec_with_blob(blob)
    }

    /// [`Self::spec`] with the blob source given: a whole-image mount opens every layer
    /// through the one egress policy it listed the image with (credentials read once).
    pub fn spec_with_blob(&self, blob: BlobSource) -> Result<(DeviceSpec, Limits)> {
        let o = self.dash_o()?;
        let meta = o.tarindex.or_else(|| self.tarindex.clone());
        let zinfo = o.zinfo.or_else(|| self.zinfo.clone());
        if meta.is_none() {
            if !self.blob.starts_with("oci://") {
                return Err(usage(
                    "no metadata image: pass --tarindex META (or -o oci.tarindex=META); only an \
                     oci:// layer can use an index published next to its image",
                ));
            }
            if zinfo.is_some() {
                return Err(usage(
                    "--zinfo without --tarindex: a published index brings its own zinfo",
                ));
            }
        }
        let cache = self.decode_cache;
        let is_remote = self.blob.contains("://");
        let remote_extra = if is_remote {
            defaults::MEMORY_REMOTE_EXTRA
        } else {
            0
        };
        let memory = self
            .memory_limit
            .unwrap_or(cache + defaults::MEMORY_BASE + remote_extra);
        // Refused before any work: a cap the cache alone would fill traps on the first
        // reads, far from the cause.
        let need = cache.saturating_add(defaults::MEMORY_FIXED);
        if memory < need {
            return Err(usage(format!(
                "--memory-limit {} is too small for --decode-cache {}: the cache and the {} the component needs besides it take {}; raise --memory-limit to {} or lower --decode-cache",
                format_size(memory),
                format_size(cache),
                format_size(defaults::MEMORY_FIXED),
                format_size(need),
                format_size(need)
            )));
        }
        let call_timeout = self.call_timeout_secs()?;
        let options = OpenOptions {
            cache_bytes: Some(cache),
            max_cursors: Some(self.max_cursors),
            learn_interval: Some(self.learn_interval),
            max_learned: None,
            header_samples: Some(self.header_samples),
            zinfo_sha256: self.zinfo_sha256.clone(),
        };
        Ok((
            DeviceSpec {
                meta,
                blob,
                zinfo,
                options,
                pins: Default::default(),
                #[cfg(feature = "fault-injection")]
                trap_after_blob_reads: self
                    .faults
                    .inject_trap_after_blob_reads
                    .map(|n| Arc::new(AtomicI64::new(n))),
            },
            Limits {
                memory,
                call_timeout: Duration::from_secs_f64(call_timeout),
            },
        ))
    }
}

impl RemoteArgs {
    /// The blob named by `blob` and these arguments alone (no `-o` options).
    pub fn source(&self, blob: &str) -> Result<BlobSource> {
        let request = RemoteRequest {
            layer: self.layer,
            digest: self.blob_digest.clone(),
            platform: self.platform.clone(),
            insecure: self.insecure,
        };
        // No device call runs here: the remote call deadline bounds a cached body.
        let deadline = Duration::from_secs_f64(defaults::CALL_TIMEOUT_REMOTE_SECS);
        self.blob_source(blob, request, deadline)
    }

    /// A path, a URL or an OCI reference; for the network ones, the egress policy too
    /// (made here, once per command: every instance shares its allow-list and counters).
    fn blob_source(
        &self,
        blob: &str,
        r: RemoteRequest,
        call_timeout: Duration,
    ) -> Result<BlobSource> {
        let text = blob;
        let is_url = text.starts_with("http://") || text.starts_with("https://");
        let is_oci = text.starts_with("oci://");
        if !is_url && !is_oci {
            if r.layer.is_some() || r.digest.is_some() || r.platform.is_some() {
                return Err(usage("--layer, --blob-digest and --platform (oci.layer/oci.blob/oci.platform) need an oci:// blob"));
            }
            return Ok(BlobSource::Local(PathBuf::from(text)));
        }
        let (location, origin, registry) = if is_url {
            let origin =
                egress_origin_of_url(text).with_context(|| format!("{text}: not a valid URL"))?;
            let registry = text
                .parse::<http::Uri>()
                .ok()
                .and_then(|u| u.authority().map(|a| a.to_string()))
                .unwrap_or_else(|| origin.clone());
            (BlobLocation::Url(text.to_string()), origin, registry)
        } else {
            let registry = registry_as_written(text);
            let origin = registry_origin(text, r.insecure);
            let location = BlobLocation::Oci(OciBlob {
                reference: text.to_string(),
                layer: r.layer,
                digest: r.digest,
                platform: r.platform,
            });
            (location, origin, registry)
        };
        let credentials =
            credentials::find(&registry, self.username.as_deref(), self.password_stdin)?;
        let cache = self
            .cache_dir
            .as_deref()
            .map(|dir| RangeCache::open(dir, self.cache_size))
            .transpose()?;
        let egress = EgressPolicy::new(
            Some(origin.clone()),
            credentials,
            r.insecure,
            self.ca_file.as_deref(),
            Timeouts {
                cached_body: call_timeout,
                ..Timeouts::default()
            },
            cache,
        )?;
        let options = RemoteOptions {
            insecure: Some(r.insecure),
            chunk_size: None,
            readahead_max: None,
            max_retries: None,
        };
        Ok(BlobSource::Remote {
            location,
            options,
            egress,
        })
    }
}

struct RemoteRequest {
    layer: Option<u32>,
    digest: Option<String>,
    platform: Option<String>,
    insecure: bool,
}

fn egress_origin_of_url(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme() == Some(&http::uri::Scheme::HTTP) {
            80
        } else {
            443
        });
    Some(format!("{}:{port}", uri.host()?))
}

/// The registry of an `oci://` reference as the user wrote it, `host[:port]` (IPv6 in
/// brackets), `docker.io` for Docker Hub: the name credentials are looked up under.
fn registry_as_written(reference: &str) -> String {
    let rest = reference.trim_start_matches("oci://");
    let first = rest.split('/').next().unwrap_or("");
    let has_registry = rest.contains('/')
        && (first.contains('.')
            || first.contains(':')
            || first.starts_with('[')
            || first == "localhost");
    if !has_registry || first == "index.docker.io" || first == "registry-1.docker.io" {
        "docker.io".to_string()
    } else {
        first.to_string()
    }
}

/// The registry's `host:port` of an `oci://` reference (the component parses the
/// reference fully; the host only needs the host to allow).
fn registry_origin(reference: &str, insecure: bool) -> String {
    let written = registry_as_written(reference);
    let host = if written == "docker.io" {
        "registry-1.docker.io".to_string()
    } else {
        written
    };
    // A port follows the last `:`, outside an IPv6 literal's brackets.
    let has_port = match host.rfind(']') {
        Some(close) => host.get(close..).is_some_and(|tail| tail.contains(':')),
        None => host.contains(':'),
    };
    if has_port {
        host
    } else {
        format!("{host}:{}", if insecure { 80 } else { 443 })
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

#[cfg(test)]
mod origin_tests {
    use super::*;

    #[test]
    fn registry_origins() {
        assert_eq!(
            registry_origin("oci://127.0.0.1:5000/fixtures/basic:latest", false),
            "127.0.0.1:5000"
        );
        assert_eq!(
            registry_origin("oci://ghcr.io/a/b@sha256:00", false),
            "ghcr.io:443"
        );
        assert_eq!(
            registry_origin("oci://busybox", false),
            "registry-1.docker.io:443"
        );
        assert_eq!(
            registry_origin("oci://library/busybox:1", false),
            "registry-1.docker.io:443"
        );
        assert_eq!(registry_origin("oci://localhost/x", true), "localhost:80");
        assert_eq!(
            registry_origin("oci://[::1]:5000/a/b:t", true),
            "[::1]:5000"
        );
        assert_eq!(registry_origin("oci://[::1]/a/b:t", false), "[::1]:443");
        // Credentials are looked up under the name as written, port included.
        assert_eq!(
            registry_as_written("oci://127.0.0.1:5000/a:t"),
            "127.0.0.1:5000"
        );
        assert_eq!(registry_as_written("oci://[::1]:5000/a:t"), "[::1]:5000");
        assert_eq!(registry_as_written("oci://ghcr.io/a/b:t"), "ghcr.io");
        assert_eq!(registry_as_written("oci://busybox:1"), "docker.io");
        assert_eq!(
            egress_origin_of_url("https://h.example/blob").as_deref(),
            Some("h.example:443")
        );
    }
}
