//! Microsoft Graph `addPassword`, `removePassword` and the application's password credentials,
//! for the rotation controller. Each call authenticates with a client-credentials token of the
//! *Graph caller*: the application itself (`self`: its current secret) or a separate rotator
//! application. Both need Application.ReadWrite.OwnedBy and ownership of the registration.
//!
//! `secretText` comes back once, in the addPassword answer, and is handed over as a
//! [`SecretValue`] at once; nothing here keeps it.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::{AccessToken, AzureClient, AzureError, cloud};
use crate::{
    cache::TtlCache,
    crd::{
        conditions::Reason,
        connection::{AzureCloud, is_guid},
    },
    secret::SecretValue,
    upstream::{Answer, TransportError, Upstream, retry_after},
};

/// Who calls Graph, with which secret.
#[derive(Clone, Copy, Debug)]
pub struct GraphCaller<'a> {
    pub cloud: AzureCloud,
    /// GUID or verified domain.
    pub tenant: &'a str,
    pub client_id: &'a str,
    pub secret: &'a SecretValue,
    /// Keyed fingerprint of `secret`, for the token cache key.
    pub fingerprint: &'a str,
}

/// One password credential as Graph lists it (never its value).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Password {
    pub key_id: String,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub hint: Option<String>,
    pub end_date_time: jiff::Timestamp,
}

/// A password just created: its value exists only here and in the answer it came from.
#[derive(Debug, Clone)]
pub struct NewPassword {
    pub key_id: String,
    pub hint: String,
    pub end_date_time: jiff::Timestamp,
    pub secret: SecretValue,
}

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("the Graph caller could not get a token: {}", .0.advice())]
    Token(AzureError),
    #[error(
        "Microsoft Graph denied managing the application's passwords: grant the Graph caller the application permission Application.ReadWrite.OwnedBy (with admin consent) and make its service principal an owner of the application"
    )]
    PermissionMissing,
    #[error("the application was not found in Microsoft Graph")]
    ApplicationNotFound,
    #[error("the tenant's app management policy caps password lifetimes below spec.lifetime: {0}")]
    LifetimeExceedsPolicy(String),
    #[error("the tenant's app management policy forbids adding passwords to this application: {0}")]
    AdditionForbidden(String),
    #[error("the application holds as many passwords as Entra ID allows; remove an unused one: {0}")]
    TooManyPasswords(String),
    #[error("Microsoft Graph is throttling requests")]
    Throttled { retry_after: Option<Duration> },
    #[error("Microsoft Graph is unreachable: {0}")]
    Unreachable(#[from] TransportError),
    #[error("Microsoft Graph answered HTTP {status}: {message}")]
    Unexpected { status: u16, message: String },
}

impl PasswordError {
    pub fn reason(&self) -> Reason {
        match self {
            PasswordError::Token(e) => e.reason(),
            PasswordError::PermissionMissing => Reason::GraphPermissionMissing,
            PasswordError::ApplicationNotFound => Reason::ApplicationNotFound,
            PasswordError::LifetimeExceedsPolicy(_) => Reason::PasswordLifetimePolicy,
            PasswordError::AdditionForbidden(_) => Reason::PasswordAdditionForbidden,
            PasswordError::TooManyPasswords(_) => Reason::PasswordLimitReached,
            PasswordError::Unexpected { status, .. } if *status >= 500 => Reason::GraphUnreachable,
            PasswordError::Throttled { .. } | PasswordError::Unreachable(_) => Reason::GraphUnreachable,
            PasswordError::Unexpected { .. } => Reason::GraphError,
        }
    }

    /// Worth retrying with backoff; the others wait for a change of the resource or of the tenant.
    pub fn is_transient(&self) -> bool {
        match self {
            PasswordError::Token(e) => e.is_transient(),
            _ => self.reason() == Reason::GraphUnreachable,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            PasswordError::Throttled { retry_after } => *retry_after,
            PasswordError::Token(e) => e.retry_after(),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct TokenKey {
    cloud: AzureCloud,
    tenant: String,
    client_id: String,
    fingerprint: String,
}

/// The password API of Microsoft Graph, with one Graph token cached per caller and secret.
pub struct PasswordClient {
    login: AzureClient,
    graph: Upstream,
    tokens: TtlCache<TokenKey, AccessToken>,
}

impl PasswordClient {
    pub fn new(upstream: Upstream) -> Self {
        Self { graph: upstream.with_label("graph"), login: AzureClient::new(upstream), tokens: TtlCache::new() }
    }

    /// Whether Entra ID issues a token for `secret` now: how a new password is proven once it
    /// has replicated. Never cached.
    pub async fn prove(&self, cloud: AzureCloud, tenant: &str, client_id: &str, secret: &SecretValue) -> Result<(), AzureError> {
        self.login.request_token(cloud, tenant, client_id, secret).await.map(|_| ())
    }

    /// The application's password credentials.
    pub async fn list(&self, caller: &GraphCaller<'_>, app_id: &str) -> Result<Vec<Password>, PasswordError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Application {
            #[serde(default)]
            password_credentials: Vec<Password>,
        }
        let answer = self.call(caller, Method::GET, &application_path(app_id, "?$select=id,appId,passwordCredentials")?, None).await?;
        let app: Application = answer.body.json().map_err(|_| unexpected(&answer, "application is not valid JSON"))?;
        Ok(app.password_credentials)
    }

    /// addPassword with `display_name`, valid from now until `end`.
    pub async fn add(
        &self,
        caller: &GraphCaller<'_>,
        app_id: &str,
        display_name: &str,
        end: jiff::Timestamp,
    ) -> Result<NewPassword, PasswordError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Created {
            key_id: String,
            #[serde(default)]
            hint: Option<String>,
            end_date_time: jiff::Timestamp,
            secret_text: Option<String>,
        }
        let body = json!({"passwordCredential": {"displayName": display_name, "endDateTime": end.to_string()}});
        let answer = self.call(caller, Method::POST, &application_path(app_id, "/addPassword")?, Some(body)).await?;
        let created: Created = answer.body.json().map_err(|_| unexpected(&answer, "addPassword answer is not valid JSON"))?;
        let secret =
            created.secret_text.filter(|s| !s.is_empty()).ok_or_else(|| unexpected(&answer, "addPassword returned no secretText"))?;
        let hint = created.hint.unwrap_or_else(|| secret.chars().take(3).collect());
        Ok(NewPassword { key_id: created.key_id, hint, end_date_time: created.end_date_time, secret: SecretValue::new(secret) })
    }

    /// removePassword; a credential that is already gone counts as removed.
    pub async fn remove(&self, caller: &GraphCaller<'_>, app_id: &str, key_id: &str) -> Result<(), PasswordError> {
        let body = json!({"keyId": key_id});
        match self.call(caller, Method::POST, &application_path(app_id, "/removePassword")?, Some(body)).await {
            Ok(_) | Err(PasswordError::ApplicationNotFound) => Ok(()),
            Err(other) => Err(other),
        }
    }

    async fn call(
        &self,
        caller: &GraphCaller<'_>,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<Answer, PasswordError> {
        let token = self.token(caller).await?;
        let mut request = self.graph.request(method, cloud::hosts(caller.cloud).graph, path).bearer_auth(token.value.expose());
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer = self.graph.send(request).await?;
        if answer.status.is_success() {
            return Ok(answer);
        }
        if answer.status == StatusCode::UNAUTHORIZED {
            self.tokens.remove(&token_key(caller));
        }
        Err(classify(&answer, caller.secret))
    }

    async fn token(&self, caller: &GraphCaller<'_>) -> Result<AccessToken, PasswordError> {
        let key = token_key(caller);
        if let Some(token) = self.tokens.get_valid_for(&key, Duration::from_secs(60)) {
            return Ok(token);
        }
        let token =
            self.login.request_token(caller.cloud, caller.tenant, caller.client_id, caller.secret).await.map_err(PasswordError::Token)?;
        self.tokens.insert(key, token.clone(), token.expires_at.max(Instant::now()));
        Ok(token)
    }
}

fn token_key(caller: &GraphCaller<'_>) -> TokenKey {
    TokenKey {
        cloud: caller.cloud,
        tenant: caller.tenant.to_ascii_lowercase(),
        client_id: caller.client_id.to_ascii_lowercase(),
        fingerprint: caller.fingerprint.to_owned(),
    }
}

/// `/v1.0/applications(appId='…')` plus `tail`; the id is checked so it cannot change the path.
fn application_path(app_id: &str, tail: &str) -> Result<String, PasswordError> {
    if !is_guid(app_id) {
        return Err(PasswordError::Unexpected { status: 0, message: "the client ID is not a GUID (checked before calling Graph)".into() });
    }
    Ok(format!("/v1.0/applications(appId='{app_id}'){tail}"))
}

fn unexpected(answer: &Answer, message: &str) -> PasswordError {
    PasswordError::Unexpected { status: answer.status.as_u16(), message: message.into() }
}

/// Graph's error object, classified by status and code.
fn classify(answer: &Answer, secret: &SecretValue) -> PasswordError {
    #[derive(Deserialize, Default)]
    struct Envelope {
        #[serde(default)]
        error: ErrorBody,
    }
    #[derive(Deserialize, Default)]
    struct ErrorBody {
        #[serde(default)]
        code: String,
    }
    let code = answer.body.json::<Envelope>().unwrap_or_default().error.code;
    let message = answer.body.safe_message(&[secret]);
    match answer.status {
        StatusCode::FORBIDDEN => PasswordError::PermissionMissing,
        StatusCode::NOT_FOUND => PasswordError::ApplicationNotFound,
        StatusCode::TOO_MANY_REQUESTS => PasswordError::Throttled { retry_after: retry_after(&answer.headers, jiff::Timestamp::now()) },
        StatusCode::BAD_REQUEST => refused_addition(&code, message),
        status => PasswordError::Unexpected { status: status.as_u16(), message },
    }
}

/// A 400 on addPassword, by Graph's code or, where only the wording of the message is on record,
/// by that: "Not allowed to add 3 passwords. You can only add a maximum of 2 passwords."
/// (`TooManyAppPasswords`) and "Credential lifetime exceeds the max value allowed as per assigned
/// policy <id>" (a tenant or app management policy); any other refusal "as per assigned policy"
/// is a policy that forbids the addition.
fn refused_addition(code: &str, message: String) -> PasswordError {
    let lowered = message.to_ascii_lowercase();
    let says = |text: &str| lowered.contains(text);
    if code == "TooManyAppPasswords" || says("you can only add a maximum of") {
        PasswordError::TooManyPasswords(message)
    } else if code == "CredentialInvalidLifetimeAsPerAppPolicy" || says("credential lifetime exceeds the max value allowed") {
        PasswordError::LifetimeExceedsPolicy(message)
    } else if code.ends_with("NotAllowedAsPerAppPolicy") || says("as per assigned policy") {
        PasswordError::AdditionForbidden(message)
    } else {
        PasswordError::Unexpected { status: StatusCode::BAD_REQUEST.as_u16(), message }
    }
}
