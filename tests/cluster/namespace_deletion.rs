//! Deleting a whole namespace, as a tenant cleaning up would: the controller-manager's namespace
//! controller deletes every object in it at once, in no particular order, while the operator's
//! finalizer is still to run. And the in-use protection that makes this work: a broker, and its
//! credential Secret, carry `idpbridge.io/in-use` exactly while a connection with
//! `deletionPolicy: Delete` uses the broker.

use std::time::{Duration, Instant};

use crate::common::{
    admission::SecretDenial,
    e2e::{AUTH0_DOMAIN, CLIENT_ID, Env, TENANT_ID},
};
use idp_bridge::crd::{ClusterIdentityBroker, IN_USE_FINALIZER_PREFIX, IdentityBroker, in_use_finalizer};
use idp_bridge_devenv::stack::RunningOperator;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{
    Resource,
    api::{Api, DeleteParams, Patch, PatchParams},
};
use serde_json::json;

/// How long the operator may take to add or remove a protection, or a released object to go.
const PROTECTION_WAIT: Duration = Duration::from_secs(20);

/// Bounded wait for the namespace to go: the namespace controller plus the operator's finalizer.
const NAMESPACE_GONE_WAIT: Duration = Duration::from_secs(60);

/// A connection with `deletionPolicy: Delete` must delete its broker object when its namespace is
/// deleted, even though its IdentityBroker and the broker's credential Secret are deleted in the
/// same sweep: otherwise the broker keeps a working Azure sign-in nobody manages any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_namespace_deletes_the_broker_object_of_a_delete_policy_connection() {
    namespace_deletion_scenario("ns-delete-policy", true).await;
}

/// The same where the operator may not patch the broker's credential Secret (the chart grants no
/// Secret writes in application namespaces): the broker is protected, the Secret goes with the
/// namespace, and the cleanup uses the credentials the operator read last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_secret_protection_the_cleanup_uses_the_credentials_read_last() {
    namespace_deletion_scenario("ns-delete-unprotected", false).await;
}

async fn namespace_deletion_scenario(prefix: &str, secret_patchable: bool) {
    let mut env = Env::without_operator(prefix).await;
    let denial = if secret_patchable {
        None
    } else {
        let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.ns);
        let probe = || async {
            let touch = json!({"metadata": {"labels": {"e2e/probe": idp_bridge_devenv::control_plane::unique_name("p")}}});
            secrets.patch("auth0-management", &PatchParams::default(), &Patch::Merge(&touch)).await.is_ok()
        };
        Some(SecretDenial::install(&env.client, &env.ns, "auth0-management", &["UPDATE"], probe).await)
    };
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
    // The protection is added alongside the connection's first sync; the namespace is deleted
    // once it is in place, as it would be long before a tenant cleans up.
    if secret_patchable {
        wait_protected(&env, "auth0", "auth0-management", true).await;
    } else {
        wait_broker(&env, "auth0", true).await;
        assert_eq!(protection(&env, "auth0", "auth0-management").await, (true, false), "the Secret could not be protected");
    }

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
    if let Some(denial) = denial {
        denial.remove().await;
    }
}

/// A ClusterIdentityBroker is protected the same way, its credential Secret in the operator's
/// namespace: deleted while a Delete connection uses it, it waits for that connection's cleanup.
/// Each installation holds a finalizer of its own (other tests' operators watch this cluster
/// broker too, and release only theirs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_broker_in_use_waits_for_its_delete_connections() {
    let mut env = Env::new("cluster-in-use").await;
    let shared = idp_bridge_devenv::control_plane::unique_name("shared-auth0");
    env.apply(
        "ClusterIdentityBroker",
        &shared,
        json!({"spec": {"auth0": {"domain": AUTH0_DOMAIN, "credentialsSecretRef": {"name": "auth0-management"}}}}),
    )
    .await;
    let value = env.canary("value");
    env.upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, &value, jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24));
    env.put_secret("web", &[("client-secret", &value)], &[]).await;
    let reference = json!({"kind": "ClusterIdentityBroker", "name": shared});
    env.connect("contoso", "web", json!({"deletionPolicy": "Delete", "brokerRef": reference})).await;
    env.wait_ready("contoso").await;

    // The operator's namespace is the test's own here: the Secret is the IdentityBroker's too.
    let ours = in_use_finalizer(&env.ns);
    let held = |finalizers: Option<Vec<String>>| finalizers.unwrap_or_default().contains(&ours);
    let brokers: Api<ClusterIdentityBroker> = Api::all(env.client.clone());
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.ns);
    let started = Instant::now();
    loop {
        let broker = held(brokers.get(&shared).await.unwrap().metadata.finalizers);
        let secret = held(secrets.get_metadata("auth0-management").await.unwrap().metadata.finalizers);
        if broker && secret {
            break;
        }
        assert!(
            started.elapsed() < PROTECTION_WAIT,
            "the ClusterIdentityBroker ({broker}) and its Secret ({secret}) are not both protected"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    brokers.delete(&shared, &DeleteParams::default()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(brokers.get(&shared).await.expect("kept while in use").metadata.deletion_timestamp.is_some());

    env.connections().delete("contoso", &DeleteParams::default()).await.unwrap();
    wait_connection_gone(&env, "contoso").await;
    assert!(env.auth0.connection_by_name("contoso").is_none(), "the cleanup went through the ClusterIdentityBroker");
    wait_gone(&brokers, &shared).await;
    let started = Instant::now();
    while held(secrets.get_metadata("auth0-management").await.unwrap().metadata.finalizers) {
        assert!(started.elapsed() < PROTECTION_WAIT, "the Secret is still protected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.assert_no_canary_leaks().await;
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

/// The finalizer comes with the first connection that deletes its broker object through the
/// broker, stays while one remains, follows a changed `brokerRef` and `deletionPolicy`, and goes
/// with the last; a broker nobody relies on (Orphan connections only) is deleted at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_and_its_secret_are_protected_exactly_while_a_delete_connection_uses_them() {
    let mut env = Env::new("in-use").await;
    let value = env.canary("value");
    env.upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, &value, jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24));
    env.put_secret("web", &[("client-secret", &value)], &[]).await;
    // A second broker on the same credential Secret.
    env.apply(
        "IdentityBroker",
        "auth0-b",
        json!({"spec": {"auth0": {"domain": AUTH0_DOMAIN, "credentialsSecretRef": {"name": "auth0-management"}}}}),
    )
    .await;

    env.connect("kept", "web", json!({})).await;
    env.wait_ready("kept").await;
    assert_protection(&env, "auth0", "auth0-management", false).await;

    env.connect("first", "web", json!({"deletionPolicy": "Delete"})).await;
    wait_protected(&env, "auth0", "auth0-management", true).await;
    env.connect("second", "web", json!({"deletionPolicy": "Delete"})).await;
    env.wait_ready("second").await;
    env.connections().delete("first", &DeleteParams::default()).await.unwrap();
    wait_connection_gone(&env, "first").await;
    assert!(env.auth0.connection_by_name("first").is_none(), "the first connection's cleanup ran");
    assert_protection(&env, "auth0", "auth0-management", true).await;

    // The last Delete connection turns Orphan: released. Back to Delete: protected again.
    let policy = |p: &str| json!({"spec": {"deletionPolicy": p}});
    env.connections().patch("second", &PatchParams::default(), &Patch::Merge(&policy("Orphan"))).await.unwrap();
    wait_protected(&env, "auth0", "auth0-management", false).await;
    env.connections().patch("second", &PatchParams::default(), &Patch::Merge(&policy("Delete"))).await.unwrap();
    wait_protected(&env, "auth0", "auth0-management", true).await;

    // Moved to the other broker: the old one is released, the new one and the shared Secret held.
    let moved = json!({"spec": {"brokerRef": {"name": "auth0-b"}}});
    env.connections().patch("second", &PatchParams::default(), &Patch::Merge(&moved)).await.unwrap();
    wait_broker(&env, "auth0", false).await;
    wait_protected(&env, "auth0-b", "auth0-management", true).await;

    // The last one goes: its cleanup deletes the Auth0 connection, then everything is released.
    env.connections().delete("second", &DeleteParams::default()).await.unwrap();
    wait_connection_gone(&env, "second").await;
    wait_protected(&env, "auth0-b", "auth0-management", false).await;

    // Brokers nobody relies on go at once, though "kept" (Orphan) still names one.
    let brokers: Api<IdentityBroker> = Api::namespaced(env.client.clone(), &env.ns);
    for name in ["auth0", "auth0-b"] {
        brokers.delete(name, &DeleteParams::default()).await.unwrap();
        wait_gone(&brokers, name).await;
    }
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.ns);
    secrets.delete("auth0-management", &DeleteParams::default()).await.unwrap();
    wait_gone(&secrets, "auth0-management").await;
    env.assert_no_canary_leaks().await;
}

fn has_in_use<K: Resource>(object: &K) -> bool {
    object.meta().finalizers.iter().flatten().any(|f| f.starts_with(IN_USE_FINALIZER_PREFIX))
}

async fn protection(env: &Env, broker: &str, secret: &str) -> (bool, bool) {
    let broker = Api::<IdentityBroker>::namespaced(env.client.clone(), &env.ns).get(broker).await.expect("reading the broker");
    let secret = Api::<Secret>::namespaced(env.client.clone(), &env.ns).get_metadata(secret).await.expect("reading the Secret");
    (has_in_use(&broker), has_in_use(&secret))
}

/// Waits until the broker and its credential Secret both are (or both are not) protected.
async fn wait_protected(env: &Env, broker: &str, secret: &str, protected: bool) {
    let started = Instant::now();
    while started.elapsed() < PROTECTION_WAIT {
        if protection(env, broker, secret).await == (protected, protected) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "broker {broker} and Secret {secret}: (broker, Secret) protected is {:?}, not {protected}",
        protection(env, broker, secret).await
    );
}

async fn wait_broker(env: &Env, broker: &str, protected: bool) {
    let started = Instant::now();
    let brokers = Api::<IdentityBroker>::namespaced(env.client.clone(), &env.ns);
    while started.elapsed() < PROTECTION_WAIT {
        if has_in_use(&brokers.get(broker).await.unwrap()) == protected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("broker {broker} is not {}protected", if protected { "" } else { "un" });
}

/// The protection stays as it is for a while (after an event that must not change it).
async fn assert_protection(env: &Env, broker: &str, secret: &str, protected: bool) {
    for _ in 0..20 {
        assert_eq!(protection(env, broker, secret).await, (protected, protected), "(broker, Secret) protected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_connection_gone(env: &Env, name: &str) {
    wait_gone(&env.connections(), name).await;
}

async fn wait_gone<K>(api: &Api<K>, name: &str)
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let started = Instant::now();
    while started.elapsed() < PROTECTION_WAIT {
        if api.get_metadata_opt(name).await.expect("reading the object").is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{name} is still there after {PROTECTION_WAIT:?}");
}
