//! End-to-end scenarios on a real kube-apiserver and etcd: the operator, running in-process and
//! watching one namespace per test, validates secrets against emulated Azure and syncs emulated
//! Auth0. Every test ends with the canary check: no secret value in logs, events or status.

use std::time::Duration;

use crate::common::e2e::{AUTH0_DOMAIN, CLIENT_ID, Env, M2M_CLIENT, M2M_SECRET, TENANT_ID, condition, condition_is};
use idp_bridge::crd::{FINALIZER, conditions::*};
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;

fn in_a_year() -> jiff::Timestamp {
    jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 365)
}

/// Lets the operator run for a while, to prove it stays quiet.
async fn settle() {
    tokio::time::sleep(Duration::from_secs(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_rotate_and_reject_a_bad_secret() {
    let mut env = Env::new("e2e-rotate").await;
    let first = env.canary("first");
    env.upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, &first, in_a_year());
    env.put_secret("web-secret", &[("client-secret", &first)], &[]).await;
    env.connect("contoso", "web-secret", json!({"auth0": {"displayName": "Contoso", "domainAliases": ["contoso.com"]}})).await;

    // Created: Ready, tenant GUID resolved, Auth0 holds the right client id, secret and options.
    let conn = env.wait_ready("contoso").await;
    let status = conn.status.clone().unwrap();
    assert_eq!(status.tenant_id.as_deref(), Some(TENANT_ID));
    assert!(conn.metadata.finalizers.as_ref().unwrap().contains(&FINALIZER.to_owned()));
    let remote = env.broker_connection("contoso");
    assert_eq!(remote["strategy"], "waad");
    assert_eq!(remote["display_name"], "Contoso");
    assert_eq!(remote["options"]["client_id"], CLIENT_ID);
    assert_eq!(remote["options"]["client_secret"], first.as_str());
    assert_eq!(remote["options"]["tenant_domain"], "contoso.onmicrosoft.com");
    assert_eq!(remote["options"]["domain_aliases"], json!(["contoso.com"]));
    assert_eq!(status.broker.as_ref().unwrap().id.as_deref(), remote["id"].as_str());
    let first_fingerprint = status.secret.as_ref().unwrap().fingerprint.clone().unwrap();
    assert_eq!(status.broker.as_ref().unwrap().synced_fingerprint.as_deref(), Some(first_fingerprint.as_str()));

    // Steady state: no broker writes, no further token requests.
    let (writes, tokens) = (env.auth0.writes(), env.upstreams.azure.token_requests_for(CLIENT_ID));
    settle().await;
    assert_eq!(env.auth0.writes(), writes, "steady state writes nothing to the broker");
    assert_eq!(env.upstreams.azure.token_requests_for(CLIENT_ID), tokens, "validation is cached");

    // Rotation: exactly one broker write, fingerprint follows.
    let second = env.canary("second");
    env.upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, &second, in_a_year());
    env.put_secret("web-secret", &[("client-secret", &second)], &[]).await;
    let conn = env
        .wait_for("contoso", "the new secret synced", |c| {
            let s = c.status.as_ref().unwrap();
            let fp = s.secret.as_ref().and_then(|x| x.fingerprint.clone());
            fp.is_some()
                && fp.as_deref() != Some(first_fingerprint.as_str())
                && s.broker.as_ref().and_then(|b| b.synced_fingerprint.clone()) == fp
        })
        .await;
    assert!(condition_is(&conn, READY, "True", "Ready"));
    assert_eq!(env.broker_secret("contoso"), second);
    settle().await;
    assert_eq!(env.auth0.writes(), writes + 1, "a rotation is one broker write");
    assert_eq!(env.broker_connection("contoso")["display_name"], "Contoso", "PATCH keeps the display name");
    assert_eq!(env.wait_events("contoso", "BrokerUpdated", 1).await.len(), 1);

    // A wrong value: not pushed, the broker keeps the working one, a Warning event says why.
    let wrong = env.canary("wrong");
    let tokens_before = env.upstreams.azure.token_requests_for(CLIENT_ID);
    env.put_secret("web-secret", &[("client-secret", &wrong)], &[]).await;
    let conn = env.wait_condition("contoso", CREDENTIALS_VALID, "False", "InvalidSecret").await;
    assert!(condition_is(&conn, READY, "False", "InvalidSecret"));
    assert!(condition_is(&conn, BROKER_SYNCED, "False", "NotPushed"));
    assert!(condition(&conn, READY).message.contains("Value"), "the message says what to do");
    assert_eq!(env.broker_secret("contoso"), second);
    assert!(!env.wait_events("contoso", "InvalidSecret", 1).await.is_empty());
    // No retry storm: a permanent error waits for a change, and the reconcile's own status write
    // does not trigger another one. One Secret change, one token request.
    settle().await;
    assert_eq!(env.upstreams.azure.token_requests_for(CLIENT_ID), tokens_before + 1, "one validation of a rejected secret");

    // An expired value: specific reason, broker unchanged.
    let expired = env.canary("expired");
    env.upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, &expired, jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1));
    env.put_secret("web-secret", &[("client-secret", &expired)], &[]).await;
    env.wait_condition("contoso", CREDENTIALS_VALID, "False", "SecretExpired").await;
    assert_eq!(env.broker_secret("contoso"), second);
    assert_eq!(env.auth0.writes(), writes + 1);

    env.assert_no_canary_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_specific_reasons_and_recovers() {
    let mut env = Env::new("e2e-bad").await;
    // Missing Secret, created later: recovers without manual action.
    env.connect("late", "late-secret", json!({})).await;
    env.wait_condition("late", READY, "False", "SecretNotFound").await;
    let late = env.canary("late");
    env.upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, &late, in_a_year());
    env.put_secret("late-secret", &[("client-secret", &late)], &[]).await;
    env.wait_ready("late").await;

    // Each bad Secret content has its own reason, and nothing reaches the broker.
    env.put_secret("other-key", &[("password", "x")], &[]).await;
    env.connect("missing-key", "other-key", json!({})).await;
    env.wait_condition("missing-key", READY, "False", "SecretKeyNotFound").await;
    env.put_secret("empty", &[("client-secret", "")], &[]).await;
    env.connect("empty", "empty", json!({})).await;
    env.wait_condition("empty", READY, "False", "SecretEmpty").await;
    env.put_secret_bytes("binary", "client-secret", &[0xff, 0xfe, 0x01]).await;
    env.connect("binary", "binary", json!({})).await;
    env.wait_condition("binary", READY, "False", "SecretNotUtf8").await;
    env.put_secret("secret-id", &[("client-secret", "6f5e2a39-0a42-4a4e-9a55-4f2a3cfe2f0b")], &[]).await;
    env.connect("secret-id", "secret-id", json!({})).await;
    env.wait_condition("secret-id", READY, "False", "SecretIdInsteadOfValue").await;

    // Azure-side problems.
    let value = env.canary("value");
    env.upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, &value, in_a_year());
    env.put_secret("good", &[("client-secret", &value)], &[]).await;
    env.connect("unknown-tenant", "good", json!({"azure": {"tenant": "nosuch.onmicrosoft.com"}})).await;
    env.wait_condition("unknown-tenant", READY, "False", "TenantNotFound").await;
    env.connect("unknown-app", "good", json!({"azure": {"clientId": "00000000-1111-2222-3333-444444444444"}})).await;
    env.wait_condition("unknown-app", READY, "False", "ApplicationNotFound").await;

    // Broker-side problems.
    env.connect("no-broker", "good", json!({"brokerRef": {"name": "nosuch"}})).await;
    let conn = env.wait_condition("no-broker", READY, "False", "BrokerNotFound").await;
    assert!(condition_is(&conn, CREDENTIALS_VALID, "True", "Valid"));
    env.apply("ClusterIdentityBroker", &format!("{}-locked", env.ns), json!({"spec": {"auth0": {"domain": AUTH0_DOMAIN, "credentialsSecretRef": {"name": "auth0-management"}}, "allowedNamespaces": {"matchLabels": {"idp-bridge/allowed": "true"}}}})).await;
    env.connect("not-allowed", "good", json!({"brokerRef": {"kind": "ClusterIdentityBroker", "name": format!("{}-locked", env.ns)}})).await;
    env.wait_condition("not-allowed", READY, "False", "BrokerNotAllowed").await;
    env.connect_to("wrong-type", "auth0", json!({"cloudflare": {"name": "Contoso"}}), "good", json!({})).await;
    env.wait_condition("wrong-type", READY, "False", "BrokerTypeMismatch").await;

    let names = ["missing-key", "empty", "binary", "secret-id", "unknown-tenant", "unknown-app", "no-broker", "not-allowed", "wrong-type"];
    for name in names {
        assert!(env.auth0.connection_by_name(name).is_none(), "{name} must not reach the broker");
        assert!(
            env.events().await.iter().any(|e| e.involved_object.name.as_deref() == Some(name) && e.type_.as_deref() == Some("Warning")),
            "{name} has a Warning event"
        );
    }
    env.assert_no_canary_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_credentials_and_reachability_failures_recover() {
    let mut env = Env::new("e2e-broker").await;
    let value = env.canary("value");
    env.upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, &value, in_a_year());
    env.put_secret("web", &[("client-secret", &value)], &[]).await;

    // Wrong management credentials, then fixed.
    env.put_secret("auth0-management", &[("client-id", M2M_CLIENT), ("client-secret", "wrong-m2m-secret")], &[]).await;
    env.connect("contoso", "web", json!({})).await;
    env.wait_condition("contoso", BROKER_SYNCED, "False", "BrokerAuthFailed").await;
    assert!(env.auth0.connection_by_name("contoso").is_none());
    env.put_secret("auth0-management", &[("client-id", M2M_CLIENT), ("client-secret", M2M_SECRET)], &[]).await;
    env.wait_ready("contoso").await;

    // Rate limited: the status says so, and the operator comes back after the reset.
    let newer = env.canary("newer");
    env.upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, &newer, in_a_year());
    env.auth0.rate_limit_next(1, 2);
    env.put_secret("web", &[("client-secret", &newer)], &[]).await;
    env.wait_condition("contoso", BROKER_SYNCED, "False", "BrokerRateLimited").await;
    env.wait_ready("contoso").await;
    assert_eq!(env.broker_secret("contoso"), newer);

    // Unreachable broker: a transient, specific reason; nothing changes at Auth0.
    env.auth0.shutdown();
    let unreachable = env.canary("unreachable");
    env.upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, &unreachable, in_a_year());
    env.put_secret("web", &[("client-secret", &unreachable)], &[]).await;
    env.wait_condition("contoso", BROKER_SYNCED, "False", "BrokerUnreachable").await;
    env.assert_no_canary_leaks().await;
    env.stop_operator().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_only_and_suspend_write_nothing() {
    let mut env = Env::new("e2e-observe").await;
    let value = env.canary("value");
    env.upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, &value, in_a_year());
    env.put_secret("web", &[("client-secret", &value)], &[]).await;

    // ObserveOnly on a missing object: reports, creates nothing.
    env.connect("watched", "web", json!({"managementPolicy": "ObserveOnly"})).await;
    let conn = env.wait_condition("watched", BROKER_SYNCED, "False", "Drifted").await;
    assert!(condition(&conn, BROKER_SYNCED).message.contains("missing"));
    assert_eq!(env.auth0.writes(), 0);

    // Full creates it; a dashboard edit is corrected with a Drifted event.
    env.connect("watched", "web", json!({"managementPolicy": "Full"})).await;
    env.wait_ready("watched").await;
    let id = env.broker_connection("watched")["id"].as_str().unwrap().to_owned();
    env.auth0.edit_connection(&id, |c| c["options"]["ext_groups"] = json!(true));
    // Drift is found on the next refresh; a poke triggers one now without changing the inputs.
    let writes = env.auth0.writes();
    env.poke("watched").await;
    for _ in 0..200 {
        if env.broker_connection("watched")["options"]["ext_groups"] == false {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(env.broker_connection("watched")["options"]["ext_groups"], false, "Full corrects drift");
    assert_eq!(env.auth0.writes(), writes + 1);
    assert_eq!(env.wait_events("watched", "Drifted", 1).await.len(), 1, "a Warning event names the drift");

    // Back to ObserveOnly, edit again: reported, not corrected.
    env.connect("watched", "web", json!({"managementPolicy": "ObserveOnly"})).await;
    env.wait_for("watched", "ObserveOnly in sync", |c| condition_is(c, BROKER_SYNCED, "True", "InSync")).await;
    let writes = env.auth0.writes();
    env.auth0.edit_connection(&id, |c| c["options"]["ext_groups"] = json!(true));
    env.poke("watched").await;
    let conn = env.wait_condition("watched", BROKER_SYNCED, "False", "Drifted").await;
    assert!(condition(&conn, BROKER_SYNCED).message.contains("options.ext_groups"));
    assert!(condition_is(&conn, READY, "False", "Drifted"));
    assert_eq!(env.auth0.writes(), writes, "ObserveOnly never writes");
    assert_eq!(env.broker_connection("watched")["options"]["ext_groups"], true);

    // Suspend: no calls at all, even when the secret changes.
    env.connect("watched", "web", json!({"managementPolicy": "ObserveOnly", "suspend": true})).await;
    env.wait_condition("watched", READY, "False", "Suspended").await;
    let (tokens, discovery, writes) = (env.upstreams.azure.token_requests(), env.upstreams.azure.discovery_requests(), env.auth0.writes());
    let other = env.canary("other");
    env.put_secret("web", &[("client-secret", &other)], &[]).await;
    settle().await;
    assert_eq!(
        (env.upstreams.azure.token_requests(), env.upstreams.azure.discovery_requests(), env.auth0.writes()),
        (tokens, discovery, writes)
    );
    env.assert_no_canary_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_policies_and_a_vanished_broker() {
    let mut env = Env::new("e2e-delete").await;
    let value = env.canary("value");
    env.upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, &value, in_a_year());
    env.put_secret("web", &[("client-secret", &value)], &[]).await;
    env.connect("kept", "web", json!({})).await;
    env.connect("removed", "web", json!({"deletionPolicy": "Delete"})).await;
    env.wait_ready("kept").await;
    env.wait_ready("removed").await;

    env.connections().delete("kept", &DeleteParams::default()).await.unwrap();
    env.connections().delete("removed", &DeleteParams::default()).await.unwrap();
    for name in ["kept", "removed"] {
        wait_gone(&env, name).await;
    }
    assert!(env.auth0.connection_by_name("kept").is_some(), "Orphan keeps the Auth0 connection");
    assert!(env.auth0.connection_by_name("removed").is_none(), "Delete removes it");

    // A broker in use by a Delete connection is protected: deleted, it stays until the
    // connection no longer needs it.
    env.connect("stranded", "web", json!({"deletionPolicy": "Delete"})).await;
    env.wait_ready("stranded").await;
    let brokers: kube::Api<idp_bridge::crd::IdentityBroker> = kube::Api::namespaced(env.client.clone(), &env.ns);
    let in_use = |b: &idp_bridge::crd::IdentityBroker| {
        b.metadata.finalizers.iter().flatten().any(|f| f.starts_with(idp_bridge::crd::IN_USE_FINALIZER_PREFIX))
    };
    for _ in 0..200 {
        if in_use(&brokers.get("auth0").await.unwrap()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    brokers.delete("auth0", &DeleteParams::default()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held = brokers.get("auth0").await.expect("a broker in use stays while being deleted");
    assert!(held.metadata.deletion_timestamp.is_some() && in_use(&held));

    // A broker that is gone anyway (its finalizer removed by hand) does not block deletion.
    let release = json!({"metadata": {"finalizers": null}});
    brokers.patch("auth0", &PatchParams::default(), &Patch::Merge(&release)).await.unwrap();
    for _ in 0..200 {
        if brokers.get_opt("auth0").await.unwrap().is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.connections().delete("stranded", &DeleteParams::default()).await.unwrap();
    wait_gone(&env, "stranded").await;
    assert_eq!(env.wait_events("stranded", "Orphaned", 1).await.len(), 1);
    env.assert_no_canary_leaks().await;
}

async fn wait_gone(env: &Env, name: &str) {
    for _ in 0..200 {
        if env.connections().get_opt(name).await.unwrap().is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{name} was not deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_mid_way_neither_duplicates_nor_rewrites() {
    let mut env = Env::new("e2e-restart").await;
    let value = env.canary("value");
    env.upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, &value, in_a_year());
    env.put_secret("web", &[("client-secret", &value)], &[]).await;
    env.connect("contoso", "web", json!({})).await;

    // Stop as soon as Auth0 has the connection, then lose the recorded status as well.
    for _ in 0..400 {
        if env.auth0.connection_by_name("contoso").is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    env.stop_operator().await;
    let status = json!({"apiVersion": "idpbridge.io/v1alpha1", "kind": "AzureAdConnection", "status": {"conditions": []}});
    env.connections().patch_status("contoso", &PatchParams::apply("idp-bridge").force(), &Patch::Apply(&status)).await.unwrap();

    // A new operator adopts the existing connection by name.
    env.start_operator().await;
    env.wait_ready("contoso").await;
    let all: Vec<_> = env.auth0.connections().into_iter().filter(|c| c["name"] == "contoso").collect();
    assert_eq!(all.len(), 1, "no duplicate remote objects");

    // A restart in steady state writes nothing.
    let writes = env.auth0.writes();
    env.stop_operator().await;
    env.start_operator().await;
    settle().await;
    env.wait_ready("contoso").await;
    assert_eq!(env.auth0.writes(), writes, "a restart in steady state makes zero broker writes");
    env.assert_no_canary_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_resource_owner_setup() {
    let env = Env::new("e2e-native").await;
    // The native app's client id, any secret, validation limited to discovery.
    env.put_secret("native", &[("client-secret", "not-used-by-the-native-flow")], &[]).await;
    env.connect(
        "contoso-native",
        "native",
        json!({
            "azure": {"clientId": "5d7f9b1c-3e5a-4c7e-8a9b-1c3e5a7c9e1b"},
            "validation": {"mode": "Discovery"},
            "expiry": {"source": "None"},
            "auth0": {"appIdUri": "api://contoso-web-api", "identityApi": "azure-active-directory-v1.0"}
        }),
    )
    .await;
    let conn = env.wait_ready("contoso-native").await;
    assert!(condition_is(&conn, CREDENTIALS_VALID, "True", "TenantResolved"));
    let remote = env.broker_connection("contoso-native");
    assert_eq!(remote["options"]["app_id"], "api://contoso-web-api");
    assert_eq!(remote["options"]["client_id"], "5d7f9b1c-3e5a-4c7e-8a9b-1c3e5a7c9e1b");
    assert_eq!(remote["options"]["identity_api"], "azure-active-directory-v1.0");
    assert_eq!(env.upstreams.azure.token_requests(), 0, "the native secret is never tried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_annotation_drives_secret_expiring() {
    let mut env = Env::new("e2e-expiry").await;
    let value = env.canary("value");
    env.upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, &value, in_a_year());
    let in_ten_days = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(240)).round(jiff::Unit::Second).unwrap();
    env.put_secret("web", &[("client-secret", &value)], &[("idpbridge.io/expires-at", &in_ten_days.to_string())]).await;
    env.connect("contoso", "web", json!({})).await;
    let conn = env.wait_condition("contoso", SECRET_EXPIRING, "True", "SecretExpiring").await;
    let secret = conn.status.as_ref().unwrap().secret.clone().unwrap();
    assert_eq!(secret.expires_at.unwrap().0, in_ten_days);
    assert_eq!(secret.expiry_source.as_deref(), Some("Annotation"));
    assert!(
        condition(&conn, SECRET_EXPIRING).message.contains("in 9 days") || condition(&conn, SECRET_EXPIRING).message.contains("in 10 days")
    );
    assert!(condition_is(&conn, READY, "True", "Ready"));

    // An expiry a few seconds away flips Ready at that moment, without other triggers.
    let soon = (jiff::Timestamp::now() + jiff::SignedDuration::from_secs(4)).round(jiff::Unit::Second).unwrap();
    env.put_secret("web", &[("client-secret", &value)], &[("idpbridge.io/expires-at", &soon.to_string())]).await;
    env.wait_ready("contoso").await;
    let conn = env.wait_condition("contoso", READY, "False", "SecretExpired").await;
    assert!(jiff::Timestamp::now() >= soon);
    assert!(condition_is(&conn, SECRET_EXPIRING, "True", "SecretExpired"));

    env.put_secret("web", &[("client-secret", &value)], &[("idpbridge.io/expires-at", "next tuesday")]).await;
    env.wait_condition("contoso", SECRET_EXPIRING, "Unknown", "InvalidExpiryAnnotation").await;
    env.assert_no_canary_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_expiry_and_an_expiry_during_the_test() {
    let mut env = Env::new("e2e-graph").await;
    env.upstreams.azure.set_graph_read_all(TENANT_ID, CLIENT_ID, true);
    let value = env.canary("ten-days");
    let in_ten_days = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(240)).round(jiff::Unit::Second).unwrap();
    let key_id = env.upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, &value, in_ten_days);
    env.put_secret("web", &[("client-secret", &value)], &[]).await;
    env.connect("contoso", "web", json!({})).await;
    let conn = env.wait_condition("contoso", SECRET_EXPIRING, "True", "SecretExpiring").await;
    let secret = conn.status.as_ref().unwrap().secret.clone().unwrap();
    assert_eq!(secret.expires_at.unwrap().0.as_second(), in_ten_days.as_second());
    assert_eq!(secret.expiry_source.as_deref(), Some("Graph"));
    assert_eq!(secret.key_id.as_deref(), Some(key_id.as_str()));
    assert!(condition_is(&conn, READY, "True", "Ready"));
    assert_eq!(env.wait_events("contoso", "SecretExpiring", 1).await.len(), 1, "one Warning when entering the window");

    // A secret that expires a few seconds from now: Ready flips at that moment, on its own.
    let short = env.canary("short");
    let soon = (jiff::Timestamp::now() + jiff::SignedDuration::from_secs(5)).round(jiff::Unit::Second).unwrap();
    env.upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, &short, soon);
    env.put_secret("web", &[("client-secret", &short)], &[]).await;
    env.wait_for("contoso", "the short-lived secret synced", |c| {
        condition_is(c, READY, "True", "Ready")
            && c.status.as_ref().and_then(|s| s.secret.as_ref()).and_then(|s| s.expires_at.as_ref()).map(|t| t.0.as_second())
                == Some(soon.as_second())
    })
    .await;
    let conn = env.wait_condition("contoso", READY, "False", "SecretExpired").await;
    let flipped = jiff::Timestamp::now();
    // The flip comes from the requeue at the expiry, not from the next refresh (an hour away); the
    // slack only absorbs a loaded 2-core machine.
    assert!(flipped >= soon && flipped.as_second() - soon.as_second() <= 10, "flipped at {flipped}, expiry {soon}");
    assert!(condition_is(&conn, SECRET_EXPIRING, "True", "SecretExpired"));
    assert_eq!(env.wait_events("contoso", "SecretExpired", 1).await.len(), 1, "one Warning at expiry");

    // Without Application.Read.All, expiry.source Graph names the missing permission.
    env.upstreams.azure.set_graph_read_all(TENANT_ID, CLIENT_ID, false);
    let other = env.canary("other");
    env.upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, &other, in_ten_days);
    env.put_secret("web2", &[("client-secret", &other)], &[]).await;
    env.connect("strict", "web2", json!({"expiry": {"source": "Graph"}})).await;
    let conn = env.wait_condition("strict", SECRET_EXPIRING, "Unknown", "GraphPermissionMissing").await;
    assert!(condition(&conn, SECRET_EXPIRING).message.contains("Application.Read.All"));
    assert!(condition_is(&conn, READY, "True", "Ready"), "missing expiry data does not make the connection unready");
    env.assert_no_canary_leaks().await;
}

/// The value of the first sample whose line starts with `prefix`.
fn sample(metrics: &str, prefix: &str) -> Option<f64> {
    metrics.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_probes_are_served_and_cleaned_up() {
    let mut env = Env::new("e2e-metrics").await;
    assert_eq!(env.http_get("/healthz").await, (200, "ok".to_owned()));
    let first = env.canary("first");
    let expires = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 90)).round(jiff::Unit::Second).unwrap();
    env.upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, &first, in_a_year());
    env.put_secret("web", &[("client-secret", &first)], &[("idpbridge.io/expires-at", &expires.to_string())]).await;
    env.connect("contoso", "web", json!({})).await;
    env.wait_ready("contoso").await;
    assert_eq!(env.http_get("/readyz").await.0, 200);

    // Rotate once, to feed the Secret-change-to-synced histogram.
    let second = env.canary("second");
    env.upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, &second, in_a_year());
    env.put_secret("web", &[("client-secret", &second)], &[("idpbridge.io/expires-at", &expires.to_string())]).await;
    for _ in 0..100 {
        if env.broker_secret("contoso") == second {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.wait_ready("contoso").await;

    let (status, metrics) = env.http_get("/metrics").await;
    assert_eq!(status, 200);
    let ns = env.ns.clone();
    let expiry = format!(
        "idpbridge_client_secret_expiry_timestamp_seconds{{namespace=\"{ns}\",name=\"contoso\",client_id=\"{CLIENT_ID}\",tenant_id=\"{TENANT_ID}\"}}"
    );
    assert_eq!(sample(&metrics, &expiry), Some(expires.as_second() as f64), "{metrics}");
    assert_eq!(
        sample(&metrics, &format!("idpbridge_connection_ready{{namespace=\"{ns}\",name=\"contoso\",broker=\"auth0\",reason=\"Ready\"}}")),
        Some(1.0)
    );
    assert!(sample(&metrics, "idpbridge_reconcile_total{result=\"success\"}").unwrap() >= 1.0);
    assert!(sample(&metrics, "idpbridge_reconcile_duration_seconds_count{result=\"success\"}").unwrap() >= 1.0);
    assert!(
        sample(&metrics, "idpbridge_upstream_requests_total{upstream=\"azure\",operation=\"POST token\",status=\"200\"}").unwrap() >= 2.0
    );
    assert!(
        sample(&metrics, "idpbridge_upstream_requests_total{upstream=\"azure\",operation=\"GET openid-configuration\",status=\"200\"}")
            .is_some()
    );
    assert!(
        sample(&metrics, "idpbridge_upstream_requests_total{upstream=\"auth0\",operation=\"PATCH connections/{id}\",status=\"200\"}")
            .unwrap()
            >= 1.0
    );
    assert!(sample(&metrics, "idpbridge_upstream_request_duration_seconds_count{upstream=\"auth0\"").is_some());
    let rotations = sample(&metrics, "idpbridge_secret_rotation_sync_duration_seconds_count").unwrap();
    assert!(rotations >= 1.0, "{metrics}");
    assert!(
        sample(&metrics, "idpbridge_secret_rotation_sync_duration_seconds_bucket{le=\"1.0\"}").unwrap() >= 1.0,
        "synced within a second"
    );

    // A failing connection reports 0; deleting a connection removes its series.
    env.put_secret("web", &[("client-secret", "Wr0Q~not-the-value-at-all-000000")], &[]).await;
    env.wait_condition("contoso", READY, "False", "InvalidSecret").await;
    let metrics = env.http_get("/metrics").await.1;
    let not_ready = format!("idpbridge_connection_ready{{namespace=\"{ns}\",name=\"contoso\",broker=\"auth0\",reason=\"InvalidSecret\"}}");
    assert_eq!(sample(&metrics, &not_ready), Some(0.0), "{metrics}");
    assert!(!metrics.contains("reason=\"Ready\""), "the Ready series made way for the new reason:\n{metrics}");
    assert!(sample(&metrics, &expiry).is_none(), "no expiry series once the date is unknown");
    env.connections().delete("contoso", &DeleteParams::default()).await.unwrap();
    wait_gone(&env, "contoso").await;
    let metrics = env.http_get("/metrics").await.1;
    assert!(!metrics.contains("name=\"contoso\""), "series of a deleted connection are removed:\n{metrics}");
    env.assert_no_canary_leaks().await;
}
