//! The controller: watches connections, brokers and (metadata of) Secrets, and reconciles each
//! connection when it or anything it references changes.

pub mod brokers;
pub mod error;
pub mod observation;
pub mod reconcile;
pub mod resolve;
pub mod status;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::{StreamExt, future};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client, Resource, ResourceExt,
    core::PartialObjectMeta,
    runtime::{
        Controller, WatchStreamExt,
        controller::{self, Action},
        events::{Recorder, Reporter},
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use tracing::{error, info, warn};

pub use self::error::Error;
use crate::{
    azure::AzureClient,
    broker::{BrokerRegistry, ScimCredentials},
    config::Config,
    crd::{
        ClusterIdentityBroker, IdentityBroker,
        connection::{AzureAdConnection, BrokerRefKind},
    },
    metrics::Metrics,
    secret::Fingerprinter,
    upstream::Upstream,
};

/// Everything a reconcile needs, built once at start-up.
pub struct Context {
    pub client: Client,
    pub metrics: Arc<Metrics>,
    /// True once the controllers' caches have synced (the `/readyz` answer).
    pub caches_synced: Arc<AtomicBool>,
    pub azure: AzureClient,
    pub brokers: BrokerRegistry,
    pub fingerprinter: Fingerprinter,
    pub recorder: Recorder,
    pub config: Arc<Config>,
    /// Consecutive transient failures per object UID, for exponential backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// SCIM credentials a broker returned (only once) that are not yet stored in their Secret,
    /// per connection UID: kept until a write succeeds.
    pending_scim: Mutex<HashMap<String, ScimCredentials>>,
}

impl Context {
    pub fn new(client: Client, config: Arc<Config>, upstream: Upstream, fingerprinter: Fingerprinter, metrics: Arc<Metrics>) -> Self {
        let upstream = upstream.with_metrics(metrics.clone());
        let recorder = Recorder::new(client.clone(), Reporter { controller: "idp-bridge".into(), instance: Some(config.instance.clone()) });
        Self {
            metrics,
            caches_synced: Arc::new(AtomicBool::new(false)),
            azure: AzureClient::new(upstream.clone()),
            brokers: BrokerRegistry::new(upstream),
            client,
            fingerprinter,
            recorder,
            config,
            failures: Mutex::new(HashMap::new()),
            pending_scim: Mutex::new(HashMap::new()),
        }
    }

    /// The next backoff for a failing object: 2 s doubling to 5 min, with ±20% jitter.
    pub fn next_backoff<K: Resource>(&self, obj: &K) -> Duration {
        let uid = obj.meta().uid.clone().unwrap_or_default();
        let mut failures = self.failures.lock().expect("backoff lock");
        let count = failures.entry(uid).or_insert(0);
        *count = count.saturating_add(1);
        backoff(*count, rand::random::<f64>())
    }

    pub fn reset_backoff<K: Resource>(&self, obj: &K) {
        if let Some(uid) = obj.meta().uid.as_deref() {
            self.failures.lock().expect("backoff lock").remove(uid);
        }
    }

    fn forget<K: Resource>(&self, obj: &K) {
        self.reset_backoff(obj);
        if let Some(uid) = obj.meta().uid.as_deref() {
            self.metrics.forget_connection(uid);
        }
    }
}

/// Exponential backoff: `attempt` 1 is about 2 s, capped at 300 s; `unit` in [0, 1) adds jitter.
pub fn backoff(attempt: u32, unit: f64) -> Duration {
    let base = 2f64 * 2f64.powi(attempt.saturating_sub(1).min(16) as i32);
    let capped = base.min(300.0);
    Duration::from_secs_f64(capped * (0.8 + 0.4 * unit))
}

fn error_policy(conn: Arc<AzureAdConnection>, error: &Error, ctx: Arc<Context>) -> Action {
    let delay = ctx.next_backoff(conn.as_ref());
    warn!(error = %error, kind = error.label(), retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Connections in `namespace` whose broker reference matches.
fn connections_using_broker(
    store: &Store<AzureAdConnection>,
    kind: BrokerRefKind,
    namespace: Option<&str>,
    name: &str,
) -> Vec<ObjectRef<AzureAdConnection>> {
    store
        .state()
        .iter()
        .filter(|c| {
            c.spec.broker_ref.kind == kind
                && c.spec.broker_ref.name == name
                && (namespace.is_none() || c.namespace().as_deref() == namespace)
        })
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect()
}

/// Connections that read a changed Secret as their client secret.
fn connections_reading_secret(
    secret: &PartialObjectMeta<Secret>,
    connections: &Store<AzureAdConnection>,
) -> Vec<ObjectRef<AzureAdConnection>> {
    let namespace = secret.namespace();
    let name = secret.name_any();
    connections
        .state()
        .iter()
        .filter(|c| c.namespace() == namespace && c.spec.azure.client_secret_ref.name == name)
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect()
}

/// Connections whose broker authenticates with a changed Secret.
fn connections_using_broker_secret(
    secret: &PartialObjectMeta<Secret>,
    connections: &Store<AzureAdConnection>,
    brokers: &Store<IdentityBroker>,
    cluster_brokers: &Store<ClusterIdentityBroker>,
    operator_namespace: &str,
) -> Vec<ObjectRef<AzureAdConnection>> {
    let namespace = secret.namespace().unwrap_or_default();
    let name = secret.name_any();
    let mut refs = Vec::new();
    for broker in brokers.state().iter().filter(|b| b.namespace().as_deref() == Some(namespace.as_str())) {
        if broker.spec.provider().is_some_and(|p| p.credentials_secret() == name) {
            refs.extend(connections_using_broker(connections, BrokerRefKind::IdentityBroker, Some(&namespace), &broker.name_any()));
        }
    }
    if namespace == operator_namespace {
        for broker in cluster_brokers.state().iter() {
            if broker.spec.provider().is_some_and(|p| p.credentials_secret() == name) {
                refs.extend(connections_using_broker(connections, BrokerRefKind::ClusterIdentityBroker, None, &broker.name_any()));
            }
        }
    }
    refs
}

/// A reflector store for `K`, kept current by the returned future.
fn reflect<K>(api: Api<K>) -> (Store<K>, impl std::future::Future<Output = ()>)
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default().any_semantic()).default_backoff().reflect(writer).applied_objects();
    (reader, stream.for_each(|_| future::ready(())))
}

/// Resolves once `store` has received its first complete list. Polled again every second: a
/// store's readiness signal wakes only its latest waiter. (The connection controller's own store
/// is left to the controller for that reason; the broker stores listed here are the operator's.)
async fn ready_poll<K: Resource<DynamicType = ()> + Clone + 'static>(store: Store<K>) {
    while tokio::time::timeout(Duration::from_secs(1), store.wait_until_ready()).await.is_err() {}
}

/// `Api::namespaced` for a namespace, `Api::all` for the whole cluster.
pub fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

type Shutdown = futures::future::Shared<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + Sync>>>;

/// The connection controller for one namespace (or all of them).
async fn run_connections(ctx: Arc<Context>, namespace: Option<String>, cluster_brokers: Store<ClusterIdentityBroker>, shutdown: Shutdown) {
    let client = ctx.client.clone();
    let ns = namespace.as_deref();
    let (broker_store, broker_reflector) = reflect(scoped::<IdentityBroker>(&client, ns));
    let brokers_synced = broker_store.clone();
    let connections = Controller::new(scoped::<AzureAdConnection>(&client, ns), watcher::Config::default().any_semantic());
    let store = connections.store();
    let (s1, s2, s3) = (store.clone(), store.clone(), store.clone());
    let operator_namespace = ctx.config.namespace.clone();
    let metrics = ctx.metrics.clone();
    let secret_mapper = move |secret: PartialObjectMeta<Secret>| {
        let direct = connections_reading_secret(&secret, &s3);
        for conn in &direct {
            metrics.secret_changed(format!("{}/{}", conn.namespace.as_deref().unwrap_or_default(), conn.name));
        }
        let mut refs = connections_using_broker_secret(&secret, &s3, &broker_store, &cluster_brokers, &operator_namespace);
        refs.extend(direct);
        refs
    };
    let mut secrets = vec![scoped::<PartialObjectMeta<Secret>>(&client, ns)];
    if ns.is_some_and(|ns| ns != ctx.config.namespace) {
        // ClusterIdentityBroker credentials live in the operator's namespace.
        secrets.push(Api::namespaced(client.clone(), &ctx.config.namespace));
    }
    let mut controller = connections
        .watches(scoped::<IdentityBroker>(&client, ns), watcher::Config::default(), move |b| {
            connections_using_broker(&s1, BrokerRefKind::IdentityBroker, b.namespace().as_deref(), &b.name_any())
        })
        .watches(Api::<ClusterIdentityBroker>::all(client.clone()), watcher::Config::default(), move |b| {
            connections_using_broker(&s2, BrokerRefKind::ClusterIdentityBroker, None, &b.name_any())
        });
    for api in secrets {
        let mapper = secret_mapper.clone();
        controller = controller.watches(api, watcher::Config::default(), mapper);
    }
    let synced = {
        let (brokers, flag) = (brokers_synced, ctx.caches_synced.clone());
        async move {
            ready_poll(brokers).await;
            flag.store(true, Ordering::SeqCst);
        }
    };
    tokio::spawn(synced);
    let controller = controller
        .with_config(controller::Config::default().concurrency(ctx.config.concurrency))
        .graceful_shutdown_on(shutdown.clone())
        .run(reconcile::reconcile, error_policy, ctx.clone())
        .for_each(|result| {
            if let Err(e) = result
                && !matches!(e, controller::Error::ReconcilerFailed(..))
            {
                warn!(error = %e, "controller");
            }
            future::ready(())
        });
    tokio::select! {
        _ = controller => {}
        _ = broker_reflector => error!("IdentityBroker reflector ended"),
    }
}

/// Runs the connection and broker controllers until `shutdown` resolves: for the whole cluster,
/// or for each namespace in `config.watch_namespaces`.
pub async fn run(ctx: Arc<Context>, shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static) {
    let shutdown: Shutdown =
        futures::future::FutureExt::shared(Box::pin(shutdown) as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + Sync>>);
    let scopes: Vec<Option<String>> =
        if ctx.config.watch_namespaces.is_empty() { vec![None] } else { ctx.config.watch_namespaces.iter().cloned().map(Some).collect() };
    let (cluster_brokers, cluster_broker_reflector) = reflect(Api::<ClusterIdentityBroker>::all(ctx.client.clone()));
    let connections =
        future::join_all(scopes.iter().map(|ns| run_connections(ctx.clone(), ns.clone(), cluster_brokers.clone(), shutdown.clone())));
    let brokers = brokers::run(ctx.clone(), scopes, shutdown.clone());
    info!(namespaces = ?ctx.config.watch_namespaces, "controllers started");
    tokio::select! {
        _ = future::join(connections, brokers) => {}
        _ = cluster_broker_reflector => error!("ClusterIdentityBroker reflector ended"),
    }
    info!("controllers stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1, 0.5), Duration::from_secs(2));
        assert_eq!(backoff(2, 0.5), Duration::from_secs(4));
        assert_eq!(backoff(30, 0.5), Duration::from_secs(300));
        assert!(backoff(1, 0.0) >= Duration::from_millis(1600) && backoff(1, 0.999) <= Duration::from_millis(2400));
    }
}
