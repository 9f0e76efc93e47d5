//! A small OCI registry on 127.0.0.1 for the trust tests: plain HTTP, no auth, image
//! manifests by tag (which a test can move) and by digest, blobs with Range, one
//! request log, and a switch that delays the next blob answer (to make a call pass its
//! deadline and the instance be rebuilt). Std only; one thread per connection; every
//! answer closes its connection.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};

pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// One request, as the log keeps it.
#[derive(Debug, Clone)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
}

#[derive(Default)]
struct State {
    blobs: HashMap<String, Arc<Vec<u8>>>,
    manifests: HashMap<String, Arc<Vec<u8>>>,
    tags: HashMap<String, String>,
    log: Vec<Logged>,
}

pub struct FakeRegistry {
    pub addr: String,
    state: Arc<Mutex<State>>,
    delay_next_blob_ms: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl FakeRegistry {
    pub fn start() -> FakeRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(Mutex::new(State::default()));
        let delay = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, d, st) = (state.clone(), delay.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (s, d) = (s.clone(), d.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &s, &d);
                });
            }
        });
        FakeRegistry {
            addr,
            state,
            delay_next_blob_ms: delay,
            stop,
        }
    }

    /// Store a blob; its digest.
    pub fn add_blob(&self, bytes: Vec<u8>) -> String {
        let digest = digest_of(&bytes);
        self.state
            .lock()
            .unwrap()
            .blobs
            .insert(digest.clone(), Arc::new(bytes));
        digest
    }

    /// An image of one layer (with an empty config): its manifest digest.
    pub fn add_image(&self, layer: Vec<u8>, media_type: &str) -> String {
        self.add_image_of(vec![(layer, media_type)])
    }

    /// An image of these layers, bottom first, each with its media type (and an empty
    /// config): its manifest digest.
    pub fn add_image_of(&self, layers: Vec<(Vec<u8>, &str)>) -> String {
        let descriptors: Vec<String> = layers
            .into_iter()
            .map(|(layer, media_type)| {
                let size = layer.len();
                let digest = self.add_blob(layer);
                format!(r#"{{"mediaType":"{media_type}","digest":"{digest}","size":{size}}}"#)
            })
            .collect();
        let config =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
                .to_vec();
        let config_size = config.len();
        let config_digest = self.add_blob(config);
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{MANIFEST_TYPE}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{config_size}}},"layers":[{}]}}"#,
            descriptors.join(",")
        )
        .into_bytes();
        let digest = digest_of(&manifest);
        self.state
            .lock()
            .unwrap()
            .manifests
            .insert(digest.clone(), Arc::new(manifest));
        digest
    }

    /// Point `tag` at a manifest (moving it if it was set).
    pub fn tag(&self, tag: &str, manifest_digest: &str) {
        self.state
            .lock()
            .unwrap()
            .tags
            .insert(tag.to_string(), manifest_digest.to_string());
    }

    /// The next blob answer waits this long first (once).
    pub fn delay_next_blob(&self, ms: u64) {
        self.delay_next_blob_ms.store(ms, Ordering::SeqCst);
    }

    pub fn log(&self) -> Vec<Logged> {
        self.state.lock().unwrap().log.clone()
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(&self.addr);
    }
}

fn serve(conn: TcpStream, state: &Mutex<State>, delay: &AtomicU64) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut range = None;
    let mut content_length = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
            if k == "range" {
                range = Some(v);
            } else if k == "content-length" {
                content_length = v.parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; content_length];
    reader.read_exact(&mut body)?;
    let answer = {
        let mut s = state.lock().unwrap();
        s.log.push(Logged {
            method: method.clone(),
            path: path.clone(),
            range: range.clone(),
        });
        route(&s, &method, &path, range.as_deref())
    };
    if path.contains("/blobs/") {
        let ms = delay.swap(0, Ordering::SeqCst);
        if ms > 0 {
            std::thread::sleep(Duration::from_millis(ms));
        }
    }
    let (status, headers, payload) = answer;
    let mut out = conn;
    let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in &headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", payload.len()));
    out.write_all(head.as_bytes())?;
    if method != "HEAD" {
        out.write_all(&payload)?;
    }
    out.flush()
}

type Answer = (&'static str, Vec<(String, String)>, Vec<u8>);

fn not_found() -> Answer {
    (
        "404 Not Found",
        vec![],
        b"{\"errors\":[{\"code\":\"NOT_FOUND\"}]}".to_vec(),
    )
}

fn route(s: &State, _method: &str, path: &str, range: Option<&str>) -> Answer {
    if path == "/v2/" {
        return ("200 OK", vec![], b"{}".to_vec());
    }
    if let Some((_, reference)) = path.split_once("/manifests/") {
        let digest = match s.tags.get(reference) {
            Some(d) => d.clone(),
            None => reference.to_string(),
        };
        let Some(m) = s.manifests.get(&digest) else {
            return not_found();
        };
        return (
            "200 OK",
            vec![
                ("Content-Type".into(), MANIFEST_TYPE.into()),
                ("Docker-Content-Digest".into(), digest),
            ],
            m.to_vec(),
        );
    }
    if let Some((_, digest)) = path.split_once("/blobs/") {
        let Some(blob) = s.blobs.get(digest) else {
            return not_found();
        };
        let total = blob.len() as u64;
        let Some((a, b)) = range.and_then(parse_range) else {
            return ("200 OK", vec![], blob.to_vec());
        };
        if a >= total {
            return (
                "416 Range Not Satisfiable",
                vec![("Content-Range".into(), format!("bytes */{total}"))],
                vec![],
            );
        }
        let b = b.min(total - 1);
        return (
            "206 Partial Content",
            vec![("Content-Range".into(), format!("bytes {a}-{b}/{total}"))],
            blob[a as usize..=b as usize].to_vec(),
        );
    }
    not_found()
}

fn parse_range(text: &str) -> Option<(u64, u64)> {
    let spec = text.strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let a = a.trim().parse().ok()?;
    let b = if b.trim().is_empty() {
        u64::MAX
    } else {
        b.trim().parse().ok()?
    };
    Some((a, b))
}
