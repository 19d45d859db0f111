//! Adapter tests of the Logto broker client (`LogtoClient::{sync, delete, check}`, with the
//! planning in `broker::logto::plan`) over real HTTPS against the Logto Management API emulator.
//! The endpoint carries a port (`https://auth.example.com:8443`), which the endpoint override maps
//! to the emulator. What Logto holds is read back through the emulator's state accessors and
//! request log.
//!
//! Answers the emulator never gives (errors that echo what they were sent, a create that loses a
//! race) come from a small stub server on the same test CA.

use crate::common::{self, CLIENT, Creds, TENANT, TENANT_DOMAIN, deletion, request};

use std::time::Duration;

use axum::{
    Json, Router,
    body::Bytes,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use idp_bridge::{
    broker::{
        BrokerClient, BrokerError, SyncOutcome,
        logto::{self, LogtoClient},
    },
    crd::{
        broker::{ClientCredentialsSecretRef, LogtoBrokerSpec},
        conditions::Reason,
        connection::{AzureAdConnectionSpec, AzureCloud, LogtoConnectionSpec, LogtoPrompt, SignInAudience, ValidationMode},
    },
    secret::{Fingerprinter, SecretValue},
    upstream::{EndpointOverrides, Upstream},
};
use idp_bridge_devenv::{
    logto::LogtoEmulator,
    tls::{TestCa, install_crypto_provider, serve_tls},
};
use serde_json::{Value, json};
use tempfile::NamedTempFile;

/// The tenant's endpoint as the broker spec names it: a host with a port.
const ENDPOINT: &str = "https://auth.example.com:8443";
const HOST: &str = "auth.example.com:8443";
const RESOURCE: &str = "https://default.logto.app/api";
const OTHER_CLIENT: &str = "99999999-8888-7777-6666-555555555555";
const FACTORY: &str = "azuread-universal";
const LIST: &str = "GET /api/connectors?target=azuread";
/// The Entra client secret pushed to Logto; no error text may ever contain it.
const CANARY: &str = "cAn8Q~canary-connector-secret-must-not-leak";
const ROTATED: &str = "new8Q~rotated-secret-value-0123456789ab";
const M2M: &str = "m2m-app";
/// The operator's own Management API secret; no error text may contain it either.
const M2M_SECRET: &str = "m2m-canary-secret-must-not-leak";
const OBSERVE: bool = true;
const FULL: bool = false;

struct Env {
    logto: LogtoEmulator,
    up: Upstream,
    _ca_file: NamedTempFile,
    fingerprints: Fingerprinter,
}

/// An emulated tenant with one M2M app granted `all`.
fn env() -> Env {
    install_crypto_provider();
    let ca = TestCa::new();
    let ca_file = NamedTempFile::new().unwrap();
    ca.write_pem(ca_file.path()).unwrap();
    let logto = LogtoEmulator::start(&ca, RESOURCE).unwrap();
    logto.add_m2m_app(M2M, M2M_SECRET);
    let up = upstream_to(logto.base_url(), &ca_file);
    Env { logto, up, _ca_file: ca_file, fingerprints: Fingerprinter::new(b"test-key".to_vec()) }
}

fn upstream_to(base: url::Url, ca_file: &NamedTempFile) -> Upstream {
    let mut overrides = EndpointOverrides::default();
    overrides.insert(HOST, base);
    Upstream::new(overrides, Some(ca_file.path()), Duration::from_secs(5)).unwrap()
}

fn broker_spec(resource: &str) -> LogtoBrokerSpec {
    LogtoBrokerSpec {
        endpoint: ENDPOINT.into(),
        resource: resource.into(),
        credentials_secret_ref: ClientCredentialsSecretRef {
            name: "logto-m2m".into(),
            client_id_key: "client-id".into(),
            client_secret_key: "client-secret".into(),
        },
    }
}

impl Env {
    /// The operator's client for the tenant, with the M2M credentials given.
    fn client_as(&self, app_id: &str, secret: &str) -> BrokerClient {
        BrokerClient::Logto(LogtoClient::new(self.up.clone(), &broker_spec(RESOURCE), app_id, SecretValue::new(secret), None))
    }

    fn client(&self) -> BrokerClient {
        self.client_as(M2M, M2M_SECRET)
    }

    fn creds(&self, secret: &str) -> Creds {
        Creds::new(&self.fingerprints, secret)
    }

    /// Requests so far as "METHOD /path?query".
    fn log(&self) -> Vec<String> {
        self.logto.requests().into_iter().map(|(m, p)| format!("{m} {p}")).collect()
    }

    fn count(&self, entry: &str) -> usize {
        self.log().iter().filter(|e| *e == entry).count()
    }

    fn posts(&self) -> usize {
        self.count("POST /api/connectors")
    }

    /// The one Microsoft connector row with our client id.
    fn ours(&self) -> Value {
        let mut ours: Vec<Value> =
            self.logto.connectors().into_iter().filter(|c| c["connectorId"] == FACTORY && c["config"]["clientId"] == CLIENT).collect();
        assert_eq!(ours.len(), 1, "exactly one connector of ours: {ours:?}");
        ours.remove(0)
    }
}

/// A single-tenant connection for Logto, tenant given as a domain (resolved to `TENANT`).
fn spec_with(logto: LogtoConnectionSpec) -> AzureAdConnectionSpec {
    common::connection_spec("logto", |spec| spec.logto = Some(logto))
}

fn spec() -> AzureAdConnectionSpec {
    spec_with(LogtoConnectionSpec::default())
}

fn fixed(id: &str) -> AzureAdConnectionSpec {
    spec_with(LogtoConnectionSpec { connector_id: Some(id.into()), ..Default::default() })
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

/// Creates the connector through a first sync; returns its id.
async fn created(env: &Env, client: &BrokerClient, spec: &AzureAdConnectionSpec, creds: &Creds) -> String {
    let outcome = client.sync(&request(spec, creds, None, None, FULL)).await.unwrap();
    assert!(outcome.wrote, "{outcome:?}");
    let id = outcome.id.expect("an id");
    assert_eq!(env.ours()["id"], id.as_str());
    id
}

/// Someone else's Microsoft connector, as if made in the Console for another application.
fn foreign_row() -> Value {
    json!({
        "connectorId": FACTORY,
        "config": {"clientId": OTHER_CLIENT, "clientSecret": "theirs", "tenantId": "common", "cloudInstance": "https://login.microsoftonline.com"},
    })
}

#[tokio::test]
async fn first_sync_creates_the_connector() {
    let env = env();
    let client = env.client();
    let creds = env.creds(CANARY);
    let outcome = client.sync(&request(&spec(), &creds, None, None, FULL)).await.unwrap();
    let id = outcome.id.clone().expect("an id");
    assert_eq!(
        outcome,
        SyncOutcome {
            id: Some(id.clone()),
            differences: vec!["connector (created)".into()],
            wrote: true,
            extras: None,
            create_deferred: false
        }
    );
    assert!(id.len() == 21 && id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()), "Logto picked the id: {id}");

    let row = env.logto.connector(&id).unwrap();
    assert_eq!(row["connectorId"], FACTORY);
    assert_eq!(
        row["config"],
        json!({"clientId": CLIENT, "clientSecret": CANARY, "tenantId": TENANT, "cloudInstance": "https://login.microsoftonline.com"}),
        "the complete config, no empty prompts or scopes"
    );
    assert_eq!(row["metadata"], json!({}), "metadata is never sent");
    assert_eq!(env.logto.connectors().len(), 1);
    assert_eq!(env.logto.writes(), 1);
    assert_eq!(env.log(), ["POST /oidc/token", LIST, "POST /api/connectors"]);
    assert_eq!(logto::plan::callback_url(ENDPOINT, &id), format!("{ENDPOINT}/callback/{id}"));
}

#[tokio::test]
async fn a_fixed_connector_id_fixes_the_callback_url() {
    let env = env();
    let client = env.client();
    let creds = env.creds(CANARY);
    let spec = fixed("contosoentra");
    let outcome = client.sync(&request(&spec, &creds, None, None, FULL)).await.unwrap();
    assert_eq!(outcome.id.as_deref(), Some("contosoentra"));
    assert_eq!(env.ours()["id"], "contosoentra");
    assert_eq!(logto::plan::callback_url(ENDPOINT, "contosoentra"), "https://auth.example.com:8443/callback/contosoentra");
    // Looked for where it must be, checked that no other Microsoft connector is there, created it.
    assert_eq!(env.log(), ["POST /oidc/token", "GET /api/connectors/contosoentra", LIST, "POST /api/connectors"]);

    // From then on one read at the fixed id is all a sync needs, recorded id or not.
    let seen = env.log().len();
    for known_id in [None, Some("contosoentra"), Some("stale0000000000000000")] {
        let outcome = client.sync(&request(&spec, &creds, known_id, Some(&creds.fingerprint), FULL)).await.unwrap();
        assert_eq!(
            outcome,
            SyncOutcome { id: Some("contosoentra".into()), differences: vec![], wrote: false, extras: None, create_deferred: false }
        );
    }
    assert_eq!(env.log()[seen..], ["GET /api/connectors/contosoentra"; 3]);
}

#[tokio::test]
async fn config_derives_cloud_instance_and_tenant_id() {
    let env = env();
    let client = env.client();
    let creds = env.creds(CANARY);
    let id = created(&env, &client, &spec(), &creds).await;
    let cases = [
        (AzureCloud::AzurePublic, SignInAudience::SingleTenant, "https://login.microsoftonline.com", TENANT),
        (AzureCloud::AzureUSGovernment, SignInAudience::SingleTenant, "https://login.microsoftonline.us", TENANT),
        (AzureCloud::AzureChina, SignInAudience::Organizations, "https://login.partner.microsoftonline.cn", "organizations"),
        (AzureCloud::AzurePublic, SignInAudience::Common, "https://login.microsoftonline.com", "common"),
        (AzureCloud::AzurePublic, SignInAudience::Consumers, "https://login.microsoftonline.com", "consumers"),
    ];
    for (cloud, audience, instance, tenant_id) in cases {
        let mut spec = spec();
        spec.azure.cloud = cloud;
        spec.azure.sign_in_audience = audience;
        client.sync(&request(&spec, &creds, Some(&id), Some(&creds.fingerprint), FULL)).await.unwrap();
        let config = env.logto.connector(&id).unwrap()["config"].clone();
        assert_eq!(
            (config["cloudInstance"].as_str(), config["tenantId"].as_str()),
            (Some(instance), Some(tenant_id)),
            "{cloud:?} {audience:?}"
        );
    }

    // Without a resolved tenant GUID (validation None), the tenant as written.
    let mut unresolved = spec();
    unresolved.validation.mode = ValidationMode::None;
    client.sync(&request(&unresolved, &creds, Some(&id), Some(&creds.fingerprint), FULL)).await.unwrap();
    assert_eq!(env.logto.connector(&id).unwrap()["config"]["tenantId"], TENANT_DOMAIN);

    // Prompts and scopes are sent when set, and removed again when the spec drops them.
    let extras = spec_with(LogtoConnectionSpec {
        prompts: vec![LogtoPrompt::SelectAccount, LogtoPrompt::Consent],
        scopes: Some("Mail.Read offline_access".into()),
        ..Default::default()
    });
    let outcome = client.sync(&request(&extras, &creds, Some(&id), Some(&creds.fingerprint), FULL)).await.unwrap();
    assert_eq!(outcome.differences, ["config.tenantId", "config.prompts", "config.scopes"]);
    let config = env.logto.connector(&id).unwrap()["config"].clone();
    assert_eq!((&config["prompts"], &config["scopes"]), (&json!(["select_account", "consent"]), &json!("Mail.Read offline_access")));
    let outcome = client.sync(&request(&extras, &creds, Some(&id), Some(&creds.fingerprint), FULL)).await.unwrap();
    assert!(!outcome.wrote && outcome.differences.is_empty(), "{outcome:?}");
    client.sync(&request(&spec(), &creds, Some(&id), Some(&creds.fingerprint), FULL)).await.unwrap();
    let config = env.logto.connector(&id).unwrap()["config"].clone();
    assert!(config.get("prompts").is_none() && config.get("scopes").is_none(), "{config}");
    assert_eq!(env.posts(), 1, "every change was an update");
}

#[tokio::test]
async fn steady_state_makes_no_writes() {
    let env = env();
    let client = env.client();
    let spec = spec_with(LogtoConnectionSpec { prompts: vec![LogtoPrompt::Login], ..Default::default() });
    let creds = env.creds(CANARY);
    let id = created(&env, &client, &spec, &creds).await;
    let writes = env.logto.writes();
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
    assert_eq!(env.logto.writes(), writes, "steady state writes nothing");
    // Found by recorded id: one read; without it: one list. The token is reused throughout.
    let expected = [format!("GET /api/connectors/{id}"), format!("GET /api/connectors/{id}"), LIST.into(), LIST.into()];
    assert_eq!(env.log()[seen..], expected);
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
    assert_eq!(env.logto.token_requests(), 1);

    // A token Logto no longer accepts is replaced once, and the call goes through.
    env.logto.revoke_tokens();
    client.sync(&request(&spec, &creds, Some(&id), Some(&creds.fingerprint), FULL)).await.unwrap();
    client.sync(&request(&spec, &creds, Some(&id), Some(&creds.fingerprint), FULL)).await.unwrap();
    assert_eq!(env.logto.token_requests(), 2);
}

#[tokio::test]
async fn short_lived_tokens_are_reused_too() {
    let env = env();
    // Shorter than the client's early-refresh margin, yet minutes long.
    env.logto.set_token_ttl(120);
    let client = env.client();
    let (spec, creds) = (spec(), env.creds(CANARY));
    let id = created(&env, &client, &spec, &creds).await;
    for _ in 0..5 {
        client.sync(&request(&spec, &creds, Some(&id), Some(&creds.fingerprint), FULL)).await.unwrap();
    }
    assert_eq!(env.logto.token_requests(), 1, "{:?}", env.log());
}

#[tokio::test]
async fn rotation_is_one_patch_with_the_complete_config() {
    let env = env();
    let client = env.client();
    let spec = spec_with(LogtoConnectionSpec { prompts: vec![LogtoPrompt::Login], scopes: Some("Mail.Read".into()), ..Default::default() });
    let (old, new) = (env.creds(CANARY), env.creds(ROTATED));
    let id = created(&env, &client, &spec, &old).await;
    let before = env.ours();
    let writes = env.logto.writes();

    let outcome = client.sync(&request(&spec, &new, Some(&id), Some(&old.fingerprint), FULL)).await.unwrap();
    assert_eq!(
        outcome,
        SyncOutcome {
            id: Some(id.clone()),
            differences: vec!["config.clientSecret".into()],
            wrote: true,
            extras: None,
            create_deferred: false
        }
    );
    assert_eq!(env.logto.writes(), writes + 1);
    assert_eq!(env.count(&format!("PATCH /api/connectors/{id}")), 1, "exactly one PATCH");

    // Logto replaced config with what was sent and validated it against the full guard: every
    // field is there, so nothing was lost.
    let mut expected = before["config"].clone();
    expected["clientSecret"] = json!(ROTATED);
    assert_eq!(env.ours()["config"], expected);
    assert_eq!(env.ours()["id"], id.as_str());

    // Settled: the next sync changes nothing.
    let outcome = client.sync(&request(&spec, &new, Some(&id), Some(&new.fingerprint), FULL)).await.unwrap();
    assert_eq!((outcome.differences.len(), outcome.wrote), (0, false), "{outcome:?}");
    assert_eq!(env.logto.writes(), writes + 1);
}

#[tokio::test]
async fn drift_is_corrected_in_full_mode_and_only_reported_when_observing() {
    let env = env();
    let client = env.client();
    let (spec, creds) = (spec(), env.creds(CANARY));
    let id = created(&env, &client, &spec, &creds).await;
    env.logto.edit_connector(&id, |c| {
        c["config"]["clientSecret"] = json!("typed-into-the-console");
        c["config"]["tenantId"] = json!("common");
        c["config"]["cloudInstance"] = json!("https://evil.example");
        c["config"]["prompts"] = json!(["none"]);
        c["config"]["futureOption"] = json!("set-in-the-console");
    });
    let drifted = env.ours();
    let writes = env.logto.writes();
    let expected = ["config.clientSecret", "config.tenantId", "config.cloudInstance", "config.prompts"];

    let outcome = client.sync(&request(&spec, &creds, Some(&id), Some(&creds.fingerprint), OBSERVE)).await.unwrap();
    assert_eq!((outcome.differences.as_slice(), outcome.wrote), (expected.map(String::from).as_slice(), false));
    let shown = format!("{outcome:?}");
    for value in ["typed-into-the-console", CANARY, "evil.example", "common", "set-in-the-console"] {
        assert!(!shown.contains(value), "differences name fields, never values: {shown}");
    }
    assert_eq!(env.logto.writes(), writes, "observing writes nothing");
    assert_eq!(env.ours(), drifted);

    let outcome = client.sync(&request(&spec, &creds, Some(&id), Some(&creds.fingerprint), FULL)).await.unwrap();
    assert!(outcome.wrote);
    assert_eq!(env.logto.writes(), writes + 1);
    let fixed = env.ours()["config"].clone();
    assert_eq!(
        fixed,
        json!({"clientId": CLIENT, "clientSecret": CANARY, "tenantId": TENANT, "cloudInstance": "https://login.microsoftonline.com",
            "futureOption": "set-in-the-console"}),
        "managed fields restored, prompts removed, an unmanaged key carried back through the replace"
    );

    let outcome = client.sync(&request(&spec, &creds, Some(&id), Some(&creds.fingerprint), OBSERVE)).await.unwrap();
    assert!(outcome.differences.is_empty(), "{outcome:?}");
}

#[tokio::test]
async fn observing_a_missing_connector_writes_nothing() {
    let env = env();
    let client = env.client();
    let creds = env.creds(CANARY);
    for spec in [spec(), fixed("contosoentra")] {
        let outcome = client.sync(&request(&spec, &creds, None, None, OBSERVE)).await.unwrap();
        assert_eq!(
            outcome,
            SyncOutcome { id: None, differences: vec!["connector (missing)".into()], wrote: false, extras: None, create_deferred: false }
        );
    }
    assert_eq!(env.logto.writes(), 0);
    assert!(env.logto.connectors().is_empty());
}

#[tokio::test]
async fn our_connector_is_adopted_after_status_is_lost() {
    let env = env();
    let client = env.client();
    let id = env.logto.insert_connector(json!({
        "connectorId": FACTORY,
        "config": {"clientId": CLIENT, "clientSecret": "made-by-hand", "tenantId": TENANT, "cloudInstance": "https://login.microsoftonline.com"},
    }));
    let creds = env.creds(CANARY);
    let outcome = client.sync(&request(&spec(), &creds, None, None, FULL)).await.unwrap();
    assert_eq!(
        outcome,
        SyncOutcome {
            id: Some(id.clone()),
            differences: vec!["config.clientSecret".into()],
            wrote: true,
            extras: None,
            create_deferred: false
        }
    );
    assert_eq!(env.logto.connectors().len(), 1, "not duplicated");
    assert_eq!(env.posts(), 0);
    assert_eq!(env.ours()["config"]["clientSecret"], CANARY);

    // A stale recorded id falls back to the list as well; so does a malformed one.
    for stale in ["gone0000000000000000a", "../../applications"] {
        let outcome = client.sync(&request(&spec(), &creds, Some(stale), Some(&creds.fingerprint), FULL)).await.unwrap();
        assert_eq!((outcome.id.as_deref(), outcome.wrote), (Some(id.as_str()), false));
    }
    assert_eq!(env.posts(), 0);
    assert!(!env.log().iter().any(|r| r.contains("..")), "a malformed id never reaches a path: {:?}", env.log());
}

#[tokio::test]
async fn another_applications_connector_is_a_conflict_without_a_create() {
    let env = env();
    let client = env.client();
    let theirs = env.logto.insert_connector(foreign_row());
    let creds = env.creds(CANARY);
    for spec in [spec(), fixed("contosoentra")] {
        for observe_only in [FULL, OBSERVE] {
            for known_id in [None, Some(theirs.as_str())] {
                let err = expect_err(client.sync(&request(&spec, &creds, known_id, None, observe_only)).await);
                let BrokerError::Conflict(ref message) = err else { panic!("{err:?}") };
                assert!(message.contains(&theirs) && message.contains(OTHER_CLIENT) && message.contains("one per tenant"), "{message}");
                assert_eq!(err.reason(), Reason::BrokerConflict);
                assert!(!err.is_transient() && err.retry_after().is_none(), "no retry loop");
            }
        }
    }
    assert_eq!(env.posts(), 0, "no create was tried: {:?}", env.log());
    assert_eq!(env.logto.writes(), 0);
    assert_eq!(env.logto.connector(&theirs).unwrap()["config"]["clientSecret"], "theirs");
    // Deleting ours leaves theirs alone.
    client.delete(&deletion(&spec(), Some(&theirs))).await.unwrap();
    client.delete(&deletion(&fixed(&theirs), None)).await.unwrap();
    assert!(env.logto.connector(&theirs).is_some());
    assert_eq!(env.count(&format!("DELETE /api/connectors/{theirs}")), 0);
}

#[tokio::test]
async fn a_fixed_id_never_takes_over_another_connector() {
    let env = env();
    let client = env.client();
    let creds = env.creds(CANARY);
    // The fixed id names a connector of another factory.
    let google = env.logto.insert_connector(json!({"id": "sharedid", "connectorId": "google-universal", "config": {"clientId": CLIENT}}));
    let err = expect_err(client.sync(&request(&fixed(&google), &creds, None, None, FULL)).await);
    assert!(matches!(err, BrokerError::Conflict(ref m) if m.contains("google-universal")), "{err:?}");
    client.delete(&deletion(&fixed(&google), None)).await.unwrap();
    assert!(env.logto.connector(&google).is_some());

    // Our connector exists under another id than the fixed one: reported, not duplicated or moved.
    let ours = created(&env, &client, &spec(), &creds).await;
    let err = expect_err(client.sync(&request(&fixed("contosoentra"), &creds, Some(&ours), None, FULL)).await);
    assert!(matches!(err, BrokerError::Conflict(ref m) if m.contains(&ours) && m.contains("contosoentra")), "{err:?}");
    assert_eq!(env.posts(), 1);
    assert_eq!(env.logto.connectors().len(), 2);
}

#[tokio::test]
async fn a_create_that_loses_the_race_is_a_conflict() {
    // Logto's own answer when another Microsoft connector appears between the list and the create.
    let (_server, up, _ca) = stub(
        Router::new()
            .route("/oidc/token", post(|| async { Json(json!({"access_token": "t0ken", "expires_in": 3600, "token_type": "Bearer"})) }))
            .route(
                "/api/connectors",
                get(|| async { Json(json!([])) }).post(|| async {
                    let body = json!({"code": "connector.multiple_instances_not_supported", "message": "Can not create multiple instance with picked standard connector."});
                    (StatusCode::UNPROCESSABLE_ENTITY, Json(body))
                }),
            ),
    )
    .await;
    let client = BrokerClient::Logto(LogtoClient::new(up, &broker_spec(RESOURCE), M2M, SecretValue::new(M2M_SECRET), None));
    let creds = Creds { secret: SecretValue::new(CANARY), fingerprint: "fp".into() };
    let err = expect_err(client.sync(&request(&spec(), &creds, None, None, FULL)).await);
    assert!(matches!(err, BrokerError::Conflict(ref m) if m.contains("multiple_instances_not_supported")), "{err:?}");
    assert_eq!(err.reason(), Reason::BrokerConflict);
    assert!(!err.is_transient());
}

#[tokio::test]
async fn wrong_management_credentials_are_auth_failures() {
    let env = env();
    env.logto.add_m2m_app_with_scopes("no-role", "no-role-secret-value", &[]);
    let creds = env.creds(CANARY);
    let wrong_resource = BrokerClient::Logto(LogtoClient::new(
        env.up.clone(),
        &broker_spec("https://other.logto.app/api"),
        M2M,
        SecretValue::new(M2M_SECRET),
        None,
    ));
    let clients = [
        env.client_as(M2M, "wrong-secret"),
        env.client_as("unknown-app", M2M_SECRET),
        wrong_resource,
        env.client_as("no-role", "no-role-secret-value"),
    ];
    for (client, code) in clients.iter().zip(["invalid_client", "invalid_client", "invalid_target", "invalid_scope"]) {
        let err = expect_err(client.check().await);
        assert!(matches!(err, BrokerError::Auth(ref m) if m.contains(code)), "{err:?}");
        assert_eq!(err.reason(), Reason::BrokerAuthFailed);
        assert!(!err.is_transient());
        let err = expect_err(client.sync(&request(&spec(), &creds, None, None, FULL)).await);
        assert_eq!(err.reason(), Reason::BrokerAuthFailed, "{err}");
        let err = expect_err(client.delete(&deletion(&spec(), Some("abc"))).await);
        assert_eq!(err.reason(), Reason::BrokerAuthFailed, "{err}");
    }
    assert!(env.log().iter().all(|r| r == "POST /oidc/token"), "nothing but token requests: {:?}", env.log());
    assert_eq!(env.logto.writes(), 0);
}

#[tokio::test]
async fn delete_finds_the_connector_at_a_fixed_id() {
    let env = env();
    let client = env.client();
    let creds = env.creds(CANARY);
    let id = created(&env, &client, &fixed("contosoentra"), &creds).await;
    client.delete(&deletion(&fixed("contosoentra"), None)).await.unwrap();
    assert!(env.logto.connector(&id).is_none());
    assert_eq!(env.count("DELETE /api/connectors/contosoentra"), 1);
}

/// A stub tenant on a fresh CA; returns the server (stops on drop), an Upstream to it, the CA file.
async fn stub(router: Router) -> (idp_bridge_devenv::tls::ServerHandle, Upstream, NamedTempFile) {
    install_crypto_provider();
    let ca = TestCa::new();
    let ca_file = NamedTempFile::new().unwrap();
    ca.write_pem(ca_file.path()).unwrap();
    let server = serve_tls(router, &ca).await.unwrap();
    let up = upstream_to(server.base_url(), &ca_file);
    (server, up, ca_file)
}

/// A tenant whose errors echo whatever they were sent (token requests and connector writes).
fn echo_router() -> Router {
    async fn token(headers: HeaderMap) -> Response {
        let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        if auth == "Basic bTJtLWFwcDplY2hv" {
            // m2m-app:echo
            return Json(json!({"access_token": "t0ken", "token_type": "Bearer", "expires_in": 3600})).into_response();
        }
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::STANDARD.decode(auth.trim_start_matches("Basic ")).unwrap_or_default();
        let description = format!("wrong credentials {}", String::from_utf8_lossy(&decoded));
        let body = json!({"code": "oidc.invalid_client", "message": "Client authentication failed.", "error": "invalid_client", "error_description": description});
        (StatusCode::UNAUTHORIZED, Json(body)).into_response()
    }
    async fn create(body: Bytes) -> Response {
        let text = String::from_utf8_lossy(&body).into_owned();
        let status = if text.contains("common") { StatusCode::INTERNAL_SERVER_ERROR } else { StatusCode::BAD_REQUEST };
        let body = json!({"code": "connector.invalid_config", "message": "The connector's config is invalid.", "details": format!("could not accept {text}")});
        (status, Json(body)).into_response()
    }
    Router::new().route("/oidc/token", post(token)).route("/api/connectors", get(|| async { Json(json!([])) }).post(create))
}

#[tokio::test]
async fn errors_never_show_a_secret() {
    // From the emulator: every kind of failure, with the canaries as the secrets in play.
    let env = env();
    let creds = env.creds(CANARY);
    let mut errors = vec![expect_err(env.client_as(M2M, &format!("{M2M_SECRET}-x")).check().await)];
    let client = env.client();
    env.logto.insert_connector(foreign_row());
    errors.push(expect_err(client.sync(&request(&spec(), &creds, None, None, FULL)).await));
    env.logto.fail_next(1, 500);
    errors.push(expect_err(client.sync(&request(&spec(), &creds, None, None, FULL)).await));
    env.logto.rate_limit_next(1, 5);
    errors.push(expect_err(client.sync(&request(&spec(), &creds, None, None, FULL)).await));
    env.logto.shutdown();
    tokio::task::yield_now().await;
    errors.push(expect_err(env.client().check().await));
    let reasons: Vec<Reason> = errors.iter().map(BrokerError::reason).collect();
    assert_eq!(
        reasons,
        [Reason::BrokerAuthFailed, Reason::BrokerConflict, Reason::BrokerUnreachable, Reason::BrokerRateLimited, Reason::BrokerUnreachable]
    );

    // From a tenant that echoes what it was sent: the values are scrubbed, the message kept.
    let (_server, up, _ca) = stub(echo_router()).await;
    let err = expect_err(
        BrokerClient::Logto(LogtoClient::new(up.clone(), &broker_spec(RESOURCE), M2M, SecretValue::new(M2M_SECRET), None)).check().await,
    );
    assert!(matches!(err, BrokerError::Auth(ref m) if m.contains("wrong credentials m2m-app:[redacted]")), "{err:?}");

    let client = BrokerClient::Logto(LogtoClient::new(up, &broker_spec(RESOURCE), M2M, SecretValue::new("echo"), None));
    let err = expect_err(client.sync(&request(&spec(), &creds, None, None, FULL)).await);
    assert!(
        matches!(err, BrokerError::Rejected(ref m) if m.contains("[redacted]") && m.contains("connector.invalid_config") && m.contains(CLIENT)),
        "{err:?}"
    );
    let mut loud = spec();
    loud.azure.sign_in_audience = SignInAudience::Common;
    let err = expect_err(client.sync(&request(&loud, &creds, None, None, FULL)).await);
    assert!(matches!(err, BrokerError::Server { status: 500, ref message } if message.contains("[redacted]")), "{err:?}");
}

/// The emulator itself, spoken to directly: the Logto quirks the adapter relies on are there.
#[tokio::test]
async fn emulator_follows_the_logto_contract() {
    use reqwest::Method;
    let env = env();
    let token = {
        let answer = env
            .up
            .send(env.up.request(Method::POST, HOST, "/oidc/token").basic_auth(M2M, Some(M2M_SECRET)).form(&[
                ("grant_type", "client_credentials"),
                ("resource", RESOURCE),
                ("scope", "all"),
            ]))
            .await
            .unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        let body: Value = answer.body.json().unwrap();
        assert_eq!((body["expires_in"].as_u64(), body["scope"].as_str()), (Some(3600), Some("all")));
        body["access_token"].as_str().unwrap().to_owned()
    };
    let call = |method: Method, path: &str, body: Option<Value>| {
        let mut request = env.up.request(method, HOST, path).bearer_auth(&token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let up = env.up.clone();
        async move {
            let answer = up.send(request).await.unwrap();
            (answer.status.as_u16(), answer.body.json::<Value>().unwrap_or(Value::Null))
        }
    };
    let config = json!({"clientId": CLIENT, "clientSecret": CANARY, "tenantId": "common", "cloudInstance": "https://login.microsoftonline.com", "prompts": [], "scopes": ""});

    // No bearer: 401 auth.authorization_header_missing; GET of an unknown id: 404 entity.not_found.
    let answer = env.up.send(env.up.request(Method::GET, HOST, "/api/connectors")).await.unwrap();
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer.body.json::<Value>().unwrap()["code"], "auth.authorization_header_missing");
    let (status, body) = call(Method::GET, "/api/connectors/nope", None).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("entity.not_found")));

    // Create: 200, the connector response with config as stored (cleanDeep dropped the empties).
    let (status, body) =
        call(Method::POST, "/api/connectors", Some(json!({"connectorId": FACTORY, "config": config, "id": "fixed1"}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["id"].as_str(), body["connectorId"].as_str(), body["target"].as_str()),
        (Some("fixed1"), Some(FACTORY), Some("azuread"))
    );
    assert_eq!(
        (body["type"].as_str(), body["platform"].as_str(), body["name"]["en"].as_str()),
        (Some("Social"), Some("Universal"), Some("Microsoft"))
    );
    assert_eq!(body["config"]["clientSecret"], CANARY, "plain text");
    assert!(body["config"].get("prompts").is_none() && body["config"].get("scopes").is_none(), "{body}");
    assert_eq!((&body["metadata"], &body["syncProfile"]), (&json!({}), &json!(false)));

    // Refusals: a second instance, metadata, an unknown factory, a config failing the guard.
    let (status, body) = call(Method::POST, "/api/connectors", Some(json!({"connectorId": FACTORY, "config": config}))).await;
    assert_eq!((status, body["code"].as_str()), (422, Some("connector.multiple_instances_not_supported")));
    let (status, body) =
        call(Method::POST, "/api/connectors", Some(json!({"connectorId": FACTORY, "metadata": {"name": {"en": "x"}}}))).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("connector.cannot_overwrite_metadata_for_non_standard_connector")));
    let (status, body) = call(Method::POST, "/api/connectors", Some(json!({"connectorId": "nope", "config": {}}))).await;
    assert_eq!((status, body["code"].as_str()), (422, Some("connector.not_found_with_connector_id")));
    let (status, body) =
        call(Method::POST, "/api/connectors", Some(json!({"connectorId": "oidc", "metadata": {"target": "azuread"}, "config": {}}))).await;
    assert_eq!((status, body["code"].as_str()), (422, Some("connector.multiple_target_with_same_platform")));
    env.logto.edit_connector("fixed1", |row| row["connectorId"] = json!("retired"));
    let partial =
        json!({"connectorId": FACTORY, "config": {"clientId": CLIENT, "cloudInstance": "x", "tenantId": "y", "prompts": ["sometimes"]}});
    let (status, body) = call(Method::POST, "/api/connectors", Some(partial)).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("connector.invalid_config")));
    let details = body["details"].as_str().unwrap();
    assert!(details.contains("\"clientSecret\": (invalid_type)") && details.contains("\"prompts.0\": (invalid_enum_value)"), "{details}");
    env.logto.edit_connector("fixed1", |row| row["connectorId"] = json!(FACTORY));

    // PATCH replaces config wholesale: a partial config fails the full guard, connectorId is ignored.
    let (status, body) = call(Method::PATCH, "/api/connectors/fixed1", Some(json!({"config": {"clientSecret": "only"}}))).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("connector.invalid_config")));
    let mut replaced = config.clone();
    replaced["tenantId"] = json!(TENANT);
    replaced.as_object_mut().unwrap().remove("prompts");
    let (status, body) =
        call(Method::PATCH, "/api/connectors/fixed1", Some(json!({"config": replaced, "connectorId": "google-universal"}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["connectorId"].as_str(), body["config"]["tenantId"].as_str()), (Some(FACTORY), Some(TENANT)));

    // The list filters by target; DELETE answers 204, then 404.
    let (_, listed) = call(Method::GET, "/api/connectors?target=google", None).await;
    assert_eq!(listed, json!([]));
    let (_, listed) = call(Method::GET, "/api/connectors?target=azuread", None).await;
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    let (status, _) = call(Method::DELETE, "/api/connectors/fixed1", None).await;
    assert_eq!(status, 204);
    let (status, body) = call(Method::DELETE, "/api/connectors/fixed1", None).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("entity.not_exists_with_id")));
    assert_eq!(env.logto.writes(), 3, "one create, one update, one delete");
}
