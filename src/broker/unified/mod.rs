//! Unified.to: a `microsoft_ad` connection imported with the Entra application's client
//! credentials.
//!
//! Unified.to has no API for a workspace's own OAuth app (that stays a dashboard step); what the
//! API offers is importing a connection with credentials: `POST /unified/connection` with an
//! `auth` object, `GET`/`PUT`/`DELETE /unified/connection/{id}` and a filtered list. The workspace
//! API token is a static bearer token. The connection is found by its recorded id, else by its
//! `external_xref` (see [`plan::external_xref`]); only a `microsoft_ad` connection with that
//! xref is ever adopted, updated or deleted.

pub mod plan;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use super::{BrokerError, SyncOutcome, SyncRequest, budget::RequestBudget};
use crate::{
    crd::{broker::UnifiedBrokerSpec, connection::AzureAdConnectionSpec},
    secret::SecretValue,
    upstream::{Answer, Upstream, retry_after},
};

/// Page size of connection lookups (the API's default and documented maximum page).
const PAGE: usize = 100;
/// Lookups stop after this many pages; an xref filter normally answers with one short page.
const MAX_PAGES: usize = 50;

#[derive(Debug)]
pub struct UnifiedClient {
    upstream: Upstream,
    host: &'static str,
    token: SecretValue,
    budget: RequestBudget,
}

/// Unified.to's error body: `{statusCode, error, message}`.
#[derive(Deserialize, Default)]
struct ApiErrorBody {
    #[serde(default)]
    message: Option<Value>,
    #[serde(default)]
    error: Option<String>,
}

impl UnifiedClient {
    pub fn new(upstream: Upstream, spec: &UnifiedBrokerSpec, token: SecretValue, rate: Option<(u32, u32)>) -> Self {
        Self { upstream, host: spec.region.host(), token, budget: RequestBudget::new(rate) }
    }

    /// One API call with the workspace token. Any non-2xx answer is an error.
    async fn call(&self, method: Method, path_and_query: &str, body: Option<&Value>) -> Result<Answer, BrokerError> {
        self.budget.acquire().await.map_err(|b| BrokerError::RateLimited { retry_after: b.remaining })?;
        let mut request = self.upstream.request(method, self.host, path_and_query).bearer_auth(self.token.expose());
        if let Some(body) = body {
            request = request.json(body);
        }
        let answer = self.upstream.send(request).await?;
        if answer.status.is_success() {
            return Ok(answer);
        }
        Err(self.error_from(&answer).await)
    }

    async fn error_from(&self, answer: &Answer) -> BrokerError {
        let body: ApiErrorBody = answer.body.json().unwrap_or_default();
        let message = match body.message {
            Some(Value::String(m)) if !m.is_empty() => m,
            // Validation failures may list several messages.
            Some(Value::Array(items)) if !items.is_empty() => {
                items.iter().map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned)).collect::<Vec<_>>().join("; ")
            }
            _ => body.error.filter(|e| !e.is_empty()).unwrap_or_else(|| answer.body.snippet()),
        };
        let message = self.token.scrub(&message);
        match answer.status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => BrokerError::Auth(message),
            StatusCode::NOT_FOUND => BrokerError::NotFound,
            StatusCode::TOO_MANY_REQUESTS => {
                let wait =
                    retry_after(&answer.headers, jiff::Timestamp::now()).unwrap_or(Duration::from_secs(1)).max(Duration::from_secs(1));
                self.budget.block_for(wait).await;
                BrokerError::RateLimited { retry_after: wait }
            }
            s if s.is_server_error() => BrokerError::Server { status: s.as_u16(), message },
            s if s.is_client_error() => BrokerError::Rejected(message),
            s => BrokerError::Unexpected(format!("HTTP {}: {message}", s.as_u16())),
        }
    }

    /// Proves the workspace token with the cheapest authenticated read.
    pub async fn check(&self) -> Result<(), BrokerError> {
        self.call(Method::GET, "/unified/connection?limit=1", None).await.map(drop)
    }

    async fn get(&self, id: &str) -> Result<Option<Value>, BrokerError> {
        check_id(id)?;
        match self.call(Method::GET, &format!("/unified/connection/{id}"), None).await {
            Ok(answer) => answer.body.json().map(Some).map_err(|_| BrokerError::Unexpected("connection is not valid JSON".into())),
            Err(BrokerError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The first `microsoft_ad` connection with this xref, oldest first. The server filters by
    /// xref; the integration and xref are checked again here.
    async fn find_by_xref(&self, xref: &str) -> Result<Option<Value>, BrokerError> {
        for page in 0..MAX_PAGES {
            let query = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("external_xref", xref)
                .append_pair("limit", &PAGE.to_string())
                .append_pair("offset", &(page * PAGE).to_string())
                .append_pair("sort", "created_at")
                .append_pair("order", "asc")
                .finish();
            let answer = self.call(Method::GET, &format!("/unified/connection?{query}"), None).await?;
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
    /// connection with our xref, else by xref (adoption). Anything else is never touched.
    async fn find(&self, xref: &str, known_id: Option<&str>) -> Result<Option<Value>, BrokerError> {
        if let Some(id) = known_id.filter(|id| check_id(id).is_ok())
            && let Some(found) = self.get(id).await?
            && plan::is_ours(&found, xref)
        {
            return Ok(Some(found));
        }
        self.find_by_xref(xref).await
    }

    pub async fn sync(&self, request: &SyncRequest<'_>) -> Result<SyncOutcome, BrokerError> {
        let secret = request.azure.secret;
        self.sync_inner(request).await.map_err(|e| e.scrubbed(secret))
    }

    async fn sync_inner(&self, request: &SyncRequest<'_>) -> Result<SyncOutcome, BrokerError> {
        let unified =
            request.spec.unified.as_ref().ok_or_else(|| BrokerError::Unsupported("the connection has no unified block".into()))?;
        let desired = plan::desired(request.spec, unified, &request.azure)?;
        let Some(observed) = self.find(&desired.external_xref, request.known_id).await? else {
            if request.observe_only {
                return Ok(SyncOutcome { id: None, differences: vec!["connection (missing)".into()], wrote: false, scim: None });
            }
            let answer = self.call(Method::POST, "/unified/connection", Some(&plan::create_body(&desired))).await?;
            let created: Value = answer.body.json().map_err(|_| BrokerError::Unexpected("created connection is not valid JSON".into()))?;
            let id = connection_id(&created)?;
            return Ok(SyncOutcome { id: Some(id), differences: vec!["connection (created)".into()], wrote: true, scim: None });
        };
        let id = connection_id(&observed)?;
        let differences = plan::diff(&desired, &observed, request.synced_fingerprint, request.azure.fingerprint);
        let mut wrote = false;
        if !differences.is_empty() && !request.observe_only {
            self.call(Method::PUT, &format!("/unified/connection/{id}"), Some(&plan::update_body(&desired, &observed))).await?;
            wrote = true;
        }
        Ok(SyncOutcome { id: Some(id), differences, wrote, scim: None })
    }

    /// Deletes the connection; one that is gone, or never was ours, counts as deleted.
    pub async fn delete(&self, spec: &AzureAdConnectionSpec, known_id: Option<&str>) -> Result<(), BrokerError> {
        if spec.unified.is_none() {
            return Ok(());
        }
        let Some(found) = self.find(&plan::external_xref(spec), known_id).await? else { return Ok(()) };
        let id = connection_id(&found)?;
        match self.call(Method::DELETE, &format!("/unified/connection/{id}"), None).await {
            Ok(_) | Err(BrokerError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
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
