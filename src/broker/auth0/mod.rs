//! Auth0 Management API v2: `waad` enterprise connections.
//!
//! Token: client-credentials grant for the tenant's Management API audience, cached until shortly
//! before it expires. Connections: find by id or exact name, create, read-merge-write update
//! (PATCH replaces `options` wholesale), delete (404 is done), and enabled clients through the
//! `/connections/{id}/clients` sub-resource.

pub mod plan;

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::{BrokerError, SyncOutcome, SyncRequest, budget::RequestBudget};
use crate::{
    crd::connection::AzureAdConnectionSpec,
    secret::SecretValue,
    upstream::{Answer, Upstream, retry_after},
};

/// Auth0 allows at most 50 client changes per PATCH of `/connections/{id}/clients`.
const CLIENTS_PER_PATCH: usize = 50;
/// The longest token lifetime Auth0 allows (30 days); longer claims are not believed.
const TOKEN_MAX_TTL: Duration = Duration::from_secs(2_592_000);

#[derive(Debug)]
pub struct Auth0Client {
    upstream: Upstream,
    domain: String,
    client_id: String,
    client_secret: SecretValue,
    /// The cached token and when to refresh it.
    token: Mutex<Option<(SecretValue, Instant)>>,
    budget: RequestBudget,
}

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

impl Auth0Client {
    pub fn new(upstream: Upstream, domain: &str, client_id: &str, client_secret: SecretValue, rate: Option<(u32, u32)>) -> Self {
        Self {
            upstream,
            domain: domain.to_ascii_lowercase(),
            client_id: client_id.to_owned(),
            client_secret,
            token: Mutex::new(None),
            budget: RequestBudget::new(rate),
        }
    }

    /// A Management API token, from cache when it is still good.
    async fn token(&self) -> Result<SecretValue, BrokerError> {
        let mut cached = self.token.lock().await;
        if let Some((token, refresh_at)) = cached.as_ref()
            && *refresh_at > Instant::now()
        {
            return Ok(token.clone());
        }
        self.budget.acquire().await.map_err(|b| BrokerError::RateLimited { retry_after: b.remaining })?;
        let audience = format!("https://{}/api/v2/", self.domain);
        let body = json!({
            "grant_type": "client_credentials",
            "client_id": self.client_id,
            "client_secret": self.client_secret.expose(),
            "audience": audience,
        });
        let request = self.upstream.request(Method::POST, &self.domain, "/oauth/token").json(&body);
        let answer = self.upstream.send(request).await?;
        if !answer.status.is_success() {
            return Err(self.error_from(&answer).await);
        }
        #[derive(Deserialize)]
        struct TokenBody {
            access_token: String,
            #[serde(default = "default_ttl")]
            expires_in: u64,
        }
        fn default_ttl() -> u64 {
            86_400
        }
        let token: TokenBody = answer.body.json().map_err(|_| BrokerError::Unexpected("token response is not valid JSON".into()))?;
        let value = SecretValue::new(token.access_token);
        // A token living less than twice the margin is still reused for half its lifetime.
        let ttl = Duration::from_secs(token.expires_in).min(TOKEN_MAX_TTL);
        *cached = Some((value.clone(), super::token_refresh_at(ttl)));
        Ok(value)
    }

    /// One Management API call. A 401 drops the cached token and retries once with a new one.
    async fn call(&self, method: Method, path_and_query: &str, body: Option<&Value>) -> Result<Answer, BrokerError> {
        for attempt in 0..2 {
            let token = self.token().await?;
            self.budget.acquire().await.map_err(|b| BrokerError::RateLimited { retry_after: b.remaining })?;
            let mut request =
                self.upstream.request(method.clone(), &self.domain, &format!("/api/v2{path_and_query}")).bearer_auth(token.expose());
            if let Some(body) = body {
                request = request.json(body);
            }
            let answer = self.upstream.send(request).await?;
            if answer.status == StatusCode::UNAUTHORIZED && attempt == 0 {
                *self.token.lock().await = None;
                continue;
            }
            if answer.status.is_success() {
                return Ok(answer);
            }
            return Err(self.error_from(&answer).await);
        }
        unreachable!("the loop returns on its second attempt")
    }

    async fn error_from(&self, answer: &Answer) -> BrokerError {
        let body: ApiErrorBody = answer.body.json().unwrap_or_default();
        let message = body.error_description.clone().filter(|m| !m.is_empty()).unwrap_or_else(|| {
            if body.message.is_empty() { body.error.clone().unwrap_or_else(|| answer.body.snippet()) } else { body.message.clone() }
        });
        let message = match &body.error_code {
            Some(code) => format!("{message} ({code})"),
            None => message,
        };
        let message = self.client_secret.scrub(&message);
        match answer.status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => BrokerError::Auth(message),
            StatusCode::NOT_FOUND => BrokerError::NotFound,
            StatusCode::TOO_MANY_REQUESTS => {
                // Auth0 sends X-RateLimit-Reset; honour Retry-After too, and never less than 1 s.
                let wait =
                    retry_after(&answer.headers, jiff::Timestamp::now()).unwrap_or(Duration::from_secs(1)).max(Duration::from_secs(1));
                self.budget.block_for(wait).await;
                BrokerError::RateLimited { retry_after: wait }
            }
            s if s.is_server_error() => BrokerError::Server { status: s.as_u16(), message },
            _ => BrokerError::Rejected(message),
        }
    }

    pub async fn check(&self) -> Result<(), BrokerError> {
        self.token().await.map(drop)
    }

    async fn get(&self, id: &str) -> Result<Option<Value>, BrokerError> {
        check_id(id)?;
        match self.call(Method::GET, &format!("/connections/{id}"), None).await {
            Ok(answer) => answer.body.json().map(Some).map_err(|_| BrokerError::Unexpected("connection is not valid JSON".into())),
            Err(BrokerError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn find_by_name(&self, name: &str) -> Result<Option<Value>, BrokerError> {
        let query: String = url::form_urlencoded::Serializer::new(String::new()).append_pair("name", name).finish();
        let answer = self.call(Method::GET, &format!("/connections?{query}"), None).await?;
        let list: Vec<Value> = answer.body.json().map_err(|_| BrokerError::Unexpected("connection list is not a JSON array".into()))?;
        Ok(list.into_iter().find(|c| c.get("name").and_then(Value::as_str) == Some(name)))
    }

    /// The connection this spec manages: by recorded id, else by name (adoption). A recorded id
    /// is trusted only when it still names a `waad` connection of this name, so a stale or
    /// tampered status can never point the operator at someone else's connection.
    async fn find(&self, name: &str, known_id: Option<&str>) -> Result<Found, BrokerError> {
        if let Some(id) = known_id.filter(|id| check_id(id).is_ok())
            && let Some(found) = self.get(id).await?
            && is_ours(&found, name)
        {
            return Ok(Found::Ours(found));
        }
        Ok(match self.find_by_name(name).await? {
            None => Found::Missing,
            Some(conn) if is_ours(&conn, name) => Found::Ours(conn),
            Some(conn) => Found::Foreign { strategy: conn.get("strategy").and_then(Value::as_str).unwrap_or_default().to_owned() },
        })
    }

    pub async fn sync(&self, request: &SyncRequest<'_>) -> Result<SyncOutcome, BrokerError> {
        let secret = request.azure.secret;
        self.sync_inner(request).await.map_err(|e| e.scrubbed(secret))
    }

    async fn sync_inner(&self, request: &SyncRequest<'_>) -> Result<SyncOutcome, BrokerError> {
        let spec = request.spec.auth0.as_ref().ok_or_else(|| BrokerError::Unsupported("the connection has no auth0 block".into()))?;
        let desired = plan::desired(spec, &request.azure)?;
        let observed = match self.find(&desired.name, request.known_id).await? {
            Found::Ours(conn) => Some(conn),
            Found::Missing => None,
            Found::Foreign { strategy } => {
                return Err(BrokerError::Rejected(format!(
                    "Auth0 already has a connection named {} with strategy {strategy}, not waad",
                    desired.name
                )));
            }
        };
        let Some(observed) = observed else {
            if request.observe_only {
                return Ok(SyncOutcome { id: None, differences: vec!["connection (missing)".into()], wrote: false, scim: None });
            }
            let answer = self.call(Method::POST, "/connections", Some(&plan::create_body(&desired))).await?;
            let created: Value = answer.body.json().map_err(|_| BrokerError::Unexpected("created connection is not valid JSON".into()))?;
            let id = connection_id(&created)?;
            self.enable_clients(&id, &desired.enabled_clients, request.observe_only).await?;
            return Ok(SyncOutcome { id: Some(id), differences: vec!["connection (created)".into()], wrote: true, scim: None });
        };
        let id = connection_id(&observed)?;
        let mut differences = plan::diff(&desired, &observed, request.synced_fingerprint, request.azure.fingerprint);
        let mut wrote = false;
        if !differences.is_empty() && !request.observe_only {
            self.call(Method::PATCH, &format!("/connections/{id}"), Some(&plan::update_body(&desired, &observed))).await?;
            wrote = true;
        }
        let missing_clients = self.enable_clients(&id, &desired.enabled_clients, request.observe_only).await?;
        if missing_clients > 0 {
            differences.push("enabled_clients".into());
            wrote |= !request.observe_only;
        }
        Ok(SyncOutcome { id: Some(id), differences, wrote, scim: None })
    }

    /// Enables the listed clients that are not enabled yet; returns how many were missing.
    async fn enable_clients(&self, id: &str, wanted: &[String], observe_only: bool) -> Result<usize, BrokerError> {
        if wanted.is_empty() {
            return Ok(0);
        }
        let enabled = self.enabled_clients(id).await?;
        let missing: Vec<&String> = wanted.iter().filter(|c| !enabled.contains(*c)).collect();
        if !observe_only {
            for chunk in missing.chunks(CLIENTS_PER_PATCH) {
                let body: Vec<Value> = chunk.iter().map(|c| json!({"client_id": c, "status": true})).collect();
                self.call(Method::PATCH, &format!("/connections/{id}/clients"), Some(&Value::Array(body))).await?;
            }
        }
        Ok(missing.len())
    }

    async fn enabled_clients(&self, id: &str) -> Result<BTreeSet<String>, BrokerError> {
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
        loop {
            let query = {
                let mut query = url::form_urlencoded::Serializer::new(String::new());
                query.append_pair("take", "100");
                if let Some(cursor) = &from {
                    query.append_pair("from", cursor);
                }
                query.finish()
            };
            let answer = self.call(Method::GET, &format!("/connections/{id}/clients?{query}"), None).await?;
            let page: Page = answer.body.json().map_err(|_| BrokerError::Unexpected("enabled clients page is not valid JSON".into()))?;
            all.extend(page.clients.into_iter().map(|c| c.client_id));
            match page.next.filter(|n| !n.is_empty()) {
                Some(next) if Some(&next) != from.as_ref() => from = Some(next),
                _ => return Ok(all),
            }
        }
    }

    /// Deletes the connection; one that is already gone counts as deleted.
    pub async fn delete(&self, spec: &AzureAdConnectionSpec, known_id: Option<&str>) -> Result<(), BrokerError> {
        let Some(auth0) = spec.auth0.as_ref() else { return Ok(()) };
        let id = match self.find(&auth0.name, known_id).await? {
            Found::Ours(conn) => connection_id(&conn)?,
            // Gone already, or a same-named connection of another strategy that is not ours.
            Found::Missing | Found::Foreign { .. } => return Ok(()),
        };
        match self.call(Method::DELETE, &format!("/connections/{id}"), None).await {
            Ok(_) | Err(BrokerError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// What a lookup found under the connection's name.
enum Found {
    Ours(Value),
    Missing,
    /// A connection of that name with another strategy.
    Foreign {
        strategy: String,
    },
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
