//! The next step of a rotation, decided from the resource's status and what is observed (the
//! application's passwords in Graph, the Secret, the consumers). Pure: the reconcile runs one
//! step, writes what it learned, and asks again, so a restart between any two steps resumes
//! from status and the world as they are.
//!
//! The order of a cycle: record the intent (a marker) → addPassword and stage the value in the
//! Secret under a key no consumer reads → record the staged password → prove it with token
//! requests → promote it to `client-secret` → record the promotion → remove the previous
//! password once every consumer has synced and the overlap has passed.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::{
    azure::passwords::Password,
    crd::client_secret::{AzureAdClientSecretStatus, ConsumersStatus, CredentialOrigin, CredentialStatus, PendingStatus},
};

/// Prefix of every displayName idp-bridge gives a password it creates.
pub const MARKER_PREFIX: &str = "idp-bridge:";

/// What the spec asks, parsed.
#[derive(Clone, Debug)]
pub struct Settings {
    pub lifetime: Duration,
    pub renew_before: Duration,
    pub overlap: Duration,
    pub propagation_timeout: Duration,
    /// `graphAuth.mode: Self`: the Secret's current value is also the Graph caller's.
    pub self_auth: bool,
    /// `idp-bridge:<namespace>/<name>:`, the displayName prefix of this resource's passwords.
    pub owner_prefix: String,
}

/// The Secret as far as the rotation cares (fingerprints, never values).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SecretView {
    pub current_fingerprint: Option<String>,
    /// The first three characters of `client-secret`, to find the bootstrap password by hint.
    pub current_hint: Option<String>,
    pub staged_fingerprint: Option<String>,
    pub staged_marker: Option<String>,
}

/// Everything observed for one decision.
#[derive(Clone, Debug)]
pub struct Observed<'a> {
    pub now: Timestamp,
    pub passwords: &'a [Password],
    pub secret: &'a SecretView,
    pub consumers: &'a ConsumersStatus,
    /// The `idpbridge.io/renew` annotation has a value not acted on yet.
    pub renew_requested: bool,
    /// The `idpbridge.io/revoke` annotation has a value not acted on yet.
    pub revoke_requested: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Record the password found in the Secret as the current one.
    Adopt(CredentialStatus),
    /// `Self` auth with no secret in the Secret: nothing can call Graph.
    BootstrapMissing,
    /// The Secret's value matches none of the application's passwords.
    BootstrapUnknown,
    /// Another idp-bridge resource's passwords are on this application.
    ForeignOwner { display_name: String },
    /// A password of ours that status does not know (left by an older cycle): remove it.
    RemoveStray { key_id: String },
    /// Record the intent of a renewal (a new marker) before anything is created.
    StartRenewal { revoke: bool },
    /// addPassword with the pending marker, and stage its value at once.
    Issue,
    /// A password with the pending marker exists but its value never reached the Secret (lost in
    /// a crash): remove it and start over.
    RemoveLost { key_id: String },
    /// The Secret holds the staged value but status does not know its password yet.
    RecordStaged { key_id: String, hint: Option<String>, expires_at: Timestamp },
    /// The pending password is gone from Graph, or its staged value from the Secret: forget it
    /// (removing what is left of it) and start over.
    DropPending { key_id: Option<String> },
    /// Ask Entra ID for a token with the staged value.
    Prove,
    /// Entra ID did not accept the staged value in time: remove it, retry later.
    Abandon { key_id: String },
    /// Write the staged value to `client-secret`.
    Promote,
    /// `client-secret` already holds the staged value: record the promotion.
    RecordPromoted,
    /// Remove the previous password: every consumer synced and the overlap passed (or a revoke).
    RemovePrevious { key_id: String },
    /// The previous password is no longer in Graph: forget it.
    ForgetPrevious,
    /// `client-secret` holds another of the application's passwords than the current one (a
    /// person put it there): it becomes the current one, and the one it replaced goes the way a
    /// promoted password's predecessor does.
    Replaced(CredentialStatus),
    /// Nothing to do until `until` (or a change).
    Wait { until: Option<Timestamp> },
}

fn signed(d: Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
}

/// When a password expiring at `expires_at` gets its successor.
pub fn renewal_time(expires_at: Timestamp, settings: &Settings) -> Timestamp {
    expires_at.saturating_sub(signed(settings.renew_before)).unwrap_or(expires_at)
}

/// When a new password created at `now` expires.
pub fn new_expiry(now: Timestamp, settings: &Settings) -> Timestamp {
    now.saturating_add(signed(settings.lifetime)).unwrap_or(now)
}

/// When the previous password may go (once every consumer synced): after the overlap, or at its
/// expiry if that comes first.
pub fn removable_after(promoted_at: Timestamp, previous_expiry: Timestamp, settings: &Settings) -> Timestamp {
    promoted_at.saturating_add(signed(settings.overlap)).unwrap_or(promoted_at).min(previous_expiry)
}

fn marker_of(password: &Password) -> Option<&str> {
    password.display_name.as_deref().filter(|d| d.starts_with(MARKER_PREFIX))
}

fn has_marker(password: &Password, marker: &str) -> bool {
    password.display_name.as_deref().is_some_and(|d| d.ends_with(&format!(":{marker}")))
}

/// The next step.
pub fn next_step(status: &AzureAdClientSecretStatus, observed: &Observed<'_>, settings: &Settings) -> Step {
    let known: Vec<&str> = [status.current.as_ref(), status.previous.as_ref()].into_iter().flatten().map(|c| c.key_id.as_str()).collect();
    let pending = status.pending.as_ref();
    for password in observed.passwords {
        let Some(name) = marker_of(password) else { continue };
        let in_status = known.iter().any(|k| k.eq_ignore_ascii_case(&password.key_id))
            || pending.and_then(|p| p.key_id.as_deref()).is_some_and(|k| k.eq_ignore_ascii_case(&password.key_id));
        if in_status {
            continue;
        }
        if !name.starts_with(&settings.owner_prefix) {
            return Step::ForeignOwner { display_name: name.to_owned() };
        }
        if !pending.is_some_and(|p| has_marker(password, &p.marker)) {
            return Step::RemoveStray { key_id: password.key_id.clone() };
        }
    }
    if let Some(pending) = pending {
        return pending_step(pending, observed, settings);
    }
    let Some(current) = &status.current else {
        return adopt(observed, settings);
    };
    if let Some(previous) = &status.previous {
        return previous_step(previous, observed);
    }
    if let Some(step) = changed_by_hand(current, observed, settings) {
        return step;
    }
    // After an abandoned renewal the next one waits, unless a person asks for it.
    let renew_at = [current.renewal_time.as_ref(), status.retry_not_before.as_ref()].into_iter().flatten().map(|t| t.0).max();
    let due = renew_at.is_none_or(|at| observed.now >= at);
    if due || observed.renew_requested || observed.revoke_requested {
        return Step::StartRenewal { revoke: observed.revoke_requested };
    }
    Step::Wait { until: renew_at }
}

/// No current password in status: the Secret's value is the bootstrap one, or (with a rotator)
/// the first password is created.
fn adopt(observed: &Observed<'_>, settings: &Settings) -> Step {
    let Some(hint) = &observed.secret.current_hint else {
        return if settings.self_auth { Step::BootstrapMissing } else { Step::StartRenewal { revoke: false } };
    };
    let matching = observed.passwords.iter().filter(|p| p.hint.as_deref() == Some(hint.as_str()));
    let Some(found) = matching.min_by_key(|p| p.end_date_time) else {
        return Step::BootstrapUnknown;
    };
    let origin = if marker_of(found).is_some_and(|n| n.starts_with(&settings.owner_prefix)) {
        CredentialOrigin::Issued
    } else {
        CredentialOrigin::Bootstrap
    };
    Step::Adopt(CredentialStatus {
        key_id: found.key_id.clone(),
        hint: found.hint.clone(),
        expires_at: Time(found.end_date_time),
        origin,
        renewal_time: Some(Time(renewal_time(found.end_date_time, settings))),
        removable_after: None,
    })
}

/// `client-secret` no longer holds the current password (its first three characters differ):
/// the password it holds now is adopted, or, if it is none of the application's, that is said
/// and nothing is renewed over it.
fn changed_by_hand(current: &CredentialStatus, observed: &Observed<'_>, settings: &Settings) -> Option<Step> {
    let hint = observed.secret.current_hint.as_deref()?;
    if current.hint.as_deref().is_none_or(|h| h == hint) {
        return None;
    }
    match adopt(observed, settings) {
        Step::Adopt(found) if found.key_id.eq_ignore_ascii_case(&current.key_id) => None,
        Step::Adopt(found) => Some(Step::Replaced(found)),
        other => Some(other),
    }
}

fn pending_step(pending: &PendingStatus, observed: &Observed<'_>, settings: &Settings) -> Step {
    let secret = observed.secret;
    let Some(key_id) = &pending.key_id else {
        let created = observed.passwords.iter().find(|p| has_marker(p, &pending.marker));
        let staged = secret.staged_marker.as_deref() == Some(pending.marker.as_str()) && secret.staged_fingerprint.is_some();
        return match (created, staged) {
            (Some(p), true) => Step::RecordStaged { key_id: p.key_id.clone(), hint: p.hint.clone(), expires_at: p.end_date_time },
            (Some(p), false) => Step::RemoveLost { key_id: p.key_id.clone() },
            (None, true) => Step::DropPending { key_id: None },
            (None, false) => Step::Issue,
        };
    };
    if !observed.passwords.iter().any(|p| p.key_id.eq_ignore_ascii_case(key_id)) {
        return Step::DropPending { key_id: None };
    }
    let promoted = secret.current_fingerprint.is_some() && secret.current_fingerprint == pending.fingerprint;
    if promoted {
        // Promoted, but the status write was lost (or a person promoted it by hand).
        return Step::RecordPromoted;
    }
    if secret.staged_fingerprint.is_none() || secret.staged_fingerprint != pending.fingerprint {
        return Step::DropPending { key_id: Some(key_id.clone()) };
    }
    if pending.proven_at.is_some() {
        return Step::Promote;
    }
    let staged_at = pending.staged_at.as_ref().map_or(observed.now, |t| t.0);
    if observed.now.duration_since(staged_at) > signed(settings.propagation_timeout) {
        return Step::Abandon { key_id: key_id.clone() };
    }
    Step::Prove
}

/// A revoke asked for while a previous password waits skips its overlap too: whichever of the
/// two leaked, the previous one goes first and the renewal follows.
fn previous_step(previous: &CredentialStatus, observed: &Observed<'_>) -> Step {
    if !observed.passwords.iter().any(|p| p.key_id.eq_ignore_ascii_case(&previous.key_id)) {
        return Step::ForgetPrevious;
    }
    let synced = observed.consumers.synced >= observed.consumers.total;
    let overlap_over = previous.removable_after.as_ref().is_none_or(|t| observed.now >= t.0);
    if synced && (overlap_over || observed.revoke_requested) {
        return Step::RemovePrevious { key_id: previous.key_id.clone() };
    }
    Step::Wait { until: if synced { previous.removable_after.as_ref().map(|t| t.0) } else { None } }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFIX: &str = "idp-bridge:ns/app:";
    const HOUR: SignedDuration = SignedDuration::from_hours(1);

    fn now() -> Timestamp {
        "2026-12-02T12:00:00Z".parse().unwrap()
    }

    fn settings(self_auth: bool) -> Settings {
        Settings {
            lifetime: Duration::from_secs(90 * 24 * 3600),
            renew_before: Duration::from_secs(30 * 24 * 3600),
            overlap: Duration::from_secs(24 * 3600),
            propagation_timeout: Duration::from_secs(600),
            self_auth,
            owner_prefix: PREFIX.into(),
        }
    }

    fn password(key: &str, name: &str, hint: &str, end: Timestamp) -> Password {
        Password { key_id: key.into(), display_name: Some(name.into()), hint: Some(hint.into()), end_date_time: end }
    }

    fn credential(key: &str, origin: CredentialOrigin, expires: Timestamp) -> CredentialStatus {
        CredentialStatus {
            key_id: key.into(),
            hint: Some("abc".into()),
            expires_at: Time(expires),
            origin,
            renewal_time: Some(Time(renewal_time(expires, &settings(true)))),
            removable_after: None,
        }
    }

    fn pending(marker: &str) -> PendingStatus {
        PendingStatus {
            marker: marker.into(),
            requested_at: Time(now()),
            revoke: false,
            key_id: None,
            hint: None,
            expires_at: None,
            fingerprint: None,
            staged_at: None,
            proven_at: None,
        }
    }

    fn staged_pending(marker: &str, key: &str) -> PendingStatus {
        PendingStatus {
            key_id: Some(key.into()),
            hint: Some("new".into()),
            expires_at: Some(Time(now() + HOUR * 24 * 90)),
            fingerprint: Some("fp-new".into()),
            staged_at: Some(Time(now() - SignedDuration::from_secs(30))),
            ..pending(marker)
        }
    }

    struct Case {
        status: AzureAdClientSecretStatus,
        passwords: Vec<Password>,
        secret: SecretView,
        consumers: ConsumersStatus,
        renew: bool,
        revoke: bool,
        now: Timestamp,
        self_auth: bool,
    }

    impl Case {
        fn new() -> Self {
            Case {
                status: AzureAdClientSecretStatus::default(),
                passwords: vec![],
                secret: SecretView::default(),
                consumers: ConsumersStatus::default(),
                renew: false,
                revoke: false,
                now: now(),
                self_auth: true,
            }
        }

        fn step(&self) -> Step {
            let observed = Observed {
                now: self.now,
                passwords: &self.passwords,
                secret: &self.secret,
                consumers: &self.consumers,
                renew_requested: self.renew,
                revoke_requested: self.revoke,
            };
            next_step(&self.status, &observed, &settings(self.self_auth))
        }
    }

    /// A resource in steady state: the bootstrap password adopted, far from renewal.
    fn steady() -> Case {
        let mut case = Case::new();
        let expires = now() + HOUR * 24 * 60;
        case.status.current = Some(credential("boot", CredentialOrigin::Bootstrap, expires));
        case.passwords = vec![password("boot", "made in the portal", "abc", expires)];
        case.secret = SecretView { current_fingerprint: Some("fp-boot".into()), current_hint: Some("abc".into()), ..Default::default() };
        case
    }

    #[test]
    fn adopts_the_bootstrap_password_by_hint() {
        let mut case = Case::new();
        let end = now() + HOUR * 24 * 200;
        case.passwords = vec![password("other", "ci", "xyz", end), password("boot", "portal", "abc", end)];
        case.secret.current_hint = Some("abc".into());
        let Step::Adopt(current) = case.step() else { panic!("{:?}", case.step()) };
        assert_eq!((current.key_id.as_str(), current.origin), ("boot", CredentialOrigin::Bootstrap));
        assert_eq!(current.renewal_time.unwrap().0, end - HOUR * 24 * 30, "renewBefore ahead of its expiry");
    }

    #[test]
    fn without_a_bootstrap_secret_self_auth_stops_and_a_rotator_issues() {
        let case = Case::new();
        assert_eq!(case.step(), Step::BootstrapMissing);
        let rotator = Case { self_auth: false, ..Case::new() };
        assert_eq!(rotator.step(), Step::StartRenewal { revoke: false });
        let mut unknown = Case::new();
        unknown.secret.current_hint = Some("zzz".into());
        unknown.passwords = vec![password("k", "portal", "abc", now() + HOUR)];
        assert_eq!(unknown.step(), Step::BootstrapUnknown);
    }

    #[test]
    fn waits_for_the_renewal_time_then_renews() {
        let case = steady();
        let renewal = case.status.current.as_ref().unwrap().renewal_time.clone().unwrap().0;
        assert_eq!(case.step(), Step::Wait { until: Some(renewal) });
        let due = Case { now: renewal, ..steady() };
        assert_eq!(due.step(), Step::StartRenewal { revoke: false });
        assert_eq!(Case { renew: true, ..steady() }.step(), Step::StartRenewal { revoke: false }, "the renew annotation");
        assert_eq!(Case { revoke: true, ..steady() }.step(), Step::StartRenewal { revoke: true }, "the revoke annotation");
    }

    #[test]
    fn after_an_abandoned_renewal_the_next_waits_unless_asked_for() {
        let mut case = steady();
        let renewal = case.status.current.as_ref().unwrap().renewal_time.clone().unwrap().0;
        case.now = renewal + HOUR;
        case.status.retry_not_before = Some(Time(renewal + HOUR * 2));
        assert_eq!(case.step(), Step::Wait { until: Some(renewal + HOUR * 2) });
        case.renew = true;
        assert_eq!(case.step(), Step::StartRenewal { revoke: false }, "a person's request does not wait");
        case.renew = false;
        case.now = renewal + HOUR * 2;
        assert_eq!(case.step(), Step::StartRenewal { revoke: false });
    }

    #[test]
    fn issues_once_the_intent_is_recorded() {
        let mut case = steady();
        case.status.pending = Some(pending("m1"));
        assert_eq!(case.step(), Step::Issue);
    }

    #[test]
    fn a_password_whose_value_was_lost_is_removed_and_one_that_was_staged_is_resumed() {
        let mut case = steady();
        case.status.pending = Some(pending("m1"));
        case.passwords.push(password("new", &format!("{PREFIX}m1"), "new", now() + HOUR));
        assert_eq!(case.step(), Step::RemoveLost { key_id: "new".into() }, "created, never staged");
        case.secret.staged_fingerprint = Some("fp-new".into());
        case.secret.staged_marker = Some("m1".into());
        assert_eq!(
            case.step(),
            Step::RecordStaged { key_id: "new".into(), hint: Some("new".into()), expires_at: now() + HOUR },
            "staged, status not yet"
        );
        case.secret.staged_marker = Some("m0".into());
        assert_eq!(case.step(), Step::RemoveLost { key_id: "new".into() }, "a staged value of another attempt is not this one");
    }

    #[test]
    fn a_staged_value_without_its_password_starts_over() {
        let mut case = steady();
        case.status.pending = Some(pending("m1"));
        case.secret.staged_fingerprint = Some("fp-new".into());
        case.secret.staged_marker = Some("m1".into());
        assert_eq!(case.step(), Step::DropPending { key_id: None });
    }

    #[test]
    fn a_staged_password_is_proven_then_promoted_then_recorded() {
        let mut case = steady();
        case.status.pending = Some(staged_pending("m1", "new"));
        case.passwords.push(password("new", &format!("{PREFIX}m1"), "new", now() + HOUR));
        case.secret.staged_fingerprint = Some("fp-new".into());
        assert_eq!(case.step(), Step::Prove);
        case.status.pending.as_mut().unwrap().proven_at = Some(Time(now()));
        assert_eq!(case.step(), Step::Promote);
        case.secret.current_fingerprint = Some("fp-new".into());
        case.secret.staged_fingerprint = None;
        assert_eq!(case.step(), Step::RecordPromoted, "promoted in the Secret, status not yet (a crash between)");
    }

    #[test]
    fn proof_gives_up_after_the_propagation_timeout() {
        let mut case = steady();
        case.status.pending = Some(staged_pending("m1", "new"));
        case.passwords.push(password("new", &format!("{PREFIX}m1"), "new", now() + HOUR));
        case.secret.staged_fingerprint = Some("fp-new".into());
        case.now = now() + SignedDuration::from_secs(600);
        assert_eq!(case.step(), Step::Abandon { key_id: "new".into() });
    }

    #[test]
    fn a_lost_staged_value_or_a_vanished_password_starts_over() {
        let mut case = steady();
        case.status.pending = Some(staged_pending("m1", "new"));
        case.passwords.push(password("new", &format!("{PREFIX}m1"), "new", now() + HOUR));
        assert_eq!(case.step(), Step::DropPending { key_id: Some("new".into()) }, "the staging key was removed by someone");
        case.passwords.pop();
        case.secret.staged_fingerprint = Some("fp-new".into());
        assert_eq!(case.step(), Step::DropPending { key_id: None }, "the password was removed in the portal");
    }

    #[test]
    fn a_proven_password_whose_staged_value_vanished_is_not_promoted() {
        let mut case = steady();
        case.status.pending = Some(PendingStatus { proven_at: Some(Time(now())), ..staged_pending("m1", "new") });
        case.passwords.push(password("new", &format!("{PREFIX}m1"), "new", now() + HOUR));
        assert_eq!(case.step(), Step::DropPending { key_id: Some("new".into()) });
    }

    fn promoted(removable_after: Timestamp) -> Case {
        let mut case = steady();
        let mut previous = case.status.current.take().unwrap();
        previous.removable_after = Some(Time(removable_after));
        case.status.previous = Some(previous);
        case.status.current = Some(credential("new", CredentialOrigin::Issued, now() + HOUR * 24 * 90));
        case.passwords.push(password("new", &format!("{PREFIX}m1"), "new", now() + HOUR * 24 * 90));
        case.secret.current_fingerprint = Some("fp-new".into());
        case.consumers = ConsumersStatus { total: 2, synced: 1 };
        case
    }

    #[test]
    fn the_previous_password_goes_only_after_every_consumer_synced_and_the_overlap() {
        let after = now() + HOUR;
        assert_eq!(promoted(after).step(), Step::Wait { until: None }, "a consumer still holds the previous one");
        let mut all_synced = promoted(after);
        all_synced.consumers.synced = 2;
        assert_eq!(all_synced.step(), Step::Wait { until: Some(after) }, "in the overlap");
        all_synced.now = after;
        assert_eq!(all_synced.step(), Step::RemovePrevious { key_id: "boot".into() });
        let mut revoked = promoted(after);
        revoked.revoke = true;
        assert_eq!(revoked.step(), Step::Wait { until: None }, "a revoke still waits for the consumers");
        revoked.consumers.synced = 2;
        assert_eq!(revoked.step(), Step::RemovePrevious { key_id: "boot".into() }, "but not for the overlap");
        let mut gone = promoted(after);
        gone.passwords.retain(|p| p.key_id != "boot");
        assert_eq!(gone.step(), Step::ForgetPrevious);
    }

    #[test]
    fn no_renewal_starts_while_a_previous_password_waits() {
        let mut case = promoted(now() + HOUR);
        case.renew = true;
        assert_eq!(case.step(), Step::Wait { until: None });
    }

    #[test]
    fn strays_of_ours_are_removed_and_foreign_ones_are_a_conflict() {
        let mut case = steady();
        case.passwords.push(password("old", &format!("{PREFIX}m0"), "old", now() + HOUR));
        assert_eq!(case.step(), Step::RemoveStray { key_id: "old".into() });
        let mut foreign = steady();
        foreign.passwords.push(password("theirs", "idp-bridge:other/app:m9", "thr", now() + HOUR));
        assert_eq!(foreign.step(), Step::ForeignOwner { display_name: "idp-bridge:other/app:m9".into() });
        let mut person = steady();
        person.passwords.push(password("person", "made by a person", "per", now() + HOUR));
        assert!(matches!(person.step(), Step::Wait { .. }), "a person's password is never touched");
    }

    #[test]
    fn a_password_put_in_the_secret_by_hand_becomes_current_and_the_replaced_one_waits() {
        let mut case = steady();
        let later = now() + HOUR * 24 * 300;
        case.passwords.push(password("hand", "made in the portal after a leak", "hnd", later));
        case.secret = SecretView { current_fingerprint: Some("fp-hand".into()), current_hint: Some("hnd".into()), ..Default::default() };
        let Step::Replaced(current) = case.step() else { panic!("{:?}", case.step()) };
        assert_eq!((current.key_id.as_str(), current.origin), ("hand", CredentialOrigin::Bootstrap));
        assert_eq!(current.renewal_time.unwrap().0, later - HOUR * 24 * 30);
        case.secret.current_hint = Some("zzz".into());
        assert_eq!(case.step(), Step::BootstrapUnknown, "a value that is none of the application's passwords is reported");
        let mut promoted = promoted(now() + HOUR);
        promoted.secret.current_hint = Some("hnd".into());
        promoted.passwords.push(password("hand", "portal", "hnd", later));
        assert_eq!(promoted.step(), Step::Wait { until: None }, "a waiting previous password goes first");
        assert!(matches!(steady().step(), Step::Wait { .. }), "the current password in the Secret changes nothing");
    }

    #[test]
    fn windows_are_clamped() {
        let s = settings(true);
        let expiry = now() + HOUR;
        assert_eq!(removable_after(now(), expiry, &s), expiry, "never after the previous one expired");
        assert_eq!(new_expiry(now(), &s), now() + HOUR * 24 * 90);
    }
}
