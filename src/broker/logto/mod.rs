//! Logto Management API: the Microsoft social connector (`azuread-universal`).
//!
//! Token: client-credentials grant at `/oidc/token` (HTTP Basic with the M2M app, `resource` the
//! Management API indicator, `scope=all`), cached until shortly before it expires. Connector: find
//! by fixed or recorded id, else adopt the tenant's `azuread` connector when it carries this
//! application's client id; create it, or update it with the complete config (PATCH replaces
//! `config` wholesale); delete (404 is done). Logto allows one Microsoft connector per tenant, so
//! another application's connector is a conflict, reported before any write.

pub mod plan;

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::Mutex;
use url::Url;

use self::plan::{DesiredConnector, Owner};
use super::{BrokerError, SyncOutcome, SyncRequest, budget::RequestBudget};
use crate::{
    crd::{broker::LogtoBrokerSpec, connection::AzureAdConnectionSpec},
    secret::SecretValue,
    upstream::{Answer, Upstream, retry_after},
};

/// Longer token lifetimes are not believed (Logto's default is one hour).
const TOKEN_MAX_TTL: Duration = Duration::from_secs(86_400);
/// The Management API permission the M2M role must hold; the only predefined one.
const MANAGEMENT_SCOPE: &str = "all";
/// Longest error text kept (characters), after scrubbing.
const MAX_MESSAGE: usize = 600;

#[derive(Debug)]
pub struct LogtoClient {
    upstream: Upstream,
    /// `host[:port]` of the endpoint, or why the endpoint is unusable.
    host: Result<String, String>,
    resource: String,
    app_id: String,
    app_secret: SecretValue,
    /// The cached token and when to refresh it.
    token: Mutex<Option<(SecretValue, Instant)>>,
    budget: RequestBudget,
}

/// Logto's error body (`RequestError`), with the OAuth fields the token endpoint adds.
#[derive(Deserialize, Default)]
struct ApiErrorBody {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    details: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

/// What a lookup found.
enum Found {
    Ours(Value),
    Missing,
    /// A connector this connection may not take over; the text says why.
    Foreign(String),
}

impl LogtoClient {
    pub fn new(upstream: Upstream, spec: &LogtoBrokerSpec, client_id: &str, secret: SecretValue, rate: Option<(u32, u32)>) -> Self {
        Self {
            upstream,
            host: endpoint_host(&spec.endpoint),
            resource: spec.resource.clone(),
            app_id: client_id.to_owned(),
            app_secret: secret,
            token: Mutex::new(None),
            budget: RequestBudget::new(rate),
        }
    }

    fn host(&self) -> Result<&str, BrokerError> {
        self.host.as_deref().map_err(|e| BrokerError::Rejected(e.clone()))
    }

    /// The redirect URI to register in Entra ID for connector `id`.
    pub fn callback_url(&self, id: &str) -> Option<String> {
        let host = self.host.as_deref().ok()?;
        Some(plan::callback_url(&format!("https://{host}"), id))
    }

    /// A Management API token, from cache when it is still good.
    async fn token(&self) -> Result<SecretValue, BrokerError> {
        let host = self.host()?;
        let mut cached = self.token.lock().await;
        if let Some((token, refresh_at)) = cached.as_ref()
            && *refresh_at > Instant::now()
        {
            return Ok(token.clone());
        }
        self.acquire().await?;
        // RFC 6749 §2.3.1: the id and secret are form-encoded before they go into Basic.
        let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let form = [("grant_type", "client_credentials"), ("resource", self.resource.as_str()), ("scope", MANAGEMENT_SCOPE)];
        let request = self
            .upstream
            .request(Method::POST, host, "/oidc/token")
            .basic_auth(encode(&self.app_id), Some(encode(self.app_secret.expose())))
            .form(&form);
        let answer = self.upstream.send(request).await?;
        if !answer.status.is_success() {
            return Err(match self.error_from(&answer).await {
                // Any refusal of the token request (unknown app, wrong secret, wrong resource
                // indicator, no role granting `all`) is about the operator's management credentials.
                BrokerError::Rejected(message) | BrokerError::Conflict(message) => {
                    BrokerError::Auth(format!("token request refused: {message}"))
                }
                BrokerError::NotFound => {
                    BrokerError::Rejected(format!("https://{host}/oidc/token answered 404: the endpoint does not look like a Logto tenant"))
                }
                other => other,
            });
        }
        #[derive(Deserialize)]
        struct TokenBody {
            access_token: String,
            #[serde(default = "default_ttl")]
            expires_in: u64,
        }
        fn default_ttl() -> u64 {
            3600
        }
        let token: TokenBody = answer.body.json().map_err(|_| BrokerError::Unexpected("token response is not valid JSON".into()))?;
        let value = SecretValue::new(token.access_token);
        // A token living less than twice the margin is still reused for half its lifetime.
        let ttl = Duration::from_secs(token.expires_in).min(TOKEN_MAX_TTL);
        *cached = Some((value.clone(), super::token_refresh_at(ttl)));
        Ok(value)
    }

    async fn acquire(&self) -> Result<(), BrokerError> {
        self.budget.acquire().await.map_err(|b| BrokerError::RateLimited { retry_after: b.remaining })
    }

    /// One Management API call. A 401 drops the cached token and retries once with a new one.
    async fn call(&self, method: Method, path_and_query: &str, body: Option<&Value>) -> Result<Answer, BrokerError> {
        let host = self.host()?;
        for attempt in 0..2 {
            let token = self.token().await?;
            self.acquire().await?;
            let mut request = self.upstream.request(method.clone(), host, &format!("/api{path_and_query}")).bearer_auth(token.expose());
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

    /// The error an answer means. The text is neither scrubbed nor bounded yet: [`Self::finish`]
    /// does both, in that order, so a secret can never be cut into an unrecognisable prefix.
    async fn error_from(&self, answer: &Answer) -> BrokerError {
        let body: ApiErrorBody = answer.body.json().unwrap_or_default();
        // The OAuth description is the precise one on the token endpoint; elsewhere Logto's message.
        let mut message = [&body.error_description, &body.message, &body.error]
            .into_iter()
            .flatten()
            .find(|m| !m.trim().is_empty())
            .cloned()
            .unwrap_or_else(|| String::from_utf8_lossy(&answer.body.0).lines().next().unwrap_or_default().to_owned());
        if let Some(details) = body.details.as_deref().filter(|d| !d.trim().is_empty()) {
            message = format!("{message} [{}]", details.lines().collect::<Vec<_>>().join("; "));
        }
        let code = body.code.clone().or_else(|| body.error.clone()).unwrap_or_default();
        if !code.is_empty() {
            message = format!("{message} ({code})");
        }
        match answer.status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => BrokerError::Auth(message),
            StatusCode::NOT_FOUND => BrokerError::NotFound,
            StatusCode::UNPROCESSABLE_ENTITY
                if matches!(
                    code.as_str(),
                    "connector.multiple_instances_not_supported" | "connector.multiple_target_with_same_platform"
                ) =>
            {
                BrokerError::Conflict(format!(
                    "Logto allows one Microsoft connector per tenant and another one is already there: {message}"
                ))
            }
            StatusCode::TOO_MANY_REQUESTS => {
                let wait =
                    retry_after(&answer.headers, jiff::Timestamp::now()).unwrap_or(Duration::from_secs(1)).max(Duration::from_secs(1));
                self.budget.block_for(wait).await;
                BrokerError::RateLimited { retry_after: wait }
            }
            s if s.is_server_error() => BrokerError::Server { status: s.as_u16(), message },
            _ => BrokerError::Rejected(message),
        }
    }

    /// Proves the operator's management credentials.
    pub async fn check(&self) -> Result<(), BrokerError> {
        self.token().await.map(drop).map_err(|e| self.finish(e, None))
    }

    /// Every error leaves through here: the M2M secret and the connection's secret are removed from
    /// its text, and only then is the text cut to a readable length.
    fn finish(&self, error: BrokerError, secret: Option<&SecretValue>) -> BrokerError {
        let error = error.scrubbed(&self.app_secret);
        let error = match secret {
            Some(secret) => error.scrubbed(secret),
            None => error,
        };
        let bound =
            |m: String| if m.chars().count() > MAX_MESSAGE { format!("{}…", m.chars().take(MAX_MESSAGE).collect::<String>()) } else { m };
        match error {
            BrokerError::Auth(m) => BrokerError::Auth(bound(m)),
            BrokerError::Server { status, message } => BrokerError::Server { status, message: bound(message) },
            BrokerError::Rejected(m) => BrokerError::Rejected(bound(m)),
            BrokerError::Unsupported(m) => BrokerError::Unsupported(bound(m)),
            BrokerError::Unexpected(m) => BrokerError::Unexpected(bound(m)),
            BrokerError::Conflict(m) => BrokerError::Conflict(bound(m)),
            other => other,
        }
    }

    async fn get(&self, id: &str) -> Result<Option<Value>, BrokerError> {
        check_id(id)?;
        match self.call(Method::GET, &format!("/connectors/{id}"), None).await {
            Ok(answer) => answer.body.json().map(Some).map_err(|_| BrokerError::Unexpected("connector is not valid JSON".into())),
            Err(BrokerError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn list_azuread(&self) -> Result<Vec<Value>, BrokerError> {
        let answer = self.call(Method::GET, &format!("/connectors?target={}", plan::TARGET), None).await?;
        let list: Vec<Value> = answer.body.json().map_err(|_| BrokerError::Unexpected("connector list is not a JSON array".into()))?;
        // Filter again: a proxy or an older Logto might ignore the query.
        Ok(list.into_iter().filter(|c| c.get("target").and_then(Value::as_str).is_none_or(|t| t == plan::TARGET)).collect())
    }

    /// The connector this connection manages.
    ///
    /// A fixed id (`logto.connectorId`) is where the connector must be; a connector there that is
    /// not this application's `azuread-universal` is never taken over. A recorded id is trusted
    /// only when it still names this application's connector, so a stale or tampered status cannot
    /// point the operator at someone else's. Otherwise the tenant's `azuread` connectors are listed
    /// and this application's is adopted; any other one blocks creation (one per tenant).
    async fn find(&self, fixed_id: Option<&str>, known_id: Option<&str>, client_id: &str) -> Result<Found, BrokerError> {
        if let Some(id) = fixed_id {
            if let Some(found) = self.get(id).await? {
                return Ok(match plan::owner(&found, client_id) {
                    Owner::Ours => Found::Ours(found),
                    Owner::OtherClient(other) => Found::Foreign(format!(
                        "Logto connector {id} (logto.connectorId) is a Microsoft connector for client {}, not {client_id}",
                        shown(&other)
                    )),
                    Owner::OtherFactory(factory) => Found::Foreign(format!(
                        "Logto connector {id} (logto.connectorId) is a {} connector, not {}",
                        shown(&factory),
                        plan::FACTORY_ID
                    )),
                });
            }
        } else if let Some(id) = known_id.filter(|id| check_id(id).is_ok())
            && let Some(found) = self.get(id).await?
            && plan::owner(&found, client_id) == Owner::Ours
        {
            return Ok(Found::Ours(found));
        }
        let listed = self.list_azuread().await?;
        if let Some(ours) = listed.iter().find(|c| plan::owner(c, client_id) == Owner::Ours) {
            let id = connector_id(ours)?;
            if let Some(fixed) = fixed_id {
                return Ok(Found::Foreign(format!(
                    "Logto already has this application's Microsoft connector under id {id}, not the fixed logto.connectorId {fixed}; Logto allows one per tenant, so delete that connector or remove logto.connectorId"
                )));
            }
            return Ok(Found::Ours(ours.clone()));
        }
        Ok(match listed.first() {
            None => Found::Missing,
            Some(other) => {
                let id = other.get("id").and_then(Value::as_str).unwrap_or("?");
                let text = match plan::owner(other, client_id) {
                    Owner::OtherClient(client) => format!("Logto already has a Microsoft connector {id} for client {}", shown(&client)),
                    Owner::OtherFactory(factory) => format!("Logto already has an azuread connector {id} ({})", shown(&factory)),
                    // Taken above; named plainly should that ever change.
                    Owner::Ours => format!("Logto already has a Microsoft connector {id}"),
                };
                Found::Foreign(format!("{text}; Logto allows one per tenant"))
            }
        })
    }

    pub async fn sync(&self, request: &SyncRequest<'_>) -> Result<SyncOutcome, BrokerError> {
        let secret = request.azure.secret;
        self.sync_inner(request).await.map_err(|e| self.finish(e, Some(secret)))
    }

    async fn sync_inner(&self, request: &SyncRequest<'_>) -> Result<SyncOutcome, BrokerError> {
        let spec = request.spec.logto.as_ref().ok_or_else(|| BrokerError::Unsupported("the connection has no logto block".into()))?;
        if let Some(id) = spec.connector_id.as_deref() {
            check_id(id)?;
        }
        let desired = plan::desired(spec, &request.azure);
        let observed = match self.find(desired.id.as_deref(), request.known_id, request.azure.client_id).await? {
            Found::Ours(connector) => connector,
            Found::Foreign(why) => return Err(BrokerError::Conflict(why)),
            Found::Missing if request.observe_only => {
                return Ok(SyncOutcome { id: None, differences: vec!["connector (missing)".into()], wrote: false, scim: None });
            }
            Found::Missing => return self.create(&desired).await,
        };
        let id = connector_id(&observed)?;
        let differences = plan::diff(&desired, &observed, request.synced_fingerprint, request.azure.fingerprint);
        let mut wrote = false;
        if !differences.is_empty() && !request.observe_only {
            self.call(Method::PATCH, &format!("/connectors/{id}"), Some(&plan::update_body(&desired, &observed))).await?;
            wrote = true;
        }
        Ok(SyncOutcome { id: Some(id), differences, wrote, scim: None })
    }

    async fn create(&self, desired: &DesiredConnector) -> Result<SyncOutcome, BrokerError> {
        let answer = self.call(Method::POST, "/connectors", Some(&plan::create_body(desired))).await?;
        let created: Value = answer.body.json().map_err(|_| BrokerError::Unexpected("created connector is not valid JSON".into()))?;
        let id = connector_id(&created)?;
        Ok(SyncOutcome { id: Some(id), differences: vec!["connector (created)".into()], wrote: true, scim: None })
    }

    /// Deletes the connector; one that is already gone counts as deleted. A connector that is not
    /// this application's `azuread-universal` is left alone.
    pub async fn delete(&self, spec: &AzureAdConnectionSpec, known_id: Option<&str>) -> Result<(), BrokerError> {
        self.delete_inner(spec, known_id).await.map_err(|e| self.finish(e, None))
    }

    async fn delete_inner(&self, spec: &AzureAdConnectionSpec, known_id: Option<&str>) -> Result<(), BrokerError> {
        let Some(logto) = spec.logto.as_ref() else { return Ok(()) };
        let fixed = logto.connector_id.as_deref().filter(|id| check_id(id).is_ok());
        let id = match self.find(fixed, known_id, &spec.azure.client_id).await? {
            Found::Ours(connector) => connector_id(&connector)?,
            Found::Missing | Found::Foreign(_) => return Ok(()),
        };
        match self.call(Method::DELETE, &format!("/connectors/{id}"), None).await {
            Ok(_) | Err(BrokerError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// `host[:port]` of an `https://HOST[:PORT]` endpoint (the CRD's shape); anything else is refused
/// rather than guessed at, so management calls only ever go to the host the spec names.
fn endpoint_host(endpoint: &str) -> Result<String, String> {
    let refuse = || format!("Logto endpoint {endpoint:?} is not https://HOST[:PORT]");
    let url = Url::parse(endpoint.trim()).map_err(|_| refuse())?;
    let plain = url.scheme() == "https"
        && url.username().is_empty()
        && url.password().is_none()
        && matches!(url.path(), "" | "/")
        && url.query().is_none()
        && url.fragment().is_none();
    let host = url.host_str().filter(|_| plain).ok_or_else(refuse)?;
    Ok(match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    })
}

/// A value from the broker, for a message: at most 64 characters, `(none)` when empty.
fn shown(value: &str) -> String {
    if value.is_empty() { "(none)".into() } else { value.chars().take(64).collect() }
}

/// Ids come back into URL paths; accept only an id alphabet.
fn check_id(id: &str) -> Result<(), BrokerError> {
    super::check_id(id, 128, "a Logto connector id")
}

fn connector_id(connector: &Value) -> Result<String, BrokerError> {
    super::object_id(connector, 128, "a Logto connector id")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_hosts() {
        assert_eq!(endpoint_host("https://auth.example.com").unwrap(), "auth.example.com");
        assert_eq!(endpoint_host("https://Auth.Example.com:8443/").unwrap(), "auth.example.com:8443");
        assert_eq!(endpoint_host("https://abc123.logto.app:443").unwrap(), "abc123.logto.app", "the default port is implied");
        for bad in
            ["http://auth.example.com", "https://auth.example.com/api", "https://u:p@auth.example.com", "auth.example.com", "https://x?y"]
        {
            assert!(endpoint_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ids() {
        for ok in ["abc123", "x", "r2-d2_c3po"] {
            assert!(check_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "../connectors", "a/b", "a?b", &"x".repeat(129)] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
    }
}
