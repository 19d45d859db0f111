//! Emulator of the Entra ID (Azure AD) login endpoints (OIDC discovery, client-credentials token)
//! and of the Microsoft Graph calls the operator makes (the application and its secrets; the app
//! registration, service principal and permission grants in [`registration`]), all on one HTTPS
//! port.
//!
//! Error bodies, codes and statuses follow the Microsoft identity platform's documentation and
//! what the real service answers: AADSTS errors (<https://learn.microsoft.com/entra/identity-platform/reference-error-codes>)
//! for discovery and the client-credentials grant
//! (<https://learn.microsoft.com/entra/identity-platform/v2-oauth2-client-creds-grant-flow>),
//! Graph error objects (<https://learn.microsoft.com/graph/errors>), and throttling as a 429 with
//! `Retry-After` and a plain-text body. So the operator's classification is tested against
//! realistic answers. URLs inside answers name the emulated cloud's real hosts, never the
//! emulator's address: the operator maps hosts to addresses through its endpoint overrides.

#![allow(clippy::result_large_err, reason = "early returns carry whole HTTP answers; size does not matter in a test emulator")]

mod passwords;

pub use passwords::{PasswordPolicy, RemovedPassword};
mod registration;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, RawQuery, State as AxState},
    http::{HeaderMap, Method, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};

pub use self::registration::{GRAPH_SCOPES, GRAPH_SP_OBJECT_ID};
use base64::Engine as _;
use jiff::Timestamp;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{
    Reply,
    kit::{Emulator, Fault, KitBuilder, RequestMatch},
    lock,
    tls::TestCa,
    tokens::{IssuedTokens, Presented},
};

/// Access-token lifetime the v2 endpoint reports.
const TOKEN_TTL_SECS: i64 = 3599;
/// The Microsoft Graph application id, accepted in place of the Graph URL in a scope.
const GRAPH_APP_ID: &str = "00000003-0000-0000-c000-000000000000";

/// The hosts of the emulated cloud, as they appear in discovery documents and scopes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AzureCloud {
    pub login_host: String,
    pub graph_host: String,
}

impl Default for AzureCloud {
    fn default() -> Self {
        Self { login_host: "login.microsoftonline.com".into(), graph_host: "graph.microsoft.com".into() }
    }
}

/// A running emulator; clones share the state and the server, which stops with the last clone.
pub type AzureEmulator = Emulator<AzureState>;

type Shared = Arc<Mutex<AzureState>>;

/// The emulated cloud: its tenants, their apps and the tokens issued to them.
pub struct AzureState {
    cloud: AzureCloud,
    /// Keyed by lower-case tenant GUID.
    tenants: BTreeMap<String, Tenant>,
    tokens: IssuedTokens<Caller>,
    /// Token requests that reached the token endpoint, by lower-case client id.
    token_requests_by_client: HashMap<String, usize>,
    /// addPassword's rules: replication delay, tenant policy, credential limit.
    policy: PasswordPolicy,
    /// Called at each removePassword, before the credential goes.
    removal_hook: Option<passwords::RemovalHook>,
}

struct Tenant {
    domains: Vec<String>,
    /// Keyed by lower-case client (app) id.
    apps: BTreeMap<String, App>,
}

struct App {
    app_id: String,
    object_id: String,
    display_name: String,
    disabled: bool,
    graph_read_all: bool,
    /// Application.ReadWrite.OwnedBy: addPassword and removePassword on the apps it owns.
    graph_write_owned_by: bool,
    /// Lower-case client ids of the service principals that own this app.
    owners: Vec<String>,
    secrets: Vec<Secret>,
    registration: registration::Registration,
}

struct Secret {
    key_id: String,
    value: String,
    display_name: String,
    start: Timestamp,
    end: Timestamp,
    /// Until this instant the token endpoint does not know the secret yet (replication).
    usable_from: Timestamp,
}

/// The app a token was issued to.
struct Caller {
    tenant: String,
    client_id: String,
}

impl AzureEmulator {
    /// Starts an emulator of the global cloud. Needs a Tokio runtime context.
    pub fn start(ca: &TestCa) -> std::io::Result<Self> {
        Self::start_cloud(ca, AzureCloud::default())
    }

    /// Starts an emulator whose answers name `cloud`'s hosts (e.g. a national cloud).
    pub fn start_cloud(ca: &TestCa, cloud: AzureCloud) -> std::io::Result<Self> {
        let state = Arc::new(Mutex::new(AzureState {
            cloud,
            tenants: BTreeMap::new(),
            tokens: IssuedTokens::new(TOKEN_TTL_SECS),
            token_requests_by_client: HashMap::new(),
            policy: PasswordPolicy::default(),
            removal_hook: None,
        }));
        let errors = state.clone();
        let kit = KitBuilder::new("azure", move |status, path| lock(&errors).error_body(status, path));
        let app = kit.wrap(router(state.clone()));
        Ok(Emulator::new(state, kit.serve(app, ca)?))
    }

    pub fn cloud(&self) -> AzureCloud {
        self.state().cloud.clone()
    }

    pub fn add_tenant(&self, tenant_id: &str, domains: &[&str]) {
        let tenant = Tenant { domains: domains.iter().map(|d| d.to_ascii_lowercase()).collect(), apps: BTreeMap::new() };
        self.state().tenants.insert(tenant_id.to_ascii_lowercase(), tenant);
    }

    /// Registers an app (enabled, without Graph permission); returns its object id.
    pub fn add_app(&self, tenant_id: &str, client_id: &str) -> String {
        let object_id = Uuid::new_v4().to_string();
        let app = App {
            app_id: client_id.to_owned(),
            object_id: object_id.clone(),
            display_name: format!("emulated app {client_id}"),
            disabled: false,
            graph_read_all: false,
            graph_write_owned_by: false,
            owners: Vec::new(),
            secrets: Vec::new(),
            registration: registration::Registration::new(),
        };
        let mut st = self.state();
        let tenant = st.tenants.get_mut(&tenant_id.to_ascii_lowercase()).unwrap_or_else(|| panic!("unknown tenant {tenant_id}"));
        tenant.apps.insert(client_id.to_ascii_lowercase(), app);
        object_id
    }

    /// Adds a password credential starting now; returns its keyId.
    pub fn add_secret(&self, tenant_id: &str, client_id: &str, value: &str, end: Timestamp) -> String {
        let key_id = Uuid::new_v4().to_string();
        self.with_app(tenant_id, client_id, |app| {
            let display_name = format!("emulated secret {}", app.secrets.len() + 1);
            let now = Timestamp::now();
            let secret = Secret { key_id: key_id.clone(), value: value.to_owned(), display_name, start: now, end, usable_from: now };
            app.secrets.push(secret);
        });
        key_id
    }

    pub fn remove_secret(&self, tenant_id: &str, client_id: &str, key_id: &str) {
        self.with_app(tenant_id, client_id, |app| app.secrets.retain(|s| !s.key_id.eq_ignore_ascii_case(key_id)));
    }

    pub fn set_app_disabled(&self, tenant_id: &str, client_id: &str, disabled: bool) {
        self.with_app(tenant_id, client_id, |app| app.disabled = disabled);
    }

    /// Grants or revokes the Application.Read.All application permission.
    pub fn set_graph_read_all(&self, tenant_id: &str, client_id: &str, granted: bool) {
        self.with_app(tenant_id, client_id, |app| app.graph_read_all = granted);
    }

    /// The next `n` requests of any kind get 429 with `Retry-After` and a plain-text body.
    /// Queued behind earlier faults that match first.
    pub fn throttle_next(&self, n: usize, retry_after_secs: u64) {
        self.kit().faults().push(Fault::status(429).times(n).retry_after(retry_after_secs));
    }

    /// Token requests so far (answered or not).
    pub fn token_requests(&self) -> usize {
        self.kit().log().count(&RequestMatch::any().method(Method::POST).path_where(|p| tenant_route(p, &["oauth2", "v2.0", "token"])))
    }

    /// Token requests of one app that reached the token endpoint (an injected fault answers
    /// before the form, and so the client id, is read).
    pub fn token_requests_for(&self, client_id: &str) -> usize {
        self.state().token_requests_by_client.get(&client_id.to_ascii_lowercase()).copied().unwrap_or(0)
    }

    /// OIDC discovery requests so far (answered or not).
    pub fn discovery_requests(&self) -> usize {
        let discovery = |p: &str| tenant_route(p, &["v2.0", ".well-known", "openid-configuration"]);
        self.kit().log().count(&RequestMatch::any().method(Method::GET).path_where(discovery))
    }

    /// Microsoft Graph reads so far (answered or not).
    pub fn graph_requests(&self) -> usize {
        self.kit().log().count(&RequestMatch::any().method(Method::GET).under("/v1.0"))
    }

    fn with_app(&self, tenant_id: &str, client_id: &str, f: impl FnOnce(&mut App)) {
        let mut st = self.state();
        let app = st
            .tenants
            .get_mut(&tenant_id.to_ascii_lowercase())
            .and_then(|t| t.apps.get_mut(&client_id.to_ascii_lowercase()))
            .unwrap_or_else(|| panic!("unknown app {client_id} in tenant {tenant_id}"));
        f(app);
    }
}

fn router(state: Shared) -> Router {
    Router::new()
        .route("/{tenant}/v2.0/.well-known/openid-configuration", get(discovery))
        .route("/{tenant}/oauth2/v2.0/token", post(token))
        .route("/v1.0/{*rest}", get(graph).patch(graph_patch).post(passwords::graph_write))
        .fallback(|| async { StatusCode::NOT_FOUND })
        .with_state(state)
}

/// `/{tenant}/` followed by exactly `tail`.
fn tenant_route(path: &str, tail: &[&str]) -> bool {
    let mut segments = path.trim_start_matches('/').split('/');
    segments.next().is_some_and(|tenant| !tenant.is_empty()) && segments.eq(tail.iter().copied())
}

async fn discovery(AxState(s): AxState<Shared>, Path(tenant): Path<String>) -> Response {
    lock(&s).discovery(&tenant)
}

async fn token(AxState(s): AxState<Shared>, Path(tenant): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    lock(&s).token(&tenant, &headers, &body)
}

async fn graph(AxState(s): AxState<Shared>, Path(rest): Path<String>, RawQuery(query): RawQuery, headers: HeaderMap) -> Response {
    let state = lock(&s);
    let reply = if rest.starts_with("servicePrincipals") {
        state.read_service_principal(&rest, query.as_deref(), &headers)
    } else {
        state.read_application(&rest, query.as_deref(), &headers)
    };
    reply.unwrap_or_else(|e| e)
}

async fn graph_patch(AxState(s): AxState<Shared>, Path(rest): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    lock(&s).patch_application(&rest, &headers, &body).unwrap_or_else(|e| e)
}

/// What a valid `{tenant}` path segment names.
enum TenantRef {
    Alias(&'static str),
    /// A registered tenant, by lower-case GUID.
    Known(String),
}

fn is_guid(s: &str) -> bool {
    s.len() == 36 && Uuid::try_parse(s).is_ok()
}

/// A dotted host name; a single label (such as a GUID missing a character) is not one.
fn is_dns_name(s: &str) -> bool {
    let label = |l: &str| {
        (1..=63).contains(&l.len()) && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') && !l.starts_with('-') && !l.ends_with('-')
    };
    s.len() <= 253 && s.contains('.') && s.split('.').all(label)
}

impl AzureState {
    /// Resolves a `{tenant}` segment (GUID in any case, or a registered domain), or answers
    /// 90002 for a well-formed unknown one and 900023 for one that is neither GUID nor DNS name.
    fn resolve(&self, raw: &str) -> Result<TenantRef, Response> {
        let lower = raw.to_ascii_lowercase();
        let known = match lower.as_str() {
            "common" => return Ok(TenantRef::Alias("common")),
            "organizations" => return Ok(TenantRef::Alias("organizations")),
            "consumers" => return Ok(TenantRef::Alias("consumers")),
            id if is_guid(id) => self.tenants.contains_key(id).then(|| lower.clone()),
            domain if is_dns_name(domain) => {
                self.tenants.iter().find(|(_, t)| t.domains.iter().any(|d| d == domain)).map(|(id, _)| id.clone())
            }
            _ => {
                let message = format!("Specified tenant identifier '{raw}' is neither a valid DNS name, nor a valid external domain.");
                return Err(self.aad(StatusCode::BAD_REQUEST, "invalid_request", 900023, &message));
            }
        };
        known.map(TenantRef::Known).ok_or_else(|| {
            let message = format!("Tenant '{raw}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant.");
            self.aad(StatusCode::BAD_REQUEST, "invalid_tenant", 90002, &message)
        })
    }

    /// An AADSTS error body as the login service sends it.
    fn aad(&self, status: StatusCode, error: &str, code: u32, message: &str) -> Response {
        let (trace, correlation) = (Uuid::new_v4(), Uuid::new_v4());
        let timestamp = Timestamp::now().strftime("%Y-%m-%d %H:%M:%SZ").to_string();
        let description =
            format!("AADSTS{code}: {message}\r\nTrace ID: {trace}\r\nCorrelation ID: {correlation}\r\nTimestamp: {timestamp}");
        let body = json!({
            "error": error,
            "error_description": description,
            "error_codes": [code],
            "timestamp": timestamp,
            "trace_id": trace.to_string(),
            "correlation_id": correlation.to_string(),
            "error_uri": format!("https://{}/error?code={code}", self.cloud.login_host),
        });
        (status, Json(body)).into_response()
    }

    fn missing_param(&self, name: &str) -> Response {
        let message = format!("The request body must contain the following parameter: '{name}'.");
        self.aad(StatusCode::BAD_REQUEST, "invalid_request", 900144, &message)
    }

    /// The answer to an injected status: throttling in plain text (as Entra's edge sends it),
    /// Graph's error object under `/v1.0`, an AADSTS error elsewhere.
    fn error_body(&self, status: StatusCode, path: &str) -> Response {
        match status {
            StatusCode::TOO_MANY_REQUESTS => (status, "Too Many Requests").into_response(),
            _ if path.starts_with("/v1.0/") => graph_error(status, "serviceNotAvailable", "Service unavailable. Please try again later."),
            StatusCode::SERVICE_UNAVAILABLE => {
                self.aad(status, "temporarily_unavailable", 90033, "A transient error has occurred. Please try again.")
            }
            _ => self.aad(
                status,
                "server_error",
                50000,
                "There was an error issuing a token or an issue with our sign-in service. Please try again.",
            ),
        }
    }

    fn discovery(&self, raw: &str) -> Response {
        let (segment, issuer_tenant, region) = match self.resolve(raw) {
            Ok(TenantRef::Known(id)) => (id.clone(), id, json!("NA")),
            Ok(TenantRef::Alias(alias)) => (alias.to_owned(), "{tenantid}".to_owned(), Value::Null),
            Err(r) => return r,
        };
        let (login, graph) = (&self.cloud.login_host, &self.cloud.graph_host);
        let base = format!("https://{login}/{segment}");
        let doc = json!({
            "token_endpoint": format!("{base}/oauth2/v2.0/token"),
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": format!("{base}/discovery/v2.0/keys"),
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": format!("https://{login}/{issuer_tenant}/v2.0"),
            "request_uri_parameter_supported": false,
            "userinfo_endpoint": format!("https://{graph}/oidc/userinfo"),
            "authorization_endpoint": format!("{base}/oauth2/v2.0/authorize"),
            "device_authorization_endpoint": format!("{base}/oauth2/v2.0/devicecode"),
            "http_logout_supported": true,
            "frontchannel_logout_supported": true,
            "end_session_endpoint": format!("{base}/oauth2/v2.0/logout"),
            "claims_supported": ["sub", "iss", "cloud_instance_name", "cloud_instance_host_name", "cloud_graph_host_name", "msgraph_host", "aud", "exp", "iat", "auth_time", "acr", "nonce", "preferred_username", "name", "tid", "ver", "at_hash", "c_hash", "email"],
            "kerberos_endpoint": format!("{base}/kerberos"),
            "tenant_region_scope": region,
            "cloud_instance_name": login.strip_prefix("login.").unwrap_or(login),
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": graph,
            "rbac_url": "https://pas.windows.net",
        });
        Json(doc).into_response()
    }

    fn token(&mut self, raw_tenant: &str, headers: &HeaderMap, body: &[u8]) -> Response {
        let form: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
        let basic = basic_credentials(headers);
        let client_id = form.get("client_id").or(basic.as_ref().map(|(id, _)| id)).map(|id| id.to_ascii_lowercase());
        if let Some(id) = &client_id {
            *self.token_requests_by_client.entry(id.clone()).or_default() += 1;
        }
        let secret = form.get("client_secret").cloned().or(basic.map(|(_, secret)| secret)).filter(|s| !s.is_empty());
        self.client_credentials(raw_tenant, &form, client_id, secret).unwrap_or_else(|e| e)
    }

    fn client_credentials(
        &mut self,
        raw_tenant: &str,
        form: &HashMap<String, String>,
        client_id: Option<String>,
        secret: Option<String>,
    ) -> Reply {
        let resolved = self.resolve(raw_tenant)?;
        match form.get("grant_type").map(String::as_str) {
            None => return Err(self.missing_param("grant_type")),
            Some("client_credentials") => {}
            Some(other) => {
                let message = format!("The app requested an unsupported grant type '{other}'.");
                return Err(self.aad(StatusCode::BAD_REQUEST, "unsupported_grant_type", 70003, &message));
            }
        }
        if matches!(resolved, TenantRef::Alias("common" | "consumers")) {
            let message = "The grant type isn't supported over the /common or /consumers endpoints. Please use the /organizations or tenant-specific endpoint.";
            return Err(self.aad(StatusCode::BAD_REQUEST, "invalid_request", 9001023, message));
        }
        let client_id = client_id.ok_or_else(|| self.missing_param("client_id"))?;
        let scope = form.get("scope").ok_or_else(|| self.missing_param("scope"))?;
        self.check_scope(scope, raw_tenant)?;
        let tenant_id = match resolved {
            TenantRef::Known(id) => Some(id),
            // On /organizations the service guesses the tenant; here: the one holding the app.
            TenantRef::Alias(_) => self.tenants.iter().find(|(_, t)| t.apps.contains_key(&client_id)).map(|(id, _)| id.clone()),
        };
        // An app without a service principal in the tenant is not "installed" there: the same
        // AADSTS700016 as an unknown client id (reference/azure.md, token error table).
        let found = tenant_id.and_then(|t| self.tenants.get(&t)?.apps.get(&client_id).map(|a| (t, a)));
        let Some((tenant_id, app)) = found.filter(|(_, a)| a.registration.has_service_principal()) else {
            let message = format!(
                "Application with identifier '{client_id}' was not found in the directory '{raw_tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."
            );
            return Err(self.aad(StatusCode::BAD_REQUEST, "unauthorized_client", 700016, &message));
        };
        if app.disabled {
            let message = format!("Application '{}'({}) is disabled.", app.app_id, app.display_name);
            return Err(self.aad(StatusCode::BAD_REQUEST, "unauthorized_client", 7000112, &message));
        }
        let Some(secret) = secret else {
            let message = "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.";
            return Err(self.aad(StatusCode::UNAUTHORIZED, "invalid_client", 7000218, message));
        };
        let now = Timestamp::now();
        // A secret that has not replicated yet is unknown to the token endpoint.
        let matching: Vec<&Secret> = app.secrets.iter().filter(|s| s.value == secret && s.usable_from <= now).collect();
        if matching.is_empty() {
            let message = format!(
                "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{}'.",
                app.app_id
            );
            return Err(self.aad(StatusCode::UNAUTHORIZED, "invalid_client", 7000215, &message));
        }
        if matching.iter().all(|s| s.end <= now) {
            let message = format!(
                "The provided client secret keys for app '{}' are expired. Visit the Azure portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider using certificate credentials for added security: https://aka.ms/certCreds.",
                app.app_id
            );
            return Err(self.aad(StatusCode::UNAUTHORIZED, "invalid_client", 7000222, &message));
        }
        let access_token = self.tokens.issue(Caller { tenant: tenant_id, client_id }, 96);
        let body =
            json!({"token_type": "Bearer", "expires_in": TOKEN_TTL_SECS, "ext_expires_in": TOKEN_TTL_SECS, "access_token": access_token});
        Ok(Json(body).into_response())
    }

    /// Client credentials take exactly one `<resource>/.default` scope, and the resource must be
    /// this cloud's Graph.
    fn check_scope(&self, scope: &str, raw_tenant: &str) -> Result<(), Response> {
        let Some(resource) = scope.strip_suffix("/.default").filter(|_| !scope.contains(' ')) else {
            let message = format!(
                "The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
            );
            return Err(self.aad(StatusCode::BAD_REQUEST, "invalid_scope", 1002012, &message));
        };
        let graph = format!("https://{}", self.cloud.graph_host);
        if [graph.as_str(), GRAPH_APP_ID].iter().any(|r| r.eq_ignore_ascii_case(resource.trim_end_matches('/'))) {
            return Ok(());
        }
        let message = format!(
            "The resource principal named {resource} was not found in the tenant named {raw_tenant}. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant."
        );
        Err(self.aad(StatusCode::BAD_REQUEST, "invalid_resource", 500011, &message))
    }

    fn read_application(&self, rest: &str, query: Option<&str>, headers: &HeaderMap) -> Reply {
        let caller = self.graph_caller(headers)?;
        let Some(key) = AppKey::parse(rest) else {
            let segment = rest.split('/').next().unwrap_or_default();
            return Err(graph_error(StatusCode::BAD_REQUEST, "BadRequest", &format!("Resource not found for the segment '{segment}'.")));
        };
        let tenant = self.tenants.get(&caller.tenant);
        // Application.ReadWrite.OwnedBy also lets its holder read every application.
        let allowed = tenant.and_then(|t| t.apps.get(&caller.client_id)).is_some_and(|a| a.graph_read_all || a.graph_write_owned_by);
        if !allowed {
            return Err(graph_error(
                StatusCode::FORBIDDEN,
                "Authorization_RequestDenied",
                "Insufficient privileges to complete the operation.",
            ));
        }
        let app = tenant.and_then(|t| match &key {
            AppKey::AppId(id) => t.apps.get(&id.to_ascii_lowercase()),
            AppKey::ObjectId(id) => t.apps.values().find(|a| a.object_id.eq_ignore_ascii_case(id)),
        });
        let Some(app) = app else {
            let message =
                format!("Resource '{}' does not exist or one of its queried reference-property objects are not present.", key.id());
            return Err(graph_error(StatusCode::NOT_FOUND, "Request_ResourceNotFound", &message));
        };
        let doc = app.graph_json(&self.cloud.graph_host);
        let select = query.into_iter().flat_map(|q| url::form_urlencoded::parse(q.as_bytes())).find(|(k, _)| k == "$select");
        let Some((_, select)) = select else {
            return Ok(Json(doc).into_response());
        };
        let mut projected = serde_json::Map::new();
        for field in select.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            let Some(value) = doc.get(field) else {
                let message = format!(
                    "Parsing OData Select and Expand failed: Could not find a property named '{field}' on type 'microsoft.graph.application'."
                );
                return Err(graph_error(StatusCode::BAD_REQUEST, "BadRequest", &message));
            };
            projected.insert(field.to_owned(), value.clone());
        }
        projected.insert("@odata.context".into(), doc["@odata.context"].clone());
        Ok(Json(Value::Object(projected)).into_response())
    }

    /// The app behind a Graph bearer token this emulator issued and that is still valid.
    fn graph_caller(&self, headers: &HeaderMap) -> Result<&Caller, Response> {
        let unauthorized = |message: &str| graph_error(StatusCode::UNAUTHORIZED, "InvalidAuthenticationToken", message);
        let Some(token) = bearer(headers) else {
            return Err(unauthorized("Access token is empty."));
        };
        match self.tokens.presented(token) {
            Presented::Unknown => Err(unauthorized("Access token validation failure. Invalid audience.")),
            Presented::Expired => Err(unauthorized("Lifetime validation failed, the token is expired.")),
            Presented::Valid(caller) => Ok(caller),
        }
    }
}

impl App {
    fn graph_json(&self, graph_host: &str) -> Value {
        let credentials: Vec<Value> = self
            .secrets
            .iter()
            .map(|s| {
                json!({
                    "customKeyIdentifier": null,
                    "displayName": s.display_name,
                    "endDateTime": s.end.to_string(),
                    "hint": s.value.chars().take(3).collect::<String>(),
                    "keyId": s.key_id,
                    "secretText": null,
                    "startDateTime": s.start.to_string(),
                })
            })
            .collect();
        let (web, required_resource_access) = self.registration.graph_fields();
        json!({
            "@odata.context": format!("https://{graph_host}/v1.0/$metadata#applications/$entity"),
            "id": self.object_id,
            "appId": self.app_id,
            "displayName": self.display_name,
            "signInAudience": self.registration.sign_in_audience(),
            "keyCredentials": [],
            "passwordCredentials": credentials,
            "web": web,
            "requiredResourceAccess": required_resource_access,
        })
    }
}

/// How a Graph path names an application.
enum AppKey<'a> {
    AppId(&'a str),
    ObjectId(&'a str),
}

impl<'a> AppKey<'a> {
    /// `applications(appId='…')` or `applications/{objectId}` (an appId there is simply not found,
    /// as with the real service).
    fn parse(rest: &'a str) -> Option<Self> {
        if let Some(key) = rest.strip_prefix("applications(appId='") {
            return key.strip_suffix("')").filter(|k| !k.contains('\'')).map(AppKey::AppId);
        }
        rest.strip_prefix("applications/").filter(|id| !id.is_empty() && !id.contains('/')).map(AppKey::ObjectId)
    }

    fn id(&self) -> &'a str {
        match self {
            AppKey::AppId(id) | AppKey::ObjectId(id) => id,
        }
    }
}

fn graph_error(status: StatusCode, code: &str, message: &str) -> Response {
    let request_id = Uuid::new_v4().to_string();
    let body = json!({"error": {"code": code, "message": message, "innerError": {
        "date": Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S").to_string(),
        "request-id": request_id,
        "client-request-id": request_id,
    }}});
    (status, Json(body)).into_response()
}

pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

/// RFC 6749 §2.3.1 client authentication: form-encoded id and secret inside Basic.
pub(super) fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    let unescape = |s: &str| url::form_urlencoded::parse(format!("v={s}").as_bytes()).next().map(|(_, v)| v.into_owned());
    Some((unescape(id)?, unescape(secret)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_forms() {
        assert!(is_guid("72f988bf-86f1-41af-91ab-2d7cd011db47"));
        assert!(!is_guid("72f988bf-86f1-41af-91ab-2d7cd011db4"));
        assert!(!is_guid("72f988bf86f141af91ab2d7cd011db47"));
        assert!(is_dns_name("contoso.onmicrosoft.com"));
        assert!(!is_dns_name("72f988bf-86f1-41af-91ab-2d7cd011db4"));
        assert!(!is_dns_name("con_toso.com"));
        assert!(!is_dns_name("-a.com"));
    }

    #[test]
    fn graph_keys() {
        assert!(matches!(AppKey::parse("applications(appId='abc')"), Some(AppKey::AppId("abc"))));
        assert!(matches!(AppKey::parse("applications/xyz"), Some(AppKey::ObjectId("xyz"))));
        assert!(AppKey::parse("applications(appId='abc'").is_none());
        assert!(AppKey::parse("users/xyz").is_none());
    }
}
