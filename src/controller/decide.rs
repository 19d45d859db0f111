//! The pure decision of a reconcile: from what the stages observed and the previous status, the
//! next status, the Events to publish and when to look again. No I/O, no clock, no randomness:
//! the reconcile carries the decision out.

use std::time::Duration;

use super::{
    observation::{AppCheck, BrokerStage, CredentialsFailure, Expiry, Observation, ScimStage},
    status::{self, Notice, Subject},
};
use crate::crd::connection::AzureAdConnectionStatus;

/// What a reconcile does once the stages have run.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The status to write (the write is skipped when it equals the previous one).
    pub status: AzureAdConnectionStatus,
    /// Published after the status write, in this order.
    pub events: Vec<Notice>,
    pub next: Next,
}

/// When to reconcile again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Healthy, or a problem only a user can fix: the refresh `interval` (jittered, never
    /// later), or at `threshold` when that comes first: an expiry threshold, or the moment the
    /// cached validation runs out, so the refresh finds it expired and asks Azure again. Resets
    /// the backoff.
    Refresh { interval: Duration, threshold: Option<Duration> },
    /// A transient failure: exponential backoff or, when the upstream said when (`at_least`,
    /// its Retry-After), at that time.
    Backoff { at_least: Duration },
    /// Suspended: only a change to the connection brings it back.
    AwaitChange,
}

/// The decision for an active connection.
pub fn decide(subject: &Subject<'_>, observation: &Observation, now: jiff::Timestamp) -> Decision {
    let status = status::compute(subject, observation, now);
    let mut events = status::transitions(&subject.previous.conditions, &status.conditions);
    events.extend(broker_events(subject, observation));
    if let ScimStage::Checked { regenerated: true, .. } = observation.scim {
        events.push(Notice {
            warning: true,
            reason: "ScimSecretRegenerated".into(),
            note: "Cloudflare issued a new SCIM token (no stored one was found; the previous token no longer works): enter the SCIM Secret's scim-secret in Entra ID's provisioning settings".into(),
        });
    }
    events.extend(registration_events(observation));
    Decision { status, events, next: next(subject, observation, now) }
}

/// The decision for a suspended connection: Ready says so, nothing is called.
pub fn suspended(subject: &Subject<'_>, now: jiff::Timestamp) -> Decision {
    let status = status::suspended(subject.previous, subject.generation, now);
    let events = status::transitions(&subject.previous.conditions, &status.conditions);
    Decision { status, events, next: Next::AwaitChange }
}

/// Events for what happened on the broker: a write (as drift correction when someone had
/// edited the object). In ObserveOnly, drift is reported by the BrokerSynced condition, whose
/// transition already makes an Event; repeating it at every refresh would be noise.
fn broker_events(subject: &Subject<'_>, observation: &Observation) -> Vec<Notice> {
    let BrokerStage::Synced(outcome) = &observation.broker else { return Vec::new() };
    if observation.observe_only || !outcome.wrote {
        return Vec::new();
    }
    let fields = outcome.differences.join(", ");
    if status::drifted(subject, observation) {
        vec![
            Notice {
                warning: true,
                reason: "Drifted".into(),
                note: format!("the broker object was changed outside idp-bridge; corrected: {fields}"),
            },
            Notice { warning: false, reason: "DriftCorrected".into(), note: format!("{fields} on the broker") },
        ]
    } else {
        vec![Notice { warning: false, reason: "BrokerUpdated".into(), note: format!("{fields} on the broker") }]
    }
}

/// The redirect URI `azure.registration: Manage` added to the app registration.
fn registration_events(observation: &Observation) -> Vec<Notice> {
    let AppCheck::Checked { added_redirect_uri: Some(uri), .. } = &observation.app else { return Vec::new() };
    vec![Notice {
        warning: false,
        reason: "RedirectUriAdded".into(),
        note: format!("added {uri} to the app registration's Web redirect URIs (azure.registration: Manage)"),
    }]
}

/// Transient failures back off (at least their Retry-After); everything else, permanent
/// problems included, waits for the refresh or for a change.
fn next(subject: &Subject<'_>, observation: &Observation, now: jiff::Timestamp) -> Next {
    let transient = match (&observation.credentials, &observation.broker) {
        (Err(CredentialsFailure::Azure(e)), _) if e.is_transient() => Some(e.retry_after()),
        (_, BrokerStage::Failed(e)) if e.is_transient() => Some(e.retry_after()),
        _ if observation.scim.failed() => Some(None),
        _ => None,
    };
    match transient {
        Some(retry_after) => Next::Backoff { at_least: retry_after.unwrap_or_default() },
        None => {
            let thresholds = [
                expiry_threshold(&observation.expiry, subject.warn_before, now),
                cache_end(observation, now),
                registration_retry(observation),
            ];
            Next::Refresh { interval: subject.refresh_interval, threshold: thresholds.into_iter().flatten().min() }
        }
    }
}

/// A registration Graph is throttling is read again once its Retry-After ends. One Graph could
/// not answer (down, no Retry-After) keeps its last verdict until the next refresh, like the
/// expiry: retrying sooner would run the whole reconcile, broker read included, for every
/// connection of the tenant throughout a Graph outage.
fn registration_retry(observation: &Observation) -> Option<Duration> {
    let AppCheck::Unavailable { retry_after, .. } = &observation.app else { return None };
    *retry_after
}

/// The time until the cached validation runs out, one second late so it certainly has.
fn cache_end(observation: &Observation, now: jiff::Timestamp) -> Option<Duration> {
    Some(observation.credentials.as_ref().ok()?.trusted_for(now)? + Duration::from_secs(1))
}

/// How long a validation (and the expiry read with it) is trusted: 80 to 90% of the refresh
/// interval (`unit` in [0, 1) spreads connections apart). The refresh is scheduled at its end
/// plus a second, so Azure and Graph are asked again within every `refreshInterval`, however
/// the reconciles in between were triggered.
pub fn cache_ttl(interval: Duration, unit: f64) -> Duration {
    interval.mul_f64(0.8 + unit * 0.1)
}

/// The time until the next expiry threshold (the warning window opening, then the expiry
/// itself), one second late so it has certainly passed when we look.
fn expiry_threshold(expiry: &Expiry, warn_before: Duration, now: jiff::Timestamp) -> Option<Duration> {
    let Expiry::Known { expires_at, .. } = expiry else { return None };
    let until_expiry = expires_at.as_second() - now.as_second();
    let until_warning = until_expiry - warn_before.as_secs() as i64;
    [until_warning, until_expiry].into_iter().find(|t| *t > 0).map(|t| Duration::from_secs(t as u64 + 1))
}

/// The delay of a refresh: 90 to 100% of the interval (`unit` in [0, 1)), so it is never late,
/// capped by the threshold, which is never jittered.
pub fn refresh_delay(interval: Duration, threshold: Option<Duration>, unit: f64) -> Duration {
    let jittered = interval.mul_f64(0.9 + unit * 0.1);
    threshold.map_or(jittered, |t| jittered.min(t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        azure::{AzureError, Validation},
        broker::{BrokerError, SyncOutcome},
        controller::observation::Problem,
        crd::{
            conditions::{self, BROKER_SYNCED, READY, Reason},
            connection::ValidationMode,
        },
        upstream::TransportError,
    };

    const HOUR: Duration = Duration::from_secs(3600);
    const DAY: i64 = 86_400;

    fn t(s: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn subject(previous: &AzureAdConnectionStatus) -> Subject<'_> {
        Subject {
            generation: Some(1),
            validation_mode: ValidationMode::ClientCredentials,
            warn_before: Duration::from_secs(30 * DAY as u64),
            refresh_interval: HOUR,
            previous,
        }
    }

    fn valid() -> Result<Validation, CredentialsFailure> {
        Ok(Validation { tenant_id: Some("72f988bf-86f1-41af-91ab-2d7cd011db47".into()), validated_at: t(0), trusted_until: None })
    }

    fn synced(differences: &[&str], wrote: bool) -> BrokerStage {
        BrokerStage::Synced(SyncOutcome {
            id: Some("con_1".into()),
            differences: differences.iter().map(|d| d.to_string()).collect(),
            wrote,
            extras: None,
            create_deferred: false,
        })
    }

    fn observation(credentials: Result<Validation, CredentialsFailure>, broker: BrokerStage) -> Observation {
        Observation {
            fingerprint: Some("fp-1".into()),
            credentials,
            expiry: Expiry::Disabled,
            broker,
            scim: ScimStage::Off,
            observe_only: false,
            app: AppCheck::Unreadable("not checked".into()),
        }
    }

    fn reasons(decision: &Decision) -> Vec<&str> {
        decision.events.iter().map(|e| e.reason.as_str()).collect()
    }

    /// The status after a first successful sync of fp-1 at generation 1, and one reconcile
    /// that found the broker as written.
    fn in_sync() -> AzureAdConnectionStatus {
        let first =
            decide(&subject(&AzureAdConnectionStatus::default()), &observation(valid(), synced(&["options.client_secret"], true)), t(1));
        decide(&subject(&first.status), &observation(valid(), synced(&[], false)), t(2)).status
    }

    #[test]
    fn steady_state_publishes_nothing_and_writes_the_same_status() {
        let previous = in_sync();
        let decision = decide(&subject(&previous), &observation(valid(), synced(&[], false)), t(600));
        assert!(decision.events.is_empty(), "{:?}", decision.events);
        assert_eq!(decision.status, previous, "nothing to write");
        assert_eq!(decision.next, Next::Refresh { interval: HOUR, threshold: None });
    }

    #[test]
    fn a_first_sync_announces_the_write_and_readiness() {
        let decision =
            decide(&subject(&AzureAdConnectionStatus::default()), &observation(valid(), synced(&["options.client_secret"], true)), t(1));
        let events = reasons(&decision);
        assert!(events.contains(&"Ready") && events.contains(&"BrokerUpdated"), "{events:?}");
        assert!(!events.contains(&"Drifted"), "a first sync is no drift");
        assert_eq!(decision.events.last().unwrap().note, "options.client_secret on the broker");
    }

    #[test]
    fn drift_with_unchanged_inputs_is_corrected_and_announced() {
        let previous = in_sync();
        let decision = decide(&subject(&previous), &observation(valid(), synced(&["options.ext_groups"], true)), t(600));
        assert_eq!(reasons(&decision), ["Drifted", "DriftCorrected"]);
        assert!(decision.events[0].warning && !decision.events[1].warning);
        assert!(decision.events[0].note.contains("corrected: options.ext_groups"));
        let broker = conditions::find(&decision.status.conditions, BROKER_SYNCED).unwrap();
        assert_eq!(broker.status, "True");
        assert!(broker.message.starts_with("corrected drift in"), "{}", broker.message);
    }

    #[test]
    fn a_write_after_a_spec_or_secret_change_is_an_update_not_drift() {
        let previous = in_sync();
        let mut new_generation = subject(&previous);
        new_generation.generation = Some(2);
        let decision = decide(&new_generation, &observation(valid(), synced(&["options.domain_aliases"], true)), t(600));
        assert_eq!(reasons(&decision), ["BrokerUpdated"]);
        let mut rotated = observation(valid(), synced(&["options.client_secret"], true));
        rotated.fingerprint = Some("fp-2".into());
        let decision = decide(&subject(&previous), &rotated, t(600));
        assert_eq!(reasons(&decision), ["BrokerUpdated"]);
    }

    #[test]
    fn observe_only_drift_is_reported_once_by_the_condition() {
        let previous = in_sync();
        let mut drifted = observation(valid(), synced(&["options.ext_groups"], false));
        drifted.observe_only = true;
        let first = decide(&subject(&previous), &drifted, t(600));
        assert!(reasons(&first).contains(&"Drifted"), "the BrokerSynced transition: {:?}", first.events);
        assert!(first.events.iter().all(|e| e.reason != "DriftCorrected"));
        assert_eq!(conditions::find(&first.status.conditions, READY).unwrap().reason, "Drifted");
        // Still drifted at the next refresh: no new Event.
        let again = decide(&subject(&first.status), &drifted, t(1200));
        assert!(again.events.is_empty(), "{:?}", again.events);
    }

    #[test]
    fn transient_failures_back_off_no_sooner_than_retry_after() {
        let previous = in_sync();
        let throttled = CredentialsFailure::Azure(AzureError::Throttled { retry_after: Some(Duration::from_secs(90)) });
        let decision = decide(&subject(&previous), &observation(Err(throttled), BrokerStage::NotAttempted), t(600));
        assert_eq!(decision.next, Next::Backoff { at_least: Duration::from_secs(90) });
        let limited = BrokerError::RateLimited { retry_after: Duration::from_secs(30) };
        let decision = decide(&subject(&previous), &observation(valid(), BrokerStage::Failed(limited)), t(600));
        assert_eq!(decision.next, Next::Backoff { at_least: Duration::from_secs(30) });
        let down = BrokerError::Unreachable(TransportError::Timeout(Duration::from_secs(10)));
        let decision = decide(&subject(&previous), &observation(valid(), BrokerStage::Failed(down)), t(600));
        assert_eq!(decision.next, Next::Backoff { at_least: Duration::ZERO }, "no Retry-After: plain backoff");
    }

    #[test]
    fn permanent_problems_wait_for_the_refresh() {
        let previous = in_sync();
        let rejected =
            CredentialsFailure::Azure(AzureError::Aadsts { code: 7000215, error: "invalid_client".into(), description: "bad".into() });
        let missing = CredentialsFailure::Secret(Problem::new(Reason::SecretNotFound, "Secret app/x not found"));
        let refused = BrokerStage::Failed(BrokerError::Rejected("name taken".into()));
        let unresolved = BrokerStage::Unresolved(Problem::new(Reason::BrokerNotFound, "IdentityBroker app/b not found"));
        for obs in [
            observation(Err(rejected), BrokerStage::NotAttempted),
            observation(Err(missing), BrokerStage::NotAttempted),
            observation(valid(), refused),
            observation(valid(), unresolved),
        ] {
            let decision = decide(&subject(&previous), &obs, t(600));
            assert_eq!(decision.next, Next::Refresh { interval: HOUR, threshold: None }, "{obs:?}");
            assert!(decision.events.iter().all(|e| e.warning), "failures are Warnings: {:?}", decision.events);
        }
    }

    #[test]
    fn failures_announce_themselves_once() {
        let previous = in_sync();
        let rejected =
            || CredentialsFailure::Azure(AzureError::Aadsts { code: 7000215, error: "invalid_client".into(), description: "bad".into() });
        let first = decide(&subject(&previous), &observation(Err(rejected()), BrokerStage::NotAttempted), t(600));
        assert!(reasons(&first).contains(&"InvalidSecret"), "{:?}", first.events);
        let again = decide(&subject(&first.status), &observation(Err(rejected()), BrokerStage::NotAttempted), t(1200));
        assert!(again.events.is_empty(), "{:?}", again.events);
    }

    #[test]
    fn suspension_waits_for_a_change_and_says_so_once() {
        let previous = in_sync();
        let first = suspended(&subject(&previous), t(600));
        assert_eq!(first.next, Next::AwaitChange);
        assert_eq!(reasons(&first), ["Suspended"]);
        assert!(suspended(&subject(&first.status), t(700)).events.is_empty());
    }

    #[test]
    fn refresh_lands_on_the_warning_and_expiry_thresholds() {
        let expiry = |secs: i64| Expiry::Known { expires_at: t(secs), source: "Annotation", key_id: None, note: None };
        let warn = Duration::from_secs(DAY as u64);
        // The warning window opens in 100 s.
        assert_eq!(expiry_threshold(&expiry(DAY + 100), warn, t(0)), Some(Duration::from_secs(101)));
        // Already inside the window; expiry in 50 s.
        assert_eq!(expiry_threshold(&expiry(50), warn, t(0)), Some(Duration::from_secs(51)));
        assert_eq!(expiry_threshold(&expiry(-5), warn, t(0)), None, "expired: nothing left to wait for");
        assert_eq!(expiry_threshold(&Expiry::Disabled, warn, t(0)), None);
        let mut obs = observation(valid(), synced(&[], false));
        obs.expiry = expiry(30 * DAY + 100);
        let decision = decide(&subject(&in_sync()), &obs, t(0));
        assert_eq!(decision.next, Next::Refresh { interval: HOUR, threshold: Some(Duration::from_secs(101)) });
        assert_eq!(refresh_delay(HOUR, Some(Duration::from_secs(101)), 0.5), Duration::from_secs(101));
    }

    #[test]
    fn the_refresh_comes_when_the_cached_validation_runs_out() {
        let previous = in_sync();
        let mut cached = observation(valid(), synced(&[], false));
        if let Ok(v) = &mut cached.credentials {
            v.trusted_until = Some(t(0) + jiff::SignedDuration::from_secs(2880));
        }
        // A reconcile 10 minutes after the read (a Secret or broker event) was served from the
        // cache: the refresh still comes when the cache runs out, not a whole interval later.
        let decision = decide(&subject(&previous), &cached, t(600));
        assert_eq!(decision.next, Next::Refresh { interval: HOUR, threshold: Some(Duration::from_secs(2281)) });
        assert_eq!(refresh_delay(HOUR, Some(Duration::from_secs(2281)), 0.99), Duration::from_secs(2281));
        // The cache already ran out: look again at once.
        let decision = decide(&subject(&previous), &cached, t(4000));
        assert_eq!(decision.next, Next::Refresh { interval: HOUR, threshold: Some(Duration::from_secs(1)) });
    }

    #[test]
    fn the_cache_runs_out_before_the_refresh_comes() {
        for i in 0..100 {
            let unit = f64::from(i) / 100.0;
            let ttl = cache_ttl(HOUR, unit);
            assert!(ttl >= HOUR.mul_f64(0.8) && ttl < HOUR.mul_f64(0.9), "{ttl:?}");
            // Scheduled at the cache's end plus a second: still within the interval.
            assert!(refresh_delay(HOUR, Some(ttl + Duration::from_secs(1)), unit) <= HOUR);
        }
        assert!(cache_ttl(Duration::from_secs(60), 0.99) + Duration::from_secs(1) < Duration::from_secs(60), "even at the 1m minimum");
    }

    #[test]
    fn refresh_is_jittered_within_the_interval() {
        for i in 0..100 {
            let d = refresh_delay(HOUR, None, f64::from(i) / 100.0);
            assert!((3240..=3600).contains(&d.as_secs()), "{d:?}");
        }
        assert_eq!(refresh_delay(HOUR, None, 0.5), HOUR.mul_f64(0.95));
        assert_eq!(refresh_delay(HOUR, Some(Duration::from_secs(7200)), 0.0), HOUR.mul_f64(0.9), "a far threshold changes nothing");
    }

    #[test]
    fn an_added_redirect_uri_is_announced_and_a_throttled_registration_is_read_after_retry_after() {
        let previous = in_sync();
        let mut obs = observation(valid(), synced(&[], false));
        obs.app = AppCheck::Checked {
            report: Default::default(),
            added_redirect_uri: Some("https://acme.eu.auth0.com/login/callback".into()),
            manage_failed: None,
        };
        let decision = decide(&subject(&previous), &obs, t(600));
        let added = decision.events.iter().find(|e| e.reason == "RedirectUriAdded").expect("announced");
        assert!(!added.warning && added.note.contains("https://acme.eu.auth0.com/login/callback"), "{added:?}");
        obs.app = AppCheck::Unavailable { why: "throttled".into(), retry_after: Some(Duration::from_secs(30)) };
        let decision = decide(&subject(&previous), &obs, t(600));
        assert_eq!(
            decision.next,
            Next::Refresh { interval: HOUR, threshold: Some(Duration::from_secs(30)) },
            "no backoff, no hour-long wait"
        );
        obs.app = AppCheck::Unavailable { why: "down".into(), retry_after: None };
        let decision = decide(&subject(&previous), &obs, t(600));
        assert_eq!(decision.next, Next::Refresh { interval: HOUR, threshold: None }, "a Graph outage waits for the refresh");
    }
}
