//! The remote blob: chunk cache, readahead, response checks, retries, redirects.

use super::*;
use crate::error::{Error, Kind};
use crate::remote::auth::Auth;
use crate::remote::blob::{parse_content_range, ContentRange};
use crate::remote::manifest::sha256_digest;
use crate::source::Source;

#[test]
fn reads_match_the_data() {
    let d = data(200_000);
    let fake = server(&d);
    let b = blob(&fake, d.len() as u64, &opts(4096));
    let mut x = 12345u64;
    for _ in 0..300 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let off = (x >> 33) % 210_000;
        let len = ((x >> 13) % 20_000) as u32;
        let got = b.pread(off, len).unwrap();
        let s = (off as usize).min(d.len());
        let e = (off as usize + len as usize).min(d.len());
        assert_eq!(got, &d[s..e], "read {len} at {off}");
    }
    assert!(b.pread(199_990, 100).unwrap().len() == 10);
    assert!(b.pread(200_000, 1).unwrap().is_empty());
    assert!(b.pread(u64::MAX, u32::MAX).unwrap().is_empty());
    let s = b.stats();
    assert!(s.chunk_hits > 0 && s.chunk_misses > 0, "{s:?}");
    assert_eq!(s.retries, 0);
}

#[test]
fn missing_chunks_of_a_read_are_merged_and_aligned() {
    let d = data(10_000);
    let fake = server(&d);
    let b = blob(&fake, 10_000, &opts(1000));
    assert_eq!(b.pread(1500, 2000).unwrap(), &d[1500..3500]);
    assert_eq!(fake.ranges(), ["bytes=1000-3999"]);
    fake.clear_log();
    // Chunks 1-3 are cached: a read of 0..5000 fetches chunk 0 and chunk 4 separately.
    assert_eq!(b.pread(0, 5000).unwrap(), &d[..5000]);
    assert_eq!(fake.ranges(), ["bytes=0-999", "bytes=4000-4999"]);
    assert_eq!(b.stats().chunk_hits, 3);
    // The last chunk is short.
    fake.clear_log();
    assert_eq!(b.pread(9990, 100).unwrap(), &d[9990..]);
    assert_eq!(fake.ranges(), ["bytes=9000-9999"]);
    assert!(fake
        .requests()
        .iter()
        .all(|r| r.header("accept-encoding") == Some("identity")));
}

#[test]
fn sequential_reads_ramp_up_readahead() {
    let d = data(20 * MIB as usize);
    let fake = server(&d);
    let b = blob(&fake, d.len() as u64, &RemoteOptions::default());
    let piece = 256 * 1024;
    for off in (0..d.len()).step_by(piece) {
        assert_eq!(
            b.pread(off as u64, piece as u32).unwrap(),
            &d[off..off + piece]
        );
    }
    // 1 MiB, then the read's chunk with a 4 MiB window, then windows asked ahead,
    // doubling (8 MiB, then up to the 16 MiB cap: here the blob's end).
    assert_eq!(
        fake.ranges(),
        [
            "bytes=0-1048575",
            "bytes=1048576-6291455",
            "bytes=6291456-14680063",
            "bytes=14680064-20971519",
        ]
    );
    let s = b.stats();
    assert_eq!((s.requests, s.bytes_fetched), (4, 20 * MIB));
}

#[test]
fn a_range_asked_ahead_that_comes_back_wrong_is_fetched_again() {
    // The server lies about the first answer for the range asked ahead from 6 MiB on (a
    // Content-Range that names other bytes): the reader still gets the right bytes,
    // through its own fetch.
    let d = data(8 * MIB as usize);
    let served = std::cell::Cell::new(0u32);
    let dd = d.clone();
    let fake = FakeTransport::serving(move |req| {
        let mut r = range_reply(&dd, req);
        if req.header("range") == Some("bytes=6291456-8388607") && served.get() == 0 {
            served.set(1);
            r.headers = vec![("Content-Range".into(), "bytes 0-4194303/8388608".into())];
        }
        Ok(r)
    });
    let b = blob(&fake, d.len() as u64, &RemoteOptions::default());
    let piece = 256 * 1024;
    for off in (0..d.len()).step_by(piece) {
        assert_eq!(
            b.pread(off as u64, piece as u32).unwrap(),
            &d[off..off + piece],
            "read at {off}"
        );
    }
    let s = b.stats();
    assert_eq!(s.retries, 1, "{s:?}");
    assert_eq!(s.bytes_fetched, 8 * MIB, "{s:?}");
}

#[test]
fn streaming_costs_at_most_one_round_trip_per_span() {
    // 64 MiB streamed: after the ramp-up every request carries 9 MiB, more than two
    // 4 MiB spans' worth of compressed data.
    let d = data(64 * MIB as usize);
    let fake = server(&d);
    let b = blob(&fake, d.len() as u64, &RemoteOptions::default());
    let piece = 256 * 1024;
    for off in (0..d.len()).step_by(piece) {
        b.pread(off as u64, piece as u32).unwrap();
    }
    assert!(b.stats().requests <= 16, "{:?}", b.stats());
}

#[test]
fn interleaved_streams_each_keep_readahead() {
    let d = data(40 * MIB as usize);
    let fake = server(&d);
    let b = blob(&fake, d.len() as u64, &RemoteOptions::default());
    let piece = 128 * 1024u64;
    for i in 0..80u64 {
        for base in [0, 20 * MIB] {
            let off = base + i * piece;
            assert_eq!(
                b.pread(off, piece as u32).unwrap(),
                &d[off as usize..(off + piece) as usize]
            );
        }
    }
    // 10 MiB per stream: 4 requests each (1, 2, 3, 5 chunks...), not 10.
    assert!(b.stats().requests <= 8, "{:?}", fake.ranges());
}

#[test]
fn random_reads_fetch_only_their_chunk() {
    let d = data(16 * MIB as usize);
    let fake = server(&d);
    let b = blob(&fake, d.len() as u64, &RemoteOptions::default());
    for off in [5 * MIB + 7, MIB + 100, 12 * MIB, 3 * MIB + 9] {
        b.pread(off, 4096).unwrap();
    }
    assert_eq!(
        fake.ranges(),
        [
            "bytes=5242880-6291455",
            "bytes=1048576-2097151",
            "bytes=12582912-13631487",
            "bytes=3145728-4194303",
        ]
    );
}

#[test]
fn bad_responses_are_retried_then_fail_with_the_cause() {
    let d = data(4000);
    let good = &d[0..1000];
    type Fault<'a> = Box<dyn Fn(&FakeTransport) + 'a>;
    let cases: Vec<(&str, Fault)> = vec![
        (
            "does not match",
            Box::new(|f| {
                f.push(resp(
                    206,
                    &[("Content-Range", "bytes 1-1000/4000")],
                    &d[1..1001],
                ))
            }),
        ),
        (
            "does not match",
            Box::new(|f| f.push(resp(206, &[("Content-Range", "bytes 0-999/5000")], good))),
        ),
        (
            "does not match",
            Box::new(|f| f.push(resp(206, &[("Content-Range", "bytes 0-999/*")], good))),
        ),
        (
            "exactly one Content-Range",
            Box::new(|f| f.push(resp(206, &[], good))),
        ),
        (
            "body is 1001 bytes",
            Box::new(|f| {
                f.push(resp(
                    206,
                    &[("Content-Range", "bytes 0-999/4000")],
                    &d[0..1001],
                ))
            }),
        ),
        (
            "999 bytes, 1000 were asked",
            Box::new(|f| {
                f.push(resp(
                    206,
                    &[("Content-Range", "bytes 0-999/4000")],
                    &d[0..999],
                ))
            }),
        ),
        (
            "Content-Encoding",
            Box::new(|f| {
                f.push(resp(
                    206,
                    &[
                        ("Content-Range", "bytes 0-999/4000"),
                        ("Content-Encoding", "gzip"),
                    ],
                    good,
                ))
            }),
        ),
        ("HTTP 503", Box::new(|f| f.push(resp(503, &[], b"")))),
        (
            "connection reset",
            Box::new(|f| f.push_err(Error::io("connection reset"))),
        ),
        (
            "unexpected HTTP 204",
            Box::new(|f| f.push(resp(204, &[], b""))),
        ),
    ];
    for (cause, push) in cases {
        let fake = FakeTransport::new();
        for _ in 0..5 {
            push(&fake);
        }
        let b = blob(&fake, 4000, &opts(1000));
        let err = b.pread(0, 10).unwrap_err();
        assert!(err.is(Kind::Io), "{err:?}");
        let msg = &err.message();
        assert!(
            msg.contains(BLOB_URL) && msg.contains("bytes 0-999") && msg.contains(cause),
            "{cause}: {msg}"
        );
        assert!(msg.contains("5 attempts"), "{msg}");
        assert_eq!(fake.slept(), [100, 200, 400, 800]);
        assert_eq!(b.stats().retries, 4);
        // One bad answer, then a good one: the read succeeds with the right bytes.
        let fake = server(&d);
        push(&fake);
        let b = blob(&fake, 4000, &opts(1000));
        assert_eq!(b.pread(0, 10).unwrap(), &d[..10], "{cause}");
        assert_eq!(b.stats().retries, 1);
    }
}

#[test]
fn client_errors_are_not_retried() {
    for (status, kind) in [
        (404, "not found"),
        (403, "HTTP 403"),
        (416, "outside the blob"),
    ] {
        let fake = FakeTransport::new();
        fake.push(resp(status, &[], b""));
        let b = blob(&fake, 4000, &opts(1000));
        let err = b.pread(0, 10).unwrap_err();
        assert!(err.message().contains(kind), "{err}");
        assert_eq!(b.stats().requests, 1);
    }
}

#[test]
fn ignored_range_on_a_small_blob_downloads_it_once() {
    let d = data(50_000);
    let dd = d.clone();
    let fake = FakeTransport::serving(move |_| Ok(resp(200, &[], &dd)));
    let net = Net::new(Box::new(fake.clone()), &opts(1000));
    let digest = Some(sha256_digest(&d));
    let b = RemoteBlob::new(
        net,
        Url::parse(BLOB_URL).unwrap(),
        50_000,
        None,
        digest,
        &opts(1000),
    )
    .unwrap();
    assert_eq!(b.pread(1000, 10).unwrap(), &d[1000..1010]);
    assert_eq!(fake.max_bodies(), [50_000]);
    for off in [0, 49_000, 20_000] {
        assert_eq!(
            b.pread(off, 1000).unwrap(),
            &d[off as usize..off as usize + 1000]
        );
    }
    assert_eq!(b.stats().requests, 1);
}

#[test]
fn ignored_range_checks_length_and_digest() {
    let d = data(5000);
    let fake = FakeTransport::new();
    fake.push(resp(200, &[], &d[..4999]));
    fake.push(resp(200, &[], &d));
    let b = blob(&fake, 5000, &opts(1000));
    assert_eq!(b.pread(0, 10).unwrap(), &d[..10]);
    assert_eq!(b.stats().retries, 1);
    let fake = FakeTransport::new();
    for _ in 0..5 {
        fake.push(resp(200, &[], &d));
    }
    let net = Net::new(Box::new(fake.clone()), &opts(1000));
    let wrong = Some(sha256_digest(b"other"));
    let b = RemoteBlob::new(
        net,
        Url::parse(BLOB_URL).unwrap(),
        5000,
        None,
        wrong,
        &opts(1000),
    )
    .unwrap();
    assert!(b
        .pread(0, 10)
        .unwrap_err()
        .message()
        .contains("does not match its digest"));
}

#[test]
fn ignored_range_on_a_large_blob_fails_clearly() {
    let d = data(5000);
    let dd = d.clone();
    let fake = FakeTransport::serving(move |_| Ok(resp(200, &[], &dd)));
    let o = RemoteOptions {
        memory_cap_for_full_body: 4000,
        ..opts(1000)
    };
    let b = blob(&fake, 5000, &o);
    let err = b.pread(0, 10).unwrap_err();
    assert!(err.message().contains("full-body limit"), "{err}");
    assert_eq!(
        fake.max_bodies(),
        [1000; 5],
        "never more than the range is read"
    );
    // A read of the whole blob may take the 200 as it is.
    let b = blob(&fake, 5000, &o);
    assert_eq!(b.pread(0, 5000).unwrap(), &d[..]);
}

#[test]
fn redirects_are_followed_remembered_and_refreshed() {
    let d = data(4000);
    let fake = FakeTransport::new();
    let challenge = (
        "WWW-Authenticate",
        "Bearer realm=\"https://auth.io/token\",service=\"reg.io\"",
    );
    fake.push(resp(401, &[challenge], b""));
    fake.push(resp(200, &[], br#"{"token":"tok"}"#));
    fake.push(resp(307, &[("Location", "https://s3.io/blob?sig=1")], b""));
    fake.push(range_reply(&d, &req_range(0, 999)));
    let o = opts(1000);
    let net = Net::new(Box::new(fake.clone()), &o);
    let auth = Auth::new(Url::parse("https://reg.io/").unwrap(), "r");
    let b = RemoteBlob::new(
        net,
        Url::parse(BLOB_URL).unwrap(),
        4000,
        Some(auth),
        None,
        &o,
    )
    .unwrap();
    assert_eq!(b.pread(0, 10).unwrap(), &d[..10]);
    let reqs = fake.requests();
    assert_eq!(reqs[2].header("authorization"), Some("Bearer tok"));
    assert_eq!(reqs[3].url, "https://s3.io/blob?sig=1");
    assert_eq!(reqs[3].header("range"), Some("bytes=0-999"));
    assert_eq!(reqs[3].header("authorization"), None);
    // The next read goes straight to storage.
    fake.clear_log();
    fake.push(range_reply(&d, &req_range(2000, 2999)));
    assert_eq!(b.pread(2000, 10).unwrap(), &d[2000..2010]);
    assert_eq!(fake.requests()[0].url, "https://s3.io/blob?sig=1");
    // The presigned URL expires: back to the registry, whose token expired too.
    fake.clear_log();
    fake.push(resp(403, &[], b"expired"));
    fake.push(resp(401, &[challenge], b""));
    fake.push(resp(200, &[], br#"{"token":"tok2"}"#));
    fake.push(resp(302, &[("Location", "/cdn/blob2")], b""));
    fake.push(range_reply(&d, &req_range(3000, 3999)));
    assert_eq!(b.pread(3000, 10).unwrap(), &d[3000..3010]);
    let urls: Vec<String> = fake.requests().iter().map(|r| r.url.clone()).collect();
    assert_eq!(
        urls,
        [
            "https://s3.io/blob?sig=1",
            BLOB_URL,
            "https://auth.io/token?service=reg.io&scope=repository%3Ar%3Apull",
            BLOB_URL,
            "https://reg.io/cdn/blob2",
        ]
    );
    // A same-origin redirect keeps the token.
    assert_eq!(
        fake.requests()[4].header("authorization"),
        Some("Bearer tok2")
    );
    let s = b.stats();
    assert_eq!((s.token_fetches, s.redirects, s.retries), (2, 2, 0));
}

#[test]
fn content_range_parsing() {
    let cr = |range, total| Some(ContentRange { range, total });
    assert_eq!(
        parse_content_range("bytes 0-0/12"),
        cr(Some((0, 0)), Some(12))
    );
    assert_eq!(parse_content_range("Bytes  5-9/*"), cr(Some((5, 9)), None));
    assert_eq!(parse_content_range("bytes */0"), cr(None, Some(0)));
    for bad in [
        "bytes 5-4/10",
        "bytes 1-2",
        "items 0-1/2",
        "bytes -1-2/3",
        "bytes 0-99999999999999999999999/1",
        "bytes a-b/c",
        "",
        // The last byte must lie before the total (fuzz/regressions/content_range).
        "bytes 0-10/5",
        "bytes 0-0/0",
        "bytes  18446744073709551614-18446744073709551615/18446744073709551615",
    ] {
        assert_eq!(parse_content_range(bad), None, "{bad}");
    }
}

#[test]
fn hinted_ranges_are_asked_for_as_runs_and_serve_the_reads() {
    // (The fake transport sends a started request when its answer is opened; over
    // wasi:http the hinted requests are all in flight at once.)
    let d = data(10 * MIB as usize);
    let fake = server(&d);
    let b = blob(&fake, d.len() as u64, &RemoteOptions::default());
    // Five spans, two of them in one chunk and two in adjacent chunks: three runs,
    // all started by the hint (MAX_HINTED is 4).
    b.will_need(&[
        (100, 200),
        (300, 400),
        (3 * MIB, 3 * MIB + 1),
        (4 * MIB + 10, 5 * MIB + 10),
        (8 * MIB, 8 * MIB + 512),
    ]);
    // The reads take their bytes from those answers: no request of their own.
    for (at, len) in [
        (100, 100),
        (3 * MIB, 1),
        (4 * MIB + 10, MIB),
        (8 * MIB, 512),
    ] {
        let (s, e) = (at as usize, (at + len) as usize);
        assert_eq!(b.pread(at, len as u32).unwrap(), &d[s..e]);
    }
    assert_eq!(
        fake.ranges(),
        [
            "bytes=0-1048575",
            "bytes=3145728-6291455",
            "bytes=8388608-9437183",
        ]
    );
    let s = b.stats();
    assert_eq!((s.requests, s.retries), (3, 0), "{s:?}");
}

#[test]
fn hints_wait_for_a_slot_and_are_not_repeated() {
    let d = data(12 * MIB as usize);
    let fake = server(&d);
    let b = blob(&fake, d.len() as u64, &RemoteOptions::default());
    // Six separate chunks: four start, two wait; each read collects its hint and the
    // slot it frees starts a waiting one, so no read fetches a chunk itself.
    let spans: Vec<(u64, u64)> = (0..6).map(|i| (2 * i * MIB, 2 * i * MIB + 1)).collect();
    b.will_need(&spans);
    for &(at, _) in &spans {
        assert_eq!(b.pread(at, 1).unwrap(), &d[at as usize..at as usize + 1]);
    }
    let want: Vec<String> = (0..6)
        .map(|i| format!("bytes={}-{}", 2 * i * MIB, (2 * i + 1) * MIB - 1))
        .collect();
    assert_eq!(fake.ranges(), want);
    assert_eq!(b.stats().retries, 0);
    // Cached chunks are not hinted again.
    b.will_need(&spans);
    assert_eq!(fake.ranges().len(), 6);
}
