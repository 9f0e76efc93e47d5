//! Test transports: a script of canned replies, with an optional handler for whatever
//! the script does not cover (a small fake server). Every request is logged.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use super::transport::{body_too_large, HttpRequest, HttpResponse, Transport};
use crate::error::{Error, Result};

type Handler = Box<dyn Fn(&HttpRequest) -> Result<HttpResponse>>;

#[derive(Default)]
struct Inner {
    script: VecDeque<Result<HttpResponse>>,
    handler: Option<Handler>,
    log: Vec<(HttpRequest, u64)>,
    slept: Vec<u64>,
}

/// Clones share the script and the log, so a test keeps one while the code under test
/// owns another.
#[derive(Clone, Default)]
pub struct FakeTransport(Rc<RefCell<Inner>>);

pub fn resp(status: u16, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
    HttpResponse {
        status,
        headers: headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
        body: body.to_vec(),
    }
}

impl FakeTransport {
    pub fn new() -> Self {
        Self::default()
    }

    /// A transport that answers every request with `handler`.
    pub fn serving(handler: impl Fn(&HttpRequest) -> Result<HttpResponse> + 'static) -> Self {
        let fake = Self::new();
        fake.0.borrow_mut().handler = Some(Box::new(handler));
        fake
    }

    pub fn push(&self, r: HttpResponse) {
        self.0.borrow_mut().script.push_back(Ok(r));
    }

    pub fn push_err(&self, e: Error) {
        self.0.borrow_mut().script.push_back(Err(e));
    }

    pub fn requests(&self) -> Vec<HttpRequest> {
        self.0.borrow().log.iter().map(|(r, _)| r.clone()).collect()
    }

    pub fn max_bodies(&self) -> Vec<u64> {
        self.0.borrow().log.iter().map(|(_, m)| *m).collect()
    }

    /// `Range` headers of the logged requests ("-" when absent).
    pub fn ranges(&self) -> Vec<String> {
        self.requests()
            .iter()
            .map(|r| r.header("range").unwrap_or("-").to_string())
            .collect()
    }

    pub fn clear_log(&self) {
        self.0.borrow_mut().log.clear();
    }

    pub fn slept(&self) -> Vec<u64> {
        self.0.borrow().slept.clone()
    }

    pub fn remaining(&self) -> usize {
        self.0.borrow().script.len()
    }
}

impl Transport for FakeTransport {
    fn send(&self, req: &HttpRequest, max_body: u64) -> Result<HttpResponse> {
        let next = {
            let mut inner = self.0.borrow_mut();
            inner.log.push((req.clone(), max_body));
            inner.script.pop_front()
        };
        let reply = match next {
            Some(reply) => reply,
            None => {
                let inner = self.0.borrow();
                let handler = inner
                    .handler
                    .as_ref()
                    .unwrap_or_else(|| panic!("unexpected request: {req:?}"));
                handler(req)
            }
        };
        let r = reply?;
        if r.body.len() as u64 > max_body {
            return Err(body_too_large(&req.url, r.status, max_body));
        }
        Ok(r)
    }

    fn sleep_ms(&self, ms: u64) {
        self.0.borrow_mut().slept.push(ms);
    }
}
