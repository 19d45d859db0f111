//! The Azure and Auth0 emulators over real HTTPS, through the operator's own HTTP client.

use std::time::Duration;

use idp_bridge::upstream::{Answer, EndpointOverrides, TransportError, Upstream, retry_after};
use idp_bridge_devenv::{
    auth0::Auth0Emulator,
    azure::{AzureCloud, AzureEmulator},
    tls::{TestCa, install_crypto_provider},
};
use jiff::{SignedDuration, Timestamp};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const LOGIN: &str = "login.microsoftonline.com";
const GRAPH: &str = "graph.microsoft.com";
const AUTH0: &str = "acme.auth0.com";
const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const CLIENT: &str = "11111111-2222-3333-4444-555555555555";
const SECRET: &str = "abc8Q~emulated-secret-value-0123456789ab";
const SCOPE: &str = "https://graph.microsoft.com/.default";
const M2M: &str = "m2m-client";
const M2M_SECRET: &str = "m2m-secret";
const ALL_SCOPES: [&str; 4] = ["read:connections", "create:connections", "update:connections", "delete:connections"];

struct Env {
    azure: AzureEmulator,
    auth0: Auth0Emulator,
    up: Upstream,
    _ca_file: tempfile::NamedTempFile,
}

/// Both emulators, one tenant with one app and a valid secret, one fully scoped M2M client.
fn env() -> Env {
    install_crypto_provider();
    let ca = TestCa::new();
    let ca_file = tempfile::NamedTempFile::new().unwrap();
    ca.write_pem(ca_file.path()).unwrap();
    let azure = AzureEmulator::start(&ca).unwrap();
    let auth0 = Auth0Emulator::start(&ca, AUTH0).unwrap();
    let up = Upstream::new(overrides(&azure, &auth0), Some(ca_file.path()), Duration::from_secs(5)).unwrap();
    azure.add_tenant(TENANT, &["contoso.onmicrosoft.com", "contoso.com"]);
    azure.add_app(TENANT, CLIENT);
    azure.add_secret(TENANT, CLIENT, SECRET, in_days(180));
    auth0.add_m2m_client(M2M, M2M_SECRET, &ALL_SCOPES);
    Env { azure, auth0, up, _ca_file: ca_file }
}

fn overrides(azure: &AzureEmulator, auth0: &Auth0Emulator) -> EndpointOverrides {
    let mut overrides = EndpointOverrides::default();
    overrides.insert(LOGIN, azure.base_url());
    overrides.insert(GRAPH, azure.base_url());
    overrides.insert(AUTH0, auth0.base_url());
    overrides
}

fn overrides_for(env: &Env) -> EndpointOverrides {
    overrides(&env.azure, &env.auth0)
}

fn in_days(days: i64) -> Timestamp {
    Timestamp::now() + SignedDuration::from_hours(24 * days)
}

fn json_of(answer: &Answer) -> Value {
    answer.body.json().unwrap_or_else(|e| panic!("not JSON ({e}): {}", answer.body.text()))
}

/// (status, error, AADSTS code) of a login-service error, after checking the body's shape.
fn aadsts(answer: &Answer) -> (u16, String, u64) {
    let body = json_of(answer);
    let code = body["error_codes"][0].as_u64().expect("error_codes");
    let description = body["error_description"].as_str().expect("error_description");
    assert!(description.starts_with(&format!("AADSTS{code}: ")), "{description}");
    assert!(description.contains("\r\nTrace ID: ") && description.contains("\r\nCorrelation ID: "), "{description}");
    assert_eq!(body["error_uri"], format!("https://{LOGIN}/error?code={code}"));
    assert!(body["trace_id"].is_string() && body["correlation_id"].is_string() && body["timestamp"].is_string());
    (answer.status.as_u16(), body["error"].as_str().unwrap().to_owned(), code)
}

impl Env {
    async fn get(&self, host: &str, path: &str) -> Answer {
        self.up.send(self.up.request(Method::GET, host, path)).await.unwrap()
    }

    async fn discover(&self, tenant: &str) -> Answer {
        self.get(LOGIN, &format!("/{tenant}/v2.0/.well-known/openid-configuration")).await
    }

    /// A client-credentials request with the standard fields, `changes` applied (empty value = drop).
    async fn azure_token(&self, tenant: &str, changes: &[(&str, &str)]) -> Answer {
        let mut form = vec![("grant_type", "client_credentials"), ("client_id", CLIENT), ("client_secret", SECRET), ("scope", SCOPE)];
        for (key, value) in changes {
            form.retain(|(k, _)| k != key);
            if !value.is_empty() {
                form.push((key, value));
            }
        }
        let request = self.up.request(Method::POST, LOGIN, &format!("/{tenant}/oauth2/v2.0/token")).form(&form);
        self.up.send(request).await.unwrap()
    }

    async fn graph_token(&self) -> String {
        let answer = self.azure_token(TENANT, &[]).await;
        json_of(&answer)["access_token"].as_str().unwrap().to_owned()
    }

    async fn graph_app(&self, token: Option<&str>, path: &str) -> Answer {
        let mut request = self.up.request(Method::GET, GRAPH, path);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        self.up.send(request).await.unwrap()
    }

    async fn auth0_token_answer(&self, body: Value) -> Answer {
        self.up.send(self.up.request(Method::POST, AUTH0, "/oauth/token").json(&body)).await.unwrap()
    }

    async fn auth0_token(&self, client_id: &str, secret: &str) -> String {
        let body = json!({"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret, "audience": format!("https://{AUTH0}/api/v2/")});
        let answer = self.auth0_token_answer(body).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body.text());
        json_of(&answer)["access_token"].as_str().unwrap().to_owned()
    }

    async fn api(&self, token: &str, method: Method, path: &str, body: Option<Value>) -> Answer {
        let mut request = self.up.request(method, AUTH0, path).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        self.up.send(request).await.unwrap()
    }

    async fn create_waad(&self, token: &str, name: &str) -> Value {
        let body = json!({"name": name, "strategy": "waad", "options": {"client_id": CLIENT, "client_secret": SECRET, "tenant_domain": "contoso.onmicrosoft.com", "domain": "contoso.onmicrosoft.com"}});
        let answer = self.api(token, Method::POST, "/api/v2/connections", Some(body)).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body.text());
        json_of(&answer)
    }
}

fn assert_api_error(answer: &Answer, status: u16, error_code: Option<&str>, message: &str) {
    let body = json_of(answer);
    assert_eq!(answer.status.as_u16(), status, "{body}");
    assert_eq!(body["statusCode"], status, "{body}");
    assert_eq!(body["error"], answer.status.canonical_reason().unwrap(), "{body}");
    assert_eq!(body["message"], message, "{body}");
    assert_eq!(body.get("errorCode").and_then(Value::as_str), error_code, "{body}");
}

#[tokio::test]
async fn azure_discovery_resolves_guids_and_domains() {
    let env = env();
    for tenant in [TENANT.to_uppercase().as_str(), "contoso.com", "Contoso.OnMicrosoft.com"] {
        let answer = env.discover(tenant).await;
        assert_eq!(answer.status, StatusCode::OK);
        let doc = json_of(&answer);
        assert_eq!(doc["issuer"], format!("https://{LOGIN}/{TENANT}/v2.0"));
        assert_eq!(doc["token_endpoint"], format!("https://{LOGIN}/{TENANT}/oauth2/v2.0/token"));
        assert_eq!(doc["jwks_uri"], format!("https://{LOGIN}/{TENANT}/discovery/v2.0/keys"));
        assert_eq!(doc["authorization_endpoint"], format!("https://{LOGIN}/{TENANT}/oauth2/v2.0/authorize"));
        assert_eq!((doc["tenant_region_scope"].as_str(), doc["cloud_instance_name"].as_str()), (Some("NA"), Some("microsoftonline.com")));
        assert_eq!(doc["msgraph_host"], GRAPH);
        assert!(doc["token_endpoint_auth_methods_supported"].as_array().unwrap().contains(&json!("client_secret_post")));
    }
    let common = json_of(&env.discover("common").await);
    assert_eq!(common["issuer"], format!("https://{LOGIN}/{{tenantid}}/v2.0"));
    assert_eq!(common["token_endpoint"], format!("https://{LOGIN}/common/oauth2/v2.0/token"));

    let unknown = env.discover("00000000-0000-0000-0000-000000000001").await;
    assert_eq!(aadsts(&unknown), (400, "invalid_tenant".into(), 90002));
    assert!(json_of(&unknown)["error_description"].as_str().unwrap().contains("Tenant '00000000-0000-0000-0000-000000000001' not found."));
    assert_eq!(aadsts(&env.discover("fabrikam.onmicrosoft.com").await), (400, "invalid_tenant".into(), 90002));
    let truncated = &TENANT[..35];
    for malformed in [truncated, "con_toso.com", "contoso"] {
        let answer = env.discover(malformed).await;
        assert_eq!(aadsts(&answer), (400, "invalid_request".into(), 900023), "{malformed}");
        let description = json_of(&answer)["error_description"].as_str().unwrap().to_owned();
        assert!(description.contains(&format!("Specified tenant identifier '{malformed}' is neither a valid DNS name")));
    }
    assert_eq!(env.azure.discovery_requests(), 9);
    assert_eq!(env.azure.token_requests(), 0);
}

#[tokio::test]
async fn azure_token_success_and_every_error_class() {
    let env = env();
    let ok = env.azure_token("contoso.com", &[]).await;
    assert_eq!(ok.status, StatusCode::OK);
    let body = json_of(&ok);
    assert_eq!(
        (body["token_type"].as_str(), body["expires_in"].as_u64(), body["ext_expires_in"].as_u64()),
        (Some("Bearer"), Some(3599), Some(3599))
    );
    assert!(body["access_token"].as_str().unwrap().len() > 20);

    let expired_app = "22222222-2222-2222-2222-222222222222";
    env.azure.add_app(TENANT, expired_app);
    env.azure.add_secret(TENANT, expired_app, "old8Q~expired", Timestamp::now() - SignedDuration::from_hours(1));
    let disabled_app = "33333333-3333-3333-3333-333333333333";
    env.azure.add_app(TENANT, disabled_app);
    env.azure.set_app_disabled(TENANT, disabled_app, true);
    let key_id = env.azure.add_secret(TENANT, CLIENT, "new8Q~second", in_days(30));

    // (tenant, form changes, expected (status, error, AADSTS code))
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, (u16, &'a str, u64));
    let cases: Vec<Case> = vec![
        (TENANT, vec![("grant_type", "password")], (400, "unsupported_grant_type", 70003)),
        ("common", vec![], (400, "invalid_request", 9001023)),
        ("consumers", vec![], (400, "invalid_request", 9001023)),
        ("00000000-0000-0000-0000-000000000001", vec![], (400, "invalid_tenant", 90002)),
        (&TENANT[1..], vec![], (400, "invalid_request", 900023)),
        (TENANT, vec![("scope", "https://graph.microsoft.com/User.Read")], (400, "invalid_scope", 1002012)),
        (TENANT, vec![("scope", "https://graph.microsoft.us/.default")], (400, "invalid_resource", 500011)),
        (TENANT, vec![("client_id", "99999999-9999-9999-9999-999999999999")], (400, "unauthorized_client", 700016)),
        (TENANT, vec![("client_id", disabled_app)], (400, "unauthorized_client", 7000112)),
        (TENANT, vec![("client_secret", "")], (401, "invalid_client", 7000218)),
        (TENANT, vec![("client_secret", "abc8Q~wrong")], (401, "invalid_client", 7000215)),
        (TENANT, vec![("client_secret", &key_id)], (401, "invalid_client", 7000215)),
        (TENANT, vec![("client_id", expired_app), ("client_secret", "old8Q~expired")], (401, "invalid_client", 7000222)),
    ];
    for (tenant, changes, (status, error, code)) in &cases {
        let answer = env.azure_token(tenant, changes).await;
        assert_eq!(aadsts(&answer), (*status, error.to_string(), *code), "{tenant} {changes:?}");
    }
    let wrong = json_of(&env.azure_token(TENANT, &[("client_secret", "nope")]).await);
    assert!(
        wrong["error_description"].as_str().unwrap().contains(&format!("not the client secret ID, for a secret added to app '{CLIENT}'"))
    );

    // /organizations is accepted: the tenant is guessed from the app. HTTP Basic works too.
    assert_eq!(env.azure_token("organizations", &[]).await.status, StatusCode::OK);
    let form = [("grant_type", "client_credentials"), ("scope", SCOPE)];
    let basic =
        env.up.request(Method::POST, LOGIN, &format!("/{TENANT}/oauth2/v2.0/token")).basic_auth(CLIENT, Some("new8Q~second")).form(&form);
    assert_eq!(env.up.send(basic).await.unwrap().status, StatusCode::OK);

    assert_eq!(env.azure.token_requests(), cases.len() + 4);
    assert_eq!(env.azure.token_requests_for(expired_app), 1);
    assert_eq!(env.azure.token_requests_for(&CLIENT.to_uppercase()), cases.len() - 3 + 4);
}

#[tokio::test]
async fn azure_throttling_and_failures() {
    let env = env();
    env.azure.throttle_next(2, 7);
    for answer in [env.azure_token(TENANT, &[]).await, env.discover(TENANT).await] {
        assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(answer.body.safe_message(&[]), "Too Many Requests");
        assert_eq!(retry_after(&answer.headers, Timestamp::now()), Some(Duration::from_secs(7)));
    }
    env.azure.fail_next(1, 503);
    let failed = env.azure_token(TENANT, &[]).await;
    assert_eq!(failed.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json_of(&failed)["error"], "temporarily_unavailable");
    assert_eq!(env.azure_token(TENANT, &[]).await.status, StatusCode::OK);
    assert_eq!((env.azure.token_requests(), env.azure.discovery_requests()), (3, 1));
}

#[tokio::test]
async fn graph_reads_password_credentials() {
    let env = env();
    let path = format!("/v1.0/applications(appId='{CLIENT}')");

    let anonymous = json_of(&env.graph_app(None, &path).await);
    assert_eq!(anonymous["error"]["code"], "InvalidAuthenticationToken");
    assert!(anonymous["error"]["innerError"]["request-id"].is_string() && anonymous["error"]["innerError"]["date"].is_string());
    assert_eq!(env.graph_app(Some("forged"), &path).await.status, StatusCode::UNAUTHORIZED);

    let token = env.graph_token().await;
    let denied = env.graph_app(Some(&token), &path).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert_eq!(json_of(&denied)["error"]["code"], "Authorization_RequestDenied");
    assert_eq!(json_of(&denied)["error"]["message"], "Insufficient privileges to complete the operation.");

    env.azure.set_graph_read_all(TENANT, CLIENT, true);
    let key_id = env.azure.add_secret(TENANT, CLIENT, "xyz8Q~another", in_days(10));
    let app = json_of(&env.graph_app(Some(&token), &path).await);
    assert_eq!(app["appId"], CLIENT);
    let credentials = app["passwordCredentials"].as_array().unwrap();
    assert_eq!(credentials.len(), 2);
    let added = credentials.iter().find(|c| c["keyId"] == key_id.as_str()).unwrap();
    assert_eq!((added["hint"].as_str(), &added["secretText"], &added["customKeyIdentifier"]), (Some("xyz"), &Value::Null, &Value::Null));
    let end: Timestamp = added["endDateTime"].as_str().unwrap().parse().unwrap();
    assert!(end > in_days(9) && added["startDateTime"].as_str().unwrap().ends_with('Z'));
    assert!(credentials.iter().any(|c| c["hint"] == "abc"));

    let selected = json_of(&env.graph_app(Some(&token), &format!("{path}?$select=id,passwordCredentials")).await);
    assert!(selected.get("displayName").is_none() && selected["passwordCredentials"].is_array());
    let by_object_id = json_of(&env.graph_app(Some(&token), &format!("/v1.0/applications/{}", app["id"].as_str().unwrap())).await);
    assert_eq!(by_object_id["appId"], CLIENT);

    let missing = env.graph_app(Some(&token), "/v1.0/applications(appId='99999999-9999-9999-9999-999999999999')").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(json_of(&missing)["error"]["code"], "Request_ResourceNotFound");
    let by_app_id_path = env.graph_app(Some(&token), &format!("/v1.0/applications/{CLIENT}")).await;
    assert_eq!(by_app_id_path.status, StatusCode::NOT_FOUND);

    env.azure.remove_secret(TENANT, CLIENT, &key_id);
    let app = json_of(&env.graph_app(Some(&token), &path).await);
    assert_eq!(app["passwordCredentials"].as_array().unwrap().len(), 1);
    assert_eq!(env.azure.graph_requests(), 9);
}

#[tokio::test]
async fn auth0_token_and_api_authorization() {
    let env = env();
    let audience = format!("https://{AUTH0}/api/v2/");
    let good = json!({"grant_type": "client_credentials", "client_id": M2M, "client_secret": M2M_SECRET, "audience": audience});

    let answer = env.auth0_token_answer(good.clone()).await;
    let body = json_of(&answer);
    assert_eq!((body["token_type"].as_str(), body["expires_in"].as_u64()), (Some("Bearer"), Some(86_400)));
    // add_m2m_client grants the connection-options scopes too, as an application set up today has.
    assert_eq!(body["scope"], format!("{} read:connections_options update:connections_options", ALL_SCOPES.join(" ")));

    let mut wrong_audience = good.clone();
    wrong_audience["audience"] = json!(format!("https://{AUTH0}/api/v2"));
    let answer = env.auth0_token_answer(wrong_audience).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert_eq!(
        json_of(&answer),
        json!({"error": "access_denied", "error_description": format!("Service not enabled within domain: https://{AUTH0}/api/v2")})
    );

    let mut wrong_secret = good.clone();
    wrong_secret["client_secret"] = json!("nope");
    let answer = env.auth0_token_answer(wrong_secret).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(json_of(&answer), json!({"error": "access_denied", "error_description": "Unauthorized"}));

    // Form bodies are accepted too, and the TTL is configurable.
    env.auth0.set_token_ttl(60);
    let form = [("grant_type", "client_credentials"), ("client_id", M2M), ("client_secret", M2M_SECRET), ("audience", audience.as_str())];
    let answer = env.up.send(env.up.request(Method::POST, AUTH0, "/oauth/token").form(&form)).await.unwrap();
    assert_eq!(json_of(&answer)["expires_in"], 60);
    let token = json_of(&answer)["access_token"].as_str().unwrap().to_owned();

    env.auth0.set_m2m_secret(M2M, "rotated");
    assert_eq!(env.auth0_token_answer(good).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(env.api(&token, Method::GET, "/api/v2/connections", None).await.status, StatusCode::OK);

    let anonymous = env.up.send(env.up.request(Method::GET, AUTH0, "/api/v2/connections")).await.unwrap();
    assert_api_error(&anonymous, 401, None, "Missing authentication");
    assert_api_error(&env.api("forged", Method::GET, "/api/v2/connections", None).await, 401, None, "Invalid token");

    env.auth0.add_m2m_client("reader", "reader-secret", &["read:connections"]);
    let reader = env.auth0_token("reader", "reader-secret").await;
    assert_eq!(env.api(&reader, Method::GET, "/api/v2/connections", None).await.status, StatusCode::OK);
    let denied = env.api(&reader, Method::POST, "/api/v2/connections", Some(json!({"name": "x", "strategy": "waad"}))).await;
    assert_api_error(&denied, 403, Some("insufficient_scope"), "Insufficient scope, expected any of: create:connections");

    env.auth0.revoke_tokens();
    assert_eq!(env.api(&token, Method::GET, "/api/v2/connections", None).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(env.auth0.token_requests(), 6);
    assert_eq!(env.auth0.writes(), 0);
}

#[tokio::test]
async fn auth0_connection_lifecycle_and_quirks() {
    let env = env();
    let token = env.auth0_token(M2M, M2M_SECRET).await;
    let created = env.create_waad(&token, "acme-entra").await;
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(id.len() == 20 && id.starts_with("con_") && id[4..].chars().all(|c| c.is_ascii_alphanumeric()), "{id}");
    assert_eq!((created["display_name"].as_str(), created["strategy"].as_str()), (Some("acme-entra"), Some("waad")));
    assert_eq!(
        (&created["realms"], &created["enabled_clients"], &created["is_domain_connection"]),
        (&json!(["acme-entra"]), &json!([]), &json!(false))
    );
    assert_eq!(created["options"]["app_domain"], AUTH0);
    assert!(created["options"]["thumbprints"].is_array() && created["provisioning_ticket_url"].is_string());

    // Reads return the secret in plain text (observed behaviour, used for drift detection).
    let read = json_of(&env.api(&token, Method::GET, &format!("/api/v2/connections/{id}"), None).await);
    assert_eq!(read["options"]["client_secret"], SECRET);

    let duplicate = env
        .api(
            &token,
            Method::POST,
            "/api/v2/connections",
            Some(json!({"name": "acme-entra", "strategy": "waad", "options": {"client_id": "x"}})),
        )
        .await;
    assert_api_error(&duplicate, 409, Some("connection_conflict"), "A connection with the same name already exists");
    for bad in [
        json!({"name": "bad_name", "strategy": "waad", "options": {"client_id": "x"}}),
        json!({"name": "-bad", "strategy": "waad", "options": {"client_id": "x"}}),
        json!({"name": "no-strategy"}),
        json!({"name": "no-client-id", "strategy": "waad", "options": {}}),
        json!({"name": "extra", "strategy": "waad", "options": {"client_id": "x"}, "id": "con_x"}),
        json!(["not", "an", "object"]),
    ] {
        let answer = env.api(&token, Method::POST, "/api/v2/connections", Some(bad.clone())).await;
        assert_eq!((answer.status, json_of(&answer)["errorCode"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_body")), "{bad}");
    }
    let google = env.api(&token, Method::POST, "/api/v2/connections", Some(json!({"name": "google", "strategy": "google-oauth2"}))).await;
    assert_eq!(google.status, StatusCode::CREATED);

    let by_name = json_of(&env.api(&token, Method::GET, "/api/v2/connections?name=acme-entra&strategy=waad", None).await);
    assert_eq!(by_name.as_array().map(|a| a.len()), Some(1));
    assert_eq!(by_name[0]["id"], id.as_str());
    let none = json_of(&env.api(&token, Method::GET, "/api/v2/connections?name=acme", None).await);
    assert_eq!(none, json!([]));
    let both = json_of(&env.api(&token, Method::GET, "/api/v2/connections?strategy=waad&strategy=google-oauth2", None).await);
    assert_eq!(both.as_array().unwrap().len(), 2);
    let paged = json_of(&env.api(&token, Method::GET, "/api/v2/connections?per_page=1&page=1&include_totals=true", None).await);
    assert_eq!((&paged["start"], &paged["limit"], &paged["total"]), (&json!(1), &json!(1), &json!(2)));
    assert_eq!(paged["connections"][0]["name"], "google");
    let bad_query = env.api(&token, Method::GET, "/api/v2/connections?per_page=500", None).await;
    assert_eq!(json_of(&bad_query)["errorCode"], "invalid_query_string");

    // name and strategy are immutable; the schema rejects them.
    let path = format!("/api/v2/connections/{id}");
    let renamed = env.api(&token, Method::PATCH, &path, Some(json!({"name": "other", "display_name": "x"}))).await;
    assert_api_error(
        &renamed,
        400,
        Some("invalid_body"),
        "Payload validation error: 'Additional properties not allowed: name' on property #/ (Connection update)",
    );
    let restrategized = env.api(&token, Method::PATCH, &path, Some(json!({"strategy": "samlp"}))).await;
    assert_eq!(restrategized.status, StatusCode::BAD_REQUEST);

    // options replaces the whole object: server-set fields vanish unless resent.
    let patch = json!({"display_name": "Acme", "options": {"client_id": CLIENT, "client_secret": "rotated8Q~value"}});
    let patched = json_of(&env.api(&token, Method::PATCH, &path, Some(patch)).await);
    assert_eq!(patched["display_name"], "Acme");
    assert_eq!(patched["options"], json!({"client_id": CLIENT, "client_secret": "rotated8Q~value"}));
    assert_eq!(env.auth0.connection(&id).unwrap()["options"]["client_secret"], "rotated8Q~value");

    // An absent display_name is reset to the name; other fields stay.
    let patched = json_of(&env.api(&token, Method::PATCH, &path, Some(json!({"is_domain_connection": true}))).await);
    assert_eq!((patched["display_name"].as_str(), &patched["is_domain_connection"]), (Some("acme-entra"), &json!(true)));
    assert_eq!(patched["options"]["client_secret"], "rotated8Q~value");
    let no_client_id = env.api(&token, Method::PATCH, &path, Some(json!({"options": {"client_secret": "x"}}))).await;
    assert_eq!(no_client_id.status, StatusCode::BAD_REQUEST);

    let deleted = env.api(&token, Method::DELETE, &path, None).await;
    assert_eq!(deleted.status, StatusCode::ACCEPTED);
    let deleted_at: Timestamp = json_of(&deleted)["deleted_at"].as_str().unwrap().parse().unwrap();
    assert!((Timestamp::now() - SignedDuration::from_secs(60)) < deleted_at);
    for method in [Method::GET, Method::PATCH, Method::DELETE] {
        let body = (method == Method::PATCH).then(|| json!({"display_name": "x"}));
        let answer = env.api(&token, method, &path, body).await;
        assert_api_error(&answer, 404, Some("inexistent_connection"), "The connection does not exist");
    }
    assert!(env.auth0.connection(&id).is_none() && env.auth0.connection_by_name("google").is_some());
    // create, create google, two PATCHes, one DELETE; rejected writes do not count.
    assert_eq!(env.auth0.writes(), 5);
    let requests = env.auth0.requests();
    assert_eq!(requests[0], ("POST".to_owned(), "/oauth/token".to_owned()));
    assert_eq!(requests[1], ("POST".to_owned(), "/api/v2/connections".to_owned()));
    assert_eq!(requests.last().unwrap(), &("DELETE".to_owned(), path.clone()));
}

#[tokio::test]
async fn auth0_rate_limit_headers_and_faults() {
    let env = env();
    let token = env.auth0_token(M2M, M2M_SECRET).await;
    let answer = env.api(&token, Method::GET, "/api/v2/connections", None).await;
    let header = |a: &Answer, name: &str| a.headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<i64>().ok());
    assert_eq!(header(&answer, "x-ratelimit-limit"), Some(50));
    assert!(header(&answer, "x-ratelimit-remaining").is_some_and(|r| (0..50).contains(&r)));
    assert!(header(&answer, "x-ratelimit-reset").is_some_and(|r| r >= Timestamp::now().as_second()));

    env.auth0.rate_limit_next(1, 30);
    let limited = env.api(&token, Method::GET, "/api/v2/connections", None).await;
    assert_api_error(&limited, 429, Some("too_many_requests"), "Global limit has been reached");
    assert_eq!(header(&limited, "x-ratelimit-remaining"), Some(0));
    assert!(limited.headers.get("retry-after").is_none());
    let wait = retry_after(&limited.headers, Timestamp::now()).unwrap();
    assert!((Duration::from_secs(28)..=Duration::from_secs(30)).contains(&wait), "{wait:?}");

    env.auth0.fail_next(1, 503);
    let failed = env.api(&token, Method::GET, "/api/v2/connections", None).await;
    assert_eq!(failed.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(failed.headers.contains_key("x-ratelimit-limit"));
    assert_eq!(env.api(&token, Method::GET, "/api/v2/connections", None).await.status, StatusCode::OK);
}

#[tokio::test]
async fn auth0_enabled_clients_paging_and_delta() {
    let env = env();
    let token = env.auth0_token(M2M, M2M_SECRET).await;
    let id = env.create_waad(&token, "acme").await["id"].as_str().unwrap().to_owned();
    let clients_path = format!("/api/v2/connections/{id}/clients");
    let delta = |items: &[(&str, bool)]| Some(Value::Array(items.iter().map(|(c, s)| json!({"client_id": c, "status": s})).collect()));

    let answer = env.api(&token, Method::PATCH, &clients_path, delta(&[("app-a", true), ("app-b", true), ("app-c", true)])).await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT);
    let first = json_of(&env.api(&token, Method::GET, &format!("{clients_path}?take=2"), None).await);
    assert_eq!(first["clients"], json!([{"client_id": "app-a"}, {"client_id": "app-b"}]));
    let next = first["next"].as_str().unwrap();
    let last = json_of(&env.api(&token, Method::GET, &format!("{clients_path}?take=2&from={next}"), None).await);
    assert_eq!(last, json!({"clients": [{"client_id": "app-c"}]}));

    let answer = env.api(&token, Method::PATCH, &clients_path, delta(&[("app-b", false), ("app-d", true)])).await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT);
    let expected: std::collections::BTreeSet<String> = ["app-a", "app-c", "app-d"].map(String::from).into();
    assert_eq!(env.auth0.enabled_clients(&id), expected);
    let all = json_of(&env.api(&token, Method::GET, &clients_path, None).await);
    assert_eq!((all["clients"].as_array().unwrap().len(), all.get("next")), (3, None));

    let names: Vec<String> = (0..51).map(|i| format!("app-{i}")).collect();
    let too_many: Vec<(&str, bool)> = names.iter().map(|n| (n.as_str(), true)).collect();
    for bad in [delta(&too_many), Some(json!({"client_id": "x", "status": true})), Some(json!([{"client_id": "x"}]))] {
        let answer = env.api(&token, Method::PATCH, &clients_path, bad).await;
        assert_eq!((answer.status, json_of(&answer)["errorCode"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_body")));
    }
    let missing = env.api(&token, Method::GET, "/api/v2/connections/con_missing/clients", None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(env.auth0.writes(), 3);
}

#[tokio::test]
async fn auth0_test_helpers_seed_and_drift() {
    let env = env();
    let token = env.auth0_token(M2M, M2M_SECRET).await;
    let id =
        env.auth0.insert_connection(json!({"name": "seeded", "strategy": "waad", "options": {"client_id": CLIENT, "client_secret": "s"}}));
    env.auth0.edit_connection(&id, |c| c["options"]["client_secret"] = json!("changed-in-dashboard"));
    let read = json_of(&env.api(&token, Method::GET, &format!("/api/v2/connections/{id}"), None).await);
    assert_eq!((read["options"]["client_secret"].as_str(), read["display_name"].as_str()), (Some("changed-in-dashboard"), Some("seeded")));
    assert_eq!(env.auth0.connections().len(), 1);
    assert_eq!(env.auth0.connection_by_name("seeded").unwrap()["id"], id.as_str());
}

#[tokio::test]
async fn tls_is_verified_and_shutdown_refuses_connections() {
    let env = env();
    let mut overrides = EndpointOverrides::default();
    overrides.insert(LOGIN, env.azure.base_url());
    let untrusting = Upstream::new(overrides, None, Duration::from_secs(5)).unwrap();
    assert!(untrusting.send(untrusting.request(Method::GET, LOGIN, "/common/v2.0/.well-known/openid-configuration")).await.is_err());

    assert_eq!(env.discover("common").await.status, StatusCode::OK);
    env.azure.shutdown();
    // A fresh client (no pooled connection) sees the refusal itself.
    let fresh = Upstream::new(overrides_for(&env), Some(env._ca_file.path()), Duration::from_secs(5)).unwrap();
    let err = fresh.send(fresh.request(Method::GET, LOGIN, "/common/v2.0/.well-known/openid-configuration")).await.unwrap_err();
    assert!(matches!(err, TransportError::Connect(_)), "{err:?}");
    // The shared client's pooled connection was closed by the server: an error either way.
    assert!(env.up.send(env.up.request(Method::GET, LOGIN, "/common/v2.0/.well-known/openid-configuration")).await.is_err());
    // The other emulator is unaffected.
    assert_eq!(env.auth0_token_answer(json!({})).await.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn azure_national_cloud_names_its_own_hosts() {
    install_crypto_provider();
    let ca = TestCa::new();
    let ca_file = tempfile::NamedTempFile::new().unwrap();
    ca.write_pem(ca_file.path()).unwrap();
    let cloud = AzureCloud { login_host: "login.microsoftonline.us".into(), graph_host: "graph.microsoft.us".into() };
    let azure = AzureEmulator::start_cloud(&ca, cloud.clone()).unwrap();
    azure.add_tenant(TENANT, &[]);
    azure.add_app(TENANT, CLIENT);
    azure.add_secret(TENANT, CLIENT, SECRET, in_days(1));
    let mut overrides = EndpointOverrides::default();
    overrides.insert(&cloud.login_host, azure.base_url());
    let up = Upstream::new(overrides, Some(ca_file.path()), Duration::from_secs(5)).unwrap();

    let discovery = up.request(Method::GET, &cloud.login_host, &format!("/{TENANT}/v2.0/.well-known/openid-configuration"));
    let doc = json_of(&up.send(discovery).await.unwrap());
    assert_eq!(doc["issuer"], format!("https://login.microsoftonline.us/{TENANT}/v2.0"));
    assert_eq!(
        (doc["msgraph_host"].as_str(), doc["cloud_instance_name"].as_str()),
        (Some("graph.microsoft.us"), Some("microsoftonline.us"))
    );

    let token = |scope: &'static str| {
        let form = [("grant_type", "client_credentials"), ("client_id", CLIENT), ("client_secret", SECRET), ("scope", scope)];
        up.request(Method::POST, &cloud.login_host, &format!("/{TENANT}/oauth2/v2.0/token")).form(&form)
    };
    assert_eq!(up.send(token("https://graph.microsoft.us/.default")).await.unwrap().status, StatusCode::OK);
    let global_scope = up.send(token(SCOPE)).await.unwrap();
    assert_eq!(json_of(&global_scope)["error_codes"][0], 500011);
    assert_eq!(json_of(&global_scope)["error_uri"], "https://login.microsoftonline.us/error?code=500011");
}

/// addPassword as documented: every field optional, `startDateTime` now, `endDateTime` two years
/// later, `secretText` once (never in a read), `hint` its first three characters; removePassword
/// answers 204; both need Application.ReadWrite.OwnedBy on an owned application.
#[tokio::test]
async fn graph_add_password_defaults_and_remove_password() {
    let env = env();
    let token = env.graph_token().await;
    let post = |path: &str, body: Value| {
        let request = env.up.request(Method::POST, GRAPH, path).bearer_auth(&token).json(&body);
        env.up.send(request)
    };
    let add = format!("/v1.0/applications(appId='{CLIENT}')/addPassword");
    let denied = post(&add, json!({})).await.unwrap();
    assert_eq!(denied.status, StatusCode::FORBIDDEN, "without the permission and the ownership");
    assert_eq!(json_of(&denied)["error"]["code"], "Authorization_RequestDenied");
    env.azure.set_graph_write_owned_by(TENANT, CLIENT, true);
    env.azure.add_owner(TENANT, CLIENT, CLIENT);
    let created = post(&add, json!({})).await.unwrap();
    assert_eq!(created.status, StatusCode::OK);
    let credential = json_of(&created);
    let text = credential["secretText"].as_str().unwrap();
    assert_eq!(credential["hint"].as_str().unwrap(), &text[..3]);
    assert_eq!(credential["displayName"], "");
    let start: Timestamp = credential["startDateTime"].as_str().unwrap().parse().unwrap();
    let end: Timestamp = credential["endDateTime"].as_str().unwrap().parse().unwrap();
    assert!(Timestamp::now().duration_since(start).abs() < SignedDuration::from_secs(5), "starts now");
    let two_years = end.duration_since(start);
    assert!((SignedDuration::from_hours(2 * 365 * 24)..=SignedDuration::from_hours(2 * 366 * 24)).contains(&two_years), "{two_years:?}");
    let read = env.graph_app(Some(&token), &format!("/v1.0/applications(appId='{CLIENT}')")).await;
    assert!(!String::from_utf8_lossy(&read.body.0).contains(text), "the value is never read back");
    let key_id = credential["keyId"].as_str().unwrap();
    let removed = post(&format!("/v1.0/applications(appId='{CLIENT}')/removePassword"), json!({"keyId": key_id})).await.unwrap();
    assert_eq!(removed.status, StatusCode::NO_CONTENT);
}
