//! The emulator kit: what every emulator shares, so that only the vendor's bodies and state
//! differ between them.
//!
//! One axum layer sits in front of an emulator's vendor handlers. For each request it
//! 1. records it in the [`RequestLog`] (method, path, query, whether it is a write; later the
//!    status it was answered with),
//! 2. waits while the [`Gate`] is paused,
//! 3. applies the first matching rule of the [`FaultPlan`] (a delay, then the rule's status with
//!    its headers and body, or the vendor's error body for that status), or else
//! 4. passes the request on to the emulated API (marked [`EndlessPages`] if a rule says so).
//!
//! A [`Kit`] also owns the HTTPS server (address, base URL, shutdown). [`Emulator`] pairs a kit
//! with a vendor's state; each emulator module is `Emulator<ItsState>` plus its vendor methods,
//! so `emulator.kit()` is one API for all of them.
//!
//! Layer order in an emulator's router, outermost first: an optional vendor layer that stamps
//! every answer (Auth0's and Cloudflare's rate-limit headers, injected faults included), the
//! kit's layer, then the vendor's admission layer (authentication, budgets) and handlers.

mod faults;
mod gate;
mod log;
mod request;
mod stream;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use axum::{
    Router,
    extract::{Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use url::Url;

pub use faults::{EndlessPages, Fault, FaultPlan, Times};
pub use gate::Gate;
pub use log::{LoggedRequest, RequestLog};
pub use request::{RequestMatch, is_write};

use super::{
    lock,
    tls::{ServerHandle, TestCa, spawn_tls},
};

/// The vendor's error answer for an injected status at a path (e.g. Auth0's JSON error, or
/// Graph's error object under `/v1.0`).
type ErrorBody = Arc<dyn Fn(StatusCode, &str) -> Response + Send + Sync>;

/// The log, fault plan and gate of one emulator, as its layer sees them.
#[derive(Clone)]
struct Controls {
    name: &'static str,
    log: RequestLog,
    faults: FaultPlan,
    gate: Gate,
    error_body: ErrorBody,
}

/// A kit whose server has not started yet: wrap the vendor's router with it, then serve.
pub struct KitBuilder {
    controls: Controls,
}

impl KitBuilder {
    /// `name` labels the emulator's debug logs; `error_body` renders injected statuses that
    /// carry no body of their own.
    pub fn new(name: &'static str, error_body: impl Fn(StatusCode, &str) -> Response + Send + Sync + 'static) -> Self {
        let controls = Controls {
            name,
            log: RequestLog::default(),
            faults: FaultPlan::default(),
            gate: Gate::default(),
            error_body: Arc::new(error_body),
        };
        Self { controls }
    }

    /// `router` behind the kit's layer.
    pub fn wrap(&self, router: Router) -> Router {
        router.layer(middleware::from_fn_with_state(self.controls.clone(), intercept))
    }

    /// Serves `app` (built with [`wrap`](Self::wrap)) over TLS on an ephemeral port of
    /// 127.0.0.1. Needs a Tokio runtime context.
    pub fn serve(self, app: Router, ca: &TestCa) -> std::io::Result<Kit> {
        let server = spawn_tls(app, ca)?;
        Ok(Kit { controls: self.controls, server: Arc::new(server) })
    }
}

/// A running emulator's shared mechanics; clones share them and the server, which stops with
/// the last clone.
#[derive(Clone)]
pub struct Kit {
    controls: Controls,
    server: Arc<ServerHandle>,
}

impl Kit {
    pub fn log(&self) -> &RequestLog {
        &self.controls.log
    }

    pub fn faults(&self) -> &FaultPlan {
        &self.controls.faults
    }

    pub fn gate(&self) -> &Gate {
        &self.controls.gate
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// `https://127.0.0.1:PORT/`.
    pub fn base_url(&self) -> Url {
        self.server.base_url()
    }

    /// Stops the server now (to test unreachable endpoints); the log stays readable.
    pub fn shutdown(&self) {
        self.server.shutdown();
    }
}

/// A running emulator: a vendor's state `S` behind a [`Kit`]. Clones share both.
pub struct Emulator<S> {
    state: Arc<Mutex<S>>,
    kit: Kit,
}

impl<S> Clone for Emulator<S> {
    fn clone(&self) -> Self {
        Self { state: self.state.clone(), kit: self.kit.clone() }
    }
}

impl<S> Emulator<S> {
    pub(crate) fn new(state: Arc<Mutex<S>>, kit: Kit) -> Self {
        Self { state, kit }
    }

    /// The request log, fault plan, gate and server, the same API for every emulator.
    pub fn kit(&self) -> &Kit {
        &self.kit
    }

    pub fn base_url(&self) -> Url {
        self.kit.base_url()
    }

    /// Stops the server now (to test unreachable endpoints); state stays readable.
    pub fn shutdown(&self) {
        self.kit.shutdown();
    }

    /// The next `n` requests of any kind get `status` (meant for 5xx) with the vendor's error
    /// body. Queued behind earlier faults that match first.
    pub fn fail_next(&self, n: usize, status: u16) {
        self.kit.faults().push(Fault::status(status).times(n));
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, S> {
        lock(&self.state)
    }
}

/// The vendor's admission check in front of its handlers (authentication, request budgets):
/// a request matching `scope` reaches them only if `check` lets it; otherwise `check`'s answer
/// is sent. It runs after the kit's layer, so injected faults come first, as at the real edge.
pub(crate) fn guard<S: Send + 'static>(router: Router, state: Arc<Mutex<S>>, scope: RequestMatch, check: Check<S>) -> Router {
    router.layer(middleware::from_fn_with_state(Guard { state, scope, check }, admit::<S>))
}

type Check<S> = fn(&mut S, &Request) -> Result<(), Response>;

struct Guard<S> {
    state: Arc<Mutex<S>>,
    scope: RequestMatch,
    check: Check<S>,
}

impl<S> Clone for Guard<S> {
    fn clone(&self) -> Self {
        Self { state: self.state.clone(), scope: self.scope.clone(), check: self.check }
    }
}

async fn admit<S: Send + 'static>(State(guard): State<Guard<S>>, request: Request, next: Next) -> Response {
    if guard.scope.matches(request.method(), request.uri().path())
        && let Err(denied) = (guard.check)(&mut lock(&guard.state), &request)
    {
        return denied;
    }
    next.run(request).await
}

async fn intercept(State(controls): State<Controls>, mut request: Request, next: Next) -> Response {
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    tracing::debug!(emulator = controls.name, %method, %path, "emulator request");
    let seq = controls.log.arrived(&method, &path, request.uri().query());
    controls.gate.pass().await;
    let plan = controls.faults.take(&method, &path);
    if plan.as_ref().is_some_and(|p| p.endless_pages) {
        request.extensions_mut().insert(EndlessPages);
    }
    let (delay, hold) = plan.as_ref().map_or((Duration::ZERO, Duration::ZERO), |p| (p.delay, p.hold_answer));
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let (response, faulted) = match plan.and_then(|p| p.answer) {
        Some(injected) => (controls.answer(injected, &path), true),
        None => (next.run(request).await, false),
    };
    controls.log.answered(seq, response.status(), faulted);
    if !hold.is_zero() {
        tokio::time::sleep(hold).await;
    }
    response
}

impl Controls {
    /// An injected answer: the rule's body or the vendor's, then the rule's headers on top.
    fn answer(&self, injected: faults::Injected, path: &str) -> Response {
        let status = injected.status;
        let mut response = match injected.body {
            Some(faults::FaultBody::Fixed(content_type, body)) => (status, [(header::CONTENT_TYPE, content_type)], body).into_response(),
            Some(faults::FaultBody::Streamed(body)) => {
                (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body.into_body()).into_response()
            }
            None => (self.error_body)(status, path),
        };
        *response.status_mut() = status;
        for (name, value) in &injected.headers {
            response.headers_mut().insert(name.clone(), value.clone());
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use axum::{
        body::{Body, Bytes},
        http::{HeaderValue, Method},
        routing::get,
    };
    use tower::ServiceExt as _;

    use super::*;

    fn builder() -> KitBuilder {
        KitBuilder::new("test", |status, path| (status, format!("vendor {} at {path}", status.as_u16())).into_response())
    }

    fn app(kit: &KitBuilder) -> Router {
        kit.wrap(Router::new().route("/api/items", get(|| async { "items" }).post(|| async { StatusCode::CREATED })))
    }

    async fn call(app: &Router, method: Method, uri: &str) -> (StatusCode, axum::http::HeaderMap, String) {
        let request = Request::builder().method(method).uri(uri).body(Body::empty()).unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        (parts.status, parts.headers, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn a_fault_answers_with_the_vendor_body_until_its_count_is_used_up() {
        let kit = builder();
        let app = app(&kit);
        kit.controls.faults.push(Fault::status(503).times(2).on(RequestMatch::any().under("/api")));
        for _ in 0..2 {
            let (status, _, body) = call(&app, Method::GET, "/api/items").await;
            assert_eq!((status, body.as_str()), (StatusCode::SERVICE_UNAVAILABLE, "vendor 503 at /api/items"));
        }
        assert_eq!(call(&app, Method::GET, "/api/items").await.2, "items");
        let log = &kit.controls.log;
        assert_eq!(log.count_where(|r| r.faulted), 2);
        assert_eq!(log.count_where(|r| r.status == Some(StatusCode::SERVICE_UNAVAILABLE)), 2);
        assert_eq!(log.succeeded(&RequestMatch::any().path("/api/items")), 1);
    }

    #[tokio::test]
    async fn a_fault_carries_retry_after_headers_and_its_own_body() {
        let kit = builder();
        let app = app(&kit);
        let fault = Fault::status(429)
            .on(RequestMatch::any().method(Method::POST))
            .retry_after(7)
            .header(header::HeaderName::from_static("x-ratelimit-reset"), HeaderValue::from(1_700_000_000))
            .body_text("echo s3cret");
        kit.controls.faults.push(fault);
        assert_eq!(call(&app, Method::GET, "/api/items").await.0, StatusCode::OK, "only POST matches");
        let (status, headers, body) = call(&app, Method::POST, "/api/items").await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(headers[header::RETRY_AFTER], "7");
        assert_eq!(headers["x-ratelimit-reset"], "1700000000");
        assert!(headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/plain"));
        assert_eq!(body, "echo s3cret");
        assert_eq!(call(&app, Method::POST, "/api/items").await.0, StatusCode::CREATED);
    }

    #[tokio::test]
    async fn a_delay_holds_the_answer_and_a_stall_then_lets_the_api_answer() {
        let kit = builder();
        let app = app(&kit);
        let delay = Duration::from_millis(200);
        kit.controls.faults.push(Fault::status(500).delay(delay));
        kit.controls.faults.push(Fault::stall(delay));
        let started = Instant::now();
        assert_eq!(call(&app, Method::GET, "/api/items").await.0, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(started.elapsed() >= delay);
        let started = Instant::now();
        assert_eq!(call(&app, Method::GET, "/api/items").await.2, "items");
        assert!(started.elapsed() >= delay);
        assert_eq!(kit.controls.log.count_where(|r| r.faulted), 1, "a stalled request is answered by the API");
    }

    #[tokio::test]
    async fn a_lost_answer_is_acted_on_then_held_back() {
        let kit = builder();
        let app = app(&kit);
        let hold = Duration::from_millis(300);
        kit.controls.faults.push(Fault::lost_answer(hold).on(RequestMatch::any().method(Method::POST)));
        let (app2, log) = (app.clone(), kit.controls.log.clone());
        let call = tokio::spawn(async move { call(&app2, Method::POST, "/api/items").await.0 });
        tokio::time::sleep(hold / 3).await;
        let logged = log.entries();
        assert_eq!(logged[0].status, Some(StatusCode::CREATED), "the API acted before the answer was held back");
        assert!(!call.is_finished(), "the client is still waiting");
        assert_eq!(call.await.unwrap(), StatusCode::CREATED);
        assert_eq!(log.entries().len(), 1);
    }

    #[tokio::test]
    async fn a_hostile_fault_sends_any_retry_after_and_a_huge_body_in_chunks() {
        use futures::StreamExt as _;

        let kit = builder();
        let app = app(&kit);
        kit.controls.faults.push(Fault::status(429).retry_after(u64::MAX));
        let (status, headers, _) = call(&app, Method::GET, "/api/items").await;
        assert_eq!((status, &headers[header::RETRY_AFTER]), (StatusCode::TOO_MANY_REQUESTS, &HeaderValue::from(u64::MAX)));
        assert_eq!(headers[header::RETRY_AFTER], "18446744073709551615");

        let total = 3 * 1024 * 1024;
        kit.controls.faults.push(Fault::huge_body(total));
        let request = Request::builder().uri("/api/items").body(Body::empty()).unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(!response.headers().contains_key(header::CONTENT_LENGTH), "its size is only learnt by reading");
        let mut frames = response.into_body().into_data_stream();
        let (mut received, mut largest) = (0u64, 0usize);
        while let Some(frame) = frames.next().await {
            let frame = frame.unwrap();
            (received, largest) = (received + frame.len() as u64, largest.max(frame.len()));
        }
        assert_eq!((received, largest), (total, 64 * 1024));
        assert_eq!(kit.controls.log.count_where(|r| r.faulted), 2);
    }

    #[tokio::test]
    async fn a_drip_answers_at_once_then_one_chunk_per_interval() {
        use futures::StreamExt as _;

        let kit = builder();
        let app = app(&kit);
        let interval = Duration::from_millis(100);
        kit.controls.faults.push(Fault::drip(4, interval));
        let started = Instant::now();
        let request = Request::builder().uri("/api/items").body(Body::empty()).unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert!(started.elapsed() < interval, "the head is not held back");
        let mut frames = response.into_body().into_data_stream();
        for _ in 0..3 {
            assert_eq!(frames.next().await.unwrap().unwrap(), Bytes::from_static(b"    "));
        }
        assert!(started.elapsed() >= interval * 2);
    }

    #[tokio::test]
    async fn endless_pages_marks_the_request_for_the_emulated_api() {
        let kit = builder();
        let paging = |endless: Option<axum::Extension<EndlessPages>>| async move { if endless.is_some() { "endless" } else { "finite" } };
        let app = kit.wrap(Router::new().route("/api/items", get(paging)));
        kit.controls.faults.push(Fault::endless_pages().times(2));
        assert_eq!(call(&app, Method::GET, "/api/items").await.2, "endless");
        assert_eq!(call(&app, Method::GET, "/api/items").await.2, "endless");
        assert_eq!(call(&app, Method::GET, "/api/items").await.2, "finite");
        assert_eq!(kit.controls.log.count_where(|r| r.faulted), 0, "the emulated API answers a marked request");
    }

    #[tokio::test]
    async fn the_log_sees_unrouted_requests_and_queries() {
        let kit = builder();
        let app = app(&kit);
        assert_eq!(call(&app, Method::DELETE, "/elsewhere?x=1").await.0, StatusCode::NOT_FOUND);
        call(&app, Method::POST, "/api/items").await;
        let log = &kit.controls.log;
        assert_eq!(log.requests(), [("DELETE".to_owned(), "/elsewhere?x=1".to_owned()), ("POST".to_owned(), "/api/items".to_owned())]);
        assert_eq!(log.count(&RequestMatch::any().writes()), 2);
        assert_eq!(log.succeeded(&RequestMatch::any().writes()), 1);
        log.clear();
        assert!(log.entries().is_empty());
    }

    #[tokio::test]
    async fn a_paused_emulator_holds_a_logged_request_in_flight() {
        let kit = builder();
        let app = app(&kit);
        let gate = kit.controls.gate.clone();
        gate.pause();
        let in_flight = tokio::spawn({
            let app = app.clone();
            async move { call(&app, Method::POST, "/api/items").await.0 }
        });
        tokio::time::timeout(Duration::from_secs(5), gate.wait_held(1)).await.expect("held at the gate");
        let logged = kit.controls.log.entries();
        assert_eq!((logged.len(), logged[0].status), (1, None), "logged on arrival, not yet answered");
        gate.resume();
        assert_eq!(in_flight.await.unwrap(), StatusCode::CREATED);
        assert_eq!(kit.controls.log.entries()[0].status, Some(StatusCode::CREATED));
    }

    #[tokio::test]
    async fn the_handle_serves_https_until_shut_down() {
        use idp_bridge::upstream::{EndpointOverrides, Upstream};

        let upstream_overrides = |kit: &Kit| {
            let mut overrides = EndpointOverrides::default();
            overrides.insert("api.example.com", kit.base_url());
            overrides
        };
        crate::tls::install_crypto_provider();
        let ca = TestCa::new();
        let ca_file = tempfile::NamedTempFile::new().unwrap();
        ca.write_pem(ca_file.path()).unwrap();
        let builder = builder();
        let app = app(&builder);
        let kit = builder.serve(app, &ca).unwrap();
        assert_eq!(kit.base_url().as_str(), format!("https://{}/", kit.addr()));
        let upstream = Upstream::new(upstream_overrides(&kit), Some(ca_file.path()), Duration::from_secs(5)).unwrap();
        let answer = upstream.send(upstream.request(Method::GET, "api.example.com", "/api/items")).await.unwrap();
        assert_eq!((answer.status, answer.body.text().into_owned()), (StatusCode::OK, "items".to_owned()));
        assert_eq!(kit.log().count(&RequestMatch::any().path("/api/items")), 1);

        kit.shutdown();
        tokio::task::yield_now().await;
        let fresh = Upstream::new(upstream_overrides(&kit), Some(ca_file.path()), Duration::from_secs(5)).unwrap();
        assert!(fresh.send(fresh.request(Method::GET, "api.example.com", "/api/items")).await.is_err());
        assert_eq!(kit.log().entries().len(), 1, "the log outlives the server");
    }

    /// Every emulator sits behind the kit: an injected fault answers before the vendor's own
    /// authentication, with the rule's body and headers, and the log and the gate see every
    /// request.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_emulator_is_fronted_by_the_kit() {
        use idp_bridge::upstream::{EndpointOverrides, Upstream};

        use crate::{
            auth0::Auth0Emulator, azure::AzureEmulator, cloudflare::CloudflareEmulator, logto::LogtoEmulator, unified::UnifiedEmulator,
        };

        crate::tls::install_crypto_provider();
        let ca = TestCa::new();
        let ca_file = tempfile::NamedTempFile::new().unwrap();
        ca.write_pem(ca_file.path()).unwrap();
        // A kit and an API path that needs credentials, per emulator.
        let emulators = [
            ("azure", AzureEmulator::start(&ca).unwrap().kit().clone(), "/v1.0/applications/x"),
            ("auth0", Auth0Emulator::start(&ca, "acme.auth0.com").unwrap().kit().clone(), "/api/v2/connections"),
            ("cloudflare", CloudflareEmulator::start(&ca).unwrap().kit().clone(), "/client/v4/accounts/a/access/identity_providers"),
            ("logto", LogtoEmulator::start(&ca, "https://default.logto.app/api").unwrap().kit().clone(), "/api/connectors"),
            ("unified", UnifiedEmulator::start(&ca).unwrap().kit().clone(), "/unified/connection"),
        ];
        let mut overrides = EndpointOverrides::default();
        for (name, kit, _) in &emulators {
            overrides.insert(&format!("{name}.test"), kit.base_url());
        }
        let upstream = Upstream::new(overrides, Some(ca_file.path()), Duration::from_secs(5)).unwrap();
        for (name, kit, path) in emulators {
            let host = format!("{name}.test");
            let get =
                |upstream: Upstream, host: String| async move { upstream.send(upstream.request(Method::GET, &host, path)).await.unwrap() };
            kit.faults()
                .push(Fault::status(503).on(RequestMatch::any().method(Method::GET).path(path)).retry_after(4).body_text("echo s3cret"));
            let faulted = get(upstream.clone(), host.clone()).await;
            assert_eq!(faulted.status, StatusCode::SERVICE_UNAVAILABLE, "{name}");
            assert_eq!(faulted.headers[header::RETRY_AFTER], "4", "{name}");
            assert_eq!(faulted.body.text(), "echo s3cret", "{name}");
            assert_eq!(get(upstream.clone(), host.clone()).await.status, StatusCode::UNAUTHORIZED, "{name}: the vendor's own answer");

            kit.gate().pause();
            let held = tokio::spawn(get(upstream.clone(), host.clone()));
            tokio::time::timeout(Duration::from_secs(5), kit.gate().wait_held(1)).await.unwrap_or_else(|_| panic!("{name}: held"));
            kit.gate().resume();
            assert_eq!(held.await.unwrap().status, StatusCode::UNAUTHORIZED, "{name}");

            let log = kit.log();
            assert_eq!(log.count(&RequestMatch::any().path(path)), 3, "{name}");
            assert_eq!(log.count_where(|r| r.faulted), 1, "{name}");
            assert!(log.entries().iter().all(|r| r.status.is_some()), "{name}: every request answered");
        }
    }
}
