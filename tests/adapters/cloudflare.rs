//! Adapter tests of the Cloudflare broker client (`CloudflareClient::{sync, delete, check}`, with
//! the planning in `broker::cloudflare::plan`) over real HTTPS against the Cloudflare API emulator.
//! What Cloudflare holds is read back through the emulator's state accessors and request log.
//!
//! One answer the emulator never gives (an error that echoes what it was sent) comes from a small
//! stub server on the same test CA.

use crate::common::{self, ADOPTING, CLIENT, Creds, FRESH, TENANT, deletion, request, request_as};

use std::time::Duration;

use axum::{
    Json, Router,
    body::Bytes,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
};
use idp_bridge::{
    broker::{
        BrokerClient, BrokerError, BrokerExtras, ScimCredentials, SyncOutcome,
        cloudflare::CloudflareClient,
        ownership::{Claim, Ownership},
    },
    crd::{
        broker::{CloudflareBrokerSpec, TokenSecretRef},
        conditions::Reason,
        connection::{
            AzureAdConnectionSpec, AzureCloud, CloudflareConnectionSpec, CloudflarePrompt, CloudflareScimSpec, ScimIdentityUpdateBehavior,
            SignInAudience, ValidationMode,
        },
    },
    secret::{Fingerprinter, SecretValue},
    upstream::{EndpointOverrides, Upstream},
};
use idp_bridge_devenv::{
    cloudflare::{CloudflareEmulator, TEAM},
    kit::Fault,
    tls::{TestCa, install_crypto_provider, serve_tls},
};
use serde_json::{Value, json};
use tempfile::NamedTempFile;

const HOST: &str = "api.cloudflare.com";
const ACCOUNT: &str = "023e105f4ecef8ad9ca31a8372d0c353";
const OTHER_ACCOUNT: &str = "9a7806061c88ada191ed06f989cc3dac";
const ZONE: &str = "5a9c2b6e0d0f4c1e8b7a6d5c4b3a2f10";
const NAME: &str = "Contoso Entra ID";
/// The Entra client secret pushed to Cloudflare; no error text may ever contain it.
const CANARY: &str = "cAn8Q~canary-idp-secret-must-not-leak";
/// The operator's Cloudflare API token; no error text may contain it either.
const TOKEN: &str = "cf-token-canary-must-not-leak-0123456789abcdef";
const ROTATED: &str = "new8Q~rotated-secret-value-0123456789ab";
const OBSERVE: bool = true;
const FULL: bool = false;

fn collection(scope: &str) -> String {
    let kind = if scope == ZONE { "zones" } else { "accounts" };
    format!("/client/v4/{kind}/{scope}/access/identity_providers")
}

struct Env {
    cf: CloudflareEmulator,
    up: Upstream,
    _ca_file: NamedTempFile,
    fingerprints: Fingerprinter,
}

/// An emulated account and zone, and one token valid for both.
fn env() -> Env {
    install_crypto_provider();
    let ca = TestCa::new();
    let ca_file = NamedTempFile::new().unwrap();
    ca.write_pem(ca_file.path()).unwrap();
    let cf = CloudflareEmulator::start(&ca).unwrap();
    cf.add_account(ACCOUNT);
    cf.add_account(OTHER_ACCOUNT);
    cf.add_zone(ZONE);
    cf.add_token(TOKEN, &[ACCOUNT, ZONE]);
    let mut overrides = EndpointOverrides::default();
    overrides.insert(HOST, cf.base_url());
    let up = Upstream::new(overrides, Some(ca_file.path()), Duration::from_secs(5)).unwrap();
    Env { cf, up, _ca_file: ca_file, fingerprints: Fingerprinter::new(b"test-key".to_vec()) }
}

fn account_spec(account: &str) -> CloudflareBrokerSpec {
    CloudflareBrokerSpec {
        account_id: Some(account.into()),
        zone_id: None,
        api_token_secret_ref: TokenSecretRef { name: "cloudflare".into(), key: "api-token".into() },
    }
}

impl Env {
    fn client_with(&self, spec: &CloudflareBrokerSpec, token: &str, rate: Option<(u32, u32)>) -> BrokerClient {
        BrokerClient::Cloudflare(CloudflareClient::new(self.up.clone(), spec, SecretValue::new(token), rate))
    }

    fn client(&self) -> BrokerClient {
        self.client_with(&account_spec(ACCOUNT), TOKEN, None)
    }

    fn creds(&self, secret: &str) -> Creds {
        Creds::new(&self.fingerprints, secret)
    }

    /// Requests so far as "METHOD /path?query".
    fn log(&self) -> Vec<String> {
        self.cf.requests().into_iter().map(|(m, p)| format!("{m} {p}")).collect()
    }

    fn count(&self, prefix: &str) -> usize {
        self.log().iter().filter(|e| e.starts_with(prefix)).count()
    }

    fn provider(&self) -> Value {
        self.cf.provider_by_name(NAME).expect("the provider exists")
    }
}

/// A single-tenant connection for Cloudflare, tenant given as a domain (resolved by validation).
fn spec_with(cloudflare: CloudflareConnectionSpec) -> AzureAdConnectionSpec {
    common::connection_spec("cloudflare", |spec| spec.cloudflare = Some(cloudflare))
}

fn cf_spec() -> CloudflareConnectionSpec {
    CloudflareConnectionSpec {
        name: NAME.into(),
        support_groups: true,
        claims: vec!["groups".into(), "roles".into()],
        email_claim_name: Some("preferred_username".into()),
        prompt: Some(CloudflarePrompt::SelectAccount),
        ..Default::default()
    }
}

fn spec() -> AzureAdConnectionSpec {
    spec_with(cf_spec())
}

fn scim_spec() -> AzureAdConnectionSpec {
    spec_with(CloudflareConnectionSpec {
        scim: Some(CloudflareScimSpec {
            enabled: true,
            user_deprovision: true,
            seat_deprovision: false,
            identity_update_behavior: ScimIdentityUpdateBehavior::Reauth,
            secret_name: "contoso-scim".into(),
        }),
        ..cf_spec()
    })
}

/// The error, after checking that none of its texts shows either canary.
fn checked(err: BrokerError) -> BrokerError {
    for text in [err.to_string(), format!("{err:?}")] {
        assert!(!text.contains(CANARY) && !text.contains(TOKEN), "a secret leaked into {text:?}");
    }
    err
}

fn expect_err<T: std::fmt::Debug>(result: Result<T, BrokerError>) -> BrokerError {
    match result {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => checked(e),
    }
}

/// Creates the provider through a first sync; returns its id.
async fn created(env: &Env, client: &BrokerClient, spec: &AzureAdConnectionSpec, creds: &Creds) -> String {
    let outcome = client.sync(&request(spec, creds, None, None, FULL)).await.unwrap();
    assert!(outcome.wrote, "{outcome:?}");
    let id = outcome.id.expect("an id");
    let name = &spec.cloudflare.as_ref().expect("a cloudflare block").name;
    assert_eq!(env.cf.provider_by_name(name).expect("created")["id"], id.as_str());
    id
}

#[tokio::test]
async fn first_sync_creates_an_azure_ad_provider() {
    let env = env();
    let client = env.client();
    let creds = env.creds(CANARY);
    let outcome = client.sync(&request(&spec(), &creds, None, None, FULL)).await.unwrap();
    let id = outcome.id.clone().expect("an id");
    assert_eq!(outcome, common::created(&id));

    let stored = env.cf.provider(&id).unwrap();
    assert_eq!((stored["name"].as_str(), stored["type"].as_str()), (Some(NAME), Some("azureAD")));
    let config = &stored["config"];
    assert_eq!(config["client_id"], CLIENT);
    assert_eq!(config["directory_id"], TENANT, "the resolved tenant GUID, not the domain");
    assert_eq!(env.cf.client_secret(&id).as_deref(), Some(CANARY));
    assert_eq!((&config["support_groups"], &config["conditional_access_enabled"]), (&json!(true), &json!(false)));
    assert_eq!(config["claims"], json!(["groups", "roles"]));
    assert_eq!(config["email_claim_name"], "preferred_username");
    assert_eq!(config["prompt"], "select_account");
    assert!(config.get("pkce_enabled").is_none(), "pkce_enabled is sent only when set");
    assert_eq!(config["redirect_url"], format!("https://{TEAM}.cloudflareaccess.com/cdn-cgi/access/callback"));
    assert_eq!(config["azure_cloud"], "default");
    assert_eq!(stored["scim_config"]["enabled"], false);
    assert!(stored.get("read_only").is_none(), "read_only is never sent");
    assert_eq!(env.cf.providers().len(), 1);
    assert_eq!(env.cf.writes(), 1);
    let base = collection(ACCOUNT);
    assert_eq!(env.log(), [format!("GET {base}?page=1&per_page=50"), format!("POST {base}")]);

    // With PKCE set, it is sent.
    let pkce = spec_with(CloudflareConnectionSpec { name: "with pkce".into(), pkce_enabled: Some(true), ..Default::default() });
    let outcome = client.sync(&request(&pkce, &creds, None, None, FULL)).await.unwrap();
    assert_eq!(env.cf.provider(outcome.id.as_deref().unwrap()).unwrap()["config"]["pkce_enabled"], true);
}

#[tokio::test]
async fn steady_state_makes_no_writes() {
    let env = env();
    let client = env.client();
    let (spec, creds) = (spec(), env.creds(CANARY));
    let id = created(&env, &client, &spec, &creds).await;
    let writes = env.cf.writes();
    let seen = env.log().len();
    for known_id in [Some(id.as_str()), None] {
        for observe_only in [FULL, OBSERVE] {
            let outcome = client.sync(&request(&spec, &creds, known_id, Some(&creds.fingerprint), observe_only)).await.unwrap();
            assert_eq!(
                outcome,
                SyncOutcome { id: Some(id.clone()), differences: vec![], wrote: false, extras: None, create_deferred: false }
            );
        }
    }
    assert_eq!(env.cf.writes(), writes, "steady state writes nothing");
    let later = &env.log()[seen..];
    assert!(later.iter().all(|r| r.starts_with("GET ")), "{later:?}");
    // Found by id: one read each; found by name: one list each.
    assert_eq!(later.len(), 4, "{later:?}");
    assert_eq!(env.count(&format!("GET {}/{id}", collection(ACCOUNT))), 2);
}

#[tokio::test]
async fn rotation_puts_once_with_the_complete_config() {
    let env = env();
    let client = env.client();
    let spec = spec();
    let (old, new) = (env.creds(CANARY), env.creds(ROTATED));
    let id = created(&env, &client, &spec, &old).await;
    // Set in the dashboard, not owned by the operator: survives the full replace.
    env.cf.edit_provider(&id, |p| p["config"]["azure_cloud"] = json!("default-edited"));
    let before = env.provider();
    let writes = env.cf.writes();

    let outcome = client.sync(&request(&spec, &new, Some(&id), Some(&old.fingerprint), FULL)).await.unwrap();
    assert_eq!(
        outcome,
        SyncOutcome {
            id: Some(id.clone()),
            differences: vec!["config.client_secret".into()],
            wrote: true,
            extras: None,
            create_deferred: false
        }
    );
    assert_eq!(env.cf.writes(), writes + 1);
    assert_eq!(env.count(&format!("PUT {}/{id}", collection(ACCOUNT))), 1, "exactly one PUT");
    assert_eq!(env.count("PUT "), 1);

    let after = env.provider();
    assert_eq!(env.cf.client_secret(&id).as_deref(), Some(ROTATED));
    let mut expected = before.clone();
    expected["config"]["client_secret"] = json!(ROTATED);
    assert_eq!(after, expected, "everything else is as it was: the PUT carried the complete config");

    // Settled: the next sync changes nothing.
    let outcome = client.sync(&request(&spec, &new, Some(&id), Some(&new.fingerprint), FULL)).await.unwrap();
    assert_eq!((outcome.differences.len(), outcome.wrote), (0, false), "{outcome:?}");
    assert_eq!(env.cf.writes(), writes + 1);
}

#[tokio::test]
async fn drift_is_corrected_in_full_mode_and_only_reported_when_observing() {
    let env = env();
    let client = env.client();
    let (spec, creds) = (spec(), env.creds(CANARY));
    let id = created(&env, &client, &spec, &creds).await;
    env.cf.edit_provider(&id, |p| {
        p["config"]["support_groups"] = json!(false);
        p["config"]["claims"] = json!(["evil-claim"]);
        p["scim_config"]["identity_update_behavior"] = json!("automatic");
    });
    let drifted = env.provider();
    let writes = env.cf.writes();

    let outcome = client.sync(&request(&spec, &creds, Some(&id), Some(&creds.fingerprint), OBSERVE)).await.unwrap();
    assert_eq!(outcome.differences, ["config.support_groups", "config.claims", "scim_config.identity_update_behavior"]);
    assert!(!outcome.wrote);
    let shown = format!("{outcome:?}");
    for value in ["evil-claim", CANARY, "automatic"] {
        assert!(!shown.contains(value), "differences name fields, never values: {shown}");
    }
    assert_eq!(env.cf.writes(), writes, "observing writes nothing");
    assert_eq!(env.provider(), drifted);

    let outcome = client.sync(&request(&spec, &creds, Some(&id), Some(&creds.fingerprint), FULL)).await.unwrap();
    assert!(outcome.wrote);
    assert_eq!(env.cf.writes(), writes + 1);
    let fixed = env.provider();
    assert_eq!((&fixed["config"]["support_groups"], &fixed["config"]["claims"]), (&json!(true), &json!(["groups", "roles"])));
    assert_eq!(fixed["scim_config"]["identity_update_behavior"], "no_action");
    assert_eq!(env.cf.client_secret(&id).as_deref(), Some(CANARY), "the secret is resent with the correction");

    let outcome = client.sync(&request(&spec, &creds, Some(&id), Some(&creds.fingerprint), OBSERVE)).await.unwrap();
    assert!(outcome.differences.is_empty(), "{outcome:?}");
}

#[tokio::test]
async fn existing_provider_is_adopted_by_listing_every_page() {
    let env = env();
    let client = env.client();
    for i in 0..120 {
        env.cf.insert_provider(ACCOUNT, json!({"name": format!("other-{i:03}"), "type": "onetimepin"}));
    }
    let id = env.cf.insert_provider(
        ACCOUNT,
        json!({
            "name": NAME,
            "type": "azureAD",
            "config": {"client_id": CLIENT, "client_secret": "made-by-hand", "directory_id": TENANT, "support_groups": true, "azure_cloud": "default"},
            "scim_config": {"enabled": false},
        }),
    );
    let creds = env.creds(CANARY);
    // Status was lost: no recorded id, no synced fingerprint; made by hand, so taken with adopt.
    let outcome = client.sync(&request_as(&spec(), &creds, None, None, FULL, ADOPTING)).await.unwrap();
    assert_eq!(outcome.id.as_deref(), Some(id.as_str()), "found by name");
    assert!(outcome.wrote && outcome.differences.contains(&"config.client_secret".to_owned()), "{outcome:?}");
    assert!(outcome.differences.contains(&"config.claims".to_owned()), "{outcome:?}");
    assert_eq!(env.cf.providers().len(), 121, "not duplicated");
    assert_eq!(env.count("POST "), 0);
    let base = collection(ACCOUNT);
    for page in 1..=3 {
        assert_eq!(env.count(&format!("GET {base}?page={page}&per_page=50")), 1, "page {page}: {:?}", env.log());
    }
    assert_eq!(env.cf.client_secret(&id).as_deref(), Some(CANARY));

    // A stale recorded id falls back to the name as well (now claimed); the fingerprint recorded
    // with the stale id says nothing about this provider, so the secret is pushed again.
    let stale = "00000000-0000-4000-8000-000000000000";
    let claimed = Ownership { claim: Some(Claim::Recorded(&id)), ..FRESH };
    let outcome = client.sync(&request_as(&spec(), &creds, Some(stale), Some(&creds.fingerprint), FULL, claimed)).await.unwrap();
    assert_eq!(
        (outcome.id.as_deref(), outcome.differences.as_slice()),
        (Some(id.as_str()), ["config.client_secret".to_owned()].as_slice())
    );
    let outcome = client.sync(&request_as(&spec(), &creds, Some(&id), Some(&creds.fingerprint), FULL, claimed)).await.unwrap();
    assert_eq!((outcome.id.as_deref(), outcome.wrote), (Some(id.as_str()), false));
}

#[tokio::test]
async fn a_recorded_id_of_someone_elses_provider_is_ignored() {
    let env = env();
    let client = env.client();
    let foreign = env.cf.insert_provider(
        ACCOUNT,
        json!({"name": "Payroll", "type": "azureAD", "config": {"client_id": "x", "client_secret": "theirs", "directory_id": TENANT}}),
    );
    let creds = env.creds(CANARY);
    // Status names another provider's id (stale or tampered): it is neither updated nor deleted.
    let outcome = client.sync(&request(&spec(), &creds, Some(&foreign), None, FULL)).await.unwrap();
    assert_ne!(outcome.id.as_deref(), Some(foreign.as_str()));
    assert_eq!(env.cf.client_secret(&foreign).as_deref(), Some("theirs"));
    client.delete(&deletion(&spec(), Some(&foreign))).await.unwrap();
    assert!(env.cf.provider(&foreign).is_some(), "someone else's provider survives");
    assert!(env.cf.provider_by_name(NAME).is_none(), "ours is deleted");
    // A malformed recorded id never reaches a path; the name is used.
    client.sync(&request(&spec(), &creds, Some("../../../zones"), None, FULL)).await.unwrap();
    assert!(env.log().iter().all(|r| !r.contains("..")), "{:?}", env.log());
    assert!(env.cf.provider_by_name(NAME).is_some());
}

#[tokio::test]
async fn same_named_provider_of_another_type_is_refused() {
    let env = env();
    let client = env.client();
    let other = env.cf.insert_provider(ACCOUNT, json!({"name": NAME, "type": "oidc", "config": {"client_id": "x"}}));
    let creds = env.creds(CANARY);
    for observe_only in [FULL, OBSERVE] {
        let err = expect_err(client.sync(&request(&spec(), &creds, None, None, observe_only)).await);
        assert!(matches!(err, BrokerError::Rejected(ref m) if m.contains("oidc") && m.contains(NAME)), "{err:?}");
        assert_eq!(err.reason(), Reason::BrokerRejected);
        assert!(!err.is_transient());
    }
    // Its id recorded in status changes nothing.
    let err = expect_err(client.sync(&request(&spec(), &creds, Some(&other), None, FULL)).await);
    assert!(matches!(err, BrokerError::Rejected(_)), "{err:?}");
    assert_eq!(env.cf.writes(), 0);
    // Deleting leaves it alone.
    client.delete(&deletion(&spec(), None)).await.unwrap();
    client.delete(&deletion(&spec(), Some(&other))).await.unwrap();
    assert!(env.cf.provider(&other).is_some());
    assert_eq!(env.cf.writes(), 0);
    assert_eq!(env.count("DELETE "), 0);
}

#[tokio::test]
async fn zone_level_providers_work_the_same() {
    let env = env();
    let zone = CloudflareBrokerSpec { account_id: None, zone_id: Some(ZONE.into()), ..account_spec(ACCOUNT) };
    let client = env.client_with(&zone, TOKEN, None);
    client.check().await.unwrap();
    let (spec, creds) = (spec(), env.creds(CANARY));
    let id = created(&env, &client, &spec, &creds).await;
    let base = collection(ZONE);
    assert!(env.log().iter().all(|r| r.contains(&base)), "{:?}", env.log());
    let outcome = client.sync(&request(&spec, &creds, Some(&id), Some(&creds.fingerprint), FULL)).await.unwrap();
    assert_eq!((outcome.wrote, outcome.differences.len()), (false, 0));
    let new = env.creds(ROTATED);
    client.sync(&request(&spec, &new, Some(&id), Some(&creds.fingerprint), FULL)).await.unwrap();
    assert_eq!(env.cf.client_secret(&id).as_deref(), Some(ROTATED));

    // The account does not see the zone's provider: it would create its own.
    let account = env.client();
    let outcome = account.sync(&request(&spec, &new, Some(&id), Some(&new.fingerprint), OBSERVE)).await.unwrap();
    assert_eq!(outcome.differences, ["connection (missing)"]);
    client.delete(&deletion(&spec, Some(&id))).await.unwrap();
    assert!(env.cf.providers().is_empty());
}

#[tokio::test]
async fn scim_credentials_come_back_once_when_scim_is_first_enabled() {
    fn scim_of(outcome: &SyncOutcome) -> Option<ScimCredentials> {
        outcome.extras.as_ref().map(|BrokerExtras::CloudflareScim(scim)| scim.clone())
    }
    let env = env();
    let client = env.client();
    let creds = env.creds(CANARY);

    // Enabled at creation.
    let spec = scim_spec();
    let outcome = client.sync(&request(&spec, &creds, None, None, FULL)).await.unwrap();
    let id = outcome.id.clone().unwrap();
    let scim = scim_of(&outcome).expect("SCIM credentials on the enabling write");
    let stored = env.cf.provider(&id).unwrap();
    assert_eq!(scim.base_url, format!("https://{TEAM}.cloudflareaccess.com/populations/{id}/scim/v2"));
    assert_eq!(Some(scim.secret.expose()), stored["scim_config"]["secret"].as_str());
    assert_eq!(stored["scim_config"]["user_deprovision"], true);
    assert_eq!(stored["scim_config"]["identity_update_behavior"], "reauth");
    assert!(!format!("{outcome:?}").contains(scim.secret.expose()), "the outcome never prints the token");
    // Later syncs, with or without a write, do not see it again.
    let outcome = client.sync(&request(&spec, &creds, Some(&id), Some(&creds.fingerprint), FULL)).await.unwrap();
    assert_eq!((outcome.wrote, scim_of(&outcome)), (false, None));
    let new = env.creds(ROTATED);
    let outcome = client.sync(&request(&spec, &new, Some(&id), Some(&creds.fingerprint), FULL)).await.unwrap();
    assert_eq!((outcome.wrote, scim_of(&outcome)), (true, None));

    // Enabled by an update of a provider made without SCIM.
    let plain = spec_with(CloudflareConnectionSpec { name: "Later SCIM".into(), ..cf_spec() });
    let later = created(&env, &client, &plain, &creds).await;
    let enabled = spec_with(CloudflareConnectionSpec { name: "Later SCIM".into(), ..scim_spec().cloudflare.unwrap() });
    let outcome = client.sync(&request(&enabled, &creds, Some(&later), Some(&creds.fingerprint), FULL)).await.unwrap();
    assert!(outcome.differences.contains(&"scim_config.enabled".to_owned()), "{outcome:?}");
    let scim = scim_of(&outcome).expect("SCIM credentials on the enabling PUT");
    assert_eq!(scim.base_url, format!("https://{TEAM}.cloudflareaccess.com/populations/{later}/scim/v2"));
    assert_eq!(Some(scim.secret.expose()), env.cf.provider(&later).unwrap()["scim_config"]["secret"].as_str());
    // Off and on again: Cloudflare shows the token redacted, so nothing comes back.
    for spec in [&plain, &enabled] {
        let outcome = client.sync(&request(spec, &creds, Some(&later), Some(&creds.fingerprint), FULL)).await.unwrap();
        assert_eq!((outcome.wrote, scim_of(&outcome)), (true, None));
    }
    assert!(env.log().iter().all(|r| !r.contains(scim.secret.expose())));
}

/// The SCIM token Cloudflare showed once is regenerated through `refresh_scim_secret`: a new
/// token in the clear, the old one replaced; refused clearly without SCIM; ids checked first.
#[tokio::test]
async fn the_scim_secret_is_regenerated_through_cloudflares_refresh() {
    let env = env();
    let client = env.client();
    let creds = env.creds(CANARY);
    let outcome = client.sync(&request(&scim_spec(), &creds, None, None, FULL)).await.unwrap();
    let id = outcome.id.clone().unwrap();
    let Some(BrokerExtras::CloudflareScim(first)) = outcome.extras else { panic!("SCIM credentials on the enabling write") };

    let fresh = client.refresh_scim_secret(&id).await.unwrap();
    assert_ne!(fresh.secret.expose(), first.secret.expose(), "a new token");
    assert_eq!(env.cf.scim_secret(&id).as_deref(), Some(fresh.secret.expose()), "the one Cloudflare now holds");
    assert_eq!(fresh.base_url, format!("https://{TEAM}.cloudflareaccess.com/populations/{id}/scim/v2"));
    assert_eq!(env.count(&format!("POST {}/{id}/refresh_scim_secret", collection(ACCOUNT))), 1, "{:?}", env.log());
    assert!(!format!("{fresh:?}").contains(fresh.secret.expose()), "the token never prints");
    // The next sync finds nothing to change and shows no token.
    let again = client.sync(&request(&scim_spec(), &creds, Some(&id), Some(&creds.fingerprint), FULL)).await.unwrap();
    assert_eq!((again.wrote, again.extras), (false, None));

    // Without SCIM on the provider, Cloudflare refuses, and the error says so.
    let plain = created(&env, &client, &spec_with(CloudflareConnectionSpec { name: "No SCIM".into(), ..cf_spec() }), &creds).await;
    let refused = expect_err(client.refresh_scim_secret(&plain).await);
    assert!(!refused.is_transient() && refused.to_string().contains("SCIM is not enabled"), "{refused}");
    // A server error is transient; an id that is not a UUID never reaches a path.
    env.cf.kit().faults().push(Fault::status(503).times(1));
    assert!(expect_err(client.refresh_scim_secret(&id).await).is_transient());
    let before = env.log().len();
    expect_err(client.refresh_scim_secret("../../zones").await);
    assert_eq!(env.log().len(), before, "no request for a malformed id");
    assert!(env.log().iter().all(|r| !r.contains(fresh.secret.expose())));
}

#[tokio::test]
async fn invalid_or_unscoped_tokens_are_auth_failures() {
    let env = env();
    env.cf.add_token("other-account-token", &[OTHER_ACCOUNT]);
    let creds = env.creds(CANARY);
    for token in [format!("{TOKEN}-revoked"), "other-account-token".to_owned()] {
        let client = env.client_with(&account_spec(ACCOUNT), &token, None);
        let err = expect_err(client.check().await);
        assert!(matches!(err, BrokerError::Auth(ref m) if m.contains("Authentication error") && m.contains("10000")), "{err:?}");
        assert_eq!(err.reason(), Reason::BrokerAuthFailed);
        assert!(!err.is_transient());
        let err = expect_err(client.sync(&request(&spec(), &creds, None, None, FULL)).await);
        assert_eq!(err.reason(), Reason::BrokerAuthFailed, "{err}");
        let err = expect_err(client.delete(&deletion(&spec(), Some("00000000-0000-4000-8000-000000000000"))).await);
        assert_eq!(err.reason(), Reason::BrokerAuthFailed, "{err}");
    }
    assert_eq!(env.cf.writes(), 0);
    assert!(env.cf.providers().is_empty());
}

/// Connections of one broker reconcile at once: a token never seen accepted is sent by one of
/// them at a time, so a refused token costs one request, not one per connection.
#[tokio::test]
async fn concurrent_calls_with_a_refused_token_send_it_once() {
    let env = env();
    let client = env.client_with(&account_spec(ACCOUNT), &format!("{TOKEN}-revoked"), None);
    let creds = env.creds(CANARY);
    let spec = spec();
    let sync = request(&spec, &creds, None, None, FULL);
    let syncs = (0..6).map(|_| client.sync(&sync));
    for result in futures::future::join_all(syncs).await {
        assert_eq!(expect_err(result).reason(), Reason::BrokerAuthFailed);
    }
    assert_eq!(env.log().len(), 1, "{:?}", env.log());
}

#[tokio::test]
async fn unknown_account_is_refused_with_a_clear_reason() {
    let env = env();
    let unknown = "ffffffffffffffffffffffffffffffff";
    env.cf.add_token("wide-token", &[unknown, ACCOUNT]);
    let client = env.client_with(&account_spec(unknown), "wide-token", None);
    let creds = env.creds(CANARY);
    for err in [
        expect_err(client.check().await),
        expect_err(client.sync(&request(&spec(), &creds, None, None, FULL)).await),
        expect_err(client.sync(&request(&spec(), &creds, Some("00000000-0000-4000-8000-000000000000"), None, OBSERVE)).await),
        expect_err(client.delete(&deletion(&spec(), None)).await),
    ] {
        assert!(
            matches!(err, BrokerError::Rejected(ref m) if m.contains(&format!("account {unknown}")) && m.contains("accountId")),
            "{err:?}"
        );
        assert_eq!(err.reason(), Reason::BrokerRejected);
        assert!(!err.is_transient());
    }
    assert_eq!(env.cf.writes(), 0);
}

#[tokio::test]
async fn exceeding_the_emulated_budget_blocks_for_five_minutes() {
    let env = env();
    env.cf.set_rate_limit(3);
    // No rateLimit on the broker: the default budget would allow a burst of these.
    let client = env.client();
    let (spec, creds) = (spec(), env.creds(CANARY));
    let id = created(&env, &client, &spec, &creds).await; // 2 requests
    client.sync(&request(&spec, &creds, Some(&id), Some(&creds.fingerprint), FULL)).await.unwrap(); // 3
    let err = expect_err(client.sync(&request(&spec, &creds, Some(&id), Some(&creds.fingerprint), FULL)).await);
    assert_eq!(err.retry_after(), Some(Duration::from_secs(300)), "{err:?}");
    assert_eq!(env.cf.rate_limited(), 1);
    let seen = env.log().len();
    expect_err(client.check().await);
    assert_eq!(env.log().len(), seen, "the client holds back");
    // Another client of the same token (e.g. after a restart) is refused by Cloudflare's block.
    let err = expect_err(env.client().check().await);
    let wait = err.retry_after().expect("a wait");
    assert!(wait > Duration::from_secs(290) && wait <= Duration::from_secs(300), "{wait:?}");
}

#[tokio::test]
async fn a_configured_budget_never_exceeds_cloudflares_window() {
    let env = env();
    // Scaled down: 12 requests per 1-second window. A budget of 8/s with bursts of 2 sends at most
    // 2 + 8 = 10 in any second.
    env.cf.set_rate_window(Duration::from_secs(1));
    env.cf.set_rate_limit(12);
    env.cf.set_block_duration(Duration::from_secs(60));
    let client = env.client_with(&account_spec(ACCOUNT), TOKEN, Some((8, 2)));
    let (spec, creds) = (spec(), env.creds(CANARY));
    let id = created(&env, &client, &spec, &creds).await;
    for _ in 0..32 {
        client.sync(&request(&spec, &creds, Some(&id), Some(&creds.fingerprint), FULL)).await.unwrap();
    }
    assert_eq!(env.cf.rate_limited(), 0, "no 429 in {} requests", env.log().len());
    assert!(env.log().len() >= 34);

    // The control: without that budget the same traffic trips the limit.
    let eager = env.client_with(&account_spec(ACCOUNT), TOKEN, Some((1000, 1000)));
    let mut failures = 0;
    for _ in 0..30 {
        if eager.sync(&request(&spec, &creds, Some(&id), Some(&creds.fingerprint), FULL)).await.is_err() {
            failures += 1;
        }
    }
    assert!(env.cf.rate_limited() >= 1 && failures >= 1, "the emulator enforces its window");
}

#[tokio::test]
async fn a_read_only_provider_is_reported_not_written() {
    let env = env();
    let client = env.client();
    let id = env.cf.insert_provider(
        ACCOUNT,
        json!({"name": NAME, "type": "azureAD", "read_only": true, "config": {"client_id": CLIENT, "client_secret": "x", "directory_id": TENANT}}),
    );
    let creds = env.creds(CANARY);
    let outcome = client.sync(&request(&spec(), &creds, Some(&id), None, OBSERVE)).await.unwrap();
    assert!(outcome.differences.contains(&"config.client_secret".to_owned()) && !outcome.wrote, "{outcome:?}");
    let err = expect_err(client.sync(&request(&spec(), &creds, Some(&id), None, FULL)).await);
    assert!(matches!(err, BrokerError::Rejected(ref m) if m.contains("read_only")), "{err:?}");
    let err = expect_err(client.delete(&deletion(&spec(), Some(&id))).await);
    assert!(matches!(err, BrokerError::Rejected(ref m) if m.contains("read_only")), "{err:?}");
    assert_eq!((env.count("PUT "), env.count("DELETE ")), (0, 0));
    assert_eq!(env.cf.client_secret(&id).as_deref(), Some("x"));
}

#[tokio::test]
async fn settings_an_azure_ad_provider_cannot_express_fail_before_any_request() {
    let env = env();
    let client = env.client();
    let creds = env.creds(CANARY);
    let mut specs = Vec::new();
    for audience in [SignInAudience::Organizations, SignInAudience::Common, SignInAudience::Consumers] {
        let mut s = spec();
        s.azure.sign_in_audience = audience;
        specs.push(s);
    }
    let mut unresolved = spec();
    unresolved.validation.mode = ValidationMode::None;
    specs.push(unresolved);
    let mut government = spec();
    government.azure.cloud = AzureCloud::AzureUSGovernment;
    specs.push(government);
    let mut no_block = spec();
    no_block.cloudflare = None;
    specs.push(no_block);
    for spec in &specs {
        for observe_only in [FULL, OBSERVE] {
            let err = expect_err(common::sync_spec(&client, spec, &creds, observe_only).await);
            assert!(matches!(err, BrokerError::Unsupported(_)), "{err:?}");
            assert_eq!(err.reason(), Reason::UnsupportedSetting);
            assert!(!err.is_transient() && err.retry_after().is_none());
        }
    }
    let audience = expect_err(client.sync(&request(&specs[0], &creds, None, None, FULL)).await);
    assert!(audience.to_string().contains("one directory"), "{audience}");
    assert!(env.cf.requests().is_empty(), "{:?}", env.log());

    // With validation off, a tenant written as a GUID is still the directory id.
    let mut guid = spec();
    guid.validation.mode = ValidationMode::None;
    guid.azure.tenant = TENANT.to_uppercase();
    created(&env, &client, &guid, &creds).await;
    assert_eq!(env.provider()["config"]["directory_id"], TENANT);
}

/// An API that pages by 2 whatever it is asked, with our provider fifth of five.
fn small_pages_router() -> Router {
    async fn list(uri: axum::http::Uri) -> Response {
        let page: usize = url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
            .find(|(k, _)| k == "page")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(1);
        let all: Vec<Value> = (0..5)
            .map(|i| {
                let name = if i == 4 { NAME.to_owned() } else { format!("other-{i}") };
                json!({"id": format!("00000000-0000-4000-8000-00000000000{i}"), "name": name, "type": "azureAD", "config": {}})
            })
            .collect();
        let slice: Vec<Value> = all.iter().skip((page - 1) * 2).take(2).cloned().collect();
        let info = json!({"page": page, "per_page": 2, "count": slice.len(), "total_count": all.len()});
        Json(json!({"success": true, "errors": [], "messages": [], "result": slice, "result_info": info})).into_response()
    }
    Router::new().route(&collection(ACCOUNT), get(list))
}

#[tokio::test]
async fn listing_follows_the_page_size_cloudflare_reports() {
    install_crypto_provider();
    let ca = TestCa::new();
    let ca_file = NamedTempFile::new().unwrap();
    ca.write_pem(ca_file.path()).unwrap();
    let server = serve_tls(small_pages_router(), &ca).await.unwrap();
    let mut overrides = EndpointOverrides::default();
    overrides.insert(HOST, server.base_url());
    let up = Upstream::new(overrides, Some(ca_file.path()), Duration::from_secs(5)).unwrap();
    let client = BrokerClient::Cloudflare(CloudflareClient::new(up, &account_spec(ACCOUNT), SecretValue::new(TOKEN), None));
    let creds = Creds { secret: SecretValue::new(CANARY), fingerprint: "fp".into() };
    let outcome = client.sync(&request(&spec(), &creds, None, None, OBSERVE)).await.unwrap();
    assert_eq!(outcome.id.as_deref(), Some("00000000-0000-4000-8000-000000000004"), "found on the third page of two");
}

/// An API whose errors echo what they were sent: the request body, and the Authorization header.
fn echo_router() -> Router {
    fn failure(status: StatusCode, message: String) -> Response {
        (status, Json(json!({"success": false, "errors": [{"code": 12130, "message": message}], "messages": [], "result": null})))
            .into_response()
    }
    async fn list(headers: HeaderMap, uri: axum::http::Uri) -> Response {
        if uri.query() == Some("per_page=1") {
            let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
            return failure(StatusCode::FORBIDDEN, format!("token not allowed: {auth}"));
        }
        Json(json!({"success": true, "errors": [], "messages": [], "result": [], "result_info": {"page": 1, "per_page": 50, "count": 0, "total_count": 0}})).into_response()
    }
    async fn create(body: Bytes) -> Response {
        let text = String::from_utf8_lossy(&body).into_owned();
        let status = if text.contains("server-error") { StatusCode::INTERNAL_SERVER_ERROR } else { StatusCode::BAD_REQUEST };
        // Only the secret: error text is bounded to 200 characters after it is scrubbed.
        let sent: Value = serde_json::from_slice(&body).unwrap_or_default();
        failure(status, format!("could not accept client_secret {}", sent["config"]["client_secret"]))
    }
    let path = format!("/client/v4/accounts/{ACCOUNT}/access/identity_providers");
    Router::new().route(&path, get(list).post(create))
}

#[tokio::test]
async fn errors_never_show_a_secret() {
    // From the emulator: every kind of failure, with the canaries as the secrets in play.
    let env = env();
    let creds = env.creds(CANARY);
    let mut errors = vec![expect_err(env.client_with(&account_spec(ACCOUNT), &format!("{TOKEN}-x"), None).check().await)];
    let client = env.client();
    let id = created(&env, &client, &spec(), &creds).await;
    env.cf.fail_next(1, 500);
    errors.push(expect_err(client.sync(&request(&spec(), &creds, Some(&id), None, FULL)).await));
    errors.push(expect_err(env.client_with(&account_spec("ffffffffffffffffffffffffffffffff"), TOKEN, None).check().await));
    env.cf.rate_limit_next(1);
    errors.push(expect_err(client.sync(&request(&spec(), &creds, Some(&id), None, FULL)).await));
    env.cf.shutdown();
    tokio::task::yield_now().await;
    errors.push(expect_err(env.client().check().await));
    let reasons: Vec<Reason> = errors.iter().map(BrokerError::reason).collect();
    assert_eq!(
        reasons,
        [Reason::BrokerAuthFailed, Reason::BrokerUnreachable, Reason::BrokerRejected, Reason::BrokerRateLimited, Reason::BrokerUnreachable]
    );

    // From an API that echoes what it was sent: the values are scrubbed, the message kept.
    install_crypto_provider();
    let ca = TestCa::new();
    let ca_file = NamedTempFile::new().unwrap();
    ca.write_pem(ca_file.path()).unwrap();
    let server = serve_tls(echo_router(), &ca).await.unwrap();
    let mut overrides = EndpointOverrides::default();
    overrides.insert(HOST, server.base_url());
    let up = Upstream::new(overrides, Some(ca_file.path()), Duration::from_secs(5)).unwrap();
    let client = BrokerClient::Cloudflare(CloudflareClient::new(up, &account_spec(ACCOUNT), SecretValue::new(TOKEN), None));

    let err = expect_err(client.check().await);
    assert!(matches!(err, BrokerError::Auth(ref m) if m.contains("Bearer [redacted]")), "{err:?}");
    let err = expect_err(client.sync(&request(&spec(), &creds, None, None, FULL)).await);
    assert!(matches!(err, BrokerError::Rejected(ref m) if m.contains("[redacted]") && m.contains("12130")), "{err:?}");
    let loud = spec_with(CloudflareConnectionSpec { name: "server-error".into(), ..cf_spec() });
    let err = expect_err(client.sync(&request(&loud, &creds, None, None, FULL)).await);
    assert!(matches!(err, BrokerError::Server { status: 500, ref message } if message.contains("[redacted]")), "{err:?}");
}

#[tokio::test]
async fn the_access_team_domain_is_read_once_from_the_zero_trust_organization() {
    let env = env();
    let client = env.client();
    let team = client.access_team_domain().await.expect("a Cloudflare broker has one").unwrap();
    assert_eq!(team, format!("{TEAM}.cloudflareaccess.com"));
    assert_eq!(client.access_team_domain().await.unwrap().unwrap(), team);
    let organization = format!("GET /client/v4/accounts/{ACCOUNT}/access/organizations");
    assert_eq!(env.count(&organization), 1, "cached for the client's life: {:?}", env.log());
    let zone = env.client_with(
        &CloudflareBrokerSpec {
            account_id: None,
            zone_id: Some(ZONE.into()),
            api_token_secret_ref: account_spec(ACCOUNT).api_token_secret_ref,
        },
        TOKEN,
        None,
    );
    assert_eq!(zone.access_team_domain().await.unwrap().unwrap(), team, "zone-level Access has an organization too");
    let refused = env.client_with(&account_spec(ACCOUNT), "not-a-token", None).access_team_domain().await.unwrap().unwrap_err();
    assert_eq!(refused.reason(), Reason::BrokerAuthFailed, "{refused}");
    assert!(!refused.to_string().contains(TOKEN));
}

/// Access applications reference their provider by id: a renamed `cloudflare.name` must update
/// the recorded provider in place (PUT with the new name), never make a second one that the
/// applications do not use, and later rotations must keep reaching it.
#[tokio::test]
async fn a_renamed_provider_is_updated_in_place() {
    let env = env();
    let client = env.client();
    let creds = env.creds(CANARY);
    let id = created(&env, &client, &spec(), &creds).await;
    let renamed = spec_with(CloudflareConnectionSpec { name: "Contoso staff (Entra)".into(), ..cf_spec() });
    // The claim of the new name carries the id over from the old one (the controller's part).
    let claimed = Ownership { claim: Some(Claim::Recorded(&id)), ..FRESH };
    let outcome = client.sync(&request_as(&renamed, &creds, Some(&id), Some(&creds.fingerprint), FULL, claimed)).await.unwrap();
    assert_eq!(
        (outcome.id.as_deref(), outcome.differences.as_slice(), outcome.wrote),
        (Some(id.as_str()), ["name".to_owned()].as_slice(), true)
    );
    assert_eq!(env.cf.providers().len(), 1, "no second provider: {:?}", env.log());
    assert_eq!(env.count("POST "), 1);
    let provider = env.cf.provider(&id).expect("the same provider");
    assert_eq!(provider["name"], "Contoso staff (Entra)");
    assert_eq!(env.cf.client_secret(&id).as_deref(), Some(CANARY), "the PUT carried the secret");
    // A rotation after the rename lands on the same provider.
    let rotated = env.creds("rotated-secret-value");
    let outcome = client.sync(&request_as(&renamed, &rotated, Some(&id), Some(&creds.fingerprint), FULL, claimed)).await.unwrap();
    assert_eq!(outcome.id.as_deref(), Some(id.as_str()));
    assert_eq!(env.cf.client_secret(&id).as_deref(), Some("rotated-secret-value"));
    assert_eq!(env.cf.providers().len(), 1);
    // The status's id alone, without the claim, still names no provider of another name.
    let stale = client.sync(&request_as(&spec(), &rotated, Some(&id), None, OBSERVE, FRESH)).await.unwrap();
    assert_eq!(stale.id, None, "not taken by a status id whose name differs: {stale:?}");
}
