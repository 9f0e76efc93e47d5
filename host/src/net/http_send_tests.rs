//! The sender against small misbehaving servers on 127.0.0.1: connection reuse,
//! Retry-After, a stalled body resumed on another connection, a silent connection
//! replaced.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// What the test server does with one request: the request head (lower-cased header
/// names), the connection's number (1-based) and the request's number on it.
type Script = dyn Fn(&Request) -> Reply + Send + Sync;

struct Request {
    range: Option<String>,
    connection: usize,
}

enum Reply {
    /// Status, extra headers, body; the connection stays open.
    Full(u16, Vec<(String, String)>, Vec<u8>),
    /// A 206 with these headers and a true Content-Length, but only `sent` bytes of
    /// its body, then silence (the connection stays open).
    Stall {
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        sent: usize,
    },
    /// No answer at all (the connection stays open).
    Silence,
}

struct Server {
    url: String,
    connections: Arc<AtomicUsize>,
    ranges: Arc<Mutex<Vec<Option<String>>>>,
}

async fn serve(script: Arc<Script>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/blob", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let ranges = Arc::new(Mutex::new(Vec::new()));
    let (count, log) = (connections.clone(), ranges.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::spawn(connection(stream, n, script.clone(), log.clone()));
        }
    });
    Server {
        url,
        connections,
        ranges,
    }
}

async fn connection(
    mut stream: TcpStream,
    n: usize,
    script: Arc<Script>,
    log: Arc<Mutex<Vec<Option<String>>>>,
) {
    let mut buf = Vec::new();
    loop {
        // One request head (the sender's requests have no body).
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut piece = [0u8; 4096];
            match stream.read(&mut piece).await {
                Ok(0) | Err(_) => return,
                Ok(k) => buf.extend_from_slice(&piece[..k]),
            }
        }
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        buf.drain(..end);
        let range = head.lines().find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("range: ")
                .map(str::to_string)
        });
        log.lock().unwrap().push(range.clone());
        let reply = script(&Request {
            range,
            connection: n,
        });
        let (status, headers, body, sent) = match reply {
            Reply::Full(status, headers, body) => {
                let len = body.len();
                (status, headers, body, len)
            }
            Reply::Stall {
                headers,
                body,
                sent,
            } => (206, headers, body, sent),
            Reply::Silence => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                return;
            }
        };
        let mut out = format!("HTTP/1.1 {status} X\r\ncontent-length: {}\r\n", body.len());
        for (k, v) in headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&body[..sent]);
        if stream.write_all(&bytes).await.is_err() {
            return;
        }
        if sent < body.len() {
            tokio::time::sleep(Duration::from_secs(30)).await;
            return;
        }
    }
}

fn get(url: &str, range: Option<&str>) -> http::Request<WasiBody> {
    let mut builder = http::Request::builder().method("GET").uri(url);
    if let Some(range) = range {
        builder = builder.header("range", range);
    }
    builder.body(empty_body()).unwrap()
}

fn sender(first_byte_ms: u64, between_ms: u64) -> Arc<Sender> {
    let timeouts = Timeouts {
        first_byte: Duration::from_millis(first_byte_ms),
        between_bytes: Duration::from_millis(between_ms),
        ..Timeouts::default()
    };
    Sender::new(tls_config(None).unwrap(), timeouts)
}

fn run<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// A 206 of `data[a..=b]` for `Range: bytes=a-b`.
fn ranged(data: &[u8], range: &str) -> Reply {
    let (a, b) = range
        .trim_start_matches("bytes=")
        .split_once('-')
        .map(|(a, b)| (a.parse::<usize>().unwrap(), b.parse::<usize>().unwrap()))
        .unwrap();
    let header = (
        "content-range".into(),
        format!("bytes {a}-{b}/{}", data.len()),
    );
    Reply::Full(206, vec![header], data[a..=b].to_vec())
}

#[test]
fn requests_to_one_origin_reuse_one_connection() {
    run(async {
        let server = serve(Arc::new(|_: &Request| {
            Reply::Full(200, vec![], b"ok".to_vec())
        }))
        .await;
        let sender = sender(5000, 5000);
        for _ in 0..3 {
            let response = sender.send(get(&server.url, None)).await.unwrap();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"ok");
        }
        assert_eq!(server.connections.load(Ordering::SeqCst), 1);
        assert_eq!(sender.connections.opened.load(Ordering::SeqCst), 1);
        assert_eq!(sender.connections.reused.load(Ordering::SeqCst), 2);
    });
}

#[test]
fn retry_after_is_honoured_within_the_budget() {
    run(async {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let server = serve(Arc::new(move |_: &Request| {
            match seen.fetch_add(1, Ordering::SeqCst) {
                0 => Reply::Full(429, vec![("retry-after".into(), "1".into())], vec![]),
                1 => {
                    // An HTTP date one second from now (rounded to whole seconds).
                    let when = SystemTime::now() + Duration::from_millis(1500);
                    let date = httpdate::fmt_http_date(when);
                    Reply::Full(503, vec![("retry-after".into(), date)], vec![])
                }
                _ => Reply::Full(200, vec![], b"done".to_vec()),
            }
        }))
        .await;
        let sender = sender(5000, 5000);
        let t0 = Instant::now();
        let response = sender.send(get(&server.url, None)).await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(
            t0.elapsed() >= Duration::from_millis(1400),
            "{:?}",
            t0.elapsed()
        );
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    });
}

#[test]
fn a_retry_after_beyond_the_budget_is_passed_on() {
    run(async {
        let server = serve(Arc::new(|_: &Request| {
            Reply::Full(503, vec![("retry-after".into(), "3600".into())], vec![])
        }))
        .await;
        let sender = sender(5000, 5000);
        let t0 = Instant::now();
        let response = sender.send(get(&server.url, None)).await.unwrap();
        assert_eq!(response.status(), 503);
        assert!(t0.elapsed() < Duration::from_secs(2));
        assert_eq!(server.ranges.lock().unwrap().len(), 1);
    });
}

#[test]
fn a_stalled_body_is_resumed_on_another_connection() {
    run(async {
        let data: Arc<Vec<u8>> = Arc::new((0..100_000u32).map(|i| (i % 251) as u8).collect());
        let d = data.clone();
        let server = serve(Arc::new(move |r: &Request| {
            let range = r.range.clone().unwrap_or_default();
            if r.connection == 1 {
                // The first connection sends 30 000 bytes of the range, then nothing.
                match ranged(&d, &range) {
                    Reply::Full(_, headers, body) => Reply::Stall {
                        headers,
                        body,
                        sent: 30_000,
                    },
                    other => other,
                }
            } else {
                ranged(&d, &range)
            }
        }))
        .await;
        let sender = sender(5000, 300);
        let response = sender
            .send(get(&server.url, Some("bytes=0-99999")))
            .await
            .unwrap();
        assert_eq!(response.status(), 206);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], &data[..]);
        let ranges = server.ranges.lock().unwrap().clone();
        assert_eq!(
            ranges,
            [
                Some("bytes=0-99999".into()),
                Some("bytes=30000-99999".into())
            ]
        );
        assert_eq!(server.connections.load(Ordering::SeqCst), 2);
    });
}

#[test]
fn a_silent_connection_is_replaced() {
    run(async {
        let server = serve(Arc::new(|r: &Request| {
            if r.connection == 1 {
                Reply::Silence
            } else {
                Reply::Full(200, vec![], b"second".to_vec())
            }
        }))
        .await;
        let sender = sender(300, 5000);
        let response = sender.send(get(&server.url, None)).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"second");
        assert_eq!(server.connections.load(Ordering::SeqCst), 2);
    });
}

#[test]
fn content_ranges() {
    let mut headers = http::HeaderMap::new();
    assert_eq!(content_range(&headers), None);
    headers.insert("content-range", "bytes 5-9/10".parse().unwrap());
    assert_eq!(content_range(&headers), Some((5, 9, 10)));
    headers.insert("content-range", "bytes 5-10/10".parse().unwrap());
    assert_eq!(content_range(&headers), None);
    headers.insert("content-range", "bytes 5-9/*".parse().unwrap());
    assert_eq!(content_range(&headers), None);
}
