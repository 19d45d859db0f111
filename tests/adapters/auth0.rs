//! Adapter tests of the Auth0 broker client (`Auth0Client::{sync, delete, check}`, with the
//! planning in `broker::auth0::plan`) over real HTTPS against the Auth0 Management API emulator.
//! What the broker holds is read back through the emulator's state accessors and request log.
//!
//! One answer the emulator never gives (an error that echoes what it was sent) comes from a small
//! stub server on the same test CA.

use crate::common::{self, ADOPTING, CLIENT, Creds, TENANT, TENANT_DOMAIN, deletion, request, request_as};

use std::{collections::BTreeSet, time::Duration};

use axum::{
    Json, Router,
    body::Bytes,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use idp_bridge::{
    broker::{BrokerClient, BrokerError, SyncOutcome, auth0::Auth0Client},
    crd::{
        conditions::Reason,
        connection::{Auth0ConnectionSpec, Auth0IdentityApi, Auth0UserIdAttribute, AzureAdConnectionSpec, SignInAudience, ValidationMode},
    },
    secret::{Fingerprinter, SecretValue},
    upstream::{EndpointOverrides, Upstream},
};
use idp_bridge_devenv::{
    auth0::Auth0Emulator,
    tls::{TestCa, install_crypto_provider, serve_tls},
};
use serde_json::{Value, json};
use tempfile::NamedTempFile;

const DOMAIN: &str = "acme.auth0.com";
const NAME: &str = "contoso-entra";
const DISPLAY: &str = "Contoso staff";
/// The Entra client secret pushed to Auth0; no error text may ever contain it.
const CANARY: &str = "cAn8Q~canary-connection-secret-must-not-leak";
const M2M: &str = "m2m-client";
/// The operator's own Management API secret; no error text may contain it either.
const M2M_SECRET: &str = "m2m-canary-secret-must-not-leak";
const ALL_SCOPES: [&str; 4] = ["read:connections", "create:connections", "update:connections", "delete:connections"];
/// A budget far above what the tests send, so Auth0's default pacing (40 a minute) does not slow
/// them; the default itself is covered by the conformance suite and the unit tests.
const FAST_RATE: Option<(u32, u32)> = Some((1000, 1000));
const OBSERVE: bool = true;
const FULL: bool = false;

struct Env {
    auth0: Auth0Emulator,
    up: Upstream,
    _ca_file: NamedTempFile,
    fingerprints: Fingerprinter,
}

/// An emulated tenant with one fully scoped M2M client.
fn env() -> Env {
    install_crypto_provider();
    let ca = TestCa::new();
    let ca_file = NamedTempFile::new().unwrap();
    ca.write_pem(ca_file.path()).unwrap();
    let auth0 = Auth0Emulator::start(&ca, DOMAIN).unwrap();
    auth0.add_m2m_client(M2M, M2M_SECRET, &ALL_SCOPES);
    let mut overrides = EndpointOverrides::default();
    overrides.insert(DOMAIN, auth0.base_url());
    let up = Upstream::new(overrides, Some(ca_file.path()), Duration::from_secs(5)).unwrap();
    Env { auth0, up, _ca_file: ca_file, fingerprints: Fingerprinter::new(b"test-key".to_vec()) }
}

impl Env {
    /// The operator's client for the tenant, with the M2M credentials given.
    fn client_as(&self, client_id: &str, secret: &str) -> BrokerClient {
        BrokerClient::Auth0(Auth0Client::new(self.up.clone(), DOMAIN, client_id, SecretValue::new(secret), FAST_RATE))
    }

    fn client(&self) -> BrokerClient {
        self.client_as(M2M, M2M_SECRET)
    }

    fn creds(&self, secret: &str) -> Creds {
        Creds::new(&self.fingerprints, secret)
    }

    /// Requests so far as "METHOD /path".
    fn log(&self) -> Vec<String> {
        self.auth0.requests().into_iter().map(|(m, p)| format!("{m} {p}")).collect()
    }

    fn count(&self, entry: &str) -> usize {
        self.log().iter().filter(|e| *e == entry).count()
    }

    fn connection(&self) -> Value {
        self.auth0.connection_by_name(NAME).expect("the connection exists")
    }
}

/// A single-tenant connection for Auth0, tenant given as a domain.
fn spec_with(auth0: Auth0ConnectionSpec) -> AzureAdConnectionSpec {
    common::connection_spec("acme", |spec| spec.auth0 = Some(auth0))
}

fn auth0_spec() -> Auth0ConnectionSpec {
    Auth0ConnectionSpec { name: NAME.into(), display_name: Some(DISPLAY.into()), ext_profile: true, ..Default::default() }
}

fn spec() -> AzureAdConnectionSpec {
    spec_with(auth0_spec())
}

/// The error, after checking that none of its texts shows either canary.
fn checked(err: BrokerError) -> BrokerError {
    for text in [err.to_string(), format!("{err:?}")] {
        assert!(!text.contains(CANARY) && !text.contains(M2M_SECRET), "a secret leaked into {text:?}");
    }
    err
}

fn expect_err<T: std::fmt::Debug>(result: Result<T, BrokerError>) -> BrokerError {
    match result {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => checked(e),
    }
}

/// Creates the connection through a first sync; returns its id.
async fn created(env: &Env, client: &BrokerClient, spec: &AzureAdConnectionSpec, creds: &Creds) -> String {
    let outcome = client.sync(&request(spec, creds, None, None, FULL)).await.unwrap();
    assert!(outcome.wrote, "{outcome:?}");
    let id = outcome.id.expect("an id");
    assert_eq!(env.connection()["id"], id.as_str());
    id
}

#[tokio::test]
async fn first_sync_creates_a_waad_connection() {
    let env = env();
    let client = env.client();
    let creds = env.creds(CANARY);
    let outcome = client.sync(&request(&spec(), &creds, None, None, FULL)).await.unwrap();
    let id = outcome.id.clone().expect("an id");
    assert_eq!(outcome, common::created(&id));
    assert!(id.starts_with("con_"), "{id}");

    let conn = env.auth0.connection(&id).unwrap();
    assert_eq!((conn["name"].as_str(), conn["strategy"].as_str()), (Some(NAME), Some("waad")));
    assert_eq!(conn["display_name"], DISPLAY);
    let options = &conn["options"];
    assert_eq!(options["client_id"], CLIENT);
    assert_eq!(options["client_secret"], CANARY);
    assert_eq!(options["tenant_domain"], TENANT_DOMAIN);
    assert_eq!(options["domain"], TENANT_DOMAIN);
    assert_eq!(options["identity_api"], "microsoft-identity-platform-v2.0");
    assert_eq!(options["waad_protocol"], "openid-connect");
    assert_eq!((&options["use_wsfed"], &options["useCommonEndpoint"]), (&json!(false), &json!(false)));
    assert_eq!(options["userid_attribute"], "oid");
    assert_eq!((&options["ext_profile"], &options["ext_groups"], &options["basic_profile"]), (&json!(true), &json!(false), &json!(true)));
    assert!(options.get("app_id").is_none(), "no app id outside the native setup");
    assert_eq!(env.auth0.connections().len(), 1);
    assert_eq!(env.auth0.writes(), 1);
    assert_eq!(env.log(), ["POST /oauth/token", "GET /api/v2/connections", "POST /api/v2/connections"]);

    // Without a display name, the name is shown.
    let plain = spec_with(Auth0ConnectionSpec { name: "plain".into(), ..Default::default() });
    client.sync(&request(&plain, &creds, None, None, FULL)).await.unwrap();
    assert_eq!(env.auth0.connection_by_name("plain").unwrap()["display_name"], "plain");
}

#[tokio::test]
async fn steady_state_makes_no_writes() {
    let env = env();
    let client = env.client();
    let (spec, creds) = (spec(), env.creds(CANARY));
    let id = created(&env, &client, &spec, &creds).await;
    let writes = env.auth0.writes();
    let requests = env.log().len();
    for known_id in [Some(id.as_str()), None] {
        for observe_only in [FULL, OBSERVE] {
            let outcome = client.sync(&request(&spec, &creds, known_id, Some(&creds.fingerprint), observe_only)).await.unwrap();
            assert_eq!(
                outcome,
                SyncOutcome { id: Some(id.clone()), differences: vec![], wrote: false, extras: None, create_deferred: false }
            );
        }
    }
    assert_eq!(env.auth0.writes(), writes, "steady state writes nothing");
    assert!(env.log()[requests..].iter().all(|r| r.starts_with("GET ")), "{:?}", &env.log()[requests..]);
    // Found by id: one read; found by name: one list.
    assert_eq!(env.count(&format!("GET /api/v2/connections/{id}")), 2);
}

#[tokio::test]
async fn rotation_patches_once_and_carries_server_fields_back() {
    let env = env();
    let client = env.client();
    let spec = spec();
    let (old, new) = (env.creds(CANARY), env.creds("new8Q~rotated-secret-value-0123456789ab"));
    let id = created(&env, &client, &spec, &old).await;
    let before = env.connection();
    assert!(before["options"]["thumbprints"].as_array().is_some_and(|t| !t.is_empty()), "the emulator set thumbprints");
    assert_eq!(before["options"]["app_domain"], DOMAIN);
    let writes = env.auth0.writes();

    let outcome = client.sync(&request(&spec, &new, Some(&id), Some(&old.fingerprint), FULL)).await.unwrap();
    assert_eq!(
        outcome,
        SyncOutcome {
            id: Some(id.clone()),
            differences: vec!["options.client_secret".into()],
            wrote: true,
            extras: None,
            create_deferred: false
        }
    );
    assert_eq!(env.auth0.writes(), writes + 1);
    assert_eq!(env.count(&format!("PATCH /api/v2/connections/{id}")), 1, "exactly one PATCH");

    let after = env.connection();
    assert_eq!(after["options"]["client_secret"], new.secret.expose());
    assert_eq!(after["options"]["thumbprints"], before["options"]["thumbprints"], "server-set thumbprints survive the replace");
    assert_eq!(after["options"]["app_domain"], before["options"]["app_domain"]);
    assert_eq!(after["display_name"], DISPLAY, "display_name is resent, not reset to the name");
    for key in ["client_id", "tenant_domain", "domain", "identity_api", "userid_attribute", "ext_profile"] {
        assert_eq!(after["options"][key], before["options"][key], "{key}");
    }

    // Settled: the next sync changes nothing.
    let outcome = client.sync(&request(&spec, &new, Some(&id), Some(&new.fingerprint), FULL)).await.unwrap();
    assert_eq!((outcome.differences.len(), outcome.wrote), (0, false), "{outcome:?}");
    assert_eq!(env.auth0.writes(), writes + 1);
}

#[tokio::test]
async fn existing_connection_is_adopted_by_name() {
    let env = env();
    let client = env.client();
    let id = env.auth0.insert_connection(json!({
        "name": NAME,
        "strategy": "waad",
        "display_name": "Old name",
        "options": {"client_id": CLIENT, "client_secret": "made-by-hand", "tenantId": TENANT, "thumbprints": ["abc"], "granted": true},
    }));
    let creds = env.creds(CANARY);
    // Made by hand: refused without spec.adopt, before any write.
    let refused = client.sync(&request(&spec(), &creds, None, None, FULL)).await.unwrap_err();
    assert_eq!(refused.reason(), Reason::BrokerConflict, "{refused}");
    assert_eq!(env.auth0.writes(), 0);
    let outcome = client.sync(&request_as(&spec(), &creds, None, None, FULL, ADOPTING)).await.unwrap();
    assert_eq!(outcome.id.as_deref(), Some(id.as_str()), "found by name");
    assert!(outcome.wrote && outcome.differences.contains(&"options.client_secret".to_owned()), "{outcome:?}");
    assert!(outcome.differences.contains(&"metadata.idp-bridge-owner".to_owned()), "marked: {outcome:?}");
    assert!(outcome.differences.contains(&"display_name".to_owned()), "{outcome:?}");
    assert_eq!(env.auth0.connections().len(), 1, "not duplicated");
    assert_eq!(env.count("POST /api/v2/connections"), 0);
    let conn = env.connection();
    assert_eq!((conn["display_name"].as_str(), conn["options"]["client_secret"].as_str()), (Some(DISPLAY), Some(CANARY)));
    assert_eq!((&conn["options"]["tenantId"], &conn["options"]["thumbprints"]), (&json!(TENANT), &json!(["abc"])));
    assert_eq!(conn["options"]["granted"], true);

    // A stale recorded id falls back to the name as well.
    let outcome = client.sync(&request(&spec(), &creds, Some("con_gone0000000000"), Some(&creds.fingerprint), FULL)).await.unwrap();
    assert_eq!((outcome.id.as_deref(), outcome.wrote), (Some(id.as_str()), false));
}

#[tokio::test]
async fn a_recorded_id_of_someone_elses_connection_is_ignored() {
    let env = env();
    let client = env.client();
    let foreign = env
        .auth0
        .insert_connection(json!({"name": "payroll", "strategy": "waad", "options": {"client_id": "x", "client_secret": "theirs"}}));
    let creds = env.creds(CANARY);
    // Status names another connection's id (stale or tampered): it is neither updated nor deleted.
    let outcome = client.sync(&request(&spec(), &creds, Some(&foreign), None, FULL)).await.unwrap();
    assert_ne!(outcome.id.as_deref(), Some(foreign.as_str()));
    assert_eq!(env.auth0.connection(&foreign).unwrap()["options"]["client_secret"], "theirs");
    client.delete(&deletion(&spec(), Some(&foreign))).await.unwrap();
    assert!(env.auth0.connection(&foreign).is_some(), "someone else's connection survives");
    assert!(env.auth0.connection_by_name(NAME).is_none(), "ours is deleted");
    // A malformed recorded id falls back to the name too.
    client.sync(&request(&spec(), &creds, Some("../../clients"), None, FULL)).await.unwrap();
    assert!(env.auth0.connection_by_name(NAME).is_some());
}

#[tokio::test]
async fn same_named_connection_of_another_strategy_is_refused() {
    let env = env();
    let client = env.client();
    let other = env.auth0.insert_connection(json!({"name": NAME, "strategy": "google-oauth2", "options": {}}));
    let creds = env.creds(CANARY);
    for observe_only in [FULL, OBSERVE] {
        let err = expect_err(client.sync(&request(&spec(), &creds, None, None, observe_only)).await);
        assert!(matches!(err, BrokerError::Rejected(ref m) if m.contains("google-oauth2")), "{err:?}");
        assert_eq!(err.reason(), Reason::BrokerRejected);
        assert!(!err.is_transient());
    }
    assert_eq!(env.auth0.writes(), 0);
    // Deleting leaves it alone.
    client.delete(&deletion(&spec(), None)).await.unwrap();
    assert!(env.auth0.connection(&other).is_some());
    assert_eq!(env.auth0.writes(), 0);
    assert_eq!(env.count(&format!("DELETE /api/v2/connections/{other}")), 0);
}

#[tokio::test]
async fn drift_is_corrected_in_full_mode_and_only_reported_when_observing() {
    let env = env();
    let client = env.client();
    let (spec, creds) = (spec(), env.creds(CANARY));
    let id = created(&env, &client, &spec, &creds).await;
    env.auth0.edit_connection(&id, |c| {
        c["display_name"] = json!("Edited in the dashboard");
        c["options"]["ext_groups"] = json!(true);
        c["options"]["client_secret"] = json!("typed-into-the-dashboard");
        c["options"]["domain_aliases"] = json!(["evil.example"]);
        c["options"]["icon_url"] = json!("https://example.com/icon.png");
    });
    let drifted = env.connection();
    let writes = env.auth0.writes();
    let expected = ["display_name", "options.client_secret", "options.ext_groups", "options.domain_aliases"];

    let outcome = client.sync(&request(&spec, &creds, Some(&id), Some(&creds.fingerprint), OBSERVE)).await.unwrap();
    assert!(!outcome.wrote);
    let mut differences = outcome.differences.clone();
    differences.sort();
    let mut sorted = expected.map(String::from).to_vec();
    sorted.sort();
    assert_eq!(differences, sorted);
    let shown = format!("{outcome:?}");
    for value in ["typed-into-the-dashboard", CANARY, "evil.example", "Edited in the dashboard"] {
        assert!(!shown.contains(value), "differences name fields, never values: {shown}");
    }
    assert_eq!(env.auth0.writes(), writes, "observing writes nothing");
    assert_eq!(env.connection(), drifted);

    let outcome = client.sync(&request(&spec, &creds, Some(&id), Some(&creds.fingerprint), FULL)).await.unwrap();
    assert!(outcome.wrote);
    assert_eq!(env.auth0.writes(), writes + 1);
    let fixed = env.connection();
    assert_eq!(fixed["display_name"], DISPLAY);
    assert_eq!((&fixed["options"]["ext_groups"], &fixed["options"]["domain_aliases"]), (&json!(false), &json!([])));
    assert_eq!(fixed["options"]["client_secret"], CANARY);
    assert_eq!(fixed["options"]["icon_url"], "https://example.com/icon.png", "unmanaged options are left as set");

    let outcome = client.sync(&request(&spec, &creds, Some(&id), Some(&creds.fingerprint), OBSERVE)).await.unwrap();
    assert!(outcome.differences.is_empty(), "{outcome:?}");
}

#[tokio::test]
async fn listed_clients_are_enabled_through_the_sub_resource() {
    let env = env();
    let client = env.client();
    let mut wanted: Vec<String> = (0..120).map(|i| format!("app-{i:03}")).collect();
    wanted.push("app-000".into());
    let spec = spec_with(Auth0ConnectionSpec { enabled_clients: wanted.clone(), ..auth0_spec() });
    let creds = env.creds(CANARY);
    let id = created(&env, &client, &spec, &creds).await;
    let clients_path = format!("/api/v2/connections/{id}/clients");
    let expected: BTreeSet<String> = wanted.iter().cloned().collect();
    assert_eq!(env.auth0.enabled_clients(&id), expected);
    assert_eq!(env.count(&format!("PATCH {clients_path}")), 3, "120 clients, at most 50 per PATCH");
    assert!(env.connection().get("enabled_clients").is_some_and(|c| c.as_array().is_some_and(|a| a.len() == 120)));

    // Steady state: read (two pages), no PATCH.
    let writes = env.auth0.writes();
    let outcome = client.sync(&request(&spec, &creds, Some(&id), Some(&creds.fingerprint), FULL)).await.unwrap();
    assert_eq!((outcome.differences.len(), outcome.wrote), (0, false), "{outcome:?}");
    assert_eq!(env.auth0.writes(), writes);

    // Clients disabled in the dashboard are re-enabled; clients enabled elsewhere are left alone.
    env.auth0.edit_connection(&id, |c| {
        let list = c["enabled_clients"].as_array_mut().unwrap();
        list.retain(|v| !["app-005", "app-110"].contains(&v.as_str().unwrap()));
        list.push(json!("someone-elses-app"));
    });
    let outcome = client.sync(&request(&spec, &creds, Some(&id), Some(&creds.fingerprint), OBSERVE)).await.unwrap();
    assert_eq!(outcome.differences, ["enabled_clients"]);
    assert!(!outcome.wrote);
    assert_eq!(env.auth0.writes(), writes);
    let outcome = client.sync(&request(&spec, &creds, Some(&id), Some(&creds.fingerprint), FULL)).await.unwrap();
    assert_eq!((outcome.differences.as_slice(), outcome.wrote), (["enabled_clients".to_owned()].as_slice(), true));
    assert_eq!(env.auth0.writes(), writes + 1, "one PATCH for the two missing clients");
    let mut now_expected = expected.clone();
    now_expected.insert("someone-elses-app".into());
    assert_eq!(env.auth0.enabled_clients(&id), now_expected);
}

#[tokio::test]
async fn native_setup_sends_the_app_id_uri() {
    let env = env();
    let client = env.client();
    let mut spec = spec_with(Auth0ConnectionSpec {
        app_id_uri: Some("api://contoso-web".into()),
        identity_api: Auth0IdentityApi::AzureActiveDirectoryV1,
        ..auth0_spec()
    });
    spec.azure.tenant = TENANT.into();
    spec.validation.mode = ValidationMode::None;
    // With validation None, the native client's "secret" was never checked against Azure.
    let creds = env.creds("native-client-value");
    let id = created(&env, &client, &spec, &creds).await;
    let options = env.auth0.connection(&id).unwrap()["options"].clone();
    assert_eq!(options["app_id"], "api://contoso-web");
    assert_eq!(options["identity_api"], "azure-active-directory-v1.0");
    assert_eq!(options["tenant_domain"], TENANT);
    assert!(options.get("domain").is_none(), "a GUID tenant is not a domain");
    let outcome = client.sync(&request(&spec, &creds, Some(&id), Some(&creds.fingerprint), FULL)).await.unwrap();
    assert!(!outcome.wrote && outcome.differences.is_empty(), "{outcome:?}");

    // Leaving the native setup removes app_id again.
    let plain = spec_with(auth0_spec());
    let outcome = client.sync(&request(&plain, &creds, Some(&id), Some(&creds.fingerprint), FULL)).await.unwrap();
    assert!(outcome.differences.contains(&"options.app_id".to_owned()), "{outcome:?}");
    assert!(env.auth0.connection(&id).unwrap()["options"].get("app_id").is_none());
}

#[tokio::test]
async fn unsupported_audiences_fail_before_any_request() {
    let env = env();
    let client = env.client();
    let creds = env.creds(CANARY);
    let mut consumers = spec();
    consumers.azure.sign_in_audience = SignInAudience::Consumers;
    let mut common_with_oid = spec();
    common_with_oid.azure.sign_in_audience = SignInAudience::Common;
    let mut no_block = spec();
    no_block.auth0 = None;
    for spec in [&consumers, &common_with_oid, &no_block] {
        for observe_only in [FULL, OBSERVE] {
            let err = expect_err(common::sync_spec(&client, spec, &creds, observe_only).await);
            assert!(matches!(err, BrokerError::Unsupported(_)), "{err:?}");
            assert_eq!(err.reason(), Reason::UnsupportedSetting);
            assert!(!err.is_transient() && err.retry_after().is_none());
        }
    }
    assert!(env.auth0.requests().is_empty(), "{:?}", env.log());

    // Multi-tenant with sub is expressible: the common endpoint.
    let mut organizations = spec_with(Auth0ConnectionSpec { user_id_attribute: Auth0UserIdAttribute::Sub, ..auth0_spec() });
    organizations.azure.sign_in_audience = SignInAudience::Organizations;
    client.sync(&request(&organizations, &creds, None, None, FULL)).await.unwrap();
    assert_eq!(env.connection()["options"]["useCommonEndpoint"], true);
    assert_eq!(env.connection()["options"]["userid_attribute"], "sub");
}

#[tokio::test]
async fn one_token_serves_many_syncs() {
    let env = env();
    let client = env.client();
    let (spec, creds) = (spec(), env.creds(CANARY));
    client.check().await.unwrap();
    let id = created(&env, &client, &spec, &creds).await;
    for _ in 0..10 {
        client.sync(&request(&spec, &creds, Some(&id), Some(&creds.fingerprint), FULL)).await.unwrap();
    }
    client.check().await.unwrap();
    assert_eq!(env.auth0.token_requests(), 1);

    // A token the tenant no longer accepts is replaced once, and the call goes through.
    env.auth0.revoke_tokens();
    client.sync(&request(&spec, &creds, Some(&id), Some(&creds.fingerprint), FULL)).await.unwrap();
    client.sync(&request(&spec, &creds, Some(&id), Some(&creds.fingerprint), FULL)).await.unwrap();
    assert_eq!(env.auth0.token_requests(), 2);
}

#[tokio::test]
async fn short_lived_tokens_are_reused_too() {
    let env = env();
    // Shorter than the client's early-refresh margin, yet minutes long.
    env.auth0.set_token_ttl(120);
    let client = env.client();
    let (spec, creds) = (spec(), env.creds(CANARY));
    let id = created(&env, &client, &spec, &creds).await;
    for _ in 0..5 {
        client.sync(&request(&spec, &creds, Some(&id), Some(&creds.fingerprint), FULL)).await.unwrap();
    }
    assert_eq!(env.auth0.token_requests(), 1, "{:?}", env.log());
}

#[tokio::test]
async fn wrong_management_credentials_are_auth_failures() {
    let env = env();
    let creds = env.creds(CANARY);
    for client in [env.client_as(M2M, "wrong-secret"), env.client_as("unknown-client", M2M_SECRET)] {
        let err = expect_err(client.check().await);
        assert!(matches!(err, BrokerError::Auth(_)), "{err:?}");
        assert_eq!(err.reason(), Reason::BrokerAuthFailed);
        assert!(!err.is_transient());
        let err = expect_err(client.sync(&request(&spec(), &creds, None, None, FULL)).await);
        assert_eq!(err.reason(), Reason::BrokerAuthFailed, "{err}");
        let err = expect_err(client.delete(&deletion(&spec(), Some("con_0000000000000000"))).await);
        assert_eq!(err.reason(), Reason::BrokerAuthFailed, "{err}");
    }
    assert!(env.log().iter().all(|r| r == "POST /oauth/token"), "nothing but token requests: {:?}", env.log());
    assert_eq!(env.auth0.writes(), 0);
}

#[tokio::test]
async fn missing_scope_is_an_auth_failure() {
    let env = env();
    env.auth0.add_m2m_client("read-only", "read-only-secret", &["read:connections"]);
    let client = env.client_as("read-only", "read-only-secret");
    client.check().await.unwrap();
    let creds = env.creds(CANARY);
    let err = expect_err(client.sync(&request(&spec(), &creds, None, None, FULL)).await);
    assert!(matches!(err, BrokerError::Auth(ref m) if m.contains("create:connections")), "{err:?}");
    assert_eq!(err.reason(), Reason::BrokerAuthFailed);
    assert!(!err.is_transient());
    assert!(env.auth0.connections().is_empty());
    // Observing needs only read access.
    let outcome = client.sync(&request(&spec(), &creds, None, None, OBSERVE)).await.unwrap();
    assert_eq!(
        outcome,
        SyncOutcome { id: None, differences: vec!["connection (missing)".into()], wrote: false, extras: None, create_deferred: false }
    );
}

/// Auth0's connection-options scopes (since May 2025), which `ALL_SCOPES` leaves out.
const READ_OPTIONS: &str = "read:connections_options";
const UPDATE_OPTIONS: &str = "update:connections_options";

/// A client granted exactly `ALL_SCOPES` plus `extra`.
fn client_granted(env: &Env, client_id: &str, extra: &[&str]) -> BrokerClient {
    let secret = format!("{client_id}-secret");
    env.auth0.add_m2m_client(client_id, &secret, &ALL_SCOPES);
    let scopes: Vec<&str> = ALL_SCOPES.iter().chain(extra).copied().collect();
    env.auth0.set_m2m_scopes(client_id, &scopes);
    env.client_as(client_id, &secret)
}

#[tokio::test]
async fn a_connection_read_without_options_is_never_written() {
    let env = env();
    let creds = env.creds(CANARY);
    let id = created(&env, &env.client(), &spec(), &creds).await;
    let before = env.connection();
    assert!(before["options"]["thumbprints"].is_array(), "server-set options to keep: {before}");
    // Without read:connections_options the read has no options; with update:connections_options
    // a merge onto nothing would go through and wipe thumbprints, tenantId and the rest.
    for (client_id, extra) in [("no-options", &[][..]), ("update-options-only", &[UPDATE_OPTIONS][..])] {
        let client = client_granted(&env, client_id, extra);
        let rotated = env.creds("a-rotated-secret-value");
        for observe_only in [FULL, OBSERVE] {
            let err = expect_err(client.sync(&request(&spec(), &rotated, Some(&id), Some(&creds.fingerprint), observe_only)).await);
            assert!(matches!(err, BrokerError::PermissionMissing(ref m) if m.contains(READ_OPTIONS)), "{client_id}: {err:?}");
            assert_eq!(err.reason(), Reason::BrokerPermissionMissing);
            assert!(!err.is_transient());
        }
    }
    assert_eq!(env.count(&format!("PATCH /api/v2/connections/{id}")), 0, "{:?}", env.log());
    assert_eq!(env.connection(), before, "the connection is untouched");
}

#[tokio::test]
async fn an_options_update_without_its_scope_is_a_missing_permission() {
    let env = env();
    let creds = env.creds(CANARY);
    let id = created(&env, &env.client(), &spec(), &creds).await;
    let before = env.connection();
    let client = client_granted(&env, "read-options-only", &[READ_OPTIONS]);
    // Reading and comparing works; in sync, nothing to write.
    let outcome = client.sync(&request(&spec(), &creds, Some(&id), Some(&creds.fingerprint), FULL)).await.unwrap();
    assert!(!outcome.wrote && outcome.differences.is_empty(), "{outcome:?}");
    // A rotated secret must be written, and Auth0 refuses the options without the update scope.
    let rotated = env.creds("a-rotated-secret-value");
    let err = expect_err(client.sync(&request(&spec(), &rotated, Some(&id), Some(&creds.fingerprint), FULL)).await);
    assert!(matches!(err, BrokerError::PermissionMissing(ref m) if m.contains(UPDATE_OPTIONS)), "{err:?}");
    assert_eq!(err.reason(), Reason::BrokerPermissionMissing);
    assert!(!err.is_transient());
    assert_eq!(env.connection(), before);
}

#[tokio::test]
async fn creating_a_connection_needs_no_options_scope() {
    let env = env();
    let client = client_granted(&env, "no-options", &[]);
    // Create needs only create:connections, options included (the operator reads only the id of
    // the answer, which shows no options).
    let outcome = client.sync(&request(&spec(), &env.creds(CANARY), None, None, FULL)).await.unwrap();
    assert!(outcome.wrote);
    let stored = env.connection();
    assert_eq!(stored["options"]["client_secret"], CANARY, "the options were stored");
    let full = env.client();
    let read = full.sync(&request(&spec(), &env.creds(CANARY), outcome.id.as_deref(), None, OBSERVE)).await.unwrap();
    assert!(read.differences.is_empty(), "a fully scoped read sees the options: {read:?}");
}

/// A tenant whose errors echo whatever they were sent (token requests and connection writes).
fn echo_router() -> Router {
    async fn token(body: Bytes) -> Response {
        let body: Value = serde_json::from_slice(&body).unwrap_or_default();
        if body["client_secret"] == "echo" {
            return Json(json!({"access_token": "t0ken", "token_type": "Bearer", "expires_in": 86400})).into_response();
        }
        let description = format!("wrong secret {}", body["client_secret"].as_str().unwrap_or_default());
        (StatusCode::UNAUTHORIZED, Json(json!({"error": "access_denied", "error_description": description}))).into_response()
    }
    async fn create(body: Bytes) -> Response {
        let text = String::from_utf8_lossy(&body).into_owned();
        let status = if text.contains("server-error") { StatusCode::INTERNAL_SERVER_ERROR } else { StatusCode::BAD_REQUEST };
        // The secret first: error text is bounded to 200 characters after it is scrubbed.
        let sent: Value = serde_json::from_slice(&body).unwrap_or_default();
        let message = format!("Payload validation error: could not accept client_secret {} in {text}", sent["options"]["client_secret"]);
        (status, Json(json!({"statusCode": status.as_u16(), "error": "Bad", "message": message, "errorCode": "invalid_body"})))
            .into_response()
    }
    Router::new().route("/oauth/token", post(token)).route("/api/v2/connections", get(|| async { Json(json!([])) }).post(create))
}

#[tokio::test]
async fn errors_never_show_a_secret() {
    // From the emulator: every kind of failure, with the canaries as the secrets in play.
    let env = env();
    let creds = env.creds(CANARY);
    let too_long = spec_with(Auth0ConnectionSpec { display_name: Some("x".repeat(200)), ..auth0_spec() });
    let mut errors = vec![
        expect_err(env.client_as(M2M, &format!("{M2M_SECRET}-x")).check().await),
        expect_err(env.client().sync(&request(&too_long, &creds, None, None, FULL)).await),
    ];
    let client = env.client();
    let id = created(&env, &client, &spec(), &creds).await;
    env.auth0.fail_next(1, 500);
    errors.push(expect_err(client.sync(&request(&spec(), &creds, Some(&id), None, FULL)).await));
    env.auth0.rate_limit_next(1, 5);
    errors.push(expect_err(client.sync(&request(&spec(), &creds, Some(&id), None, FULL)).await));
    env.auth0.shutdown();
    errors.push(expect_err(env.client().check().await));
    let reasons: Vec<Reason> = errors.iter().map(BrokerError::reason).collect();
    assert_eq!(
        reasons,
        [Reason::BrokerAuthFailed, Reason::BrokerRejected, Reason::BrokerUnreachable, Reason::BrokerRateLimited, Reason::BrokerUnreachable]
    );

    // From a tenant that echoes what it was sent: the values are scrubbed, the message kept.
    install_crypto_provider();
    let ca = TestCa::new();
    let ca_file = NamedTempFile::new().unwrap();
    ca.write_pem(ca_file.path()).unwrap();
    let server = serve_tls(echo_router(), &ca).await.unwrap();
    let mut overrides = EndpointOverrides::default();
    overrides.insert(DOMAIN, server.base_url());
    let up = Upstream::new(overrides, Some(ca_file.path()), Duration::from_secs(5)).unwrap();

    let err = expect_err(BrokerClient::Auth0(Auth0Client::new(up.clone(), DOMAIN, M2M, SecretValue::new(M2M_SECRET), None)).check().await);
    assert!(matches!(err, BrokerError::Auth(ref m) if m.contains("wrong secret [redacted]")), "{err:?}");

    let client = BrokerClient::Auth0(Auth0Client::new(up, DOMAIN, M2M, SecretValue::new("echo"), None));
    let err = expect_err(client.sync(&request(&spec(), &creds, None, None, FULL)).await);
    assert!(matches!(err, BrokerError::Rejected(ref m) if m.contains("[redacted]") && m.contains("invalid_body")), "{err:?}");
    let loud = spec_with(Auth0ConnectionSpec { display_name: Some("server-error".into()), ..auth0_spec() });
    let err = expect_err(client.sync(&request(&loud, &creds, None, None, FULL)).await);
    assert!(matches!(err, BrokerError::Server { status: 500, ref message } if message.contains("[redacted]")), "{err:?}");
}
