//! Auth0 Management API v2: `waad` enterprise connections.
//!
//! Token: client-credentials grant for the tenant's Management API audience, cached until shortly
//! before it expires. Connections: find by id or exact name, create, read-merge-write update
//! (PATCH replaces `options` wholesale), delete (404 is done), and enabled clients through the
//! `/connections/{id}/clients` sub-resource.
//!
//! Since May 2025 Auth0 leaves `options` out of connection reads unless the token has
//! `read:connections_options`, and refuses a PATCH carrying `options` without
//! `update:connections_options`. A read without `options` never leads to a write: merging the
//! managed options onto nothing would wipe the fields Auth0 and Azure set (`thumbprints`,
//! `tenantId`, ...), so the sync stops with [`BrokerError::PermissionMissing`] instead.

pub mod plan;

use std::{collections::BTreeSet, time::Duration};

use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    Broker, BrokerError, DeleteRequest, SyncOutcome, SyncRequest,
    budget::Rate,
    core::{Auth, ClientCredentials, Dialect, ErrorBody, Found, Limits, ManagementApi, Meaning, Session, TokenRequest, json},
};
use crate::{crd::connection::Auth0ConnectionSpec, secret::SecretValue, upstream::Answer, upstream::Upstream};

/// Auth0 allows at most 50 client changes per PATCH of `/connections/{id}/clients`.
const CLIENTS_PER_PATCH: usize = 50;
/// Enabled clients read per page of `/connections/{id}/clients` (Auth0 accepts up to 1,000).
const CLIENTS_PAGE_SIZE: usize = 100;
/// At most this many pages of enabled clients are read: 2,000 clients. A connection is enabled
/// for the applications that sign in with it, a handful to a few hundred in practice, so a list
/// that runs past this is a broken or hostile cursor, not a tenant. Reading on would loop, and
/// stopping silently would take enabled clients for missing ones: past the cap the sync fails.
const MAX_CLIENT_PAGES: usize = 20;
/// The longest token lifetime Auth0 allows (30 days); longer claims are not believed.
const TOKEN_MAX_TTL: Duration = Duration::from_secs(2_592_000);
/// Auth0's default Management API token lifetime, when the answer does not say.
const TOKEN_DEFAULT_TTL: Duration = Duration::from_secs(86_400);

/// The request budget when the broker sets no `rateLimit`: 40 requests a minute, bursts of 5.
///
/// Auth0's limits depend on the plan (brokers.md §6). The smallest paid plans (Self Service,
/// Essentials) allow reads of connections a burst of 5 and 50 per minute, and every other
/// endpoint together a burst of 10 and 150 per minute; Enterprise allows far more. One bucket
/// paces all of the client's requests, so it must fit the strictest of these, GET connections:
/// a burst of 5 refilled at 40 a minute stays inside Auth0's 5 + 50 a minute at every instant,
/// with a fifth of the rate to spare for jitter and for other users of the tenant. A configured
/// `rateLimit` replaces it. Auth0 counts its limits per tenant, so every client of a tenant
/// shares this budget.
pub const DEFAULT_RATE: Rate = Rate::per_minute(40, 5);

/// Auth0 sends `X-RateLimit-Reset`; without it, try again after a second.
const DIALECT: Dialect = Dialect { name: "Auth0", default_retry: Duration::from_secs(1), limits: Limits::PerHost, read_error };

#[derive(Debug)]
pub struct Auth0Client {
    pub(super) api: ManagementApi,
}

/// Auth0's error body, with the OAuth fields the token endpoint uses.
#[derive(Deserialize, Default)]
struct ApiErrorBody {
    #[serde(default)]
    message: String,
    #[serde(default, rename = "errorCode")]
    error_code: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

/// The scope without which Auth0 leaves `options` out of connection reads.
const READ_OPTIONS_SCOPE: &str = "read:connections_options";
/// The scope without which Auth0 refuses a connection update that carries `options`.
const UPDATE_OPTIONS_SCOPE: &str = "update:connections_options";

/// The OAuth description on the token endpoint, else the Management API's message. A refusal
/// that names an options scope ("Updating the \"options\" property requires the
/// \"update:connections_options\" scope") is a missing permission, not refused credentials.
fn read_error(answer: &Answer) -> ErrorBody {
    let body: ApiErrorBody = answer.body.json().unwrap_or_default();
    let message = [body.error_description, Some(body.message), body.error]
        .into_iter()
        .flatten()
        .find(|m| !m.is_empty())
        .unwrap_or_else(|| answer.body.text().into_owned());
    let names_options_scope = [READ_OPTIONS_SCOPE, UPDATE_OPTIONS_SCOPE].iter().any(|scope| message.contains(scope));
    let meaning = (answer.status == reqwest::StatusCode::FORBIDDEN && names_options_scope).then_some(Meaning::PermissionMissing);
    ErrorBody { message, code: body.error_code, meaning }
}

/// The error for a connection read without `options`: nothing can be compared or merged.
fn options_unreadable(name: &str) -> BrokerError {
    BrokerError::PermissionMissing(format!(
        "Auth0 returned connection {name} without its options: grant the operator's machine-to-machine application the Management API scopes {READ_OPTIONS_SCOPE} and {UPDATE_OPTIONS_SCOPE}; nothing was written"
    ))
}

/// The Management API host of a tenant domain.
pub(crate) fn api_host(domain: &str) -> String {
    domain.to_ascii_lowercase()
}

impl Auth0Client {
    pub fn new(upstream: Upstream, domain: &str, client_id: &str, client_secret: SecretValue, rate: Option<(u32, u32)>) -> Self {
        let domain = api_host(domain);
        let audience = format!("https://{domain}/api/v2/");
        let grant = ClientCredentials::new(
            client_id,
            client_secret,
            "/oauth/token",
            TokenRequest::JsonBody { audience },
            TOKEN_DEFAULT_TTL,
            TOKEN_MAX_TTL,
        );
        let rate = Some(rate.map_or(DEFAULT_RATE, Rate::from));
        Self { api: ManagementApi::new(upstream, Ok(domain), Ok("/api/v2".into()), Auth::ClientCredentials(grant), rate, DIALECT) }
    }

    /// The connection this spec manages: by recorded id, else by name (adoption). A recorded id
    /// is trusted only when it still names a `waad` connection of this name, so a stale or
    /// tampered status can never point the operator at someone else's connection.
    async fn find(api: &Session<'_>, name: &str, known_id: Option<&str>) -> Result<Found, BrokerError> {
        if let Some(id) = known_id.filter(|id| check_id(id).is_ok())
            && let Some(found) = api.get_json(&format!("/connections/{id}"), "connection").await?
            && is_ours(&found, name)
        {
            return Ok(Found::Ours(found));
        }
        let query: String = url::form_urlencoded::Serializer::new(String::new()).append_pair("name", name).finish();
        let answer = api.call(Method::GET, &format!("/connections?{query}"), None).await?;
        let list: Vec<Value> = answer.body.json().map_err(|_| BrokerError::Unexpected("connection list is not a JSON array".into()))?;
        Ok(match list.into_iter().find(|c| c.get("name").and_then(Value::as_str) == Some(name)) {
            None => Found::Missing,
            Some(conn) if is_ours(&conn, name) => Found::Ours(conn),
            Some(conn) => Found::Foreign { kind: conn.get("strategy").and_then(Value::as_str).unwrap_or_default().to_owned() },
        })
    }

    async fn sync_with(api: &Session<'_>, spec: &Auth0ConnectionSpec, request: &SyncRequest<'_>) -> Result<SyncOutcome, BrokerError> {
        let desired = plan::desired(spec, &request.azure, request.ownership.owner)?;
        let observed = match Self::find(api, &desired.name, request.known_id).await? {
            Found::Ours(conn) => conn,
            Found::Missing if request.observe_only => return Ok(SyncOutcome::missing("connection")),
            Found::Missing => {
                let answer = api.call(Method::POST, "/connections", Some(&plan::create_body(&desired))).await?;
                let id = connection_id(&json(&answer, "created connection")?)?;
                enable_clients(api, &id, &desired.enabled_clients, false).await?;
                return Ok(SyncOutcome::created("connection", id));
            }
            Found::Foreign { kind } => {
                return Err(BrokerError::Rejected(format!(
                    "Auth0 already has a connection named {} with strategy {kind}, not waad",
                    desired.name
                )));
            }
        };
        let id = connection_id(&observed)?;
        // Before anything is compared or written: another connection's object, or one made by
        // hand, is refused here.
        let unmarked = request.ownership.judge_marked(plan::marker(&observed), &id, request.known_id)?;
        if !observed.get("options").is_some_and(Value::is_object) {
            return Err(options_unreadable(&desired.name));
        }
        let mut differences = plan::diff(&desired, &observed, request.synced_fingerprint_of(&id), request.azure.fingerprint);
        if unmarked {
            differences.push(format!("metadata.{}", super::ownership::MARKER_KEY));
        }
        let mut wrote = false;
        if !differences.is_empty() && !request.observe_only {
            api.call(Method::PATCH, &format!("/connections/{id}"), Some(&plan::update_body(&desired, &observed)?)).await?;
            wrote = true;
        }
        let missing_clients = enable_clients(api, &id, &desired.enabled_clients, request.observe_only).await?;
        if missing_clients > 0 {
            differences.push("enabled_clients".into());
            wrote |= !request.observe_only;
        }
        Ok(SyncOutcome::existing(id, differences, wrote))
    }
}

impl Broker for Auth0Client {
    type Target = Auth0ConnectionSpec;

    async fn sync(&self, spec: &Auth0ConnectionSpec, request: &SyncRequest<'_>) -> Result<SyncOutcome, BrokerError> {
        let api = self.api.session(Some(request.azure.secret));
        Self::sync_with(&api, spec, request).await.map_err(|e| api.scrubbed(e))
    }

    /// Deletes the connection; one that is already gone, or a same-named connection of another
    /// strategy (not ours), counts as deleted. A `waad` connection this one does not own
    /// ([`super::ownership`]) is left in place and refused with [`BrokerError::Conflict`].
    async fn delete(&self, spec: &Auth0ConnectionSpec, request: &DeleteRequest<'_>) -> Result<(), BrokerError> {
        let api = self.api.session(None);
        let conn = match Self::find(&api, &spec.name, request.known_id).await.map_err(|e| api.scrubbed(e))? {
            Found::Ours(conn) => conn,
            Found::Missing | Found::Foreign { .. } => return Ok(()),
        };
        let id = connection_id(&conn)?;
        request.ownership.judge_marked(plan::marker(&conn), &id, request.known_id)?;
        api.delete(&format!("/connections/{id}")).await
    }

    async fn check(&self) -> Result<(), BrokerError> {
        self.api.session(None).authenticate().await
    }
}

/// Enables the listed clients that are not enabled yet; returns how many were missing.
async fn enable_clients(api: &Session<'_>, id: &str, wanted: &[String], observe_only: bool) -> Result<usize, BrokerError> {
    if wanted.is_empty() {
        return Ok(0);
    }
    let enabled = enabled_clients(api, id).await?;
    let missing: Vec<&String> = wanted.iter().filter(|c| !enabled.contains(*c)).collect();
    if !observe_only {
        for chunk in missing.chunks(CLIENTS_PER_PATCH) {
            let body: Vec<Value> = chunk.iter().map(|c| json!({"client_id": c, "status": true})).collect();
            api.call(Method::PATCH, &format!("/connections/{id}/clients"), Some(&Value::Array(body))).await?;
        }
    }
    Ok(missing.len())
}

async fn enabled_clients(api: &Session<'_>, id: &str) -> Result<BTreeSet<String>, BrokerError> {
    #[derive(Deserialize)]
    struct Page {
        #[serde(default)]
        clients: Vec<Client>,
        #[serde(default)]
        next: Option<String>,
    }
    #[derive(Deserialize)]
    struct Client {
        client_id: String,
    }
    let mut all = BTreeSet::new();
    let mut from: Option<String> = None;
    for _ in 0..MAX_CLIENT_PAGES {
        let query = {
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            query.append_pair("take", &CLIENTS_PAGE_SIZE.to_string());
            if let Some(cursor) = &from {
                query.append_pair("from", cursor);
            }
            query.finish()
        };
        let answer = api.call(Method::GET, &format!("/connections/{id}/clients?{query}"), None).await?;
        let page: Page = json(&answer, "enabled clients page")?;
        all.extend(page.clients.into_iter().map(|c| c.client_id));
        if all.len() > MAX_CLIENT_PAGES * CLIENTS_PAGE_SIZE {
            break;
        }
        match page.next.filter(|n| !n.is_empty()) {
            Some(next) if Some(&next) != from.as_ref() => from = Some(next),
            _ => return Ok(all),
        }
    }
    Err(BrokerError::Unexpected(format!(
        "the connection's enabled clients run past {MAX_CLIENT_PAGES} pages of {CLIENTS_PAGE_SIZE} (more than {} clients); Auth0's paging looks broken",
        MAX_CLIENT_PAGES * CLIENTS_PAGE_SIZE
    )))
}

fn is_ours(connection: &Value, name: &str) -> bool {
    connection.get("strategy").and_then(Value::as_str) == Some("waad") && connection.get("name").and_then(Value::as_str) == Some(name)
}

/// Ids come back into URL paths; accept only an id alphabet.
fn check_id(id: &str) -> Result<(), BrokerError> {
    super::check_id(id, 64, "an Auth0 connection id")
}

fn connection_id(connection: &Value) -> Result<String, BrokerError> {
    super::object_id(connection, 64, "an Auth0 connection id")
}
