//! The AzureAdClientSecret controller: renews an Entra ID application's client secret before it
//! is due, with overlap, and writes it into the Secret its AzureAdConnections read. Runs next to
//! the connection controllers, only while this replica leads.
//!
//! Triggers: the resource (spec, and the renew/revoke annotations), its Secret, and the
//! AzureAdConnections that read that Secret (their status says when their broker holds the new
//! value, which is when the previous password may go).

pub mod plan;
mod reconcile;
pub mod request;

use std::sync::Arc;

use futures::{FutureExt, StreamExt, future};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    ResourceExt,
    core::PartialObjectMeta,
    runtime::{
        Controller, Predicate, WatchStreamExt,
        controller::{self, Action},
        predicates,
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::{
    controller::{Context, Error, SharedWatch, Watches, scoped},
    crd::{
        AzureAdConnection,
        client_secret::{AzureAdClientSecret, CURRENT_KEY, ConsumersStatus},
        conditions::Reason,
        connection::ManagementPolicy,
    },
};

/// What the rotation reconcile shares: the operator's context and the stores it reads.
pub struct Rotation {
    ctx: Arc<Context>,
    resources: Store<AzureAdClientSecret>,
    connections: Store<AzureAdConnection>,
}

impl Rotation {
    /// Another AzureAdClientSecret that came first (older, then by namespace/name) for the same
    /// application, or writing the same Secret, makes this one a conflict: it writes nothing.
    fn conflict(&self, obj: &AzureAdClientSecret) -> Option<(Reason, String)> {
        let key = |o: &AzureAdClientSecret| (o.creation_timestamp().map(|t| t.0), o.namespace(), o.name_any());
        // An application (client) ID is unique across tenants, which may be named by GUID or domain.
        let same_app = |o: &AzureAdClientSecret| {
            o.spec.azure.cloud == obj.spec.azure.cloud && o.spec.azure.client_id.eq_ignore_ascii_case(&obj.spec.azure.client_id)
        };
        let same_secret = |o: &AzureAdClientSecret| o.namespace() == obj.namespace() && o.spec.secret_name == obj.spec.secret_name;
        let earlier = self.resources.state().into_iter().filter(|o| o.uid() != obj.uid() && key(o) < key(obj)).collect::<Vec<_>>();
        if let Some(other) = earlier.iter().find(|o| same_app(o)) {
            let message = format!(
                "AzureAdClientSecret {}/{} already rotates application {}; only one may",
                other.namespace().unwrap_or_default(),
                other.name_any(),
                obj.spec.azure.client_id
            );
            return Some((Reason::ApplicationConflict, message));
        }
        earlier.iter().find(|o| same_secret(o)).map(|other| {
            (Reason::SecretConflict, format!("AzureAdClientSecret {} already writes Secret {}", other.name_any(), obj.spec.secret_name))
        })
    }

    /// The connections that read the Secret's `client-secret` and push it (not suspended, not
    /// ObserveOnly), and how many report `current_fingerprint` synced to their broker.
    fn consumers(&self, obj: &AzureAdClientSecret, current_fingerprint: Option<&str>) -> ConsumersStatus {
        let readers: Vec<_> = self.connections.state().into_iter().filter(|c| reads(c, obj)).collect();
        let synced = readers
            .iter()
            .filter(|c| {
                let held = c.status.as_ref().and_then(|s| s.broker.as_ref()).and_then(|b| b.synced_fingerprint.as_deref());
                current_fingerprint.is_some() && held == current_fingerprint
            })
            .count();
        ConsumersStatus { total: readers.len() as u32, synced: synced as u32 }
    }
}

/// Whether `conn` is a consumer of `obj`'s Secret.
fn reads(conn: &AzureAdConnection, obj: &AzureAdClientSecret) -> bool {
    let secret_ref = &conn.spec.azure.client_secret_ref;
    conn.namespace() == obj.namespace()
        && secret_ref.name == obj.spec.secret_name
        && secret_ref.key == CURRENT_KEY
        && !conn.spec.suspend
        && conn.spec.management_policy == ManagementPolicy::Full
}

async fn guarded_reconcile(obj: Arc<AzureAdClientSecret>, rotation: Arc<Rotation>) -> Result<Action, Error> {
    let deadline = rotation.ctx.config.reconcile_timeout;
    crate::controller::guard::guarded(deadline, reconcile::reconcile(&obj, &rotation)).await
}

fn error_policy(obj: Arc<AzureAdClientSecret>, error: &Error, rotation: Arc<Rotation>) -> Action {
    let delay = rotation.ctx.next_backoff(obj.as_ref());
    warn!(error = %error, kind = error.label(), retry_in = ?delay, "client secret reconcile failed");
    Action::requeue(delay)
}

/// The AzureAdClientSecret controller of one scope, until `stop` is cancelled. Its own kind has
/// a watch of its own; connections and Secret metadata come from the run's shared watches.
fn controller(ctx: Arc<Context>, scope: usize, stop: &CancellationToken, watches: &mut Watches) -> impl Future<Output = ()> + use<> {
    let client = ctx.client.clone();
    let namespace = watches.scopes[scope].namespace.clone();
    let metrics = ctx.metrics.clone();
    // No reconcile follows a deletion: its series goes here.
    let mut own = SharedWatch::observed(
        scoped::<AzureAdClientSecret>(&client, namespace.as_deref()),
        watcher::Config::default().any_semantic(),
        &mut watches.stores,
        move |event| {
            if let watcher::Event::Delete(gone) = event {
                metrics.client_secret(&gone.uid().unwrap_or_default(), "", "", None);
            }
        },
    );
    let resources = own.store();
    // Spec edits and the renew/revoke annotations; never its own status writes.
    let events = own.subscribe().predicate_filter(predicates::generation.combine(predicates::annotations), Default::default());
    let connections = watches.scopes[scope].connections.store();
    let connection_events = watches.scopes[scope].connections.subscribe();
    let secret_events = watches.secrets.covering(namespace.as_deref(), &mut watches.stores).subscribe();
    let (by_secret, by_connection) = (resources.clone(), resources.clone());
    let config = controller::Config::default().concurrency(ctx.config.concurrency);
    let rotation = Arc::new(Rotation { ctx, resources: resources.clone(), connections });
    let running = Controller::for_stream(events, resources)
        .with_config(config)
        .watches_stream(secret_events, move |s: PartialObjectMeta<Secret>| writing(&by_secret, s.namespace(), &s.name_any()))
        .watches_stream(connection_events, move |c: AzureAdConnection| {
            writing(&by_connection, c.namespace(), &c.spec.azure.client_secret_ref.name)
        })
        .graceful_shutdown_on(stop.clone().cancelled_owned())
        .run(guarded_reconcile, error_policy, rotation)
        .for_each(|_| future::ready(()));
    // The watch of its own kind ends with the controller.
    future::select(running.boxed(), own.run()).map(|_| ())
}

/// The AzureAdClientSecrets that write Secret `name` in `namespace`.
fn writing(store: &Store<AzureAdClientSecret>, namespace: Option<String>, name: &str) -> Vec<ObjectRef<AzureAdClientSecret>> {
    store
        .state()
        .iter()
        .filter(|o| o.namespace() == namespace && o.spec.secret_name == name)
        .map(|o| ObjectRef::from_obj(o.as_ref()))
        .collect()
}

/// One controller per watched scope.
pub(crate) fn controllers(ctx: Arc<Context>, stop: &CancellationToken, watches: &mut Watches) -> impl Future<Output = ()> + use<> {
    let all: Vec<_> = (0..watches.scopes.len()).map(|scope| controller(ctx.clone(), scope, stop, watches)).collect();
    async move {
        future::join_all(all).await;
    }
}
