//! Every request an emulator received, in order: what tests inspect instead of per-emulator
//! counters. Bodies and headers are never recorded (they carry secrets and tokens).

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use axum::http::{Method, StatusCode};

use super::request::{RequestMatch, is_write};
use crate::lock;

/// One request as received, and how it was answered once it has been.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedRequest {
    pub method: Method,
    pub path: String,
    /// The raw query string, without `?`.
    pub query: Option<String>,
    /// POST, PUT, PATCH or DELETE.
    pub write: bool,
    /// `None` while the request is in flight (held at the gate, delayed, or being handled).
    pub status: Option<StatusCode>,
    /// Answered by an injected fault rather than by the emulated API.
    pub faulted: bool,
    /// When it arrived, before the gate and any fault: what latency measurements compare.
    pub arrived_at: Instant,
    seq: u64,
}

impl LoggedRequest {
    /// The path, with `?query` when there is one.
    pub fn path_and_query(&self) -> String {
        match &self.query {
            Some(query) => format!("{}?{query}", self.path),
            None => self.path.clone(),
        }
    }

    /// Answered with a 2xx status.
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| s.is_success())
    }

    pub fn matches(&self, pattern: &RequestMatch) -> bool {
        pattern.matches(&self.method, &self.path)
    }
}

/// The shared request log of one emulator; clones share it.
#[derive(Clone, Default)]
pub struct RequestLog {
    inner: Arc<Mutex<Entries>>,
}

#[derive(Default)]
struct Entries {
    requests: Vec<LoggedRequest>,
    next_seq: u64,
}

impl RequestLog {
    /// Every request since the start or the last [`clear`](Self::clear), in arrival order.
    pub fn entries(&self) -> Vec<LoggedRequest> {
        lock(&self.inner).requests.clone()
    }

    /// The requests that arrived at or after `since`, in arrival order (a cheap tail for
    /// measurements that poll a long log).
    pub fn entries_since(&self, since: Instant) -> Vec<LoggedRequest> {
        let entries = lock(&self.inner);
        let first = entries.requests.partition_point(|r| r.arrived_at < since);
        entries.requests[first..].to_vec()
    }

    /// Requests matching `pattern`, however they were answered.
    pub fn count(&self, pattern: &RequestMatch) -> usize {
        self.count_where(|r| r.matches(pattern))
    }

    /// Requests matching `pattern` that were answered with a 2xx status.
    pub fn succeeded(&self, pattern: &RequestMatch) -> usize {
        self.count_where(|r| r.succeeded() && r.matches(pattern))
    }

    pub fn count_where(&self, predicate: impl Fn(&LoggedRequest) -> bool) -> usize {
        lock(&self.inner).requests.iter().filter(|r| predicate(r)).count()
    }

    /// Every request as (method, path with query), the shape the emulators' `requests()` return.
    pub fn requests(&self) -> Vec<(String, String)> {
        lock(&self.inner).requests.iter().map(|r| (r.method.to_string(), r.path_and_query())).collect()
    }

    /// Forgets every request so far; counts start again from zero.
    pub fn clear(&self) {
        lock(&self.inner).requests.clear();
    }

    /// Records an arriving request; returns the ticket to [`answered`](Self::answered) it with.
    pub(super) fn arrived(&self, method: &Method, path: &str, query: Option<&str>) -> u64 {
        let mut entries = lock(&self.inner);
        let seq = entries.next_seq;
        entries.next_seq += 1;
        let request = LoggedRequest {
            method: method.clone(),
            path: path.to_owned(),
            query: query.map(str::to_owned),
            write: is_write(method),
            status: None,
            faulted: false,
            arrived_at: Instant::now(),
            seq,
        };
        entries.requests.push(request);
        seq
    }

    /// Records the answer to a request (unless the log was cleared since it arrived).
    pub(super) fn answered(&self, seq: u64, status: StatusCode, faulted: bool) {
        let mut entries = lock(&self.inner);
        if let Some(request) = entries.requests.iter_mut().rev().find(|r| r.seq == seq) {
            request.status = Some(status);
            request.faulted = faulted;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_pattern_and_outcome_and_clears() {
        let log = RequestLog::default();
        let token = log.arrived(&Method::POST, "/oauth/token", None);
        let list = log.arrived(&Method::GET, "/api/v2/connections", Some("name=x"));
        let create = log.arrived(&Method::POST, "/api/v2/connections", None);
        log.answered(token, StatusCode::OK, false);
        log.answered(list, StatusCode::OK, false);
        log.answered(create, StatusCode::SERVICE_UNAVAILABLE, true);

        assert_eq!(log.count(&RequestMatch::any()), 3);
        assert_eq!(log.count(&RequestMatch::any().method(Method::POST).path("/oauth/token")), 1);
        assert_eq!(log.count(&RequestMatch::any().under("/api/v2").writes()), 1);
        assert_eq!(log.succeeded(&RequestMatch::any().under("/api/v2").writes()), 0, "the create failed");
        assert_eq!(log.succeeded(&RequestMatch::any().under("/api/v2")), 1);
        assert_eq!(log.count_where(|r| r.faulted), 1);
        assert_eq!(
            log.requests(),
            [("POST", "/oauth/token"), ("GET", "/api/v2/connections?name=x"), ("POST", "/api/v2/connections")]
                .map(|(m, p)| (m.to_owned(), p.to_owned()))
        );
        let entries = log.entries();
        assert!(entries[2].write && !entries[1].write);
        assert!(entries[0].arrived_at <= entries[1].arrived_at && entries[1].arrived_at <= entries[2].arrived_at, "in arrival order");
        assert_eq!(log.entries_since(entries[2].arrived_at).last(), Some(&entries[2]));
        assert_eq!(log.entries_since(entries[0].arrived_at).len(), 3);
        assert!(log.entries_since(Instant::now()).is_empty());
        assert_eq!(entries[1].query.as_deref(), Some("name=x"));

        let in_flight = log.arrived(&Method::DELETE, "/api/v2/connections/1", None);
        log.clear();
        assert_eq!(log.count(&RequestMatch::any()), 0);
        log.answered(in_flight, StatusCode::OK, false);
        assert!(log.entries().is_empty(), "an answer to a forgotten request is not recorded");
        let after = log.arrived(&Method::GET, "/x", None);
        assert_eq!(log.entries()[0].status, None, "in flight");
        log.answered(after, StatusCode::NOT_FOUND, false);
        assert_eq!(log.entries()[0].status, Some(StatusCode::NOT_FOUND));
    }
}
