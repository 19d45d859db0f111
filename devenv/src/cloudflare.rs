//! Emulator of the Cloudflare API v4 Zero Trust Access identity-provider endpoints, at account
//! level (`/client/v4/accounts/{account_id}/access/identity_providers[/{id}]`) and zone level
//! (`/client/v4/zones/{zone_id}/…`), guarded by API tokens.
//!
//! It keeps the vendor's behaviour on purpose, as the API reference
//! (<https://developers.cloudflare.com/api/resources/zero_trust/subresources/identity_providers/>)
//! and the API limits (<https://developers.cloudflare.com/fundamentals/api/reference/limits>)
//! describe it:
//! - every answer is the `{success, errors, messages, result[, result_info]}` envelope, errors
//!   carrying a code and a message;
//! - POST answers 201; PUT is a full replace: `config` and `scim_config` keys absent from the body
//!   are reset or removed, `type` cannot change (400), and `client_secret` must be present (400
//!   otherwise: the operator has to send it on every PUT, since it can never read it back);
//! - reads never return `config.client_secret`: the key is **omitted** from every answer;
//! - SCIM's `secret` is returned in the clear only in the answer to the write that first enables
//!   SCIM on a provider, and as `*****` afterwards; `scim_base_url`
//!   (`https://<team>.cloudflareaccess.com/populations/<id>/scim/v2`) is returned from then on;
//! - `POST …/identity_providers/{id}/refresh_scim_secret` replaces the SCIM secret of a provider
//!   with SCIM on (the old one stops working) and answers with the provider, the new secret in
//!   the clear, once (the dashboard's "Regenerate Secret"); on a provider without SCIM it answers
//!   400;
//! - server fields: `id` (a UUID), `config.redirect_url`
//!   (`https://<team>.cloudflareaccess.com/cdn-cgi/access/callback`) and `config.azure_cloud`
//!   (`"default"` unless sent) on azureAD providers;
//! - the Zero Trust organization (`GET …/access/organizations`) names the team [`TEAM`] in its
//!   `auth_domain` (`<team>.cloudflareaccess.com`);
//! - a `read_only` provider refuses PUT and DELETE;
//! - lists page with `page`/`per_page` (at most 50) and carry `result_info` (a request marked
//!   by the kit's `Fault::endless_pages` gets a full page of filler and a promise of one more);
//! - an unknown account or zone answers 404 with code 7003, an unknown or missing token 401 and a
//!   token not granted the account or zone 403, both with code 10000 "Authentication error";
//! - a real request budget per token: more than `limit` requests (default 1,200) in a sliding
//!   window (default 5 minutes) answer 429 with code 971 and `retry-after`, and block the token
//!   for the block duration (default 5 minutes); every answer carries `Ratelimit` and
//!   `Ratelimit-Policy`.
//!
//! The Access error codes for validation (12130), missing provider (12131) and read-only provider
//! (12132) are the emulator's choice; Cloudflare's real codes for these are unconfirmed.
//! Request bodies, secrets and tokens are never logged.

#![allow(clippy::result_large_err, reason = "early returns carry whole HTTP answers; size does not matter in a test emulator")]

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Extension, Json, Router,
    body::Bytes,
    extract::{Path, RawQuery, Request, State as AxState},
    http::{HeaderValue, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::{Map, Value, json};

use super::{
    Reply,
    azure::bearer,
    kit::{self, Emulator, Fault, KitBuilder, RequestMatch},
    lock, query_pairs, query_value, random_alnum, reply,
    tls::TestCa,
};

/// Cloudflare's documented budget: 1,200 requests per 5 minutes per token, and a 5-minute block.
pub const DEFAULT_RATE_LIMIT: u64 = 1200;
pub const DEFAULT_RATE_WINDOW: Duration = Duration::from_secs(300);
pub const DEFAULT_BLOCK: Duration = Duration::from_secs(300);
/// The team name in the emulated `<team>.cloudflareaccess.com` URLs.
pub const TEAM: &str = "idp-bridge-test";
/// What reads show instead of the SCIM secret.
pub const REDACTED: &str = "*****";

const CODE_AUTH: i64 = 10000;
const CODE_NO_ROUTE: i64 = 7000;
const CODE_UNKNOWN_OBJECT: i64 = 7003;
const CODE_RATE_LIMITED: i64 = 971;
const CODE_SERVER: i64 = 10002;
const CODE_INVALID: i64 = 12130;
const CODE_NO_PROVIDER: i64 = 12131;
const CODE_READ_ONLY: i64 = 12132;

const MAX_PER_PAGE: usize = 50;
const DEFAULT_PER_PAGE: usize = 25;
const TYPES: &[&str] = &[
    "onetimepin",
    "azureAD",
    "saml",
    "centrify",
    "facebook",
    "github",
    "google-apps",
    "google",
    "linkedin",
    "oidc",
    "okta",
    "onelogin",
    "pingone",
    "yandex",
];
/// azureAD `config` keys Cloudflare stores; others in a body are dropped.
const AZURE_CONFIG: &[&str] = &[
    "client_id",
    "client_secret",
    "directory_id",
    "support_groups",
    "conditional_access_enabled",
    "claims",
    "email_claim_name",
    "prompt",
    "pkce_enabled",
    "azure_cloud",
];
const SCIM_FLAGS: &[&str] = &["enabled", "user_deprovision", "seat_deprovision", "group_member_deprovision"];

/// A running emulator; clones share the state and the server, which stops with the last clone.
pub type CloudflareEmulator = Emulator<CloudflareState>;

type Shared = Arc<Mutex<CloudflareState>>;

/// The emulated API: accounts, zones, tokens and their budgets, identity providers.
pub struct CloudflareState {
    accounts: HashSet<String>,
    zones: HashSet<String>,
    /// Token -> the account and zone ids it is valid for.
    tokens: HashMap<String, HashSet<String>>,
    /// In creation order, as the API lists them.
    providers: Vec<Stored>,
    limit: u64,
    window: Duration,
    block: Duration,
    /// Per token: the requests inside the window, and the end of a block.
    budgets: HashMap<String, Budget>,
}

#[derive(Default)]
struct Budget {
    hits: VecDeque<Instant>,
    blocked_until: Option<Instant>,
}

/// A provider and the account or zone it belongs to.
struct Stored {
    scope: String,
    provider: Value,
}

/// Where a request is aimed.
struct Target {
    scope: String,
}

impl CloudflareEmulator {
    /// Starts an emulator with no accounts, zones or tokens. Needs a Tokio runtime context.
    pub fn start(ca: &TestCa) -> std::io::Result<Self> {
        let state = Arc::new(Mutex::new(CloudflareState {
            accounts: HashSet::new(),
            zones: HashSet::new(),
            tokens: HashMap::new(),
            providers: Vec::new(),
            limit: DEFAULT_RATE_LIMIT,
            window: DEFAULT_RATE_WINDOW,
            block: DEFAULT_BLOCK,
            budgets: HashMap::new(),
        }));
        let kit = KitBuilder::new("cloudflare", error_body);
        let app = kit.wrap(router(state.clone())).layer(middleware::from_fn_with_state(state.clone(), stamp_rate_headers));
        Ok(Emulator::new(state, kit.serve(app, ca)?))
    }

    pub fn add_account(&self, account_id: &str) {
        self.state().accounts.insert(account_id.to_owned());
    }

    pub fn add_zone(&self, zone_id: &str) {
        self.state().zones.insert(zone_id.to_owned());
    }

    /// An API token valid for the listed accounts and zones (with Access write permission).
    pub fn add_token(&self, token: &str, account_or_zone_ids: &[&str]) {
        let ids = account_or_zone_ids.iter().map(|s| s.to_string()).collect();
        self.state().tokens.insert(token.to_owned(), ids);
    }

    /// Every provider as stored, `client_secret` and SCIM `secret` included.
    pub fn providers(&self) -> Vec<Value> {
        self.state().providers.iter().map(|s| s.provider.clone()).collect()
    }

    /// A provider as stored, by id.
    pub fn provider(&self, id: &str) -> Option<Value> {
        self.state().providers.iter().find(|s| s.provider["id"] == id).map(|s| s.provider.clone())
    }

    /// The first provider as stored with this name, of any type.
    pub fn provider_by_name(&self, name: &str) -> Option<Value> {
        self.state().providers.iter().find(|s| s.provider["name"] == name).map(|s| s.provider.clone())
    }

    /// The SCIM secret a provider holds now (the one Entra ID must present).
    pub fn scim_secret(&self, id: &str) -> Option<String> {
        self.provider(id)?["scim_config"]["secret"].as_str().map(str::to_owned)
    }

    /// The client secret a provider holds.
    pub fn client_secret(&self, id: &str) -> Option<String> {
        self.provider(id)?["config"]["client_secret"].as_str().map(str::to_owned)
    }

    /// Changes a stored provider behind the API's back, like an edit in the dashboard.
    pub fn edit_provider(&self, id: &str, edit: impl FnOnce(&mut Value)) {
        let mut st = self.state();
        let stored = st.providers.iter_mut().find(|s| s.provider["id"] == id).unwrap_or_else(|| panic!("unknown provider {id}"));
        edit(&mut stored.provider);
    }

    /// Seeds a provider in an account or zone as if made elsewhere; fills `id` when absent (and
    /// `config`) and returns the id.
    pub fn insert_provider(&self, scope_id: &str, mut provider: Value) -> String {
        let object = provider.as_object_mut().expect("a provider is a JSON object");
        let id = object.entry("id").or_insert_with(|| json!(new_id())).as_str().expect("string id").to_owned();
        object.entry("config").or_insert_with(|| json!({}));
        self.state().providers.push(Stored { scope: scope_id.to_owned(), provider });
        id
    }

    /// Successful POST/PUT/DELETE requests.
    pub fn writes(&self) -> usize {
        self.kit().log().succeeded(&RequestMatch::any().writes())
    }

    /// Every request so far as (method, path with query), in order.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.kit().log().requests()
    }

    /// 429 answers given so far (injected or by the budget).
    pub fn rate_limited(&self) -> usize {
        self.kit().log().count_where(|r| r.status == Some(StatusCode::TOO_MANY_REQUESTS))
    }

    /// The next `n` requests get 429 with `retry-after: 300`, without starting a block.
    pub fn rate_limit_next(&self, n: usize) {
        self.kit().faults().push(Fault::status(429).times(n).retry_after(DEFAULT_BLOCK.as_secs()));
    }

    /// Requests allowed per token and window (default 1,200).
    pub fn set_rate_limit(&self, limit: u64) {
        self.state().limit = limit;
    }

    /// The sliding window the limit counts over (default 5 minutes).
    pub fn set_rate_window(&self, window: Duration) {
        self.state().window = window;
    }

    /// How long a token stays blocked after exceeding the limit (default 5 minutes).
    pub fn set_block_duration(&self, block: Duration) {
        self.state().block = block;
    }
}

fn router(state: Shared) -> Router {
    let routes = Router::new()
        .route("/client/v4/{kind}/{scope}/access/identity_providers", get(list).post(create))
        .route("/client/v4/{kind}/{scope}/access/identity_providers/{id}", get(read).put(update).delete(remove))
        .route("/client/v4/{kind}/{scope}/access/identity_providers/{id}/refresh_scim_secret", axum::routing::post(refresh_scim_secret))
        .route("/client/v4/{kind}/{scope}/access/organizations", get(organization))
        .fallback(|| async { failure(StatusCode::NOT_FOUND, CODE_NO_ROUTE, "No route for that URI") })
        .method_not_allowed_fallback(|| async { failure(StatusCode::METHOD_NOT_ALLOWED, CODE_NO_ROUTE, "Method not allowed for this URI") })
        .with_state(state.clone());
    kit::guard(routes, state, RequestMatch::any(), |st, request| {
        st.admit(request.uri().path(), bearer(request.headers()).unwrap_or_default())
    })
}

/// Stamps the token's budget on every answer, injected faults included.
async fn stamp_rate_headers(AxState(s): AxState<Shared>, request: Request, next: Next) -> Response {
    let token = bearer(request.headers()).unwrap_or_default().to_owned();
    let mut response = next.run(request).await;
    let st = lock(&s);
    let (remaining, reset) = st.budget_view(&token);
    let headers = response.headers_mut();
    headers.insert("ratelimit", header(&format!("\"default\";r={remaining};t={reset}")));
    headers.insert("ratelimit-policy", header(&format!("\"default\";q={};w={}", st.limit, st.window.as_secs())));
    response
}

/// Cloudflare's failure envelope for an injected status.
fn error_body(status: StatusCode, _path: &str) -> Response {
    match status {
        StatusCode::TOO_MANY_REQUESTS => failure(status, CODE_RATE_LIMITED, RATE_LIMITED_MESSAGE),
        _ => failure(status, CODE_SERVER, "An unknown error has occurred"),
    }
}

fn header(value: &str) -> HeaderValue {
    HeaderValue::from_str(value).expect("ASCII header value")
}

async fn list(
    AxState(s): AxState<Shared>,
    Path((_, scope)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    endless: Option<Extension<kit::EndlessPages>>,
) -> Response {
    let query = query_pairs(query.as_deref());
    match endless {
        Some(_) => reply(endless_page(&query)),
        None => reply(lock(&s).list(&Target { scope }, &query)),
    }
}

/// A full page of `onetimepin` filler whose `result_info` always promises one more page, for
/// requests marked by [`Fault::endless_pages`].
fn endless_page(query: &[(String, String)]) -> Reply {
    let page = query_int(query, "page", 1, 100_000)?.unwrap_or(1);
    let per_page = query_int(query, "per_page", 1, MAX_PER_PAGE)?.unwrap_or(DEFAULT_PER_PAGE);
    let filler: Vec<Value> = (0..per_page)
        .map(|n| json!({"id": format!("endless-{page}-{n}"), "name": format!("filler {page}-{n}"), "type": "onetimepin", "config": {}}))
        .collect();
    let mut response = envelope(json!(filler));
    response["result_info"] =
        json!({"page": page, "per_page": per_page, "count": per_page, "total_count": (page + 1) * per_page, "total_pages": page + 1});
    Ok((StatusCode::OK, Json(response)).into_response())
}

/// The Zero Trust organization: every emulated account and zone is team [`TEAM`].
async fn organization() -> Response {
    let organization = json!({
        "auth_domain": format!("{TEAM}.cloudflareaccess.com"),
        "name": "idp-bridge test team",
        "is_ui_read_only": false,
        "session_duration": "24h",
        "created_at": "2025-01-01T00:00:00Z",
        "updated_at": "2025-01-01T00:00:00Z",
    });
    success(StatusCode::OK, organization)
}

async fn create(AxState(s): AxState<Shared>, Path((_, scope)): Path<(String, String)>, body: Bytes) -> Response {
    reply(lock(&s).create(&Target { scope }, &body))
}

async fn read(AxState(s): AxState<Shared>, Path((_, scope, id)): Path<(String, String, String)>) -> Response {
    let st = lock(&s);
    reply(st.find(&Target { scope }, &id).map(|p| success(StatusCode::OK, redacted(p, false))))
}

async fn update(AxState(s): AxState<Shared>, Path((_, scope, id)): Path<(String, String, String)>, body: Bytes) -> Response {
    reply(lock(&s).update(&Target { scope }, &id, &body))
}

async fn refresh_scim_secret(AxState(s): AxState<Shared>, Path((_, scope, id)): Path<(String, String, String)>) -> Response {
    reply(lock(&s).refresh_scim_secret(&Target { scope }, &id))
}

async fn remove(AxState(s): AxState<Shared>, Path((_, scope, id)): Path<(String, String, String)>) -> Response {
    reply(lock(&s).remove(&Target { scope }, &id))
}

impl CloudflareState {
    fn admit(&mut self, path: &str, token: &str) -> Result<(), Response> {
        self.spend(token)?;
        let Some(ids) = self.tokens.get(token) else {
            return Err(failure(StatusCode::UNAUTHORIZED, CODE_AUTH, "Authentication error"));
        };
        // Everything served is under /client/v4/{accounts|zones}/{id}/.
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let ["client", "v4", kind @ ("accounts" | "zones"), scope, _, ..] = segments.as_slice() else {
            return Err(failure(StatusCode::NOT_FOUND, CODE_NO_ROUTE, "No route for that URI"));
        };
        let known = if *kind == "accounts" { self.accounts.contains(*scope) } else { self.zones.contains(*scope) };
        if !known {
            let message = format!("Could not route to {path}, perhaps your object identifier is invalid?");
            return Err(failure(StatusCode::NOT_FOUND, CODE_UNKNOWN_OBJECT, &message));
        }
        if !ids.contains(*scope) {
            return Err(failure(StatusCode::FORBIDDEN, CODE_AUTH, "Authentication error"));
        }
        Ok(())
    }

    /// Counts a request against the token's window; above the limit, blocks the token.
    fn spend(&mut self, token: &str) -> Result<(), Response> {
        let (limit, window, block) = (self.limit, self.window, self.block);
        let budget = self.budgets.entry(token.to_owned()).or_default();
        let now = Instant::now();
        if let Some(until) = budget.blocked_until {
            if until > now {
                return Err(throttled(until - now));
            }
            budget.blocked_until = None;
        }
        while budget.hits.front().is_some_and(|t| now.duration_since(*t) >= window) {
            budget.hits.pop_front();
        }
        budget.hits.push_back(now);
        if budget.hits.len() as u64 > limit {
            budget.blocked_until = Some(now + block);
            return Err(throttled(block));
        }
        Ok(())
    }

    /// Requests left in the token's window, and seconds until the oldest leaves it.
    fn budget_view(&self, token: &str) -> (u64, u64) {
        let Some(budget) = self.budgets.get(token) else { return (self.limit, 0) };
        let now = Instant::now();
        let inside = budget.hits.iter().filter(|t| now.duration_since(**t) < self.window).count() as u64;
        let reset = budget.hits.iter().find(|t| now.duration_since(**t) < self.window).map_or(0, |t| {
            let left = self.window.saturating_sub(now.duration_since(*t));
            left.as_secs() + u64::from(left.subsec_nanos() > 0)
        });
        (self.limit.saturating_sub(inside), reset)
    }

    fn find(&self, target: &Target, id: &str) -> Result<&Value, Response> {
        self.providers.iter().find(|s| s.scope == target.scope && s.provider["id"] == id).map(|s| &s.provider).ok_or_else(no_provider)
    }

    fn find_mut(&mut self, target: &Target, id: &str) -> Result<&mut Value, Response> {
        self.providers
            .iter_mut()
            .find(|s| s.scope == target.scope && s.provider["id"] == id)
            .map(|s| &mut s.provider)
            .ok_or_else(no_provider)
    }

    fn list(&self, target: &Target, query: &[(String, String)]) -> Reply {
        let page = query_int(query, "page", 1, 100_000)?.unwrap_or(1);
        let per_page = query_int(query, "per_page", 1, MAX_PER_PAGE)?.unwrap_or(DEFAULT_PER_PAGE);
        let scim_filter = match query_value(query, "scim_enabled") {
            None => None,
            Some("true") => Some(true),
            Some("false") => Some(false),
            Some(other) => return Err(invalid(&format!("scim_enabled must be true or false, not {other}"))),
        };
        let matches: Vec<&Value> = self
            .providers
            .iter()
            .filter(|s| s.scope == target.scope)
            .map(|s| &s.provider)
            .filter(|p| scim_filter.is_none_or(|want| p["scim_config"]["enabled"].as_bool().unwrap_or(false) == want))
            .collect();
        let slice: Vec<Value> = matches.iter().skip((page - 1) * per_page).take(per_page).map(|p| redacted(p, false)).collect();
        let total = matches.len();
        let info = json!({
            "page": page,
            "per_page": per_page,
            "count": slice.len(),
            "total_count": total,
            "total_pages": total.div_ceil(per_page),
        });
        let mut response = envelope(json!(slice));
        response["result_info"] = info;
        Ok((StatusCode::OK, Json(response)).into_response())
    }

    fn create(&mut self, target: &Target, body: &[u8]) -> Reply {
        let body = parse_object(body)?;
        let id = new_id();
        let (provider, first_scim) = build(&id, &body, None)?;
        self.providers.push(Stored { scope: target.scope.clone(), provider: provider.clone() });
        Ok(success(StatusCode::CREATED, redacted(&provider, first_scim)))
    }

    fn update(&mut self, target: &Target, id: &str, body: &[u8]) -> Reply {
        let body = parse_object(body)?;
        let stored = self.find_mut(target, id)?;
        if stored["read_only"] == true {
            return Err(read_only());
        }
        let (provider, first_scim) = build(id, &body, Some(&*stored))?;
        *stored = provider;
        Ok(success(StatusCode::OK, redacted(stored, first_scim)))
    }

    /// A new SCIM secret for a provider with SCIM on, shown once in the answer.
    fn refresh_scim_secret(&mut self, target: &Target, id: &str) -> Reply {
        let stored = self.find_mut(target, id)?;
        if stored["read_only"] == true {
            return Err(read_only());
        }
        if stored["scim_config"]["enabled"] != true {
            return Err(invalid("SCIM is not enabled on this identity provider"));
        }
        stored["scim_config"]["secret"] = json!(random_alnum(64));
        if stored["scim_config"]["scim_base_url"].as_str().is_none_or(str::is_empty) {
            stored["scim_config"]["scim_base_url"] = json!(format!("https://{TEAM}.cloudflareaccess.com/populations/{id}/scim/v2"));
        }
        Ok(success(StatusCode::OK, redacted(stored, true)))
    }

    fn remove(&mut self, target: &Target, id: &str) -> Reply {
        if self.find(target, id)?["read_only"] == true {
            return Err(read_only());
        }
        self.providers.retain(|s| !(s.scope == target.scope && s.provider["id"] == id));
        Ok(success(StatusCode::OK, json!({ "id": id })))
    }
}

/// The provider a create (no `previous`) or a full-replace update makes of `body`, and whether
/// this write first enabled SCIM.
fn build(id: &str, body: &Map<String, Value>, previous: Option<&Value>) -> Result<(Value, bool), Response> {
    let name = body.get("name").and_then(Value::as_str).filter(|n| !n.trim().is_empty()).ok_or_else(|| invalid("name is required"))?;
    if name.chars().count() > 255 {
        return Err(invalid("name must be at most 255 characters"));
    }
    let type_ = body.get("type").and_then(Value::as_str).ok_or_else(|| invalid("type is required"))?;
    if !TYPES.contains(&type_) {
        return Err(invalid(&format!("type {type_:?} is not a supported identity provider type")));
    }
    if let Some(previous) = previous
        && previous["type"] != type_
    {
        return Err(invalid("type cannot be changed; delete the identity provider and create a new one"));
    }
    let config = match body.get("config") {
        Some(Value::Object(config)) => config,
        Some(_) => return Err(invalid("config must be an object")),
        None if type_ == "onetimepin" => &Map::new(),
        None => return Err(invalid("config is required")),
    };
    let mut stored_config = if type_ == "azureAD" { azure_config(config)? } else { config.clone() };
    if type_ == "azureAD" {
        stored_config.entry("azure_cloud").or_insert_with(|| json!("default"));
        stored_config.insert("redirect_url".into(), json!(format!("https://{TEAM}.cloudflareaccess.com/cdn-cgi/access/callback")));
    }
    let mut scim = scim_config(body.get("scim_config"))?;
    // The SCIM endpoint and token are made once, when SCIM is first enabled, and kept after.
    let held = previous.map(|p| &p["scim_config"]);
    let mut first_scim = false;
    match held.and_then(|h| h["secret"].as_str()) {
        Some(secret) => {
            scim.insert("secret".into(), json!(secret));
            scim.insert("scim_base_url".into(), held.map(|h| h["scim_base_url"].clone()).unwrap_or_default());
        }
        None if scim["enabled"] == true => {
            scim.insert("secret".into(), json!(random_alnum(64)));
            scim.insert("scim_base_url".into(), json!(format!("https://{TEAM}.cloudflareaccess.com/populations/{id}/scim/v2")));
            first_scim = true;
        }
        None => {}
    }
    let mut provider = json!({"id": id, "name": name, "type": type_, "config": stored_config, "scim_config": scim});
    match body.get("read_only") {
        None => {}
        Some(Value::Bool(flag)) => provider["read_only"] = json!(flag),
        Some(_) => return Err(invalid("read_only must be a boolean")),
    }
    Ok((provider, first_scim))
}

/// An azureAD `config` as Cloudflare stores it: known keys only, types checked.
fn azure_config(config: &Map<String, Value>) -> Result<Map<String, Value>, Response> {
    for key in ["client_id", "client_secret", "directory_id"] {
        if config.get(key).and_then(Value::as_str).is_none_or(str::is_empty) {
            return Err(invalid(&format!("config.{key} is required for an azureAD identity provider")));
        }
    }
    let mut stored = Map::new();
    for (key, value) in config {
        if !AZURE_CONFIG.contains(&key.as_str()) || value.is_null() {
            continue;
        }
        let ok = match key.as_str() {
            "support_groups" | "conditional_access_enabled" | "pkce_enabled" => value.is_boolean(),
            "claims" => value.as_array().is_some_and(|c| c.iter().all(Value::is_string)),
            "prompt" => matches!(value.as_str(), Some("login" | "select_account" | "none")),
            _ => value.is_string(),
        };
        if !ok {
            return Err(invalid(&format!("config.{key} has an invalid value")));
        }
        stored.insert(key.clone(), value.clone());
    }
    Ok(stored)
}

/// `scim_config` as stored, defaults for what is absent; read-only keys in the body are ignored.
fn scim_config(value: Option<&Value>) -> Result<Map<String, Value>, Response> {
    let given = match value {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(given)) => given.clone(),
        Some(_) => return Err(invalid("scim_config must be an object")),
    };
    let mut scim = Map::new();
    for key in SCIM_FLAGS {
        match given.get(*key) {
            None | Some(Value::Null) => {
                if *key != "group_member_deprovision" {
                    scim.insert((*key).to_owned(), json!(false));
                }
            }
            Some(Value::Bool(flag)) => {
                scim.insert((*key).to_owned(), json!(flag));
            }
            Some(_) => return Err(invalid(&format!("scim_config.{key} must be a boolean"))),
        }
    }
    let behavior = match given.get("identity_update_behavior") {
        None | Some(Value::Null) => "no_action",
        Some(v) => match v.as_str() {
            Some(b @ ("automatic" | "reauth" | "no_action")) => b,
            _ => return Err(invalid("scim_config.identity_update_behavior must be automatic, reauth or no_action")),
        },
    };
    scim.insert("identity_update_behavior".into(), json!(behavior));
    if scim["seat_deprovision"] == true && scim["user_deprovision"] != true {
        return Err(invalid("scim_config.seat_deprovision requires scim_config.user_deprovision"));
    }
    Ok(scim)
}

/// A provider as the API shows it: no `client_secret`, and the SCIM secret redacted unless this
/// answer is the one that first enabled SCIM.
fn redacted(provider: &Value, show_scim_secret: bool) -> Value {
    let mut shown = provider.clone();
    if let Some(config) = shown.get_mut("config").and_then(Value::as_object_mut) {
        config.remove("client_secret");
    }
    if !show_scim_secret && let Some(secret) = shown.get_mut("scim_config").and_then(|s| s.get_mut("secret")) {
        *secret = json!(REDACTED);
    }
    shown
}

fn envelope(result: Value) -> Value {
    json!({"success": true, "errors": [], "messages": [], "result": result})
}

fn success(status: StatusCode, result: Value) -> Response {
    (status, Json(envelope(result))).into_response()
}

/// Cloudflare's failure envelope.
fn failure(status: StatusCode, code: i64, message: &str) -> Response {
    let body = json!({"success": false, "errors": [{"code": code, "message": message}], "messages": [], "result": null});
    (status, Json(body)).into_response()
}

const RATE_LIMITED_MESSAGE: &str = "Please wait and consider throttling your request speed";

fn throttled(wait: Duration) -> Response {
    let mut response = failure(StatusCode::TOO_MANY_REQUESTS, CODE_RATE_LIMITED, RATE_LIMITED_MESSAGE);
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    response.headers_mut().insert("retry-after", HeaderValue::from(secs));
    response
}

fn invalid(message: &str) -> Response {
    failure(StatusCode::BAD_REQUEST, CODE_INVALID, &format!("access.api.error.invalid_request: {message}"))
}

fn no_provider() -> Response {
    failure(StatusCode::NOT_FOUND, CODE_NO_PROVIDER, "access.api.error.not_found: identity provider not found")
}

fn read_only() -> Response {
    failure(StatusCode::BAD_REQUEST, CODE_READ_ONLY, "access.api.error.read_only: this identity provider is read-only")
}

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, Response> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(invalid("the body must be a JSON object")),
        Err(_) => Err(invalid("the body is not valid JSON")),
    }
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn query_int(query: &[(String, String)], key: &str, min: usize, max: usize) -> Result<Option<usize>, Response> {
    super::query_int(query, key, min..=max).map_err(|_| invalid(&format!("{key} must be an integer between {min} and {max}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn azure_body() -> Map<String, Value> {
        json!({"name": "n", "type": "azureAD", "config": {"client_id": "c", "client_secret": "s", "directory_id": "d", "unknown": 1}})
            .as_object()
            .cloned()
            .unwrap()
    }

    #[test]
    fn create_fills_server_fields_and_drops_unknown_config() {
        let (p, first) = build("id-1", &azure_body(), None).unwrap();
        assert!(!first);
        assert_eq!(p["config"]["azure_cloud"], "default");
        assert_eq!(p["config"]["redirect_url"], format!("https://{TEAM}.cloudflareaccess.com/cdn-cgi/access/callback"));
        assert!(p["config"].get("unknown").is_none());
        assert_eq!(
            p["scim_config"],
            json!({"enabled": false, "user_deprovision": false, "seat_deprovision": false, "identity_update_behavior": "no_action"})
        );
        assert!(redacted(&p, false)["config"].get("client_secret").is_none());
    }

    #[test]
    fn put_is_a_full_replace_that_keeps_the_scim_token() {
        let mut body = azure_body();
        body.insert("scim_config".into(), json!({"enabled": true}));
        let (first, enabled) = build("id-1", &body, None).unwrap();
        assert!(enabled);
        let token = first["scim_config"]["secret"].as_str().unwrap().to_owned();
        assert_eq!(redacted(&first, true)["scim_config"]["secret"], token.as_str());
        // Replaced without scim_config: SCIM goes off, the token stays for later.
        let (second, enabled) = build("id-1", &azure_body(), Some(&first)).unwrap();
        assert!(!enabled);
        assert_eq!(second["scim_config"]["enabled"], false);
        assert_eq!(second["scim_config"]["secret"], token.as_str());
        assert_eq!(redacted(&second, false)["scim_config"]["secret"], REDACTED);
        let (third, enabled) = build("id-1", &body, Some(&second)).unwrap();
        assert!(!enabled, "re-enabling does not show the token again");
        assert_eq!(third["scim_config"]["secret"], token.as_str());
    }

    #[test]
    fn invalid_bodies_are_refused() {
        let (stored, _) = build("id-1", &azure_body(), None).unwrap();
        let mut no_secret = azure_body();
        no_secret["config"].as_object_mut().unwrap().remove("client_secret");
        let mut other_type = azure_body();
        other_type.insert("type".into(), json!("oidc"));
        let mut bad_prompt = azure_body();
        bad_prompt["config"]["prompt"] = json!("always");
        let mut seat_only = azure_body();
        seat_only.insert("scim_config".into(), json!({"enabled": true, "seat_deprovision": true}));
        for body in [no_secret, other_type, bad_prompt, seat_only] {
            let response = build("id-1", &body, Some(&stored)).unwrap_err();
            assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        }
    }
}
