//! Adapter tests of the Unified.to broker client (`UnifiedClient::{sync, delete, check}`, with the
//! planning in `broker::unified::plan`) over real HTTPS against the Unified.to connection API
//! emulator. What the workspace holds is read back through the emulator's state accessors (which
//! show stored secrets) and its request log.
//!
//! One answer the emulator never gives (an error that echoes what it was sent) comes from a small
//! stub server on the same test CA.

use crate::common::{self, CLIENT, Creds, TENANT, TENANT_DOMAIN, deletion, request};

use std::time::Duration;

use axum::{
    Json, Router,
    body::Bytes,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
};
use idp_bridge::{
    broker::{BrokerClient, BrokerError, SyncOutcome, unified::UnifiedClient},
    crd::{
        broker::{TokenSecretRef, UnifiedBrokerSpec, UnifiedRegion},
        conditions::Reason,
        connection::{AzureAdConnectionSpec, AzureCloud, SignInAudience, UnifiedConnectionSpec, ValidationMode},
    },
    secret::{Fingerprinter, SecretValue},
    upstream::{EndpointOverrides, Upstream},
};
use idp_bridge_devenv::{
    tls::{TestCa, install_crypto_provider, serve_tls},
    unified::{SecretReads, UnifiedEmulator},
};
use serde_json::{Value, json};
use tempfile::NamedTempFile;

/// The default external_xref of the spec below.
const XREF: &str = "idp-bridge:contoso.onmicrosoft.com:11111111-2222-3333-4444-555555555555";
/// The Entra client secret pushed to Unified.to; no error text may ever contain it.
const CANARY: &str = "cAn8Q~canary-connection-secret-must-not-leak";
/// The workspace API token; no error text may contain it either.
const API_TOKEN: &str = "uni-canary-workspace-token-must-not-leak";
const ROTATED: &str = "new8Q~rotated-secret-value-0123456789ab";
const PERMISSIONS: [&str; 2] = ["hris_group_read", "hris_employee_read"];
const OBSERVE: bool = true;
const FULL: bool = false;

struct Env {
    unified: UnifiedEmulator,
    up: Upstream,
    ca: TestCa,
    _ca_file: NamedTempFile,
    fingerprints: Fingerprinter,
}

/// An emulated workspace that accepts `API_TOKEN`, reached for the US and EU hosts.
fn env() -> Env {
    install_crypto_provider();
    let ca = TestCa::new();
    let ca_file = NamedTempFile::new().unwrap();
    ca.write_pem(ca_file.path()).unwrap();
    let unified = UnifiedEmulator::start(&ca).unwrap();
    unified.add_token(API_TOKEN);
    let mut overrides = EndpointOverrides::default();
    overrides.insert("api.unified.to", unified.base_url());
    overrides.insert("api-eu.unified.to", unified.base_url());
    let up = Upstream::new(overrides, Some(ca_file.path()), Duration::from_secs(5)).unwrap();
    Env { unified, up, ca, _ca_file: ca_file, fingerprints: Fingerprinter::new(b"test-key".to_vec()) }
}

fn broker(region: UnifiedRegion) -> UnifiedBrokerSpec {
    UnifiedBrokerSpec { region, api_token_secret_ref: TokenSecretRef { name: "unified".into(), key: "token".into() } }
}

impl Env {
    fn client_with(&self, token: &str) -> BrokerClient {
        BrokerClient::Unified(UnifiedClient::new(self.up.clone(), &broker(UnifiedRegion::Us), SecretValue::new(token), None))
    }

    fn client(&self) -> BrokerClient {
        self.client_with(API_TOKEN)
    }

    fn creds(&self, secret: &str) -> Creds {
        Creds::new(&self.fingerprints, secret)
    }

    /// Requests so far as "METHOD /path?query".
    fn log(&self) -> Vec<String> {
        self.unified.requests().into_iter().map(|(m, p)| format!("{m} {p}")).collect()
    }

    fn count(&self, method: &str) -> usize {
        self.unified.requests().iter().filter(|(m, _)| m == method).count()
    }

    /// The one microsoft_ad connection with the default xref, as stored.
    fn ours(&self) -> Value {
        let mut ours: Vec<Value> = self
            .unified
            .connections()
            .into_iter()
            .filter(|c| c["external_xref"] == XREF && c["integration_type"] == "microsoft_ad")
            .collect();
        assert_eq!(ours.len(), 1, "exactly one connection of ours: {ours:?}");
        ours.remove(0)
    }
}

/// A single-tenant app for Unified.to, tenant given as a domain.
fn spec_with(unified: UnifiedConnectionSpec) -> AzureAdConnectionSpec {
    common::connection_spec("unified", |spec| spec.unified = Some(unified))
}

fn spec() -> AzureAdConnectionSpec {
    spec_with(UnifiedConnectionSpec { external_xref: None, permissions: PERMISSIONS.iter().map(|p| p.to_string()).collect() })
}

/// The error, after checking that none of its texts shows either canary.
fn checked(err: BrokerError) -> BrokerError {
    for text in [err.to_string(), format!("{err:?}")] {
        assert!(!text.contains(CANARY) && !text.contains(API_TOKEN) && !text.contains(ROTATED), "a secret leaked into {text:?}");
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
    assert!(env.unified.connection(&id).is_some());
    id
}

fn token_url(host: &str, tenant: &str) -> String {
    format!("https://{host}/{tenant}/oauth2/v2.0/token")
}

#[tokio::test]
async fn first_sync_imports_a_microsoft_ad_connection() {
    let env = env();
    let client = env.client();
    let creds = env.creds(CANARY);
    let outcome = client.sync(&request(&spec(), &creds, None, None, FULL)).await.unwrap();
    let id = outcome.id.clone().expect("an id");
    assert_eq!(outcome, common::created(&id));

    let conn = env.unified.connection(&id).unwrap();
    assert_eq!(conn["integration_type"], "microsoft_ad");
    assert_eq!(conn["external_xref"], XREF, "the default xref comes from the spec's tenant and client id");
    assert_eq!(conn["permissions"], json!(["hris_employee_read", "hris_group_read"]));
    assert_eq!(conn["categories"], json!(["hris"]));
    assert_eq!(
        conn["auth"],
        json!({"client_id": CLIENT, "client_secret": CANARY, "token_url": token_url("login.microsoftonline.com", TENANT)}),
        "exactly the client-credentials auth"
    );
    assert_eq!(env.unified.client_secret(&id).as_deref(), Some(CANARY));
    assert_eq!(env.unified.writes(), 1);
    let log = env.log();
    assert_eq!(log.len(), 2, "{log:?}");
    assert!(log[0].starts_with("GET /unified/connection?external_xref=idp-bridge%3Acontoso.onmicrosoft.com%3A11111111-"), "{log:?}");
    assert_eq!(log[1], "POST /unified/connection");

    // An explicit xref and no permissions: every category of the integration.
    let custom = spec_with(UnifiedConnectionSpec { external_xref: Some("customer-42".into()), permissions: vec![] });
    let outcome = client.sync(&request(&custom, &creds, None, None, FULL)).await.unwrap();
    let conn = env.unified.connection(outcome.id.as_deref().unwrap()).unwrap();
    assert_eq!(conn["external_xref"], "customer-42");
    assert_eq!((&conn["permissions"], &conn["categories"]), (&json!([]), &json!(["auth", "hris", "passthrough"])));
    assert_eq!(env.unified.connections().len(), 2);
}

#[tokio::test]
async fn the_token_url_names_the_tenant_in_its_cloud() {
    let env = env();
    let client = env.client();
    let creds = env.creds(CANARY);
    let cases = [
        (AzureCloud::AzurePublic, ValidationMode::ClientCredentials, token_url("login.microsoftonline.com", TENANT)),
        (AzureCloud::AzureUSGovernment, ValidationMode::Discovery, token_url("login.microsoftonline.us", TENANT)),
        (AzureCloud::AzureChina, ValidationMode::ClientCredentials, token_url("login.partner.microsoftonline.cn", TENANT)),
        // Without validation no GUID was resolved: the tenant as written.
        (AzureCloud::AzurePublic, ValidationMode::None, token_url("login.microsoftonline.com", TENANT_DOMAIN)),
    ];
    for (i, (cloud, mode, expected)) in cases.into_iter().enumerate() {
        let mut spec = spec_with(UnifiedConnectionSpec { external_xref: Some(format!("case-{i}")), permissions: vec![] });
        spec.azure.cloud = cloud;
        spec.validation.mode = mode;
        let id = created(&env, &client, &spec, &creds).await;
        assert_eq!(env.unified.connection(&id).unwrap()["auth"]["token_url"], expected.as_str(), "{cloud:?}");
    }
}

#[tokio::test]
async fn the_region_selects_the_host() {
    let env = env();
    // A second workspace behind the EU host only; the US host keeps the first.
    let eu = UnifiedEmulator::start(&env.ca).unwrap();
    eu.add_token(API_TOKEN);
    let ca_file = NamedTempFile::new().unwrap();
    env.ca.write_pem(ca_file.path()).unwrap();
    let mut overrides = EndpointOverrides::default();
    overrides.insert("api.unified.to", env.unified.base_url());
    overrides.insert("api-eu.unified.to", eu.base_url());
    let up = Upstream::new(overrides, Some(ca_file.path()), Duration::from_secs(5)).unwrap();
    let creds = env.creds(CANARY);

    let eu_client = BrokerClient::Unified(UnifiedClient::new(up.clone(), &broker(UnifiedRegion::Eu), SecretValue::new(API_TOKEN), None));
    eu_client.check().await.unwrap();
    let id = eu_client.sync(&request(&spec(), &creds, None, None, FULL)).await.unwrap().id.unwrap();
    assert!(eu.connection(&id).is_some());
    assert!(env.unified.requests().is_empty(), "nothing reached the US host: {:?}", env.log());

    let us_client = BrokerClient::Unified(UnifiedClient::new(up, &broker(UnifiedRegion::Us), SecretValue::new(API_TOKEN), None));
    let outcome = us_client.sync(&request(&spec(), &creds, None, None, OBSERVE)).await.unwrap();
    assert_eq!(outcome.differences, ["connection (missing)"], "the US workspace is another workspace");
    assert_eq!(eu.connections().len(), 1);
    assert_eq!(eu.requests().iter().filter(|(m, _)| m == "GET").count(), 2, "{:?}", eu.requests());
}

#[tokio::test]
async fn steady_state_makes_no_writes() {
    let env = env();
    let client = env.client();
    let (spec, creds) = (spec(), env.creds(CANARY));
    let id = created(&env, &client, &spec, &creds).await;
    let writes = env.unified.writes();
    for known_id in [Some(id.as_str()), None] {
        for observe_only in [FULL, OBSERVE] {
            let outcome = client.sync(&request(&spec, &creds, known_id, Some(&creds.fingerprint), observe_only)).await.unwrap();
            assert_eq!(
                outcome,
                SyncOutcome { id: Some(id.clone()), differences: vec![], wrote: false, extras: None, create_deferred: false }
            );
        }
    }
    assert_eq!(env.unified.writes(), writes);
    assert_eq!(env.count("GET"), 1 + 4, "one read per sync: {:?}", env.log());
    assert_eq!(env.count("POST") + env.count("PUT") + env.count("PATCH") + env.count("DELETE"), 1);
    // Reads mask the secret; what is stored is still the value pushed.
    assert_eq!(env.unified.client_secret(&id).as_deref(), Some(CANARY));
}

#[tokio::test]
async fn rotation_is_one_write_carrying_the_complete_auth() {
    let env = env();
    let client = env.client();
    let (spec, creds) = (spec(), env.creds(CANARY));
    let id = created(&env, &client, &spec, &creds).await;
    // What Unified.to and the dashboard added since: kept across the full replace.
    env.unified.edit_connection(&id, |c| {
        c["is_paused"] = json!(true);
        c["integration_name"] = json!("Contoso directory");
        c["auth"]["name"] = json!("Contoso");
        c["auth"]["access_token"] = json!("token-from-the-old-secret");
        c["auth"]["expires_in"] = json!(3599);
    });
    let before = env.unified.connection(&id).unwrap();
    let writes = env.unified.writes();

    let rotated = env.creds(ROTATED);
    let outcome = client.sync(&request(&spec, &rotated, Some(&id), Some(&creds.fingerprint), FULL)).await.unwrap();
    assert_eq!(
        outcome,
        SyncOutcome {
            id: Some(id.clone()),
            differences: vec!["auth.client_secret".into()],
            wrote: true,
            extras: None,
            create_deferred: false
        }
    );
    assert_eq!(env.unified.writes(), writes + 1);
    assert_eq!(env.count("PUT"), 1);
    assert_eq!(env.log().last().unwrap(), &format!("PUT /unified/connection/{id}"));

    let after = env.unified.connection(&id).unwrap();
    assert_eq!(
        after["auth"],
        json!({"client_id": CLIENT, "client_secret": ROTATED, "token_url": token_url("login.microsoftonline.com", TENANT), "name": "Contoso"}),
        "the complete auth; the token issued for the old secret is dropped"
    );
    for key in
        ["integration_type", "external_xref", "permissions", "categories", "is_paused", "integration_name", "environment", "created_at"]
    {
        assert_eq!(after[key], before[key], "{key} survives the full replace");
    }

    // Then steady again.
    let outcome = client.sync(&request(&spec, &rotated, Some(&id), Some(&rotated.fingerprint), FULL)).await.unwrap();
    assert!(!outcome.wrote && outcome.differences.is_empty(), "{outcome:?}");
    assert_eq!(env.unified.writes(), writes + 1);
}

#[tokio::test]
async fn drift_is_corrected_or_only_reported() {
    let env = env();
    let client = env.client();
    let (spec, creds) = (spec(), env.creds(CANARY));
    let id = created(&env, &client, &spec, &creds).await;
    env.unified.edit_connection(&id, |c| {
        c["permissions"] = json!(["hris_employee_read", "hris_employee_write"]);
        c["auth"]["client_id"] = json!("99999999-0000-0000-0000-000000000000");
        c["auth"]["token_url"] = json!(token_url("login.microsoftonline.com", "common"));
    });
    let drifted = env.unified.connection(&id).unwrap();
    let writes = env.unified.writes();
    let expected = ["permissions", "auth.client_id", "auth.token_url"];

    let outcome = client.sync(&request(&spec, &creds, Some(&id), Some(&creds.fingerprint), OBSERVE)).await.unwrap();
    assert_eq!((outcome.differences.as_slice(), outcome.wrote), (expected.map(str::to_owned).as_slice(), false));
    assert_eq!(env.unified.writes(), writes);
    assert_eq!(env.unified.connection(&id).unwrap(), drifted, "observing writes nothing");

    let outcome = client.sync(&request(&spec, &creds, Some(&id), Some(&creds.fingerprint), FULL)).await.unwrap();
    assert_eq!((outcome.differences.as_slice(), outcome.wrote), (expected.map(str::to_owned).as_slice(), true));
    assert_eq!(env.unified.writes(), writes + 1);
    let fixed = env.unified.connection(&id).unwrap();
    assert_eq!(fixed["permissions"], json!(["hris_employee_read", "hris_group_read"]));
    assert_eq!(fixed["auth"]["client_id"], CLIENT);
    assert_eq!(fixed["auth"]["token_url"], token_url("login.microsoftonline.com", TENANT));
    assert_eq!(fixed["auth"]["client_secret"], CANARY);

    // Where a read shows the secret, a secret changed in the dashboard is drift too.
    env.unified.set_secret_reads(SecretReads::Plain);
    env.unified.edit_connection(&id, |c| c["auth"]["client_secret"] = json!("pasted-by-hand"));
    let outcome = client.sync(&request(&spec, &creds, Some(&id), Some(&creds.fingerprint), OBSERVE)).await.unwrap();
    assert_eq!(outcome.differences, ["auth.client_secret"]);
    client.sync(&request(&spec, &creds, Some(&id), Some(&creds.fingerprint), FULL)).await.unwrap();
    assert_eq!(env.unified.client_secret(&id).as_deref(), Some(CANARY));

    // Omitted secrets work like masked ones.
    env.unified.set_secret_reads(SecretReads::Omitted);
    let outcome = client.sync(&request(&spec, &creds, Some(&id), Some(&creds.fingerprint), FULL)).await.unwrap();
    assert!(outcome.differences.is_empty(), "{outcome:?}");
}

#[tokio::test]
async fn a_lost_status_adopts_the_connection_by_xref() {
    let env = env();
    let client = env.client();
    let (spec, creds) = (spec(), env.creds(CANARY));
    let id = created(&env, &client, &spec, &creds).await;

    // No id and no fingerprint recorded: found by xref; the masked secret is pushed once.
    let outcome = client.sync(&request(&spec, &creds, None, None, FULL)).await.unwrap();
    assert_eq!(
        outcome,
        SyncOutcome {
            id: Some(id.clone()),
            differences: vec!["auth.client_secret".into()],
            wrote: true,
            extras: None,
            create_deferred: false
        }
    );
    // A stale or unknown recorded id: found by xref as well. The fingerprint recorded with it
    // belongs to that other id, so the masked secret is pushed again.
    for stale in ["000000000000000000000000", "not/an/id"] {
        let outcome = client.sync(&request(&spec, &creds, Some(stale), Some(&creds.fingerprint), FULL)).await.unwrap();
        assert_eq!(outcome.id.as_deref(), Some(id.as_str()));
        assert_eq!(outcome.differences, ["auth.client_secret"]);
    }
    assert_eq!(env.count("POST"), 1, "never a duplicate: {:?}", env.log());
    assert_eq!(env.unified.connections().len(), 1);
    assert!(env.log().iter().all(|r| !r.contains("not/an/id")), "an invalid id never reaches a path");

    // Where reads show the secret, adoption needs no write at all.
    env.unified.set_secret_reads(SecretReads::Plain);
    let writes = env.unified.writes();
    let outcome = client.sync(&request(&spec, &creds, None, None, FULL)).await.unwrap();
    assert_eq!((outcome.id.as_deref(), outcome.wrote), (Some(id.as_str()), false));
    assert_eq!(env.unified.writes(), writes);
}

#[tokio::test]
async fn connections_of_another_integration_or_xref_are_left_alone() {
    let env = env();
    let client = env.client();
    let (spec, creds) = (spec(), env.creds(CANARY));
    let same_xref_other_integration = env.unified.insert_connection(json!({
        "integration_type": "bamboohr", "external_xref": XREF, "categories": ["hris"], "permissions": ["hris_employee_read"],
        "auth": {"token": "bamboo-token"},
    }));
    let other_xref = env.unified.insert_connection(json!({
        "integration_type": "microsoft_ad", "external_xref": "someone-else", "categories": ["hris"], "permissions": [],
        "auth": {"client_id": CLIENT, "client_secret": "theirs", "token_url": token_url("login.microsoftonline.com", TENANT)},
    }));
    let before = env.unified.connections();

    // Even when the recorded id points at one of them.
    for known in [None, Some(same_xref_other_integration.as_str()), Some(other_xref.as_str())] {
        let outcome = client.sync(&request(&spec, &creds, known, None, OBSERVE)).await.unwrap();
        assert_eq!(outcome.differences, ["connection (missing)"], "{known:?}");
        let err = client.delete(&deletion(&spec, known)).await;
        assert!(err.is_ok(), "{err:?}");
    }
    assert_eq!(env.count("DELETE"), 0);
    let id = client.sync(&request(&spec, &creds, Some(&other_xref), None, FULL)).await.unwrap().id.unwrap();
    assert!(id != same_xref_other_integration && id != other_xref);
    assert_eq!(env.unified.connections()[..2], before[..], "the others are untouched");
    assert_eq!(env.ours()["id"], id.as_str());

    // Deleting ours, through the recorded id of another, still spares the others.
    client.delete(&deletion(&spec, Some(&other_xref))).await.unwrap();
    assert_eq!(env.unified.connections(), before);
}

#[tokio::test]
async fn a_bad_token_is_an_auth_failure() {
    let env = env();
    let creds = env.creds(CANARY);
    let client = env.client_with("not-a-workspace-token");
    let err = expect_err(client.check().await);
    assert!(matches!(err, BrokerError::Auth(_)), "{err:?}");
    assert_eq!(err.reason(), Reason::BrokerAuthFailed);
    assert!(!err.is_transient() && err.retry_after().is_none());
    let err = expect_err(client.sync(&request(&spec(), &creds, None, None, FULL)).await);
    assert_eq!(err.reason(), Reason::BrokerAuthFailed, "{err}");
    let err = expect_err(client.delete(&deletion(&spec(), Some("65f0c0ffee00000000000000"))).await);
    assert_eq!(err.reason(), Reason::BrokerAuthFailed, "{err}");
    assert_eq!(env.unified.writes(), 0);
    assert!(env.log().iter().all(|r| r.starts_with("GET ")), "{:?}", env.log());
    // `check` asks for one connection at most.
    env.client().check().await.unwrap();
    assert_eq!(env.log().last().unwrap(), "GET /unified/connection?limit=1");
}

#[tokio::test]
async fn an_invalid_body_is_rejected_with_its_message() {
    let env = env();
    let client = env.client();
    let creds = env.creds(CANARY);
    let bad = spec_with(UnifiedConnectionSpec { external_xref: None, permissions: vec!["Not A Permission".into()] });
    let err = expect_err(client.sync(&request(&bad, &creds, None, None, FULL)).await);
    assert!(matches!(err, BrokerError::Rejected(ref m) if m.contains("Invalid permission")), "{err:?}");
    assert_eq!(err.reason(), Reason::BrokerRejected);
    assert!(!err.is_transient());
    assert!(env.unified.connections().is_empty());
}

#[tokio::test]
async fn a_connection_gone_between_lookup_and_delete_counts_as_deleted() {
    let env = env();
    let spec = spec();
    // A connection removed between the lookup and the DELETE (answered 404) counts as deleted.
    let gone = Router::new().route(
        "/unified/connection/{id}",
        get(|| async { Json(json!({"id": "65f0c0ffee00000000000000", "integration_type": "microsoft_ad", "external_xref": XREF})) })
            .delete(|| async { (StatusCode::NOT_FOUND, Json(json!({"statusCode": 404, "error": "Not Found", "message": "gone"}))) }),
    );
    let server = serve_tls(gone, &env.ca).await.unwrap();
    let ca_file = NamedTempFile::new().unwrap();
    env.ca.write_pem(ca_file.path()).unwrap();
    let mut overrides = EndpointOverrides::default();
    overrides.insert("api.unified.to", server.base_url());
    let up = Upstream::new(overrides, Some(ca_file.path()), Duration::from_secs(5)).unwrap();
    let client = BrokerClient::Unified(UnifiedClient::new(up, &broker(UnifiedRegion::Us), SecretValue::new(API_TOKEN), None));
    client.delete(&deletion(&spec, Some("65f0c0ffee00000000000000"))).await.unwrap();
}

#[tokio::test]
async fn unsupported_settings_fail_before_any_request() {
    let env = env();
    let client = env.client();
    let creds = env.creds(CANARY);
    let mut specs = Vec::new();
    for audience in [SignInAudience::Organizations, SignInAudience::Common, SignInAudience::Consumers] {
        let mut multi = spec();
        multi.azure.sign_in_audience = audience;
        specs.push(multi);
    }
    let mut no_block = spec();
    no_block.unified = None;
    specs.push(no_block);
    for spec in &specs {
        for observe_only in [FULL, OBSERVE] {
            let err = expect_err(common::sync_spec(&client, spec, &creds, observe_only).await);
            assert!(matches!(err, BrokerError::Unsupported(_)), "{err:?}");
            assert_eq!(err.reason(), Reason::UnsupportedSetting);
            assert!(!err.is_transient() && err.retry_after().is_none());
        }
    }
    assert!(env.unified.requests().is_empty(), "{:?}", env.log());
}

/// A workspace whose errors echo whatever they were sent: the request body and the
/// Authorization header.
fn echo_router() -> Router {
    async fn list(headers: HeaderMap) -> Response {
        let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        if auth.ends_with("let-me-list") {
            return Json(json!([])).into_response();
        }
        let message = format!("token {auth} is not valid");
        (StatusCode::UNAUTHORIZED, Json(json!({"statusCode": 401, "error": "Unauthorized", "message": message}))).into_response()
    }
    async fn create(body: Bytes) -> Response {
        let text = String::from_utf8_lossy(&body).into_owned();
        let status = if text.contains("server-error") { StatusCode::INTERNAL_SERVER_ERROR } else { StatusCode::UNPROCESSABLE_ENTITY };
        let sent: Value = serde_json::from_slice(&body).unwrap_or_default();
        let body = json!({"statusCode": status.as_u16(), "error": "Bad", "message": [format!("could not accept client_secret {}", sent["auth"]["client_secret"]), "and more"]});
        (status, Json(body)).into_response()
    }
    Router::new().route("/unified/connection", get(list).post(create))
}

#[tokio::test]
async fn errors_never_show_a_secret() {
    // From the emulator: every kind of failure, with the canaries as the secrets in play.
    let env = env();
    let creds = env.creds(CANARY);
    let bad = spec_with(UnifiedConnectionSpec { external_xref: None, permissions: vec!["Bad".into()] });
    let mut errors = vec![
        expect_err(env.client_with("wrong").check().await),
        expect_err(env.client().sync(&request(&bad, &creds, None, None, FULL)).await),
    ];
    let client = env.client();
    let id = created(&env, &client, &spec(), &creds).await;
    env.unified.fail_next(1, 500);
    errors.push(expect_err(client.sync(&request(&spec(), &creds, Some(&id), None, FULL)).await));
    env.unified.rate_limit_next(1, 5);
    errors.push(expect_err(client.sync(&request(&spec(), &creds, Some(&id), None, FULL)).await));
    env.unified.shutdown();
    tokio::task::yield_now().await;
    errors.push(expect_err(env.client().check().await));
    let reasons: Vec<Reason> = errors.iter().map(BrokerError::reason).collect();
    assert_eq!(
        reasons,
        [Reason::BrokerAuthFailed, Reason::BrokerRejected, Reason::BrokerUnreachable, Reason::BrokerRateLimited, Reason::BrokerUnreachable]
    );

    // From a workspace that echoes what it was sent: the values are scrubbed, the message kept.
    let server = serve_tls(echo_router(), &env.ca).await.unwrap();
    let ca_file = NamedTempFile::new().unwrap();
    env.ca.write_pem(ca_file.path()).unwrap();
    let mut overrides = EndpointOverrides::default();
    overrides.insert("api.unified.to", server.base_url());
    let up = Upstream::new(overrides, Some(ca_file.path()), Duration::from_secs(5)).unwrap();

    let err = expect_err(
        BrokerClient::Unified(UnifiedClient::new(up.clone(), &broker(UnifiedRegion::Us), SecretValue::new(API_TOKEN), None)).check().await,
    );
    assert!(matches!(err, BrokerError::Auth(ref m) if m.contains("Bearer [redacted] is not valid")), "{err:?}");

    let client = BrokerClient::Unified(UnifiedClient::new(
        up,
        &broker(UnifiedRegion::Us),
        SecretValue::new(format!("{API_TOKEN}-let-me-list")),
        None,
    ));
    let err = expect_err(client.sync(&request(&spec(), &creds, None, None, FULL)).await);
    assert!(matches!(err, BrokerError::Rejected(ref m) if m.contains("[redacted]") && m.contains("; and more")), "{err:?}");
    let loud = spec_with(UnifiedConnectionSpec { external_xref: Some("server-error".into()), permissions: vec![] });
    let err = expect_err(client.sync(&request(&loud, &creds, None, None, FULL)).await);
    assert!(matches!(err, BrokerError::Server { status: 500, ref message } if message.contains("[redacted]")), "{err:?}");
}
