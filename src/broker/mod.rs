//! Identity brokers behind one narrow interface: make the broker object match the desired state
//! (or report how it differs), delete it, and check the operator's own credentials.
//!
//! Each broker is an adapter implementing [`Broker`]: its own module with a pure `plan` (desired
//! state, diff, request bodies) and a thin client that calls its management API through
//! `core::ManagementApi`, which owns what all four share (auth and the token cache, the request
//! budget and 429 block, 404 handling, safe error text). An adapter sees only its own broker
//! block ([`BrokerTarget`]); [`BrokerClient`] dispatches statically. A [`BrokerRegistry`] keeps one
//! client per broker object and credential, so token caches are shared across reconciles, and one
//! request budget (with its 429 block) per broker account, shared by every client of the account
//! and kept across spec edits.

pub mod auth0;
pub mod budget;
pub mod cloudflare;
pub(crate) mod core;
pub mod logto;
pub mod ownership;
pub mod unified;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
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
    secret::{Fingerprinter, SecretValue},
    upstream::{TransportError, Upstream},
};

use self::{budget::RequestBudget, core::AccountKey, ownership::Ownership};

/// How long a refused management login is not tried again for its account (the first time;
/// each further refusal doubles it, up to [`REFUSED_LOGIN_MAX_BACKOFF`]). A changed credential is
/// another login, tried at once.
pub const REFUSED_LOGIN_BACKOFF: Duration = Duration::from_secs(30);
/// The longest a refused login waits.
pub const REFUSED_LOGIN_MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Broker failures, classified.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("the broker rejected the operator's management credentials: {0}")]
    Auth(String),
    /// The credentials work but lack a permission the operation needs (Auth0's
    /// `read:connections_options`, ...); the text names it.
    #[error("the operator's management credentials lack a permission: {0}")]
    PermissionMissing(String),
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
            BrokerError::PermissionMissing(_) => Reason::BrokerPermissionMissing,
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

    /// The same permanent error again, to answer a later caller with; `None` for a transient
    /// one, which is never replayed.
    pub(crate) fn replayed(&self) -> Option<BrokerError> {
        Some(match self {
            BrokerError::Auth(m) => BrokerError::Auth(m.clone()),
            BrokerError::PermissionMissing(m) => BrokerError::PermissionMissing(m.clone()),
            BrokerError::Rejected(m) => BrokerError::Rejected(m.clone()),
            BrokerError::Unsupported(m) => BrokerError::Unsupported(m.clone()),
            BrokerError::Conflict(m) => BrokerError::Conflict(m.clone()),
            BrokerError::NotFound => BrokerError::NotFound,
            BrokerError::Unreachable(_) | BrokerError::Server { .. } | BrokerError::RateLimited { .. } | BrokerError::Unexpected(_) => {
                return None;
            }
        })
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
    /// Fingerprint of the secret last pushed to the object `known_id`, for brokers that never
    /// return the secret.
    pub synced_fingerprint: Option<&'a str>,
    /// Report differences without writing.
    pub observe_only: bool,
    /// What the sync may take as its own.
    pub ownership: Ownership<'a>,
}

impl SyncRequest<'_> {
    /// The fingerprint of what the object `id` holds, as far as status knows: the recorded one
    /// belongs to the recorded object, so another object (one found by name after the recorded
    /// one vanished) is taken to hold nothing known.
    pub fn synced_fingerprint_of(&self, id: &str) -> Option<&str> {
        self.synced_fingerprint.filter(|_| self.known_id.is_none_or(|known| known == id))
    }
}

/// One delete of a connection's broker object.
#[derive(Debug, Clone)]
pub struct DeleteRequest<'a> {
    pub target: BrokerTarget<'a>,
    /// The Entra application as the spec names it (some brokers find their object by it).
    pub app: &'a AzureSpec,
    /// The broker id recorded in status, if any.
    pub known_id: Option<&'a str>,
    /// What the delete may take as its own; anything else is left in place.
    pub ownership: Ownership<'a>,
}

impl<'a> DeleteRequest<'a> {
    pub fn new(spec: &'a AzureAdConnectionSpec, known_id: Option<&'a str>, ownership: Ownership<'a>) -> Result<Self, BrokerError> {
        Ok(Self { target: BrokerTarget::of(spec)?, app: &spec.azure, known_id, ownership })
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
    /// The object is missing and would be created, but the claim does not say a create is
    /// under way yet ([`ownership::Ownership::may_create`]): the controller records that, then
    /// syncs again. Nothing was written.
    pub create_deferred: bool,
}

impl SyncOutcome {
    /// Observing found no object; `object` names it ("connection").
    pub fn missing(object: &str) -> Self {
        Self { id: None, differences: vec![format!("{object} (missing)")], wrote: false, extras: None, create_deferred: false }
    }

    /// The object is missing, and its create waits for the claim to record it.
    pub fn create_deferred(object: &str) -> Self {
        Self { create_deferred: true, ..Self::missing(object) }
    }

    /// A sync created the object.
    pub fn created(object: &str, id: String) -> Self {
        Self { id: Some(id), differences: vec![format!("{object} (created)")], wrote: true, extras: None, create_deferred: false }
    }

    /// The object `id` holds the desired state; nothing was written.
    pub fn in_sync(id: String) -> Self {
        Self::existing(id, Vec::new(), false)
    }

    /// A sync of an existing object: what differed and whether it was written.
    pub fn existing(id: String, differences: Vec<String>, wrote: bool) -> Self {
        Self { id: Some(id), differences, wrote, extras: None, create_deferred: false }
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

    fn api(&self) -> &core::ManagementApi {
        match self {
            BrokerClient::Auth0(c) => &c.api,
            BrokerClient::Cloudflare(c) => &c.api,
            BrokerClient::Logto(c) => &c.api,
            BrokerClient::Unified(c) => &c.api,
        }
    }

    fn api_mut(&mut self) -> &mut core::ManagementApi {
        match self {
            BrokerClient::Auth0(c) => &mut c.api,
            BrokerClient::Cloudflare(c) => &mut c.api,
            BrokerClient::Logto(c) => &mut c.api,
            BrokerClient::Unified(c) => &mut c.api,
        }
    }

    /// The Access team domain of a Cloudflare broker (the host of its callback); `None` for
    /// the other brokers, whose callback follows from their spec.
    pub async fn access_team_domain(&self) -> Option<Result<String, BrokerError>> {
        match self {
            BrokerClient::Cloudflare(c) => Some(c.team_domain().await),
            _ => None,
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

    /// What identifies the broker object `target` names, for the operator's claim on it (see
    /// [`ownership`]): the broker account and the object's key there. `None` for a broker whose
    /// objects carry the owner marker themselves (Auth0).
    pub fn claim_key(&self, target: BrokerTarget<'_>, app: &AzureSpec) -> Option<String> {
        match (self, target) {
            (BrokerClient::Cloudflare(c), BrokerTarget::Cloudflare(t)) => Some(c.claim_key(t)),
            (BrokerClient::Logto(c), BrokerTarget::Logto(_)) => Some(c.claim_key()),
            (BrokerClient::Unified(c), BrokerTarget::Unified(t)) => Some(c.claim_key(t, app)),
            _ => None,
        }
    }

    /// The refusal for an object whose claim another connection holds.
    pub fn claimed_elsewhere(&self) -> BrokerError {
        let note = match self {
            // The claim is the tenant's one Microsoft connector, whichever application it is for.
            BrokerClient::Logto(_) => "; Logto allows one Microsoft connector per tenant",
            _ => "",
        };
        BrokerError::Conflict(format!("{}{note}", ownership::MANAGED_ELSEWHERE))
    }

    /// A new SCIM secret for the broker object `id`: only Cloudflare has SCIM.
    pub async fn refresh_scim_secret(&self, id: &str) -> Result<ScimCredentials, BrokerError> {
        match self {
            BrokerClient::Cloudflare(c) => c.refresh_scim_secret(id).await,
            other => Err(BrokerError::Unsupported(format!("{} has no SCIM secret", other.type_name()))),
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

/// One client per broker key, shared by every reconcile, and one request budget per account.
///
/// A client is rebuilt when its broker's spec or credential changes; the account's budget is
/// not: the new client joins it, so an edit neither refills the burst nor lifts a 429 block, and
/// brokers that share an account share its budget. Likewise every client of one login (a static
/// token, or client credentials with their token endpoint and audience) shares its token and a
/// refusal's backoff, so an edit of the broker's spec does not retry a refused login early. The registry holds both weakly:
/// they go away with the last client that uses them.
#[derive(Debug)]
pub struct BrokerRegistry {
    upstream: Upstream,
    /// Keys the credential fingerprints of account keys; they never leave the process.
    fingerprints: Fingerprinter,
    clients: Mutex<HashMap<BrokerKey, Arc<BrokerClient>>>,
    budgets: Shared<RequestBudget>,
    logins: Shared<tokio::sync::Mutex<core::LoginState>>,
}

impl BrokerRegistry {
    pub fn new(upstream: Upstream) -> Self {
        Self {
            upstream,
            fingerprints: Fingerprinter::new(Fingerprinter::random_key()),
            clients: Mutex::new(HashMap::new()),
            budgets: Shared::default(),
            logins: Shared::default(),
        }
    }

    /// The client for `key`, built by `build` on first use and joined to its account's budget.
    /// Clients of older generations or credentials of the same broker are dropped.
    pub fn get_or_insert(&self, key: BrokerKey, build: impl FnOnce(&Upstream) -> BrokerClient) -> Arc<BrokerClient> {
        let mut clients = self.clients.lock().expect("registry lock");
        if let Some(client) = clients.get(&key) {
            return client.clone();
        }
        let mut client = build(&self.upstream);
        // Joined while the broker's previous client still holds the budget, so an edit of the
        // only broker of an account keeps it.
        self.join_account(&mut client);
        self.join_login(&mut client);
        clients.retain(|k, _| k.uid != key.uid);
        let client = Arc::new(client);
        clients.insert(key, client.clone());
        client
    }

    /// Gives `client` its account's budget, or records its own as the account's.
    fn join_account(&self, client: &mut BrokerClient) {
        let account = client.api().account(&self.fingerprints);
        if let Some(shared) = self.budgets.join(account, client.api().budget()) {
            client.api_mut().share_budget(shared);
        }
    }

    /// Gives `client` the state of its login, or records its own as the login's.
    fn join_login(&self, client: &mut BrokerClient) {
        let Some(login) = client.api().login_account(&self.fingerprints) else { return };
        if let Some(shared) = self.logins.join(login, client.api().login()) {
            client.api_mut().share_login(shared);
        }
    }

    /// Forgets every client of a deleted broker; the budget of an account and the state of a
    /// login no other broker uses go with them (once in-flight calls end).
    pub fn forget(&self, uid: &str) {
        self.clients.lock().expect("registry lock").retain(|k, _| k.uid != uid);
        self.budgets.prune();
        self.logins.prune();
    }
}

/// State shared by every client of one account or login, held weakly: an entry goes away with
/// the last client that uses it.
#[derive(Debug)]
struct Shared<T>(Mutex<HashMap<AccountKey, Weak<T>>>);

impl<T> Default for Shared<T> {
    fn default() -> Self {
        Self(Mutex::new(HashMap::new()))
    }
}

impl<T> Shared<T> {
    /// The state already shared under `key`; `None` after recording `own` as it.
    fn join(&self, key: AccountKey, own: &Arc<T>) -> Option<Arc<T>> {
        let mut entries = self.0.lock().expect("registry lock");
        entries.retain(|_, state| state.strong_count() > 0);
        let shared = entries.get(&key).and_then(Weak::upgrade);
        if shared.is_none() {
            entries.insert(key, Arc::downgrade(own));
        }
        shared
    }

    /// Drops the entries no client uses any more.
    fn prune(&self) {
        self.0.lock().expect("registry lock").retain(|_, state| state.strong_count() > 0);
    }
}

impl BrokerError {
    /// The same error with every occurrence of `secret` removed from its text.
    pub fn scrubbed(self, secret: &SecretValue) -> Self {
        match self {
            BrokerError::Auth(m) => BrokerError::Auth(secret.scrub(&m)),
            BrokerError::PermissionMissing(m) => BrokerError::PermissionMissing(secret.scrub(&m)),
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::*;
    use crate::{
        crd::broker::{Auth0BrokerSpec, ClientCredentialsSecretRef, CloudflareBrokerSpec, TokenSecretRef},
        upstream::EndpointOverrides,
    };

    const ACCOUNT_A: &str = "023e105f4ecef8ad9ca31a8372d0c353";
    const ACCOUNT_B: &str = "99999999999999999999999999999999";

    fn registry() -> BrokerRegistry {
        crate::install_crypto_provider();
        BrokerRegistry::new(Upstream::new(EndpointOverrides::default(), None, Duration::from_secs(5)).unwrap())
    }

    fn key(uid: &str, generation: i64) -> BrokerKey {
        BrokerKey { uid: uid.into(), generation, credentials_fingerprint: format!("{uid}-{generation}") }
    }

    fn cloudflare(account: &str) -> BrokerProvider {
        BrokerProvider::Cloudflare(CloudflareBrokerSpec {
            account_id: Some(account.into()),
            zone_id: None,
            api_token_secret_ref: TokenSecretRef { name: "cf".into(), key: "api-token".into() },
        })
    }

    fn auth0() -> BrokerProvider {
        BrokerProvider::Auth0(Auth0BrokerSpec {
            domain: "acme.auth0.com".into(),
            credentials_secret_ref: ClientCredentialsSecretRef {
                name: "auth0".into(),
                client_id_key: "client-id".into(),
                client_secret_key: "client-secret".into(),
            },
        })
    }

    fn client(registry: &BrokerRegistry, key: BrokerKey, provider: &BrokerProvider, id: &str, secret: &str) -> Arc<BrokerClient> {
        registry.get_or_insert(key, |upstream| BrokerClient::build(upstream, provider, id, SecretValue::new(secret), None))
    }

    fn budget(client: &BrokerClient) -> &Arc<RequestBudget> {
        client.api().budget()
    }

    #[tokio::test]
    async fn brokers_of_one_account_share_one_budget() {
        let registry = registry();
        let a = client(&registry, key("a", 1), &cloudflare(ACCOUNT_A), "", "token-1");
        // Another broker, another Cloudflare account, the same token: Cloudflare counts the token.
        let b = client(&registry, key("b", 1), &cloudflare(ACCOUNT_B), "", "token-1");
        let c = client(&registry, key("c", 1), &cloudflare(ACCOUNT_A), "", "token-2");
        assert!(Arc::ptr_eq(budget(&a), budget(&b)));
        assert!(!Arc::ptr_eq(budget(&a), budget(&c)), "another token is another account");
        // Auth0 counts the tenant: two machine-to-machine applications share it.
        let d = client(&registry, key("d", 1), &auth0(), "m2m-1", "secret-1");
        let e = client(&registry, key("e", 1), &auth0(), "m2m-2", "secret-2");
        assert!(Arc::ptr_eq(budget(&d), budget(&e)));
        assert!(!Arc::ptr_eq(budget(&a), budget(&d)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_block_and_the_spent_burst_survive_spec_and_credential_edits() {
        let registry = registry();
        let first = client(&registry, key("a", 1), &auth0(), "m2m", "secret-1");
        for _ in 0..auth0::DEFAULT_RATE.burst {
            budget(&first).acquire().await.unwrap();
        }
        budget(&first).block_for(Duration::from_secs(30)).await;
        drop(first);
        // A spec edit (new generation), then a rotated management secret: new clients, one budget.
        for (generation, secret) in [(2, "secret-1"), (3, "secret-2")] {
            let edited = client(&registry, key("a", generation), &auth0(), "m2m", secret);
            let blocked = budget(&edited).acquire().await.unwrap_err();
            assert!(blocked.remaining > Duration::from_secs(29), "{blocked:?}");
        }
        tokio::time::advance(Duration::from_secs(30)).await;
        let edited = client(&registry, key("a", 3), &auth0(), "m2m", "secret-2");
        let start = Instant::now();
        budget(&edited).acquire().await.unwrap();
        assert!(Instant::now() - start < auth0::DEFAULT_RATE.per_request, "30s earned tokens back");
        for _ in 0..auth0::DEFAULT_RATE.burst {
            budget(&edited).acquire().await.unwrap();
        }
        assert!(Instant::now() - start >= auth0::DEFAULT_RATE.per_request, "but the burst was not refilled beyond its size");
    }

    fn login(client: &BrokerClient) -> &core::SharedLogin {
        client.api().login()
    }

    /// One login state per credential and audience: the connections of a broker, its spec
    /// edits and other brokers with the same credentials wait out one refusal together.
    #[tokio::test]
    async fn clients_of_one_login_share_its_token_and_refusal() {
        let registry = registry();
        let first = client(&registry, key("a", 1), &auth0(), "m2m", "wrong");
        let edited = client(&registry, key("a", 2), &auth0(), "m2m", "wrong");
        let other_broker = client(&registry, key("b", 1), &auth0(), "m2m", "wrong");
        assert!(Arc::ptr_eq(login(&first), login(&edited)) && Arc::ptr_eq(login(&first), login(&other_broker)));
        let fixed = client(&registry, key("a", 3), &auth0(), "m2m", "right");
        assert!(!Arc::ptr_eq(login(&first), login(&fixed)), "a new secret is a new login, tried at once");
        // A static token is its own login, whichever account it is used for.
        let token = client(&registry, key("c", 1), &cloudflare(ACCOUNT_A), "", "token");
        let same_token = client(&registry, key("d", 1), &cloudflare(ACCOUNT_B), "", "token");
        let other_token = client(&registry, key("e", 1), &cloudflare(ACCOUNT_A), "", "token-2");
        assert!(Arc::ptr_eq(login(&token), login(&same_token)) && !Arc::ptr_eq(login(&token), login(&other_token)));
        drop((first, edited, other_broker, fixed, token, same_token, other_token));
        for uid in ["a", "b", "c", "d", "e"] {
            registry.forget(uid);
        }
        assert!(registry.logins.0.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_edited_rate_limit_changes_the_shared_budget() {
        let registry = registry();
        let provider = cloudflare(ACCOUNT_A);
        let provider = &provider;
        let build = |rate| move |upstream: &Upstream| BrokerClient::build(upstream, provider, "", SecretValue::new("t"), rate);
        let first = registry.get_or_insert(key("a", 1), build(None));
        assert_eq!(budget(&first).rate(), Some(budget::Rate::from(cloudflare::DEFAULT_RATE)));
        let edited = registry.get_or_insert(key("a", 2), build(Some((5, 20))));
        assert!(Arc::ptr_eq(budget(&first), budget(&edited)));
        assert_eq!(budget(&first).rate(), Some(budget::Rate::per_second(5, 20)));
    }

    #[tokio::test]
    async fn deleting_the_last_broker_of_an_account_frees_its_budget() {
        let registry = registry();
        let a = client(&registry, key("a", 1), &cloudflare(ACCOUNT_A), "", "token-1");
        let b = client(&registry, key("b", 1), &cloudflare(ACCOUNT_A), "", "token-1");
        let shared = Arc::downgrade(budget(&a));
        drop((a, b));
        registry.forget("a");
        assert!(shared.upgrade().is_some(), "broker b still uses the account");
        assert_eq!(registry.budgets.0.lock().unwrap().len(), 1);
        registry.forget("b");
        assert!(shared.upgrade().is_none(), "no client holds the budget any more");
        assert!(registry.budgets.0.lock().unwrap().is_empty());
        assert!(registry.clients.lock().unwrap().is_empty());
    }

    /// Auth0's smallest paid plans (Self Service, Essentials) as a token bucket: connection reads
    /// may burst 5 and refill at 50 a minute. Every request of the default budget, as fast as it
    /// lets them go for an hour, finds a token there.
    #[tokio::test(start_paused = true)]
    async fn the_auth0_default_stays_within_the_smallest_paid_plan() {
        let registry = registry();
        let client = client(&registry, key("a", 1), &auth0(), "m2m", "secret");
        assert_eq!(budget(&client).rate(), Some(auth0::DEFAULT_RATE), "no rateLimit: Auth0's default");
        let (capacity, per_minute) = (5.0, 50.0);
        let start = Instant::now();
        let (mut tokens, mut last) = (capacity, start);
        let mut sent = Vec::new();
        while Instant::now() - start < Duration::from_secs(3600) {
            budget(&client).acquire().await.unwrap();
            let now = Instant::now();
            tokens = f64::min(capacity, tokens + (now - last).as_secs_f64() * per_minute / 60.0);
            last = now;
            assert!(tokens >= 1.0, "request {} at {:?} would exceed Auth0's limit", sent.len(), now - start);
            tokens -= 1.0;
            sent.push(now - start);
        }
        for (i, at) in sent.iter().enumerate() {
            let in_minute = sent[i..].iter().take_while(|t| **t < *at + Duration::from_secs(60)).count();
            assert!(in_minute <= 5 + 50, "{in_minute} requests in the minute from {at:?}");
        }
        assert!(sent.len() > 2000, "the budget is used, not starved: {}", sent.len());
    }
}
