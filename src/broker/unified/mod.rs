//! Unified.to: a `microsoft_ad` connection imported with the Entra application's client
//! credentials.
//!
//! Unified.to has no API for a workspace's own OAuth app (that stays a dashboard step); what the
//! API offers is importing a connection with credentials: `POST /unified/connection` with an
//! `auth` object, `GET`/`PUT`/`DELETE /unified/connection/{id}` and a filtered list. The workspace
//! API token is a static bearer token. The connection is found by its recorded id, else by its
//! `external_xref` (see [`plan::external_xref`]); only a `microsoft_ad` connection with that
//! xref is ever taken (under the ownership rules, [`super::ownership`]), updated or deleted.

pub mod plan;

use std::time::Duration;

use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;

use super::{
    Broker, BrokerError, DeleteRequest, SyncOutcome, SyncRequest,
    budget::Rate,
    core::{Auth, Dialect, ErrorBody, Found, Limits, ManagementApi, Session, json},
};
use crate::{
    crd::{
        broker::UnifiedBrokerSpec,
        connection::{AzureSpec, UnifiedConnectionSpec},
    },
    secret::SecretValue,
    upstream::{Answer, Upstream},
};

/// Page size of connection lookups (the API's default and documented maximum page).
const PAGE: usize = 100;
/// Lookups stop after this many pages; an xref filter normally answers with one short page.
const MAX_PAGES: usize = 50;

/// Unified.to's 429 guidance is unconfirmed; without a header, try again after a second.
/// Unified.to's limits are the workspace's, which its API token stands for.
const DIALECT: Dialect = Dialect { name: "Unified.to", default_retry: Duration::from_secs(1), limits: Limits::PerCredential, read_error };

#[derive(Debug)]
pub struct UnifiedClient {
    pub(super) api: ManagementApi,
}

/// Unified.to's error body: `{statusCode, error, message}`.
#[derive(Deserialize, Default)]
struct ApiErrorBody {
    #[serde(default)]
    message: Option<Value>,
    #[serde(default)]
    error: Option<String>,
}

fn read_error(answer: &Answer) -> ErrorBody {
    let body: ApiErrorBody = answer.body.json().unwrap_or_default();
    let message = match body.message {
        Some(Value::String(m)) if !m.is_empty() => m,
        // Validation failures may list several messages.
        Some(Value::Array(items)) if !items.is_empty() => {
            items.iter().map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned)).collect::<Vec<_>>().join("; ")
        }
        _ => body.error.filter(|e| !e.is_empty()).unwrap_or_else(|| answer.body.text().into_owned()),
    };
    ErrorBody { message, code: None, meaning: None }
}

impl UnifiedClient {
    pub fn new(upstream: Upstream, spec: &UnifiedBrokerSpec, token: SecretValue, rate: Option<(u32, u32)>) -> Self {
        Self {
            api: ManagementApi::new(
                upstream,
                Ok(spec.region.host().to_owned()),
                Ok(String::new()),
                Auth::Token(token),
                rate.map(Rate::from),
                DIALECT,
            ),
        }
    }
}

/// The first `microsoft_ad` connection with this xref, oldest first. The server filters by
/// xref; the integration and xref are checked again here.
async fn find_by_xref(api: &Session<'_>, xref: &str) -> Result<Option<Value>, BrokerError> {
    for page in 0..MAX_PAGES {
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("external_xref", xref)
            .append_pair("limit", &PAGE.to_string())
            .append_pair("offset", &(page * PAGE).to_string())
            .append_pair("sort", "created_at")
            .append_pair("order", "asc")
            .finish();
        let answer = api.call(Method::GET, &format!("/unified/connection?{query}"), None).await?;
        let list: Vec<Value> = answer.body.json().map_err(|_| BrokerError::Unexpected("connection list is not a JSON array".into()))?;
        let full = list.len() >= PAGE;
        if let Some(found) = list.into_iter().find(|c| plan::is_ours(c, xref)) {
            return Ok(Some(found));
        }
        if !full {
            return Ok(None);
        }
    }
    Err(BrokerError::Unexpected(format!("more than {} connections share the external_xref", PAGE * MAX_PAGES)))
}

/// The connection this spec manages: by recorded id when it still is a `microsoft_ad`
/// connection with our xref, else by xref (adoption). Anything else is never touched, and
/// connections may share an xref, so nothing is ever [`Found::Foreign`].
async fn find(api: &Session<'_>, xref: &str, known_id: Option<&str>) -> Result<Found, BrokerError> {
    if let Some(id) = known_id.filter(|id| check_id(id).is_ok())
        && let Some(found) = api.get_json(&format!("/unified/connection/{id}"), "connection").await?
        && plan::is_ours(&found, xref)
    {
        return Ok(Found::Ours(found));
    }
    Ok(find_by_xref(api, xref).await?.map_or(Found::Missing, Found::Ours))
}

async fn sync_with(api: &Session<'_>, spec: &UnifiedConnectionSpec, request: &SyncRequest<'_>) -> Result<SyncOutcome, BrokerError> {
    let desired = plan::desired(spec, &request.azure)?;
    let observed = match find(api, &desired.external_xref, request.ownership.recorded_id(request.known_id)).await? {
        Found::Ours(connection) => connection,
        Found::Missing | Found::Foreign { .. } if request.observe_only => return Ok(SyncOutcome::missing("connection")),
        Found::Missing | Found::Foreign { .. } if !request.ownership.may_create() => {
            return Ok(SyncOutcome::create_deferred("connection"));
        }
        Found::Missing | Found::Foreign { .. } => {
            let answer = api.call(Method::POST, "/unified/connection", Some(&plan::create_body(&desired))).await?;
            return Ok(SyncOutcome::created("connection", connection_id(&json(&answer, "created connection")?)?));
        }
    };
    let id = connection_id(&observed)?;
    request.ownership.judge_claimed(&id, request.known_id)?;
    let differences = plan::diff(&desired, &observed, request.synced_fingerprint_of(&id), request.azure.fingerprint);
    let mut wrote = false;
    if !differences.is_empty() && !request.observe_only {
        api.call(Method::PUT, &format!("/unified/connection/{id}"), Some(&plan::update_body(&desired, &observed))).await?;
        wrote = true;
    }
    Ok(SyncOutcome::existing(id, differences, wrote))
}

impl Broker for UnifiedClient {
    type Target = UnifiedConnectionSpec;

    async fn sync(&self, spec: &UnifiedConnectionSpec, request: &SyncRequest<'_>) -> Result<SyncOutcome, BrokerError> {
        let api = self.api.session(Some(request.azure.secret));
        sync_with(&api, spec, request).await.map_err(|e| api.scrubbed(e))
    }

    /// Deletes the connection; one that is gone, or never was ours, counts as deleted.
    async fn delete(&self, spec: &UnifiedConnectionSpec, request: &DeleteRequest<'_>) -> Result<(), BrokerError> {
        let api = self.api.session(None);
        let xref = plan::external_xref(spec, &request.app.tenant, &request.app.client_id);
        let found = match find(&api, &xref, request.ownership.recorded_id(request.known_id)).await.map_err(|e| api.scrubbed(e))? {
            Found::Ours(found) => found,
            Found::Missing | Found::Foreign { .. } => return Ok(()),
        };
        let id = connection_id(&found)?;
        request.ownership.judge_claimed(&id, request.known_id)?;
        api.delete(&format!("/unified/connection/{id}")).await
    }

    /// Proves the workspace token with the cheapest authenticated read.
    async fn check(&self) -> Result<(), BrokerError> {
        self.api.session(None).call(Method::GET, "/unified/connection?limit=1", None).await.map(drop)
    }
}

impl UnifiedClient {
    /// The claim key of the connection `spec` names: the region, the workspace (known only by its
    /// API token, so a one-way hash of it) and the external xref.
    pub(super) fn claim_key(&self, spec: &UnifiedConnectionSpec, app: &AzureSpec) -> String {
        let xref = plan::external_xref(spec, &app.tenant, &app.client_id);
        ["unified", &self.api.host_key(), &self.api.credential_key(), &xref].join("\0")
    }
}

/// Ids come back into URL paths; accept only an id alphabet.
fn check_id(id: &str) -> Result<(), BrokerError> {
    super::check_id(id, 64, "a Unified.to connection id")
}

fn connection_id(connection: &Value) -> Result<String, BrokerError> {
    super::object_id(connection, 64, "a Unified.to connection id")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_before_they_reach_a_path() {
        for ok in ["65f0c0ffee1234567890abcd", "conn_1-a"] {
            assert!(check_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "../workspace", "a/b", "a?b=c", "a b", &"x".repeat(65)] {
            assert!(matches!(check_id(bad), Err(BrokerError::Rejected(_))), "{bad}");
        }
    }
}
