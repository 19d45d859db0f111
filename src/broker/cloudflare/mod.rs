//! Cloudflare Zero Trust Access identity providers (`type: azureAD`).
//!
//! `https://api.cloudflare.com/client/v4/{accounts/{account_id}|zones/{zone_id}}/access/identity_providers`
//! with a static API token. Every answer is wrapped in Cloudflare's envelope
//! (`{success, errors, messages, result, result_info}`). Providers are found by recorded id, else
//! by listing (there is no lookup by name) and matching name and type (a provider found by name
//! is taken only under the ownership rules, [`super::ownership`]); written with a complete
//! PUT (full replace, `client_secret` always included since reads never return it); deleted by
//! id. The planning is pure, in [`plan`].

pub mod plan;

use std::time::Duration;

use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;

use super::{
    Broker, BrokerError, BrokerExtras, DeleteRequest, ScimCredentials, SyncOutcome, SyncRequest,
    budget::Rate,
    core::{Auth, Dialect, ErrorBody, Found, Limits, ManagementApi, Meaning, Session},
    ownership::{Claim, Ownership},
};
use crate::{
    crd::{broker::CloudflareBrokerSpec, connection::CloudflareConnectionSpec},
    secret::SecretValue,
    upstream::{Answer, Upstream},
};

/// The API host; tests and proxies redirect it through the operator-level endpoint overrides.
pub const HOST: &str = "api.cloudflare.com";

/// The request budget when the broker sets no `rateLimit`: 3 requests/s sustained, bursts of 240.
///
/// Cloudflare allows 1,200 requests per 5 minutes per user or token (counted together with the
/// dashboard), and a request above that blocks the token for 5 minutes. A token bucket with rate
/// `r` and burst `b` lets at most `b + r·T` requests through in any window of length `T`, so this
/// budget sends at most 240 + 3·300 = 1,140 in any 5 minutes: under the limit with 60 to spare for
/// network jitter and for people using the dashboard. A configured `rateLimit` replaces it.
pub const DEFAULT_RATE: (u32, u32) = (3, 240);

/// Cloudflare's rate-limit window, and the block a 429 starts when it sends no `Retry-After`.
pub const RATE_WINDOW: Duration = Duration::from_secs(300);

/// A 429 blocks the token for 5 minutes; without `Retry-After` assume the whole block.
const DIALECT: Dialect = Dialect { name: "Cloudflare", default_retry: RATE_WINDOW, limits: Limits::PerCredential, read_error };

/// The page size used to list providers (the largest Cloudflare accepts).
const PER_PAGE: usize = 50;
/// A bound on listing, so a broken `result_info` cannot loop forever (10,000 providers).
const MAX_PAGES: usize = 200;

/// Cloudflare error codes meaning the credentials were refused, whatever the HTTP status.
const AUTH_CODES: &[i64] = &[
    9103,  // Unknown X-Auth-Key or X-Auth-Email
    9106,  // Missing X-Auth-Key / X-Auth-Email / Authorization headers
    9109,  // Invalid access token
    10000, // Authentication error
    10001, // Unable to authenticate request
];

#[derive(Debug)]
pub struct CloudflareClient {
    pub(super) api: ManagementApi,
    /// "account 0123…" or "zone 0123…", for messages.
    scope: String,
    /// The Access team domain, read once per client (a broker spec change builds a new one).
    team_domain: tokio::sync::OnceCell<String>,
}

/// Below the account's or zone's `/access`: the identity providers.
const PROVIDERS: &str = "/identity_providers";

/// Cloudflare's response envelope.
#[derive(Deserialize, Default)]
struct Envelope {
    #[serde(default)]
    success: Option<bool>,
    #[serde(default)]
    errors: Vec<ApiMessage>,
    #[serde(default)]
    result: Value,
    #[serde(default)]
    result_info: Option<ResultInfo>,
}

#[derive(Deserialize, Default)]
struct ApiMessage {
    #[serde(default)]
    code: Option<i64>,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize, Default)]
struct ResultInfo {
    #[serde(default)]
    per_page: Option<u64>,
    #[serde(default)]
    total_count: Option<u64>,
    #[serde(default)]
    total_pages: Option<u64>,
}

/// The envelope's errors, else the body, else the status's reason; an auth error code means the
/// token was refused whatever the status.
fn read_error(answer: &Answer) -> ErrorBody {
    let envelope: Envelope = answer.body.json().unwrap_or_default();
    let message = if envelope.errors.is_empty() {
        let text = answer.body.text();
        if text.trim().is_empty() { answer.status.canonical_reason().unwrap_or("no message").to_owned() } else { text.into_owned() }
    } else {
        messages(&envelope)
    };
    let auth_code = envelope.errors.iter().any(|e| e.code.is_some_and(|c| AUTH_CODES.contains(&c)));
    ErrorBody { message, code: None, meaning: auth_code.then_some(Meaning::Credentials) }
}

impl CloudflareClient {
    pub fn new(upstream: Upstream, spec: &CloudflareBrokerSpec, token: SecretValue, rate: Option<(u32, u32)>) -> Self {
        let (base, scope) = match (&spec.account_id, &spec.zone_id) {
            (Some(id), None) if is_cloudflare_id(id) => (Ok(format!("/client/v4/accounts/{id}/access")), format!("account {id}")),
            (None, Some(id)) if is_cloudflare_id(id) => (Ok(format!("/client/v4/zones/{id}/access")), format!("zone {id}")),
            (Some(_), Some(_)) | (None, None) => {
                (Err("the Cloudflare broker must set exactly one of accountId and zoneId".to_owned()), "no account".to_owned())
            }
            _ => (Err("the Cloudflare broker's accountId or zoneId is not 32 hexadecimal characters".to_owned()), "no account".to_owned()),
        };
        let rate = Some(Rate::from(rate.unwrap_or(DEFAULT_RATE)));
        let api = ManagementApi::new(upstream, Ok(HOST.to_owned()), base, Auth::Token(token), rate, DIALECT);
        Self { api, scope, team_domain: tokio::sync::OnceCell::new() }
    }

    /// A 404 on the collection means the account or zone is unknown (or hidden from the token).
    fn scope_not_found(&self, error: BrokerError) -> BrokerError {
        match error {
            BrokerError::NotFound => BrokerError::Rejected(format!(
                "Cloudflare does not know {} (or the API token cannot see it); check the broker's accountId or zoneId",
                self.scope
            )),
            other => other,
        }
    }

    /// Lists the providers page by page until an azureAD one of this name turns up; otherwise
    /// reports a same-named provider of another type, or none.
    async fn find_by_name(&self, api: &Session<'_>, name: &str) -> Result<Found, BrokerError> {
        let mut foreign = None;
        for page in 1..=MAX_PAGES {
            let envelope =
                call(api, Method::GET, &format!("?page={page}&per_page={PER_PAGE}"), None).await.map_err(|e| self.scope_not_found(e))?;
            let Value::Array(providers) = envelope.result else {
                return Err(BrokerError::Unexpected("the identity provider list is not an array".into()));
            };
            let count = providers.len();
            for provider in providers {
                if provider.get("name").and_then(Value::as_str) != Some(name) {
                    continue;
                }
                if plan::is_ours(&provider, name) {
                    return Ok(Found::Ours(provider));
                }
                foreign.get_or_insert_with(|| provider.get("type").and_then(Value::as_str).unwrap_or("unknown").to_owned());
            }
            // Cloudflare may use a smaller page than asked for; its result_info says which.
            let info = envelope.result_info.unwrap_or_default();
            let per_page = info.per_page.filter(|p| *p > 0).unwrap_or(PER_PAGE as u64);
            let last = count == 0
                || (count as u64) < per_page
                || info.total_count.is_some_and(|total| page as u64 * per_page >= total)
                || info.total_pages.is_some_and(|pages| page as u64 >= pages);
            if last {
                break;
            }
        }
        Ok(foreign.map_or(Found::Missing, |kind| Found::Foreign { kind }))
    }

    /// The provider this spec manages: by the id its claim records, by the id its status
    /// records, else by name and type. The claim's id keeps naming the provider whatever its
    /// name, so a renamed `cloudflare.name` updates that provider in place (Access applications
    /// reference it by id). The status's id is trusted only while it names an azureAD provider of
    /// this name, so a stale status never points the operator at someone else's provider. One
    /// found by name is judged by the ownership rules in the sync.
    async fn find(&self, api: &Session<'_>, name: &str, claimed: Option<&str>, known_id: Option<&str>) -> Result<Found, BrokerError> {
        let recorded = [(claimed, None), (known_id.filter(|known| Some(*known) != claimed), Some(name))];
        for (id, named) in recorded {
            let Some(id) = id.filter(|id| check_id(id).is_ok()) else { continue };
            if let Some(found) = get(api, id).await?
                && plan::is_azure_ad(&found)
                && named.is_none_or(|name| plan::is_ours(&found, name))
            {
                return Ok(Found::Ours(found));
            }
        }
        self.find_by_name(api, name).await
    }

    /// The id the claim records, if any.
    fn claimed<'a>(ownership: &Ownership<'a>) -> Option<&'a str> {
        match ownership.claim {
            Some(Claim::Recorded(id)) => Some(id),
            _ => None,
        }
    }

    async fn sync_with(
        &self,
        api: &Session<'_>,
        spec: &CloudflareConnectionSpec,
        request: &SyncRequest<'_>,
    ) -> Result<SyncOutcome, BrokerError> {
        let desired = plan::desired(spec, &request.azure)?;
        let claimed = Self::claimed(&request.ownership);
        let observed = match self.find(api, &desired.name, claimed, request.known_id).await? {
            Found::Ours(provider) => provider,
            Found::Missing if request.observe_only => return Ok(SyncOutcome::missing("connection")),
            Found::Missing if !request.ownership.may_create() => return Ok(SyncOutcome::create_deferred("connection")),
            Found::Missing => {
                let created = call(api, Method::POST, "", Some(&plan::create_body(&desired))).await?.result;
                let outcome = SyncOutcome::created("connection", provider_id(&created)?);
                return Ok(with_scim(outcome, &desired, &created));
            }
            Found::Foreign { kind } => {
                return Err(BrokerError::Rejected(format!(
                    "Cloudflare already has an identity provider named {} of type {kind}, not azureAD",
                    desired.name
                )));
            }
        };
        let id = provider_id(&observed)?;
        request.ownership.judge_claimed(&id, request.known_id)?;
        let differences = plan::diff(&desired, &observed, request.synced_fingerprint_of(&id), request.azure.fingerprint);
        if differences.is_empty() || request.observe_only {
            return Ok(SyncOutcome::existing(id, differences, false));
        }
        refuse_read_only(&observed, &desired.name, "updated")?;
        let written = call(api, Method::PUT, &format!("/{id}"), Some(&plan::update_body(&desired, &observed))).await?.result;
        Ok(with_scim(SyncOutcome::existing(id, differences, true), &desired, &written))
    }

    /// The claim key of the provider `spec` names: the account or zone and the name.
    pub(super) fn claim_key(&self, spec: &CloudflareConnectionSpec) -> String {
        ["cloudflare", &self.scope, &spec.name].join("\0")
    }
}

impl CloudflareClient {
    /// Regenerates the SCIM secret of provider `id` (the dashboard's "Regenerate Secret"): the
    /// only way to learn a SCIM token again once the one Cloudflare showed when SCIM was enabled
    /// is lost (never stored, or a provider adopted with SCIM already on). The previous token
    /// stops working.
    pub async fn refresh_scim_secret(&self, id: &str) -> Result<ScimCredentials, BrokerError> {
        let api = self.api.session(None);
        let refreshed = async {
            check_id(id)?;
            let answer = call(&api, Method::POST, &format!("/{id}/refresh_scim_secret"), None).await?;
            plan::shown_scim_credentials(&answer.result)
                .ok_or_else(|| BrokerError::Unexpected("the SCIM secret refresh answered without a SCIM secret and base URL".into()))
        };
        refreshed.await.map_err(|e| api.scrubbed(e))
    }
}

impl Broker for CloudflareClient {
    type Target = CloudflareConnectionSpec;

    async fn sync(&self, spec: &CloudflareConnectionSpec, request: &SyncRequest<'_>) -> Result<SyncOutcome, BrokerError> {
        let api = self.api.session(Some(request.azure.secret));
        self.sync_with(&api, spec, request).await.map_err(|e| api.scrubbed(e))
    }

    /// Deletes the provider; one that is already gone counts as deleted. A provider of the same
    /// name but another type is not ours and is left alone; an azureAD one this connection does
    /// not own is refused ([`BrokerError::Conflict`]).
    async fn delete(&self, spec: &CloudflareConnectionSpec, request: &DeleteRequest<'_>) -> Result<(), BrokerError> {
        let api = self.api.session(None);
        let claimed = Self::claimed(&request.ownership);
        let provider = match self.find(&api, &spec.name, claimed, request.known_id).await.map_err(|e| api.scrubbed(e))? {
            Found::Ours(provider) => provider,
            Found::Missing | Found::Foreign { .. } => return Ok(()),
        };
        let id = provider_id(&provider)?;
        request.ownership.judge_claimed(&id, request.known_id)?;
        refuse_read_only(&provider, &spec.name, "deleted")?;
        api.delete(&format!("{PROVIDERS}/{id}")).await
    }

    /// Proves the token with the cheapest read: one provider of the list.
    async fn check(&self) -> Result<(), BrokerError> {
        let api = self.api.session(None);
        call(&api, Method::GET, "?per_page=1", None).await.map(drop).map_err(|e| self.scope_not_found(e))
    }
}

impl CloudflareClient {
    /// The Access team domain (`<team>.cloudflareaccess.com`) from the account's (or zone's)
    /// Zero Trust organization: the host of the callback Entra ID must know. Read once per
    /// client. Anything but a `cloudflareaccess.com` team domain is refused, so an answer can
    /// never make `azure.registration: Manage` register a redirect URI on another host.
    pub async fn team_domain(&self) -> Result<String, BrokerError> {
        let read = || async {
            let api = self.api.session(None);
            let organization = envelope(&api, &api.call(Method::GET, "/organizations", None).await?)?.result;
            let domain = organization.get("auth_domain").and_then(Value::as_str).unwrap_or_default().to_ascii_lowercase();
            plan::team_domain(&domain)
                .map(str::to_owned)
                .ok_or_else(|| BrokerError::Unexpected("the Zero Trust organization has no <team>.cloudflareaccess.com auth_domain".into()))
        };
        self.team_domain.get_or_try_init(read).await.cloned().map_err(|e| match e {
            BrokerError::NotFound => BrokerError::Rejected(format!("{} has no Zero Trust organization (Access team)", self.scope)),
            other => other,
        })
    }
}

/// One identity provider API call (`suffix` below the collection), unwrapped from Cloudflare's
/// envelope.
async fn call(api: &Session<'_>, method: Method, suffix: &str, body: Option<&Value>) -> Result<Envelope, BrokerError> {
    envelope(api, &api.call(method, &format!("{PROVIDERS}{suffix}"), body).await?)
}

/// A successful answer's envelope; `success: false` on a 2xx is an error too.
fn envelope(api: &Session<'_>, answer: &Answer) -> Result<Envelope, BrokerError> {
    let envelope: Envelope = answer
        .body
        .json()
        .map_err(|_| BrokerError::Unexpected(format!("HTTP {} without a Cloudflare response envelope", answer.status)))?;
    if envelope.success == Some(false) {
        let messages = api.safe_message(&messages(&envelope));
        return Err(BrokerError::Unexpected(format!("success: false with HTTP {}: {messages}", answer.status)));
    }
    Ok(envelope)
}

async fn get(api: &Session<'_>, id: &str) -> Result<Option<Value>, BrokerError> {
    check_id(id)?;
    let Some(answer) = api.get(&format!("{PROVIDERS}/{id}")).await? else { return Ok(None) };
    Ok(Some(envelope(api, &answer)?.result).filter(Value::is_object))
}

/// The outcome, with the SCIM credentials a write returned when SCIM is wanted.
fn with_scim(outcome: SyncOutcome, desired: &plan::DesiredProvider, written: &Value) -> SyncOutcome {
    SyncOutcome { extras: plan::scim_credentials(desired, written).map(BrokerExtras::CloudflareScim), ..outcome }
}

/// The errors' messages with their codes, for error text.
fn messages(envelope: &Envelope) -> String {
    let parts: Vec<String> = envelope
        .errors
        .iter()
        .map(|e| match e.code {
            Some(code) => format!("{} (code {code})", e.message),
            None => e.message.clone(),
        })
        .collect();
    if parts.is_empty() { "no error message".to_owned() } else { parts.join("; ") }
}

/// A `read_only` provider refuses API changes; say so instead of sending a doomed request.
fn refuse_read_only(provider: &Value, name: &str, verb: &str) -> Result<(), BrokerError> {
    if provider.get("read_only").and_then(Value::as_bool) == Some(true) {
        return Err(BrokerError::Rejected(format!(
            "the identity provider {name} is read_only in Cloudflare and cannot be {verb} through the API; turn read_only off first"
        )));
    }
    Ok(())
}

fn provider_id(provider: &Value) -> Result<String, BrokerError> {
    let id = provider.get("id").and_then(Value::as_str).ok_or_else(|| BrokerError::Unexpected("identity provider without id".into()))?;
    check_id(id).map_err(|_| BrokerError::Unexpected("Cloudflare returned an identity provider id that is not a UUID".into()))?;
    Ok(id.to_owned())
}

/// Ids come back into URL paths; accept only UUIDs (with or without dashes).
fn check_id(id: &str) -> Result<(), BrokerError> {
    let hex = id.chars().filter(|c| *c != '-').count();
    let shape = match id.len() {
        32 => !id.contains('-'),
        36 => id.char_indices().all(|(i, c)| (c == '-') == matches!(i, 8 | 13 | 18 | 23)),
        _ => false,
    };
    if shape && hex == 32 && id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(BrokerError::Rejected(format!("{id:?} is not a Cloudflare identity provider id")))
    }
}

/// Account and zone ids: 32 hexadecimal characters.
fn is_cloudflare_id(id: &str) -> bool {
    id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::budget::{Rate, RequestBudget};
    use tokio::time::Instant;

    #[test]
    fn ids_are_checked_before_they_reach_a_path() {
        assert!(check_id("f174e90a-fafe-4643-bbbc-4a0ed4fc8415").is_ok());
        assert!(check_id("f174e90afafe4643bbbc4a0ed4fc8415").is_ok());
        for bad in [
            "",
            "../../zones",
            "f174e90a-fafe-4643-bbbc-4a0ed4fc841g",
            "f174e90a-fafe-4643-bbbc4-a0ed4fc8415",
            "con_abc",
            "f174e90a/afe-4643-bbbc-4a0ed4fc8415",
        ] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
        assert!(is_cloudflare_id("023e105f4ecef8ad9ca31a8372d0c353"));
        assert!(!is_cloudflare_id("023e105f4ecef8ad9ca31a8372d0c35/"));
    }

    /// The default budget, driven as fast as it allows for 20 minutes, never sends more than
    /// Cloudflare's 1,200 requests in any 5-minute window.
    #[tokio::test(start_paused = true)]
    async fn default_budget_stays_under_cloudflares_window() {
        let budget = RequestBudget::new(Some(Rate::from(DEFAULT_RATE)));
        let start = Instant::now();
        let mut sent = Vec::new();
        while Instant::now() - start < Duration::from_secs(1200) {
            budget.acquire().await.unwrap();
            sent.push(Instant::now());
        }
        let mut most = 0;
        let mut first = 0;
        for (last, at) in sent.iter().enumerate() {
            while *at - sent[first] >= RATE_WINDOW {
                first += 1;
            }
            most = most.max(last - first + 1);
        }
        assert!(most <= 1200, "{most} requests in one window");
        // And it is not needlessly slow: close to the limit at full load.
        assert!(most >= 1100, "{most}");
        let (rps, burst) = DEFAULT_RATE;
        assert!(u64::from(burst) + u64::from(rps) * RATE_WINDOW.as_secs() <= 1200);
    }
}
