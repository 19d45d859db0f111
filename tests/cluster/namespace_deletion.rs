//! Deleting a whole namespace, as a tenant cleaning up would: the controller-manager's namespace
//! controller deletes every object in it at once, in no particular order, while the operator's
//! finalizer is still to run.

use std::time::{Duration, Instant};

use crate::common::e2e::{CLIENT_ID, Env, TENANT_ID};
use idp_bridge_devenv::stack::RunningOperator;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams};
use serde_json::json;

/// Bounded wait for the namespace to go: the namespace controller plus the operator's finalizer.
const NAMESPACE_GONE_WAIT: Duration = Duration::from_secs(60);

/// A connection with `deletionPolicy: Delete` must delete its broker object when its namespace is
/// deleted, even though its IdentityBroker and the broker's credential Secret are deleted in the
/// same sweep: otherwise the broker keeps a working Azure sign-in nobody manages any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the namespace-deletion fix (issue: Safe in a shared cluster, item 7)"]
async fn deleting_the_namespace_deletes_the_broker_object_of_a_delete_policy_connection() {
    let mut env = Env::without_operator("ns-delete-policy").await;
    // The operator's own namespace (and leader Lease) is not the one being deleted, as in a
    // real installation.
    let (_, operator_ns) = crate::common::namespace("idp-bridge-system").await;
    let config = env.upstreams.operator_config(&operator_ns, vec![env.ns.clone()]);
    let operator = RunningOperator::start(env.client.clone(), config).await.expect("operator starts");

    let value = env.canary("value");
    env.upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, &value, jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24));
    env.put_secret("web", &[("client-secret", &value)], &[]).await;
    env.connect("contoso", "web", json!({"deletionPolicy": "Delete"})).await;
    env.wait_ready("contoso").await;
    assert!(env.auth0.connection_by_name("contoso").is_some(), "the connection reached Auth0");

    let namespaces: Api<Namespace> = Api::all(env.client.clone());
    namespaces.delete(&env.ns, &DeleteParams::default()).await.expect("deleting the namespace");
    wait_namespace_gone(&namespaces, &env.ns).await;

    let requests: Vec<String> = env.auth0.requests().into_iter().map(|(method, path)| format!("{method} {path}")).collect();
    assert!(
        env.auth0.connection_by_name("contoso").is_none(),
        "the namespace is gone but Auth0 still has connection contoso (deletionPolicy: Delete); Auth0 saw:\n{}",
        requests.join("\n")
    );
    env.assert_no_canary_leaks().await;
    operator.stop().await;
}

async fn wait_namespace_gone(namespaces: &Api<Namespace>, name: &str) {
    let started = Instant::now();
    let mut last = None;
    while started.elapsed() < NAMESPACE_GONE_WAIT {
        match namespaces.get_opt(name).await.expect("reading the namespace") {
            None => return,
            Some(ns) => last = ns.status,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let logs = crate::common::control_plane().await.logs_tail(40);
    panic!("namespace {name} still exists after {NAMESPACE_GONE_WAIT:?}: {last:#?}\n{logs}");
}
