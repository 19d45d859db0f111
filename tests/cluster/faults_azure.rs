//! The operator under Azure faults, on the real control plane: a throttled app sees nothing
//! before its Retry-After ends, whatever re-triggers its reconcile; a Graph outage with fresh
//! request ids in every answer writes status a bounded number of times; an outage keeps the last
//! known expiry (status, gauge, no second Warning); and Graph is asked again within every
//! `refreshInterval`. Invariants on the emulator's request log and the watch of the connection,
//! not tight timings.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;
use idp_bridge::crd::{AzureAdConnection, conditions::SECRET_EXPIRING};
use idp_bridge_devenv::kit::{Fault, RequestMatch};
use jiff::{SignedDuration, Timestamp};
use kube::runtime::{WatchStreamExt, watcher};
use reqwest::Method;
use serde_json::json;

use crate::common::e2e::{CLIENT_ID, Env, TENANT_ID, condition, condition_is};

/// Every status the connection `name` has had, in order, as the watch saw it: the status writes.
struct StatusWrites {
    seen: Arc<Mutex<Vec<serde_json::Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl StatusWrites {
    fn watch(env: &Env, name: &str) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let stream = watcher(env.connections(), config).default_backoff().applied_objects();
        let task = tokio::spawn({
            let seen = seen.clone();
            async move {
                let mut stream = std::pin::pin!(stream);
                while let Some(Ok(conn)) = stream.next().await {
                    let conn: AzureAdConnection = conn;
                    let status = serde_json::to_value(&conn.status).unwrap();
                    let mut seen = seen.lock().unwrap();
                    if seen.last() != Some(&status) {
                        seen.push(status);
                    }
                }
            }
        });
        Self { seen, task }
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl Drop for StatusWrites {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn graph_reads() -> RequestMatch {
    RequestMatch::any().method(Method::GET).under("/v1.0")
}

fn token_requests() -> RequestMatch {
    RequestMatch::any().method(Method::POST).path_where(|p| p.ends_with("/oauth2/v2.0/token"))
}

/// Waits (up to `limit`) until `check` holds, polling every 100 ms.
async fn eventually(limit: Duration, what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_app_sees_no_request_before_retry_after_whatever_triggers_it() {
    let mut env = Env::new("fault-throttle").await;
    let value = env.canary("throttled");
    env.upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, &value, Timestamp::now() + SignedDuration::from_hours(24 * 90));
    let log = env.upstreams.azure.kit().log().clone();
    env.upstreams.azure.kit().faults().push(Fault::status(429).on(token_requests()).retry_after(20));
    env.put_secret("web", &[("client-secret", &value)], &[]).await;
    env.connect("contoso", "web", json!({})).await;
    env.wait_condition("contoso", "CredentialsValid", "Unknown", "AzureThrottled").await;
    let throttled_at = log.entries().iter().find(|r| r.status.is_some_and(|s| s.as_u16() == 429)).expect("the 429").arrived_at;

    // Everything that re-triggers a reconcile: annotations on the connection, Secret events.
    for i in 0..5 {
        env.poke("contoso").await;
        env.put_secret("web", &[("client-secret", &value)], &[("e2e/touch", &i.to_string())]).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let conn = env.wait_ready("contoso").await;
    let early: Vec<_> = log
        .entries_since(throttled_at)
        .into_iter()
        .skip(1)
        .filter(|r| r.arrived_at.duration_since(throttled_at) < Duration::from_secs(20))
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(early.is_empty(), "requests to Azure during the 20 s Retry-After: {early:?}");
    assert!(throttled_at.elapsed() >= Duration::from_secs(20), "Ready came only after the block");
    assert!(condition_is(&conn, "CredentialsValid", "True", "Valid"));
    env.assert_no_canary_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graph_outage_with_fresh_request_ids_writes_status_a_bounded_number_of_times() {
    let mut env = Env::new("fault-graph-ids").await;
    env.upstreams.azure.set_graph_read_all(TENANT_ID, CLIENT_ID, true);
    let value = env.canary("graph-down");
    env.upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, &value, Timestamp::now() + SignedDuration::from_hours(24 * 90));
    let log = env.upstreams.azure.kit().log().clone();
    // Each answer is Graph's error object with a new request-id and date.
    env.upstreams.azure.kit().faults().push(Fault::status(503).on(graph_reads()).forever());
    env.put_secret("web", &[("client-secret", &value)], &[]).await;
    let writes = StatusWrites::watch(&env, "contoso");
    env.connect("contoso", "web", json!({"expiry": {"source": "Graph"}})).await;
    env.wait_ready("contoso").await;
    eventually(Duration::from_secs(20), "the first Graph read", || log.count(&graph_reads()) >= 1).await;
    // The first reconcile's own status write may still be on its way.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let settled = writes.count();

    // Ten more reconciles, each asking Graph again and getting a fresh request id.
    let reads = log.count(&graph_reads());
    for _ in 0..10 {
        env.poke("contoso").await;
        let before = log.count(&graph_reads());
        eventually(Duration::from_secs(20), "the poke's Graph read", || log.count(&graph_reads()) > before).await;
    }
    assert!(log.count(&graph_reads()) >= reads + 10);
    // Its own status writes do not trigger the connection again: Graph is left alone.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let quiet = log.count(&graph_reads());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(log.count(&graph_reads()), quiet, "no reconcile loop");

    let extra = writes.count() - settled;
    assert!(extra <= 1, "{extra} status writes for ten failures of the same cause: {:#?}", writes.seen.lock().unwrap().last());
    let conn = env.connections().get("contoso").await.unwrap();
    let expiring = condition(&conn, SECRET_EXPIRING);
    assert_eq!(expiring.reason, "ExpiryUnknown");
    assert!(!expiring.message.contains("request-id"), "{}", expiring.message);
    env.assert_no_canary_leaks().await;
}

/// How many times these Events happened: a repeated Event is one object with a count.
fn occurrences(events: &[k8s_openapi::api::core::v1::Event]) -> i32 {
    events.iter().map(|e| e.series.as_ref().and_then(|s| s.count).unwrap_or(0).max(e.count.unwrap_or(0)).max(1)).sum()
}

/// The expiry gauge's value for the connection, from `/metrics`.
async fn expiry_gauge(env: &Env) -> Option<f64> {
    let metrics = env.http_get("/metrics").await.1;
    metrics
        .lines()
        .find(|l| l.starts_with("idpbridge_client_secret_expiry_timestamp_seconds{") && l.contains("name=\"contoso\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_keeps_the_last_known_expiry_and_its_alerts_steady() {
    let mut env = Env::new("fault-keep-expiry").await;
    env.upstreams.azure.set_graph_read_all(TENANT_ID, CLIENT_ID, true);
    let value = env.canary("kept");
    let in_ten_days = Timestamp::now() + SignedDuration::from_hours(240);
    env.upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, &value, in_ten_days);
    env.put_secret("web", &[("client-secret", &value)], &[]).await;
    env.connect("contoso", "web", json!({"validation": {"refreshInterval": "1m"}})).await;
    let conn = env.wait_condition("contoso", SECRET_EXPIRING, "True", "SecretExpiring").await;
    let known = conn.status.unwrap().secret.unwrap();
    assert_eq!(known.expires_at.as_ref().unwrap().0.as_second(), in_ten_days.as_second());
    let gauge = expiry_gauge(&env).await.expect("the expiry gauge");
    assert_eq!(occurrences(&env.wait_events("contoso", "SecretExpiring", 1).await), 1);

    // Graph goes down, then the login service too; each outage outlasts a refresh.
    let log = env.upstreams.azure.kit().log().clone();
    for (outage, pattern) in [("Graph", graph_reads()), ("login", token_requests())] {
        env.upstreams.azure.kit().faults().push(Fault::status(503).on(pattern.clone()).forever());
        let failed = || log.count_where(|r| r.faulted && r.matches(&pattern));
        let before = failed();
        eventually(Duration::from_secs(150), &format!("a refresh during the {outage} outage"), || failed() > before).await;
        // The reconcile that met the outage has finished once its status is written.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let conn = env.connections().get("contoso").await.unwrap();
        let secret = conn.status.as_ref().and_then(|s| s.secret.clone()).expect("secret status");
        assert_eq!(secret.expires_at, known.expires_at, "{outage} outage: the last known expiry stays");
        assert_eq!(secret.expiry_source.as_deref(), Some("Graph"), "{outage} outage");
        assert_eq!(secret.key_id, known.key_id, "{outage} outage");
        assert!(condition_is(&conn, SECRET_EXPIRING, "True", "SecretExpiring"), "{outage} outage: {:?}", condition(&conn, SECRET_EXPIRING));
        assert_eq!(expiry_gauge(&env).await, Some(gauge), "{outage} outage: the gauge stays");
        assert_eq!(occurrences(&env.events_with_reason("contoso", "SecretExpiring").await), 1, "{outage} outage: no second Warning");
    }
    let conn = env.connections().get("contoso").await.unwrap();
    assert!(condition_is(&conn, "Ready", "False", "AzureUnreachable"), "status says why");

    // Azure returns: the date is read again, and the note about the outage goes.
    env.upstreams.azure.kit().faults().clear();
    env.poke("contoso").await;
    let conn = env.wait_ready("contoso").await;
    assert!(!condition(&conn, SECRET_EXPIRING).message.contains("cannot be asked"), "{}", condition(&conn, SECRET_EXPIRING).message);
    env.assert_no_canary_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_is_asked_again_within_every_refresh_interval() {
    let mut env = Env::new("fault-refresh").await;
    let apps = ["a1b2c3d4-0000-4000-8000-000000000001", "a1b2c3d4-0000-4000-8000-000000000002", "a1b2c3d4-0000-4000-8000-000000000003"];
    let mut values = Vec::new();
    for (i, app) in apps.iter().enumerate() {
        env.upstreams.azure.add_app(TENANT_ID, app);
        crate::common::e2e::register_for_auth0(&env.upstreams.azure, app);
        env.upstreams.azure.set_graph_read_all(TENANT_ID, app, true);
        let value = env.canary(&format!("refresh-{i}"));
        env.upstreams.azure.add_secret(TENANT_ID, app, &value, Timestamp::now() + SignedDuration::from_hours(24 * 90));
        let secret = format!("web-{i}");
        env.put_secret(&secret, &[("client-secret", &value)], &[]).await;
        values.push(value);
        let name = format!("refresh-{i}");
        env.connect(&name, &secret, json!({"azure": {"clientId": app}, "validation": {"refreshInterval": "1m"}})).await;
    }
    for i in 0..apps.len() {
        env.wait_ready(&format!("refresh-{i}")).await;
    }
    let log = env.upstreams.azure.kit().log().clone();
    let started = Instant::now();
    // Reconciles in between (a Secret event) are served from the cache and must not push the
    // next real read back.
    tokio::time::sleep(Duration::from_secs(20)).await;
    env.put_secret("web-0", &[("client-secret", &values[0])], &[("e2e/touch", "1")]).await;
    tokio::time::sleep(Duration::from_secs(150)).await;
    let interval = Duration::from_secs(60);
    // The reads of each app, from the start; a second of slack absorbs a loaded machine.
    for app in apps {
        let reads: Vec<Instant> = log
            .entries()
            .into_iter()
            .filter(|r| r.method == Method::GET && r.path.contains(&format!("appId='{app}'")))
            .map(|r| r.arrived_at)
            .collect();
        assert!(reads.iter().filter(|at| **at >= started).count() >= 2, "{app}: Graph was asked again: {} reads", reads.len());
        let gaps: Vec<Duration> = reads.windows(2).map(|w| w[1].duration_since(w[0])).collect();
        assert!(gaps.iter().all(|gap| *gap <= interval + Duration::from_secs(1)), "{app}: gaps between Graph reads {gaps:?}");
    }
}
