//! The context every reconcile shares, and everything it does for them: backoff bookkeeping,
//! broker clients, Events, SCIM credentials waiting to be stored.

use std::{collections::HashMap, sync::Arc, sync::Mutex, time::Duration};

use kube::{
    Client, Resource, ResourceExt,
    runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter},
};
use tracing::warn;

use super::{checks::BrokerChecks, claims::Claims, lookups::SecretCache, pushes::Pushes, readiness::Readiness, resolve::ResolvedBroker};
use crate::{
    azure::{AzureClient, passwords::PasswordClient},
    broker::{BrokerClient, BrokerKey, BrokerRegistry, ScimCredentials},
    config::Config,
    crd::connection::AzureAdConnection,
    metrics::Metrics,
    secret::Fingerprinter,
    upstream::Upstream,
};

/// Everything a reconcile needs, built once at start-up.
pub struct Context {
    pub client: Client,
    pub metrics: Arc<Metrics>,
    /// Whether the current run's caches have synced (the `/readyz` answer).
    pub readiness: Readiness,
    pub azure: AzureClient,
    /// Microsoft Graph's password API, for AzureAdClientSecret rotations.
    pub passwords: PasswordClient,
    pub brokers: BrokerRegistry,
    /// Claims on broker objects that cannot carry an owner marker, in the operator's namespace.
    pub claims: Claims,
    pub fingerprinter: Fingerprinter,
    pub recorder: Recorder,
    pub config: Arc<Config>,
    /// What this process last wrote to each connection's broker object.
    pub pushes: Pushes,
    /// Broker objects found in sync, per connection, until the connection's next real look.
    pub checks: BrokerChecks,
    /// The Secrets reconciles read, with their data, per resourceVersion: shared by every run, so
    /// a new leadership term starts warm.
    pub secrets: Arc<SecretCache>,
    /// Consecutive transient failures per object UID, for exponential backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// SCIM credentials a broker returned (only once) that are not yet stored in their Secret,
    /// per connection UID: kept until a write succeeds.
    pending_scim: Mutex<HashMap<String, ScimCredentials>>,
    /// The broker each connection last synced through, with the credentials read for it, per
    /// connection UID: what a `deletionPolicy: Delete` cleanup falls back to when the credential
    /// Secret is already gone (a namespace deletion, where the operator may not protect it).
    last_broker: Mutex<HashMap<String, ResolvedBroker>>,
}

impl Context {
    pub fn new(client: Client, config: Arc<Config>, upstream: Upstream, fingerprinter: Fingerprinter, metrics: Arc<Metrics>) -> Self {
        let upstream = upstream.with_metrics(metrics.clone());
        let recorder = Recorder::new(client.clone(), Reporter { controller: "idp-bridge".into(), instance: Some(config.instance.clone()) });
        Self {
            metrics,
            readiness: Readiness::default(),
            azure: AzureClient::new(upstream.clone()),
            passwords: PasswordClient::new(upstream.clone()),
            brokers: BrokerRegistry::new(upstream),
            claims: Claims::new(client.clone(), &config.namespace),
            client,
            fingerprinter,
            recorder,
            config,
            pushes: Pushes::default(),
            checks: BrokerChecks::default(),
            secrets: Arc::default(),
            failures: Mutex::new(HashMap::new()),
            pending_scim: Mutex::new(HashMap::new()),
            last_broker: Mutex::new(HashMap::new()),
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

    /// Drops what is kept about a connection that is going away.
    pub fn forget(&self, conn: &AzureAdConnection) {
        self.reset_backoff(conn);
        if let Some(uid) = conn.uid() {
            self.metrics.forget_connection(&uid);
            self.pending_scim.lock().expect("scim lock").remove(&uid);
            self.checks.forget(&uid);
        }
        self.pushes.forget(conn);
    }

    /// The owner marker of `conn` ([`crate::broker::ownership::owner_marker`]).
    pub fn owner_marker(&self, conn: &AzureAdConnection) -> String {
        crate::broker::ownership::owner_marker(&self.config.cluster_name, &conn.namespace().unwrap_or_default(), &conn.name_any())
    }

    /// Remembers the broker `conn` syncs through, for its cleanup.
    pub fn remember_broker(&self, conn: &AzureAdConnection, resolved: &ResolvedBroker) {
        if let Some(uid) = conn.uid() {
            self.last_broker.lock().expect("broker lock").insert(uid, resolved.clone());
        }
    }

    /// The broker `conn` last synced through, as [`Context::remember_broker`] kept it.
    pub fn last_broker(&self, conn: &AzureAdConnection) -> Option<ResolvedBroker> {
        self.last_broker.lock().expect("broker lock").get(&conn.uid()?).cloned()
    }

    /// Forgets the broker `conn` synced through: its cleanup is done.
    pub fn release_broker(&self, conn: &AzureAdConnection) {
        if let Some(uid) = conn.uid() {
            self.last_broker.lock().expect("broker lock").remove(&uid);
        }
    }

    /// The key of a resolved broker's client: its object, generation and credential.
    pub fn broker_key(&self, resolved: &ResolvedBroker) -> BrokerKey {
        BrokerKey {
            uid: resolved.uid.clone(),
            generation: resolved.generation,
            credentials_fingerprint: self
                .fingerprinter
                .fingerprint_bytes(format!("{}\0{}", resolved.client_id, resolved.client_secret.expose()).as_bytes()),
        }
    }

    /// The shared client for a resolved broker.
    pub fn broker_client(&self, resolved: &ResolvedBroker) -> Arc<BrokerClient> {
        self.broker_client_keyed(self.broker_key(resolved), resolved)
    }

    /// [`Context::broker_client`] for a key already computed with [`Context::broker_key`].
    pub fn broker_client_keyed(&self, key: BrokerKey, resolved: &ResolvedBroker) -> Arc<BrokerClient> {
        self.brokers.get_or_insert(key, |upstream| {
            BrokerClient::build(upstream, &resolved.provider, &resolved.client_id, resolved.client_secret.clone(), resolved.rate_limit)
        })
    }

    /// Publishes an Event; a failure to publish is logged, never fatal.
    pub async fn publish(&self, conn: &AzureAdConnection, type_: EventType, reason: &str, note: &str) {
        let event = KubeEvent {
            type_,
            reason: reason.to_owned(),
            note: Some(note.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &conn.object_ref(&())).await {
            warn!(error = %e, "publishing event failed");
        }
    }

    /// Holds SCIM credentials for `conn` until they are stored.
    pub fn hold_scim(&self, conn: &AzureAdConnection, scim: ScimCredentials) {
        if let Some(uid) = conn.uid() {
            self.pending_scim.lock().expect("scim lock").insert(uid, scim);
        }
    }

    /// The SCIM credentials held for `conn`, if any.
    pub fn held_scim(&self, conn: &AzureAdConnection) -> Option<ScimCredentials> {
        self.pending_scim.lock().expect("scim lock").get(&conn.uid()?).cloned()
    }

    /// Forgets the SCIM credentials held for `conn` (stored, or no longer wanted).
    pub fn release_scim(&self, conn: &AzureAdConnection) {
        if let Some(uid) = conn.uid() {
            self.pending_scim.lock().expect("scim lock").remove(&uid);
        }
    }
}

/// Exponential backoff: `attempt` 1 is about 2 s, capped at 300 s; `unit` in [0, 1) adds jitter.
fn backoff(attempt: u32, unit: f64) -> Duration {
    let base = 2f64 * 2f64.powi(attempt.saturating_sub(1).min(16) as i32);
    let capped = base.min(300.0);
    Duration::from_secs_f64(capped * (0.8 + 0.4 * unit))
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
