//! Who owns a broker object, on the real control plane: two namespaces naming one Auth0
//! connection through a ClusterIdentityBroker, a connection made by hand in the dashboard, a
//! connection deleted and created again; and a renamed Cloudflare provider.

use std::time::Duration;

use crate::common::e2e::{CLIENT_ID, Env, TENANT_DOMAIN, TENANT_ID, condition, condition_is};
use idp_bridge::crd::{AzureAdConnection, conditions::*};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{
    Api,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use serde_json::{Value, json};

const SHARED: &str = "shared-entra";

fn in_a_year() -> jiff::Timestamp {
    jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 365)
}

async fn settle() {
    tokio::time::sleep(Duration::from_secs(3)).await;
}

async fn wait_gone(api: &Api<AzureAdConnection>, name: &str) {
    for _ in 0..300 {
        if api.get_opt(name).await.unwrap().is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{name} was not deleted");
}

/// Waits until the connection `name` in `api`'s namespace has Ready with `reason`.
async fn wait_reason(api: &Api<AzureAdConnection>, name: &str, reason: &str) -> AzureAdConnection {
    let mut last = None;
    for _ in 0..300 {
        if let Some(conn) = api.get_opt(name).await.unwrap() {
            if condition_is(&conn, READY, if reason == "Ready" { "True" } else { "False" }, reason) {
                return conn;
            }
            last = Some(conn);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{name} never got Ready reason {reason}: {:?}", last.and_then(|c| c.status));
}

/// A connection in namespace `ns` to the ClusterIdentityBroker `broker`, Auth0 connection `SHARED`.
async fn connect_shared(client: &kube::Client, ns: &str, name: &str, broker: &str, extra: Value) {
    let mut spec = json!({
        "brokerRef": {"kind": "ClusterIdentityBroker", "name": broker},
        "azure": {"tenant": TENANT_DOMAIN, "clientId": CLIENT_ID, "clientSecretRef": {"name": "web"}},
        "auth0": {"name": SHARED},
    });
    spec.as_object_mut().unwrap().extend(extra.as_object().cloned().unwrap_or_default());
    let body = json!({"apiVersion": "idpbridge.io/v1alpha1", "kind": "AzureAdConnection", "metadata": {"name": name}, "spec": spec});
    Api::<AzureAdConnection>::namespaced(client.clone(), ns)
        .patch(name, &PatchParams::apply("e2e").force(), &Patch::Apply(&body))
        .await
        .unwrap_or_else(|e| panic!("applying {ns}/{name}: {e}"));
}

async fn put_web_secret(client: &kube::Client, ns: &str, value: &str) {
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "web"}, "stringData": {"client-secret": value}});
    Api::<Secret>::namespaced(client.clone(), ns).patch("web", &PatchParams::apply("e2e").force(), &Patch::Apply(&secret)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_namespaces_one_auth0_connection_the_older_claim_keeps_it() {
    let mut env = Env::without_operator("own-a").await;
    let (_, team_b) = crate::common::namespace("own-b").await;
    let broker = format!("{}-shared", env.ns);
    env.apply(
        "ClusterIdentityBroker",
        &broker,
        json!({"spec": {"auth0": {"domain": crate::common::e2e::AUTH0_DOMAIN, "credentialsSecretRef": {"name": "auth0-management"}}}}),
    )
    .await;
    let (ours, theirs) = (env.canary("team-a"), env.canary("team-b"));
    for value in [&ours, &theirs] {
        env.upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, value, in_a_year());
    }
    put_web_secret(&env.client, &env.ns, &ours).await;
    put_web_secret(&env.client, &team_b, &theirs).await;
    let team_b_ns = team_b.clone();
    env.start_operator_with(move |config| config.watch_namespaces.push(team_b_ns)).await;
    let (in_a, in_b) = (env.connections(), Api::<AzureAdConnection>::namespaced(env.client.clone(), &team_b));

    // Team A's connection comes first and is Ready.
    connect_shared(&env.client, &env.ns, "alpha-owner", &broker, json!({})).await;
    let alpha = wait_reason(&in_a, "alpha-owner", "Ready").await;
    let id = alpha.status.unwrap().broker.unwrap().id.unwrap();
    assert_eq!(env.broker_secret(SHARED), ours);
    let writes = env.auth0.writes();

    // Team B names the same Auth0 connection, with Delete: refused, and no write to Auth0.
    connect_shared(&env.client, &team_b, "bravo-intruder", &broker, json!({"deletionPolicy": "Delete"})).await;
    let bravo = wait_reason(&in_b, "bravo-intruder", "BrokerConflict").await;
    let message = condition(&bravo, READY).message;
    for disclosed in [env.ns.as_str(), "alpha-owner", &id] {
        assert!(!message.contains(disclosed), "the message names {disclosed:?}: {message}");
    }
    settle().await;
    assert_eq!(env.auth0.writes(), writes, "the newer claim writes nothing");
    assert_eq!(env.broker_secret(SHARED), ours, "the held secret does not flip");
    assert!(condition_is(&in_a.get("alpha-owner").await.unwrap(), READY, "True", "Ready"), "the older stays Ready");

    // Deleting the loser with deletionPolicy Delete deletes nothing.
    in_b.delete("bravo-intruder", &DeleteParams::default()).await.unwrap();
    wait_gone(&in_b, "bravo-intruder").await;
    assert_eq!(env.auth0.connection(&id).map(|c| c["name"].clone()), Some(json!(SHARED)), "A's connection survives");
    assert_eq!(env.auth0.writes(), writes);

    // Team A's connection deleted (Orphan) and created again, as GitOps does: found, no duplicate.
    in_a.delete("alpha-owner", &DeleteParams::default()).await.unwrap();
    wait_gone(&in_a, "alpha-owner").await;
    connect_shared(&env.client, &env.ns, "alpha-owner", &broker, json!({})).await;
    let again = wait_reason(&in_a, "alpha-owner", "Ready").await;
    assert_eq!(again.status.unwrap().broker.unwrap().id.as_deref(), Some(id.as_str()));
    assert_eq!(env.auth0.connections().iter().filter(|c| c["name"] == SHARED).count(), 1, "no duplicate");
    env.assert_no_canary_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_made_by_hand_is_taken_only_with_adopt() {
    let mut env = Env::new("own-hand").await;
    let value = env.canary("value");
    env.upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, &value, in_a_year());
    env.put_secret("web", &[("client-secret", &value)], &[]).await;
    let id = env.auth0.insert_connection(json!({
        "name": "by-hand",
        "strategy": "waad",
        "options": {"client_id": CLIENT_ID, "client_secret": "made-in-the-dashboard", "tenant_domain": TENANT_DOMAIN},
    }));
    let writes = env.auth0.writes();
    env.connect("by-hand", "web", json!({"deletionPolicy": "Delete"})).await;
    let conn = env.wait_condition("by-hand", READY, "False", "BrokerConflict").await;
    assert!(condition(&conn, READY).message.contains("adopt"), "the message says what to do");
    settle().await;
    assert_eq!(env.auth0.writes(), writes, "not adopted without spec.adopt");
    assert_eq!(env.broker_secret("by-hand"), "made-in-the-dashboard");

    // With adopt: taken over, marked, the secret pushed.
    env.connect("by-hand", "web", json!({"deletionPolicy": "Delete", "adopt": true})).await;
    let conn = env.wait_ready("by-hand").await;
    assert_eq!(conn.status.unwrap().broker.unwrap().id.as_deref(), Some(id.as_str()));
    assert_eq!(env.broker_secret("by-hand"), value);
    assert!(env.auth0.connection(&id).unwrap()["metadata"]["idp-bridge-owner"].is_string(), "marked as managed");
    env.assert_no_canary_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_cloudflare_provider_is_updated_in_place() {
    const ACCOUNT: &str = "0123456789abcdef0123456789abcdef";
    const TOKEN: &str = "cf-api-token-value";
    let mut env = Env::without_operator("own-cf").await;
    let cf = env.upstreams.cloudflare().unwrap();
    cf.add_account(ACCOUNT);
    cf.add_token(TOKEN, &[ACCOUNT]);
    env.put_secret("cf-token", &[("api-token", TOKEN)], &[]).await;
    env.apply(
        "IdentityBroker",
        "broker",
        json!({"spec": {"cloudflare": {"accountId": ACCOUNT, "apiTokenSecretRef": {"name": "cf-token"}}}}),
    )
    .await;
    env.start_operator().await;
    let value = env.canary("value");
    env.upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, &value, in_a_year());
    env.put_secret("web", &[("client-secret", &value)], &[]).await;
    env.connect_to("contoso", "broker", json!({"cloudflare": {"name": "Contoso"}}), "web", json!({})).await;
    let id = env.wait_ready("contoso").await.status.unwrap().broker.unwrap().id.unwrap();

    env.connect_to("contoso", "broker", json!({"cloudflare": {"name": "Contoso staff"}}), "web", json!({})).await;
    env.wait_for("contoso", "the provider renamed", |_| cf.provider(&id).is_some_and(|p| p["name"] == "Contoso staff")).await;
    let conn = env.wait_ready("contoso").await;
    assert_eq!(conn.status.unwrap().broker.unwrap().id.as_deref(), Some(id.as_str()), "the same provider");
    assert_eq!(cf.providers().iter().filter(|p| p["type"] == "azureAD").count(), 1, "no second provider");

    // Rotations keep reaching it.
    let rotated = env.canary("rotated");
    env.upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, &rotated, in_a_year());
    env.put_secret("web", &[("client-secret", &rotated)], &[]).await;
    env.wait_for("contoso", "the rotation reached the renamed provider", |_| cf.client_secret(&id).as_deref() == Some(rotated.as_str()))
        .await;
    // One claim is left, the new name's.
    let claims = Api::<ConfigMap>::namespaced(env.client.clone(), &env.ns)
        .list(&ListParams::default().labels(idp_bridge::controller::claims::OWNER_LABEL))
        .await
        .unwrap();
    assert_eq!(claims.items.len(), 1, "the old name's claim is released");
    assert_eq!(cf.providers().iter().filter(|p| p["type"] == "azureAD").count(), 1);
    env.assert_no_canary_leaks().await;
}
