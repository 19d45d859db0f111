//! The reconcile, as a thin sequence: resolve -> validate -> sync -> decide, then carry the
//! decision out (status, Events, metrics) and schedule the next look. Each stage returns a typed
//! result; the decision is pure (`decide`, `status`, `broker::*::plan`).

use std::{collections::BTreeMap, sync::Arc, time::Instant};

use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        events::EventType,
        finalizer::{Event as Finalizer, finalizer},
    },
};
use serde_json::json;
use tracing::{info, warn};

use super::{
    Context,
    checks::CheckInputs,
    claims::{Held, Holder},
    decide::{self, Decision, Next},
    error::Error,
    guard::guarded,
    lookups::Lookups,
    observation::{BrokerStage, CredentialsFailure, Expiry, Observation, Problem, ScimStage},
    registration, resolve, scim,
    status::Subject,
};
use crate::{
    azure::{Validation, ValidationRequest},
    broker::{
        AzureCredentials, BrokerClient, BrokerError, BrokerExtras, BrokerKey, BrokerTarget, DeleteRequest, SyncOutcome, SyncRequest,
        ownership::{Claim, Ownership},
    },
    crd::{
        EXPIRES_AT_ANNOTATION, FINALIZER,
        conditions::{Desired, READY, Reason, Status, set_condition},
        connection::{
            AzureAdConnection, AzureAdConnectionStatus, AzureSpec, DeletionPolicy, ExpirySource, ManagementPolicy, ValidationMode,
        },
    },
    metrics::{AppConfiguredLabels, ConnectionLabels, ExpiryLabels},
    secret::SecretValue,
};

/// Field manager of every status write.
pub const MANAGER: &str = "idp-bridge";

/// Every log line of a reconcile carries the connection's namespace and name (the span fields).
/// The stages run under the reconcile deadline with their panics contained ([`guarded`]): a
/// connection whose endpoints hang or that hits a bug fails alone, with a Ready condition that
/// says so, and holds its concurrency slot no longer than the deadline.
#[tracing::instrument(skip_all, fields(namespace = %conn.namespace().unwrap_or_default(), name = %conn.name_any()))]
pub async fn reconcile(conn: Arc<AzureAdConnection>, ctx: Arc<Context>, lookups: Arc<Lookups>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let result = guarded(ctx.config.reconcile_timeout, stages(conn.clone(), &ctx, &lookups)).await;
    if let Err(error @ (Error::DeadlineExceeded | Error::Panicked)) = &result {
        report_unfinished(&conn, &ctx, error).await;
    }
    let outcome = match &result {
        Ok(_) => "success",
        Err(Error::DeadlineExceeded) => "timeout",
        Err(Error::Panicked) => "panic",
        Err(_) => "error",
    };
    ctx.metrics.reconciled(outcome, started.elapsed());
    result
}

async fn stages(conn: Arc<AzureAdConnection>, ctx: &Context, lookups: &Lookups) -> Result<Action, Error> {
    // Never read a cache that has not listed yet: it would call every broker missing.
    lookups.listed().await;
    let api: Api<AzureAdConnection> = Api::namespaced(ctx.client.clone(), &conn.namespace().unwrap_or_default());
    finalizer(&api, FINALIZER, conn, |event| async {
        match event {
            Finalizer::Apply(conn) => apply(&conn, ctx, lookups).await,
            Finalizer::Cleanup(conn) => cleanup(&conn, ctx, lookups).await,
        }
    })
    .await
    .map_err(Error::from)
}

/// A reconcile cut by its deadline or a panic decided nothing: only Ready changes, to say why,
/// so a person sees the connection is stuck rather than a stale Ready. Best effort: the error
/// is retried with backoff either way.
async fn report_unfinished(conn: &AzureAdConnection, ctx: &Context, error: &Error) {
    let reason = if matches!(error, Error::Panicked) { Reason::ReconcilePanicked } else { Reason::ReconcileTimedOut };
    let previous = conn.status.clone().unwrap_or_default();
    let mut next = previous.clone();
    let ready = Desired::new(READY, Status::False, reason, error.to_string());
    let _ = set_condition(&mut next.conditions, &ready, conn.meta().generation, jiff::Timestamp::now());
    match tokio::time::timeout(ctx.config.http_timeout, write_status(conn, ctx, &previous, &next)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "could not report the unfinished reconcile"),
        Err(_) => warn!("could not report the unfinished reconcile in time"),
    }
}

/// The resolve stage: what the connection's Secret holds.
struct Resolved {
    secret: Result<SecretValue, Problem>,
    /// Keyed fingerprint of the value, when it was read.
    fingerprint: Option<String>,
    annotations: BTreeMap<String, String>,
}

/// The validate stage: Azure's verdict on the secret, and the expiry known for it.
struct Validated {
    credentials: Result<Validation, CredentialsFailure>,
    expiry: Expiry,
}

async fn apply(conn: &AzureAdConnection, ctx: &Context, lookups: &Lookups) -> Result<Action, Error> {
    let started = Instant::now();
    // The status as stored, which the decided one is compared with before it is written; and
    // the connection as this process knows it, with a push whose status write was lost.
    let stored = conn.status.clone().unwrap_or_default();
    let known = ctx.pushes.known(conn);
    let conn = known.as_ref();
    let previous = conn.status.clone().unwrap_or_default();
    let subject = Subject::of(conn, &previous);
    let now = jiff::Timestamp::now();
    if conn.spec.suspend {
        let decision = decide::suspended(&subject, now);
        record_series(conn, ctx, &decision.status);
        return carry_out(conn, ctx, &stored, decision).await;
    }

    let resolved = resolve_secret(ctx, lookups, conn).await?;
    let validated = validate(ctx, conn, &resolved).await;
    let (broker, scim, resolved_broker) = sync_broker(ctx, lookups, conn, &resolved, &validated).await?;
    let inputs = registration::Inputs {
        secret: resolved.secret.as_ref().ok(),
        fingerprint: resolved.fingerprint.as_deref().unwrap_or_default(),
        credentials: &validated.credentials,
        broker: resolved_broker.as_ref(),
        broker_stage: &broker,
    };
    let app = registration::check(ctx, conn, &inputs).await;
    let observation = Observation {
        fingerprint: resolved.fingerprint,
        credentials: validated.credentials,
        expiry: validated.expiry.or_last_known(previous.secret.as_ref()),
        broker,
        scim,
        observe_only: conn.spec.management_policy == ManagementPolicy::ObserveOnly,
        app,
    };
    let decision = decide::decide(&subject, &observation, now);
    record_series(conn, ctx, &decision.status);
    record_rotation(conn, ctx, &previous, &observation, started);
    carry_out(conn, ctx, &stored, decision).await
}

/// Writes the decided status, then publishes its Events (only once the status is stored, so a
/// failed write retried later announces nothing twice), and schedules the next reconcile.
async fn carry_out(
    conn: &AzureAdConnection,
    ctx: &Context,
    previous: &AzureAdConnectionStatus,
    decision: Decision,
) -> Result<Action, Error> {
    write_status(conn, ctx, previous, &decision.status).await?;
    for event in &decision.events {
        let type_ = if event.warning { EventType::Warning } else { EventType::Normal };
        ctx.publish(conn, type_, &event.reason, &event.note).await;
    }
    Ok(schedule(ctx, conn, decision.next))
}

/// The requeue for `next`; a success or a permanent problem ends the backoff sequence.
fn schedule(ctx: &Context, conn: &AzureAdConnection, next: Next) -> Action {
    match next {
        Next::AwaitChange => {
            ctx.reset_backoff(conn);
            Action::await_change()
        }
        Next::Refresh { interval, threshold } => {
            ctx.reset_backoff(conn);
            Action::requeue(decide::refresh_delay(interval, threshold, rand::random()))
        }
        Next::Backoff { at_least } if at_least.is_zero() => Action::requeue(ctx.next_backoff(conn)),
        // The upstream said when (Retry-After): look again then, up to 10% later so the
        // connections of one throttled app do not all return at the same instant. Reconciles
        // answered from a block meanwhile (re-triggered by events) sent nothing, so they do not
        // advance the backoff: it would otherwise outgrow the block many times over.
        Next::Backoff { at_least } => Action::requeue(at_least.mul_f64(1.0 + 0.1 * rand::random::<f64>())),
    }
}

/// Reads the client secret and fingerprints it. Only a failing API call is an error; a missing
/// or malformed Secret is a problem for the status.
async fn resolve_secret(ctx: &Context, lookups: &Lookups, conn: &AzureAdConnection) -> Result<Resolved, Error> {
    let (secret, annotations) = resolve::client_secret(lookups, conn).await?;
    let fingerprint = secret.as_ref().ok().map(|s| ctx.fingerprinter.fingerprint(s));
    Ok(Resolved { secret, fingerprint, annotations })
}

/// Asks Azure about the secret (per `validation.mode`), then finds its expiry.
async fn validate(ctx: &Context, conn: &AzureAdConnection, resolved: &Resolved) -> Validated {
    let spec = &conn.spec;
    let from_annotation = resolve::expiry_from_annotations(spec.expiry.source, &resolved.annotations);
    let secret = match &resolved.secret {
        Ok(secret) => secret,
        Err(problem) => return Validated { credentials: Err(CredentialsFailure::Secret(problem.clone())), expiry: from_annotation },
    };
    let request = ValidationRequest {
        cloud: spec.azure.cloud,
        tenant: &spec.azure.tenant,
        client_id: &spec.azure.client_id,
        secret,
        fingerprint: resolved.fingerprint.as_deref().unwrap_or_default(),
        mode: spec.validation.mode,
        ttl: decide::cache_ttl(spec.refresh_interval(), rand::random()),
    };
    match ctx.azure.validate(&request).await {
        Ok(validation) => {
            let expiry = graph_expiry(ctx, conn, &request, validation.tenant_id.as_deref(), from_annotation).await;
            Validated { credentials: Ok(validation), expiry }
        }
        Err(error) => {
            warn!(reason = error.reason().as_str(), "credentials not confirmed by Azure");
            let expiry = if error.is_transient() {
                graph_unavailable(spec.expiry.source, from_annotation, error.to_string())
            } else {
                from_annotation
            };
            Validated { credentials: Err(CredentialsFailure::Azure(error)), expiry }
        }
    }
}

/// The expiry when Graph could not be asked for a transient reason: for `Graph`, and for `Auto`
/// without a usable annotation, `Unavailable` (the last known date stands); otherwise the
/// annotation's answer.
fn graph_unavailable(source: ExpirySource, from_annotation: Expiry, why: String) -> Expiry {
    match (source, &from_annotation) {
        (ExpirySource::Graph, _) | (ExpirySource::Auto, Expiry::Unknown(_)) => Expiry::Unavailable(why),
        _ => from_annotation,
    }
}

/// The broker stage: resolves the broker reference and pushes the validated secret; then, for
/// Cloudflare SCIM, the SCIM Secret ([`scim::stage`]), which never fails the sync. The only place
/// that builds a `SyncRequest` and reads SCIM credentials from the outcome. Also returns the
/// resolved broker, whose callback the registration stage checks.
async fn sync_broker(
    ctx: &Context,
    lookups: &Lookups,
    conn: &AzureAdConnection,
    resolved: &Resolved,
    validated: &Validated,
) -> Result<(BrokerStage, ScimStage, Option<resolve::ResolvedBroker>), Error> {
    let untouched = if scim::secret_name(conn).is_some() { ScimStage::Skipped } else { ScimStage::Off };
    let (Ok(secret), Ok(validation)) = (&resolved.secret, &validated.credentials) else {
        return Ok((BrokerStage::NotAttempted, untouched, None));
    };
    let resolved_broker = match resolve::broker(lookups, &ctx.config, conn).await? {
        Ok(broker) => broker,
        Err(problem) => return Ok((BrokerStage::Unresolved(problem), untouched, None)),
    };
    ctx.remember_broker(conn, &resolved_broker);
    let key = ctx.broker_key(&resolved_broker);
    let broker = ctx.broker_client_keyed(key.clone(), &resolved_broker);
    let stage = push_unless_checked(ctx, conn, &broker, key, resolved, secret, validation).await?;
    let scim = match &stage {
        BrokerStage::Synced(outcome) if conn.spec.management_policy != ManagementPolicy::ObserveOnly => {
            if let Some(BrokerExtras::CloudflareScim(scim)) = &outcome.extras {
                ctx.hold_scim(conn, scim.clone());
            }
            scim::stage(ctx, conn, &broker, outcome.id.as_deref()).await
        }
        _ => untouched,
    };
    Ok((stage, scim, Some(resolved_broker)))
}

/// [`push`], unless the broker object was found in sync with the same inputs since the
/// connection's last real look ([`checks`]): then nothing is sent to the broker or the claims.
async fn push_unless_checked(
    ctx: &Context,
    conn: &AzureAdConnection,
    broker: &BrokerClient,
    broker_key: BrokerKey,
    resolved: &Resolved,
    secret: &SecretValue,
    validation: &Validation,
) -> Result<BrokerStage, Error> {
    let uid = conn.uid().unwrap_or_default();
    let inputs = CheckInputs::of(conn, broker_key, resolved.fingerprint.as_deref().unwrap_or_default());
    if let Some(outcome) = ctx.checks.reusable(&uid, &inputs) {
        return Ok(BrokerStage::Synced(outcome));
    }
    let stage = push(ctx, conn, broker, resolved, secret, validation).await?;
    ctx.checks.record(&uid, inputs, &stage, next_real_look(conn, validation));
    Ok(stage)
}

/// When the connection is next due a real look at Azure and its broker: when its validation
/// stops being trusted (the refresh is scheduled from then), or within the refresh interval
/// when nothing is cached.
fn next_real_look(conn: &AzureAdConnection, validation: &Validation) -> Instant {
    let left =
        validation.trusted_for(jiff::Timestamp::now()).unwrap_or_else(|| decide::cache_ttl(conn.spec.refresh_interval(), rand::random()));
    Instant::now() + left
}

/// Pushes the validated secret to the broker, under the claim on its object where the broker's
/// objects cannot carry the owner marker.
async fn push(
    ctx: &Context,
    conn: &AzureAdConnection,
    broker: &BrokerClient,
    resolved: &Resolved,
    secret: &SecretValue,
    validation: &Validation,
) -> Result<BrokerStage, Error> {
    let spec = &conn.spec;
    let last_sync = conn.status.as_ref().and_then(|s| s.broker.clone()).unwrap_or_default();
    let target = match BrokerTarget::of(spec) {
        Ok(target) => target,
        Err(unsupported) => return Ok(BrokerStage::Failed(unsupported)),
    };
    let owner = ctx.owner_marker(conn);
    let mut claim = match take_claim(ctx, broker, target, &spec.azure, &owner, last_sync.id.as_deref()).await? {
        Ok(claim) => claim,
        Err(refused) => return Ok(BrokerStage::Failed(refused)),
    };
    let request = SyncRequest {
        target,
        azure: AzureCredentials {
            cloud: spec.azure.cloud,
            tenant: &spec.azure.tenant,
            tenant_id: validation.tenant_id.as_deref(),
            client_id: &spec.azure.client_id,
            secret,
            fingerprint: resolved.fingerprint.as_deref().unwrap_or_default(),
            audience: spec.azure.sign_in_audience,
        },
        known_id: last_sync.id.as_deref(),
        synced_fingerprint: last_sync.synced_fingerprint.as_deref(),
        observe_only: spec.management_policy == ManagementPolicy::ObserveOnly,
        ownership: Ownership { owner: &owner, adopt: spec.adopt, claim: None },
    };
    let synced = sync_under_claim(ctx, broker, &request, claim.as_mut()).await?;
    if let Some(claim) = claim.as_mut() {
        record_claimed_id(ctx, &owner, claim, &synced).await?;
    }
    Ok(match synced {
        Ok(outcome) => {
            if outcome.wrote {
                info!(differences = ?outcome.differences, "broker object written");
                ctx.pushes.record(conn, outcome.id.as_deref().or(request.known_id), request.azure.fingerprint);
            }
            BrokerStage::Synced(outcome)
        }
        Err(error) => {
            warn!(reason = error.reason().as_str(), %error, "broker sync failed");
            BrokerStage::Failed(error)
        }
    })
}

/// The operator's claim a sync runs under (brokers whose objects cannot carry the owner marker).
struct SyncClaim {
    held: Held,
    /// The claim took over the record of a renamed object from the claim of its old name.
    carried_over: bool,
}

/// Takes the claim on the object `target` names for `owner`: `None` for a broker whose objects
/// carry the marker themselves, the refusal when another connection holds the claim. A fresh
/// claim takes over the record of the object status knows (`known_id`) from another claim of the
/// same owner: the object was renamed.
async fn take_claim(
    ctx: &Context,
    broker: &BrokerClient,
    target: BrokerTarget<'_>,
    app: &AzureSpec,
    owner: &str,
    known_id: Option<&str>,
) -> Result<Result<Option<SyncClaim>, BrokerError>, Error> {
    let Some(key) = broker.claim_key(target, app) else { return Ok(Ok(None)) };
    let mut held = match ctx.claims.take(&key, owner).await.map_err(Error::Claim)? {
        Holder::Us(held) => held,
        Holder::Another => return Ok(Err(broker.claimed_elsewhere())),
        Holder::Nobody => return Ok(Err(BrokerError::Unexpected("the claim on the broker object vanished".into()))),
    };
    let carried_over = match known_id {
        Some(known) => ctx.claims.carry_over(owner, &mut held, known).await.map_err(Error::Claim)?,
        None => false,
    };
    Ok(Ok(Some(SyncClaim { held, carried_over })))
}

/// Syncs under `claim`. A create the adapter defers until the claim says one is under way (see
/// `ownership::Claim::Creating`) is recorded there, then synced once more.
async fn sync_under_claim(
    ctx: &Context,
    broker: &BrokerClient,
    base: &SyncRequest<'_>,
    claim: Option<&mut SyncClaim>,
) -> Result<Result<SyncOutcome, BrokerError>, Error> {
    let Some(claim) = claim else { return Ok(broker.sync(base).await) };
    let mut request = base.clone();
    request.ownership.claim = Some(claim.held.claim());
    let synced = broker.sync(&request).await;
    if !synced.as_ref().is_ok_and(|outcome| outcome.create_deferred) {
        return Ok(synced);
    }
    ctx.claims.record(&mut claim.held, None).await.map_err(Error::Claim)?;
    let mut request = base.clone();
    request.ownership.claim = Some(claim.held.claim());
    Ok(broker.sync(&request).await)
}

/// Records the synced object's id in its claim, once; the claims of names the connection no
/// longer uses (a renamed object, another broker) are released then.
async fn record_claimed_id(
    ctx: &Context,
    owner: &str,
    claim: &mut SyncClaim,
    synced: &Result<SyncOutcome, BrokerError>,
) -> Result<(), Error> {
    let Ok(SyncOutcome { id: Some(id), .. }) = synced else { return Ok(()) };
    if claim.carried_over || !claim.held.records(id) {
        ctx.claims.record(&mut claim.held, Some(id)).await.map_err(Error::Claim)?;
        ctx.claims.release_others(owner, &claim.held.name).await.map_err(Error::Claim)?;
    }
    Ok(())
}

/// The `reason` label when Ready has no reason the operator knows (there is no Ready yet).
const UNKNOWN_REASON: &str = "Unknown";

/// A reason from the closed set, for a metric label: anything else is [`UNKNOWN_REASON`].
fn bounded_reason(reason: &str) -> &'static str {
    Reason::ALL.iter().map(|r| r.as_str()).find(|known| *known == reason).unwrap_or(UNKNOWN_REASON)
}

/// The connection's ready and expiry gauges, from the status about to be written.
fn record_series(conn: &AzureAdConnection, ctx: &Context, status: &AzureAdConnectionStatus) {
    let Some(uid) = conn.uid() else { return };
    let (namespace, name) = (conn.namespace().unwrap_or_default(), conn.name_any());
    let condition = crate::crd::conditions::find(&status.conditions, crate::crd::conditions::READY);
    let ready = condition.is_some_and(|c| c.status == "True");
    let reason = condition.map_or(UNKNOWN_REASON, |c| bounded_reason(&c.reason));
    let ready_labels = ConnectionLabels {
        namespace: namespace.clone(),
        name: name.clone(),
        broker: conn.spec.broker_ref.name.clone(),
        reason: reason.into(),
    };
    let expiry = status.secret.as_ref().and_then(|s| s.expires_at.as_ref()).map(|at| {
        let tenant_id = status.tenant_id.clone().unwrap_or_else(|| conn.spec.azure.tenant.clone());
        (ExpiryLabels { namespace, name, client_id: conn.spec.azure.client_id.clone(), tenant_id }, at.0.as_second() as f64)
    });
    ctx.metrics.connection(&uid, ready_labels, ready, expiry);
    if let Some(app) = crate::crd::conditions::find(&status.conditions, crate::crd::conditions::AZURE_APP_CONFIGURED) {
        let labels = AppConfiguredLabels {
            namespace: conn.namespace().unwrap_or_default(),
            name: conn.name_any(),
            status: app.status.clone(),
            reason: bounded_reason(&app.reason).into(),
        };
        ctx.metrics.app_configured(&uid, labels);
    }
}

/// Observes the Secret-change-to-broker latency once the broker holds a rotated secret; a change
/// that will not be pushed (rejected, unchanged, observe-only) just ends the measurement.
fn record_rotation(
    conn: &AzureAdConnection,
    ctx: &Context,
    previous: &AzureAdConnectionStatus,
    observation: &Observation,
    started: Instant,
) {
    let key = format!("{}/{}", conn.namespace().unwrap_or_default(), conn.name_any());
    let previously_synced = previous.broker.as_ref().and_then(|b| b.synced_fingerprint.as_deref());
    match (&observation.broker, &observation.credentials) {
        // This reconcile may have read the new value before the Secret's watch event arrived:
        // then the change was first observed when the reconcile started.
        (BrokerStage::Synced(outcome), _) if outcome.wrote && observation.fingerprint.as_deref() != previously_synced => {
            ctx.metrics.secret_synced(&key, started)
        }
        (BrokerStage::Failed(e), _) if e.is_transient() => {}
        (_, Err(failure)) if failure.is_transient() => {}
        _ => ctx.metrics.secret_change_settled(&key),
    }
}

/// The expiry per `expiry.source`, once the credentials are valid: Graph for `Graph` and `Auto`
/// (Auto falls back to the annotation's `from_annotation`), the annotation otherwise.
async fn graph_expiry(
    ctx: &Context,
    conn: &AzureAdConnection,
    request: &ValidationRequest<'_>,
    tenant_id: Option<&str>,
    from_annotation: Expiry,
) -> Expiry {
    let source = conn.spec.expiry.source;
    if !matches!(source, ExpirySource::Graph | ExpirySource::Auto) {
        return from_annotation;
    }
    let lookup = match (request.mode, tenant_id) {
        (ValidationMode::ClientCredentials, Some(tenant_id)) => ctx.azure.secret_expiry(request, tenant_id).await,
        _ if source == ExpirySource::Auto => return from_annotation,
        _ => {
            return Expiry::Unknown(
                "expiry.source Graph needs validation.mode ClientCredentials (the lookup uses the validated secret)".into(),
            );
        }
    };
    match lookup {
        Err(error) if error.is_transient() => graph_unavailable(source, from_annotation, error.to_string()),
        Ok(found) => Expiry::Known {
            expires_at: found.expires_at,
            source: "Graph",
            key_id: Some(found.key_id),
            note: (found.same_hint > 1).then(|| {
                format!(
                    "{} of the application's secrets share this one's first three characters; the earliest expiry is used",
                    found.same_hint
                )
            }),
        },
        Err(error) if source == ExpirySource::Auto => match from_annotation {
            Expiry::Unknown(_) => Expiry::Unknown(format!("{error}; and the Secret has no {EXPIRES_AT_ANNOTATION} annotation")),
            other => other,
        },
        Err(error) => Expiry::Invalid(Problem::new(error.reason(), error.to_string())),
    }
}

/// Writes status by server-side apply, only when it changed.
async fn write_status(
    conn: &AzureAdConnection,
    ctx: &Context,
    previous: &AzureAdConnectionStatus,
    next: &AzureAdConnectionStatus,
) -> Result<(), Error> {
    if next == previous {
        return Ok(());
    }
    let api: Api<AzureAdConnection> = Api::namespaced(ctx.client.clone(), &conn.namespace().unwrap_or_default());
    let patch = json!({
        "apiVersion": "idpbridge.io/v1alpha1",
        "kind": "AzureAdConnection",
        "status": next,
    });
    api.patch_status(&conn.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch)).await.map_err(Error::WriteStatus)?;
    Ok(())
}

/// Deletion: Orphan leaves the broker object; Delete removes it, and gives up (with a Warning)
/// when the broker is gone or keeps failing past the deletion timeout. The broker it last synced
/// through is kept until the cleanup is done, for a retry.
async fn cleanup(conn: &AzureAdConnection, ctx: &Context, lookups: &Lookups) -> Result<Action, Error> {
    ctx.forget(conn);
    let done = delete_broker_object(conn, ctx, lookups).await;
    if done.is_ok() {
        ctx.release_broker(conn);
    }
    done
}

async fn delete_broker_object(conn: &AzureAdConnection, ctx: &Context, lookups: &Lookups) -> Result<Action, Error> {
    let last_broker = ctx.last_broker(conn);
    if conn.spec.deletion_policy == DeletionPolicy::Orphan {
        return Ok(Action::await_change());
    }
    if conn.spec.suspend {
        ctx.publish(conn, EventType::Warning, "Orphaned", "the connection is suspended, so the broker object was left in place").await;
        return Ok(Action::await_change());
    }
    let resolved = match (resolve::broker(lookups, &ctx.config, conn).await?, last_broker) {
        (Ok(resolved), _) => resolved,
        // The broker is there but its credential Secret is gone (deleted with the namespace, and
        // not protected where the operator may not patch Secrets): the credentials last read.
        (Err(Problem { reason: Reason::BrokerCredentialsMissing, .. }), Some(last)) => last,
        (Err(Problem { message, .. }), _) => {
            ctx.publish(
                conn,
                EventType::Warning,
                "Orphaned",
                &format!("the broker object could not be deleted and was left in place: {message}"),
            )
            .await;
            return Ok(Action::await_change());
        }
    };
    let deleted = delete_owned(ctx, conn, &ctx.broker_client(&resolved)).await?;
    match deleted {
        Ok(()) => {
            ctx.publish(conn, EventType::Normal, "Deleted", "the broker object was deleted (deletionPolicy: Delete)").await;
            Ok(Action::await_change())
        }
        // Not this connection's to delete (another one manages it, or idp-bridge did not make
        // it): nothing to wait for.
        Err(error @ BrokerError::Conflict(_)) => {
            ctx.publish(conn, EventType::Warning, "Orphaned", &format!("the broker object was left in place: {error}")).await;
            Ok(Action::await_change())
        }
        Err(error) => {
            let deleting_since = conn.meta().deletion_timestamp.as_ref().map_or(jiff::Timestamp::now(), |t| t.0);
            let waited = jiff::Timestamp::now().as_second() - deleting_since.as_second();
            if waited >= ctx.config.deletion_timeout.as_secs() as i64 {
                ctx.publish(
                    conn,
                    EventType::Warning,
                    "Orphaned",
                    &format!("gave up deleting the broker object after {waited}s and left it in place: {error}"),
                )
                .await;
                Ok(Action::await_change())
            } else {
                ctx.publish(conn, EventType::Warning, "DeleteFailed", &format!("deleting the broker object failed; retrying: {error}"))
                    .await;
                Err(Error::Cleanup(error))
            }
        }
    }
}

/// Deletes the connection's broker object if it is the connection's own, then releases its
/// claim. Under a claim broker with no claim of this connection's, only what status records (or
/// `adopt`) is its own; a claim another connection holds refuses the delete.
async fn delete_owned(ctx: &Context, conn: &AzureAdConnection, broker: &BrokerClient) -> Result<Result<(), BrokerError>, Error> {
    // An object created by this process whose status write was lost is still this connection's.
    let known = ctx.pushes.known(conn);
    let known_id = known.status.as_ref().and_then(|s| s.broker.as_ref()).and_then(|b| b.id.as_deref());
    let owner = ctx.owner_marker(conn);
    let claim_key = BrokerTarget::of(&conn.spec).ok().and_then(|target| broker.claim_key(target, &conn.spec.azure));
    let held = match &claim_key {
        None => None,
        Some(key) => match ctx.claims.holder(key, &owner).await.map_err(Error::Claim)? {
            Holder::Us(held) => Some(held),
            Holder::Another => return Ok(Err(broker.claimed_elsewhere())),
            Holder::Nobody => None,
        },
    };
    let claim = held.as_ref().map(Held::claim).or(claim_key.as_ref().map(|_| Claim::Fresh));
    let ownership = Ownership { owner: &owner, adopt: conn.spec.adopt, claim };
    let deleted = match DeleteRequest::new(&conn.spec, known_id, ownership) {
        Ok(request) => broker.delete(&request).await,
        Err(unsupported) => Err(unsupported),
    };
    if let (Ok(()), Some(held)) = (&deleted, &held) {
        ctx.claims.release(held).await.map_err(Error::Claim)?;
    }
    Ok(deleted)
}
