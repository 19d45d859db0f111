//! Logto Management API: the Microsoft social connector (`azuread-universal`).
//!
//! Token: client-credentials grant at `/oidc/token` (HTTP Basic with the M2M app, `resource` the
//! Management API indicator, `scope=all`), cached until shortly before it expires. Connector: find
//! by fixed or recorded id, else adopt the tenant's `azuread` connector when it carries this
//! application's client id; create it, or update it with the complete config (PATCH replaces
//! `config` wholesale); delete (404 is done). Logto allows one Microsoft connector per tenant, so
//! another application's connector is a conflict, reported before any write.

pub mod plan;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::Value;
use url::Url;

use self::plan::{DesiredConnector, Owner};
use super::{
    Broker, BrokerError, DeleteRequest, SyncOutcome, SyncRequest,
    budget::Rate,
    core::{Auth, ClientCredentials, Dialect, ErrorBody, Found, Limits, ManagementApi, Meaning, Session, TokenRequest, json},
};
use crate::{
    crd::{broker::LogtoBrokerSpec, connection::LogtoConnectionSpec},
    secret::SecretValue,
    upstream::{Answer, Upstream},
};

/// Longer token lifetimes are not believed (Logto's default is one hour).
const TOKEN_MAX_TTL: Duration = Duration::from_secs(86_400);
/// Logto's default token lifetime, when the answer does not say.
const TOKEN_DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// The Management API permission the M2M role must hold; the only predefined one.
const MANAGEMENT_SCOPE: &str = "all";

/// Logto's 429 guidance is unconfirmed; without a header, try again after a second.
/// Logto's limits, where it has any (Logto Cloud), are the tenant's: one budget per endpoint host.
const DIALECT: Dialect = Dialect { name: "Logto", default_retry: Duration::from_secs(1), limits: Limits::PerHost, read_error };

/// Logto's answer when a second Microsoft connector is created.
const ONE_PER_TENANT: &str = "Logto allows one Microsoft connector per tenant and another one is already there";

#[derive(Debug)]
pub struct LogtoClient {
    pub(super) api: ManagementApi,
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

/// The OAuth description on the token endpoint, else Logto's message with its details.
fn read_error(answer: &Answer) -> ErrorBody {
    let body: ApiErrorBody = answer.body.json().unwrap_or_default();
    let mut message = [&body.error_description, &body.message, &body.error]
        .into_iter()
        .flatten()
        .find(|m| !m.trim().is_empty())
        .cloned()
        .unwrap_or_else(|| answer.body.text().into_owned());
    if let Some(details) = body.details.as_deref().filter(|d| !d.trim().is_empty()) {
        message = format!("{message} [{}]", details.lines().collect::<Vec<_>>().join("; "));
    }
    let code = body.code.or(body.error);
    let one_per_tenant = answer.status == StatusCode::UNPROCESSABLE_ENTITY
        && matches!(code.as_deref(), Some("connector.multiple_instances_not_supported" | "connector.multiple_target_with_same_platform"));
    ErrorBody { message, code, meaning: one_per_tenant.then_some(Meaning::Conflict(ONE_PER_TENANT)) }
}

impl LogtoClient {
    pub fn new(upstream: Upstream, spec: &LogtoBrokerSpec, client_id: &str, secret: SecretValue, rate: Option<(u32, u32)>) -> Self {
        let request = TokenRequest::BasicForm { resource: spec.resource.clone(), scope: MANAGEMENT_SCOPE };
        let grant = ClientCredentials::new(client_id, secret, "/oidc/token", request, TOKEN_DEFAULT_TTL, TOKEN_MAX_TTL);
        let api = ManagementApi::new(
            upstream,
            endpoint_host(&spec.endpoint),
            Ok("/api".into()),
            Auth::ClientCredentials(grant),
            rate.map(Rate::from),
            DIALECT,
        );
        Self { api }
    }

    /// The connector this connection manages.
    ///
    /// A fixed id (`logto.connectorId`) is where the connector must be; a connector there that is
    /// not this application's `azuread-universal` is never taken over. A recorded id is trusted
    /// only when it still names this application's connector, so a stale or tampered status cannot
    /// point the operator at someone else's. Otherwise the tenant's `azuread` connectors are listed
    /// and this application's is taken, under the ownership rules; any other one blocks creation
    /// (one per tenant).
    async fn find(api: &Session<'_>, fixed_id: Option<&str>, known_id: Option<&str>, client_id: &str) -> Result<Found, BrokerError> {
        if let Some(id) = fixed_id {
            if let Some(found) = get(api, id).await? {
                return Ok(match plan::owner(&found, client_id) {
                    Owner::Ours => Found::Ours(found),
                    Owner::OtherClient(other) => Found::Foreign {
                        kind: format!(
                            "Logto connector {id} (logto.connectorId) is a Microsoft connector for client {}, not {client_id}",
                            shown(&other)
                        ),
                    },
                    Owner::OtherFactory(factory) => Found::Foreign {
                        kind: format!(
                            "Logto connector {id} (logto.connectorId) is a {} connector, not {}",
                            shown(&factory),
                            plan::FACTORY_ID
                        ),
                    },
                });
            }
        } else if let Some(id) = known_id.filter(|id| check_id(id).is_ok())
            && let Some(found) = get(api, id).await?
            && plan::owner(&found, client_id) == Owner::Ours
        {
            return Ok(Found::Ours(found));
        }
        let listed = list_azuread(api).await?;
        if let Some(ours) = listed.iter().find(|c| plan::owner(c, client_id) == Owner::Ours) {
            let id = connector_id(ours)?;
            if let Some(fixed) = fixed_id {
                return Ok(Found::Foreign {
                    kind: format!(
                        "Logto already has this application's Microsoft connector under id {id}, not the fixed logto.connectorId {fixed}; Logto allows one per tenant, so delete that connector or remove logto.connectorId"
                    ),
                });
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
                Found::Foreign { kind: format!("{text}; Logto allows one per tenant") }
            }
        })
    }

    async fn sync_with(api: &Session<'_>, spec: &LogtoConnectionSpec, request: &SyncRequest<'_>) -> Result<SyncOutcome, BrokerError> {
        if let Some(id) = spec.connector_id.as_deref() {
            check_id(id)?;
        }
        let desired = plan::desired(spec, &request.azure);
        let known_id = request.ownership.recorded_id(request.known_id);
        let observed = match Self::find(api, desired.id.as_deref(), known_id, request.azure.client_id).await? {
            Found::Ours(connector) => connector,
            Found::Foreign { kind } => return Err(BrokerError::Conflict(kind)),
            Found::Missing if request.observe_only => return Ok(SyncOutcome::missing("connector")),
            Found::Missing if !request.ownership.may_create() => return Ok(SyncOutcome::create_deferred("connector")),
            Found::Missing => return create(api, &desired).await,
        };
        let id = connector_id(&observed)?;
        request.ownership.judge_claimed(&id, request.known_id)?;
        let differences = plan::diff(&desired, &observed, request.synced_fingerprint_of(&id), request.azure.fingerprint);
        let mut wrote = false;
        if !differences.is_empty() && !request.observe_only {
            api.call(Method::PATCH, &format!("/connectors/{id}"), Some(&plan::update_body(&desired, &observed))).await?;
            wrote = true;
        }
        Ok(SyncOutcome::existing(id, differences, wrote))
    }
}

impl Broker for LogtoClient {
    type Target = LogtoConnectionSpec;

    async fn sync(&self, spec: &LogtoConnectionSpec, request: &SyncRequest<'_>) -> Result<SyncOutcome, BrokerError> {
        let api = self.api.session(Some(request.azure.secret));
        Self::sync_with(&api, spec, request).await.map_err(|e| api.scrubbed(e))
    }

    /// Deletes the connector; one that is already gone counts as deleted. A connector that is not
    /// this application's `azuread-universal` is left alone.
    async fn delete(&self, spec: &LogtoConnectionSpec, request: &DeleteRequest<'_>) -> Result<(), BrokerError> {
        let api = self.api.session(None);
        let fixed = spec.connector_id.as_deref().filter(|id| check_id(id).is_ok());
        let known_id = request.ownership.recorded_id(request.known_id);
        let connector = match Self::find(&api, fixed, known_id, &request.app.client_id).await.map_err(|e| api.scrubbed(e))? {
            Found::Ours(connector) => connector,
            Found::Missing | Found::Foreign { .. } => return Ok(()),
        };
        let id = connector_id(&connector)?;
        request.ownership.judge_claimed(&id, request.known_id)?;
        api.delete(&format!("/connectors/{id}")).await
    }

    async fn check(&self) -> Result<(), BrokerError> {
        self.api.session(None).authenticate().await
    }
}

impl LogtoClient {
    /// The claim key of the tenant's Microsoft connector: Logto allows one per tenant, so the
    /// key is the tenant's endpoint alone.
    pub(super) fn claim_key(&self) -> String {
        ["logto", &self.api.host_key(), plan::TARGET].join("\0")
    }
}

async fn get(api: &Session<'_>, id: &str) -> Result<Option<Value>, BrokerError> {
    check_id(id)?;
    api.get_json(&format!("/connectors/{id}"), "connector").await
}

async fn list_azuread(api: &Session<'_>) -> Result<Vec<Value>, BrokerError> {
    let answer = api.call(Method::GET, &format!("/connectors?target={}", plan::TARGET), None).await?;
    let list: Vec<Value> = answer.body.json().map_err(|_| BrokerError::Unexpected("connector list is not a JSON array".into()))?;
    // Filter again: a proxy or an older Logto might ignore the query.
    Ok(list.into_iter().filter(|c| c.get("target").and_then(Value::as_str).is_none_or(|t| t == plan::TARGET)).collect())
}

async fn create(api: &Session<'_>, desired: &DesiredConnector) -> Result<SyncOutcome, BrokerError> {
    let answer = api.call(Method::POST, "/connectors", Some(&plan::create_body(desired))).await?;
    let id = connector_id(&json(&answer, "created connector")?)?;
    Ok(SyncOutcome::created("connector", id))
}

/// `host[:port]` of an `https://HOST[:PORT]` endpoint (the CRD's shape); anything else is refused
/// rather than guessed at, so management calls only ever go to the host the spec names.
pub(crate) fn endpoint_host(endpoint: &str) -> Result<String, String> {
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
