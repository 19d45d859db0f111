//! The reconcile: resolve -> validate -> plan/apply to the broker -> status. Each stage is a
//! small function; the decisions live in pure code (`status`, `broker::*::plan`).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        events::{Event as KubeEvent, EventType},
        finalizer::{Event as Finalizer, finalizer},
    },
};
use serde_json::json;
use tracing::{info, warn};

use crate::metrics::{ConnectionLabels, ExpiryLabels};

use super::{
    Context,
    error::Error,
    observation::{BrokerStage, CredentialsFailure, Expiry, Observation, Problem},
    resolve::{self, ResolvedBroker},
    status::{self, Subject},
};
use crate::{
    azure::ValidationRequest,
    broker::{AzureCredentials, BrokerClient, BrokerKey, SyncRequest},
    crd::{
        EXPIRES_AT_ANNOTATION, FINALIZER,
        conditions::Reason,
        connection::{AzureAdConnection, AzureAdConnectionStatus, DeletionPolicy, ExpirySource, ManagementPolicy, ValidationMode},
    },
};

/// Field manager of every status write.
pub const MANAGER: &str = "idp-bridge";

/// Every log line of a reconcile carries the connection's namespace and name (the span fields).
#[tracing::instrument(skip_all, fields(namespace = %conn.namespace().unwrap_or_default(), name = %conn.name_any()))]
pub async fn reconcile(conn: Arc<AzureAdConnection>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let api: Api<AzureAdConnection> = Api::namespaced(ctx.client.clone(), &conn.namespace().unwrap_or_default());
    let result = finalizer(&api, FINALIZER, conn, |event| async {
        match event {
            Finalizer::Apply(conn) => apply(&conn, &ctx).await,
            Finalizer::Cleanup(conn) => cleanup(&conn, &ctx).await,
        }
    })
    .await
    .map_err(Error::from);
    ctx.metrics.reconciled(if result.is_ok() { "success" } else { "error" }, started.elapsed());
    result
}

/// How the reconcile ended, for scheduling the next one.
enum Next {
    /// Everything fine or a permanent problem: come back at the refresh interval.
    Refresh,
    /// A transient failure: back off (at least `min`).
    Retry { min: Option<Duration> },
}

async fn apply(conn: &AzureAdConnection, ctx: &Context) -> Result<Action, Error> {
    let started = Instant::now();
    let previous = conn.status.clone().unwrap_or_default();
    let generation = conn.meta().generation;
    let now = jiff::Timestamp::now();
    if conn.spec.suspend {
        let next = status::suspended(&previous, generation, now);
        record_series(conn, ctx, &next);
        write_status(conn, ctx, &previous, next).await?;
        ctx.reset_backoff(conn);
        return Ok(Action::await_change());
    }

    // A SCIM token from an earlier reconcile that could not be stored yet goes first.
    store_pending_scim(conn, ctx).await?;
    let (observation, next) = observe(conn, ctx, &previous).await?;
    if let BrokerStage::Synced(outcome) = &observation.broker
        && let Some(scim) = &outcome.scim
        && let Some(uid) = conn.uid()
    {
        ctx.pending_scim.lock().expect("scim lock").insert(uid, scim.clone());
        store_pending_scim(conn, ctx).await?;
        ctx.publish(conn, EventType::Normal, "ScimSecretStored", "SCIM was enabled; its base URL and token are in the SCIM Secret").await;
    }
    let subject =
        Subject { generation, validation_mode: conn.spec.validation.mode, warn_before: conn.spec.warn_before(), previous: &previous };
    let next_status = status::compute(&subject, &observation, now);
    record_series(conn, ctx, &next_status);
    record_rotation(conn, ctx, &previous, &observation, started);
    write_status(conn, ctx, &previous, next_status).await?;
    if let BrokerStage::Synced(outcome) = &observation.broker
        && outcome.wrote
    {
        let reason = if observation.drift_corrected { "DriftCorrected" } else { "BrokerUpdated" };
        ctx.publish(conn, EventType::Normal, reason, &format!("{} on the broker", outcome.differences.join(", "))).await;
        info!(differences = ?outcome.differences, "broker object written");
    }

    Ok(match next {
        Next::Refresh => {
            ctx.reset_backoff(conn);
            Action::requeue(schedule_refresh(conn.spec.refresh_interval(), &observation.expiry, conn.spec.warn_before(), now))
        }
        Next::Retry { min } => Action::requeue(ctx.next_backoff(conn).max(min.unwrap_or_default())),
    })
}

/// Runs the stages and collects what they found. Only Kubernetes API failures are errors.
async fn observe(conn: &AzureAdConnection, ctx: &Context, previous: &AzureAdConnectionStatus) -> Result<(Observation, Next), Error> {
    let spec = &conn.spec;
    let observe_only = spec.management_policy == ManagementPolicy::ObserveOnly;
    let (secret, annotations) = resolve::client_secret(&ctx.client, conn).await?;
    let expiry = resolve::expiry_from_annotations(spec.expiry.source, &annotations);
    let fingerprint = secret.as_ref().ok().map(|s| ctx.fingerprinter.fingerprint(s));

    let secret = match secret {
        Ok(secret) => secret,
        Err(problem) => {
            let observation = Observation {
                fingerprint,
                credentials: Err(CredentialsFailure::Secret(problem)),
                expiry,
                broker: BrokerStage::NotAttempted,
                observe_only,
                drift_corrected: false,
            };
            return Ok((observation, Next::Refresh));
        }
    };
    let fingerprint_ref = fingerprint.as_deref().unwrap_or_default();
    let validation_request = ValidationRequest {
        cloud: spec.azure.cloud,
        tenant: &spec.azure.tenant,
        client_id: &spec.azure.client_id,
        secret: &secret,
        fingerprint: fingerprint_ref,
        mode: spec.validation.mode,
        ttl: spec.refresh_interval(),
    };
    let validation = match ctx.azure.validate(&validation_request).await {
        Ok(v) => v,
        Err(error) => {
            let next = if error.is_transient() { Next::Retry { min: error.retry_after() } } else { Next::Refresh };
            warn!(reason = error.reason().as_str(), "credentials not confirmed by Azure");
            let observation = Observation {
                fingerprint,
                credentials: Err(CredentialsFailure::Azure(error)),
                expiry,
                broker: BrokerStage::NotAttempted,
                observe_only,
                drift_corrected: false,
            };
            return Ok((observation, next));
        }
    };
    let expiry = graph_expiry(ctx, conn, &validation_request, validation.tenant_id.as_deref(), expiry).await;

    let broker = match resolve::broker(&ctx.client, &ctx.config.namespace, conn).await? {
        Ok(resolved) => ctx.broker_client(&resolved),
        Err(problem) => {
            let observation = Observation {
                fingerprint,
                credentials: Ok(validation),
                expiry,
                broker: BrokerStage::Unresolved(problem),
                observe_only,
                drift_corrected: false,
            };
            return Ok((observation, Next::Refresh));
        }
    };
    let previous_broker = previous.broker.clone().unwrap_or_default();
    let request = SyncRequest {
        spec,
        azure: AzureCredentials {
            cloud: spec.azure.cloud,
            tenant: &spec.azure.tenant,
            tenant_id: validation.tenant_id.as_deref(),
            client_id: &spec.azure.client_id,
            secret: &secret,
            fingerprint: fingerprint_ref,
            audience: spec.azure.sign_in_audience,
        },
        known_id: previous_broker.id.as_deref(),
        synced_fingerprint: previous_broker.synced_fingerprint.as_deref(),
        observe_only,
    };
    let (stage, next, drift_corrected) = match broker.sync(&request).await {
        Ok(outcome) => {
            // Differences although the spec and secret are what was last synced: someone edited
            // the broker object.
            let unchanged_inputs = previous.observed_generation == conn.meta().generation
                && previous_broker.synced_fingerprint.as_deref() == Some(fingerprint_ref);
            let drift = unchanged_inputs && !outcome.differences.is_empty() && previous_broker.id.is_some();
            if drift {
                let verb = if observe_only { "found" } else { "corrected" };
                ctx.publish(
                    conn,
                    EventType::Warning,
                    "Drifted",
                    &format!("the broker object was changed outside idp-bridge; {verb}: {}", outcome.differences.join(", ")),
                )
                .await;
            }
            (BrokerStage::Synced(outcome), Next::Refresh, drift && !observe_only)
        }
        Err(error) => {
            let next = if error.is_transient() { Next::Retry { min: error.retry_after() } } else { Next::Refresh };
            warn!(reason = error.reason().as_str(), %error, "broker sync failed");
            (BrokerStage::Failed(error), next, false)
        }
    };
    Ok((Observation { fingerprint, credentials: Ok(validation), expiry, broker: stage, observe_only, drift_corrected }, next))
}

/// Writes SCIM credentials held for this connection into the Secret its spec names, owned by
/// the connection so it goes away with it.
async fn store_pending_scim(conn: &AzureAdConnection, ctx: &Context) -> Result<(), Error> {
    let Some(uid) = conn.uid() else { return Ok(()) };
    let Some(scim) = ctx.pending_scim.lock().expect("scim lock").get(&uid).cloned() else { return Ok(()) };
    let Some(secret_name) = conn.spec.cloudflare.as_ref().and_then(|c| c.scim.as_ref()).map(|s| s.secret_name.clone()) else {
        ctx.pending_scim.lock().expect("scim lock").remove(&uid);
        return Ok(());
    };
    let owner = conn.controller_owner_ref(&()).expect("a stored connection has a name and uid");
    let secret = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": secret_name, "ownerReferences": [owner], "labels": {"app.kubernetes.io/managed-by": "idp-bridge"}},
        "type": "Opaque",
        "stringData": {"scim-base-url": scim.base_url, "scim-secret": scim.secret.expose()},
    });
    let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(ctx.client.clone(), &conn.namespace().unwrap_or_default());
    api.patch(&secret_name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&secret)).await.map_err(Error::WriteScimSecret)?;
    ctx.pending_scim.lock().expect("scim lock").remove(&uid);
    Ok(())
}

/// The connection's ready and expiry gauges, from the status about to be written.
fn record_series(conn: &AzureAdConnection, ctx: &Context, status: &AzureAdConnectionStatus) {
    let Some(uid) = conn.uid() else { return };
    let (namespace, name) = (conn.namespace().unwrap_or_default(), conn.name_any());
    let ready = crate::crd::conditions::find(&status.conditions, crate::crd::conditions::READY).is_some_and(|c| c.status == "True");
    let ready_labels = ConnectionLabels { namespace: namespace.clone(), name: name.clone(), broker: conn.spec.broker_ref.name.clone() };
    let expiry = status.secret.as_ref().and_then(|s| s.expires_at.as_ref()).map(|at| {
        let tenant_id = status.tenant_id.clone().unwrap_or_else(|| conn.spec.azure.tenant.clone());
        (ExpiryLabels { namespace, name, client_id: conn.spec.azure.client_id.clone(), tenant_id }, at.0.as_second() as f64)
    });
    ctx.metrics.connection(&uid, ready_labels, ready, expiry);
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
        Err(error) => match error.reason() {
            Reason::GraphUnreachable => Expiry::Unknown(error.to_string()),
            reason => Expiry::Invalid(Problem::new(reason, error.to_string())),
        },
    }
}

/// The next refresh: the interval with ±10% jitter, or sooner when an expiry threshold comes first.
fn schedule_refresh(refresh: Duration, expiry: &Expiry, warn_before: Duration, now: jiff::Timestamp) -> Duration {
    let jitter = 0.9 + rand::random::<f64>() * 0.2;
    let mut next = refresh.mul_f64(jitter);
    if let Expiry::Known { expires_at, .. } = expiry {
        let until_expiry = expires_at.as_second() - now.as_second();
        let until_warning = until_expiry - warn_before.as_secs() as i64;
        for threshold in [until_warning, until_expiry] {
            if threshold > 0 {
                // One second late, so the threshold has certainly passed when we look.
                next = next.min(Duration::from_secs(threshold as u64 + 1));
            }
        }
    }
    next
}

/// Writes status by server-side apply, only when it changed, and publishes transition events.
async fn write_status(
    conn: &AzureAdConnection,
    ctx: &Context,
    previous: &AzureAdConnectionStatus,
    next: AzureAdConnectionStatus,
) -> Result<(), Error> {
    if &next == previous {
        return Ok(());
    }
    let api: Api<AzureAdConnection> = Api::namespaced(ctx.client.clone(), &conn.namespace().unwrap_or_default());
    let patch = json!({
        "apiVersion": "idpbridge.io/v1alpha1",
        "kind": "AzureAdConnection",
        "status": next,
    });
    api.patch_status(&conn.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch)).await.map_err(Error::WriteStatus)?;
    for transition in status::transitions(&previous.conditions, &next.conditions) {
        let kind = if transition.warning { EventType::Warning } else { EventType::Normal };
        ctx.publish(conn, kind, &transition.reason, &transition.note).await;
    }
    Ok(())
}

/// Deletion: Orphan leaves the broker object; Delete removes it, and gives up (with a Warning)
/// when the broker is gone or keeps failing past the deletion timeout.
async fn cleanup(conn: &AzureAdConnection, ctx: &Context) -> Result<Action, Error> {
    ctx.forget(conn);
    if conn.spec.deletion_policy == DeletionPolicy::Orphan {
        return Ok(Action::await_change());
    }
    if conn.spec.suspend {
        ctx.publish(conn, EventType::Warning, "Orphaned", "the connection is suspended, so the broker object was left in place").await;
        return Ok(Action::await_change());
    }
    let resolved = match resolve::broker(&ctx.client, &ctx.config.namespace, conn).await? {
        Ok(resolved) => resolved,
        Err(Problem { message, .. }) => {
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
    let known_id = conn.status.as_ref().and_then(|s| s.broker.as_ref()).and_then(|b| b.id.as_deref());
    match ctx.broker_client(&resolved).delete(&conn.spec, known_id).await {
        Ok(()) => {
            ctx.publish(conn, EventType::Normal, "Deleted", "the broker object was deleted (deletionPolicy: Delete)").await;
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

impl Context {
    /// The shared client for a resolved broker.
    pub fn broker_client(&self, resolved: &ResolvedBroker) -> Arc<BrokerClient> {
        let key = BrokerKey {
            uid: resolved.uid.clone(),
            generation: resolved.generation,
            credentials_fingerprint: self
                .fingerprinter
                .fingerprint_bytes(format!("{}\0{}", resolved.client_id, resolved.client_secret.expose()).as_bytes()),
        };
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_is_jittered_around_the_interval() {
        let now = jiff::Timestamp::from_second(1_700_000_000).unwrap();
        for _ in 0..100 {
            let d = schedule_refresh(Duration::from_secs(3600), &Expiry::Disabled, Duration::from_secs(86_400), now);
            assert!((3240..=3960).contains(&d.as_secs()), "{d:?}");
        }
    }

    #[test]
    fn refresh_lands_on_the_warning_and_expiry_thresholds() {
        let now = jiff::Timestamp::from_second(1_700_000_000).unwrap();
        let day = 86_400;
        let expiry = |secs: i64| Expiry::Known {
            expires_at: jiff::Timestamp::from_second(1_700_000_000 + secs).unwrap(),
            source: "Annotation",
            key_id: None,
            note: None,
        };
        // Warning window opens in 100 s.
        let d = schedule_refresh(Duration::from_secs(3600), &expiry(day + 100), Duration::from_secs(day as u64), now);
        assert_eq!(d.as_secs(), 101);
        // Already inside the window; expiry in 50 s.
        let d = schedule_refresh(Duration::from_secs(3600), &expiry(50), Duration::from_secs(day as u64), now);
        assert_eq!(d.as_secs(), 51);
    }
}
