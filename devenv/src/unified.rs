//! Emulator of Unified.to's connection API (`/unified/connection`), reached with a workspace API
//! token.
//!
//! It follows the documented contract (the connection pages of <https://docs.unified.to>, e.g.
//! <https://docs.unified.to/unified/connection/Create_connection>): create, list with filters
//! (`external_xref`, `categories`, `limit`, `offset`, `sort`, `order`), retrieve, update and
//! remove; `integration_type`, `permissions` and `categories` are required on every write; errors
//! are `{statusCode, error, message}`. Where the documentation is silent it takes the awkward
//! reading on purpose:
//! - reads (including the answers to writes) mask the secret-bearing `auth` keys
//!   ([`SecretReads::Masked`] by default; see [`UnifiedEmulator::set_secret_reads`]);
//! - `PUT` replaces the whole connection (an absent optional field is gone afterwards), and
//!   `PATCH` merges top-level fields but replaces `auth` wholesale;
//! - a write with an unknown or inactive `integration_type`, bad permissions or categories, or a
//!   `microsoft_ad` import without `auth.client_id`, `auth.client_secret` and `auth.token_url`
//!   answers 422;
//! - a bad token answers 401; [`UnifiedEmulator::rate_limit_next`] answers 429 with
//!   `Retry-After`.
//!
//! Request bodies and tokens are never logged.

#![allow(clippy::result_large_err, reason = "early returns carry whole HTTP answers; size does not matter in a test emulator")]

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, RawQuery, State as AxState},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
};
use jiff::Timestamp;
use serde_json::{Map, Value, json};
use url::Url;

use super::{
    Reply,
    azure::bearer,
    kit::{self, Emulator, Fault, KitBuilder, RequestMatch},
    lock, query_pairs, query_value, reply,
    tls::TestCa,
};

/// Connection categories the API accepts.
const CATEGORIES: &[&str] = &[
    "passthrough",
    "hris",
    "ats",
    "auth",
    "crm",
    "enrich",
    "martech",
    "ticketing",
    "uc",
    "accounting",
    "storage",
    "commerce",
    "payment",
    "genai",
    "messaging",
    "kms",
    "task",
    "scim",
    "lms",
    "repo",
    "metadata",
    "calendar",
    "verification",
    "ads",
    "forms",
    "shipping",
    "assessment",
    "signing",
    "clubs",
    "datastore",
];
/// Writable top-level fields; the read-only ones below are accepted and ignored.
const WRITABLE: &[&str] = &[
    "integration_type",
    "integration_name",
    "external_xref",
    "permissions",
    "categories",
    "auth",
    "auth_aws_arn",
    "environment",
    "is_paused",
];
const READ_ONLY: &[&str] = &["id", "workspace_id", "created_at", "updated_at", "last_healthy_at", "last_unhealthy_at"];
/// `auth` keys that carry secrets, masked or omitted on reads.
const SECRET_AUTH_KEYS: &[&str] =
    &["client_secret", "access_token", "refresh_token", "token", "consumer_secret", "dev_api_key", "key", "pem"];
const MASK: &str = "********";
const MAX_LIMIT: usize = 100;

/// How `auth` secrets appear in what the API returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SecretReads {
    /// Replaced by `********` (the default).
    #[default]
    Masked,
    /// Left out.
    Omitted,
    /// Returned as stored.
    Plain,
}

/// A running emulator; clones share the state and the server, which stops with the last clone.
pub type UnifiedEmulator = Emulator<UnifiedState>;

type Shared = Arc<Mutex<UnifiedState>>;

/// The emulated workspace: tokens, activated integrations, connections.
pub struct UnifiedState {
    workspace_id: String,
    tokens: BTreeSet<String>,
    /// Integration types activated in the workspace.
    integrations: BTreeSet<String>,
    secret_reads: SecretReads,
    /// In creation order.
    connections: Vec<Value>,
}

impl UnifiedEmulator {
    /// Starts an emulated workspace with `microsoft_ad` activated and no token. Needs a Tokio
    /// runtime context.
    pub fn start(ca: &TestCa) -> std::io::Result<Self> {
        let state = Arc::new(Mutex::new(UnifiedState::new(new_id())));
        let kit = KitBuilder::new("unified", error_body);
        let app = kit.wrap(router(state.clone()));
        Ok(Emulator::new(state, kit.serve(app, ca)?))
    }

    /// A workspace API token the API accepts.
    pub fn add_token(&self, token: &str) {
        self.state().tokens.insert(token.to_owned());
    }

    /// Activates another integration type, so connections of it can be created.
    pub fn activate_integration(&self, integration_type: &str) {
        self.state().integrations.insert(integration_type.to_owned());
    }

    pub fn set_secret_reads(&self, reads: SecretReads) {
        self.state().secret_reads = reads;
    }

    /// The next `n` requests under /unified get 429 with `Retry-After: retry_after_secs`.
    pub fn rate_limit_next(&self, n: usize, retry_after_secs: u64) {
        self.kit().faults().push(Fault::status(429).times(n).on(api()).retry_after(retry_after_secs));
    }

    /// Every connection as stored, secrets included, in creation order.
    pub fn connections(&self) -> Vec<Value> {
        self.state().connections.clone()
    }

    /// One connection as stored, secrets included.
    pub fn connection(&self, id: &str) -> Option<Value> {
        self.state().find(id).cloned()
    }

    /// The stored `auth.client_secret` of a connection.
    pub fn client_secret(&self, id: &str) -> Option<String> {
        self.state().find(id).and_then(|c| c["auth"]["client_secret"].as_str().map(str::to_owned))
    }

    /// Changes a stored connection behind the API's back, like an edit in the dashboard.
    pub fn edit_connection(&self, id: &str, edit: impl FnOnce(&mut Value)) {
        let mut st = self.state();
        let connection = st.find_mut(id).unwrap_or_else(|| panic!("unknown connection {id}"));
        edit(connection);
    }

    /// Seeds a connection as if made elsewhere (no validation); fills `id`, `workspace_id`,
    /// timestamps, `environment`, `permissions` and `categories` when absent and returns the id.
    pub fn insert_connection(&self, mut connection: Value) -> String {
        let mut st = self.state();
        let object = connection.as_object_mut().expect("a connection is a JSON object");
        let id = object.entry("id").or_insert_with(|| json!(new_id())).as_str().expect("string id").to_owned();
        let now = now();
        object.entry("workspace_id").or_insert_with(|| json!(st.workspace_id));
        object.entry("created_at").or_insert_with(|| json!(now));
        object.entry("updated_at").or_insert_with(|| json!(now));
        object.entry("environment").or_insert_with(|| json!("Production"));
        object.entry("permissions").or_insert_with(|| json!([]));
        object.entry("categories").or_insert_with(|| json!([]));
        st.connections.push(connection);
        id
    }

    /// Successful POST/PUT/PATCH/DELETE requests under /unified.
    pub fn writes(&self) -> usize {
        self.kit().log().succeeded(&api().writes())
    }

    /// Every request so far as (method, path with query), in order.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.kit().log().requests()
    }
}

fn router(state: Shared) -> Router {
    let routes = Router::new()
        .route("/unified/connection", get(list).post(create))
        .route("/unified/connection/{id}", get(read).put(replace).patch(patch).delete(remove))
        .fallback(|| async { api_error(StatusCode::NOT_FOUND, "Not Found") })
        .with_state(state.clone());
    kit::guard(routes, state, api(), |st, request| st.authorize(request.headers()))
}

fn api() -> RequestMatch {
    RequestMatch::any().under("/unified")
}

/// Unified.to's error body for an injected status.
fn error_body(status: StatusCode, _path: &str) -> Response {
    match status {
        StatusCode::TOO_MANY_REQUESTS => api_error(status, "Too many requests, please slow down"),
        _ => api_error(status, status.canonical_reason().unwrap_or("Server error")),
    }
}

async fn list(AxState(s): AxState<Shared>, RawQuery(query): RawQuery) -> Response {
    reply(lock(&s).list(&query_pairs(query.as_deref())))
}

async fn create(AxState(s): AxState<Shared>, body: Bytes) -> Response {
    reply(lock(&s).create(&body))
}

async fn read(AxState(s): AxState<Shared>, Path(id): Path<String>) -> Response {
    let st = lock(&s);
    reply(st.find(&id).map(|c| Json(st.render(c)).into_response()).ok_or_else(not_found))
}

async fn replace(AxState(s): AxState<Shared>, Path(id): Path<String>, body: Bytes) -> Response {
    reply(lock(&s).update(&id, &body, false))
}

async fn patch(AxState(s): AxState<Shared>, Path(id): Path<String>, body: Bytes) -> Response {
    reply(lock(&s).update(&id, &body, true))
}

async fn remove(AxState(s): AxState<Shared>, Path(id): Path<String>) -> Response {
    let mut st = lock(&s);
    let Some(index) = st.connections.iter().position(|c| c["id"] == id.as_str()) else {
        return not_found();
    };
    st.connections.remove(index);
    StatusCode::OK.into_response()
}

impl UnifiedState {
    /// A workspace with `microsoft_ad` activated, no token and no connection.
    fn new(workspace_id: String) -> Self {
        Self {
            workspace_id,
            tokens: BTreeSet::new(),
            integrations: BTreeSet::from(["microsoft_ad".to_owned()]),
            secret_reads: SecretReads::default(),
            connections: Vec::new(),
        }
    }

    fn find(&self, id: &str) -> Option<&Value> {
        self.connections.iter().find(|c| c["id"] == id)
    }

    fn find_mut(&mut self, id: &str) -> Option<&mut Value> {
        self.connections.iter_mut().find(|c| c["id"] == id)
    }

    fn authorize(&self, headers: &HeaderMap) -> Result<(), Response> {
        match bearer(headers) {
            Some(token) if self.tokens.contains(token) => Ok(()),
            Some(_) => Err(api_error(StatusCode::UNAUTHORIZED, "Invalid API token")),
            None => Err(api_error(StatusCode::UNAUTHORIZED, "Missing Authorization header")),
        }
    }

    /// A connection as the API shows it: secrets masked, omitted or plain.
    fn render(&self, connection: &Value) -> Value {
        let mut shown = connection.clone();
        if let Some(auth) = shown.get_mut("auth").and_then(Value::as_object_mut) {
            for key in SECRET_AUTH_KEYS {
                match self.secret_reads {
                    SecretReads::Plain => {}
                    SecretReads::Omitted => {
                        auth.remove(*key);
                    }
                    SecretReads::Masked => {
                        if let Some(value) = auth.get_mut(*key).filter(|v| v.is_string()) {
                            *value = json!(MASK);
                        }
                    }
                }
            }
        }
        shown
    }

    fn list(&self, query: &[(String, String)]) -> Reply {
        let limit = query_int(query, "limit", 1, MAX_LIMIT)?.unwrap_or(MAX_LIMIT);
        let offset = query_int(query, "offset", 0, usize::MAX)?.unwrap_or(0);
        let xref = query_value(query, "external_xref");
        let categories: Vec<&str> =
            query.iter().filter(|(k, _)| k == "categories").flat_map(|(_, v)| v.split(',')).filter(|c| !c.is_empty()).collect();
        if let Some(bad) = categories.iter().find(|c| !CATEGORIES.contains(c)) {
            return Err(api_error(StatusCode::BAD_REQUEST, &format!("Invalid category: {bad}")));
        }
        let mut matches: Vec<&Value> = self
            .connections
            .iter()
            .filter(|c| xref.is_none_or(|x| c["external_xref"] == x))
            .filter(|c| categories.is_empty() || string_items(&c["categories"]).iter().any(|have| categories.contains(have)))
            .collect();
        let sort_key = match query_value(query, "sort") {
            None => None,
            Some(key @ ("created_at" | "updated_at")) => Some(key),
            Some("name") => Some("integration_name"),
            Some(other) => return Err(api_error(StatusCode::BAD_REQUEST, &format!("Invalid sort: {other}"))),
        };
        let descending = match query_value(query, "order") {
            None | Some("asc") => false,
            Some("desc") => true,
            Some(other) => return Err(api_error(StatusCode::BAD_REQUEST, &format!("Invalid order: {other}"))),
        };
        if let Some(key) = sort_key {
            matches.sort_by(|a, b| a[key].as_str().unwrap_or_default().cmp(b[key].as_str().unwrap_or_default()));
        }
        if descending {
            matches.reverse();
        }
        let page: Vec<Value> = matches.into_iter().skip(offset).take(limit).map(|c| self.render(c)).collect();
        Ok(Json(page).into_response())
    }

    fn create(&mut self, body: &[u8]) -> Reply {
        let body = parse_object(body)?;
        let mut connection = self.validated(body)?;
        let now = now();
        connection.insert("id".into(), json!(new_id()));
        connection.insert("workspace_id".into(), json!(self.workspace_id));
        connection.insert("created_at".into(), json!(now));
        connection.insert("updated_at".into(), json!(now));
        let connection = Value::Object(connection);
        let shown = self.render(&connection);
        self.connections.push(connection);
        Ok(Json(shown).into_response())
    }

    /// `PUT` (full replace) or `PATCH` (top-level merge; `auth` replaced wholesale).
    fn update(&mut self, id: &str, body: &[u8], merge: bool) -> Reply {
        let body = parse_object(body)?;
        let stored = self.find(id).ok_or_else(not_found)?.as_object().cloned().unwrap_or_default();
        let candidate = if merge {
            let mut merged: Map<String, Value> =
                stored.iter().filter(|(k, _)| WRITABLE.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect();
            merged.extend(body);
            merged
        } else {
            body
        };
        if candidate.get("integration_type").is_some_and(|t| *t != stored["integration_type"]) {
            return Err(unprocessable("integration_type cannot be changed"));
        }
        let mut connection = self.validated(candidate)?;
        for key in READ_ONLY {
            if let Some(value) = stored.get(*key) {
                connection.insert((*key).to_owned(), value.clone());
            }
        }
        connection.insert("updated_at".into(), json!(now()));
        let connection = Value::Object(connection);
        let shown = self.render(&connection);
        *self.find_mut(id).expect("found above") = connection;
        Ok(Json(shown).into_response())
    }

    /// The writable part of a connection body, checked; defaults filled.
    fn validated(&self, body: Map<String, Value>) -> Result<Map<String, Value>, Response> {
        if let Some(key) = body.keys().find(|k| !WRITABLE.contains(&k.as_str()) && !READ_ONLY.contains(&k.as_str())) {
            return Err(unprocessable(&format!("Unknown property: {key}")));
        }
        let mut connection: Map<String, Value> = body.into_iter().filter(|(k, _)| WRITABLE.contains(&k.as_str())).collect();
        let integration = match connection.get("integration_type") {
            Some(Value::String(t)) if !t.is_empty() => t.clone(),
            Some(_) => return Err(unprocessable("integration_type must be a string")),
            None => return Err(unprocessable("integration_type is required")),
        };
        if !self.integrations.contains(&integration) {
            return Err(unprocessable(&format!("Integration {integration} is not activated in this workspace")));
        }
        let permissions = string_array(&connection, "permissions")?;
        if let Some(bad) = permissions.iter().find(|p| !valid_permission(p)) {
            return Err(unprocessable(&format!("Invalid permission: {bad}")));
        }
        let categories = string_array(&connection, "categories")?;
        if let Some(bad) = categories.iter().find(|c| !CATEGORIES.contains(&c.as_str())) {
            return Err(unprocessable(&format!("Invalid category: {bad}")));
        }
        for key in ["external_xref", "integration_name", "environment", "auth_aws_arn"] {
            if connection.get(key).is_some_and(|v| !v.is_string()) {
                return Err(unprocessable(&format!("{key} must be a string")));
            }
        }
        if connection.get("is_paused").is_some_and(|v| !v.is_boolean()) {
            return Err(unprocessable("is_paused must be a boolean"));
        }
        match connection.get("auth") {
            None if connection.contains_key("auth_aws_arn") => {}
            None => return Err(unprocessable("auth is required to import a connection")),
            Some(Value::Object(auth)) => check_auth(&integration, auth)?,
            Some(_) => return Err(unprocessable("auth must be an object")),
        }
        connection.entry("environment").or_insert_with(|| json!("Production"));
        connection.entry("is_paused").or_insert_with(|| json!(false));
        Ok(connection)
    }
}

/// A `microsoft_ad` import through the client-credentials flow needs the app's id and secret
/// and the tenant's token endpoint.
fn check_auth(integration: &str, auth: &Map<String, Value>) -> Result<(), Response> {
    if let Some((key, _)) = auth.iter().find(|(_, v)| v.is_null()) {
        return Err(unprocessable(&format!("auth.{key} must not be null")));
    }
    if integration != "microsoft_ad" {
        return Ok(());
    }
    for key in ["client_id", "client_secret", "token_url"] {
        if auth.get(key).and_then(Value::as_str).is_none_or(str::is_empty) {
            return Err(unprocessable(&format!("auth.{key} is required for a microsoft_ad client credentials connection")));
        }
    }
    let token_url = auth["token_url"].as_str().unwrap_or_default();
    match Url::parse(token_url) {
        Ok(url) if url.scheme() == "https" && url.path().ends_with("/oauth2/v2.0/token") => Ok(()),
        _ => Err(unprocessable("auth.token_url must be an Entra ID v2 token endpoint (https://…/oauth2/v2.0/token)")),
    }
}

fn valid_permission(p: &str) -> bool {
    p.starts_with(|c: char| c.is_ascii_lowercase()) && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn string_array(connection: &Map<String, Value>, key: &str) -> Result<Vec<String>, Response> {
    match connection.get(key) {
        None => Err(unprocessable(&format!("{key} is required"))),
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => {
            Ok(string_items(&connection[key]).into_iter().map(str::to_owned).collect())
        }
        Some(_) => Err(unprocessable(&format!("{key} must be an array of strings"))),
    }
}

fn string_items(value: &Value) -> Vec<&str> {
    value.as_array().into_iter().flatten().filter_map(Value::as_str).collect()
}

/// Unified.to's error body.
fn api_error(status: StatusCode, message: &str) -> Response {
    let body = json!({"statusCode": status.as_u16(), "error": status.canonical_reason().unwrap_or("Error"), "message": message});
    (status, Json(body)).into_response()
}

fn unprocessable(message: &str) -> Response {
    api_error(StatusCode::UNPROCESSABLE_ENTITY, message)
}

fn not_found() -> Response {
    api_error(StatusCode::NOT_FOUND, "Connection not found")
}

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, Response> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(unprocessable("The body must be a JSON object")),
        Err(_) => Err(api_error(StatusCode::BAD_REQUEST, "Invalid JSON")),
    }
}

/// A 24-hex-digit id, like Unified.to's.
fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..24].to_owned()
}

fn now() -> String {
    Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

fn query_int(query: &[(String, String)], key: &str, min: usize, max: usize) -> Result<Option<usize>, Response> {
    super::query_int(query, key, min..=max)
        .map_err(|_| api_error(StatusCode::BAD_REQUEST, &format!("{key} must be an integer between {min} and {max}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> UnifiedState {
        UnifiedState::new("ws".into())
    }

    fn import() -> Map<String, Value> {
        json!({
            "integration_type": "microsoft_ad", "permissions": ["hris_employee_read"], "categories": ["hris"],
            "auth": {"client_id": "c", "client_secret": "s", "token_url": "https://login.microsoftonline.com/t/oauth2/v2.0/token"},
        })
        .as_object()
        .cloned()
        .unwrap()
    }

    #[test]
    fn writes_are_validated() {
        let st = state();
        assert!(st.validated(import()).is_ok());
        let edits: [fn(&mut Value); 8] = [
            |b| b["integration_type"] = json!("bamboohr"),
            |b| drop(b.as_object_mut().unwrap().remove("auth")),
            |b| drop(b["auth"].as_object_mut().unwrap().remove("client_secret")),
            |b| b["auth"]["token_url"] = json!("http://x/token"),
            |b| b["categories"] = json!(["nope"]),
            |b| b["permissions"] = json!(["Bad Permission"]),
            |b| drop(b.as_object_mut().unwrap().remove("permissions")),
            |b| b["surprise"] = json!(1),
        ];
        for (i, edit) in edits.iter().enumerate() {
            let mut body = Value::Object(import());
            edit(&mut body);
            let Value::Object(body) = body else { unreachable!() };
            assert_eq!(st.validated(body).unwrap_err().status(), StatusCode::UNPROCESSABLE_ENTITY, "edit {i}");
        }
    }

    #[test]
    fn reads_hide_secrets_as_configured() {
        let mut st = state();
        let stored = Value::Object(st.validated(import()).unwrap());
        assert_eq!(st.render(&stored)["auth"]["client_secret"], MASK);
        st.secret_reads = SecretReads::Omitted;
        assert!(st.render(&stored)["auth"].get("client_secret").is_none());
        st.secret_reads = SecretReads::Plain;
        assert_eq!(st.render(&stored)["auth"]["client_secret"], "s");
        assert_eq!(st.render(&stored)["auth"]["client_id"], "c");
    }

    #[test]
    fn put_replaces_everything_and_patch_replaces_auth_wholesale() {
        let mut st = state();
        let mut body = Value::Object(import());
        body["external_xref"] = json!("x");
        body["is_paused"] = json!(true);
        let created: Value = serde_json::from_slice(&response_body(st.create(body.to_string().as_bytes()))).unwrap();
        let id = created["id"].as_str().unwrap().to_owned();
        assert_eq!(created["auth"]["client_secret"], MASK, "the answer to a write is masked too");

        // PATCH: other top-level fields stay; an `auth` without the secret is a broken import.
        let patch = json!({"permissions": ["hris_group_read"], "auth": {"client_id": "c2", "token_url": "https://login.microsoftonline.com/t/oauth2/v2.0/token"}});
        assert_eq!(st.update(&id, patch.to_string().as_bytes(), true).unwrap_err().status(), StatusCode::UNPROCESSABLE_ENTITY);
        let patch = json!({"permissions": ["hris_group_read"]});
        st.update(&id, patch.to_string().as_bytes(), true).unwrap();
        let stored = st.find(&id).unwrap().clone();
        assert_eq!(
            (&stored["external_xref"], &stored["permissions"], &stored["auth"]["client_secret"]),
            (&json!("x"), &json!(["hris_group_read"]), &json!("s"))
        );

        // PUT: what is not sent is gone, read-only fields stay.
        st.update(&id, Value::Object(import()).to_string().as_bytes(), false).unwrap();
        let stored = st.find(&id).unwrap().clone();
        assert!(stored.get("external_xref").is_none());
        assert_eq!((&stored["is_paused"], &stored["created_at"], &stored["id"]), (&json!(false), &created["created_at"], &json!(id)));
        let mut other = Value::Object(import());
        other["integration_type"] = json!("bamboohr");
        st.integrations.insert("bamboohr".into());
        assert_eq!(st.update(&id, other.to_string().as_bytes(), false).unwrap_err().status(), StatusCode::UNPROCESSABLE_ENTITY);
    }

    fn response_body(reply: Reply) -> Vec<u8> {
        let response = reply.unwrap_or_else(|e| panic!("an error answer: {}", e.status()));
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(axum::body::to_bytes(response.into_body(), usize::MAX)).unwrap().to_vec()
    }

    #[test]
    fn ids_look_like_unified_ids() {
        let id = new_id();
        assert_eq!(id.len(), 24);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
