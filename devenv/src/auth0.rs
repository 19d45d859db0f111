//! Emulator of the Auth0 Management API v2 connection endpoints and of the machine-to-machine
//! token endpoint that guards them.
//!
//! It keeps the vendor's awkward behaviour on purpose, as Auth0's Management API v2 reference
//! (<https://auth0.com/docs/api/management/v2/connections>) and its rate-limit policy
//! (<https://auth0.com/docs/troubleshoot/customer-support/operational-policies/rate-limit-policy>)
//! describe it: PATCH replaces the whole `options` object and resets an absent `display_name` to
//! the name, `name` and `strategy` are immutable, reads return `client_secret` in plain text, and
//! every /api/v2 answer carries the `x-ratelimit-*` headers (a 429 says when to come back in
//! `x-ratelimit-reset`, never in `Retry-After`). Request bodies and tokens are never logged.
//!
//! It also enforces the connection-options scopes Auth0 introduced in 2025
//! (<https://auth0.com/docs/troubleshoot/product-lifecycle/deprecations-and-migrations/migrate-connection-options-scope>):
//! without `read:connections_options` a connection is shown without `options` (reads, lists, and
//! the answers of create and update alike), and without `update:connections_options` an update
//! whose body carries `options` is refused with 403. Create is not affected: `create:connections`
//! alone may send `options`.

#![allow(clippy::result_large_err, reason = "early returns carry whole HTTP answers; size does not matter in a test emulator")]

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
};

use axum::{
    Extension, Json, Router,
    body::Bytes,
    extract::{Path, RawQuery, Request, State as AxState},
    http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use jiff::Timestamp;
use serde_json::{Map, Value, json};

use super::{
    Reply,
    azure::bearer,
    kit::{self, Emulator, Fault, KitBuilder, RequestMatch},
    lock, query_pairs, query_value, random_alnum, reply,
    tls::TestCa,
    tokens::{IssuedTokens, Presented},
};

const DEFAULT_TOKEN_TTL_SECS: i64 = 86_400;
/// The scope without which connections are shown without `options`.
pub const READ_OPTIONS_SCOPE: &str = "read:connections_options";
/// The scope without which an update carrying `options` is refused.
pub const UPDATE_OPTIONS_SCOPE: &str = "update:connections_options";
/// Requests per window advertised in `x-ratelimit-limit` (the emulator never enforces it).
const RATE_LIMIT: u64 = 50;
const MAX_CLIENTS_PER_PATCH: usize = 50;
const CREATE_FIELDS: &[&str] =
    &["name", "display_name", "strategy", "options", "enabled_clients", "is_domain_connection", "show_as_button", "realms", "metadata"];
const UPDATE_FIELDS: &[&str] =
    &["display_name", "options", "enabled_clients", "is_domain_connection", "realms", "metadata", "show_as_button"];
/// Signing-key thumbprints Auth0 stores for a waad connection (values from a recorded tenant).
const WAAD_THUMBPRINTS: [&str; 2] = ["8a48f046b8d93d1e7c6bfc10c54ce9cc6b94378b", "31cee5dc8cfdde0eeec2035e1269b0fd66063e4a"];

/// A running emulator of one tenant; clones share the state and the server, which stops with
/// the last clone.
pub type Auth0Emulator = Emulator<Auth0State>;

type Shared = Arc<Mutex<Auth0State>>;

/// The emulated tenant: its M2M clients, the tokens issued to them and its connections.
pub struct Auth0State {
    domain: String,
    clients: HashMap<String, M2mClient>,
    /// Each token grants its client's scopes.
    tokens: IssuedTokens<Vec<String>>,
    /// In creation order, as the API lists them.
    connections: Vec<Value>,
    /// Current one-second window (UNIX second) and the /api/v2 requests seen in it.
    window: (i64, u64),
}

struct M2mClient {
    secret: String,
    scopes: Vec<String>,
}

impl Auth0Emulator {
    /// Starts an emulator of tenant `domain` (e.g. `acme.auth0.com`). Needs a Tokio runtime context.
    pub fn start(ca: &TestCa, domain: &str) -> std::io::Result<Self> {
        let state = Arc::new(Mutex::new(Auth0State {
            domain: domain.to_owned(),
            clients: HashMap::new(),
            tokens: IssuedTokens::new(DEFAULT_TOKEN_TTL_SECS),
            connections: Vec::new(),
            window: (0, 0),
        }));
        let kit = KitBuilder::new("auth0", error_body);
        let app = kit.wrap(router(state.clone())).layer(middleware::from_fn_with_state(state.clone(), stamp_rate_headers));
        Ok(Emulator::new(state, kit.serve(app, ca)?))
    }

    pub fn domain(&self) -> String {
        self.state().domain.clone()
    }

    /// A machine-to-machine application authorized for the Management API with `scopes` and the
    /// two connection-options scopes, as an application set up today is. [`Self::set_m2m_scopes`]
    /// sets an exact grant.
    pub fn add_m2m_client(&self, client_id: &str, secret: &str, scopes: &[&str]) {
        let mut granted: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        for scope in [READ_OPTIONS_SCOPE, UPDATE_OPTIONS_SCOPE] {
            if !granted.iter().any(|s| s == scope) {
                granted.push(scope.to_owned());
            }
        }
        let client = M2mClient { secret: secret.to_owned(), scopes: granted };
        self.state().clients.insert(client_id.to_owned(), client);
    }

    /// Replaces a client's grant with exactly `scopes`; tokens issued from now on carry them (and
    /// tokens already issued keep theirs, as with real JWTs).
    pub fn set_m2m_scopes(&self, client_id: &str, scopes: &[&str]) {
        let mut st = self.state();
        let client = st.clients.get_mut(client_id).unwrap_or_else(|| panic!("unknown M2M client {client_id}"));
        client.scopes = scopes.iter().map(|s| s.to_string()).collect();
    }

    /// Rotates a client's secret; tokens already issued stay valid, as with real JWTs.
    pub fn set_m2m_secret(&self, client_id: &str, secret: &str) {
        let mut st = self.state();
        let client = st.clients.get_mut(client_id).unwrap_or_else(|| panic!("unknown M2M client {client_id}"));
        client.secret = secret.to_owned();
    }

    pub fn set_token_ttl(&self, secs: u64) {
        self.state().tokens.set_ttl(secs);
    }

    /// Invalidates every issued token, as if they had all expired.
    pub fn revoke_tokens(&self) {
        self.state().tokens.revoke_all();
    }

    /// Requests to the token endpoint so far (answered or not).
    pub fn token_requests(&self) -> usize {
        self.kit().log().count(&RequestMatch::any().method(Method::POST).path("/oauth/token"))
    }

    /// The next `n` /api/v2 requests get 429 with `x-ratelimit-remaining: 0` and a reset
    /// `reset_in_secs` from now (and no `Retry-After`, like Auth0).
    pub fn rate_limit_next(&self, n: usize, reset_in_secs: u64) {
        let reset = Timestamp::now().as_second().saturating_add_unsigned(reset_in_secs);
        let fault = Fault::status(429).times(n).on(api()).header(HeaderName::from_static("x-ratelimit-reset"), HeaderValue::from(reset));
        self.kit().faults().push(fault);
    }

    pub fn connection(&self, id: &str) -> Option<Value> {
        self.state().find(id).cloned()
    }

    pub fn connection_by_name(&self, name: &str) -> Option<Value> {
        self.state().connections.iter().find(|c| c["name"] == name).cloned()
    }

    pub fn connections(&self) -> Vec<Value> {
        self.state().connections.clone()
    }

    pub fn enabled_clients(&self, id: &str) -> BTreeSet<String> {
        self.state().find(id).map(|c| client_set(&c["enabled_clients"])).unwrap_or_default()
    }

    /// Successful POST/PATCH/DELETE requests under /api/v2.
    pub fn writes(&self) -> usize {
        self.kit().log().succeeded(&api().writes())
    }

    /// Every request so far as (method, path without the query), in order.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.kit().log().entries().into_iter().map(|r| (r.method.to_string(), r.path)).collect()
    }

    /// Changes a stored connection behind the API's back, like an edit in the dashboard.
    pub fn edit_connection(&self, id: &str, edit: impl FnOnce(&mut Value)) {
        let mut st = self.state();
        let connection = st.find_mut(id).unwrap_or_else(|| panic!("unknown connection {id}"));
        edit(connection);
    }

    /// Seeds a connection as if made elsewhere; fills `id`, `display_name`, `realms` and
    /// `enabled_clients` when absent and returns the id.
    pub fn insert_connection(&self, mut connection: Value) -> String {
        let object = connection.as_object_mut().expect("a connection is a JSON object");
        let id = object.entry("id").or_insert_with(|| json!(new_connection_id())).as_str().expect("string id").to_owned();
        let name = object.get("name").cloned().unwrap_or(Value::Null);
        object.entry("display_name").or_insert_with(|| name.clone());
        object.entry("realms").or_insert_with(|| json!([name]));
        object.entry("enabled_clients").or_insert_with(|| json!([]));
        self.state().connections.push(connection);
        id
    }
}

fn router(state: Shared) -> Router {
    let routes = Router::new()
        .route("/oauth/token", post(oauth_token))
        .route("/api/v2/connections", get(list).post(create))
        .route("/api/v2/connections/{id}", get(read).patch(update).delete(remove))
        .route("/api/v2/connections/{id}/clients", get(list_clients).patch(update_clients))
        .fallback(|| async { api_error(StatusCode::NOT_FOUND, None, "Not Found") })
        .with_state(state.clone());
    kit::guard(routes, state, api(), |st, request| st.authorize(request.method(), request.headers()))
}

/// The Management API; the token endpoint lies outside it.
fn api() -> RequestMatch {
    RequestMatch::any().under("/api/v2")
}

/// Stamps the rate-limit headers on every /api/v2 answer, injected faults included.
async fn stamp_rate_headers(AxState(s): AxState<Shared>, request: Request, next: Next) -> Response {
    let in_api = api().matches(request.method(), request.uri().path());
    let mut response = next.run(request).await;
    if in_api && !response.headers().contains_key("x-ratelimit-limit") {
        let mut st = lock(&s);
        let now = Timestamp::now().as_second();
        if st.window.0 != now {
            st.window = (now, 0);
        }
        st.window.1 += 1;
        let remaining = RATE_LIMIT.saturating_sub(st.window.1);
        set_rate_headers(response.headers_mut(), remaining, now + 1);
    }
    response
}

/// Auth0's error body for an injected status; a 429 also says the window is spent (a rule's
/// own `x-ratelimit-reset` replaces the default reset).
fn error_body(status: StatusCode, _path: &str) -> Response {
    if status == StatusCode::TOO_MANY_REQUESTS {
        let mut response = api_error(status, Some("too_many_requests"), "Global limit has been reached");
        set_rate_headers(response.headers_mut(), 0, Timestamp::now().as_second() + 1);
        return response;
    }
    api_error(status, None, status.canonical_reason().unwrap_or("Server error"))
}

fn set_rate_headers(headers: &mut HeaderMap, remaining: u64, reset: i64) {
    headers.insert("x-ratelimit-limit", HeaderValue::from(RATE_LIMIT));
    headers.insert("x-ratelimit-remaining", HeaderValue::from(remaining));
    headers.insert("x-ratelimit-reset", HeaderValue::from(reset));
}

async fn oauth_token(AxState(s): AxState<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    reply(lock(&s).issue_token(&headers, &body))
}

async fn list(AxState(s): AxState<Shared>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    let st = lock(&s);
    reply(st.list(&query_pairs(query.as_deref()), st.grants(&headers, READ_OPTIONS_SCOPE)))
}

async fn create(AxState(s): AxState<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let mut st = lock(&s);
    let read_options = st.grants(&headers, READ_OPTIONS_SCOPE);
    reply(st.create(&body).map(|c| (StatusCode::CREATED, Json(shown(&c, read_options))).into_response()))
}

async fn read(AxState(s): AxState<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let st = lock(&s);
    let read_options = st.grants(&headers, READ_OPTIONS_SCOPE);
    reply(st.find(&id).map(|c| Json(shown(c, read_options)).into_response()).ok_or_else(not_found))
}

async fn update(AxState(s): AxState<Shared>, headers: HeaderMap, Path(id): Path<String>, body: Bytes) -> Response {
    let mut st = lock(&s);
    let (read_options, update_options) = (st.grants(&headers, READ_OPTIONS_SCOPE), st.grants(&headers, UPDATE_OPTIONS_SCOPE));
    reply(st.update(&id, &body, update_options).map(|c| Json(shown(&c, read_options)).into_response()))
}

/// A connection as a caller sees it: without `options` unless it may read them.
fn shown(connection: &Value, read_options: bool) -> Value {
    let mut connection = connection.clone();
    if !read_options && let Some(object) = connection.as_object_mut() {
        object.remove("options");
    }
    connection
}

async fn remove(AxState(s): AxState<Shared>, Path(id): Path<String>) -> Response {
    let mut st = lock(&s);
    let Some(index) = st.connections.iter().position(|c| c["id"] == id.as_str()) else {
        return not_found();
    };
    st.connections.remove(index);
    let deleted_at = Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
    (StatusCode::ACCEPTED, Json(json!({ "deleted_at": deleted_at }))).into_response()
}

async fn list_clients(
    AxState(s): AxState<Shared>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    endless: Option<Extension<kit::EndlessPages>>,
) -> Response {
    reply(lock(&s).list_clients(&id, &query_pairs(query.as_deref()), endless.is_some()))
}

async fn update_clients(AxState(s): AxState<Shared>, Path(id): Path<String>, body: Bytes) -> Response {
    reply(lock(&s).update_clients(&id, &body))
}

impl Auth0State {
    fn find(&self, id: &str) -> Option<&Value> {
        self.connections.iter().find(|c| c["id"] == id)
    }

    fn find_mut(&mut self, id: &str) -> Option<&mut Value> {
        self.connections.iter_mut().find(|c| c["id"] == id)
    }

    /// Whether the request's token (already checked by [`Self::authorize`]) holds `scope`.
    fn grants(&self, headers: &HeaderMap, scope: &str) -> bool {
        match bearer(headers).map(|token| self.tokens.presented(token)) {
            Some(Presented::Valid(scopes)) => scopes.iter().any(|s| s == scope),
            _ => false,
        }
    }

    /// A bearer token this emulator issued, unexpired, holding the operation's scope.
    fn authorize(&self, method: &Method, headers: &HeaderMap) -> Result<(), Response> {
        let unauthorized = |message| api_error(StatusCode::UNAUTHORIZED, None, message);
        let token = bearer(headers).ok_or_else(|| unauthorized("Missing authentication"))?;
        let scopes = match self.tokens.presented(token) {
            Presented::Unknown => return Err(unauthorized("Invalid token")),
            Presented::Expired => return Err(unauthorized("Expired token received for JSON Web Token validation")),
            Presented::Valid(scopes) => scopes,
        };
        let needed = match *method {
            Method::GET => "read:connections",
            Method::POST => "create:connections",
            Method::PATCH => "update:connections",
            Method::DELETE => "delete:connections",
            _ => return Ok(()),
        };
        if scopes.iter().any(|s| s == needed) {
            return Ok(());
        }
        let message = format!("Insufficient scope, expected any of: {needed}");
        Err(api_error(StatusCode::FORBIDDEN, Some("insufficient_scope"), &message))
    }

    fn issue_token(&mut self, headers: &HeaderMap, body: &[u8]) -> Reply {
        let is_json = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("json"));
        let params: HashMap<String, String> = if is_json {
            let Ok(object) = serde_json::from_slice::<Map<String, Value>>(body) else {
                return Err(oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "Invalid request body"));
            };
            object.into_iter().filter_map(|(k, v)| Some((k, v.as_str()?.to_owned()))).collect()
        } else {
            url::form_urlencoded::parse(body).into_owned().collect()
        };
        let param = |name: &str| params.get(name).map(String::as_str).filter(|v| !v.is_empty());
        match param("grant_type") {
            None => {
                return Err(oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "Missing required parameter: grant_type"));
            }
            Some("client_credentials") => {}
            Some(other) => {
                let message = format!("Unsupported grant type: {other}");
                return Err(oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", &message));
            }
        }
        let client = param("client_id").and_then(|id| self.clients.get(id));
        let Some(client) = client.filter(|c| param("client_secret") == Some(c.secret.as_str())) else {
            return Err(oauth_error(StatusCode::UNAUTHORIZED, "access_denied", "Unauthorized"));
        };
        let expected = format!("https://{}/api/v2/", self.domain);
        match param("audience") {
            None => {
                let message = "No audience parameter was provided, and no default audience has been configured";
                return Err(oauth_error(StatusCode::FORBIDDEN, "access_denied", message));
            }
            Some(audience) if audience != expected => {
                let message = format!("Service not enabled within domain: {audience}");
                return Err(oauth_error(StatusCode::FORBIDDEN, "access_denied", &message));
            }
            Some(_) => {}
        }
        let scope = client.scopes.join(" ");
        let access_token = self.tokens.issue(client.scopes.clone(), 96);
        let body = json!({"access_token": access_token, "token_type": "Bearer", "expires_in": self.tokens.ttl_secs(), "scope": scope});
        Ok(Json(body).into_response())
    }

    fn list(&self, query: &[(String, String)], read_options: bool) -> Reply {
        let name = query_value(query, "name");
        let strategies: Vec<&str> = query.iter().filter(|(k, _)| k == "strategy").map(|(_, v)| v.as_str()).collect();
        let shown: Vec<Value> = self
            .connections
            .iter()
            .filter(|c| name.is_none_or(|n| c["name"] == n))
            .filter(|c| strategies.is_empty() || strategies.iter().any(|s| c["strategy"] == *s))
            .map(|c| shown(c, read_options))
            .collect();
        let matches: Vec<&Value> = shown.iter().collect();
        if query_value(query, "from").is_some() || query_value(query, "take").is_some() {
            // Checkpoint paging: `from` is the id of the first connection of the page.
            let take = query_int(query, "take", 1, 100)?.unwrap_or(50);
            let start = match query_value(query, "from") {
                None => 0,
                Some(from) => matches
                    .iter()
                    .position(|c| c["id"] == from)
                    .ok_or_else(|| invalid_query("'Invalid from parameter' on property from"))?,
            };
            let page: Vec<&Value> = matches.iter().skip(start).take(take).copied().collect();
            let mut body = json!({ "connections": page });
            if let Some(next) = matches.get(start + take) {
                body["next"] = next["id"].clone();
            }
            return Ok(Json(body).into_response());
        }
        let per_page = query_int(query, "per_page", 1, 100)?;
        let page = query_int(query, "page", 0, 100_000)?;
        let totals = query_value(query, "include_totals") == Some("true");
        if per_page.is_none() && page.is_none() && !totals {
            return Ok(Json(matches).into_response());
        }
        let per_page = per_page.unwrap_or(50);
        let start = page.unwrap_or(0) * per_page;
        let slice: Vec<&Value> = matches.iter().skip(start).take(per_page).copied().collect();
        if !totals {
            return Ok(Json(slice).into_response());
        }
        Ok(Json(json!({"start": start, "limit": per_page, "total": matches.len(), "connections": slice})).into_response())
    }

    /// Stores a new connection and returns it.
    fn create(&mut self, body: &[u8]) -> Result<Value, Response> {
        const SCHEMA: &str = "Connection create";
        let body = parse_object(body, SCHEMA)?;
        check_fields(&body, CREATE_FIELDS, SCHEMA)?;
        let required = |key: &str| {
            body.get(key)
                .and_then(Value::as_str)
                .ok_or_else(|| invalid_body(&format!("'Missing required property: {key}' on property #/ ({SCHEMA})")))
        };
        let (name, strategy) = (required("name")?, required("strategy")?);
        if !valid_name(name) {
            let detail = format!(
                "'String does not match pattern ^[a-zA-Z0-9](-?[a-zA-Z0-9])*$: {name}' on property name (The name of the connection. Must start and end with an alphanumeric character and can only contain alphanumeric characters and '-'. Max length 128)"
            );
            return Err(invalid_body(&detail));
        }
        if body.get("options").is_some_and(Value::is_null) {
            return Err(invalid_body(&format!("'Expected type object but found type null' on property options ({SCHEMA})")));
        }
        check_options(strategy, body.get("options"))?;
        if self.connections.iter().any(|c| c["name"] == name) {
            let message = "A connection with the same name already exists";
            return Err(api_error(StatusCode::CONFLICT, Some("connection_conflict"), message));
        }
        let mut options = body.get("options").cloned().unwrap_or_else(|| json!({}));
        if strategy == "waad" {
            // Set by Auth0 and Azure; a later PATCH of `options` drops them unless resent.
            options["thumbprints"] = json!(WAAD_THUMBPRINTS);
            options["app_domain"] = json!(self.domain);
            options["waad_common_endpoint"] = options.get("useCommonEndpoint").cloned().unwrap_or(json!(false));
        }
        let tenant = self.domain.split('.').next().unwrap_or_default();
        let mut connection = json!({
            "id": new_connection_id(),
            "name": name,
            "display_name": body.get("display_name").cloned().unwrap_or_else(|| json!(name)),
            "strategy": strategy,
            "options": options,
            "enabled_clients": client_set(body.get("enabled_clients").unwrap_or(&Value::Null)),
            "is_domain_connection": body.get("is_domain_connection").cloned().unwrap_or(json!(false)),
            "realms": realms(body.get("realms"), name),
            "provisioning_ticket_url": format!("https://{}/{tenant}/p/{strategy}/{}", self.domain, random_alnum(8)),
        });
        for key in ["show_as_button", "metadata"] {
            if let Some(value) = body.get(key) {
                connection[key] = value.clone();
            }
        }
        self.connections.push(connection.clone());
        Ok(connection)
    }

    /// Updates a connection and returns it; `update_options` says whether the caller may send
    /// `options`.
    fn update(&mut self, id: &str, body: &[u8], update_options: bool) -> Result<Value, Response> {
        const SCHEMA: &str = "Connection update";
        let body = parse_object(body, SCHEMA)?;
        check_fields(&body, UPDATE_FIELDS, SCHEMA)?;
        if body.contains_key("options") && !update_options {
            let message = format!("Updating the \"options\" property requires the \"{UPDATE_OPTIONS_SCOPE}\" scope");
            return Err(api_error(StatusCode::FORBIDDEN, Some("insufficient_scope"), &message));
        }
        let connection = self.find_mut(id).ok_or_else(not_found)?;
        let strategy = connection["strategy"].as_str().unwrap_or_default().to_owned();
        if let Some(options) = body.get("options").filter(|o| !o.is_null()) {
            check_options(&strategy, Some(options))?;
        }
        let name = connection["name"].as_str().unwrap_or_default().to_owned();
        for (key, value) in &body {
            connection[key] = match key.as_str() {
                // The whole object is replaced: the vendor's documented, surprising semantics.
                "options" if value.is_null() => json!({}),
                "realms" => realms(Some(value), &name),
                "enabled_clients" => client_set(value).into_iter().collect(),
                _ => value.clone(),
            };
        }
        if !body.contains_key("display_name") {
            connection["display_name"] = json!(name);
        }
        Ok(connection.clone())
    }

    /// A page of a connection's enabled clients. `endless` (a request marked by the kit's
    /// `Fault::endless_pages`) pages through numbered filler clients that never run out.
    fn list_clients(&self, id: &str, query: &[(String, String)], endless: bool) -> Reply {
        let take = query_int(query, "take", 1, 100)?.unwrap_or(50);
        let after = match query_value(query, "from") {
            None => None,
            Some(cursor) => Some(decode_cursor(cursor).ok_or_else(|| invalid_query("'Invalid from parameter' on property from"))?),
        };
        let connection = self.find(id).ok_or_else(not_found)?;
        let clients = if endless { endless_clients(after.as_deref(), take) } else { client_set(&connection["enabled_clients"]) };
        let remaining: Vec<&String> = clients.iter().filter(|c| after.as_ref().is_none_or(|a| *c > a)).collect();
        let page = &remaining[..take.min(remaining.len())];
        let mut body = json!({ "clients": page.iter().map(|c| json!({ "client_id": c })).collect::<Vec<_>>() });
        if let (Some(last), true) = (page.last(), remaining.len() > take) {
            body["next"] = json!(URL_SAFE_NO_PAD.encode(last.as_bytes()));
        }
        Ok(Json(body).into_response())
    }

    fn update_clients(&mut self, id: &str, body: &[u8]) -> Reply {
        const SCHEMA: &str = "Connection clients update";
        let items: Vec<Value> = match serde_json::from_slice::<Value>(body) {
            Ok(Value::Array(items)) => items,
            Ok(other) => {
                return Err(invalid_body(&format!("'Expected type array but found type {}' on property #/ ({SCHEMA})", json_type(&other))));
            }
            Err(_) => return Err(invalid_body("'Invalid JSON' on property #/")),
        };
        if items.len() > MAX_CLIENTS_PER_PATCH {
            let detail = format!("'Array is too long ({}), maximum {MAX_CLIENTS_PER_PATCH}' on property #/ ({SCHEMA})", items.len());
            return Err(invalid_body(&detail));
        }
        let mut delta = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let (Some(client_id), Some(status)) = (item["client_id"].as_str(), item["status"].as_bool()) else {
                return Err(invalid_body(&format!("'Expected client_id (string) and status (boolean)' on property #/{i} ({SCHEMA})")));
            };
            delta.push((client_id.to_owned(), status));
        }
        let connection = self.find_mut(id).ok_or_else(not_found)?;
        let mut clients = client_set(&connection["enabled_clients"]);
        for (client_id, enable) in delta {
            if enable {
                clients.insert(client_id);
            } else {
                clients.remove(&client_id);
            }
        }
        connection["enabled_clients"] = clients.into_iter().collect();
        Ok(StatusCode::NO_CONTENT.into_response())
    }
}

/// Auth0's Management API error body.
fn api_error(status: StatusCode, error_code: Option<&str>, message: &str) -> Response {
    let mut body = json!({"statusCode": status.as_u16(), "error": status.canonical_reason().unwrap_or("Error"), "message": message});
    if let Some(code) = error_code {
        body["errorCode"] = json!(code);
    }
    (status, Json(body)).into_response()
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (status, Json(json!({"error": error, "error_description": description}))).into_response()
}

fn not_found() -> Response {
    api_error(StatusCode::NOT_FOUND, Some("inexistent_connection"), "The connection does not exist")
}

fn invalid_body(detail: &str) -> Response {
    api_error(StatusCode::BAD_REQUEST, Some("invalid_body"), &format!("Payload validation error: {detail}"))
}

fn invalid_query(detail: &str) -> Response {
    api_error(StatusCode::BAD_REQUEST, Some("invalid_query_string"), &format!("Query validation error: {detail}"))
}

fn parse_object(body: &[u8], schema: &str) -> Result<Map<String, Value>, Response> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(other) => Err(invalid_body(&format!("'Expected type object but found type {}' on property #/ ({schema})", json_type(&other)))),
        Err(_) => Err(invalid_body("'Invalid JSON' on property #/")),
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Rejects unknown top-level keys (the schemas have `additionalProperties: false`) and values of
/// the wrong type.
fn check_fields(body: &Map<String, Value>, allowed: &[&str], schema: &str) -> Result<(), Response> {
    if let Some(key) = body.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(invalid_body(&format!("'Additional properties not allowed: {key}' on property #/ ({schema})")));
    }
    for (key, value) in body {
        let expected = match key.as_str() {
            "name" | "strategy" | "display_name" => "string",
            "options" if value.is_null() => continue,
            "options" | "metadata" => "object",
            "enabled_clients" | "realms" => "array",
            _ => "boolean",
        };
        let ok = json_type(value) == expected
            && match value {
                Value::Array(items) => items.iter().all(Value::is_string),
                Value::Object(m) if key == "metadata" => m.len() <= 10 && m.values().all(Value::is_string),
                Value::String(s) if key == "display_name" => s.chars().count() <= 128,
                _ => true,
            };
        if !ok {
            let detail = format!("'Expected type {expected} but found type {}' on property {key} ({schema})", json_type(value));
            return Err(invalid_body(&detail));
        }
    }
    Ok(())
}

/// Strategy-specific option checks; only waad's required `client_id` is modelled.
fn check_options(strategy: &str, options: Option<&Value>) -> Result<(), Response> {
    if strategy == "waad" && options.and_then(|o| o.get("client_id")).and_then(Value::as_str).is_none_or(str::is_empty) {
        return Err(invalid_body("'Missing required property: client_id' on property options (Options for the 'waad' connection)"));
    }
    Ok(())
}

/// `^[a-zA-Z0-9](-?[a-zA-Z0-9])*$`, at most 128 characters.
fn valid_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

/// An empty or absent realm list means the connection's name.
fn realms(value: Option<&Value>, name: &str) -> Value {
    match value {
        Some(Value::Array(items)) if !items.is_empty() => Value::Array(items.clone()),
        _ => json!([name]),
    }
}

fn client_set(value: &Value) -> BTreeSet<String> {
    value.as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_owned).collect()
}

fn new_connection_id() -> String {
    format!("con_{}", random_alnum(16))
}

/// The `take` filler client ids after `after`, plus one so the page always has a next one.
fn endless_clients(after: Option<&str>, take: usize) -> BTreeSet<String> {
    const FILLER: &str = "endless-client-";
    let start = after.and_then(|a| a.strip_prefix(FILLER)).and_then(|n| n.parse::<u64>().ok()).map_or(0, |n| n + 1);
    (start..=start + take as u64).map(|n| format!("{FILLER}{n:012}")).collect()
}

fn decode_cursor(cursor: &str) -> Option<String> {
    String::from_utf8(URL_SAFE_NO_PAD.decode(cursor).ok()?).ok()
}

fn query_int(query: &[(String, String)], key: &str, min: usize, max: usize) -> Result<Option<usize>, Response> {
    super::query_int(query, key, min..=max)
        .map_err(|raw| invalid_query(&format!("'Expected an integer between {min} and {max} but found {raw}' on property {key}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_names() {
        for ok in ["a", "acme-entra", "A1-b2-C3"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "a--b", "a_b", "a.b", &"x".repeat(129)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn field_types_are_checked() {
        let body = |v: Value| v.as_object().cloned().unwrap();
        assert!(check_fields(&body(json!({"display_name": "x", "realms": ["a"]})), UPDATE_FIELDS, "t").is_ok());
        assert!(check_fields(&body(json!({"display_name": 3})), UPDATE_FIELDS, "t").is_err());
        assert!(check_fields(&body(json!({"realms": [1]})), UPDATE_FIELDS, "t").is_err());
        assert!(check_fields(&body(json!({"is_domain_connection": "yes"})), UPDATE_FIELDS, "t").is_err());
        assert!(check_fields(&body(json!({"options": null})), UPDATE_FIELDS, "t").is_ok());
        assert!(check_fields(&body(json!({"name": "x"})), UPDATE_FIELDS, "t").is_err());
    }
}
