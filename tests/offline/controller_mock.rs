//! Controller tests against kube's mock API server (tower-test): the finalizer and status paths,
//! without a cluster. Every request the controller makes is recorded and answered by a small
//! fake, so the tests assert exactly which writes happen.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use http::{Request, Response, StatusCode};
use idp_bridge::{
    config::Config,
    controller::{Context, Lookups, reconcile},
    crd::AzureAdConnection,
    secret::Fingerprinter,
    upstream::{EndpointOverrides, Upstream},
};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Client, Resource,
    client::Body,
    core::PartialObjectMeta,
    runtime::{
        controller::Action,
        reflector::{self, Store},
        watcher,
    },
};
use serde_json::{Value, json};

type Log = Arc<Mutex<Vec<(String, String, Value)>>>;

/// A fake API server: `answer(method, path) -> (status, body)`; every request is logged.
fn mock_client(answer: impl Fn(&str, &str, &Value) -> (StatusCode, Value) + Send + 'static) -> (Client, Log) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let log: Log = Arc::default();
    let recorded = log.clone();
    tokio::spawn(async move {
        while let Some((request, respond)) = handle.next_request().await {
            let method = request.method().to_string();
            let path = request.uri().path().to_owned();
            let bytes = request.into_body().collect_bytes().await.unwrap();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let (status, reply) = answer(&method, &path, &body);
            recorded.lock().unwrap().push((method, path, body));
            respond.send_response(Response::builder().status(status).body(Body::from(serde_json::to_vec(&reply).unwrap())).unwrap());
        }
    });
    (Client::new(service, "default"), log)
}

fn not_found(what: &str) -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": format!("{what} not found"), "reason": "NotFound", "code": 404}),
    )
}

fn context(client: Client) -> Arc<Context> {
    idp_bridge::install_crypto_provider();
    let config = Config {
        namespace: "idp-bridge".into(),
        cluster_name: "default".into(),
        fingerprint_key_secret: "key".into(),
        endpoint_overrides: EndpointOverrides::default(),
        broker_hosts: Default::default(),
        ca_bundle: None,
        http_timeout: Duration::from_secs(1),
        reconcile_timeout: Duration::from_secs(30),
        deletion_timeout: Duration::from_secs(600),
        concurrency: 1,
        instance: "test".into(),
        watch_namespaces: vec![],
        http_address: None,
        leader_election: None,
    };
    let upstream = Upstream::new(EndpointOverrides::default(), None, Duration::from_secs(1)).unwrap();
    Arc::new(Context::new(client, Arc::new(config), upstream, Fingerprinter::new(vec![7; 32]), Default::default()))
}

/// An empty cache that has listed.
fn listed<K: Resource<DynamicType = ()> + Clone>() -> Store<K> {
    let (store, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    writer.apply_watcher_event(&watcher::Event::InitDone);
    store
}

/// Caches that hold nothing but the Secret metadata in `secrets`.
fn lookups(ctx: &Context, secrets: Store<PartialObjectMeta<Secret>>) -> Arc<Lookups> {
    Arc::new(Lookups::new(ctx.client.clone(), listed(), listed(), listed(), vec![(None, secrets)], ctx.secrets.clone()))
}

/// Reconciles `conn` with caches that hold nothing: every read goes to the (mock) API server.
async fn reconcile(conn: AzureAdConnection, ctx: Arc<Context>) -> Result<Action, idp_bridge::controller::Error> {
    let lookups = lookups(&ctx, listed());
    reconcile::reconcile(Arc::new(conn), ctx, lookups).await
}

fn connection(finalizers: &[&str], deletion_policy: &str, deleting: bool) -> AzureAdConnection {
    let mut obj = json!({
        "apiVersion": "idpbridge.io/v1alpha1",
        "kind": "AzureAdConnection",
        "metadata": {"name": "web", "namespace": "app", "uid": "uid-1", "generation": 1, "finalizers": finalizers, "resourceVersion": "1"},
        "spec": {
            "brokerRef": {"name": "auth0"},
            "azure": {"tenant": "contoso.onmicrosoft.com", "clientId": "11111111-2222-3333-4444-555555555555", "clientSecretRef": {"name": "web-secret"}},
            "auth0": {"name": "contoso"},
            "deletionPolicy": deletion_policy,
        }
    });
    if deleting {
        obj["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    }
    serde_json::from_value(obj).unwrap()
}

fn echo(obj: &AzureAdConnection) -> Value {
    serde_json::to_value(obj).unwrap()
}

fn writes(log: &Log) -> Vec<(String, String, Value)> {
    log.lock().unwrap().iter().filter(|(m, _, _)| m != "GET").cloned().collect()
}

#[tokio::test]
async fn first_reconcile_adds_the_finalizer_and_nothing_else() {
    let conn = connection(&[], "Orphan", false);
    let mut with_finalizer = echo(&conn);
    with_finalizer["metadata"]["finalizers"] = json!(["idpbridge.io/cleanup"]);
    let (client, log) = mock_client(move |_, _, _| (StatusCode::OK, with_finalizer.clone()));
    let action = reconcile(conn, context(client)).await.unwrap();
    assert_eq!(action, Action::await_change());
    let writes = writes(&log);
    assert_eq!(writes.len(), 1, "{writes:?}");
    let (method, path, body) = &writes[0];
    assert_eq!((method.as_str(), path.as_str()), ("PATCH", "/apis/idpbridge.io/v1alpha1/namespaces/app/azureadconnections/web"));
    assert!(body.to_string().contains("idpbridge.io/cleanup"));
}

/// A connection whose Secret is missing: one status write with the reason, one Warning event.
async fn reconcile_missing_secret(conn: AzureAdConnection) -> (Log, Option<Value>) {
    let object = echo(&conn);
    let (client, log) = mock_client(move |method, path, body| match (method, path) {
        ("GET", p) if p.ends_with("/secrets/web-secret") => not_found("secrets \"web-secret\""),
        ("PATCH", p) if p.ends_with("/status") => {
            let mut updated = object.clone();
            updated["status"] = body["status"].clone();
            (StatusCode::OK, updated)
        }
        ("POST", p) if p.contains("/events") => (StatusCode::CREATED, body.clone()),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, json!({})),
    });
    let action = reconcile(conn, context(client)).await.unwrap();
    assert!(action != Action::await_change(), "a missing Secret is re-checked at the refresh interval");
    let status = writes(&log).into_iter().find(|(_, p, _)| p.ends_with("/status")).map(|(_, _, b)| b["status"].clone());
    (log, status)
}

#[tokio::test]
async fn missing_secret_writes_status_once_with_a_specific_reason() {
    let (log, status) = reconcile_missing_secret(connection(&["idpbridge.io/cleanup"], "Orphan", false)).await;
    let status = status.expect("status written");
    let ready = status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap();
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "SecretNotFound");
    assert!(ready["message"].as_str().unwrap().contains("app/web-secret"));
    assert_eq!(status["observedGeneration"], 1);
    let events: Vec<_> = writes(&log).into_iter().filter(|(_, p, _)| p.contains("/events")).collect();
    assert!(events.iter().any(|(_, _, e)| e["reason"] == "SecretNotFound" && e["type"] == "Warning"), "{events:?}");
    assert!(!writes(&log).iter().any(|(_, p, _)| p.contains("identitybrokers")), "the broker is never touched");

    // Reconciling again with that status in place writes nothing at all.
    let mut conn = connection(&["idpbridge.io/cleanup"], "Orphan", false);
    conn.status = Some(serde_json::from_value(status).unwrap());
    let (log, second) = reconcile_missing_secret(conn).await;
    assert!(second.is_none(), "unchanged status is not written");
    assert!(writes(&log).is_empty(), "no events either: {:?}", writes(&log));
}

#[tokio::test]
async fn orphan_deletion_releases_without_touching_the_broker() {
    let conn = connection(&["idpbridge.io/cleanup"], "Orphan", true);
    let mut released = echo(&conn);
    released["metadata"]["finalizers"] = json!([]);
    let (client, log) = mock_client(move |_, _, _| (StatusCode::OK, released.clone()));
    reconcile(conn, context(client)).await.unwrap();
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 1, "{log:?}");
    let (method, path, patch) = &log[0];
    assert_eq!((method.as_str(), path.as_str()), ("PATCH", "/apis/idpbridge.io/v1alpha1/namespaces/app/azureadconnections/web"));
    assert!(patch.as_array().unwrap().iter().any(|op| op["op"] == "remove" && op["path"] == "/metadata/finalizers/0"), "{patch}");
}

#[tokio::test]
async fn delete_policy_with_a_vanished_broker_does_not_block_deletion() {
    let conn = connection(&["idpbridge.io/cleanup"], "Delete", true);
    let mut released = echo(&conn);
    released["metadata"]["finalizers"] = json!([]);
    let (client, log) = mock_client(move |method, path, body| match (method, path) {
        ("GET", p) if p.contains("/identitybrokers/") => not_found("identitybrokers \"auth0\""),
        ("POST", p) if p.contains("/events") => (StatusCode::CREATED, body.clone()),
        _ => (StatusCode::OK, released.clone()),
    });
    reconcile(conn, context(client)).await.unwrap();
    let writes = writes(&log);
    assert!(writes.iter().any(|(_, p, e)| p.contains("/events") && e["reason"] == "Orphaned" && e["type"] == "Warning"), "{writes:?}");
    assert!(writes.iter().any(|(m, p, _)| m == "PATCH" && p.ends_with("/azureadconnections/web")), "finalizer removed");
}

/// The metadata a Secret watch holds for `web-secret` at `version`.
fn secret_meta(version: &str) -> PartialObjectMeta<Secret> {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "web-secret", "namespace": "app", "resourceVersion": version},
    }))
    .unwrap()
}

/// The Secret's data is read once per resourceVersion the Secret watch shows, not at every
/// reconcile: a steady state makes no Secret GET.
#[tokio::test]
async fn the_client_secret_is_read_once_per_resource_version() {
    let conn = connection(&["idpbridge.io/cleanup"], "Orphan", false);
    let object = echo(&conn);
    let (client, log) = mock_client(move |method, path, body| match (method, path) {
        // A secret ID where the value belongs: a problem found without asking Azure.
        ("GET", p) if p.ends_with("/secrets/web-secret") => (
            StatusCode::OK,
            json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "web-secret", "namespace": "app", "resourceVersion": "5"},
                "data": {"client-secret": "NmY1ZTJhMzktMGE0Mi00YTRlLTlhNTUtNGYyYTNjZmUyZjBi"},
            }),
        ),
        ("PATCH", p) if p.ends_with("/status") => {
            let mut updated = object.clone();
            updated["status"] = body["status"].clone();
            (StatusCode::OK, updated)
        }
        ("POST", p) if p.contains("/events") => (StatusCode::CREATED, body.clone()),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, json!({})),
    });
    let ctx = context(client);
    let (secrets, mut watch) = reflector::store::<PartialObjectMeta<Secret>>();
    watch.apply_watcher_event(&watcher::Event::Init);
    watch.apply_watcher_event(&watcher::Event::InitApply(secret_meta("5")));
    watch.apply_watcher_event(&watcher::Event::InitDone);
    let lookups = lookups(&ctx, secrets);
    let secret_reads = || log.lock().unwrap().iter().filter(|(m, p, _)| m == "GET" && p.ends_with("/secrets/web-secret")).count();
    for _ in 0..3 {
        reconcile::reconcile(Arc::new(conn.clone()), ctx.clone(), lookups.clone()).await.unwrap();
    }
    assert_eq!(secret_reads(), 1, "three reconciles of an unchanged Secret");
    let status = writes(&log).into_iter().find(|(_, p, _)| p.ends_with("/status")).map(|(_, _, b)| b["status"].clone()).unwrap();
    assert!(status.to_string().contains("SecretIdInsteadOfValue"), "the cached data is what the reconcile judged: {status}");

    watch.apply_watcher_event(&watcher::Event::Apply(secret_meta("6")));
    reconcile::reconcile(Arc::new(conn), ctx, lookups).await.unwrap();
    assert_eq!(secret_reads(), 2, "a new resourceVersion is read again");
}
