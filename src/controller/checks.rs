//! Broker checks a reconcile may reuse. A connection whose broker object was found in sync is
//! not read again until its validation is due again (the refresh), unless something the sync
//! depends on changed: its spec (generation), its annotations (a person asking for a look now),
//! its secret, its broker's spec or credential, or what status records of the object. So a
//! reconcile triggered by anything else (the start-up listing of a Secret, a label edit, a
//! broker's status) costs no broker read and no claim read, and each connection's broker reads
//! stay within one per refresh interval, whatever triggers its reconciles.

use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash, Hasher},
    time::Instant,
};

use kube::ResourceExt;

use super::observation::BrokerStage;
use crate::{
    broker::{BrokerKey, SyncOutcome},
    cache::TtlCache,
    crd::connection::{AzureAdConnection, ManagementPolicy},
};

/// What a broker check of one connection depended on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckInputs {
    generation: Option<i64>,
    /// A digest of the connection's annotations: they can be large (kubectl's last-applied).
    annotations: u64,
    secret_fingerprint: String,
    broker: BrokerKey,
    known_id: Option<String>,
    synced_fingerprint: Option<String>,
    observe_only: bool,
}

impl CheckInputs {
    pub fn of(conn: &AzureAdConnection, broker: BrokerKey, secret_fingerprint: &str) -> Self {
        let mut digest = DefaultHasher::new();
        conn.annotations().hash(&mut digest);
        let synced = conn.status.as_ref().and_then(|s| s.broker.as_ref());
        Self {
            generation: conn.metadata.generation,
            annotations: digest.finish(),
            secret_fingerprint: secret_fingerprint.to_owned(),
            broker,
            known_id: synced.and_then(|b| b.id.clone()),
            synced_fingerprint: synced.and_then(|b| b.synced_fingerprint.clone()),
            observe_only: conn.spec.management_policy == ManagementPolicy::ObserveOnly,
        }
    }

    /// The inputs as the status a sync of object `id` leads to records them, so the reconcile
    /// after that status write (the start-up listing's, say) finds them unchanged.
    fn after_sync(mut self, id: &str) -> Self {
        self.known_id = Some(id.to_owned());
        if !self.observe_only {
            self.synced_fingerprint = Some(self.secret_fingerprint.clone());
        }
        self
    }
}

#[derive(Clone)]
struct Check {
    inputs: CheckInputs,
    id: String,
}

/// The last in-sync check per connection UID, kept until the connection's next real look.
#[derive(Default)]
pub struct BrokerChecks {
    checks: TtlCache<String, Check>,
}

impl BrokerChecks {
    /// The outcome of a check made with the same inputs that is still fresh: the object `id` was
    /// in sync and nothing it depended on has changed.
    pub fn reusable(&self, uid: &str, inputs: &CheckInputs) -> Option<SyncOutcome> {
        let check = self.checks.get(&uid.to_owned())?;
        (check.inputs == *inputs).then(|| SyncOutcome::in_sync(check.id))
    }

    /// Keeps the stage's outcome until `fresh_until` when the object is in sync now (found so, or
    /// just written); anything else (a failure, a difference left by ObserveOnly, a create not
    /// made yet, credentials only this answer carried) forgets the connection's last check.
    pub fn record(&self, uid: &str, inputs: CheckInputs, stage: &BrokerStage, fresh_until: Instant) {
        match stage {
            BrokerStage::Synced(SyncOutcome { id: Some(id), create_deferred: false, extras: None, wrote, differences })
                if *wrote || differences.is_empty() =>
            {
                self.checks.insert(uid.to_owned(), Check { inputs: inputs.after_sync(id), id: id.clone() }, fresh_until)
            }
            _ => self.forget(uid),
        }
    }

    pub fn forget(&self, uid: &str) {
        self.checks.remove(&uid.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::broker::BrokerError;

    fn conn(generation: i64) -> AzureAdConnection {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "idpbridge.io/v1alpha1",
            "kind": "AzureAdConnection",
            "metadata": {"name": "web", "namespace": "team-a", "uid": "u1", "generation": generation},
            "spec": {
                "azure": {"tenant": "contoso.onmicrosoft.com", "clientId": "00000000-0000-0000-0000-000000000001",
                          "clientSecretRef": {"name": "web-secret"}},
                "brokerRef": {"name": "auth0"},
                "auth0": {"name": "contoso"}
            },
            "status": {"broker": {"id": "con_1", "syncedFingerprint": "hmac-sha256:aa"}}
        }))
        .expect("a valid connection")
    }

    fn key(generation: i64) -> BrokerKey {
        BrokerKey { uid: "b1".into(), generation, credentials_fingerprint: "hmac-sha256:cc".into() }
    }

    fn in_sync() -> BrokerStage {
        BrokerStage::Synced(SyncOutcome::existing("con_1".into(), vec![], false))
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[test]
    fn an_in_sync_check_is_reused_with_the_same_inputs_only() {
        let checks = BrokerChecks::default();
        let inputs = CheckInputs::of(&conn(1), key(1), "hmac-sha256:aa");
        checks.record("u1", inputs.clone(), &in_sync(), soon());
        assert_eq!(checks.reusable("u1", &inputs), Some(SyncOutcome::in_sync("con_1".into())));
        assert_eq!(checks.reusable("u2", &inputs), None, "another connection");

        let mut annotated = conn(1);
        annotated.annotations_mut().insert("idpbridge.io/refresh".into(), "now".into());
        let changed = [
            CheckInputs::of(&conn(2), key(1), "hmac-sha256:aa"),
            CheckInputs::of(&annotated, key(1), "hmac-sha256:aa"),
            CheckInputs::of(&conn(1), key(1), "hmac-sha256:bb"),
            CheckInputs::of(&conn(1), key(2), "hmac-sha256:aa"),
        ];
        for inputs in changed {
            assert_eq!(checks.reusable("u1", &inputs), None, "{inputs:?}");
        }
        let mut moved = conn(1);
        moved.status.as_mut().and_then(|s| s.broker.as_mut()).expect("broker status").id = Some("con_2".into());
        assert_eq!(checks.reusable("u1", &CheckInputs::of(&moved, key(1), "hmac-sha256:aa")), None, "status names another object");
    }

    #[test]
    fn a_write_is_reused_once_status_records_it() {
        let checks = BrokerChecks::default();
        // A rotation: the secret is now bb, status still records aa.
        let inputs = CheckInputs::of(&conn(1), key(1), "hmac-sha256:bb");
        let written = BrokerStage::Synced(SyncOutcome::existing("con_1".into(), vec!["client_secret".into()], true));
        checks.record("u1", inputs.clone(), &written, soon());
        assert_eq!(checks.reusable("u1", &inputs), None, "status does not record the write yet");
        let mut recorded = conn(1);
        recorded.status.as_mut().and_then(|s| s.broker.as_mut()).expect("broker status").synced_fingerprint = Some("hmac-sha256:bb".into());
        let reused = checks.reusable("u1", &CheckInputs::of(&recorded, key(1), "hmac-sha256:bb")).expect("reused");
        assert!(!reused.wrote && reused.differences.is_empty() && reused.id.as_deref() == Some("con_1"));
    }

    #[test]
    fn a_created_object_is_reused_once_status_names_it() {
        let checks = BrokerChecks::default();
        let mut new = conn(1);
        new.status = None;
        checks.record(
            "u1",
            CheckInputs::of(&new, key(1), "hmac-sha256:aa"),
            &BrokerStage::Synced(SyncOutcome::created("connection", "con_1".into())),
            soon(),
        );
        assert!(checks.reusable("u1", &CheckInputs::of(&conn(1), key(1), "hmac-sha256:aa")).is_some());
    }

    #[test]
    fn failures_deferred_creates_and_observed_differences_are_never_reused_and_forget_the_last_check() {
        let checks = BrokerChecks::default();
        let inputs = CheckInputs::of(&conn(1), key(1), "hmac-sha256:aa");
        let not_reusable = [
            BrokerStage::Failed(BrokerError::Unexpected("down".into())),
            BrokerStage::Synced(SyncOutcome::create_deferred("connection")),
            BrokerStage::Synced(SyncOutcome::missing("connection")),
            BrokerStage::Synced(SyncOutcome::existing("con_1".into(), vec!["options.client_secret".into()], false)),
        ];
        for stage in not_reusable {
            checks.record("u1", inputs.clone(), &in_sync(), soon());
            checks.record("u1", inputs.clone(), &stage, soon());
            assert_eq!(checks.reusable("u1", &inputs), None, "{stage:?}");
        }
    }

    #[test]
    fn a_check_lasts_until_its_connection_is_due_a_real_look() {
        let checks = BrokerChecks::default();
        let inputs = CheckInputs::of(&conn(1), key(1), "hmac-sha256:aa");
        let past = Instant::now().checked_sub(Duration::from_secs(1)).expect("a monotonic clock past its first second");
        checks.record("u1", inputs.clone(), &in_sync(), past);
        assert_eq!(checks.reusable("u1", &inputs), None);
        checks.record("u1", inputs.clone(), &in_sync(), soon());
        checks.forget("u1");
        assert_eq!(checks.reusable("u1", &inputs), None);
    }
}
