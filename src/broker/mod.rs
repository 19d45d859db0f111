//! Identity brokers behind one narrow interface: make the broker object match the desired state
//! (or report how it differs), delete it, and check the operator's own credentials.
//!
//! Each broker's management API lives in its own module. A [`BrokerRegistry`] keeps one client per
//! broker object and credential, so token caches and request budgets are shared across reconciles.

pub mod auth0;
pub mod budget;
pub mod cloudflare;
pub mod logto;
pub mod unified;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::{
    crd::{
        BrokerProvider,
        conditions::Reason,
        connection::{AzureAdConnectionSpec, AzureCloud, SignInAudience},
    },
    secret::SecretValue,
    upstream::{TransportError, Upstream},
};

/// Broker failures, classified.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("the broker rejected the operator's management credentials: {0}")]
    Auth(String),
    #[error("the broker could not be reached: {0}")]
    Unreachable(#[from] TransportError),
    #[error("the broker answered HTTP {status}: {message}")]
    Server { status: u16, message: String },
    #[error("the broker is rate limiting this account; next attempt in {}s", .retry_after.as_secs())]
    RateLimited { retry_after: Duration },
    #[error("the broker refused the request: {0}")]
    Rejected(String),
    #[error("the broker cannot express this setting: {0}")]
    Unsupported(String),
    #[error("the broker object does not exist")]
    NotFound,
    #[error("the broker already has a conflicting object: {0}")]
    Conflict(String),
    #[error("the broker gave an unexpected answer: {0}")]
    Unexpected(String),
}

impl BrokerError {
    pub fn reason(&self) -> Reason {
        match self {
            BrokerError::Auth(_) => Reason::BrokerAuthFailed,
            BrokerError::Unreachable(_) | BrokerError::Server { .. } | BrokerError::Unexpected(_) => Reason::BrokerUnreachable,
            BrokerError::RateLimited { .. } => Reason::BrokerRateLimited,
            BrokerError::Rejected(_) | BrokerError::NotFound => Reason::BrokerRejected,
            BrokerError::Unsupported(_) => Reason::UnsupportedSetting,
            BrokerError::Conflict(_) => Reason::BrokerConflict,
        }
    }

    /// Transient errors are retried with backoff; permanent ones wait for a change.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            BrokerError::Unreachable(_) | BrokerError::Server { .. } | BrokerError::RateLimited { .. } | BrokerError::Unexpected(_)
        )
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            BrokerError::RateLimited { retry_after } => Some(*retry_after),
            _ => None,
        }
    }
}

/// The validated Azure side of a connection, as every broker needs it.
#[derive(Debug, Clone)]
pub struct AzureCredentials<'a> {
    pub cloud: AzureCloud,
    /// The tenant as written in the spec (GUID or domain).
    pub tenant: &'a str,
    /// The resolved tenant GUID, when known.
    pub tenant_id: Option<&'a str>,
    pub client_id: &'a str,
    pub secret: &'a SecretValue,
    /// Keyed fingerprint of `secret`.
    pub fingerprint: &'a str,
    pub audience: SignInAudience,
}

/// One sync of a connection's broker object.
#[derive(Debug, Clone)]
pub struct SyncRequest<'a> {
    pub spec: &'a AzureAdConnectionSpec,
    pub azure: AzureCredentials<'a>,
    /// The broker id recorded in status, if any.
    pub known_id: Option<&'a str>,
    /// Fingerprint of the secret last pushed, for brokers that never return the secret.
    pub synced_fingerprint: Option<&'a str>,
    /// Report differences without writing.
    pub observe_only: bool,
}

/// What a sync found and did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SyncOutcome {
    /// The broker object's id (None only when observing a missing object).
    pub id: Option<String>,
    /// Names of the fields that differed from the desired state (never their values).
    pub differences: Vec<String>,
    /// Whether the broker was written to.
    pub wrote: bool,
    /// SCIM credentials the broker returned, once, when SCIM was enabled (Cloudflare).
    pub scim: Option<ScimCredentials>,
}

/// A SCIM endpoint and its bearer token, to hand to Entra ID's provisioning settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScimCredentials {
    pub base_url: String,
    pub secret: SecretValue,
}

/// A client for one broker account.
#[derive(Debug)]
pub enum BrokerClient {
    Auth0(auth0::Auth0Client),
    Cloudflare(cloudflare::CloudflareClient),
    Logto(logto::LogtoClient),
    Unified(unified::UnifiedClient),
}

impl BrokerClient {
    /// The client for a broker spec and the operator's credentials for it (`client_id` is empty
    /// for token-based brokers). `rate` is the spec's request budget.
    pub fn build(upstream: &Upstream, provider: &BrokerProvider, client_id: &str, secret: SecretValue, rate: Option<(u32, u32)>) -> Self {
        let upstream = &upstream.with_label(provider.type_name());
        match provider {
            BrokerProvider::Auth0(spec) => {
                BrokerClient::Auth0(auth0::Auth0Client::new(upstream.clone(), &spec.domain, client_id, secret, rate))
            }
            BrokerProvider::Cloudflare(spec) => {
                BrokerClient::Cloudflare(cloudflare::CloudflareClient::new(upstream.clone(), spec, secret, rate))
            }
            BrokerProvider::Logto(spec) => BrokerClient::Logto(logto::LogtoClient::new(upstream.clone(), spec, client_id, secret, rate)),
            BrokerProvider::Unified(spec) => BrokerClient::Unified(unified::UnifiedClient::new(upstream.clone(), spec, secret, rate)),
        }
    }

    pub async fn sync(&self, request: &SyncRequest<'_>) -> Result<SyncOutcome, BrokerError> {
        match self {
            BrokerClient::Auth0(c) => c.sync(request).await,
            BrokerClient::Cloudflare(c) => c.sync(request).await,
            BrokerClient::Logto(c) => c.sync(request).await,
            BrokerClient::Unified(c) => c.sync(request).await,
        }
    }

    /// Deletes the broker object; a missing object counts as deleted.
    pub async fn delete(&self, spec: &AzureAdConnectionSpec, known_id: Option<&str>) -> Result<(), BrokerError> {
        match self {
            BrokerClient::Auth0(c) => c.delete(spec, known_id).await,
            BrokerClient::Cloudflare(c) => c.delete(spec, known_id).await,
            BrokerClient::Logto(c) => c.delete(spec, known_id).await,
            BrokerClient::Unified(c) => c.delete(spec, known_id).await,
        }
    }

    /// Proves the operator's management credentials.
    pub async fn check(&self) -> Result<(), BrokerError> {
        match self {
            BrokerClient::Auth0(c) => c.check().await,
            BrokerClient::Cloudflare(c) => c.check().await,
            BrokerClient::Logto(c) => c.check().await,
            BrokerClient::Unified(c) => c.check().await,
        }
    }
}

/// Identifies a client: a broker object at one generation with one credential.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BrokerKey {
    pub uid: String,
    pub generation: i64,
    pub credentials_fingerprint: String,
}

/// One client per broker key, shared by every reconcile.
#[derive(Debug)]
pub struct BrokerRegistry {
    upstream: Upstream,
    clients: Mutex<HashMap<BrokerKey, Arc<BrokerClient>>>,
}

impl BrokerRegistry {
    pub fn new(upstream: Upstream) -> Self {
        Self { upstream, clients: Mutex::new(HashMap::new()) }
    }

    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// The client for `key`, built by `build` on first use. Clients of older generations or
    /// credentials of the same broker are dropped.
    pub fn get_or_insert(&self, key: BrokerKey, build: impl FnOnce(&Upstream) -> BrokerClient) -> Arc<BrokerClient> {
        let mut clients = self.clients.lock().expect("registry lock");
        if let Some(client) = clients.get(&key) {
            return client.clone();
        }
        clients.retain(|k, _| k.uid != key.uid);
        let client = Arc::new(build(&self.upstream));
        clients.insert(key, client.clone());
        client
    }

    /// Forgets every client of a deleted broker.
    pub fn forget(&self, uid: &str) {
        self.clients.lock().expect("registry lock").retain(|k, _| k.uid != uid);
    }
}

impl BrokerError {
    /// The same error with every occurrence of `secret` removed from its text.
    pub fn scrubbed(self, secret: &SecretValue) -> Self {
        match self {
            BrokerError::Auth(m) => BrokerError::Auth(secret.scrub(&m)),
            BrokerError::Server { status, message } => BrokerError::Server { status, message: secret.scrub(&message) },
            BrokerError::Rejected(m) => BrokerError::Rejected(secret.scrub(&m)),
            BrokerError::Unsupported(m) => BrokerError::Unsupported(secret.scrub(&m)),
            BrokerError::Unexpected(m) => BrokerError::Unexpected(secret.scrub(&m)),
            BrokerError::Conflict(m) => BrokerError::Conflict(secret.scrub(&m)),
            other => other,
        }
    }
}

/// Ids that come back from a broker go into URL paths: accept only an id alphabet (letters,
/// digits, `_`, `-`) of at most `max_len` characters.
pub(crate) fn check_id(id: &str, max_len: usize, what: &str) -> Result<(), BrokerError> {
    if !id.is_empty() && id.len() <= max_len && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        Ok(())
    } else {
        Err(BrokerError::Rejected(format!("{:?} is not {what}", id.chars().take(max_len + 12).collect::<String>())))
    }
}

/// The checked `id` field of a broker object.
pub(crate) fn object_id(object: &serde_json::Value, max_len: usize, what: &str) -> Result<String, BrokerError> {
    let id = object.get("id").and_then(serde_json::Value::as_str).ok_or_else(|| BrokerError::Unexpected(format!("{what} without id")))?;
    check_id(id, max_len, what)?;
    Ok(id.to_owned())
}

/// When to fetch a new management token: `TOKEN_EARLY_REFRESH` before it expires, but never
/// earlier than half its lifetime, so short-lived tokens are still reused.
pub(crate) fn token_refresh_at(lifetime: Duration) -> std::time::Instant {
    const TOKEN_EARLY_REFRESH: Duration = Duration::from_secs(300);
    std::time::Instant::now() + lifetime - TOKEN_EARLY_REFRESH.min(lifetime / 2)
}
