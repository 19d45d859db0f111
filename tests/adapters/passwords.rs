//! Adapter tests of the operator's Graph password client (`PasswordClient`: list, addPassword,
//! removePassword, and the proof by token request) over HTTPS against the Entra ID emulator:
//! the documented shapes, replication, the permission model, the tenant's policies and the
//! credential limit, and that no error shows a secret.

use std::time::Duration;

use idp_bridge::{
    azure::passwords::{GraphCaller, PasswordClient, PasswordError},
    crd::{conditions::Reason, connection::AzureCloud},
    secret::SecretValue,
};
use idp_bridge_devenv::{
    azure::{AzureEmulator, PasswordPolicy},
    kit::{Fault, RequestMatch},
};
use jiff::{SignedDuration, Timestamp};
use tempfile::NamedTempFile;

use crate::common::TENANT;
const APP: &str = "11111111-2222-3333-4444-555555555555";
const ROTATOR: &str = "99999999-8888-7777-6666-555555555555";
const CANARY: &str = "cAn8Q~rotation-canary-must-not-leak-7";
const ROTATOR_SECRET: &str = "rOt8Q~rotator-canary-must-not-leak-9";

struct Env {
    emu: AzureEmulator,
    client: PasswordClient,
    _ca_file: NamedTempFile,
}

/// An app that owns itself with Application.ReadWrite.OwnedBy and holds the canary secret.
fn env() -> Env {
    let (emu, upstream, ca_file) = crate::common::azure_upstream();
    emu.add_app(TENANT, APP);
    emu.add_secret(TENANT, APP, CANARY, Timestamp::now() + SignedDuration::from_hours(24 * 30));
    emu.set_graph_write_owned_by(TENANT, APP, true);
    emu.add_owner(TENANT, APP, APP);
    Env { emu, client: PasswordClient::new(upstream), _ca_file: ca_file }
}

fn caller<'a>(client_id: &'a str, secret: &'a SecretValue) -> GraphCaller<'a> {
    GraphCaller { cloud: AzureCloud::AzurePublic, tenant: TENANT, client_id, secret, fingerprint: "fp" }
}

fn days(n: i64) -> Timestamp {
    Timestamp::now() + SignedDuration::from_hours(24 * n)
}

#[tokio::test]
async fn add_returns_the_value_once_list_shows_its_hint_and_remove_is_idempotent() {
    let env = env();
    let own = SecretValue::new(CANARY);
    let end = days(90).round(jiff::Unit::Second).unwrap();
    let created = env.client.add(&caller(APP, &own), APP, "idp-bridge:ns/app:m1", end).await.unwrap();
    assert_eq!(created.hint, created.secret.expose().chars().take(3).collect::<String>(), "hint is the first three characters");
    assert_eq!(&created.secret.expose()[4..6], "Q~", "the current secret format");
    assert_eq!(created.end_date_time, end);
    let listed = env.client.list(&caller(APP, &own), APP).await.unwrap();
    let found = listed.iter().find(|p| p.key_id == created.key_id).expect("the new password is listed");
    assert_eq!(found.display_name.as_deref(), Some("idp-bridge:ns/app:m1"));
    assert_eq!(found.hint.as_deref(), Some(created.hint.as_str()));
    env.client.remove(&caller(APP, &own), APP, &created.key_id).await.unwrap();
    assert!(!env.client.list(&caller(APP, &own), APP).await.unwrap().iter().any(|p| p.key_id == created.key_id));
    env.client.remove(&caller(APP, &own), APP, &created.key_id).await.expect("removing a password that is gone succeeds");
}

#[tokio::test]
async fn a_new_password_is_refused_until_it_has_replicated() {
    let env = env();
    env.emu.set_password_policy(PasswordPolicy { replication_delay: SignedDuration::from_secs(2), ..Default::default() });
    let own = SecretValue::new(CANARY);
    let created = env.client.add(&caller(APP, &own), APP, "idp-bridge:ns/app:m1", days(90)).await.unwrap();
    let early = env.client.prove(AzureCloud::AzurePublic, TENANT, APP, &created.secret).await.unwrap_err();
    assert_eq!(early.reason(), Reason::InvalidSecret, "AADSTS7000215 while the secret replicates");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    env.client.prove(AzureCloud::AzurePublic, TENANT, APP, &created.secret).await.expect("accepted once replicated");
}

#[tokio::test]
async fn without_the_permission_or_the_ownership_graph_refuses_and_says_what_to_grant() {
    let env = env();
    let own = SecretValue::new(CANARY);
    env.emu.set_graph_write_owned_by(TENANT, APP, false);
    let error = env.client.add(&caller(APP, &own), APP, "x", days(90)).await.unwrap_err();
    assert!(matches!(error, PasswordError::PermissionMissing), "{error:?}");
    assert_eq!(error.reason(), Reason::GraphPermissionMissing);
    assert!(error.to_string().contains("Application.ReadWrite.OwnedBy") && error.to_string().contains("owner"), "{error}");
    assert!(!error.is_transient());
    // The permission without the ownership is not enough either.
    env.emu.set_graph_write_owned_by(TENANT, APP, true);
    env.emu.add_app(TENANT, ROTATOR);
    env.emu.add_secret(TENANT, ROTATOR, ROTATOR_SECRET, days(30));
    env.emu.set_graph_write_owned_by(TENANT, ROTATOR, true);
    let rotator = SecretValue::new(ROTATOR_SECRET);
    let error = env.client.add(&caller(ROTATOR, &rotator), APP, "x", days(90)).await.unwrap_err();
    assert!(matches!(error, PasswordError::PermissionMissing), "a rotator that does not own the app: {error:?}");
    env.emu.add_owner(TENANT, APP, ROTATOR);
    let created = env.client.add(&caller(ROTATOR, &rotator), APP, "x", days(90)).await.expect("a rotator that owns the app");
    assert!(env.emu.passwords(TENANT, APP).iter().any(|p| p.0 == created.key_id), "the password is the app's, not the rotator's");
}

#[tokio::test]
async fn tenant_policies_and_the_credential_limit_have_their_own_reasons() {
    let env = env();
    let own = SecretValue::new(CANARY);
    let me = caller(APP, &own);
    let add = || env.client.add(&me, APP, "x", days(90));
    env.emu.set_password_policy(PasswordPolicy { max_lifetime: Some(SignedDuration::from_hours(24 * 30)), ..Default::default() });
    assert_eq!(add().await.unwrap_err().reason(), Reason::PasswordLifetimePolicy);
    env.emu.set_password_policy(PasswordPolicy { forbid_addition: true, ..Default::default() });
    assert_eq!(add().await.unwrap_err().reason(), Reason::PasswordAdditionForbidden);
    env.emu.set_password_policy(PasswordPolicy { max_credentials: Some(2), ..Default::default() });
    add().await.expect("a second password fits");
    let full = add().await.unwrap_err();
    assert_eq!(full.reason(), Reason::PasswordLimitReached);
    assert!(!full.is_transient(), "{full}");
    assert!(!format!("{full} {full:?}").contains(CANARY), "no secret in the error");
}

/// Graph's refusals as they are on record, including ones whose code is not the documented one:
/// the limit by its code and wording, the lifetime policy by its wording alone.
#[tokio::test]
async fn graph_refusals_as_recorded_in_the_wild_get_their_reasons() {
    let env = env();
    let own = SecretValue::new(CANARY);
    let me = caller(APP, &own);
    let add_calls = || RequestMatch::any().method(reqwest::Method::POST).path_where(|p| p.ends_with("/addPassword"));
    let refusal = |code: &str, message: &str| {
        Fault::status(400).on(add_calls()).body_json(&serde_json::json!({
            "error": {"code": code, "message": message, "innerError": {"date": "2022-04-15T17:18:50", "request-id": "f0c9aaac-9875-403e-bbd9-9048ec006efb"}}
        }))
    };
    let cases = [
        (
            refusal("TooManyAppPasswords", "Not allowed to add 3 passwords. You can only add a maximum of 2 passwords."),
            Reason::PasswordLimitReached,
        ),
        (refusal("Request_BadRequest", "You can only add a maximum of 2 passwords."), Reason::PasswordLimitReached),
        (
            refusal(
                "Request_BadRequest",
                "Credential lifetime exceeds the max value allowed as per assigned policy 'd5b4a6e4-1c0a-4d5e-9a3f-0b4c1e2f3a4b'.",
            ),
            Reason::PasswordLifetimePolicy,
        ),
        (
            refusal("Request_BadRequest", "Adding password credentials is not allowed as per assigned policy 'd5b4a6e4'."),
            Reason::PasswordAdditionForbidden,
        ),
    ];
    for (fault, reason) in cases {
        env.emu.kit().faults().push(fault);
        let error = env.client.add(&me, APP, "idp-bridge:ns/app:m1", days(90)).await.unwrap_err();
        assert_eq!(error.reason(), reason, "{error}");
        assert!(!error.is_transient(), "{error}");
    }
    env.emu.kit().faults().push(refusal("Request_BadRequest", "Invalid value specified for property 'displayName'."));
    let other = env.client.add(&me, APP, "idp-bridge:ns/app:m1", days(90)).await.unwrap_err();
    assert!(matches!(other, PasswordError::Unexpected { status: 400, .. }), "any other 400 stays unexpected: {other:?}");
}

#[tokio::test]
async fn a_refused_caller_secret_is_a_token_error_without_the_secret() {
    let env = env();
    let wrong = SecretValue::new("wRo8Q~wrong-canary-value-not-to-leak");
    let error = env.client.list(&caller(APP, &wrong), APP).await.unwrap_err();
    assert_eq!(error.reason(), Reason::InvalidSecret);
    assert!(!format!("{error} {error:?}").contains(wrong.expose()));
}

/// Graph's throttling of the password calls: transient, with the server's Retry-After (bounded),
/// nothing added, and no secret in the error; the next call after it goes through.
#[tokio::test]
async fn a_throttled_password_call_is_transient_with_its_retry_after_and_adds_nothing() {
    let env = env();
    let own = SecretValue::new(CANARY);
    let before = env.emu.passwords(TENANT, APP).len();
    let password_calls =
        RequestMatch::any().method(reqwest::Method::POST).path_where(|p| p.ends_with("/addPassword") || p.ends_with("/removePassword"));
    env.emu.kit().faults().push(Fault::status(429).on(password_calls.clone()).retry_after(30));
    let throttled = env.client.add(&caller(APP, &own), APP, "idp-bridge:ns/app:m1", days(90)).await.unwrap_err();
    assert!(matches!(throttled, PasswordError::Throttled { .. }), "{throttled:?}");
    assert_eq!(throttled.retry_after(), Some(Duration::from_secs(30)));
    assert!(throttled.is_transient());
    assert_eq!(throttled.reason(), Reason::GraphUnreachable);
    assert!(!format!("{throttled} {throttled:?}").contains(CANARY), "no secret in the error");
    assert_eq!(env.emu.passwords(TENANT, APP).len(), before, "a throttled addPassword adds nothing");

    // A Retry-After beyond the operator's bound is clamped to it.
    env.emu.kit().faults().push(Fault::status(429).on(password_calls).retry_after(u64::MAX));
    let far = env.client.remove(&caller(APP, &own), APP, "00000000-0000-0000-0000-000000000000").await.unwrap_err();
    assert_eq!(far.retry_after(), Some(Duration::from_secs(3600)), "{far:?}");

    env.client.add(&caller(APP, &own), APP, "idp-bridge:ns/app:m1", days(90)).await.expect("the next call goes through");
    assert_eq!(env.emu.passwords(TENANT, APP).len(), before + 1);
}
