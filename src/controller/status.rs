//! Pure status computation: observation in, next status out. Timestamps other than condition
//! transitions and real events (validation, broker write) never change, so a steady state
//! produces an identical status and no write.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::observation::{AppCheck, BrokerStage, CredentialsFailure, Expiry, Observation, ScimStage};
use crate::{
    crd::{
        conditions::{
            self, AZURE_APP_CONFIGURED, BROKER_SYNCED, CREDENTIALS_VALID, Desired, READY, Reason, SCIM_SECRET_READY, SECRET_EXPIRING,
            Status, set_condition,
        },
        connection::{AzureAdConnection, AzureAdConnectionStatus, BrokerObjectStatus, SecretStatus, ValidationMode},
    },
    registration::Finding,
};

/// The inputs about the resource itself.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub generation: Option<i64>,
    pub validation_mode: ValidationMode,
    pub warn_before: std::time::Duration,
    pub refresh_interval: std::time::Duration,
    pub previous: &'a AzureAdConnectionStatus,
}

impl<'a> Subject<'a> {
    pub fn of(conn: &AzureAdConnection, previous: &'a AzureAdConnectionStatus) -> Self {
        Self {
            generation: conn.metadata.generation,
            validation_mode: conn.spec.validation.mode,
            warn_before: conn.spec.warn_before(),
            refresh_interval: conn.spec.refresh_interval(),
            previous,
        }
    }
}

/// Whether someone changed the broker object outside idp-bridge: it differs from the desired
/// state although neither the spec nor the secret changed since the last sync.
pub fn drifted(subject: &Subject<'_>, observation: &Observation) -> bool {
    let BrokerStage::Synced(outcome) = &observation.broker else { return false };
    let previous = subject.previous;
    let Some(last_sync) = previous.broker.as_ref() else { return false };
    let unchanged_inputs = previous.observed_generation == subject.generation
        && last_sync.synced_fingerprint.is_some()
        && last_sync.synced_fingerprint == observation.fingerprint;
    unchanged_inputs && last_sync.id.is_some() && !outcome.differences.is_empty()
}

fn credentials_condition(subject: &Subject<'_>, observation: &Observation) -> Desired {
    match &observation.credentials {
        Ok(_) => match subject.validation_mode {
            ValidationMode::ClientCredentials => {
                Desired::new(CREDENTIALS_VALID, Status::True, Reason::Valid, "Azure issued a token for this client secret")
            }
            ValidationMode::Discovery => Desired::new(
                CREDENTIALS_VALID,
                Status::True,
                Reason::TenantResolved,
                "the tenant was resolved; the secret is not checked (validation.mode: Discovery)",
            ),
            ValidationMode::None => Desired::new(
                CREDENTIALS_VALID,
                Status::True,
                Reason::ValidationSkipped,
                "not checked against Azure (validation.mode: None)",
            ),
        },
        Err(failure) => {
            // A transient Azure failure says nothing about the secret: keep a known verdict.
            let status = if failure.is_transient() { Status::Unknown } else { Status::False };
            Desired::new(CREDENTIALS_VALID, status, failure.reason(), failure.message())
        }
    }
}

fn broker_condition(subject: &Subject<'_>, observation: &Observation) -> Desired {
    match &observation.broker {
        BrokerStage::NotAttempted => {
            let cause = observation
                .credentials
                .as_ref()
                .err()
                .map(CredentialsFailure::reason)
                .map_or("the credentials were not confirmed", Reason::as_str);
            Desired::new(
                BROKER_SYNCED,
                Status::False,
                Reason::NotPushed,
                format!("not pushed ({cause}); the broker keeps its previous value"),
            )
        }
        BrokerStage::Unresolved(problem) => Desired::new(BROKER_SYNCED, Status::False, problem.reason, problem.message.clone()),
        BrokerStage::Failed(error) => Desired::new(BROKER_SYNCED, Status::False, error.reason(), error.to_string()),
        BrokerStage::Synced(outcome) if observation.observe_only => {
            if outcome.differences.is_empty() {
                Desired::new(BROKER_SYNCED, Status::True, Reason::InSync, "the broker matches the desired state (ObserveOnly)")
            } else {
                Desired::new(
                    BROKER_SYNCED,
                    Status::False,
                    Reason::Drifted,
                    format!("ObserveOnly: would change {}", outcome.differences.join(", ")),
                )
            }
        }
        BrokerStage::Synced(outcome) => {
            let message = match (outcome.wrote, drifted(subject, observation)) {
                (true, true) => format!("corrected drift in {}", outcome.differences.join(", ")),
                (true, false) => format!("updated {}", outcome.differences.join(", ")),
                (false, _) => "the broker holds the desired state".to_owned(),
            };
            Desired::new(BROKER_SYNCED, Status::True, Reason::Synced, message)
        }
    }
}

fn expiry_condition(expiry: &Expiry, warn_before: std::time::Duration, now: jiff::Timestamp) -> Desired {
    match expiry {
        Expiry::Disabled => {
            Desired::new(SECRET_EXPIRING, Status::Unknown, Reason::ExpiryUnknown, "expiry tracking is off (expiry.source: None)")
        }
        Expiry::Unknown(message) | Expiry::Unavailable(message) => {
            Desired::new(SECRET_EXPIRING, Status::Unknown, Reason::ExpiryUnknown, message.clone())
        }
        Expiry::Invalid(problem) => Desired::new(SECRET_EXPIRING, Status::Unknown, problem.reason, problem.message.clone()),
        Expiry::Known { expires_at, source, note, .. } => {
            let left = expires_at.as_second() - now.as_second();
            let suffix = format!(" (from {source}{})", note.as_deref().map(|n| format!("; {n}")).unwrap_or_default());
            if left <= 0 {
                Desired::new(
                    SECRET_EXPIRING,
                    Status::True,
                    Reason::SecretExpired,
                    format!("the client secret expired at {expires_at}{suffix}"),
                )
            } else if left <= warn_before.as_secs() as i64 {
                let days = left / 86_400;
                let message = format!("the client secret expires at {expires_at}, in {days} days{suffix}");
                Desired::new(SECRET_EXPIRING, Status::True, Reason::SecretExpiring, message)
            } else {
                Desired::new(
                    SECRET_EXPIRING,
                    Status::False,
                    Reason::SecretValid,
                    format!("the client secret expires at {expires_at}{suffix}"),
                )
            }
        }
    }
}

/// AzureAppConfigured: False with the first finding's reason (the message lists every finding
/// and its fix), True when nothing blocks sign-in, Unknown when the registration could not be
/// checked. While Graph is unavailable the previous verdict stands.
fn app_condition(app: &AppCheck, previous: &[Condition]) -> Desired {
    let unreadable = |why: &str| Desired::new(AZURE_APP_CONFIGURED, Status::Unknown, Reason::RegistrationUnreadable, why);
    match app {
        AppCheck::Checked { report, manage_failed, .. } => {
            let notes = report.unchecked.iter().cloned();
            match report.findings.first() {
                Some(first) => {
                    let manage = manage_failed.iter().map(|why| format!("azure.registration Manage could not add the redirect URI: {why}"));
                    let parts: Vec<String> = report.findings.iter().map(Finding::message).chain(manage).chain(notes).collect();
                    Desired::new(AZURE_APP_CONFIGURED, Status::False, first.reason(), parts.join("; "))
                }
                None if report.unreadable.is_some() => unreadable(&notes.collect::<Vec<_>>().join("; ")),
                None => {
                    let checked = "the app registration has the broker's redirect URI, the account type, the delegated permissions with admin consent, and an enabled service principal";
                    let message = std::iter::once(checked.to_owned()).chain(notes).collect::<Vec<_>>().join("; ");
                    Desired::new(AZURE_APP_CONFIGURED, Status::True, Reason::RegistrationConfigured, message)
                }
            }
        }
        AppCheck::Unreadable(why) => unreadable(why),
        AppCheck::Unavailable { why, .. } => conditions::find(previous, AZURE_APP_CONFIGURED)
            .and_then(desired_from)
            .unwrap_or_else(|| unreadable(&format!("the app registration could not be read: {why}"))),
    }
}

/// A stored condition as a `Desired`, when its status and reason are the operator's own.
fn desired_from(condition: &Condition) -> Option<Desired> {
    let status = [Status::True, Status::False, Status::Unknown].into_iter().find(|s| s.as_str() == condition.status)?;
    let reason = Reason::ALL.iter().copied().find(|r| r.as_str() == condition.reason)?;
    let type_ = [AZURE_APP_CONFIGURED].into_iter().find(|t| *t == condition.type_)?;
    Some(Desired::new(type_, status, reason, condition.message.clone()))
}

/// Ready summarises: credentials first, then expiry, then the broker, then the app
/// registration (only a definite misconfiguration counts: users cannot sign in).
fn ready_condition(credentials: &Desired, expiring: &Desired, broker: &Desired, app: &Desired) -> Desired {
    if credentials.status != Status::True {
        return Desired::new(READY, Status::False, credentials.reason, credentials.message.clone());
    }
    if expiring.reason == Reason::SecretExpired {
        return Desired::new(READY, Status::False, Reason::SecretExpired, expiring.message.clone());
    }
    if broker.status != Status::True {
        return Desired::new(READY, Status::False, broker.reason, broker.message.clone());
    }
    if app.status == Status::False {
        return Desired::new(READY, Status::False, app.reason, app.message.clone());
    }
    Desired::new(READY, Status::True, Reason::Ready, "validated and synced to the broker")
}

/// The next status after a reconcile.
pub fn compute(subject: &Subject<'_>, observation: &Observation, now: jiff::Timestamp) -> AzureAdConnectionStatus {
    let previous = subject.previous;
    let expiry = in_whole_seconds(&observation.expiry);
    let credentials = credentials_condition(subject, observation);
    let expiring = expiry_condition(&expiry, subject.warn_before, now);
    let broker = broker_condition(subject, observation);
    let app = app_condition(&observation.app, &previous.conditions);
    let ready = ready_condition(&credentials, &expiring, &broker, &app);

    let mut conditions = previous.conditions.clone();
    for desired in [&ready, &credentials, &expiring, &broker, &app] {
        let _ = set_condition(&mut conditions, desired, subject.generation, now);
    }
    // SCIM has a condition of its own and leaves Ready alone: a SCIM Secret that cannot be
    // written never holds up the client secret's sync.
    match &observation.scim {
        ScimStage::Off => conditions.retain(|c| c.type_ != SCIM_SECRET_READY),
        ScimStage::Skipped => {}
        ScimStage::Checked { condition, .. } => {
            let _ = set_condition(&mut conditions, condition, subject.generation, now);
        }
    }

    let validation = observation.credentials.as_ref().ok();
    let tenant_id = validation.and_then(|v| v.tenant_id.clone()).or_else(|| previous.tenant_id.clone());
    let last_validated_time = match (validation, subject.validation_mode) {
        (Some(v), ValidationMode::ClientCredentials | ValidationMode::Discovery) => {
            Some(Time(v.validated_at.round(jiff::Unit::Second).unwrap_or(v.validated_at)))
        }
        _ => previous.last_validated_time.clone(),
    };

    let secret = {
        let mut s = previous.secret.clone().unwrap_or_default();
        if observation.fingerprint.is_some() {
            s.fingerprint.clone_from(&observation.fingerprint);
        }
        match &expiry {
            Expiry::Known { expires_at, source, key_id, .. } => {
                s.expires_at = Some(Time(*expires_at));
                s.expiry_source = Some((*source).to_owned());
                s.key_id.clone_from(key_id);
            }
            _ => {
                s.expires_at = None;
                s.expiry_source = None;
                s.key_id = None;
            }
        }
        (s != SecretStatus::default()).then_some(s)
    };

    let broker_status = {
        let mut b = previous.broker.clone().unwrap_or_default();
        if let BrokerStage::Synced(outcome) = &observation.broker {
            if outcome.id.is_some() {
                b.id.clone_from(&outcome.id);
            }
            if !observation.observe_only {
                b.synced_fingerprint.clone_from(&observation.fingerprint);
            }
            if outcome.wrote {
                b.synced_at = Some(Time(now.round(jiff::Unit::Second).unwrap_or(now)));
            }
        }
        (b != BrokerObjectStatus::default()).then_some(b)
    };

    AzureAdConnectionStatus {
        observed_generation: subject.generation,
        conditions,
        tenant_id,
        secret,
        broker: broker_status,
        last_validated_time,
    }
}

/// The expiry as status stores it: Kubernetes serialises whole seconds, so a date kept with
/// Graph's sub-second precision would differ from its stored self at every reconcile and send a
/// status patch that changes nothing. Truncated, like the serialisation.
fn in_whole_seconds(expiry: &Expiry) -> Expiry {
    match expiry {
        Expiry::Known { expires_at, source, key_id, note } => Expiry::Known {
            expires_at: jiff::Timestamp::from_second(expires_at.as_second()).unwrap_or(*expires_at),
            source,
            key_id: key_id.clone(),
            note: note.clone(),
        },
        other => other.clone(),
    }
}

/// The status of a suspended connection: Ready says so; the rest is left as it was.
pub fn suspended(previous: &AzureAdConnectionStatus, generation: Option<i64>, now: jiff::Timestamp) -> AzureAdConnectionStatus {
    let mut next = previous.clone();
    let desired = Desired::new(
        READY,
        Status::False,
        Reason::Suspended,
        "reconciliation is suspended (spec.suspend): no calls to Azure or the broker",
    );
    let _ = set_condition(&mut next.conditions, &desired, generation, now);
    next.observed_generation = generation;
    next
}

/// What an Event says: a condition that changed status or reason, a broker write, drift.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub warning: bool,
    pub reason: String,
    pub note: String,
}

/// The transitions between two condition lists, in a stable order.
pub fn transitions(before: &[Condition], after: &[Condition]) -> Vec<Notice> {
    after
        .iter()
        .filter(|new| conditions::find(before, &new.type_).is_none_or(|old| old.status != new.status || old.reason != new.reason))
        // Ready repeats another condition's reason, except when everything is fine.
        .filter(|new| new.type_ != READY || new.status == "True" || new.reason == Reason::Suspended.as_str())
        .filter(|new| !(matches!(new.type_.as_str(), SECRET_EXPIRING | AZURE_APP_CONFIGURED) && new.status == "Unknown"))
        .map(|new| {
            let warning = match new.type_.as_str() {
                SECRET_EXPIRING => new.status == "True",
                _ => new.status != "True",
            };
            Notice { warning, reason: new.reason.clone(), note: format!("{}: {}", new.type_, new.message) }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        azure::{AzureError, Validation},
        broker::{BrokerError, SyncOutcome},
        controller::observation::Problem,
    };
    use std::time::Duration;

    const GUID: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

    fn t(s: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn subject(previous: &AzureAdConnectionStatus) -> Subject<'_> {
        Subject {
            generation: Some(1),
            validation_mode: ValidationMode::ClientCredentials,
            warn_before: Duration::from_secs(30 * 86_400),
            refresh_interval: Duration::from_secs(3600),
            previous,
        }
    }

    fn valid() -> Result<Validation, CredentialsFailure> {
        Ok(Validation { tenant_id: Some(GUID.into()), validated_at: t(0), trusted_until: None })
    }

    fn synced(wrote: bool) -> BrokerStage {
        BrokerStage::Synced(SyncOutcome {
            id: Some("con_1".into()),
            differences: if wrote { vec!["options.client_secret".into()] } else { vec![] },
            wrote,
            extras: None,
            create_deferred: false,
        })
    }

    fn observation(credentials: Result<Validation, CredentialsFailure>, broker: BrokerStage) -> Observation {
        Observation {
            fingerprint: Some("fp-1".into()),
            credentials,
            expiry: Expiry::Unknown("no date".into()),
            broker,
            scim: ScimStage::Off,
            observe_only: false,
            app: AppCheck::Unreadable("not checked".into()),
        }
    }

    fn cond<'a>(s: &'a AzureAdConnectionStatus, type_: &str) -> &'a Condition {
        conditions::find(&s.conditions, type_).unwrap()
    }

    #[test]
    fn healthy_connection_is_ready_and_stable() {
        let first = compute(&subject(&AzureAdConnectionStatus::default()), &observation(valid(), synced(true)), t(1));
        assert_eq!(cond(&first, READY).status, "True");
        assert_eq!(first.tenant_id.as_deref(), Some(GUID));
        assert_eq!(first.broker.as_ref().unwrap().synced_fingerprint.as_deref(), Some("fp-1"));
        assert_eq!(first.broker.as_ref().unwrap().id.as_deref(), Some("con_1"));
        // The next reconcile, with nothing changed, yields exactly the same status.
        let second = compute(&subject(&first), &observation(valid(), synced(false)), t(500));
        let third = compute(&subject(&second), &observation(valid(), synced(false)), t(900));
        assert_eq!(second, third);
        assert_eq!(second.broker.as_ref().unwrap().synced_at, first.broker.as_ref().unwrap().synced_at);
    }

    #[test]
    fn invalid_secret_is_not_pushed_and_keeps_the_synced_fingerprint() {
        let good = compute(&subject(&AzureAdConnectionStatus::default()), &observation(valid(), synced(true)), t(1));
        let failure = CredentialsFailure::Azure(AzureError::Aadsts {
            code: 7000215,
            error: "invalid_client".into(),
            description: "Invalid client secret provided.".into(),
        });
        let mut obs = observation(Err(failure), BrokerStage::NotAttempted);
        obs.fingerprint = Some("fp-2".into());
        let bad = compute(&subject(&good), &obs, t(2));
        assert_eq!(cond(&bad, READY).reason, "InvalidSecret");
        assert_eq!(cond(&bad, CREDENTIALS_VALID).status, "False");
        assert_eq!(cond(&bad, BROKER_SYNCED).reason, "NotPushed");
        assert_eq!(bad.secret.as_ref().unwrap().fingerprint.as_deref(), Some("fp-2"));
        assert_eq!(bad.broker.as_ref().unwrap().synced_fingerprint.as_deref(), Some("fp-1"), "broker still holds the old secret");
        assert_eq!(bad.tenant_id.as_deref(), Some(GUID), "tenant is remembered");
    }

    #[test]
    fn transient_azure_failure_is_unknown_not_false() {
        let failure = CredentialsFailure::Azure(AzureError::Throttled { retry_after: Some(Duration::from_secs(5)) });
        let s = compute(&subject(&AzureAdConnectionStatus::default()), &observation(Err(failure), BrokerStage::NotAttempted), t(1));
        assert_eq!(cond(&s, CREDENTIALS_VALID).status, "Unknown");
        assert_eq!(cond(&s, READY).reason, "AzureThrottled");
    }

    #[test]
    fn secret_problems_and_broker_failures_name_their_reason() {
        let missing = CredentialsFailure::Secret(Problem::new(Reason::SecretNotFound, "Secret app/x not found"));
        let s = compute(&subject(&AzureAdConnectionStatus::default()), &observation(Err(missing), BrokerStage::NotAttempted), t(1));
        assert_eq!(cond(&s, READY).reason, "SecretNotFound");
        let s = compute(
            &subject(&AzureAdConnectionStatus::default()),
            &observation(valid(), BrokerStage::Failed(BrokerError::Auth("Unauthorized".into()))),
            t(1),
        );
        assert_eq!(cond(&s, READY).reason, "BrokerAuthFailed");
        assert_eq!(cond(&s, CREDENTIALS_VALID).status, "True");
        let s = compute(
            &subject(&AzureAdConnectionStatus::default()),
            &observation(valid(), BrokerStage::Unresolved(Problem::new(Reason::BrokerTypeMismatch, "x"))),
            t(1),
        );
        assert_eq!(cond(&s, BROKER_SYNCED).reason, "BrokerTypeMismatch");
    }

    #[test]
    fn observe_only_reports_drift_without_claiming_a_sync() {
        let mut obs = observation(
            valid(),
            BrokerStage::Synced(SyncOutcome {
                id: Some("con_1".into()),
                differences: vec!["options.ext_groups".into()],
                wrote: false,
                extras: None,
                create_deferred: false,
            }),
        );
        obs.observe_only = true;
        let s = compute(&subject(&AzureAdConnectionStatus::default()), &obs, t(1));
        assert_eq!(cond(&s, BROKER_SYNCED).reason, "Drifted");
        assert!(cond(&s, BROKER_SYNCED).message.contains("options.ext_groups"));
        assert_eq!(cond(&s, READY).status, "False");
        assert!(s.broker.as_ref().unwrap().synced_fingerprint.is_none());
    }

    #[test]
    fn expiry_windows() {
        let day = 86_400;
        let warn = Duration::from_secs(30 * day as u64);
        let known = |at: i64| Expiry::Known { expires_at: t(at), source: "Annotation", key_id: None, note: None };
        assert_eq!(expiry_condition(&known(60 * day), warn, t(0)).status, Status::False);
        let soon = expiry_condition(&known(10 * day), warn, t(0));
        assert_eq!((soon.status, soon.reason), (Status::True, Reason::SecretExpiring));
        assert!(soon.message.contains("in 10 days"));
        let gone = expiry_condition(&known(-1), warn, t(0));
        assert_eq!(gone.reason, Reason::SecretExpired);
        let mut obs = observation(valid(), synced(false));
        obs.expiry = known(-1);
        let s = compute(&subject(&AzureAdConnectionStatus::default()), &obs, t(0));
        assert_eq!(cond(&s, READY).reason, "SecretExpired", "expired is not Ready even if the broker holds it");
        assert_eq!(s.secret.as_ref().unwrap().expiry_source.as_deref(), Some("Annotation"));
    }

    /// The status as the API server gives it back: Kubernetes times in whole seconds.
    fn stored(status: &AzureAdConnectionStatus) -> AzureAdConnectionStatus {
        serde_json::from_value(serde_json::to_value(status).unwrap()).unwrap()
    }

    #[test]
    fn a_sub_second_expiry_is_stored_once_and_then_left_alone() {
        let precise = t(90 * 86_400) + jiff::SignedDuration::from_millis(123);
        let mut obs = observation(valid(), synced(false));
        obs.expiry = Expiry::Known { expires_at: precise, source: "Graph", key_id: Some("k1".into()), note: None };
        let first = stored(&compute(&subject(&AzureAdConnectionStatus::default()), &obs, t(1)));
        assert_eq!(first.secret.as_ref().unwrap().expires_at.as_ref().unwrap().0.as_second(), precise.as_second());
        // A no-op reconcile: the status it computes is the one already stored, so nothing is sent.
        let again = compute(&subject(&first), &obs, t(600));
        assert_eq!(again, first);
    }

    #[test]
    fn an_outage_keeps_the_last_known_expiry_without_new_events() {
        let mut obs = observation(valid(), synced(false));
        obs.expiry = Expiry::Known { expires_at: t(10 * 86_400), source: "Graph", key_id: Some("k1".into()), note: None };
        let before = stored(&compute(&subject(&AzureAdConnectionStatus::default()), &obs, t(1)));
        assert_eq!(cond(&before, SECRET_EXPIRING).reason, "SecretExpiring");
        let outage = |previous: &AzureAdConnectionStatus| {
            let down = CredentialsFailure::Azure(AzureError::Unreachable(crate::upstream::TransportError::Connect("refused".into())));
            let mut obs = observation(Err(down), BrokerStage::NotAttempted);
            obs.expiry = Expiry::Unavailable("Azure is unreachable".into()).or_last_known(previous.secret.as_ref());
            obs
        };
        let during = stored(&compute(&subject(&before), &outage(&before), t(60)));
        assert_eq!(during.secret, before.secret, "the date, its source and key id stay");
        let expiring = cond(&during, SECRET_EXPIRING);
        assert_eq!((expiring.status.as_str(), expiring.reason.as_str()), ("True", "SecretExpiring"));
        assert!(expiring.message.contains("cannot be asked now"), "{}", expiring.message);
        assert!(transitions(&before.conditions, &during.conditions).iter().all(|e| e.reason != "SecretExpiring"), "no second Warning");
        let later = compute(&subject(&during), &outage(&during), t(120));
        assert_eq!(later, during, "the outage goes on: nothing to write");
        // Nothing known before: Unknown, as without an outage.
        let unknown = Expiry::Unavailable("Graph is down".into()).or_last_known(None);
        assert_eq!(unknown, Expiry::Unknown("Graph is down".into()));
    }

    #[test]
    fn transitions_only_for_changes() {
        let first = compute(&subject(&AzureAdConnectionStatus::default()), &observation(valid(), synced(true)), t(1));
        let events = transitions(&[], &first.conditions);
        assert!(events.iter().any(|e| e.reason == "Ready" && !e.warning));
        assert!(events.iter().any(|e| e.reason == "Valid"));
        let again = compute(&subject(&first), &observation(valid(), synced(false)), t(2));
        assert!(transitions(&first.conditions, &again.conditions).is_empty());
        let failure =
            CredentialsFailure::Azure(AzureError::Aadsts { code: 7000222, error: "invalid_client".into(), description: "expired".into() });
        let bad = compute(&subject(&again), &observation(Err(failure), BrokerStage::NotAttempted), t(3));
        let events = transitions(&again.conditions, &bad.conditions);
        assert!(events.iter().all(|e| e.warning));
        assert!(events.iter().any(|e| e.reason == "SecretExpired"));
        assert!(!events.iter().any(|e| e.note.starts_with("Ready:")), "Ready's failure repeats another condition");
    }

    #[test]
    fn suspension_touches_only_ready() {
        let first = compute(&subject(&AzureAdConnectionStatus::default()), &observation(valid(), synced(true)), t(1));
        let s = suspended(&first, Some(2), t(5));
        assert_eq!(cond(&s, READY).reason, "Suspended");
        assert_eq!(cond(&s, CREDENTIALS_VALID), cond(&first, CREDENTIALS_VALID));
    }

    fn checked(findings: Vec<crate::registration::Finding>) -> AppCheck {
        AppCheck::Checked {
            report: crate::registration::Report { findings, ..Default::default() },
            added_redirect_uri: None,
            manage_failed: None,
        }
    }

    fn with_app(app: AppCheck) -> Observation {
        let mut obs = observation(valid(), synced(false));
        obs.app = app;
        obs
    }

    #[test]
    fn a_misconfigured_registration_makes_ready_false_with_the_exact_fix() {
        use crate::registration::Finding;
        let uri = "https://acme.eu.auth0.com/login/callback";
        let findings = vec![Finding::RedirectUriMissing { uri: uri.into() }, Finding::ConsentMissing(vec!["Directory.Read.All".into()])];
        let s = compute(&subject(&AzureAdConnectionStatus::default()), &with_app(checked(findings)), t(1));
        let app = cond(&s, AZURE_APP_CONFIGURED);
        assert_eq!((app.status.as_str(), app.reason.as_str()), ("False", "RedirectUriMissing"));
        assert!(app.message.contains(uri) && app.message.contains("Directory.Read.All"), "every finding: {}", app.message);
        assert_eq!(cond(&s, READY).reason, "RedirectUriMissing");
        assert_eq!(cond(&s, READY).status, "False");
        let events = transitions(&[], &s.conditions);
        assert!(events.iter().any(|e| e.reason == "RedirectUriMissing" && e.warning), "{events:?}");
    }

    #[test]
    fn an_unreadable_registration_is_unknown_and_leaves_ready_alone() {
        let s = compute(
            &subject(&AzureAdConnectionStatus::default()),
            &with_app(AppCheck::Unreadable("grant Application.Read.All".into())),
            t(1),
        );
        let app = cond(&s, AZURE_APP_CONFIGURED);
        assert_eq!((app.status.as_str(), app.reason.as_str()), ("Unknown", "RegistrationUnreadable"));
        assert!(app.message.contains("Application.Read.All"));
        assert_eq!(cond(&s, READY).status, "True");
        assert!(transitions(&[], &s.conditions).iter().all(|e| e.reason != "RegistrationUnreadable"), "no Event for Unknown");
    }

    #[test]
    fn a_graph_outage_keeps_the_last_registration_verdict() {
        use crate::registration::Finding;
        let before =
            compute(&subject(&AzureAdConnectionStatus::default()), &with_app(checked(vec![Finding::ServicePrincipalDisabled])), t(1));
        let outage = AppCheck::Unavailable { why: "Microsoft Graph is throttling requests".into(), retry_after: None };
        let during = compute(&subject(&before), &with_app(outage.clone()), t(60));
        assert_eq!(during, before, "nothing to write, Ready stays False");
        let fresh = compute(&subject(&AzureAdConnectionStatus::default()), &with_app(outage), t(1));
        assert_eq!(cond(&fresh, AZURE_APP_CONFIGURED).status, "Unknown");
        assert_eq!(cond(&fresh, READY).status, "True");
    }

    #[test]
    fn a_fixed_registration_is_configured_and_announced() {
        use crate::registration::Finding;
        let before =
            compute(&subject(&AzureAdConnectionStatus::default()), &with_app(checked(vec![Finding::ServicePrincipalMissing])), t(1));
        let after = compute(&subject(&before), &with_app(checked(vec![])), t(60));
        let app = cond(&after, AZURE_APP_CONFIGURED);
        assert_eq!((app.status.as_str(), app.reason.as_str()), ("True", "RegistrationConfigured"));
        assert_eq!(cond(&after, READY).status, "True");
        let events = transitions(&before.conditions, &after.conditions);
        assert!(events.iter().any(|e| e.reason == "RegistrationConfigured" && !e.warning), "{events:?}");
    }
}
