//! Entra ID: OIDC discovery resolves the tenant, a client-credentials token request proves the
//! secret. Results are cached per (cloud, tenant, client, secret fingerprint, mode) for the
//! connection's refresh interval, so a steady state asks Azure at most once per interval.

pub mod cloud;
pub mod error;
pub mod graph;
pub mod passwords;
pub mod registration;
pub mod throttle;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use reqwest::{Method, StatusCode};
use serde::Deserialize;

pub use self::{
    error::AzureError,
    graph::{GraphError, SecretExpiry},
    registration::{Registration, RegistrationError},
    throttle::{Throttle, ThrottleKey},
};
use crate::{
    cache::TtlCache,
    crd::connection::{AzureCloud, ValidationMode, is_dns_name, is_guid},
    secret::{SecretValue, safe_message},
    upstream::{Answer, Upstream, retry_after},
};

/// The fields of the application object the operator reads: its password credentials (for the
/// expiry) and what the registration check compares.
const APPLICATION_SELECT: &str = "id,appId,signInAudience,web,requiredResourceAccess,passwordCredentials";

/// What to validate.
#[derive(Debug, Clone)]
pub struct ValidationRequest<'a> {
    pub cloud: AzureCloud,
    pub tenant: &'a str,
    pub client_id: &'a str,
    pub secret: &'a SecretValue,
    /// Keyed fingerprint of `secret`: the cache key never holds the value.
    pub fingerprint: &'a str,
    pub mode: ValidationMode,
    /// How long a success is trusted.
    pub ttl: Duration,
}

/// A successful validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validation {
    /// The tenant GUID, when known (always, unless mode is None and the tenant is a domain).
    pub tenant_id: Option<String>,
    /// When Azure last confirmed it.
    pub validated_at: jiff::Timestamp,
    /// Until when the client serves it from its cache (`validated_at` plus the request's `ttl`):
    /// the next real look at Azure can come no sooner, so the refresh is scheduled from here.
    /// None when nothing is cached (`validation.mode: None` asks nobody).
    pub trusted_until: Option<jiff::Timestamp>,
}

impl Validation {
    /// How long from `now` the client keeps serving it from its cache; None when nothing is cached.
    pub fn trusted_for(&self, now: jiff::Timestamp) -> Option<Duration> {
        let left = self.trusted_until?.as_millisecond().saturating_sub(now.as_millisecond()).max(0);
        Some(Duration::from_millis(left as u64))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct CacheKey {
    cloud: AzureCloud,
    tenant: String,
    client_id: String,
    fingerprint: String,
    mode: ValidationMode,
}

impl ThrottleKey {
    fn of(request: &ValidationRequest<'_>) -> Self {
        ThrottleKey::new(request.cloud, request.tenant, request.client_id)
    }
}

impl CacheKey {
    fn of(request: &ValidationRequest<'_>) -> Self {
        Self {
            cloud: request.cloud,
            tenant: request.tenant.to_ascii_lowercase(),
            client_id: request.client_id.to_ascii_lowercase(),
            fingerprint: request.fingerprint.to_owned(),
            mode: request.mode,
        }
    }
}

/// The Azure client: one per operator, shared by every reconcile.
pub struct AzureClient {
    /// For the login host (label `azure`).
    upstream: Upstream,
    /// For Microsoft Graph (label `graph`).
    graph: Upstream,
    /// Successful validations, trusted for the request's `ttl`.
    validations: TtlCache<CacheKey, Validation>,
    /// App-only Graph tokens obtained while validating, reused for expiry lookups until they expire.
    tokens: TtlCache<CacheKey, AccessToken>,
    /// Expiry lookups, trusted as long as validations.
    expiries: TtlCache<CacheKey, SecretExpiry>,
    /// App registrations read, trusted as long as validations.
    registrations: TtlCache<CacheKey, Registration>,
    /// The application object as Graph returned it ([`APPLICATION_SELECT`]), trusted as long as
    /// validations: the expiry lookup and the registration check read it once between them.
    applications: TtlCache<CacheKey, Arc<registration::ApplicationBody>>,
    /// Microsoft Graph's own service principal per (cloud, tenant GUID): the same for every app.
    graph_scopes: TtlCache<(AzureCloud, String), registration::GraphScopes>,
    /// Retry-After of the login service (discovery and token requests), per app.
    login_throttle: Throttle,
    /// Retry-After of Microsoft Graph, per app.
    graph_throttle: Throttle,
}

#[derive(Deserialize)]
struct DiscoveryDocument {
    issuer: String,
    token_endpoint: String,
}

#[derive(Deserialize)]
struct AadstsBody {
    error: String,
    #[serde(default)]
    error_description: String,
    #[serde(default)]
    error_codes: Vec<u32>,
}

impl AzureClient {
    pub fn new(upstream: Upstream) -> Self {
        Self {
            graph: upstream.with_label("graph"),
            upstream: upstream.with_label("azure"),
            validations: TtlCache::new(),
            tokens: TtlCache::new(),
            expiries: TtlCache::new(),
            registrations: TtlCache::new(),
            applications: TtlCache::new(),
            graph_scopes: TtlCache::new(),
            login_throttle: Throttle::default(),
            graph_throttle: Throttle::default(),
        }
    }

    /// Validates per `request.mode`, from cache when a success is still fresh. While Azure's
    /// Retry-After for the app lasts, nothing is sent: the answer is `Throttled` with the time left.
    pub async fn validate(&self, request: &ValidationRequest<'_>) -> Result<Validation, AzureError> {
        let key = CacheKey::of(request);
        if let Some(hit) = self.validations.get(&key) {
            return Ok(hit);
        }
        if request.mode == ValidationMode::None {
            return Ok(Validation {
                tenant_id: is_guid(request.tenant).then(|| request.tenant.to_ascii_lowercase()),
                validated_at: jiff::Timestamp::now(),
                trusted_until: None,
            });
        }
        let throttle_key = ThrottleKey::of(request);
        if let Some(left) = self.login_throttle.remaining(&throttle_key) {
            return Err(AzureError::Throttled { retry_after: Some(left) });
        }
        let tenant_id = self.ask_login(request, &key).await.inspect_err(|e| self.note_login_throttle(&throttle_key, e))?;
        let validated_at = jiff::Timestamp::now();
        let trusted_until =
            validated_at.checked_add(jiff::SignedDuration::try_from(request.ttl).unwrap_or(jiff::SignedDuration::ZERO)).ok();
        let validation = Validation { tenant_id: Some(tenant_id), validated_at, trusted_until };
        self.validations.insert(key.clone(), validation.clone(), Instant::now() + request.ttl);
        // A fresh validation comes with a fresh expiry lookup: an older cached one would outlive
        // this validation and delay the next real Graph read by up to a whole interval.
        self.expiries.remove(&key);
        self.registrations.remove(&key);
        self.applications.remove(&key);
        Ok(validation)
    }

    /// Discovery, then (for ClientCredentials) the token request; the tenant GUID on success.
    async fn ask_login(&self, request: &ValidationRequest<'_>, key: &CacheKey) -> Result<String, AzureError> {
        let tenant_id = self.discover(request.cloud, request.tenant).await?;
        if request.mode == ValidationMode::ClientCredentials {
            let token = self.request_token(request.cloud, &tenant_id, request.client_id, request.secret).await?;
            let expires_at = token.expires_at;
            self.tokens.insert(key.clone(), token, expires_at);
        }
        Ok(tenant_id)
    }

    /// Remembers the login service's Retry-After, if `error` carries one.
    fn note_login_throttle(&self, key: &ThrottleKey, error: &AzureError) {
        if let Some(wait) = error.retry_after() {
            self.login_throttle.block(key.clone(), wait);
        }
    }

    /// When the held secret expires, from the application's credentials in Microsoft Graph.
    /// Needs a successful ClientCredentials validation of the same request first (its token);
    /// results are cached for `request.ttl`. While Graph's (or, for a new token, the login
    /// service's) Retry-After for the app lasts, nothing is sent.
    pub async fn secret_expiry(&self, request: &ValidationRequest<'_>, tenant_id: &str) -> Result<SecretExpiry, GraphError> {
        let key = CacheKey::of(request);
        if let Some(hit) = self.expiries.get(&key) {
            return Ok(hit);
        }
        let throttle_key = ThrottleKey::of(request);
        if let Some(left) = self.graph_throttle.remaining(&throttle_key) {
            return Err(GraphError::Throttled { retry_after: Some(left) });
        }
        let token = self.graph_token(request, tenant_id, &key, &throttle_key).await?;
        let hosts = cloud::hosts(request.cloud);
        if !is_guid(request.client_id) {
            return Err(GraphError::ApplicationNotFound);
        }
        let invalid = |status: u16| GraphError::Unexpected { status, message: "application is not valid JSON".into() };
        if let Some(app) = self.applications.get(&key) {
            let expiry = graph::match_secret(&app.password_credentials, request.secret)?;
            self.expiries.insert(key, expiry.clone(), Instant::now() + request.ttl);
            return Ok(expiry);
        }
        let path = format!("/v1.0/applications(appId='{}')?$select={APPLICATION_SELECT}", request.client_id);
        let answer = self.graph.send(self.graph.request(Method::GET, hosts.graph, &path).bearer_auth(token.value.expose())).await?;
        let app = match answer.status {
            s if s.is_success() => {
                let app: Arc<registration::ApplicationBody> = Arc::new(answer.body.json().map_err(|_| invalid(s.as_u16()))?);
                self.applications.insert(key.clone(), app.clone(), Instant::now() + request.ttl);
                app
            }
            StatusCode::FORBIDDEN => return Err(GraphError::PermissionMissing),
            StatusCode::NOT_FOUND => return Err(GraphError::ApplicationNotFound),
            StatusCode::TOO_MANY_REQUESTS => {
                let retry_after = retry_after(&answer.headers, jiff::Timestamp::now());
                if let Some(wait) = retry_after {
                    self.graph_throttle.block(throttle_key, wait);
                }
                return Err(GraphError::Throttled { retry_after });
            }
            s => {
                if s == StatusCode::UNAUTHORIZED {
                    self.tokens.remove(&key);
                }
                return Err(GraphError::Unexpected { status: s.as_u16(), message: answer.body.safe_message(&[request.secret]) });
            }
        };
        let expiry = graph::match_secret(&app.password_credentials, request.secret)?;
        self.expiries.insert(key, expiry.clone(), Instant::now() + request.ttl);
        Ok(expiry)
    }

    /// The validation's Graph token, or a new one (honouring the login service's Retry-After).
    async fn graph_token(
        &self,
        request: &ValidationRequest<'_>,
        tenant_id: &str,
        key: &CacheKey,
        throttle_key: &ThrottleKey,
    ) -> Result<AccessToken, GraphError> {
        // A token with less than a minute left could expire in flight.
        if let Some(token) = self.tokens.get_valid_for(key, Duration::from_secs(60)) {
            return Ok(token);
        }
        if let Some(left) = self.login_throttle.remaining(throttle_key) {
            return Err(GraphError::Throttled { retry_after: Some(left) });
        }
        let token = match self.request_token(request.cloud, tenant_id, request.client_id, request.secret).await {
            Ok(token) => token,
            Err(error) => {
                self.note_login_throttle(throttle_key, &error);
                return Err(match error {
                    AzureError::Throttled { retry_after } => GraphError::Throttled { retry_after },
                    other => GraphError::Token(other.to_string()),
                });
            }
        };
        self.tokens.insert(key.clone(), token.clone(), token.expires_at);
        Ok(token)
    }

    /// Resolves a tenant (GUID or domain) to its GUID through OIDC discovery.
    pub async fn discover(&self, cloud: AzureCloud, tenant: &str) -> Result<String, AzureError> {
        check_tenant_syntax(tenant)?;
        let hosts = cloud::hosts(cloud);
        let request = self.upstream.request(Method::GET, hosts.login, &format!("/{tenant}/v2.0/.well-known/openid-configuration"));
        let answer = self.upstream.send(request).await?;
        if !answer.status.is_success() {
            return Err(classify(&answer, None));
        }
        let doc: DiscoveryDocument = answer.body.json().map_err(|_| AzureError::Unexpected {
            status: answer.status.as_u16(),
            snippet: "discovery document is not valid JSON".into(),
        })?;
        tenant_from_issuer(&doc, tenant, cloud)
    }

    /// Asks for an app-only Graph token with the secret; success proves the secret.
    pub async fn request_token(
        &self,
        cloud: AzureCloud,
        tenant_id: &str,
        client_id: &str,
        secret: &SecretValue,
    ) -> Result<AccessToken, AzureError> {
        check_tenant_syntax(tenant_id)?;
        let hosts = cloud::hosts(cloud);
        let scope = hosts.graph_scope();
        let form =
            [("grant_type", "client_credentials"), ("client_id", client_id), ("scope", scope.as_str()), ("client_secret", secret.expose())];
        let request = self.upstream.request(Method::POST, hosts.login, &format!("/{tenant_id}/oauth2/v2.0/token")).form(&form);
        let answer = self.upstream.send(request).await?;
        if !answer.status.is_success() {
            return Err(classify(&answer, Some(secret)));
        }
        #[derive(Deserialize)]
        struct TokenBody {
            access_token: String,
            #[serde(default)]
            expires_in: serde_json::Value,
        }
        let body: TokenBody = answer
            .body
            .json()
            .map_err(|_| AzureError::Unexpected { status: answer.status.as_u16(), snippet: "token response is not valid JSON".into() })?;
        // v1-style endpoints send expires_in as a string.
        let expires_in = match &body.expires_in {
            serde_json::Value::Number(n) => n.as_u64(),
            serde_json::Value::String(s) => s.parse().ok(),
            _ => None,
        }
        .unwrap_or(3599)
        // Entra ID tokens live about an hour; never trust an absurd lifetime.
        .min(86_400);
        Ok(AccessToken { value: SecretValue::new(body.access_token), expires_at: Instant::now() + Duration::from_secs(expires_in) })
    }
}

/// An access token; the value is as secret as the client secret.
#[derive(Debug, Clone)]
pub struct AccessToken {
    pub value: SecretValue,
    pub expires_at: Instant,
}

/// Rejects tenant text that could change the request path before anything is sent.
fn check_tenant_syntax(tenant: &str) -> Result<(), AzureError> {
    if is_guid(tenant) || is_dns_name(tenant) {
        return Ok(());
    }
    Err(AzureError::Aadsts {
        code: 900023,
        error: "invalid_request".into(),
        description: format!(
            "Specified tenant identifier '{tenant}' is neither a valid DNS name, nor a valid external domain (checked before calling Azure)."
        ),
    })
}

/// Reads the tenant GUID from the issuer, after checking the issuer is a host of this cloud.
fn tenant_from_issuer(doc: &DiscoveryDocument, tenant: &str, cloud: AzureCloud) -> Result<String, AzureError> {
    let hosts = cloud::hosts(cloud);
    let mismatch = |host: &str| AzureError::IssuerMismatch { tenant: tenant.into(), host: host.into(), cloud: format!("{cloud:?}") };
    let issuer = url::Url::parse(&doc.issuer).map_err(|_| mismatch(&doc.issuer))?;
    let host = issuer.host_str().unwrap_or_default();
    if !hosts.issuer_aliases.contains(&host) {
        return Err(mismatch(host));
    }
    let token_host = url::Url::parse(&doc.token_endpoint).ok().and_then(|u| u.host_str().map(str::to_owned)).unwrap_or_default();
    if !hosts.issuer_aliases.contains(&token_host.as_str()) {
        return Err(mismatch(&token_host));
    }
    let guid = issuer.path_segments().and_then(|mut s| s.next()).unwrap_or_default().to_ascii_lowercase();
    if !is_guid(&guid) {
        return Err(AzureError::Unexpected { status: 200, snippet: format!("discovery for {tenant} returned no tenant ID in its issuer") });
    }
    if is_guid(tenant) && !guid.eq_ignore_ascii_case(tenant) {
        return Err(AzureError::Unexpected { status: 200, snippet: format!("discovery for {tenant} returned issuer of tenant {guid}") });
    }
    Ok(guid)
}

/// Turns a non-success answer into an error; any echo of the secret is scrubbed before the text
/// is bounded (`safe_message`).
fn classify(answer: &Answer, secret: Option<&SecretValue>) -> AzureError {
    if answer.status == StatusCode::TOO_MANY_REQUESTS {
        return AzureError::Throttled { retry_after: retry_after(&answer.headers, jiff::Timestamp::now()) };
    }
    let secrets: Vec<&SecretValue> = secret.into_iter().collect();
    match answer.body.json::<AadstsBody>() {
        Ok(body) => {
            let message = safe_message(&body.error_description, &secrets);
            let (code, description) = match message.strip_prefix("AADSTS").and_then(|rest| rest.split_once(": ")) {
                Some((num, text)) => (num.parse().unwrap_or(0), text.to_owned()),
                None => (body.error_codes.first().copied().unwrap_or(0), message.clone()),
            };
            let code = body.error_codes.first().copied().unwrap_or(code);
            AzureError::Aadsts { code, error: body.error, description }
        }
        Err(_) => AzureError::Unexpected { status: answer.status.as_u16(), snippet: answer.body.safe_message(&secrets) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::conditions::Reason;

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status: StatusCode::from_u16(status).unwrap(),
            headers: Default::default(),
            body: crate::upstream::bytes_body::Body(body.as_bytes().to_vec()),
        }
    }

    fn aadsts(code: u32, error: &str, text: &str) -> String {
        serde_json::json!({
            "error": error,
            "error_description": format!("AADSTS{code}: {text}\r\nTrace ID: 1\r\nCorrelation ID: 2\r\nTimestamp: 2026-01-01 00:00:00Z"),
            "error_codes": [code],
        })
        .to_string()
    }

    #[test]
    fn classifies_documented_codes() {
        let cases = [
            (401, 7000215, "invalid_client", Reason::InvalidSecret),
            (401, 7000222, "invalid_client", Reason::SecretExpired),
            (400, 700016, "unauthorized_client", Reason::ApplicationNotFound),
            (400, 90002, "invalid_tenant", Reason::TenantNotFound),
            (400, 900023, "invalid_request", Reason::TenantInvalid),
            (400, 7000112, "unauthorized_client", Reason::ApplicationDisabled),
            (400, 90038, "invalid_request", Reason::WrongCloud),
            (400, 1234567, "invalid_client", Reason::InvalidSecret),
            (400, 1234567, "something_new", Reason::AzureError),
        ];
        for (status, code, error, reason) in cases {
            let err = classify(&answer(status, &aadsts(code, error, "text")), None);
            assert_eq!(err.reason(), reason, "{code}");
            assert!(!err.to_string().contains("Trace ID"), "trace ids are dropped");
        }
    }

    #[test]
    fn throttling_and_server_errors_are_transient() {
        let mut a = answer(429, "Too Many Requests");
        a.headers.insert("retry-after", "60".parse().unwrap());
        let err = classify(&a, None);
        assert_eq!(err.reason(), Reason::AzureThrottled);
        assert_eq!(err.retry_after(), Some(Duration::from_secs(60)));
        assert!(err.is_transient());
        let err = classify(&answer(503, "<html>down</html>"), None);
        assert_eq!(err.reason(), Reason::AzureUnreachable);
        assert!(err.is_transient());
        assert!(!classify(&answer(401, &aadsts(7000215, "invalid_client", "x")), None).is_transient());
    }

    #[test]
    fn echoed_secret_is_scrubbed() {
        let secret = SecretValue::new("canary-Q~value");
        let err = classify(&answer(401, &aadsts(7000215, "invalid_client", "bad secret canary-Q~value")), Some(&secret));
        assert!(!err.to_string().contains("canary-Q~value"));
        assert!(!err.advice().contains("canary-Q~value"));
    }

    #[test]
    fn tenant_syntax_is_checked_locally() {
        assert!(check_tenant_syntax("contoso.onmicrosoft.com").is_ok());
        assert!(check_tenant_syntax("72f988bf-86f1-41af-91ab-2d7cd011db47").is_ok());
        for bad in ["common", "a/b", "../x", "t?x=1", "72f988bf-86f1-41af-91ab-2d7cd011db4"] {
            assert_eq!(check_tenant_syntax(bad).unwrap_err().reason(), Reason::TenantInvalid, "{bad}");
        }
    }

    #[test]
    fn issuer_must_belong_to_the_cloud() {
        let guid = "72f988bf-86f1-41af-91ab-2d7cd011db47";
        let doc = |host: &str| DiscoveryDocument {
            issuer: format!("https://{host}/{guid}/v2.0"),
            token_endpoint: format!("https://{host}/{guid}/oauth2/v2.0/token"),
        };
        assert_eq!(tenant_from_issuer(&doc("login.microsoftonline.com"), "contoso.com", AzureCloud::AzurePublic).unwrap(), guid);
        assert_eq!(
            tenant_from_issuer(&doc("evil.example"), "contoso.com", AzureCloud::AzurePublic).unwrap_err().reason(),
            Reason::WrongCloud
        );
        assert_eq!(
            tenant_from_issuer(&doc("login.microsoftonline.com"), "contoso.com", AzureCloud::AzureChina).unwrap_err().reason(),
            Reason::WrongCloud
        );
        let template = DiscoveryDocument {
            issuer: "https://login.microsoftonline.com/{tenantid}/v2.0".into(),
            token_endpoint: "https://login.microsoftonline.com/common/oauth2/v2.0/token".into(),
        };
        assert!(tenant_from_issuer(&template, "organizations.example", AzureCloud::AzurePublic).is_err());
    }
}
