//! Injected faults: a list of rules, each answering (or delaying) the requests it matches a given
//! number of times. The kit's layer consults the plan before any vendor handler runs.
//!
//! Besides the usual faults (a status, a delay) the plan holds hostile ones, for proving that a
//! broken or malicious endpoint cannot stop the operator: any header value (a `Retry-After` of
//! `u64::MAX`), a body too large to hold ([`Fault::huge_body`]), a body that drips slower than
//! any deadline ([`Fault::drip`]) and list endpoints that never end ([`Fault::endless_pages`]).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    body::Bytes,
    http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header},
};

use super::{request::RequestMatch, stream::Streamed};
use crate::lock;

/// How many requests a rule applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Times {
    Count(usize),
    Forever,
}

/// One rule: which requests, how many of them, and what happens to them.
#[derive(Clone, Debug)]
pub struct Fault {
    on: RequestMatch,
    times: Times,
    /// `None`: the request goes on to the emulated API (after the delay).
    status: Option<StatusCode>,
    delay: Duration,
    headers: HeaderMap,
    body: Option<FaultBody>,
    /// Marks the request with [`EndlessPages`] before the emulated API sees it.
    endless_pages: bool,
    /// How long the emulated API's answer is held back after it has acted on the request.
    hold_answer: Duration,
}

/// A rule's own answer body, in place of the vendor's.
#[derive(Clone, Debug)]
pub(super) enum FaultBody {
    /// Held in memory, with its content type.
    Fixed(HeaderValue, Bytes),
    /// Generated chunk by chunk as it is sent, never held whole.
    Streamed(Streamed),
}

/// The mark [`Fault::endless_pages`] puts on a request (an axum extension): the emulator's list
/// endpoints answer it with a full page of filler and the promise of another page, however far
/// the client pages.
#[derive(Clone, Copy, Debug)]
pub struct EndlessPages;

impl Fault {
    /// Answers the next matching request with `status`. Without [`body`](Self::body_text), the
    /// emulator supplies its vendor's error body for that status.
    pub fn status(status: u16) -> Self {
        let status = StatusCode::from_u16(status).expect("valid HTTP status");
        Self { status: Some(status), ..Self::stall(Duration::ZERO) }
    }

    /// Holds the next matching request for `delay`, then lets the emulated API answer it.
    pub fn stall(delay: Duration) -> Self {
        Self {
            on: RequestMatch::any(),
            times: Times::Count(1),
            status: None,
            delay,
            headers: HeaderMap::new(),
            body: None,
            endless_pages: false,
            hold_answer: Duration::ZERO,
        }
    }

    /// Answers 200 with a JSON-typed body of `total` bytes (spaces), streamed in 64 KiB chunks
    /// without `Content-Length`, so a client only learns its size by reading it. Add the header
    /// with [`header`](Self::header) to announce the size up front.
    pub fn huge_body(total: u64) -> Self {
        Self::streamed(Streamed { total, chunk: 64 * 1024, interval: Duration::ZERO })
    }

    /// Answers 200 with a body that never ends: `chunk` bytes at once, then `chunk` more every
    /// `interval`, to outlast a client's deadline.
    pub fn drip(chunk: usize, interval: Duration) -> Self {
        Self::streamed(Streamed { total: u64::MAX, chunk, interval })
    }

    /// Lets matching requests through to the emulated API marked [`EndlessPages`]: its list
    /// endpoints then always claim a full page and a next one. Usually with [`forever`](Self::forever).
    pub fn endless_pages() -> Self {
        Self { endless_pages: true, ..Self::stall(Duration::ZERO) }
    }

    /// Lets the next matching request through to the emulated API, which acts on it (a create
    /// is created), then holds the answer for `hold`: longer than the client's timeout, the
    /// answer is lost to a client that gave up.
    pub fn lost_answer(hold: Duration) -> Self {
        Self { hold_answer: hold, ..Self::stall(Duration::ZERO) }
    }

    fn streamed(body: Streamed) -> Self {
        Self { body: Some(FaultBody::Streamed(body)), ..Self::status(200) }
    }

    /// Only requests matching `pattern` (default: every request).
    pub fn on(mut self, pattern: RequestMatch) -> Self {
        self.on = pattern;
        self
    }

    /// The next `n` matching requests (default: one).
    pub fn times(mut self, n: usize) -> Self {
        self.times = Times::Count(n);
        self
    }

    /// Every matching request until the plan is cleared.
    pub fn forever(mut self) -> Self {
        self.times = Times::Forever;
        self
    }

    /// Waits this long before answering.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Adds `Retry-After: <secs>` to the answer.
    pub fn retry_after(self, secs: u64) -> Self {
        self.header(header::RETRY_AFTER, HeaderValue::from(secs))
    }

    /// Adds (or replaces) a header of the answer.
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// Answers with this plain-text body instead of the vendor's, e.g. one that echoes a secret.
    pub fn body_text(mut self, body: &str) -> Self {
        self.body = Some(FaultBody::Fixed(HeaderValue::from_static("text/plain; charset=utf-8"), Bytes::from(body.to_owned())));
        self
    }

    /// Answers with this JSON body instead of the vendor's.
    pub fn body_json(mut self, body: &serde_json::Value) -> Self {
        self.body = Some(FaultBody::Fixed(HeaderValue::from_static("application/json"), Bytes::from(body.to_string())));
        self
    }
}

/// What the layer does to one request a rule matched: wait, then answer it or let it through
/// (marked [`EndlessPages`] if the rule says so).
pub(super) struct Planned {
    pub delay: Duration,
    pub answer: Option<Injected>,
    pub endless_pages: bool,
    pub hold_answer: Duration,
}

/// An answer a rule makes in place of the emulated API.
pub(super) struct Injected {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// `None`: the vendor's error body for the status.
    pub body: Option<FaultBody>,
}

/// The shared fault plan of one emulator; clones share it.
#[derive(Clone, Default)]
pub struct FaultPlan {
    rules: Arc<Mutex<Vec<Fault>>>,
}

impl FaultPlan {
    /// Appends a rule. A request is handled by the first rule that matches it and has uses left.
    pub fn push(&self, fault: Fault) {
        lock(&self.rules).push(fault);
    }

    /// Drops every rule, including `forever` ones.
    pub fn clear(&self) {
        lock(&self.rules).clear();
    }

    /// Rules with uses left.
    pub fn pending(&self) -> usize {
        lock(&self.rules).iter().filter(|f| f.times != Times::Count(0)).count()
    }

    /// Uses up one application of the first rule matching the request, if any.
    pub(super) fn take(&self, method: &Method, path: &str) -> Option<Planned> {
        let mut rules = lock(&self.rules);
        rules.retain(|f| f.times != Times::Count(0));
        let index = rules.iter().position(|f| f.on.matches(method, path))?;
        let rule = &mut rules[index];
        let answer = rule.status.map(|status| Injected { status, headers: rule.headers.clone(), body: rule.body.clone() });
        let planned = Planned { delay: rule.delay, answer, endless_pages: rule.endless_pages, hold_answer: rule.hold_answer };
        if let Times::Count(n) = &mut rule.times {
            *n -= 1;
            if *n == 0 {
                rules.remove(index);
            }
        }
        Some(planned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of(plan: &FaultPlan, method: Method, path: &str) -> Option<u16> {
        plan.take(&method, path).and_then(|p| p.answer).map(|a| a.status.as_u16())
    }

    #[test]
    fn a_count_exhausts_and_forever_does_not() {
        let plan = FaultPlan::default();
        plan.push(Fault::status(503).times(2));
        assert_eq!(plan.pending(), 1);
        assert_eq!(status_of(&plan, Method::GET, "/a"), Some(503));
        assert_eq!(status_of(&plan, Method::GET, "/b"), Some(503));
        assert_eq!(status_of(&plan, Method::GET, "/c"), None);
        assert_eq!(plan.pending(), 0);

        plan.push(Fault::status(500).times(0));
        assert_eq!(status_of(&plan, Method::GET, "/a"), None, "zero times is never");

        plan.push(Fault::status(502).forever());
        for _ in 0..100 {
            assert_eq!(status_of(&plan, Method::GET, "/a"), Some(502));
        }
        plan.clear();
        assert_eq!(status_of(&plan, Method::GET, "/a"), None);
    }

    #[test]
    fn the_first_matching_rule_wins_and_others_keep_their_uses() {
        let plan = FaultPlan::default();
        plan.push(Fault::status(429).on(RequestMatch::any().under("/api")).retry_after(30));
        plan.push(Fault::status(503));
        assert_eq!(status_of(&plan, Method::POST, "/oauth/token"), Some(503), "the API rule does not match the token endpoint");
        let limited = plan.take(&Method::GET, "/api/x").unwrap().answer.unwrap();
        assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(limited.headers[header::RETRY_AFTER], "30");
        assert_eq!(plan.pending(), 0);
    }

    #[test]
    fn a_stall_delays_without_answering() {
        let plan = FaultPlan::default();
        plan.push(Fault::stall(Duration::from_millis(250)).on(RequestMatch::any().method(Method::DELETE)));
        assert!(plan.take(&Method::GET, "/x").is_none());
        let stalled = plan.take(&Method::DELETE, "/x").unwrap();
        assert!(stalled.answer.is_none());
        assert_eq!(stalled.delay, Duration::from_millis(250));
        let body = Fault::status(500).body_json(&serde_json::json!({"echo": "s3cret"}));
        assert!(matches!(body.body, Some(FaultBody::Fixed(_, bytes)) if bytes == Bytes::from_static(br#"{"echo":"s3cret"}"#)));
    }

    #[test]
    fn endless_pages_lets_through_marked_and_hostile_bodies_answer_200() {
        let plan = FaultPlan::default();
        plan.push(Fault::endless_pages().on(RequestMatch::any().method(Method::GET)).forever());
        for _ in 0..3 {
            let planned = plan.take(&Method::GET, "/list").unwrap();
            assert!(planned.answer.is_none() && planned.endless_pages);
        }
        assert!(plan.take(&Method::POST, "/list").is_none());
        plan.clear();
        plan.push(Fault::huge_body(1 << 40));
        plan.push(Fault::drip(8, Duration::from_secs(1)));
        for expected in [
            Streamed { total: 1 << 40, chunk: 64 * 1024, interval: Duration::ZERO },
            Streamed { total: u64::MAX, chunk: 8, interval: Duration::from_secs(1) },
        ] {
            let planned = plan.take(&Method::GET, "/x").unwrap();
            let answer = planned.answer.unwrap();
            assert!(!planned.endless_pages);
            assert_eq!(answer.status, StatusCode::OK);
            assert!(matches!(answer.body, Some(FaultBody::Streamed(s)) if s == expected));
        }
    }
}
