//! The controllers: the connection controller (per watched scope) reconciles each connection
//! when it or anything it references changes; the broker controllers keep the brokers' status.
//! They run until their stop token is cancelled (shutdown, or leadership lost).

mod brokers;
mod checks;
pub mod claims;
mod context;
mod decide;
mod error;
pub(crate) mod guard;
mod lookups;
mod observation;
mod protection;
mod pushes;
mod readiness;
pub mod reconcile;
mod registration;
mod resolve;
mod scim;
mod secret_index;
mod status;

use std::sync::Arc;

use futures::{Stream, StreamExt, TryStreamExt, channel::mpsc, future};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{
    Api, Client, Resource, ResourceExt,
    core::PartialObjectMeta,
    runtime::{
        Controller, Predicate, WatchStreamExt,
        controller::{self, Action},
        predicates,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub(crate) use self::readiness::Stores;
use self::secret_index::SecretIndex;
pub use self::{
    context::Context,
    error::Error,
    lookups::{Lookups, SecretCache},
    readiness::Readiness,
};
use crate::crd::{
    ClusterIdentityBroker, IdentityBroker,
    connection::{AzureAdConnection, BrokerRefKind},
};

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
    index: &SecretIndex,
    connections: &Store<AzureAdConnection>,
) -> Vec<ObjectRef<AzureAdConnection>> {
    connections_naming_secret(secret, index, connections, |c, name| c.spec.azure.client_secret_ref.name == name)
}

/// Connections whose Cloudflare SCIM Secret changed (deleted, or made by someone else): they look
/// at it again at once instead of at the next refresh.
fn connections_storing_scim(
    secret: &PartialObjectMeta<Secret>,
    index: &SecretIndex,
    connections: &Store<AzureAdConnection>,
) -> Vec<ObjectRef<AzureAdConnection>> {
    connections_naming_secret(secret, index, connections, |c, name| scim::secret_name(c) == Some(name))
}

/// Connections in the Secret's namespace for which `names` says they name it: the index's
/// candidates, checked against the store.
fn connections_naming_secret(
    secret: &PartialObjectMeta<Secret>,
    index: &SecretIndex,
    connections: &Store<AzureAdConnection>,
    names: impl Fn(&AzureAdConnection, &str) -> bool,
) -> Vec<ObjectRef<AzureAdConnection>> {
    let name = secret.name_any();
    index
        .naming(&secret.namespace().unwrap_or_default(), &name)
        .into_iter()
        .filter(|r| connections.get(r).is_some_and(|c| names(&c, &name)))
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

/// A watch of `api` that keeps a store (registered with `stores` for readiness) and yields the
/// objects it sees, to trigger reconciles. Managed fields are dropped before they are stored:
/// nothing reads them, and with every Secret's metadata cached they would dominate memory.
pub(crate) fn reflected<K>(
    api: Api<K>,
    config: watcher::Config,
    stores: &mut Stores,
) -> (Store<K>, impl Stream<Item = Result<K, watcher::Error>> + use<K>)
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    reflected_observed(api, config, stores, |_| {})
}

/// [`reflected`], with every watch event (deletions and re-lists included) shown to `observe`
/// once the store has applied it.
fn reflected_observed<K, F>(
    api: Api<K>,
    config: watcher::Config,
    stores: &mut Stores,
    observe: F,
) -> (Store<K>, impl Stream<Item = Result<K, watcher::Error>> + use<K, F>)
where
    F: Fn(&watcher::Event<K>) + Send + 'static,
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    stores.add(reader.clone());
    let events = watcher(api, config)
        .default_backoff()
        .modify(|o| o.managed_fields_mut().clear())
        .reflect(writer)
        .inspect_ok(move |event| observe(event))
        .touched_objects();
    (reader, events)
}

/// The connections of `api`, kept in a store, and the changes that call for a reconcile: a new
/// generation (spec edits, and the deletion mark), changed finalizers (the finalizer helper waits
/// for the watch to see the one it added) or changed annotations (a person asking for a refresh
/// now). A status write changes none of them, so a reconcile is never re-triggered by its own
/// status. Every event, before that filter (a deletion included), goes to `tap`: the connection's
/// broker may have gained or lost a user.
fn connection_triggers(
    api: Api<AzureAdConnection>,
    tap: protection::ConnectionTap,
    index: Arc<SecretIndex>,
    stores: &mut Stores,
) -> (Store<AzureAdConnection>, impl Stream<Item = Result<AzureAdConnection, watcher::Error>> + use<>) {
    let (store, events) = reflected_observed(api, watcher::Config::default().any_semantic(), stores, move |e| index.apply(e));
    let events = events.inspect(move |event| {
        if let Ok(conn) = event {
            tap.seen(conn);
        }
    });
    (
        store,
        events
            .predicate_filter(predicates::generation.combine(predicates::finalizers).combine(predicates::annotations), Default::default()),
    )
}

/// The broker events that concern its connections: a new generation (a spec edit, a new broker,
/// the deletion mark). The broker's status, labels and annotations do not; a changed credential
/// comes as an event of its Secret.
fn broker_changes<K, S>(events: S) -> impl Stream<Item = Result<K, watcher::Error>> + use<K, S>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
    S: Stream<Item = Result<K, watcher::Error>>,
{
    events.predicate_filter(predicates::generation, Default::default())
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

/// The connection controller for one namespace (or all of them), its stores registered with
/// `stores`, and its connection store. Its reconciles read brokers and Secret metadata from the
/// stores of the same watches that trigger them ([`Lookups`]), so the trigger of a change never
/// arrives before the store holds it.
fn connection_controller(
    ctx: Arc<Context>,
    namespace: Option<&str>,
    cluster_brokers: Store<ClusterIdentityBroker>,
    namespaces: Store<PartialObjectMeta<Namespace>>,
    tap: protection::ConnectionTap,
    stop: CancellationToken,
    stores: &mut Stores,
) -> (Store<AzureAdConnection>, impl Future<Output = ()> + use<>) {
    let client = ctx.client.clone();
    let index = Arc::new(SecretIndex::default());
    let (store, connection_events) = connection_triggers(scoped::<AzureAdConnection>(&client, namespace), tap, index.clone(), stores);
    let connection_store = store.clone();
    let connections = Controller::for_stream(connection_events, store.clone());
    let (broker_store, broker_events) =
        reflected(scoped::<IdentityBroker>(&client, namespace), watcher::Config::default().any_semantic(), stores);
    let broker_lookup = broker_store.clone();
    let (scope_cluster_brokers, cluster_broker_events) =
        reflected(Api::<ClusterIdentityBroker>::all(client.clone()), watcher::Config::default().any_semantic(), stores);
    let (s1, s2, s3) = (store.clone(), store.clone(), store);
    let operator_namespace = ctx.config.namespace.clone();
    let metrics = ctx.metrics.clone();
    let secret_mapper = move |secret: PartialObjectMeta<Secret>| {
        let direct = connections_reading_secret(&secret, &index, &s3);
        for conn in &direct {
            metrics.secret_changed(format!("{}/{}", conn.namespace.as_deref().unwrap_or_default(), conn.name));
        }
        let mut refs = connections_using_broker_secret(&secret, &s3, &broker_store, &cluster_brokers, &operator_namespace);
        refs.extend(direct);
        refs.extend(connections_storing_scim(&secret, &index, &s3));
        refs
    };
    let mut secrets = vec![(namespace.map(str::to_owned), scoped::<PartialObjectMeta<Secret>>(&client, namespace))];
    if namespace.is_some_and(|ns| ns != ctx.config.namespace) {
        // ClusterIdentityBroker credentials live in the operator's namespace.
        secrets.push((Some(ctx.config.namespace.clone()), Api::namespaced(client.clone(), &ctx.config.namespace)));
    }
    let mut secret_stores = Vec::new();
    let mut controller = connections
        .watches_stream(broker_changes(broker_events), move |b| {
            connections_using_broker(&s1, BrokerRefKind::IdentityBroker, b.namespace().as_deref(), &b.name_any())
        })
        .watches_stream(broker_changes(cluster_broker_events), move |b| {
            connections_using_broker(&s2, BrokerRefKind::ClusterIdentityBroker, None, &b.name_any())
        });
    for (scope, api) in secrets {
        let (store, events) = reflected(api, watcher::Config::default(), stores);
        secret_stores.push((scope, store));
        controller = controller.watches_stream(events, secret_mapper.clone());
    }
    let lookups = Arc::new(Lookups::new(client, broker_lookup, scope_cluster_brokers, namespaces, secret_stores, ctx.secrets.clone()));
    let running = controller
        .with_config(controller::Config::default().concurrency(ctx.config.concurrency))
        .graceful_shutdown_on(stop.cancelled_owned())
        .run(move |conn, ctx| reconcile::reconcile(conn, ctx, lookups.clone()), error_policy, ctx.clone())
        .for_each(|result| {
            if let Err(e) = result
                && !matches!(e, controller::Error::ReconcilerFailed(..))
            {
                warn!(error = %e, "controller");
            }
            future::ready(())
        });
    (connection_store, running)
}

/// Runs the connection and broker controllers until `stop` is cancelled: for the whole cluster,
/// or for each namespace in `config.watch_namespaces`. Ready (see [`Readiness`]) once every
/// store of every scope has listed, and not any more once they stop.
pub async fn run(ctx: Arc<Context>, stop: CancellationToken) {
    let scopes: Vec<Option<String>> =
        if ctx.config.watch_namespaces.is_empty() { vec![None] } else { ctx.config.watch_namespaces.iter().cloned().map(Some).collect() };
    let mut stores = Stores::default();
    let (cluster_brokers, cluster_broker_events) =
        reflected(Api::<ClusterIdentityBroker>::all(ctx.client.clone()), watcher::Config::default().any_semantic(), &mut stores);
    let cluster_broker_reflector = cluster_broker_events.for_each(|_| future::ready(()));
    // Metadata only: the labels a ClusterIdentityBroker's allowedNamespaces selects on.
    let (namespaces, namespace_events) =
        reflected(Api::<PartialObjectMeta<Namespace>>::all(ctx.client.clone()), watcher::Config::default(), &mut stores);
    let namespace_reflector = namespace_events.for_each(|_| future::ready(()));
    let (identity_senders, identity): (Vec<_>, Vec<_>) = scopes.iter().map(|_| mpsc::unbounded()).unzip();
    let (cluster_sender, cluster) = mpsc::unbounded();
    let (connection_stores, connections): (Vec<_>, Vec<_>) = scopes
        .iter()
        .zip(&identity_senders)
        .map(|(ns, identity)| {
            let tap = protection::ConnectionTap::new(identity.clone(), cluster_sender.clone());
            connection_controller(ctx.clone(), ns.as_deref(), cluster_brokers.clone(), namespaces.clone(), tap, stop.clone(), &mut stores)
        })
        .unzip();
    let triggers = brokers::ProtectionTriggers { identity, cluster, identity_senders, cluster_sender };
    let brokers = brokers::controllers(ctx.clone(), &scopes, connection_stores, triggers, &stop, &mut stores);
    let rotations = crate::rotation::controllers(ctx.clone(), &scopes, &stop, &mut stores);
    info!(namespaces = ?ctx.config.watch_namespaces, "controllers started");
    tokio::select! {
        _ = future::join3(future::join_all(connections), brokers, rotations) => {}
        _ = cluster_broker_reflector => error!("ClusterIdentityBroker reflector ended"),
        _ = namespace_reflector => error!("Namespace reflector ended"),
        _ = ctx.readiness.track(stores) => {}
    }
    info!("controllers stopped");
}
