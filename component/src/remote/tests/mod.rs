//! Tests of the network client against scripted servers: shared helpers here, the
//! tests by subject in the submodules.

mod auth;
mod blob;
mod manifest;
mod oci;
mod publish;

use std::rc::Rc;

use crate::remote::blob::RemoteBlob;
use crate::remote::fake::{resp, FakeTransport};
use crate::remote::net::Net;
use crate::remote::transport::{HttpRequest, HttpResponse, Method};
use crate::remote::url::Url;
use crate::remote::RemoteOptions;

pub(super) const BLOB_URL: &str = "https://reg.io/v2/r/blobs/sha256:abc";
pub(super) const MIB: u64 = 1 << 20;

pub(super) fn data(n: usize) -> Rc<Vec<u8>> {
    Rc::new(
        (0..n)
            .map(|i| (i as u64 * 7 + i as u64 / 251) as u8)
            .collect(),
    )
}

/// Serve `data` with correct 206 answers (and 416 past the end); no Range: 200.
pub(super) fn range_reply(data: &[u8], req: &HttpRequest) -> HttpResponse {
    let size = data.len() as u64;
    let Some(range) = req.header("range") else {
        return resp(200, &[], data);
    };
    let (a, b) = range
        .strip_prefix("bytes=")
        .and_then(|r| r.split_once('-'))
        .map(|(a, b)| (a.parse::<u64>().unwrap(), b.parse::<u64>().unwrap()))
        .expect("well-formed range");
    if a >= size {
        return resp(416, &[("Content-Range", &format!("bytes */{size}"))], b"");
    }
    let b = b.min(size - 1);
    resp(
        206,
        &[("Content-Range", &format!("bytes {a}-{b}/{size}"))],
        &data[a as usize..=b as usize],
    )
}

pub(super) fn server(data: &Rc<Vec<u8>>) -> FakeTransport {
    let d = data.clone();
    FakeTransport::serving(move |req| Ok(range_reply(&d, req)))
}

pub(super) fn opts(chunk: u64) -> RemoteOptions {
    RemoteOptions {
        chunk_size: chunk,
        ..RemoteOptions::default()
    }
}

pub(super) fn blob(fake: &FakeTransport, size: u64, o: &RemoteOptions) -> RemoteBlob {
    let net = Net::new(Box::new(fake.clone()), o);
    RemoteBlob::new(net, Url::parse(BLOB_URL).unwrap(), size, None, None, o).unwrap()
}

pub(super) fn req_range(a: u64, b: u64) -> HttpRequest {
    HttpRequest {
        method: Method::Get,
        url: String::new(),
        headers: vec![("Range".into(), format!("bytes={a}-{b}"))],
        body: Vec::new(),
    }
}
