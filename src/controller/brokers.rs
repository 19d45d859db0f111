//! Status of IdentityBroker and ClusterIdentityBroker: Ready once the operator obtained a
//! management token with the broker's credentials, re-checked periodically and whenever the
//! broker's spec or its credential Secret changes. The status is written only when the check
//! says something new (or `lastCheckTime` is an hour old), so checks do not churn the object,
//! its own watch, or the watches of its connections.

use std::{fmt::Debug, sync::Arc, time::Duration};

use futures::{FutureExt, StreamExt, future};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    core::PartialObjectMeta,
    runtime::{
        Controller, Predicate, WatchStreamExt,
        controller::Action,
        predicates,
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{Context, Error, readiness::Stores, reconcile::MANAGER, resolve};
use crate::crd::{
    BrokerProvider, ClusterIdentityBroker, IdentityBroker,
    broker::IdentityBrokerStatus,
    conditions::{Desired, READY, Reason, Status, set_condition},
};

/// How often a healthy broker's credentials are re-checked.
const CHECK_INTERVAL: Duration = Duration::from_secs(600);
/// How old `lastCheckTime` may grow while the checks find nothing new: only then does a check
/// that changes nothing else write the status.
const LAST_CHECK_REFRESH: jiff::SignedDuration = jiff::SignedDuration::from_hours(1);

/// What the broker status controller needs from either broker kind.
trait BrokerObject: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static {
    fn provider(&self) -> Option<BrokerProvider>;
    fn rate_limit(&self) -> Option<(u32, u32)>;
    /// Where the broker's credential Secret lives.
    fn credentials_namespace(&self, operator_namespace: &str) -> String;
    fn broker_status(&self) -> Option<&IdentityBrokerStatus>;
    fn api(client: Client, namespace: Option<&str>) -> Api<Self>;
    /// The Api to watch: one namespace or the whole cluster.
    fn watch_api(client: Client, namespace: Option<&str>) -> Api<Self>;
    /// The namespace of every credential Secret of this kind, when it does not vary.
    fn credentials_namespace_fixed(operator_namespace: &str) -> Option<&str>;
}

impl BrokerObject for IdentityBroker {
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
    fn watch_api(client: Client, namespace: Option<&str>) -> Api<Self> {
        super::scoped(&client, namespace)
    }
    fn credentials_namespace_fixed(_: &str) -> Option<&str> {
        None
    }
}

impl BrokerObject for ClusterIdentityBroker {
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
    fn watch_api(client: Client, _: Option<&str>) -> Api<Self> {
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

fn controller<B: BrokerObject>(
    ctx: Arc<Context>,
    namespace: Option<&str>,
    stop: &CancellationToken,
    stores: &mut Stores,
) -> impl std::future::Future<Output = ()> + use<B> {
    let client = ctx.client.clone();
    // Spec edits (and the deletion mark) bump the generation; the controller's own status
    // writes, and labels or annotations, do not, and start no check.
    let (store, brokers) = super::reflected(B::watch_api(client.clone(), namespace), watcher::Config::default().any_semantic(), stores);
    let brokers = brokers.predicate_filter(predicates::generation.combine(predicates::finalizers), Default::default());
    let controller = Controller::for_stream(brokers, store.clone());
    let operator_namespace = ctx.config.namespace.clone();
    let secrets = match B::credentials_namespace_fixed(&operator_namespace).or(namespace) {
        Some(ns) => Api::<PartialObjectMeta<Secret>>::namespaced(client, ns),
        None => Api::all(client),
    };
    let (_, secret_events) = super::reflected(secrets, watcher::Config::default(), stores);
    controller
        .watches_stream(secret_events, move |s| brokers_using_secret(&store, &s, &operator_namespace))
        .graceful_shutdown_on(stop.clone().cancelled_owned())
        .run(guarded_reconcile::<B>, error_policy::<B>, ctx)
        .for_each(|_| future::ready(()))
}

/// The IdentityBroker status controller per scope and the ClusterIdentityBroker one, until
/// `stop` is cancelled; their stores are registered with `stores`.
pub(super) fn controllers(
    ctx: Arc<Context>,
    scopes: &[Option<String>],
    stop: &CancellationToken,
    stores: &mut Stores,
) -> impl std::future::Future<Output = ()> + use<> {
    let namespaced: Vec<_> = scopes.iter().map(|ns| controller::<IdentityBroker>(ctx.clone(), ns.as_deref(), stop, stores)).collect();
    let cluster = controller::<ClusterIdentityBroker>(ctx, None, stop, stores);
    future::join(future::join_all(namespaced), cluster).map(|_| ())
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
