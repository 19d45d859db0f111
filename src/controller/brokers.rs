//! Status of IdentityBroker and ClusterIdentityBroker: Ready once the operator obtained a
//! management token with the broker's credentials, re-checked periodically and whenever the
//! broker's spec or its credential Secret changes. The status is written only when the check
//! says something new (or `lastCheckTime` is an hour old), so checks do not churn the object,
//! its own watch, or the watches of its connections.

use std::{fmt::Debug, sync::Arc, time::Duration};

use futures::{
    FutureExt, StreamExt,
    channel::mpsc::{UnboundedReceiver, UnboundedSender},
    future,
    stream::BoxStream,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    Api, Client, Resource, ResourceExt,
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
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{Context, Error, Watches, protection, reconcile::MANAGER, resolve, shared::SharedWatch};
use crate::crd::{
    BrokerProvider, ClusterIdentityBroker, IdentityBroker,
    broker::IdentityBrokerStatus,
    conditions::{Desired, READY, Reason, Status, set_condition},
    connection::BrokerRefKind,
};

/// How often a healthy broker's credentials are re-checked.
const CHECK_INTERVAL: Duration = Duration::from_secs(600);
/// How old `lastCheckTime` may grow while the checks find nothing new: only then does a check
/// that changes nothing else write the status.
const LAST_CHECK_REFRESH: jiff::SignedDuration = jiff::SignedDuration::from_hours(1);

/// What the broker status and protection controllers need from either broker kind.
pub(super) trait BrokerObject: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static {
    /// How a connection's `brokerRef` names this kind.
    const REF_KIND: BrokerRefKind;
    fn provider(&self) -> Option<BrokerProvider>;
    fn rate_limit(&self) -> Option<(u32, u32)>;
    /// Where the broker's credential Secret lives.
    fn credentials_namespace(&self, operator_namespace: &str) -> String;
    fn broker_status(&self) -> Option<&IdentityBrokerStatus>;
    fn api(client: Client, namespace: Option<&str>) -> Api<Self>;
    /// The namespace of every credential Secret of this kind, when it does not vary.
    fn credentials_namespace_fixed(operator_namespace: &str) -> Option<&str>;
}

impl BrokerObject for IdentityBroker {
    const REF_KIND: BrokerRefKind = BrokerRefKind::IdentityBroker;
    fn provider(&self) -> Option<BrokerProvider> {
        self.spec.provider()
    }
    fn rate_limit(&self) -> Option<(u32, u32)> {
        self.spec.rate_limit.as_ref().map(|r| (r.requests_per_second, r.burst))
    }
    fn credentials_namespace(&self, _: &str) -> String {
        self.namespace().unwrap_or_default()
    }
    fn broker_status(&self) -> Option<&IdentityBrokerStatus> {
        self.status.as_ref()
    }
    fn api(client: Client, namespace: Option<&str>) -> Api<Self> {
        Api::namespaced(client, namespace.unwrap_or_default())
    }
    fn credentials_namespace_fixed(_: &str) -> Option<&str> {
        None
    }
}

impl BrokerObject for ClusterIdentityBroker {
    const REF_KIND: BrokerRefKind = BrokerRefKind::ClusterIdentityBroker;
    fn provider(&self) -> Option<BrokerProvider> {
        self.spec.provider()
    }
    fn rate_limit(&self) -> Option<(u32, u32)> {
        self.spec.rate_limit.as_ref().map(|r| (r.requests_per_second, r.burst))
    }
    fn credentials_namespace(&self, operator_namespace: &str) -> String {
        operator_namespace.to_owned()
    }
    fn broker_status(&self) -> Option<&IdentityBrokerStatus> {
        self.status.as_ref()
    }
    fn api(client: Client, _: Option<&str>) -> Api<Self> {
        Api::all(client)
    }
    fn credentials_namespace_fixed(operator_namespace: &str) -> Option<&str> {
        Some(operator_namespace)
    }
}

async fn check<B: BrokerObject>(broker: &B, ctx: &Context) -> Result<Desired, Error> {
    let Some(provider) = broker.provider() else {
        return Ok(Desired::new(READY, Status::False, Reason::BrokerTypeMismatch, "no provider block is set"));
    };
    if let Err(problem) = resolve::host_allowed(&ctx.config.broker_hosts, &broker.name_any(), &provider) {
        return Ok(Desired::new(READY, Status::False, problem.reason, problem.message));
    }
    let namespace = broker.credentials_namespace(&ctx.config.namespace);
    let (client_id, client_secret) = match resolve::credentials(&ctx.client, &namespace, &provider).await? {
        Ok(c) => c,
        Err(problem) => return Ok(Desired::new(READY, Status::False, problem.reason, problem.message)),
    };
    let resolved = resolve::ResolvedBroker {
        uid: broker.meta().uid.clone().unwrap_or_default(),
        generation: broker.meta().generation.unwrap_or_default(),
        provider,
        rate_limit: broker.rate_limit(),
        client_id,
        client_secret,
    };
    Ok(match ctx.broker_client(&resolved).check().await {
        Ok(()) => Desired::new(READY, Status::True, Reason::Ready, "obtained a management API token"),
        Err(e) => Desired::new(READY, Status::False, e.reason(), e.to_string()),
    })
}

/// The status check under the reconcile deadline, its panics contained, like a connection's.
#[tracing::instrument(skip_all, fields(kind = B::kind(&()).as_ref(), namespace = %broker.namespace().unwrap_or_default(), name = %broker.name_any()))]
async fn guarded_reconcile<B: BrokerObject>(broker: Arc<B>, ctx: Arc<Context>) -> Result<Action, Error> {
    super::guard::guarded(ctx.config.reconcile_timeout, reconcile::<B>(broker, ctx)).await
}

async fn reconcile<B: BrokerObject>(broker: Arc<B>, ctx: Arc<Context>) -> Result<Action, Error> {
    if broker.meta().deletion_timestamp.is_some() {
        ctx.brokers.forget(broker.meta().uid.as_deref().unwrap_or_default());
        return Ok(Action::await_change());
    }
    let desired = check(broker.as_ref(), &ctx).await?;
    let previous = broker.broker_status().cloned().unwrap_or_default();
    if let Some(next) = next_status(broker.as_ref(), &previous, &desired, jiff::Timestamp::now()) {
        let patch = json!({ "apiVersion": "idpbridge.io/v1alpha1", "kind": B::kind(&()), "status": next });
        B::api(ctx.client.clone(), broker.namespace().as_deref())
            .patch_status(&broker.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch))
            .await
            .map_err(Error::WriteStatus)?;
    }
    Ok(if desired.status == Status::True {
        ctx.reset_backoff(broker.as_ref());
        Action::requeue(CHECK_INTERVAL)
    } else {
        Action::requeue(ctx.next_backoff(broker.as_ref()).max(Duration::from_secs(30)))
    })
}

/// The status to write after a check, or `None` when the current one still says it all: the
/// same conditions, generation and type, and a `lastCheckTime` younger than
/// [`LAST_CHECK_REFRESH`].
fn next_status<B: BrokerObject>(
    broker: &B,
    previous: &IdentityBrokerStatus,
    desired: &Desired,
    now: jiff::Timestamp,
) -> Option<IdentityBrokerStatus> {
    let mut next = previous.clone();
    let generation = broker.meta().generation;
    let _ = set_condition(&mut next.conditions, desired, generation, now);
    next.observed_generation = generation;
    next.type_ = broker.provider().map(|p| p.type_name().to_owned());
    let checked_recently = previous.last_check_time.as_ref().is_some_and(|t| now.duration_since(t.0) < LAST_CHECK_REFRESH);
    if next == *previous && checked_recently {
        return None;
    }
    next.last_check_time = Some(Time(now.round(jiff::Unit::Second).unwrap_or(now)));
    Some(next)
}

fn error_policy<B: BrokerObject>(broker: Arc<B>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(error = %error, kind = error.label(), "broker status check failed");
    Action::requeue(ctx.next_backoff(broker.as_ref()))
}

fn brokers_using_secret<B: BrokerObject>(
    store: &Store<B>,
    secret: &PartialObjectMeta<Secret>,
    operator_namespace: &str,
) -> Vec<ObjectRef<B>> {
    let namespace = secret.namespace().unwrap_or_default();
    store
        .state()
        .iter()
        .filter(|b| {
            b.credentials_namespace(operator_namespace) == namespace
                && b.provider().is_some_and(|p| p.credentials_secret() == secret.name_any())
        })
        .map(|b| ObjectRef::from_obj(b.as_ref()))
        .collect()
}

/// The status controller of one broker kind in one scope, on its shared watch (`store`,
/// `brokers`). A change of a credential Secret (`secrets`) starts a check of the brokers that
/// use it, and tells `protection` too: a Secret created after its broker is protected at once.
fn controller<B: BrokerObject>(
    ctx: Arc<Context>,
    (store, brokers): (Store<B>, BoxStream<'static, Result<B, watcher::Error>>),
    secrets: BoxStream<'static, Result<PartialObjectMeta<Secret>, watcher::Error>>,
    protection: UnboundedSender<ObjectRef<B>>,
    stop: &CancellationToken,
) -> impl std::future::Future<Output = ()> + use<B> {
    // Spec edits (and the deletion mark) bump the generation; the controller's own status
    // writes, and labels or annotations, do not, and start no check.
    let brokers = brokers.predicate_filter(predicates::generation.combine(predicates::finalizers), Default::default());
    let controller = Controller::for_stream(brokers, store.clone());
    let operator_namespace = ctx.config.namespace.clone();
    // Bounded like the connections: every broker is checked when the operator starts, and
    // unbounded, each check would open its own connection to the API server and its broker.
    let config = controller::Config::default().concurrency(ctx.config.concurrency);
    controller
        .with_config(config)
        .watches_stream(secrets, move |s| {
            let refs = brokers_using_secret(&store, &s, &operator_namespace);
            for broker in &refs {
                // Closed only while the controllers stop.
                let _ = protection.unbounded_send(broker.clone());
            }
            refs
        })
        .graceful_shutdown_on(stop.clone().cancelled_owned())
        .run(guarded_reconcile::<B>, error_policy::<B>, ctx)
        .for_each(|_| future::ready(()))
}

/// The namespace of the Secrets where brokers of kind `B` watched in `namespace` keep their
/// credentials (None: every namespace).
fn credential_scope<'a, B: BrokerObject>(ctx: &'a Context, namespace: Option<&'a str>) -> Option<&'a str> {
    B::credentials_namespace_fixed(&ctx.config.namespace).or(namespace)
}

/// A broker kind's shared watch, as the status and the protection controller each take it.
fn watched<B: BrokerObject>(watch: &mut SharedWatch<B>) -> (Store<B>, BoxStream<'static, Result<B, watcher::Error>>) {
    (watch.store(), watch.subscribe().boxed())
}

/// The triggers of the protection controllers: per scope for IdentityBrokers, and one for
/// ClusterIdentityBrokers.
pub(super) struct ProtectionTriggers {
    pub identity: Vec<UnboundedReceiver<ObjectRef<IdentityBroker>>>,
    pub cluster: UnboundedReceiver<ObjectRef<ClusterIdentityBroker>>,
    pub identity_senders: Vec<UnboundedSender<ObjectRef<IdentityBroker>>>,
    pub cluster_sender: UnboundedSender<ObjectRef<ClusterIdentityBroker>>,
}

/// The IdentityBroker status and protection controllers per scope and the ClusterIdentityBroker
/// ones, on the run's shared watches, until `stop` is cancelled. The connection stores of every
/// scope decide whether a broker is in use.
pub(super) fn controllers(
    ctx: Arc<Context>,
    triggers: ProtectionTriggers,
    stop: &CancellationToken,
    watches: &mut Watches,
) -> impl std::future::Future<Output = ()> + use<> {
    let usage = Arc::new(protection::Usage {
        operator_namespace: ctx.config.namespace.clone(),
        connections: watches.scopes.iter().map(|scope| scope.connections.store()).collect(),
        brokers: watches.scopes.iter().map(|scope| scope.brokers.store()).collect(),
        cluster_brokers: watches.cluster_brokers.store(),
    });
    let mut running = Vec::new();
    let scoped = (0..watches.scopes.len()).zip(triggers.identity).zip(triggers.identity_senders);
    for ((scope, received), sender) in scoped {
        let namespace = watches.scopes[scope].namespace.clone();
        let status_watch = watched(&mut watches.scopes[scope].brokers);
        let protection_watch = watched(&mut watches.scopes[scope].brokers);
        let secrets = watches.secrets.covering(credential_scope::<IdentityBroker>(&ctx, namespace.as_deref()), &mut watches.stores);
        let (secret_store, secret_events) = (secrets.store(), secrets.subscribe().boxed());
        running.push(controller::<IdentityBroker>(ctx.clone(), status_watch, secret_events, sender, stop).boxed());
        running.push(protection::controller(ctx.clone(), usage.clone(), protection_watch, secret_store, received, stop).boxed());
    }
    let status_watch = watched(&mut watches.cluster_brokers);
    let protection_watch = watched(&mut watches.cluster_brokers);
    let secrets = watches.secrets.covering(credential_scope::<ClusterIdentityBroker>(&ctx, None), &mut watches.stores);
    let (secret_store, secret_events) = (secrets.store(), secrets.subscribe().boxed());
    running.push(controller::<ClusterIdentityBroker>(ctx.clone(), status_watch, secret_events, triggers.cluster_sender, stop).boxed());
    running.push(protection::controller(ctx, usage, protection_watch, secret_store, triggers.cluster, stop).boxed());
    future::join_all(running).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker(generation: i64) -> IdentityBroker {
        serde_json::from_value(json!({
            "apiVersion": "idpbridge.io/v1alpha1",
            "kind": "IdentityBroker",
            "metadata": {"name": "auth0", "namespace": "ns", "generation": generation},
            "spec": {"auth0": {"domain": "acme.eu.auth0.com", "credentialsSecretRef": {"name": "auth0-management"}}},
        }))
        .expect("a valid IdentityBroker")
    }

    fn refused() -> Desired {
        Desired::new(READY, Status::False, Reason::BrokerAuthFailed, "token request refused: Unauthorized (access_denied)")
    }

    #[test]
    fn a_check_that_finds_nothing_new_writes_no_status_until_an_hour_has_passed() {
        let start: jiff::Timestamp = "2026-12-02T08:00:00Z".parse().unwrap();
        let first = next_status(&broker(1), &IdentityBrokerStatus::default(), &refused(), start).expect("the first check is written");
        let minutes = |m: i64| start + jiff::SignedDuration::from_mins(m);
        assert_eq!(next_status(&broker(1), &first, &refused(), minutes(1)), None, "the same refusal a minute later");
        assert_eq!(next_status(&broker(1), &first, &refused(), minutes(59)), None);
        let refreshed = next_status(&broker(1), &first, &refused(), minutes(60)).expect("an hour-old lastCheckTime is refreshed");
        assert_eq!(refreshed.conditions, first.conditions, "nothing else changed, the transition time included");
        assert!(next_status(&broker(2), &first, &refused(), minutes(1)).is_some(), "a new generation is written");
        let ready = Desired::new(READY, Status::True, Reason::Ready, "obtained a management API token");
        assert!(next_status(&broker(1), &first, &ready, minutes(1)).is_some(), "a new result is written");
    }
}
