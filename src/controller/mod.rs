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
mod shared;
mod status;

use std::sync::Arc;

use futures::{FutureExt, Stream, StreamExt, channel::mpsc, future};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{
    Api, Client, Resource, ResourceExt,
    core::PartialObjectMeta,
    runtime::{
        Controller, Predicate, WatchStreamExt,
        controller::{self, Action},
        predicates,
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub(crate) use self::readiness::Stores;
pub(crate) use self::shared::SharedWatch;
pub use self::{
    context::Context,
    error::Error,
    lookups::{Lookups, SecretCache},
    readiness::Readiness,
};
use self::{secret_index::SecretIndex, shared::SecretWatches};
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

/// The watches of one scope's connections and IdentityBrokers, shared by the connection, broker,
/// protection and AzureAdClientSecret controllers of that scope. The connection watch keeps the
/// scope's Secret index.
pub(crate) struct ScopeWatches {
    pub namespace: Option<String>,
    pub connections: SharedWatch<AzureAdConnection>,
    pub index: Arc<SecretIndex>,
    pub brokers: SharedWatch<IdentityBroker>,
}

impl ScopeWatches {
    fn new(client: &Client, namespace: Option<String>, stores: &mut Stores) -> Self {
        let index = Arc::new(SecretIndex::default());
        let indexed = index.clone();
        let connections = SharedWatch::observed(
            scoped::<AzureAdConnection>(client, namespace.as_deref()),
            watcher::Config::default().any_semantic(),
            stores,
            move |e| indexed.apply(e),
        );
        let brokers =
            SharedWatch::new(scoped::<IdentityBroker>(client, namespace.as_deref()), watcher::Config::default().any_semantic(), stores);
        Self { namespace, connections, index, brokers }
    }

    fn run(self) -> impl Future<Output = ()> + use<> {
        future::join(self.connections.run(), self.brokers.run()).map(|_| ())
    }
}

/// Every watch of a run that more than one controller reads: each kind and scope watched once.
pub(crate) struct Watches {
    pub scopes: Vec<ScopeWatches>,
    pub cluster_brokers: SharedWatch<ClusterIdentityBroker>,
    pub secrets: SecretWatches,
    pub stores: Stores,
}

impl Watches {
    fn new(client: &Client, scopes: Vec<Option<String>>) -> Self {
        let mut stores = Stores::default();
        let scopes = scopes.into_iter().map(|ns| ScopeWatches::new(client, ns, &mut stores)).collect();
        let cluster_brokers =
            SharedWatch::new(Api::<ClusterIdentityBroker>::all(client.clone()), watcher::Config::default().any_semantic(), &mut stores);
        Self { scopes, cluster_brokers, secrets: SecretWatches::new(client.clone()), stores }
    }

    /// Drives every watch; the store registrations go to readiness.
    fn run(self) -> (Stores, impl Future<Output = ()> + use<>) {
        let Self { scopes, cluster_brokers, secrets, stores } = self;
        let scopes = future::join_all(scopes.into_iter().map(ScopeWatches::run));
        (stores, future::join3(scopes, cluster_brokers.run(), secrets.run()).map(|_| ()))
    }
}

/// The changes of a scope's connections that call for a reconcile: a new generation (spec
/// edits, and the deletion mark), changed finalizers (the finalizer helper waits for the watch
/// to see the one it added) or changed annotations (a person asking for a refresh now). A status
/// write changes none of them, so a reconcile is never re-triggered by its own status. Every
/// event, before that filter (a deletion included), goes to `tap`: the connection's broker may
/// have gained or lost a user.
fn connection_triggers(
    connections: &mut SharedWatch<AzureAdConnection>,
    tap: protection::ConnectionTap,
) -> impl Stream<Item = Result<AzureAdConnection, watcher::Error>> + use<> {
    let events = connections.subscribe().inspect(move |event| {
        if let Ok(conn) = event {
            tap.seen(conn);
        }
    });
    events.predicate_filter(predicates::generation.combine(predicates::finalizers).combine(predicates::annotations), Default::default())
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

/// The connection controller of one scope (its namespace, or all of them), reading and
/// triggered by the run's shared watches. Its reconciles read brokers and Secret metadata from
/// the stores of the same watches that trigger them ([`Lookups`]), so the trigger of a change
/// never arrives before the store holds it.
fn connection_controller(
    ctx: Arc<Context>,
    scope: usize,
    watches: &mut Watches,
    namespaces: Store<PartialObjectMeta<Namespace>>,
    tap: protection::ConnectionTap,
    stop: CancellationToken,
) -> impl Future<Output = ()> + use<> {
    let client = ctx.client.clone();
    let namespace = watches.scopes[scope].namespace.clone();
    let own = &mut watches.scopes[scope];
    let index = own.index.clone();
    let store = own.connections.store();
    let connections = Controller::for_stream(connection_triggers(&mut own.connections, tap), store.clone());
    let broker_store = own.brokers.store();
    let broker_events = own.brokers.subscribe();
    let cluster_brokers = watches.cluster_brokers.store();
    let cluster_broker_events = watches.cluster_brokers.subscribe();
    let (s1, s2, s3) = (store.clone(), store.clone(), store);
    let operator_namespace = ctx.config.namespace.clone();
    let metrics = ctx.metrics.clone();
    let (broker_lookup, cluster_lookup) = (broker_store.clone(), cluster_brokers.clone());
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
    let mut secret_scopes = vec![namespace.clone()];
    if namespace.as_deref().is_some_and(|ns| ns != ctx.config.namespace) {
        // ClusterIdentityBroker credentials live in the operator's namespace.
        secret_scopes.push(Some(ctx.config.namespace.clone()));
    }
    let mut secret_stores = Vec::new();
    let mut controller = connections
        .watches_stream(broker_changes(broker_events), move |b| {
            connections_using_broker(&s1, BrokerRefKind::IdentityBroker, b.namespace().as_deref(), &b.name_any())
        })
        .watches_stream(broker_changes(cluster_broker_events), move |b| {
            connections_using_broker(&s2, BrokerRefKind::ClusterIdentityBroker, None, &b.name_any())
        });
    for secret_scope in secret_scopes {
        let watch = watches.secrets.covering(secret_scope.as_deref(), &mut watches.stores);
        secret_stores.push((secret_scope, watch.store()));
        controller = controller.watches_stream(watch.subscribe(), secret_mapper.clone());
    }
    let lookups = Arc::new(Lookups::new(client, broker_lookup, cluster_lookup, namespaces, secret_stores, ctx.secrets.clone()));
    controller
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
        })
}

/// Runs the connection and broker controllers until `stop` is cancelled: for the whole cluster,
/// or for each namespace in `config.watch_namespaces`. Ready (see [`Readiness`]) once every
/// store of every scope has listed, and not any more once they stop.
pub async fn run(ctx: Arc<Context>, stop: CancellationToken) {
    let scopes: Vec<Option<String>> =
        if ctx.config.watch_namespaces.is_empty() { vec![None] } else { ctx.config.watch_namespaces.iter().cloned().map(Some).collect() };
    let mut watches = Watches::new(&ctx.client, scopes);
    // Metadata only: the labels a ClusterIdentityBroker's allowedNamespaces selects on.
    let namespace_watch =
        SharedWatch::new(Api::<PartialObjectMeta<Namespace>>::all(ctx.client.clone()), watcher::Config::default(), &mut watches.stores);
    let namespaces = namespace_watch.store();
    let (identity_senders, identity): (Vec<_>, Vec<_>) = watches.scopes.iter().map(|_| mpsc::unbounded()).unzip();
    let (cluster_sender, cluster) = mpsc::unbounded();
    let connections: Vec<_> = identity_senders
        .iter()
        .enumerate()
        .map(|(scope, identity)| {
            let tap = protection::ConnectionTap::new(identity.clone(), cluster_sender.clone());
            connection_controller(ctx.clone(), scope, &mut watches, namespaces.clone(), tap, stop.clone())
        })
        .collect();
    let triggers = brokers::ProtectionTriggers { identity, cluster, identity_senders, cluster_sender };
    let brokers = brokers::controllers(ctx.clone(), triggers, &stop, &mut watches);
    let rotations = crate::rotation::controllers(ctx.clone(), &stop, &mut watches);
    let (stores, watching) = watches.run();
    info!(namespaces = ?ctx.config.watch_namespaces, "controllers started");
    tokio::select! {
        _ = future::join3(future::join_all(connections), brokers, rotations) => {}
        _ = watching => error!("a shared watch ended"),
        _ = namespace_watch.run() => error!("the Namespace watch ended"),
        _ = ctx.readiness.track(stores) => {}
    }
    info!("controllers stopped");
}
