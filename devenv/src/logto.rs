//! Emulator of the Logto Management API connector endpoints (`/api/connectors`) and of the
//! machine-to-machine token endpoint (`/oidc/token`) that guards them.
//!
//! It keeps the vendor's behaviour on purpose, as the Management API reference
//! (<https://openapi.logto.io/>) and Logto's open-source routes
//! (`packages/core/src/routes/connector/index.ts` in <https://github.com/logto-io/logto>) show
//! it: POST answers 200 (not 201) with the connector response, `config` exactly as stored with
//! `clientSecret` in plain text; the `azuread-universal` config goes through its zod guard (400
//! `connector.invalid_config` with `data` and `details`) and then `cleanDeep`, which drops empty
//! values; only one `azuread-universal` connector may exist (422
//! `connector.multiple_instances_not_supported`), nor two social connectors of one target and
//! platform (422 `connector.multiple_target_with_same_platform`); `metadata` is refused for this
//! non-standard connector; a client may choose the new connector's `id`; PATCH replaces `config`
//! wholesale and validates it against the full guard, and silently ignores a `connectorId`.
//!
//! State is kept as database rows (`{id, connectorId, config, metadata, syncProfile,
//! enableTokenStorage, createdAt}`); answers merge in the factory's metadata as Logto does.
//! Request bodies, secrets and tokens are never logged.

#![allow(clippy::result_large_err, reason = "early returns carry whole HTTP answers; size does not matter in a test emulator")]

use std::{
    collections::HashMap,
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
use jiff::Timestamp;
use serde_json::{Map, Value, json};

use super::{
    Reply,
    azure::{basic_credentials, bearer},
    kit::{self, Emulator, Fault, KitBuilder, RequestMatch},
    lock, reply,
    tls::TestCa,
    tokens::IssuedTokens,
};

/// Logto resources default to `access_token_ttl` 3600 s.
const DEFAULT_TOKEN_TTL_SECS: i64 = 3600;
/// The Management API's only predefined permission.
const ALL: &str = "all";
const PROMPTS: [&str; 4] = ["none", "login", "consent", "select_account"];

/// A running emulator; clones share the state and the server, which stops with the last clone.
pub type LogtoEmulator = Emulator<LogtoState>;

type Shared = Arc<Mutex<LogtoState>>;

/// The emulated tenant: M2M apps, the tokens issued to them, connector rows.
pub struct LogtoState {
    resource: String,
    apps: HashMap<String, M2mApp>,
    /// Each token grants the Management API permissions asked for.
    tokens: IssuedTokens<Vec<String>>,
    /// Database rows, in creation order.
    connectors: Vec<Value>,
}

struct M2mApp {
    secret: String,
    /// Management API permissions its M2M roles grant.
    scopes: Vec<String>,
}

/// A connector factory the emulated tenant has installed.
struct Factory {
    id: &'static str,
    target: &'static str,
    platform: &'static str,
    name: &'static str,
    standard: bool,
}

const FACTORIES: [Factory; 3] = [
    Factory { id: "azuread-universal", target: "azuread", platform: "Universal", name: "Microsoft", standard: false },
    Factory { id: "google-universal", target: "google", platform: "Universal", name: "Google", standard: false },
    Factory { id: "oidc", target: "oidc", platform: "Universal", name: "OIDC", standard: true },
];

fn factory(id: &str) -> Option<&'static Factory> {
    FACTORIES.iter().find(|f| f.id == id)
}

impl LogtoEmulator {
    /// Starts an emulator whose Management API has the resource indicator `resource` (e.g.
    /// `https://default.logto.app/api`). Needs a Tokio runtime context.
    pub fn start(ca: &TestCa, resource: &str) -> std::io::Result<Self> {
        let state = Arc::new(Mutex::new(LogtoState {
            resource: resource.to_owned(),
            apps: HashMap::new(),
            tokens: IssuedTokens::new(DEFAULT_TOKEN_TTL_SECS),
            connectors: Vec::new(),
        }));
        let kit = KitBuilder::new("logto", error_body);
        let app = kit.wrap(router(state.clone()));
        Ok(Emulator::new(state, kit.serve(app, ca)?))
    }

    /// A machine-to-machine app whose M2M role grants the Management API permission `all`.
    pub fn add_m2m_app(&self, id: &str, secret: &str) {
        self.add_m2m_app_with_scopes(id, secret, &[ALL]);
    }

    /// A machine-to-machine app granted exactly `scopes` on the Management API (none: no role).
    pub fn add_m2m_app_with_scopes(&self, id: &str, secret: &str, scopes: &[&str]) {
        let app = M2mApp { secret: secret.to_owned(), scopes: scopes.iter().map(|s| s.to_string()).collect() };
        self.state().apps.insert(id.to_owned(), app);
    }

    /// Lifetime of tokens issued from now on (`expires_in`).
    pub fn set_token_ttl(&self, secs: u64) {
        self.state().tokens.set_ttl(secs);
    }

    /// Invalidates every issued token, as if the signing keys had rotated.
    pub fn revoke_tokens(&self) {
        self.state().tokens.revoke_all();
    }

    /// Token requests so far (answered or not).
    pub fn token_requests(&self) -> usize {
        self.kit().log().count(&RequestMatch::any().method(Method::POST).path("/oidc/token"))
    }

    /// Successful POST/PATCH/DELETE requests under /api.
    pub fn writes(&self) -> usize {
        self.kit().log().succeeded(&api().writes())
    }

    /// Every request so far as (method, path with query), in order.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.kit().log().requests()
    }

    /// The next `n` /api requests get 429 with `Retry-After: retry_after_secs`. Logto's own code
    /// has no limiter; this models an edge limiter in front of it (plain-text body).
    pub fn rate_limit_next(&self, n: usize, retry_after_secs: u64) {
        self.kit().faults().push(Fault::status(429).times(n).on(api()).retry_after(retry_after_secs));
    }

    /// Stored connector rows, in creation order.
    pub fn connectors(&self) -> Vec<Value> {
        self.state().connectors.clone()
    }

    pub fn connector(&self, id: &str) -> Option<Value> {
        self.state().find(id).cloned()
    }

    /// Changes a stored row behind the API's back, like an edit in the Console.
    pub fn edit_connector(&self, id: &str, edit: impl FnOnce(&mut Value)) {
        let mut st = self.state();
        let row = st.find_mut(id).unwrap_or_else(|| panic!("unknown connector {id}"));
        edit(row);
    }

    /// Seeds a row as if made elsewhere (no validation); fills `id`, `config`, `metadata`,
    /// `syncProfile`, `enableTokenStorage` and `createdAt` when absent and returns the id.
    pub fn insert_connector(&self, mut row: Value) -> String {
        let object = row.as_object_mut().expect("a connector row is a JSON object");
        let id = object.entry("id").or_insert_with(|| json!(new_id())).as_str().expect("string id").to_owned();
        object.entry("config").or_insert_with(|| json!({}));
        object.entry("metadata").or_insert_with(|| json!({}));
        object.entry("syncProfile").or_insert(json!(false));
        object.entry("enableTokenStorage").or_insert(json!(false));
        object.entry("createdAt").or_insert_with(|| json!(Timestamp::now().as_millisecond()));
        self.state().connectors.push(row);
        id
    }
}

fn router(state: Shared) -> Router {
    let routes = Router::new()
        .route("/oidc/token", post(token))
        .route("/api/connectors", get(list).post(create))
        .route("/api/connectors/{id}", get(read).patch(update).delete(remove))
        .route("/api/connector-factories", get(|| async { Json(FACTORIES.iter().map(render_factory).collect::<Vec<_>>()) }))
        .route("/api/connector-factories/{id}", get(read_factory))
        .fallback(|| async { (StatusCode::NOT_FOUND, "Not Found") })
        .with_state(state.clone());
    kit::guard(routes, state, api(), |st, request| st.authorize(request.headers()))
}

/// The Management API; the token endpoint lies outside it.
fn api() -> RequestMatch {
    RequestMatch::any().under("/api")
}

/// The answer to an injected status: an edge limiter's plain text for 429, else a bare message.
fn error_body(status: StatusCode, _path: &str) -> Response {
    match status {
        StatusCode::TOO_MANY_REQUESTS => (status, "Too Many Requests").into_response(),
        _ => (status, Json(json!({"message": status.canonical_reason().unwrap_or("Server error")}))).into_response(),
    }
}

async fn token(AxState(s): AxState<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    reply(lock(&s).issue_token(&headers, &body))
}

async fn list(AxState(s): AxState<Shared>, RawQuery(query): RawQuery) -> Response {
    let target =
        url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()).find(|(k, _)| k == "target").map(|(_, v)| v.into_owned());
    let st = lock(&s);
    let rows: Vec<Value> = st.connectors.iter().map(render).filter(|c| target.as_deref().is_none_or(|t| c["target"] == t)).collect();
    Json(rows).into_response()
}

async fn create(AxState(s): AxState<Shared>, body: Bytes) -> Response {
    reply(lock(&s).create(&body))
}

async fn read(AxState(s): AxState<Shared>, Path(id): Path<String>) -> Response {
    reply(lock(&s).find(&id).map(|row| Json(render(row)).into_response()).ok_or_else(entity_not_found))
}

async fn update(AxState(s): AxState<Shared>, Path(id): Path<String>, body: Bytes) -> Response {
    reply(lock(&s).update(&id, &body))
}

async fn remove(AxState(s): AxState<Shared>, Path(id): Path<String>) -> Response {
    let mut st = lock(&s);
    let Some(index) = st.connectors.iter().position(|c| c["id"] == id.as_str()) else {
        // The route looks the row up with findConnectorById, whose 404 has its own code.
        let message = format!("The connectors with ID `{id}` does not exist.");
        return api_error(StatusCode::NOT_FOUND, "entity.not_exists_with_id", &message, None);
    };
    st.connectors.remove(index);
    StatusCode::NO_CONTENT.into_response()
}

async fn read_factory(Path(id): Path<String>) -> Response {
    match factory(&id) {
        Some(f) => Json(render_factory(f)).into_response(),
        None => entity_not_found(),
    }
}

impl LogtoState {
    fn find(&self, id: &str) -> Option<&Value> {
        self.connectors.iter().find(|c| c["id"] == id)
    }

    fn find_mut(&mut self, id: &str) -> Option<&mut Value> {
        self.connectors.iter_mut().find(|c| c["id"] == id)
    }

    /// Logto's koa-auth: a Bearer token this tenant issued for the Management API, holding `all`.
    fn authorize(&self, headers: &HeaderMap) -> Result<(), Response> {
        let unauthorized = |code, message| api_error(StatusCode::UNAUTHORIZED, code, message, None);
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(unauthorized("auth.authorization_header_missing", "Authorization header is missing."));
        };
        if !value.to_str().is_ok_and(|v| v.starts_with("Bearer")) {
            let data = json!({"supportedTypes": ["Bearer"]});
            let message = "Authorization type is not supported. Supported type(s): Bearer.";
            return Err(api_error(StatusCode::UNAUTHORIZED, "auth.authorization_token_type_not_supported", message, Some(data)));
        }
        let scopes = bearer(headers)
            .and_then(|token| self.tokens.valid(token))
            .ok_or_else(|| unauthorized("auth.unauthorized", "Unauthorized. Please check credentials and its scope."))?;
        if !scopes.iter().any(|s| s == ALL) {
            let message = "Forbidden. Please check your user roles and permissions.";
            return Err(api_error(StatusCode::FORBIDDEN, "auth.forbidden", message, None));
        }
        Ok(())
    }

    /// oidc-provider's client-credentials grant, behind Logto's OIDC error handler.
    fn issue_token(&mut self, headers: &HeaderMap, body: &[u8]) -> Reply {
        let params: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
        let param = |k: &str| params.get(k).map(String::as_str).filter(|v| !v.is_empty());
        match param("grant_type") {
            Some("client_credentials") => {}
            None => return Err(oidc_error(StatusCode::BAD_REQUEST, "invalid_request", "missing required parameter 'grant_type'")),
            Some(_) => return Err(oidc_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", "unsupported grant_type requested")),
        }
        let Some((id, secret)) = basic_credentials(headers) else {
            return Err(oidc_error(StatusCode::BAD_REQUEST, "invalid_request", "no client authentication mechanism provided"));
        };
        let Some(app) = self.apps.get(&id).filter(|app| app.secret == secret) else {
            return Err(oidc_error(StatusCode::UNAUTHORIZED, "invalid_client", "client authentication failed"));
        };
        if param("resource") != Some(self.resource.as_str()) {
            return Err(oidc_error(StatusCode::BAD_REQUEST, "invalid_target", "resource indicator is missing, or unknown"));
        }
        let requested: Vec<String> = param("scope").unwrap_or_default().split(' ').filter(|s| !s.is_empty()).map(str::to_owned).collect();
        if let Some(denied) = requested.iter().find(|s| !app.scopes.contains(s)) {
            let mut body = oidc_error_body("invalid_scope", "requested scope is not allowed");
            body["scope"] = json!(denied);
            return Err((StatusCode::BAD_REQUEST, Json(body)).into_response());
        }
        let scope = requested.join(" ");
        let access_token = self.tokens.issue(requested, 64);
        let body = json!({
            "access_token": access_token,
            "expires_in": self.tokens.ttl_secs(),
            "token_type": "Bearer",
            "scope": scope,
        });
        Ok(Json(body).into_response())
    }

    fn create(&mut self, body: &[u8]) -> Reply {
        let body = guard_body(body, &["connectorId", "config", "metadata", "syncProfile", "enableTokenStorage", "id"])?;
        let Some(connector_id) = body.get("connectorId").and_then(Value::as_str).filter(|s| !s.is_empty()) else {
            let issue = zod_issue(&["connectorId"], "string", body.get("connectorId"));
            return Err(invalid_input(vec![issue]));
        };
        if let Some(id) = body.get("id")
            && !id.as_str().is_some_and(|s| (1..=128).contains(&s.chars().count()))
        {
            return Err(invalid_input(vec![zod_issue(&["id"], "string", Some(id))]));
        }
        let Some(factory) = factory(connector_id) else {
            let message = "Can not find connector with given standard connector id.";
            return Err(api_error(StatusCode::UNPROCESSABLE_ENTITY, "connector.not_found_with_connector_id", message, None));
        };
        let metadata = body.get("metadata").and_then(Value::as_object);
        let target = match metadata.and_then(|m| m.get("target")).and_then(Value::as_str).filter(|t| !t.is_empty()) {
            Some(target) if factory.standard => target.to_owned(),
            None if factory.standard => {
                return Err(api_error(StatusCode::BAD_REQUEST, "connector.should_specify_target", "You should specify 'target'.", None));
            }
            _ => factory.target.to_owned(),
        };
        if !factory.standard && metadata.is_some() {
            return Err(metadata_not_overwritable());
        }
        if !factory.standard && self.connectors.iter().any(|c| c["connectorId"] == connector_id) {
            let message = "Can not create multiple instance with picked standard connector.";
            return Err(api_error(StatusCode::UNPROCESSABLE_ENTITY, "connector.multiple_instances_not_supported", message, None));
        }
        if let Some(duplicate) =
            self.connectors.iter().map(render).find(|c| c["target"] == target.as_str() && c["platform"] == factory.platform)
        {
            let message = "You can not have multiple social connectors that have same target and platform.";
            let data = json!({"connectorId": duplicate["connectorId"], "connectorName": duplicate["name"]});
            return Err(api_error(StatusCode::UNPROCESSABLE_ENTITY, "connector.multiple_target_with_same_platform", message, Some(data)));
        }
        if let Some(config) = body.get("config") {
            validate_config(factory, config)?;
        }
        if body.get("enableTokenStorage") == Some(&json!(true)) {
            let message = "The feature is not supported.";
            return Err(api_error(StatusCode::UNPROCESSABLE_ENTITY, "request.feature_not_supported", message, None));
        }
        let id = body.get("id").and_then(Value::as_str).map_or_else(new_id, str::to_owned);
        if self.find(&id).is_some() {
            let message = "The entity already exists. Please check the input and try again.";
            return Err(api_error(StatusCode::UNPROCESSABLE_ENTITY, "entity.unique_integrity_violation", message, None));
        }
        let row = json!({
            "id": id,
            "connectorId": connector_id,
            "config": body.get("config").map(clean_deep).unwrap_or_else(|| json!({})),
            "metadata": body.get("metadata").map(clean_deep).unwrap_or_else(|| json!({})),
            "syncProfile": body.get("syncProfile").cloned().unwrap_or(json!(false)),
            "enableTokenStorage": false,
            "createdAt": Timestamp::now().as_millisecond(),
        });
        let response = render(&row);
        self.connectors.push(row);
        Ok(Json(response).into_response())
    }

    fn update(&mut self, id: &str, body: &[u8]) -> Reply {
        // `connectorId` (like any other unknown key) is stripped by the guard: it cannot change.
        let body = guard_body(body, &["config", "metadata", "syncProfile", "enableTokenStorage"])?;
        let row = self.find_mut(id).ok_or_else(entity_not_found)?;
        let connector_id = row["connectorId"].as_str().unwrap_or_default().to_owned();
        let factory = factory(&connector_id);
        let standard = factory.is_some_and(|f| f.standard);
        if let Some(metadata) = body.get("metadata") {
            if !standard {
                return Err(metadata_not_overwritable());
            }
            if metadata.get("target") != row["metadata"].get("target") {
                let message = "The connector 'target' can not be modified.";
                return Err(api_error(StatusCode::BAD_REQUEST, "connector.can_not_modify_target", message, None));
            }
        }
        if let Some(config) = body.get("config") {
            if let Some(factory) = factory {
                validate_config(factory, config)?;
            }
            // jsonbMode 'replace': the stored config is the one sent, cleaned, nothing merged.
            row["config"] = clean_deep(config);
        }
        if let Some(metadata) = body.get("metadata") {
            row["metadata"] = clean_deep(metadata);
        }
        if let Some(sync) = body.get("syncProfile") {
            row["syncProfile"] = sync.clone();
        }
        Ok(Json(render(row)).into_response())
    }
}

/// The connector response: the factory's metadata, then the row's id, connectorId, syncProfile,
/// metadata and enableTokenStorage, then `config` exactly as stored.
fn render(row: &Value) -> Value {
    let connector_id = row["connectorId"].as_str().unwrap_or_default();
    let mut out = match factory(connector_id) {
        Some(f) => render_factory(f),
        None => json!({"type": "Social", "target": "unknown", "platform": null, "name": {"en": connector_id}}),
    };
    // Standard connectors take their target (and name, logo...) from the row's metadata.
    if let Some(overrides) = row["metadata"].as_object()
        && factory(connector_id).is_some_and(|f| f.standard)
    {
        for (k, v) in overrides {
            out[k] = v.clone();
        }
    }
    for key in ["id", "connectorId", "syncProfile", "metadata", "enableTokenStorage"] {
        out[key] = row.get(key).cloned().unwrap_or(Value::Null);
    }
    out["isDemo"] = json!(false);
    out["extraInfo"] = json!({});
    out["config"] = row.get("config").cloned().unwrap_or_else(|| json!({}));
    out
}

fn render_factory(f: &Factory) -> Value {
    let mut out = json!({
        "type": "Social",
        "id": f.id,
        "target": f.target,
        "platform": f.platform,
        "name": {"en": f.name},
        "logo": "./logo.svg",
        "logoDark": null,
        "description": {"en": format!("{} social connector.", f.name)},
        "readme": "./README.md",
        "formItems": [],
        "isDemo": false,
    });
    if f.standard {
        out["isStandard"] = json!(true);
    }
    if f.id == "azuread-universal" {
        out["description"] = json!({"en": "Microsoft Azure Active Directory is a leading AD provider."});
        out["formItems"] = json!([
            {"key": "clientId", "type": "Text", "required": true, "label": "Client ID", "placeholder": "<client-id>"},
            {"key": "clientSecret", "type": "Text", "required": true, "label": "Client Secret", "placeholder": "<client-secret>"},
            {"key": "cloudInstance", "type": "Text", "required": true, "label": "Cloud Instance",
             "placeholder": "https://login.microsoftonline.com", "defaultValue": "https://login.microsoftonline.com"},
            {"key": "tenantId", "type": "Text", "required": true, "label": "Tenant ID", "placeholder": "<tenant-id>"},
            {"key": "prompts", "type": "MultiSelect", "required": false, "label": "Prompts",
             "selectItems": PROMPTS.map(|p| json!({"value": p}))},
            {"key": "scopes", "type": "Text", "required": false, "label": "Scopes"},
        ]);
    }
    out
}

/// Parses a JSON object body and type-checks the known keys (koaGuard; unknown keys are stripped).
fn guard_body(body: &[u8], allowed: &[&str]) -> Result<Map<String, Value>, Response> {
    let object = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => object,
        Ok(other) => return Err(invalid_input(vec![zod_issue(&[], "object", Some(&other))])),
        Err(_) => return Err(invalid_input(vec![zod_issue(&[], "object", None)])),
    };
    let mut kept = Map::new();
    let mut issues = Vec::new();
    for (key, value) in object {
        if !allowed.contains(&key.as_str()) {
            continue;
        }
        let expected = match key.as_str() {
            "config" | "metadata" => "object",
            "syncProfile" | "enableTokenStorage" => "boolean",
            _ => "string",
        };
        if zod_type(Some(&value)) != expected {
            issues.push(zod_issue(&[key.as_str()], expected, Some(&value)));
        }
        kept.insert(key, value);
    }
    if issues.is_empty() { Ok(kept) } else { Err(invalid_input(issues)) }
}

/// The factory's config guard; only `azuread-universal`'s is modelled (other configs must be
/// objects, which the body guard already checked).
fn validate_config(factory: &Factory, config: &Value) -> Result<(), Response> {
    if factory.id != "azuread-universal" {
        return Ok(());
    }
    let mut issues = Vec::new();
    for key in ["clientId", "clientSecret", "cloudInstance", "tenantId"] {
        let value = config.get(key);
        if !value.is_some_and(Value::is_string) {
            issues.push(zod_issue(&[key], "string", value));
        }
    }
    match config.get("prompts") {
        None => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                if !item.as_str().is_some_and(|p| PROMPTS.contains(&p)) {
                    let expected = PROMPTS.map(|p| format!("'{p}'")).join(" | ");
                    let message = format!("Invalid enum value. Expected {expected}, received {}", short(item));
                    issues.push(json!({"code": "invalid_enum_value", "options": PROMPTS, "path": ["prompts", i], "message": message}));
                }
            }
        }
        other => issues.push(zod_issue(&["prompts"], "array", other)),
    }
    if let Some(scopes) = config.get("scopes")
        && !scopes.is_string()
    {
        issues.push(zod_issue(&["scopes"], "string", Some(scopes)));
    }
    if issues.is_empty() {
        return Ok(());
    }
    let details = format_issues(&issues);
    let data = zod_error(issues);
    Err(api_error_with(
        StatusCode::BAD_REQUEST,
        "connector.invalid_config",
        "The connector's config is invalid.",
        Some(data),
        Some(details),
    ))
}

/// clean-deep with its defaults: drops null, empty strings, empty arrays and empty objects, deeply.
fn clean_deep(value: &Value) -> Value {
    fn clean(value: &Value) -> Option<Value> {
        match value {
            Value::Null => None,
            Value::String(s) if s.is_empty() => None,
            Value::Array(items) => {
                let kept: Vec<Value> = items.iter().filter_map(clean).collect();
                (!kept.is_empty()).then_some(Value::Array(kept))
            }
            Value::Object(map) => {
                let kept: Map<String, Value> = map.iter().filter_map(|(k, v)| Some((k.clone(), clean(v)?))).collect();
                (!kept.is_empty()).then_some(Value::Object(kept))
            }
            other => Some(other.clone()),
        }
    }
    clean(value).unwrap_or_else(|| json!({}))
}

/// zod's name for a value's type.
fn zod_type(value: Option<&Value>) -> &'static str {
    match value {
        None => "undefined",
        Some(Value::Null) => "null",
        Some(Value::Bool(_)) => "boolean",
        Some(Value::Number(_)) => "number",
        Some(Value::String(_)) => "string",
        Some(Value::Array(_)) => "array",
        Some(Value::Object(_)) => "object",
    }
}

/// A zod `invalid_type` issue; like zod, it names types, never values.
fn zod_issue(path: &[&str], expected: &str, value: Option<&Value>) -> Value {
    let received = zod_type(value);
    let message = if received == "undefined" { "Required".to_owned() } else { format!("Expected {expected}, received {received}") };
    json!({"code": "invalid_type", "expected": expected, "received": received, "path": path, "message": message})
}

fn zod_error(issues: Vec<Value>) -> Value {
    json!({"issues": issues, "name": "ZodError"})
}

/// RequestError's `details`: one line per zod issue.
fn format_issues(issues: &[Value]) -> String {
    issues
        .iter()
        .map(|issue| {
            let path: Vec<String> =
                issue["path"].as_array().into_iter().flatten().map(|p| p.as_str().map_or_else(|| p.to_string(), str::to_owned)).collect();
            let code = issue["code"].as_str().unwrap_or_default();
            let text = if code == "invalid_type" {
                format!(
                    "Expected {} but received {}.",
                    issue["expected"].as_str().unwrap_or_default(),
                    issue["received"].as_str().unwrap_or_default()
                )
            } else {
                issue["message"].as_str().unwrap_or_default().to_owned()
            };
            format!("Error in key path \"{}\": ({code}) {text}", path.join("."))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A value as zod quotes it in an enum error, cut short.
fn short(value: &Value) -> String {
    let text = match value {
        Value::String(s) => format!("'{s}'"),
        other => other.to_string(),
    };
    text.chars().take(40).collect()
}

fn invalid_input(issues: Vec<Value>) -> Response {
    let details = format_issues(&issues);
    api_error_with(StatusCode::BAD_REQUEST, "guard.invalid_input", "The request body is invalid.", Some(zod_error(issues)), Some(details))
}

/// Only standard connectors take their `metadata` from the client.
fn metadata_not_overwritable() -> Response {
    let message = "This connector's 'metadata' cannot be overwritten.";
    api_error(StatusCode::BAD_REQUEST, "connector.cannot_overwrite_metadata_for_non_standard_connector", message, None)
}

fn entity_not_found() -> Response {
    api_error(StatusCode::NOT_FOUND, "entity.not_found", "The entity does not exist.", None)
}

/// Logto's `RequestError` body.
fn api_error(status: StatusCode, code: &str, message: &str, data: Option<Value>) -> Response {
    api_error_with(status, code, message, data, None)
}

fn api_error_with(status: StatusCode, code: &str, message: &str, data: Option<Value>, details: Option<String>) -> Response {
    let mut body = json!({"code": code, "message": message});
    if let Some(data) = data {
        body["data"] = data;
    }
    if let Some(details) = details {
        body["details"] = json!(details);
    }
    (status, Json(body)).into_response()
}

/// An oidc-provider error as Logto's OIDC error handler decorates it: the OAuth fields plus `code`
/// and `message`.
fn oidc_error(status: StatusCode, error: &str, description: &str) -> Response {
    (status, Json(oidc_error_body(error, description))).into_response()
}

fn oidc_error_body(error: &str, description: &str) -> Value {
    let message = match error {
        "invalid_client" => "Client authentication failed.",
        "invalid_target" => "Invalid resource indicator.",
        "invalid_scope" => "Invalid scope.",
        "unsupported_grant_type" => "Unsupported grant type.",
        _ => "Invalid request.",
    };
    json!({"code": format!("oidc.{error}"), "message": message, "error": error, "error_description": description})
}

/// Logto's `generateStandardShortId`: 21 characters of `0-9a-z`.
fn new_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    (0..21).map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn azuread() -> &'static Factory {
        factory("azuread-universal").unwrap()
    }

    #[test]
    fn clean_deep_drops_empty_values() {
        let cleaned = clean_deep(&json!({"a": "", "b": [], "c": {"d": null}, "e": ["", "x"], "f": false, "g": 0, "h": "v"}));
        assert_eq!(cleaned, json!({"e": ["x"], "f": false, "g": 0, "h": "v"}));
    }

    #[test]
    fn the_azuread_guard() {
        let ok = json!({"clientId": "a", "clientSecret": "b", "cloudInstance": "c", "tenantId": "d", "prompts": ["login"], "scopes": "x"});
        assert!(validate_config(azuread(), &ok).is_ok());
        // No URL or GUID checks, and empty strings pass (cleanDeep drops them afterwards).
        assert!(validate_config(azuread(), &json!({"clientId": "", "clientSecret": "", "cloudInstance": "x", "tenantId": "y"})).is_ok());
        for bad in [
            json!({"clientId": "a", "cloudInstance": "c", "tenantId": "d"}),
            json!({"clientId": "a", "clientSecret": 1, "cloudInstance": "c", "tenantId": "d"}),
            json!({"clientId": "a", "clientSecret": "b", "cloudInstance": "c", "tenantId": "d", "prompts": ["sometimes"]}),
            json!({"clientId": "a", "clientSecret": "b", "cloudInstance": "c", "tenantId": "d", "prompts": "login"}),
            json!({"clientId": "a", "clientSecret": "b", "cloudInstance": "c", "tenantId": "d", "scopes": ["x"]}),
        ] {
            let response = validate_config(azuread(), &bad).unwrap_err();
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn issues_are_formatted_like_request_error_details() {
        let issues = vec![zod_issue(&["clientSecret"], "string", None), zod_issue(&["scopes"], "string", Some(&json!(["s3cret"])))];
        assert_eq!(
            format_issues(&issues),
            "Error in key path \"clientSecret\": (invalid_type) Expected string but received undefined.\nError in key path \"scopes\": (invalid_type) Expected string but received array."
        );
        assert!(!zod_error(issues).to_string().contains("s3cret"), "types, never values");
    }

    #[test]
    fn generated_ids_look_like_logto_ids() {
        let id = new_id();
        assert_eq!(id.len(), 21);
        assert!(id.chars().all(|c| c.is_ascii_digit() || c.is_ascii_lowercase()));
    }
}
