//! The Cloudflare SCIM Secret (`cloudflare.scim.secretName`): never taken over when idp-bridge did
//! not create it, never in the way of the client secret's sync, and a token Cloudflare showed once
//! but that could not be stored (or was never seen: a provider adopted with SCIM already on) is
//! regenerated through Cloudflare's SCIM secret refresh.

use std::time::Duration;

use crate::common::{
    admission::SecretDenial,
    e2e::{CF_ACCOUNT, CLIENT_ID, Env, TENANT_ID, condition, condition_is},
};
use http::Method;
use idp_bridge::crd::conditions::{READY, SCIM_SECRET_READY};
use idp_bridge_devenv::{
    cloudflare::CloudflareEmulator,
    kit::{Fault, RequestMatch},
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};

const SCIM_SECRET: &str = "contoso-scim";

fn in_a_year() -> jiff::Timestamp {
    jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 365)
}

/// A Cloudflare broker `broker` and a valid client secret in Secret `web`; the operator not yet
/// started.
async fn cloudflare_env(prefix: &str) -> (Env, CloudflareEmulator, String) {
    let mut env = Env::without_operator(prefix).await;
    let cf = env.cloudflare_broker("broker").await;
    let value = env.canary("value");
    env.upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, &value, in_a_year());
    env.put_secret("web", &[("client-secret", &value)], &[]).await;
    (env, cf, value)
}

fn scim_block() -> Value {
    json!({"cloudflare": {"name": "Contoso SCIM", "scim": {"enabled": true, "userDeprovision": true, "secretName": SCIM_SECRET}}})
}

fn secrets(env: &Env) -> Api<Secret> {
    Api::namespaced(env.client.clone(), &env.ns)
}

fn text(secret: &Secret, key: &str) -> Option<String> {
    secret.data.as_ref()?.get(key).map(|v| String::from_utf8(v.0.clone()).unwrap())
}

async fn wait_scim(env: &Env, status: &str, reason: &str) {
    env.wait_for("scim", &format!("{SCIM_SECRET_READY}={status} ({reason})"), |c| condition_is(c, SCIM_SECRET_READY, status, reason)).await;
}

/// A Secret of that name made by someone else is left exactly as it was, the connection says
/// why, and the client secret still reaches Cloudflare.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_idp_bridge_did_not_create_is_never_taken_over() {
    let (mut env, cf, value) = cloudflare_env("scim-not-owned").await;
    env.put_secret(SCIM_SECRET, &[("unrelated", "keep me")], &[]).await;
    let before = secrets(&env).get(SCIM_SECRET).await.unwrap();
    env.start_operator().await;
    env.connect_to("scim", "broker", scim_block(), "web", json!({})).await;
    wait_scim(&env, "False", "ScimSecretNotOwned").await;
    let conn = env.wait_ready("scim").await;
    assert!(!condition(&conn, SCIM_SECRET_READY).message.contains(&env.ns), "{:?}", condition(&conn, SCIM_SECRET_READY));
    let provider = cf.provider_by_name("Contoso SCIM").expect("the provider was created");
    assert_eq!(cf.client_secret(provider["id"].as_str().unwrap()).as_deref(), Some(value.as_str()), "the sync went on");

    let after = secrets(&env).get(SCIM_SECRET).await.unwrap();
    assert_eq!(after.data, before.data, "the Secret's data is untouched");
    assert_eq!(after.metadata.owner_references, before.metadata.owner_references, "no owner added");
    assert_eq!(after.metadata.labels, before.metadata.labels, "not relabelled");
    assert_eq!(after.metadata.resource_version, before.metadata.resource_version, "not written at all");
    env.assert_no_canary_leaks().await;
}

/// The SCIM Secret cannot be written (an admission policy refuses it): the sync and a rotation
/// still reach Cloudflare, ScimSecretReady says why. The operator restarts, so the token shown
/// once is lost: Cloudflare is asked for a new one, which lands in the Secret once it may be
/// written, and is the token Cloudflare holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_scim_write_blocks_nothing_and_a_lost_token_is_regenerated() {
    let (mut env, cf, _) = cloudflare_env("scim-write-fails").await;
    let policy = deny_scim_secret(&env).await;
    env.start_operator().await;
    env.connect_to("scim", "broker", scim_block(), "web", json!({})).await;
    wait_scim(&env, "False", "ScimSecretWriteFailed").await;
    let conn = env.wait_ready("scim").await;
    assert_eq!(condition(&conn, READY).status, "True", "SCIM leaves Ready alone");
    let id = cf.provider_by_name("Contoso SCIM").unwrap()["id"].as_str().unwrap().to_owned();
    let first_token = cf.scim_secret(&id).expect("SCIM is on");

    // A rotation still arrives.
    let rotated = env.canary("rotated");
    env.upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, &rotated, in_a_year());
    env.put_secret("web", &[("client-secret", &rotated)], &[]).await;
    for _ in 0..200 {
        if cf.client_secret(&id).as_deref() == Some(rotated.as_str()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(cf.client_secret(&id).as_deref(), Some(rotated.as_str()), "the rotation reached Cloudflare");

    // Restarted with the token only in memory: lost. The write is allowed again.
    env.stop_operator().await;
    policy.remove().await;
    env.start_operator().await;
    wait_scim(&env, "True", "ScimSecretStored").await;
    let stored = secrets(&env).get(SCIM_SECRET).await.unwrap();
    let token = text(&stored, "scim-secret").unwrap();
    assert_ne!(token, first_token, "a new token was issued");
    assert_eq!(Some(token.clone()), cf.scim_secret(&id), "the Secret holds the token Cloudflare now accepts");
    assert!(text(&stored, "scim-base-url").unwrap().ends_with(&format!("/populations/{id}/scim/v2")));
    assert_eq!(env.wait_events("scim", "ScimSecretRegenerated", 1).await.len(), 1);
    let refreshes = cf.requests().iter().filter(|(m, p)| m == "POST" && p.ends_with("/refresh_scim_secret")).count();
    assert_eq!(refreshes, 1, "one regeneration");
    assert_no_token_leaks(&env, &[&first_token, &token]).await;
}

/// A provider adopted with SCIM already on never showed its token to idp-bridge: it is
/// regenerated once; when Cloudflare refuses, the condition says so and the sync is Ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_adopted_with_scim_on_gets_a_new_token() {
    let (mut env, cf, _) = cloudflare_env("scim-adopted").await;
    let id = cf.insert_provider(
        CF_ACCOUNT,
        json!({
            "name": "Contoso SCIM", "type": "azureAD",
            "config": {"client_id": CLIENT_ID, "client_secret": "made-by-hand", "directory_id": TENANT_ID},
            "scim_config": {"enabled": true, "user_deprovision": true, "seat_deprovision": false, "identity_update_behavior": "no_action",
                            "secret": "token-from-the-dashboard", "scim_base_url": "https://team.cloudflareaccess.com/populations/x/scim/v2"},
        }),
    );
    let refresh = RequestMatch::any()
        .method(Method::POST)
        .path(&format!("/client/v4/accounts/{CF_ACCOUNT}/access/identity_providers/{id}/refresh_scim_secret"));
    cf.kit().faults().push(Fault::status(500).on(refresh).times(1));
    env.start_operator().await;
    // Made in the dashboard, so taken over only when the connection adopts it.
    env.connect_to("scim", "broker", scim_block(), "web", json!({"adopt": true})).await;
    wait_scim(&env, "False", "ScimSecretRefreshFailed").await;
    env.wait_ready("scim").await;
    // Retried with backoff: the next refresh succeeds.
    wait_scim(&env, "True", "ScimSecretStored").await;
    let token = text(&secrets(&env).get(SCIM_SECRET).await.unwrap(), "scim-secret").unwrap();
    assert_ne!(token, "token-from-the-dashboard");
    assert_eq!(Some(token.clone()), cf.scim_secret(&id));

    // The Secret deleted: the connection looks again at once (not at its next refresh, an hour
    // away) and stores a new token.
    secrets(&env).delete(SCIM_SECRET, &DeleteParams::default()).await.unwrap();
    let mut renewed = None;
    for _ in 0..200 {
        renewed = secrets(&env).get_opt(SCIM_SECRET).await.unwrap().and_then(|s| text(&s, "scim-secret")).filter(|t| *t != token);
        if renewed.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let renewed = renewed.expect("a new token in a new Secret");
    assert_eq!(Some(renewed.clone()), cf.scim_secret(&id));
    assert_no_token_leaks(&env, &[&token, &renewed]).await;
}

async fn assert_no_token_leaks(env: &Env, tokens: &[&str]) {
    let logs = String::from_utf8_lossy(&crate::common::e2e::captured_logs().lock().unwrap()).into_owned();
    let conn = serde_json::to_string(&env.connections().get("scim").await.unwrap()).unwrap();
    let events = serde_json::to_string(&env.events().await).unwrap();
    for token in tokens {
        assert!(!logs.contains(token) && !conn.contains(token) && !events.contains(token), "a SCIM token leaked");
    }
    env.assert_no_canary_leaks().await;
}

/// Refuses creating and updating the SCIM Secret in the test's namespace.
async fn deny_scim_secret(env: &Env) -> SecretDenial {
    let probe = || async {
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SCIM_SECRET}, "stringData": {"probe": "x"}});
        let written = secrets(env).patch(SCIM_SECRET, &PatchParams::apply("e2e-probe"), &Patch::Apply(&secret)).await.is_ok();
        if written {
            secrets(env).delete(SCIM_SECRET, &DeleteParams::default()).await.expect("undoing the probe");
        }
        written
    };
    SecretDenial::install(&env.client, &env.ns, SCIM_SECRET, &["CREATE", "UPDATE"], probe).await
}
