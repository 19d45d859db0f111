//! One AzureAdClientSecret reconcile: observe (the Secret, the application's passwords, the
//! consumers), decide one [`Step`] with the pure plan, run it, write status. A step that leads
//! to another requeues at once, so a cycle is a chain of short reconciles, each resumable.

use std::{collections::BTreeMap, time::Duration};

use jiff::Timestamp;
use k8s_openapi::{
    ByteString,
    api::core::v1::Secret,
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        events::{Event as KubeEvent, EventType},
    },
};
use serde_json::json;
use tracing::info;

use super::{
    Rotation,
    plan::{self, MARKER_PREFIX, Observed, SecretView, Settings, Step},
};
use crate::{
    azure::passwords::{GraphCaller, Password, PasswordError},
    controller::{Context, Error, reconcile::MANAGER},
    crd::{
        EXPIRES_AT_ANNOTATION,
        client_secret::{
            AzureAdClientSecret, AzureAdClientSecretStatus, CURRENT_KEY, CredentialOrigin, CredentialStatus, GraphAuthMode,
            OWNER_ANNOTATION, PendingStatus, RENEW_ANNOTATION, REVOKE_ANNOTATION, STAGED_KEY, STAGED_MARKER_ANNOTATION,
        },
        conditions::{Desired, ISSUING, READY, Reason, Status, set_condition},
    },
    secret::SecretValue,
};

/// Field manager of the Secret writes: the data keys and annotations this controller owns.
const SECRET_MANAGER: &str = "idp-bridge-client-secret";
/// How soon the next step of a chain runs.
const NEXT_STEP: Duration = Duration::from_millis(200);
/// The shortest wait before a renewal that was abandoned starts again on its own.
const MIN_RETRY: Duration = Duration::from_secs(300);
/// How often a resource with nothing to do is looked at again anyway.
const RESYNC: Duration = Duration::from_secs(3600);

/// The Secret's values (kept here only for the length of the reconcile).
#[derive(Default)]
struct SecretValues {
    exists: bool,
    current: Option<SecretValue>,
    staged: Option<SecretValue>,
    view: SecretView,
}

/// What one reconcile of one resource works with.
struct Run<'a> {
    obj: &'a AzureAdClientSecret,
    ctx: &'a Context,
    namespace: String,
    name: String,
    settings: Settings,
    now: Timestamp,
}

pub(super) async fn reconcile(stored: &AzureAdClientSecret, rotation: &Rotation) -> Result<Action, Error> {
    let ctx = rotation.ctx.as_ref();
    // The store may not have seen the status the previous step wrote 200 ms ago; a step decided
    // on an older status would redo (or undo) work. One GET per step is cheap next to Graph.
    let api: Api<AzureAdClientSecret> = Api::namespaced(ctx.client.clone(), &stored.namespace().unwrap_or_default());
    let Some(obj) = api.get_opt(&stored.name_any()).await.map_err(Error::ReadClientSecret)? else {
        return Ok(Action::await_change());
    };
    let obj = &obj;
    let run = Run::new(obj, ctx);
    let previous = obj.status.clone().unwrap_or_default();
    let mut status = previous.clone();
    let action = match run.step(rotation, &mut status).await {
        Ok(action) => action,
        Err(Outcome::Problem { condition, reason, message, retry }) => {
            run.set(&mut status, condition, Status::False, reason, &message);
            if condition == ISSUING {
                run.set(&mut status, READY, Status::True, Reason::Ready, "the Secret holds a password Entra ID accepts");
            }
            retry.map_or_else(Action::await_change, Action::requeue)
        }
        Err(Outcome::Kube(e)) => return Err(e),
    };
    status.observed_generation = obj.meta().generation;
    run.write_status(&previous, &status).await?;
    rotation.ctx.metrics.client_secret(&obj.uid().unwrap_or_default(), &run.namespace, &run.name, renewal_seconds(&status));
    Ok(action)
}

fn renewal_seconds(status: &AzureAdClientSecretStatus) -> Option<f64> {
    status.current.as_ref().and_then(|c| c.renewal_time.as_ref()).map(|t| t.0.as_second() as f64)
}

/// Why a step did not go on: a condition to show, and when to look again.
enum Outcome {
    Problem { condition: &'static str, reason: Reason, message: String, retry: Option<Duration> },
    Kube(Error),
}

impl From<Error> for Outcome {
    fn from(e: Error) -> Self {
        Outcome::Kube(e)
    }
}

impl Outcome {
    fn ready(reason: Reason, message: impl Into<String>) -> Self {
        Outcome::Problem { condition: READY, reason, message: message.into(), retry: Some(RESYNC) }
    }
}

impl<'a> Run<'a> {
    fn new(obj: &'a AzureAdClientSecret, ctx: &'a Context) -> Self {
        let namespace = obj.namespace().unwrap_or_default();
        let name = obj.name_any();
        let spec = &obj.spec;
        let settings = Settings {
            lifetime: spec.lifetime(),
            renew_before: spec.renew_before().min(spec.lifetime() / 2),
            overlap: spec.overlap(),
            propagation_timeout: spec.propagation_timeout(),
            self_auth: spec.graph_auth.mode == GraphAuthMode::SelfApp,
            owner_prefix: format!("{MARKER_PREFIX}{namespace}/{name}:"),
        };
        Self { obj, ctx, namespace, name, settings, now: Timestamp::now() }
    }

    /// A Graph failure: transient ones retry with backoff (or after Retry-After), permanent ones
    /// wait for a change, or 5 minutes to an hour (a permission or policy fixed in the tenant
    /// sends no event).
    fn graph_failure(&self, condition: &'static str, error: &PasswordError) -> Outcome {
        let backoff = self.ctx.next_backoff(self.obj);
        let retry =
            if error.is_transient() { error.retry_after().unwrap_or(backoff) } else { backoff.clamp(Duration::from_secs(300), RESYNC) };
        Outcome::Problem { condition, reason: error.reason(), message: error.to_string(), retry: Some(retry) }
    }

    fn set(&self, status: &mut AzureAdClientSecretStatus, type_: &'static str, value: Status, reason: Reason, message: &str) {
        let _ = set_condition(&mut status.conditions, &Desired::new(type_, value, reason, message), self.obj.meta().generation, self.now);
    }

    async fn step(&self, rotation: &Rotation, status: &mut AzureAdClientSecretStatus) -> Result<Action, Outcome> {
        if let Some((reason, message)) = rotation.conflict(self.obj) {
            return Err(Outcome::ready(reason, message));
        }
        let secret = self.read_secret().await?;
        let caller_secret = self.caller_secret(&secret).await?;
        let fingerprint = self.ctx.fingerprinter.fingerprint(&caller_secret);
        let caller = self.caller(&caller_secret, &fingerprint);
        let passwords =
            self.ctx.passwords.list(&caller, &self.obj.spec.azure.client_id).await.map_err(|e| self.graph_failure(READY, &e))?;
        let consumers = rotation.consumers(self.obj, secret.view.current_fingerprint.as_deref());
        status.consumers = Some(consumers.clone());
        let observed = Observed {
            now: self.now,
            passwords: &passwords,
            secret: &secret.view,
            consumers: &consumers,
            renew_requested: self.annotation_pending(RENEW_ANNOTATION, status.handled_renew.as_deref()),
            revoke_requested: self.annotation_pending(REVOKE_ANNOTATION, status.handled_revoke.as_deref()),
        };
        let step = plan::next_step(status, &observed, &self.settings);
        info!(namespace = %self.namespace, name = %self.name, step = ?step_name(&step), "rotation step");
        self.run_step(step, status, &caller, &secret, &passwords).await
    }

    fn annotation_pending(&self, key: &str, handled: Option<&str>) -> bool {
        self.obj.annotations().get(key).is_some_and(|v| Some(v.as_str()) != handled)
    }

    async fn run_step(
        &self,
        step: Step,
        status: &mut AzureAdClientSecretStatus,
        caller: &GraphCaller<'_>,
        secret: &SecretValues,
        passwords: &[Password],
    ) -> Result<Action, Outcome> {
        let app = self.obj.spec.azure.client_id.as_str();
        match step {
            Step::Adopt(current) => {
                let note = format!("adopted the Secret's password {} as the current one", current.key_id);
                status.current = Some(current);
                self.event(EventType::Normal, "Adopted", &note).await;
                Ok(Action::requeue(NEXT_STEP))
            }
            Step::BootstrapMissing => Err(Outcome::ready(
                Reason::BootstrapSecretMissing,
                format!(
                    "the Secret {} holds no {CURRENT_KEY}: with graphAuth.mode Self, put the application's current secret there first",
                    self.obj.spec.secret_name
                ),
            )),
            Step::BootstrapUnknown => Err(Outcome::ready(
                Reason::SecretNotInApplication,
                format!(
                    "the value in Secret {} is not one of the application's passwords (no credential has its first three characters)",
                    self.obj.spec.secret_name
                ),
            )),
            Step::ForeignOwner { display_name } => Err(Outcome::ready(
                Reason::ApplicationConflict,
                format!(
                    "the application has a password created for another resource ({display_name}); only one AzureAdClientSecret may rotate an application"
                ),
            )),
            Step::RemoveStray { key_id } => {
                self.ctx.passwords.remove(caller, app, &key_id).await.map_err(|e| self.graph_failure(ISSUING, &e))?;
                self.event(EventType::Normal, "RemovedStray", &format!("removed password {key_id}, left over by an earlier cycle")).await;
                Ok(Action::requeue(NEXT_STEP))
            }
            Step::StartRenewal { revoke } => {
                status.pending = Some(self.new_pending(revoke));
                status.retry_not_before = None;
                status.handled_renew = self.obj.annotations().get(RENEW_ANNOTATION).cloned().or(status.handled_renew.take());
                status.handled_revoke = self.obj.annotations().get(REVOKE_ANNOTATION).cloned().or(status.handled_revoke.take());
                self.set(status, ISSUING, Status::True, Reason::Issuing, "creating a new password");
                let why = if revoke { "revoke requested: renewing now" } else { "renewing the password" };
                self.event(EventType::Normal, "Renewing", why).await;
                Ok(Action::requeue(NEXT_STEP))
            }
            Step::Issue => self.issue(status, caller, secret).await,
            Step::RemoveLost { key_id } | Step::DropPending { key_id: Some(key_id) } => {
                self.ctx.passwords.remove(caller, app, &key_id).await.map_err(|e| self.graph_failure(ISSUING, &e))?;
                self.event(
                    EventType::Warning,
                    "Restarted",
                    &format!("removed password {key_id}, whose value was not staged, and started over"),
                )
                .await;
                let revoke = status.pending.as_ref().is_some_and(|p| p.revoke);
                status.pending = Some(self.new_pending(revoke));
                Ok(Action::requeue(NEXT_STEP))
            }
            Step::DropPending { key_id: None } => {
                let revoke = status.pending.as_ref().is_some_and(|p| p.revoke);
                status.pending = Some(self.new_pending(revoke));
                Ok(Action::requeue(NEXT_STEP))
            }
            Step::RecordStaged { key_id, hint, expires_at } => {
                if let Some(p) = status.pending.as_mut() {
                    p.key_id = Some(key_id);
                    p.hint = hint;
                    p.expires_at = Some(Time(expires_at));
                    p.fingerprint = secret.view.staged_fingerprint.clone();
                    p.staged_at.get_or_insert(Time(self.now));
                }
                Ok(Action::requeue(NEXT_STEP))
            }
            Step::Prove => self.prove(status, secret).await,
            Step::Abandon { key_id } => {
                self.ctx.passwords.remove(caller, app, &key_id).await.map_err(|e| self.graph_failure(ISSUING, &e))?;
                self.apply_secret(secret.current.as_ref(), status.current.as_ref().map(|c| c.expires_at.0), None).await?;
                status.pending = None;
                let retry_in = self.settings.propagation_timeout.max(MIN_RETRY);
                let retry_at = self.now.saturating_add(jiff::SignedDuration::try_from(retry_in).unwrap_or_default()).unwrap_or(self.now);
                status.retry_not_before = Some(Time(retry_at));
                self.ctx.metrics.client_secret_rotated("abandoned");
                let message = format!(
                    "Entra ID did not accept the new password within {}; it was removed and the renewal is retried in {}",
                    crate::crd::duration::format(self.settings.propagation_timeout),
                    crate::crd::duration::format(retry_in)
                );
                self.event(EventType::Warning, "ProofTimedOut", &message).await;
                Err(Outcome::Problem { condition: ISSUING, reason: Reason::ProofTimedOut, message, retry: Some(retry_in) })
            }
            Step::Promote => {
                // The plan promotes only a pending password whose staged value is in the Secret.
                let (Some(pending), Some(staged)) = (status.pending.clone(), secret.staged.as_ref()) else {
                    return Ok(Action::requeue(NEXT_STEP));
                };
                self.apply_secret(Some(staged), pending.expires_at.as_ref().map(|t| t.0), None).await?;
                self.record_promoted(status).await;
                Ok(Action::requeue(NEXT_STEP))
            }
            Step::RecordPromoted => {
                self.record_promoted(status).await;
                Ok(Action::requeue(NEXT_STEP))
            }
            Step::RemovePrevious { key_id } => {
                self.ctx.passwords.remove(caller, app, &key_id).await.map_err(|e| self.graph_failure(ISSUING, &e))?;
                status.previous = None;
                self.event(
                    EventType::Normal,
                    "RemovedPrevious",
                    &format!("removed the previous password {key_id}: every consumer holds the new one"),
                )
                .await;
                Ok(Action::requeue(NEXT_STEP))
            }
            Step::ForgetPrevious => {
                status.previous = None;
                Ok(Action::requeue(NEXT_STEP))
            }
            Step::Replaced(found) => {
                let note = format!(
                    "{CURRENT_KEY} was changed outside idp-bridge: password {} is the current one now; the one it replaced is removed once every consumer has synced and the overlap has passed",
                    found.key_id
                );
                status.previous = status.current.take().map(|replaced| self.retire(replaced, false));
                status.current = Some(found);
                self.event(EventType::Warning, "Replaced", &note).await;
                Ok(Action::requeue(NEXT_STEP))
            }
            Step::Wait { until } => Ok(self.idle(status, passwords, until)),
        }
    }

    fn new_pending(&self, revoke: bool) -> PendingStatus {
        PendingStatus {
            marker: hex::encode(rand::random::<[u8; 8]>()),
            requested_at: Time(self.now),
            revoke,
            key_id: None,
            hint: None,
            expires_at: None,
            fingerprint: None,
            staged_at: None,
            proven_at: None,
        }
    }

    /// addPassword, then at once the value into the Secret under the staging key, then status.
    async fn issue(
        &self,
        status: &mut AzureAdClientSecretStatus,
        caller: &GraphCaller<'_>,
        secret: &SecretValues,
    ) -> Result<Action, Outcome> {
        let current_expiry = status.current.as_ref().map(|c| c.expires_at.0);
        // A password whose value could not be stored would only be created to be removed again.
        self.write_allowed(secret.current.as_ref(), current_expiry).await?;
        let Some(pending) = status.pending.as_mut() else { return Ok(Action::requeue(NEXT_STEP)) };
        let display_name = format!("{}{}", self.settings.owner_prefix, pending.marker);
        let end = plan::new_expiry(self.now, &self.settings);
        let created = match self.ctx.passwords.add(caller, &self.obj.spec.azure.client_id, &display_name, end).await {
            Ok(created) => created,
            Err(error) => {
                if !error.is_transient() {
                    self.ctx.metrics.client_secret_rotated("refused");
                    self.event(EventType::Warning, "IssueFailed", &error.to_string()).await;
                }
                return Err(self.graph_failure(ISSUING, &error));
            }
        };
        let staged = (&created.secret, pending.marker.as_str());
        self.apply_secret(secret.current.as_ref(), status.current.as_ref().map(|c| c.expires_at.0), Some(staged)).await?;
        let pending = status.pending.as_mut().expect("still pending");
        pending.key_id = Some(created.key_id.clone());
        pending.hint = Some(created.hint.clone());
        pending.expires_at = Some(Time(created.end_date_time));
        pending.fingerprint = Some(self.ctx.fingerprinter.fingerprint(&created.secret));
        pending.staged_at = Some(Time(self.now));
        self.set(
            status,
            ISSUING,
            Status::True,
            Reason::AwaitingReplication,
            "the new password is staged; waiting for Entra ID to accept it",
        );
        self.event(EventType::Normal, "Staged", &format!("created password {} and staged it in the Secret", created.key_id)).await;
        Ok(Action::requeue(NEXT_STEP))
    }

    /// A token request with the staged value; until Entra ID accepts it, again with a delay that
    /// grows with the time waited.
    async fn prove(&self, status: &mut AzureAdClientSecretStatus, secret: &SecretValues) -> Result<Action, Outcome> {
        let Some(staged) = secret.staged.as_ref() else { return Ok(Action::requeue(NEXT_STEP)) };
        let azure = &self.obj.spec.azure;
        match self.ctx.passwords.prove(azure.cloud, &azure.tenant, &azure.client_id, staged).await {
            Ok(()) => {
                if let Some(p) = status.pending.as_mut() {
                    p.proven_at = Some(Time(self.now));
                }
                Ok(Action::requeue(NEXT_STEP))
            }
            Err(error) => {
                let staged_at = status.pending.as_ref().and_then(|p| p.staged_at.as_ref()).map_or(self.now, |t| t.0);
                let waited = self.now.duration_since(staged_at).unsigned_abs();
                let delay = if error.is_transient() {
                    error.retry_after().unwrap_or_else(|| self.ctx.next_backoff(self.obj))
                } else {
                    (waited / 8).clamp(Duration::from_secs(1), Duration::from_secs(15))
                };
                let message = format!(
                    "waiting for Entra ID to accept the new password (staged {}s ago): {}",
                    waited.as_secs(),
                    error.reason().as_str()
                );
                self.set(status, ISSUING, Status::True, Reason::AwaitingReplication, &message);
                Ok(Action::requeue(delay))
            }
        }
    }

    async fn record_promoted(&self, status: &mut AzureAdClientSecretStatus) {
        let Some(pending) = status.pending.take() else { return };
        let expires_at = pending.expires_at.clone().map_or(plan::new_expiry(self.now, &self.settings), |t| t.0);
        let new_current = CredentialStatus {
            key_id: pending.key_id.clone().unwrap_or_default(),
            hint: pending.hint.clone(),
            expires_at: Time(expires_at),
            origin: CredentialOrigin::Issued,
            renewal_time: Some(Time(plan::renewal_time(expires_at, &self.settings))),
            removable_after: None,
        };
        status.previous = status.current.take().map(|previous| self.retire(previous, pending.revoke));
        status.current = Some(new_current);
        status.last_rotation_time = Some(Time(self.now));
        self.ctx.metrics.client_secret_rotated("promoted");
        let note = format!("promoted password {} to {CURRENT_KEY}", pending.key_id.unwrap_or_default());
        self.event(EventType::Normal, "Promoted", &note).await;
    }

    /// The password that stops being the current one: removable after the overlap (at once for a
    /// revoke), and never renewed.
    fn retire(&self, mut previous: CredentialStatus, revoke: bool) -> CredentialStatus {
        let after = if revoke { self.now } else { plan::removable_after(self.now, previous.expires_at.0, &self.settings) };
        previous.renewal_time = None;
        previous.removable_after = Some(Time(after));
        previous
    }

    fn idle(&self, status: &mut AzureAdClientSecretStatus, passwords: &[Password], until: Option<Timestamp>) -> Action {
        self.ctx.reset_backoff(self.obj);
        self.set(status, READY, Status::True, Reason::Ready, "the Secret holds a password Entra ID accepts");
        match (&status.previous, &status.consumers) {
            (Some(previous), Some(consumers)) => {
                let message = format!(
                    "previous password {} is removed once every consumer has synced the new one ({}/{}) and the overlap has passed",
                    previous.key_id, consumers.synced, consumers.total
                );
                self.set(status, ISSUING, Status::True, Reason::AwaitingConsumers, &message);
            }
            // An abandoned renewal stays visible until the next one starts.
            _ if status.retry_not_before.is_some() => {}
            _ => {
                let when = status.current.as_ref().and_then(|c| c.renewal_time.as_ref()).map(|t| t.0.to_string()).unwrap_or_default();
                let others = passwords.len().saturating_sub(1);
                self.set(
                    status,
                    ISSUING,
                    Status::False,
                    Reason::RenewalScheduled,
                    &format!("next renewal at {when}; the application has {others} other password(s)"),
                );
            }
        }
        let wait = until.map_or(RESYNC, |t| t.duration_since(self.now).unsigned_abs().min(RESYNC));
        Action::requeue(wait.max(Duration::from_secs(1)))
    }

    async fn read_secret(&self) -> Result<SecretValues, Outcome> {
        let api: Api<Secret> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        let Some(secret) = api.get_opt(&self.obj.spec.secret_name).await.map_err(Error::ReadSecret)? else {
            return Ok(SecretValues::default());
        };
        let annotations = secret.metadata.annotations.clone().unwrap_or_default();
        if let Some(owner) = annotations.get(OWNER_ANNOTATION).filter(|o| **o != self.name) {
            return Err(Outcome::ready(
                Reason::SecretConflict,
                format!("the Secret {} is written by AzureAdClientSecret {owner}", self.obj.spec.secret_name),
            ));
        }
        if let Some(controller) = secret.metadata.owner_references.iter().flatten().find(|o| o.controller == Some(true)) {
            return Err(Outcome::ready(
                Reason::SecretConflict,
                format!(
                    "the Secret {} is controlled by {} {}; nothing was written",
                    self.obj.spec.secret_name, controller.kind, controller.name
                ),
            ));
        }
        let data = secret.data.unwrap_or_default();
        let value = |key: &str| {
            data.get(key).and_then(|b| std::str::from_utf8(&b.0).ok()).map(str::trim).filter(|s| !s.is_empty()).map(SecretValue::new)
        };
        let (current, staged) = (value(CURRENT_KEY), value(STAGED_KEY));
        let view = SecretView {
            current_fingerprint: current.as_ref().map(|v| self.ctx.fingerprinter.fingerprint(v)),
            current_hint: current.as_ref().map(|v| v.expose().chars().take(3).collect()),
            staged_fingerprint: staged.as_ref().map(|v| self.ctx.fingerprinter.fingerprint(v)),
            staged_marker: annotations.get(STAGED_MARKER_ANNOTATION).cloned(),
        };
        Ok(SecretValues { exists: true, current, staged, view })
    }

    /// The secret Graph calls authenticate with: the application's current one, or the rotator's.
    async fn caller_secret(&self, secret: &SecretValues) -> Result<SecretValue, Outcome> {
        let Some(rotator) = self.obj.spec.graph_auth.rotator.as_ref().filter(|_| !self.settings.self_auth) else {
            return secret.current.clone().ok_or_else(|| {
                let whose = if secret.exists { "holds no" } else { "does not exist, so it holds no" };
                Outcome::ready(
                    Reason::BootstrapSecretMissing,
                    format!(
                        "the Secret {} {whose} {CURRENT_KEY}: with graphAuth.mode Self, put the application's current secret there first",
                        self.obj.spec.secret_name
                    ),
                )
            });
        };
        let api: Api<Secret> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        let reference = &rotator.client_secret_ref;
        let found = api.get_opt(&reference.name).await.map_err(Error::ReadSecret)?;
        let value = found.and_then(|s| s.data).and_then(|d| d.get(&reference.key).cloned());
        let text = value.and_then(|b| String::from_utf8(b.0).ok()).map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
        text.map(SecretValue::new).ok_or_else(|| {
            Outcome::ready(
                Reason::SecretNotFound,
                format!("the rotator's Secret {} has no non-empty key {}", reference.name, reference.key),
            )
        })
    }

    fn caller<'s>(&'s self, secret: &'s SecretValue, fingerprint: &'s str) -> GraphCaller<'s> {
        let azure = &self.obj.spec.azure;
        let client_id = self
            .obj
            .spec
            .graph_auth
            .rotator
            .as_ref()
            .filter(|_| !self.settings.self_auth)
            .map_or(azure.client_id.as_str(), |r| r.client_id.as_str());
        GraphCaller { cloud: azure.cloud, tenant: &azure.tenant, client_id, secret, fingerprint }
    }

    /// Server-side applies the Secret with everything this controller owns in it: the current
    /// value (and its expiry), the staged one when there is one, the owner annotation. A key left
    /// out is removed, which is how the staged value goes at promotion.
    async fn apply_secret(
        &self,
        current: Option<&SecretValue>,
        expires_at: Option<Timestamp>,
        staged: Option<(&SecretValue, &str)>,
    ) -> Result<(), Error> {
        let secret = self.desired_secret(current, expires_at, staged);
        let api: Api<Secret> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        api.patch(&self.obj.spec.secret_name, &PatchParams::apply(SECRET_MANAGER).force(), &Patch::Apply(&secret))
            .await
            .map_err(Error::WriteClientSecret)?;
        Ok(())
    }

    /// The Secret with everything this controller owns in it: the current value (and its
    /// expiry), the staged one when there is one, the owner annotation. Applied, a key left out
    /// is removed, which is how the staged value goes at promotion.
    fn desired_secret(&self, current: Option<&SecretValue>, expires_at: Option<Timestamp>, staged: Option<(&SecretValue, &str)>) -> Secret {
        let mut data = BTreeMap::new();
        let mut annotations = BTreeMap::from([(OWNER_ANNOTATION.to_owned(), self.name.clone())]);
        if let Some(current) = current {
            data.insert(CURRENT_KEY.to_owned(), ByteString(current.expose().as_bytes().to_vec()));
            if let Some(at) = expires_at {
                annotations.insert(EXPIRES_AT_ANNOTATION.to_owned(), at.to_string());
            }
        }
        if let Some((value, marker)) = staged {
            data.insert(STAGED_KEY.to_owned(), ByteString(value.expose().as_bytes().to_vec()));
            annotations.insert(STAGED_MARKER_ANNOTATION.to_owned(), marker.to_owned());
        }
        Secret {
            metadata: ObjectMeta { name: Some(self.obj.spec.secret_name.clone()), annotations: Some(annotations), ..Default::default() },
            data: Some(data),
            ..Default::default()
        }
    }

    /// The Secret write the issue will need, as a server-side dry run: RBAC refusing it becomes
    /// a condition before anything is created in Entra ID.
    async fn write_allowed(&self, current: Option<&SecretValue>, expires_at: Option<Timestamp>) -> Result<(), Outcome> {
        let api: Api<Secret> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        let secret = self.desired_secret(current, expires_at, None);
        match api.patch(&self.obj.spec.secret_name, &PatchParams::apply(SECRET_MANAGER).force().dry_run(), &Patch::Apply(&secret)).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.is_forbidden() => Err(Outcome::ready(
                Reason::SecretWriteForbidden,
                format!(
                    "the operator may not write Secret {} in namespace {} (with the Helm chart, list the namespace in rbac.clientSecretNamespaces); no password was created",
                    self.obj.spec.secret_name, self.namespace
                ),
            )),
            Err(e) => Err(Outcome::Kube(Error::WriteClientSecret(e))),
        }
    }

    async fn write_status(&self, previous: &AzureAdClientSecretStatus, next: &AzureAdClientSecretStatus) -> Result<(), Error> {
        if next == previous {
            return Ok(());
        }
        let api: Api<AzureAdClientSecret> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        let patch = json!({"apiVersion": "idpbridge.io/v1alpha1", "kind": "AzureAdClientSecret", "status": next});
        api.patch_status(&self.name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch)).await.map_err(Error::WriteStatus)?;
        Ok(())
    }

    async fn event(&self, type_: EventType, reason: &str, note: &str) {
        let event = KubeEvent {
            type_,
            reason: reason.to_owned(),
            note: Some(note.chars().take(1000).collect()),
            action: "Rotate".into(),
            secondary: None,
        };
        if let Err(e) = self.ctx.recorder.publish(&event, &self.obj.object_ref(&())).await {
            tracing::warn!(error = %e, "publishing event failed");
        }
    }
}

/// The step's name, for the log (a step never carries a secret, but names are enough).
fn step_name(step: &Step) -> &'static str {
    match step {
        Step::Adopt(_) => "Adopt",
        Step::BootstrapMissing => "BootstrapMissing",
        Step::BootstrapUnknown => "BootstrapUnknown",
        Step::ForeignOwner { .. } => "ForeignOwner",
        Step::RemoveStray { .. } => "RemoveStray",
        Step::StartRenewal { .. } => "StartRenewal",
        Step::Issue => "Issue",
        Step::RemoveLost { .. } => "RemoveLost",
        Step::RecordStaged { .. } => "RecordStaged",
        Step::DropPending { .. } => "DropPending",
        Step::Prove => "Prove",
        Step::Abandon { .. } => "Abandon",
        Step::Promote => "Promote",
        Step::RecordPromoted => "RecordPromoted",
        Step::RemovePrevious { .. } => "RemovePrevious",
        Step::ForgetPrevious => "ForgetPrevious",
        Step::Replaced(_) => "Replaced",
        Step::Wait { .. } => "Wait",
    }
}
