//! Identity brokers behind one narrow interface: make the broker object match the desired state
//! (or report how it differs), delete it, and check the operator's own credentials.
//!
//! Each broker is an adapter implementing [`Broker`]: its own module with a pure `plan` (desired
//! state, diff, request bodies) and a thin client that calls its management API through
//! `core::ManagementApi`, which owns what all four share (auth and the token cache, the request
//! budget and 429 block, 404 handling, safe error text). An adapter sees only its own broker
//! block ([`BrokerTarget`]); [`BrokerClient`] dispatches statically. A [`BrokerRegistry`] keeps one
//! client per broker object and credential, so token caches and request budgets are shared across
//! reconciles.

pub mod auth0;
pub mod budget;
pub mod cloudflare;
pub(crate) mod core;
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
        connection::{
            Auth0ConnectionSpec, AzureAdConnectionSpec, AzureCloud, AzureSpec, CloudflareConnectionSpec, LogtoConnectionSpec,
            SignInAudience, UnifiedConnectionSpec,
        },
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

/// The connection's settings for its broker, resolved once from its spec: an adapter only ever
/// sees its own broker's block.
#[derive(Debug, Clone, Copy)]
pub enum BrokerTarget<'a> {
    Auth0(&'a Auth0ConnectionSpec),
    Cloudflare(&'a CloudflareConnectionSpec),
    Logto(&'a LogtoConnectionSpec),
    Unified(&'a UnifiedConnectionSpec),
}

impl<'a> BrokerTarget<'a> {
    /// The broker block the connection sets. The CRD requires exactly one; a spec without any is
    /// refused here, for a sync and a delete alike.
    pub fn of(spec: &'a AzureAdConnectionSpec) -> Result<Self, BrokerError> {
        let target = match (&spec.auth0, &spec.cloudflare, &spec.logto, &spec.unified) {
            (Some(block), ..) => BrokerTarget::Auth0(block),
            (_, Some(block), ..) => BrokerTarget::Cloudflare(block),
            (_, _, Some(block), _) => BrokerTarget::Logto(block),
            (.., Some(block)) => BrokerTarget::Unified(block),
            (None, None, None, None) => {
                return Err(BrokerError::Unsupported("the connection has no broker block (auth0, cloudflare, logto or unified)".into()));
            }
        };
        Ok(target)
    }

    /// The broker type the block is for (`auth0`, ...), as in `AzureAdConnectionSpec::broker_type`.
    pub fn type_name(&self) -> &'static str {
        match self {
            BrokerTarget::Auth0(_) => "auth0",
            BrokerTarget::Cloudflare(_) => "cloudflare",
            BrokerTarget::Logto(_) => "logto",
            BrokerTarget::Unified(_) => "unified",
        }
    }

    /// The error for a block handed to a broker of another type.
    fn mismatch(&self, broker_type: &str) -> BrokerError {
        BrokerError::Unsupported(format!("a {broker_type} broker cannot take the connection's {} block", self.type_name()))
    }
}

/// One sync of a connection's broker object.
#[derive(Debug, Clone)]
pub struct SyncRequest<'a> {
    pub target: BrokerTarget<'a>,
    pub azure: AzureCredentials<'a>,
    /// The broker id recorded in status, if any.
    pub known_id: Option<&'a str>,
    /// Fingerprint of the secret last pushed, for brokers that never return the secret.
    pub synced_fingerprint: Option<&'a str>,
    /// Report differences without writing.
    pub observe_only: bool,
}

/// One delete of a connection's broker object.
#[derive(Debug, Clone)]
pub struct DeleteRequest<'a> {
    pub target: BrokerTarget<'a>,
    /// The Entra application as the spec names it (some brokers find their object by it).
    pub app: &'a AzureSpec,
    /// The broker id recorded in status, if any.
    pub known_id: Option<&'a str>,
}

impl<'a> DeleteRequest<'a> {
    pub fn new(spec: &'a AzureAdConnectionSpec, known_id: Option<&'a str>) -> Result<Self, BrokerError> {
        Ok(Self { target: BrokerTarget::of(spec)?, app: &spec.azure, known_id })
    }
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
    /// What only one broker returns, for the controller to act on.
    pub extras: Option<BrokerExtras>,
}

impl SyncOutcome {
    /// Observing found no object; `object` names it ("connection").
    pub fn missing(object: &str) -> Self {
        Self { id: None, differences: vec![format!("{object} (missing)")], wrote: false, extras: None }
    }

    /// A sync created the object.
    pub fn created(object: &str, id: String) -> Self {
        Self { id: Some(id), differences: vec![format!("{object} (created)")], wrote: true, extras: None }
    }

    /// A sync of an existing object: what differed and whether it was written.
    pub fn existing(id: String, differences: Vec<String>, wrote: bool) -> Self {
        Self { id: Some(id), differences, wrote, extras: None }
    }
}

/// Results that only one broker has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerExtras {
    /// Cloudflare returned SCIM credentials, once, when SCIM was enabled.
    CloudflareScim(ScimCredentials),
}

/// A SCIM endpoint and its bearer token, to hand to Entra ID's provisioning settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScimCredentials {
    pub base_url: String,
    pub secret: SecretValue,
}

/// One broker's management API, behind the operations the controller needs. Dispatch is static,
/// through [`BrokerClient`]; the adapters do their calls through `core::ManagementApi`.
#[allow(async_fn_in_trait, reason = "static dispatch only: callers see each future's concrete type, Send included")]
pub trait Broker {
    /// The connection's block for this broker.
    type Target;

    /// Makes the broker object match the desired state, or reports how it differs.
    async fn sync(&self, target: &Self::Target, request: &SyncRequest<'_>) -> Result<SyncOutcome, BrokerError>;

    /// Deletes the broker object; a missing object, or one that is not this connection's, counts
    /// as deleted.
    async fn delete(&self, target: &Self::Target, request: &DeleteRequest<'_>) -> Result<(), BrokerError>;

    /// Proves the operator's management credentials.
    async fn check(&self) -> Result<(), BrokerError>;
}

/// A client for one broker account.
#[derive(Debug)]
pub enum BrokerClient {
    Auth0(auth0::Auth0Client),
    Cloudflare(cloudflare::CloudflareClient),
    Logto(logto::LogtoClient),
    Unified(unified::UnifiedClient),
}

/// `host[:port]` the client built for `provider` calls (before any operator-level endpoint
/// override), or why the spec names none usable: what `--broker-hosts` is checked against.
pub fn management_host(provider: &BrokerProvider) -> Result<String, String> {
    match provider {
        BrokerProvider::Auth0(spec) => Ok(auth0::api_host(&spec.domain)),
        BrokerProvider::Cloudflare(_) => Ok(cloudflare::HOST.to_owned()),
        BrokerProvider::Logto(spec) => logto::endpoint_host(&spec.endpoint),
        BrokerProvider::Unified(spec) => Ok(spec.region.host().to_owned()),
    }
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

    /// The broker type (`auth0`, ...).
    pub fn type_name(&self) -> &'static str {
        match self {
            BrokerClient::Auth0(_) => "auth0",
            BrokerClient::Cloudflare(_) => "cloudflare",
            BrokerClient::Logto(_) => "logto",
            BrokerClient::Unified(_) => "unified",
        }
    }

    pub async fn sync(&self, request: &SyncRequest<'_>) -> Result<SyncOutcome, BrokerError> {
        match (self, request.target) {
            (BrokerClient::Auth0(c), BrokerTarget::Auth0(t)) => c.sync(t, request).await,
            (BrokerClient::Cloudflare(c), BrokerTarget::Cloudflare(t)) => c.sync(t, request).await,
            (BrokerClient::Logto(c), BrokerTarget::Logto(t)) => c.sync(t, request).await,
            (BrokerClient::Unified(c), BrokerTarget::Unified(t)) => c.sync(t, request).await,
            (client, target) => Err(target.mismatch(client.type_name())),
        }
    }

    /// Deletes the broker object; a missing object counts as deleted.
    pub async fn delete(&self, request: &DeleteRequest<'_>) -> Result<(), BrokerError> {
        match (self, request.target) {
            (BrokerClient::Auth0(c), BrokerTarget::Auth0(t)) => c.delete(t, request).await,
            (BrokerClient::Cloudflare(c), BrokerTarget::Cloudflare(t)) => c.delete(t, request).await,
            (BrokerClient::Logto(c), BrokerTarget::Logto(t)) => c.delete(t, request).await,
            (BrokerClient::Unified(c), BrokerTarget::Unified(t)) => c.delete(t, request).await,
            (client, target) => Err(target.mismatch(client.type_name())),
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
