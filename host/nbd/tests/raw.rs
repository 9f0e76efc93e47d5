//! Protocol tests with a minimal hand-written client: handshake options, every command,
//! pipelining, failures and hostile input. After each case a fresh connection must still
//! read correct bytes.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use erofs_nbd::{Listen, Server, ServerConfig};

/// A few MiB, deliberately not a multiple of 512.
const SIZE: usize = 5 * 1024 * 1024 + 3 * 4096 + 1000;

fn tcp_any() -> Listen {
    let a: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    Listen::Tcp(a)
}

fn slice(server: &TestServer, off: u64, len: u32) -> &[u8] {
    &server.data[off as usize..(off + u64::from(len)) as usize]
}

#[test]
fn handshake_options() {
    let server = TestServer::tcp(SIZE);
    let mut c = server.connect();
    // Server offers FIXED_NEWSTYLE | NO_ZEROES.
    assert_eq!(c.greet(1), 3);

    // LIST: one REP_SERVER carrying the name (then the description), then ACK.
    c.send_option(OPT_LIST, &[]);
    let (o, kind, p) = c.option_reply();
    assert_eq!((o, kind), (OPT_LIST, REP_SERVER));
    let nlen = u32::from_be_bytes(p[..4].try_into().expect("len")) as usize;
    assert_eq!(&p[4..4 + nlen], EXPORT.as_bytes());
    assert_eq!(&p[4 + nlen..], b"pseudo-random test export");
    assert_eq!(c.option_reply().1, REP_ACK);
    c.send_option(OPT_LIST, b"junk");
    assert_eq!(c.option_reply().1, REP_ERR_INVALID);

    // INFO on the default export "" with NAME, DESCRIPTION, BLOCK_SIZE and an unknown type.
    let reps = c.info_or_go(OPT_INFO, "", &[1, 2, 3, 999]);
    assert_eq!(reps.last().map(|r| r.0), Some(REP_ACK));
    let mut by_type = HashMap::new();
    for (kind, p) in &reps[..reps.len() - 1] {
        assert_eq!(*kind, REP_INFO);
        by_type.insert(u16::from_be_bytes([p[0], p[1]]), p[2..].to_vec());
    }
    let export = &by_type[&0];
    assert_eq!(export.len(), 10);
    assert_eq!(
        u64::from_be_bytes(export[..8].try_into().expect("size")),
        SIZE as u64
    );
    // HAS_FLAGS | READ_ONLY | SEND_FLUSH | CAN_MULTI_CONN, nothing else.
    assert_eq!(u16::from_be_bytes([export[8], export[9]]), 0x0107);
    assert_eq!(by_type[&1], EXPORT.as_bytes());
    assert_eq!(by_type[&2], b"pseudo-random test export");
    let bs = &by_type[&3];
    let word = |i: usize| u32::from_be_bytes(bs[i * 4..i * 4 + 4].try_into().expect("u32"));
    assert_eq!((word(0), word(1), word(2)), (1, 4096, MAX_REQUEST));
    assert_eq!(by_type.len(), 4);

    // Errors that keep the session alive.
    let reps = c.info_or_go(OPT_INFO, "no-such-export", &[]);
    assert_eq!(reps, vec![(REP_ERR_UNKNOWN, reps[0].1.clone())]);
    c.send_option(OPT_INFO, &[0, 0, 0, 50, 0, 0]); // name length lies
    assert_eq!(c.option_reply().1, REP_ERR_INVALID);
    c.send_option(42, b"unknown option data");
    assert_eq!(c.option_reply().1, REP_ERR_UNSUP);
    c.send_option(5, &[]); // STARTTLS
    assert_eq!(c.option_reply().1, REP_ERR_UNSUP);
    c.send_option(OPT_STRUCTURED_REPLY, b"x");
    assert_eq!(c.option_reply().1, REP_ERR_INVALID);
    let reps = c.info_or_go(OPT_GO, "wrong", &[]);
    assert_eq!(reps[0].0, REP_ERR_UNKNOWN);

    // Finally GO with the real name enters transmission.
    let reps = c.info_or_go(OPT_GO, EXPORT, &[]);
    assert_eq!(reps.last().map(|r| r.0), Some(REP_ACK));
    let r = c.read(1, 4096, 8192);
    assert_eq!(r.error, 0);
    assert!(r.data == slice(&server, 4096, 8192));
    c.request(CMD_DISC, 0, 0, 0, 0);
    assert!(c.is_closed());
    assert_healthy(&server);
}

#[test]
fn abort_and_refusals_close_the_session() {
    let server = TestServer::tcp(SIZE);

    // ABORT: ACK, then the server hangs up.
    let mut c = server.connect();
    c.greet(3);
    c.send_option(OPT_ABORT, &[]);
    assert_eq!(c.option_reply().1, REP_ACK);
    assert!(c.is_closed());

    // Unknown client flag.
    let mut c = server.connect();
    c.greet(1 << 5);
    assert!(c.is_closed());

    // EXPORT_NAME for an unknown export cannot be answered with an error.
    let mut c = server.connect();
    c.greet(3);
    c.send_option(OPT_EXPORT_NAME, b"missing");
    assert!(c.is_closed());

    // An option bigger than 64 KiB: TOO_BIG, then closed (the payload is never sent).
    let mut c = server.connect();
    c.greet(3);
    let mut hdr = IHAVEOPT.to_be_bytes().to_vec();
    hdr.extend_from_slice(&OPT_INFO.to_be_bytes());
    hdr.extend_from_slice(&(1u32 << 20).to_be_bytes());
    c.send(&hdr).expect("send");
    assert_eq!(c.option_reply().1, REP_ERR_TOO_BIG);
    assert!(c.is_closed());

    // The same for EXPORT_NAME: just closed.
    let mut c = server.connect();
    c.greet(3);
    let mut hdr = IHAVEOPT.to_be_bytes().to_vec();
    hdr.extend_from_slice(&OPT_EXPORT_NAME.to_be_bytes());
    hdr.extend_from_slice(&u32::MAX.to_be_bytes());
    c.send(&hdr).expect("send");
    assert!(c.is_closed());

    // Bad option magic.
    let mut c = server.connect();
    c.greet(3);
    c.send(&[0x55; 16]).expect("send");
    assert!(c.is_closed());

    assert_healthy(&server);
}

#[test]
fn export_name_honours_no_zeroes() {
    let server = TestServer::tcp(SIZE);
    for (client_flags, structured) in [(3u32, false), (1, false), (3, true), (1, true)] {
        let mut c = server.connect();
        c.greet(client_flags);
        if structured {
            c.send_option(OPT_STRUCTURED_REPLY, &[]);
            assert_eq!(c.option_reply().1, REP_ACK);
            c.structured = true;
        }
        // The empty name selects the default export.
        c.send_option(OPT_EXPORT_NAME, b"");
        let head = c.recv(10).expect("export info");
        assert_eq!(
            u64::from_be_bytes(head[..8].try_into().expect("size")),
            SIZE as u64
        );
        assert_eq!(u16::from_be_bytes([head[8], head[9]]), 0x0107);
        if client_flags & 2 == 0 {
            assert_eq!(c.recv(124).expect("zeroes"), vec![0u8; 124]);
        }
        // The very next bytes must be the reply to our read.
        let r = c.read(9, 1000, 3000);
        assert_eq!(r.error, 0);
        assert!(r.data == slice(&server, 1000, 3000));
        c.close();
    }
    assert_healthy(&server);
}

/// Every non-read command and every invalid read, in both reply modes. Each is followed
/// by a valid read on the same connection (still in step) and a check on a new one.
#[test]
fn commands_and_invalid_requests() {
    let server = TestServer::tcp(SIZE);
    let size = SIZE as u64;
    for structured in [false, true] {
        let mut c = server.connect();
        assert_eq!(c.handshake(EXPORT, structured), size);
        // (what, command, flags, offset, length, payload bytes sent, expected error)
        let cases: [(&str, u16, u16, u64, u32, usize, u32); 14] = [
            ("write", CMD_WRITE, 0, 0, 4096, 4096, EPERM),
            ("empty write with FUA", CMD_WRITE, 1, 0, 0, 0, EPERM),
            ("trim", CMD_TRIM, 0, 0, 4096, 0, EPERM),
            ("write zeroes", CMD_WRITE_ZEROES, 0, 0, 4096, 0, EPERM),
            ("unknown command", 77, 0, 0, 4096, 0, EINVAL),
            ("block status, not negotiated", 7, 0, 0, 4096, 0, EINVAL),
            ("flush", CMD_FLUSH, 0, 0, 0, 0, 0),
            ("read past end", CMD_READ, 0, size - 10, 20, 0, EINVAL),
            ("read beyond end", CMD_READ, 0, size + 4096, 1, 0, EINVAL),
            (
                "read offset overflow",
                CMD_READ,
                0,
                u64::MAX - 10,
                4096,
                0,
                EINVAL,
            ),
            (
                "read larger than max",
                CMD_READ,
                0,
                0,
                MAX_REQUEST + 1,
                0,
                EINVAL,
            ),
            (
                "read with REQ_ONE flag",
                CMD_READ,
                1 << 3,
                0,
                512,
                0,
                EINVAL,
            ),
            ("zero-length read", CMD_READ, 0, 100, 0, 0, 0),
            ("zero-length read at end", CMD_READ, 0, size, 0, 0, 0),
        ];
        for (i, (what, kind, flags, offset, len, payload, expect)) in cases.into_iter().enumerate()
        {
            let cookie = 1000 + 2 * i as u64;
            let mut req = request_bytes(kind, flags, cookie, offset, len);
            req.extend(std::iter::repeat_n(0xab, payload));
            c.send(&req).expect("send");
            let r = c.reply(0);
            assert_eq!(r.cookie, cookie, "{what}: cookie");
            assert_eq!(r.error, expect, "{what}: error");
            assert!(
                r.data.is_empty(),
                "{what}: an error or empty reply carries no data"
            );
            // Still in step on this connection, and a new connection still works.
            let r = c.read(cookie + 1, 8192, 512);
            assert_eq!(r.error, 0, "{what}: follow-up read");
            assert!(r.data == slice(&server, 8192, 512));
            assert_healthy(&server);
        }

        // Largest allowed read, ending exactly at the end of the export.
        let r = c.read(1, size - u64::from(MAX_REQUEST), MAX_REQUEST);
        assert_eq!(r.error, 0);
        assert!(r.data == slice(&server, size - u64::from(MAX_REQUEST), MAX_REQUEST));

        c.request(CMD_DISC, 0, 0, 0, 0);
        assert!(c.is_closed());
    }
}

#[test]
fn pipelined_reads_with_distinct_cookies() {
    let server = TestServer::tcp(SIZE);
    let size = SIZE as u64;
    for structured in [false, true] {
        let mut c = server.connect();
        c.handshake(EXPORT, structured);
        // 200 reads of varied sizes and offsets, sent in one burst.
        let mut expected: HashMap<u64, (u64, u32)> = HashMap::new();
        let mut burst = Vec::new();
        let mut x = 0x1234_5678_9abc_def1_u64;
        for i in 0..200u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = 1 + (x % (256 * 1024)) as u32;
            let off = (x >> 20) % (size - u64::from(len) + 1);
            let cookie = 0xc0de_0000 + i * 7;
            expected.insert(cookie, (off, len));
            burst.extend(request_bytes(CMD_READ, 0, cookie, off, len));
        }
        c.send(&burst).expect("send burst");
        let mut seen = 0;
        while !expected.is_empty() {
            let lens: HashMap<u64, usize> =
                expected.iter().map(|(k, v)| (*k, v.1 as usize)).collect();
            let r = c.reply_lookup(|cookie| lens.get(&cookie).copied().unwrap_or(0));
            let (off, len) = expected
                .remove(&r.cookie)
                .expect("known, unanswered cookie");
            assert_eq!(r.error, 0);
            assert!(
                r.data == slice(&server, off, len),
                "data for cookie {}",
                r.cookie
            );
            seen += 1;
        }
        assert_eq!(seen, 200);
        c.close();
        assert_healthy(&server);
    }
}

#[test]
fn disc_waits_for_in_flight_reads() {
    let server = TestServer::tcp(SIZE);
    for structured in [false, true] {
        let mut c = server.connect();
        c.handshake(EXPORT, structured);
        let mut burst = Vec::new();
        for i in 0..16u64 {
            burst.extend(request_bytes(CMD_READ, 0, i, i * 65536, 65536));
        }
        burst.extend(request_bytes(CMD_DISC, 0, 99, 0, 0));
        c.send(&burst).expect("send");
        let mut got = Vec::new();
        for _ in 0..16 {
            let r = c.reply(65536);
            assert_eq!(r.error, 0);
            assert!(r.data == slice(&server, r.cookie * 65536, 65536));
            got.push(r.cookie);
        }
        got.sort_unstable();
        assert_eq!(got, (0..16).collect::<Vec<_>>());
        assert!(c.is_closed(), "closed after the last reply");
    }
    assert_healthy(&server);
}

#[test]
fn failing_source_reports_eio_without_data() {
    let poison = (2 * 1024 * 1024, 2 * 1024 * 1024 + 4096);
    let server = TestServer::start(tcp_any(), pseudo_random(SIZE, 7), Some(poison));
    for structured in [false, true] {
        let mut c = server.connect();
        c.handshake(EXPORT, structured);
        let r = c.read(1, poison.0, 4096);
        assert_eq!((r.error, r.data.len()), (EIO, 0));
        // Partly overlapping, then a good read pipelined right behind it: if the server
        // sent any data with the error, the next reply header would not parse.
        let mut burst = request_bytes(CMD_READ, 0, 2, poison.0 - 100, 200);
        burst.extend(request_bytes(CMD_READ, 0, 3, 0, 4096));
        c.send(&burst).expect("send");
        let len_of = |k: u64| if k == 3 { 4096 } else { 200 };
        let mut replies = [c.reply_lookup(len_of), c.reply_lookup(len_of)];
        replies.sort_by_key(|r| r.cookie);
        assert_eq!((replies[0].cookie, replies[0].error), (2, EIO));
        assert!(replies[0].data.is_empty());
        assert_eq!((replies[1].cookie, replies[1].error), (3, 0));
        assert!(replies[1].data == slice(&server, 0, 4096));
        c.close();
    }
    assert_healthy(&server);
}

#[test]
fn bad_request_magic_closes_only_that_connection() {
    let server = TestServer::tcp(SIZE);
    let mut other = server.connect();
    other.handshake(EXPORT, true);
    let mut c = server.connect();
    c.handshake(EXPORT, false);
    let mut bad = request_bytes(CMD_READ, 0, 1, 0, 512);
    bad[0] ^= 0xff;
    c.send(&bad).expect("send");
    assert!(c.is_closed());
    // The connection opened earlier is untouched.
    let r = other.read(5, 777, 4096);
    assert_eq!(r.error, 0);
    assert!(r.data == slice(&server, 777, 4096));
    assert_healthy(&server);
}

#[test]
fn disconnects_mid_request_do_not_disturb_others() {
    let server = TestServer::tcp(SIZE);
    let mut bystander = server.connect();
    bystander.handshake(EXPORT, true);

    // Many large reads in flight, then the client vanishes after a few bytes.
    for structured in [false, true] {
        let mut c = server.connect();
        c.handshake(EXPORT, structured);
        let mut burst = Vec::new();
        for i in 0..32u64 {
            burst.extend(request_bytes(CMD_READ, 0, i, i * 4096, MAX_REQUEST));
        }
        c.send(&burst).expect("send");
        let _ = c.recv(100);
        drop(c);
        assert_healthy(&server);
    }

    // Half a request header.
    let mut c = server.connect();
    c.handshake(EXPORT, false);
    c.send(&request_bytes(CMD_READ, 0, 1, 0, 512)[..13])
        .expect("send");
    drop(c);
    assert_healthy(&server);

    // A write whose payload never fully arrives.
    let mut c = server.connect();
    c.handshake(EXPORT, true);
    let mut req = request_bytes(CMD_WRITE, 0, 1, 0, 1 << 20);
    req.extend_from_slice(&[1u8; 1000]);
    c.send(&req).expect("send");
    drop(c);
    assert_healthy(&server);

    // An absurd write payload length is refused by closing.
    let mut c = server.connect();
    c.handshake(EXPORT, false);
    c.request(CMD_WRITE, 0, 1, 0, u32::MAX);
    assert!(c.is_closed());
    assert_healthy(&server);

    // Gone in the middle of the handshake, and in the middle of an option.
    let mut c = server.connect();
    c.greet(3);
    drop(c);
    let mut c = server.connect();
    c.greet(3);
    let mut hdr = IHAVEOPT.to_be_bytes().to_vec();
    hdr.extend_from_slice(&OPT_GO.to_be_bytes());
    hdr.extend_from_slice(&100u32.to_be_bytes());
    hdr.extend_from_slice(&[0, 0]);
    c.send(&hdr).expect("send");
    drop(c);
    assert_healthy(&server);

    let r = bystander.read(77, 1 << 20, 4096);
    assert_eq!(r.error, 0);
    assert!(r.data == slice(&server, 1 << 20, 4096));
}

#[test]
fn garbage_never_kills_the_server() {
    let server = TestServer::tcp(SIZE);
    for round in 0..40u64 {
        let noise = pseudo_random(1 + (round as usize * 97) % 3000, round + 1);
        let mut c = server.connect();
        match round % 3 {
            0 => {}
            1 => {
                c.greet(3);
            }
            _ => {
                c.handshake(EXPORT, round % 2 == 0);
            }
        }
        // Keep it a request magic half of the time to reach deeper code paths.
        let mut junk = noise.clone();
        if round % 2 == 0 && junk.len() >= 4 {
            junk[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        }
        let _ = c.send(&junk);
        drop(c);
    }
    assert_healthy(&server);
}

#[test]
fn unix_socket_serves_and_cleans_up() {
    let dir = TempDir::new("raw-unix");
    let sock = dir.path("nbd.sock");
    let server = TestServer::start(Listen::Unix(sock.clone()), pseudo_random(SIZE, 3), None);
    assert!(server.uri.starts_with("nbd+unix:///layer0?socket="));
    assert_healthy(&server);
    let mut c = server.connect();
    c.handshake(EXPORT, true);
    let r = c.read(1, 4_000_000, 100_000);
    assert!(r.data == slice(&server, 4_000_000, 100_000));
    // Stop with that client still connected: serve returns and removes the socket file.
    let started = Instant::now();
    server.stop().expect("serve result");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(c.is_closed());
    assert!(!sock.exists(), "socket file removed");
}

#[test]
fn stop_returns_promptly_with_idle_clients() {
    let server = TestServer::tcp(SIZE);
    let mut idle_handshake = server.connect();
    idle_handshake.greet(3);
    let mut idle_transmission = server.connect();
    idle_transmission.handshake(EXPORT, false);
    let started = Instant::now();
    server.stop().expect("serve result");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(idle_handshake.is_closed());
    assert!(idle_transmission.is_closed());
}

#[test]
fn bind_rejects_bad_configs() {
    let src = || {
        std::sync::Arc::new(MemSource {
            data: vec![0; 4096],
            poison: None,
        })
    };
    for config in [
        ServerConfig {
            max_request: 100,
            ..ServerConfig::default()
        },
        ServerConfig {
            export_name: "a\0b".into(),
            ..ServerConfig::default()
        },
        ServerConfig {
            description: Some("x".repeat(5000)),
            ..ServerConfig::default()
        },
    ] {
        let err = Server::bind(tcp_any(), config, src())
            .err()
            .expect("rejected");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    }
    let defaults = ServerConfig::default();
    assert_eq!(defaults.max_request, 32 * 1024 * 1024);
    assert!(Server::bind(tcp_any(), defaults, src()).is_ok());
}
