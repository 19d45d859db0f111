//! In-use protection of brokers, the way Kubernetes protects a PersistentVolumeClaim that a Pod
//! uses: while any connection with `deletionPolicy: Delete` references a broker, the broker and
//! its credential Secret carry the finalizer `in-use.idpbridge.io/<operator namespace>`
//! ([`in_use_finalizer`]). Deleting them (one at a time,
//! or a whole namespace at once, where the namespace controller deletes everything in no
//! particular order) then waits until every such connection's own cleanup has deleted its
//! broker object with them. The finalizer goes as soon as no such connection remains, so a broker
//! nobody relies on is deleted at once.
//!
//! One protection controller per broker kind and scope. It is triggered by its brokers, by every
//! change of a connection that references one of them (through [`ConnectionTap`]), and by their
//! credential Secrets; it decides from the stores of every scope, and only once all of them have
//! listed, so a store still empty never reads as "not in use".

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{
    StreamExt,
    channel::mpsc::{UnboundedReceiver, UnboundedSender},
    future,
    stream::BoxStream,
};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    core::PartialObjectMeta,
    runtime::{
        Controller, Predicate, WatchStreamExt,
        controller::{self, Action},
        predicates,
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Context, Error, brokers::BrokerObject, guard::guarded, readiness::listed};
use crate::crd::{
    BrokerProvider, ClusterIdentityBroker, IdentityBroker,
    connection::{AzureAdConnection, BrokerRef, BrokerRefKind, DeletionPolicy},
    in_use_finalizer,
};

/// How often a broker's protection is looked at again without any trigger (a safety net: every
/// change that matters triggers it at once).
const RECHECK: Duration = Duration::from_secs(600);

/// Whether `conn` relies on the broker `(kind, namespace, name)` for its cleanup: it deletes its
/// broker object on deletion, through that broker. A ClusterIdentityBroker is used from any
/// namespace; an IdentityBroker only from its own.
pub fn relies_on(conn: &AzureAdConnection, kind: BrokerRefKind, namespace: Option<&str>, name: &str) -> bool {
    let reference = &conn.spec.broker_ref;
    conn.spec.deletion_policy == DeletionPolicy::Delete
        && reference.kind == kind
        && reference.name == name
        && (kind == BrokerRefKind::ClusterIdentityBroker || conn.namespace().as_deref() == namespace)
}

/// The finalizers an object should carry, when they differ from `current`: with `ours` when
/// `protect`, without it otherwise. An object being deleted accepts no new finalizer, so
/// protection is only ever added before.
pub fn finalizers_to_write(current: &[String], ours: &str, protect: bool, deleting: bool) -> Option<Vec<String>> {
    let has = current.iter().any(|f| f == ours);
    let keep = protect && (has || !deleting);
    match (keep, has) {
        (true, false) => Some(current.iter().cloned().chain([ours.to_owned()]).collect()),
        (false, true) => Some(current.iter().filter(|f| *f != ours).cloned().collect()),
        _ => None,
    }
}

/// What decides whether a broker or a Secret is in use: the connection and broker stores of
/// every watched scope.
pub struct Usage {
    pub operator_namespace: String,
    pub connections: Vec<Store<AzureAdConnection>>,
    pub brokers: Vec<Store<IdentityBroker>>,
    pub cluster_brokers: Store<ClusterIdentityBroker>,
}

impl Usage {
    /// Resolves once every store has listed: before that, an absent connection may only be one
    /// the store has not seen yet.
    async fn listed(&self) {
        future::join_all(self.connections.iter().map(|s| listed(s.clone()))).await;
        future::join_all(self.brokers.iter().map(|s| listed(s.clone()))).await;
        listed(self.cluster_brokers.clone()).await;
    }

    fn relied_on(&self, kind: BrokerRefKind, namespace: Option<&str>, name: &str) -> bool {
        self.connections.iter().any(|store| store.find(|c| relies_on(c, kind, namespace, name)).is_some())
    }

    fn broker_in_use<B: BrokerObject>(&self, broker: &B) -> bool {
        self.relied_on(B::REF_KIND, broker.namespace().as_deref(), &broker.name_any())
    }

    /// Whether the Secret `namespace/name` is the credential Secret of a broker in use.
    fn secret_in_use(&self, namespace: &str, name: &str) -> bool {
        let names = |provider: Option<BrokerProvider>| provider.is_some_and(|p| p.credentials_secret() == name);
        let identity = self.brokers.iter().any(|store| {
            store.find(|b| b.namespace().as_deref() == Some(namespace) && names(b.spec.provider()) && self.broker_in_use(b)).is_some()
        });
        let cluster = namespace == self.operator_namespace
            && self.cluster_brokers.find(|b| names(b.spec.provider()) && self.broker_in_use(b)).is_some();
        identity || cluster
    }
}

/// Where connection changes are announced to the protection controllers of one scope.
pub struct ConnectionTap {
    identity: UnboundedSender<ObjectRef<IdentityBroker>>,
    cluster: UnboundedSender<ObjectRef<ClusterIdentityBroker>>,
    /// The broker each connection referenced when last seen, so that a changed `brokerRef`
    /// also releases the broker it no longer uses.
    last: Mutex<HashMap<ObjectRef<AzureAdConnection>, BrokerRef>>,
}

impl ConnectionTap {
    pub fn new(identity: UnboundedSender<ObjectRef<IdentityBroker>>, cluster: UnboundedSender<ObjectRef<ClusterIdentityBroker>>) -> Self {
        Self { identity, cluster, last: Mutex::new(HashMap::new()) }
    }

    /// A connection was created, changed or deleted: its broker (and its previous one) may have
    /// gained or lost a user.
    pub fn seen(&self, conn: &AzureAdConnection) {
        let key = ObjectRef::from_obj(conn);
        let current = conn.spec.broker_ref.clone();
        let gone = conn.meta().deletion_timestamp.is_some() && conn.finalizers().is_empty();
        let previous = {
            let mut last = self.last.lock().expect("connection tap lock");
            if gone { last.remove(&key) } else { last.insert(key, current.clone()) }
        };
        let namespace = conn.namespace().unwrap_or_default();
        self.announce(&namespace, &current);
        if let Some(previous) = previous.filter(|p| *p != current) {
            self.announce(&namespace, &previous);
        }
    }

    fn announce(&self, namespace: &str, reference: &BrokerRef) {
        // A closed channel means the controllers are stopping: nothing left to protect.
        match reference.kind {
            BrokerRefKind::IdentityBroker => drop(self.identity.unbounded_send(ObjectRef::new(&reference.name).within(namespace))),
            BrokerRefKind::ClusterIdentityBroker => drop(self.cluster.unbounded_send(ObjectRef::new(&reference.name))),
        }
    }
}

/// What one protection controller shares with its reconciles.
struct Protection {
    ctx: Arc<Context>,
    /// This installation's in-use finalizer.
    finalizer: String,
    usage: Arc<Usage>,
    secrets: Store<PartialObjectMeta<Secret>>,
}

/// Writes `finalizers` by a merge patch that carries the resourceVersion it was decided on, so a
/// concurrent change makes it fail (and retry) instead of dropping someone else's finalizer.
async fn write_finalizers<K>(api: &Api<K>, object: &impl Resource, finalizers: Vec<String>) -> Result<(), Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": object.meta().resource_version}});
    api.patch_metadata(&object.meta().name.clone().unwrap_or_default(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(Error::Protect)?;
    Ok(())
}

/// The broker's credential Secrets first (a broker released must not leave them held), then the
/// broker itself.
async fn reconcile<B: BrokerObject>(broker: Arc<B>, protection: Arc<Protection>) -> Result<Action, Error> {
    let Protection { ctx, finalizer, usage, secrets } = protection.as_ref();
    usage.listed().await;
    let namespace = broker.credentials_namespace(&ctx.config.namespace);
    let own = broker.provider().map(|p| p.credentials_secret().to_owned());
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    // This broker's Secret, and any other the finalizer still holds there (one a broker named
    // before its spec changed).
    let candidates = secrets.state().into_iter().filter(|s| {
        s.namespace().as_deref() == Some(namespace.as_str())
            && (own.as_deref() == Some(s.name_any().as_str()) || s.finalizers().iter().any(|f| f == finalizer))
    });
    for secret in candidates {
        let protect = usage.secret_in_use(&namespace, &secret.name_any());
        if let Some(finalizers) = finalizers_to_write(secret.finalizers(), finalizer, protect, secret.meta().deletion_timestamp.is_some()) {
            match write_finalizers(&api, secret.as_ref(), finalizers).await {
                Ok(()) => info!(secret = %secret.name_any(), protect, "credential Secret protection changed"),
                // Patching Secrets is granted only where the platform team chose to (RBAC cannot
                // narrow it to a finalizer); elsewhere a cleanup uses the credentials last read.
                Err(Error::Protect(kube::Error::Api(status))) if status.is_forbidden() => {
                    debug!(secret = %secret.name_any(), "no permission to patch the credential Secret; left unprotected");
                }
                Err(error) => return Err(error),
            }
        }
    }
    let in_use = usage.broker_in_use(broker.as_ref());
    if let Some(finalizers) = finalizers_to_write(broker.finalizers(), finalizer, in_use, broker.meta().deletion_timestamp.is_some()) {
        write_finalizers(&B::api(ctx.client.clone(), broker.namespace().as_deref()), broker.as_ref(), finalizers).await?;
        info!(protect = in_use, "broker protection changed");
    }
    ctx.reset_backoff(broker.as_ref());
    Ok(Action::requeue(RECHECK))
}

#[tracing::instrument(skip_all, fields(kind = B::kind(&()).as_ref(), namespace = %broker.namespace().unwrap_or_default(), name = %broker.name_any()))]
async fn guarded_reconcile<B: BrokerObject>(broker: Arc<B>, protection: Arc<Protection>) -> Result<Action, Error> {
    guarded(protection.ctx.config.reconcile_timeout, reconcile::<B>(broker, protection.clone())).await
}

fn error_policy<B: BrokerObject>(broker: Arc<B>, error: &Error, protection: Arc<Protection>) -> Action {
    warn!(error = %error, kind = error.label(), "broker protection failed");
    Action::requeue(protection.ctx.next_backoff(broker.as_ref()))
}

/// The protection controller of one broker kind in one scope: its brokers' own watch (`store`,
/// `events`), the credential Secrets of the scope (`secrets`) and `triggers` from connections and
/// Secrets.
pub(super) fn controller<B: BrokerObject>(
    ctx: Arc<Context>,
    usage: Arc<Usage>,
    (store, events): (Store<B>, BoxStream<'static, Result<B, watcher::Error>>),
    secrets: Store<PartialObjectMeta<Secret>>,
    triggers: UnboundedReceiver<ObjectRef<B>>,
    stop: &CancellationToken,
) -> impl Future<Output = ()> + use<B> {
    let events = events.predicate_filter(predicates::generation.combine(predicates::finalizers), Default::default());
    let concurrency = ctx.config.concurrency;
    let finalizer = in_use_finalizer(&ctx.config.namespace);
    Controller::for_stream(events, store)
        .reconcile_on(triggers)
        .with_config(controller::Config::default().concurrency(concurrency))
        .graceful_shutdown_on(stop.clone().cancelled_owned())
        .run(guarded_reconcile::<B>, error_policy::<B>, Arc::new(Protection { ctx, finalizer, usage, secrets }))
        .for_each(|_| future::ready(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection(namespace: &str, broker: serde_json::Value, policy: &str) -> AzureAdConnection {
        serde_json::from_value(json!({
            "apiVersion": "idpbridge.io/v1alpha1", "kind": "AzureAdConnection",
            "metadata": {"name": "c", "namespace": namespace},
            "spec": {
                "brokerRef": broker,
                "azure": {"tenant": "contoso.onmicrosoft.com", "clientId": "8c2e4b6a-1f3d-4a5b-9e7c-6d8f0a2b4c6e", "clientSecretRef": {"name": "s"}},
                "auth0": {"name": "contoso"},
                "deletionPolicy": policy,
            },
        }))
        .expect("a valid connection")
    }

    #[test]
    fn only_delete_connections_of_the_broker_rely_on_it() {
        let ib = |ns: &str, policy: &str| connection(ns, json!({"name": "auth0"}), policy);
        let ib_kind = BrokerRefKind::IdentityBroker;
        assert!(relies_on(&ib("team-a", "Delete"), ib_kind, Some("team-a"), "auth0"));
        assert!(!relies_on(&ib("team-a", "Orphan"), ib_kind, Some("team-a"), "auth0"), "Orphan needs no broker to go away");
        assert!(!relies_on(&ib("team-b", "Delete"), ib_kind, Some("team-a"), "auth0"), "an IdentityBroker of another namespace");
        assert!(!relies_on(&ib("team-a", "Delete"), ib_kind, Some("team-a"), "other"));
        let cluster = connection("team-b", json!({"kind": "ClusterIdentityBroker", "name": "auth0"}), "Delete");
        assert!(relies_on(&cluster, BrokerRefKind::ClusterIdentityBroker, None, "auth0"), "cluster brokers serve every namespace");
        assert!(!relies_on(&cluster, ib_kind, Some("team-b"), "auth0"), "kinds are not confused");
    }

    #[test]
    fn the_finalizer_is_added_while_in_use_and_removed_after_keeping_the_others() {
        let other = "example.com/keep".to_owned();
        let ours = in_use_finalizer("idp-bridge");
        let another_installation = in_use_finalizer("idp-bridge-b");
        let write = |current: &[String], protect, deleting| finalizers_to_write(current, &ours, protect, deleting);
        assert_eq!(ours, "in-use.idpbridge.io/idp-bridge");
        assert_eq!(write(std::slice::from_ref(&other), true, false), Some(vec![other.clone(), ours.clone()]));
        assert_eq!(write(&[other.clone(), ours.clone()], true, false), None, "already protected");
        assert_eq!(write(&[other.clone(), ours.clone()], false, false), Some(vec![other.clone()]));
        assert_eq!(write(std::slice::from_ref(&ours), false, true), Some(vec![]), "released while being deleted");
        assert_eq!(write(std::slice::from_ref(&ours), true, true), None, "kept while being deleted and in use");
        assert_eq!(write(&[], true, true), None, "an object being deleted accepts no new finalizer");
        assert_eq!(write(&[], false, false), None);
        assert_eq!(write(std::slice::from_ref(&another_installation), false, false), None, "another installation's is its own");
    }
}
