//! The management-API core every broker adapter calls through.
//!
//! It owns what the four management APIs have in common: the bearer credential (a static API
//! token, or OAuth client credentials exchanged for a token that is cached and, on a 401, dropped
//! and fetched again once; a refused grant is remembered for a backoff, see [`LoginState`]), the
//! account's [`RequestBudget`] and the block a 429 starts, 404 as
//! "absent" on reads and "done" on deletes, and the one way an upstream answer becomes error
//! text: every secret in play is scrubbed first, and only then is the text bounded
//! ([`crate::secret::safe_message`]). An adapter only says how its broker spells an error body
//! ([`Dialect`]) and what its paths are.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::{Mutex, MutexGuard};

use super::{
    BrokerError, REFUSED_LOGIN_BACKOFF, REFUSED_LOGIN_MAX_BACKOFF,
    budget::{Rate, RequestBudget},
};
use crate::{
    secret::{Fingerprinter, SecretValue, safe_message},
    upstream::{Answer, Upstream, retry_after},
};

/// The shortest wait a 429 imposes, whatever its headers say.
const MIN_RETRY: Duration = Duration::from_secs(1);
/// Longest error code kept in a message (characters).
const MAX_CODE_CHARS: usize = 64;

/// How one broker's management API spells its errors.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dialect {
    /// The broker's name, for messages ("Auth0").
    pub name: &'static str,
    /// How long a 429 without `Retry-After` or `X-RateLimit-Reset` blocks the account.
    pub default_retry: Duration,
    /// What the broker's rate limits count against.
    pub limits: Limits,
    /// Reads an unsuccessful answer's body. The text it returns is raw (it may echo a secret);
    /// the core scrubs and bounds it.
    pub read_error: fn(&Answer) -> ErrorBody,
}

/// What a broker counts its rate limits against, and so what shares one [`RequestBudget`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limits {
    /// The API host (a tenant): every credential for it shares the limits.
    PerHost,
    /// The credential (a user's or workspace's token), wherever it is used.
    PerCredential,
}

/// The account a broker's rate limits count against: the broker, its API host and, when the
/// limits are per credential, a keyed fingerprint of the credential's identity (never the
/// credential itself).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct AccountKey {
    broker: &'static str,
    host: String,
    credential: Option<String>,
}

/// What an error body says, raw.
#[derive(Debug, Default)]
pub(crate) struct ErrorBody {
    pub message: String,
    /// The broker's error code, appended to the message in parentheses.
    pub code: Option<String>,
    /// What the error means when its HTTP status alone does not say.
    pub meaning: Option<Meaning>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Meaning {
    /// The management credentials were refused (whatever the status).
    Credentials,
    /// The credentials were accepted but lack a permission the request needs.
    PermissionMissing,
    /// The broker already holds a conflicting object; the text says which rule.
    Conflict(&'static str),
}

/// How the operator authenticates to a management API.
#[derive(Debug)]
pub(crate) enum Auth {
    /// A static API token sent as the bearer (Cloudflare, Unified.to).
    Token(SecretValue),
    /// OAuth client credentials exchanged for a bearer token (Auth0, Logto).
    ClientCredentials(ClientCredentials),
}

/// An OAuth client-credentials grant and the token it last gave.
#[derive(Debug)]
pub(crate) struct ClientCredentials {
    client_id: String,
    secret: SecretValue,
    /// Token endpoint path on the API host.
    path: &'static str,
    request: TokenRequest,
    /// Lifetime assumed when the answer has no `expires_in`.
    default_ttl: Duration,
    /// Longer claimed lifetimes are not believed.
    max_ttl: Duration,
}

/// What the last login of one credential gave (for a grant: with its token endpoint and
/// audience), shared by every client of that credential (see [`super::BrokerRegistry`]).
pub(crate) type SharedLogin = Arc<Mutex<LoginState>>;

/// The cached token of a login, or why the login was refused: the grant refused (wrong
/// credentials, no such application, no token endpoint), or a static token answered 401. A
/// refusal is answered from here until its backoff ends, so the connections of a broker with
/// wrong management credentials cost one failing request per backoff period, not one each.
/// Transient failures are not kept: their callers back off.
#[derive(Debug, Default)]
pub(crate) struct LoginState {
    /// The token and when to refresh it.
    token: Option<(SecretValue, Instant)>,
    refused: Option<Refusal>,
    /// A static token the broker has accepted since its last refusal. Until then its calls are
    /// probes, sent one at a time (see [`Session::call`]).
    token_accepted: bool,
}

#[derive(Debug)]
struct Refusal {
    /// The refusal as it was first reported: replaying the same text keeps conditions stable.
    error: BrokerError,
    retry_at: tokio::time::Instant,
    /// Consecutive refusals, for the doubling backoff.
    count: u32,
}

impl LoginState {
    /// The refusal to answer with while its backoff runs.
    fn refusal(&self) -> Option<BrokerError> {
        self.refused.as_ref().filter(|r| tokio::time::Instant::now() < r.retry_at).and_then(|r| r.error.replayed())
    }

    /// Keeps a permanent failure of the grant for its backoff; a transient one is not kept.
    fn record_failure(&mut self, error: &BrokerError) {
        let Some(error) = error.replayed() else { return };
        let count = self.refused.as_ref().map_or(0, |r| r.count).saturating_add(1);
        let backoff = refusal_backoff(count);
        self.refused = Some(Refusal { error, retry_at: tokio::time::Instant::now() + backoff, count });
        self.token_accepted = false;
    }
}

/// The wait after the `count`th consecutive refusal: doubling from [`REFUSED_LOGIN_BACKOFF`] up
/// to [`REFUSED_LOGIN_MAX_BACKOFF`].
fn refusal_backoff(count: u32) -> Duration {
    REFUSED_LOGIN_BACKOFF.saturating_mul(2u32.saturating_pow(count.saturating_sub(1).min(16))).min(REFUSED_LOGIN_MAX_BACKOFF)
}

/// How the grant is sent.
#[derive(Debug)]
pub(crate) enum TokenRequest {
    /// Id, secret and audience in a JSON body (Auth0).
    JsonBody { audience: String },
    /// HTTP Basic with the form-encoded id and secret (RFC 6749 §2.3.1), and a form naming the
    /// resource indicator and scope (Logto).
    BasicForm { resource: String, scope: &'static str },
}

impl ClientCredentials {
    pub fn new(
        client_id: &str,
        secret: SecretValue,
        path: &'static str,
        request: TokenRequest,
        default_ttl: Duration,
        max_ttl: Duration,
    ) -> Self {
        Self { client_id: client_id.to_owned(), secret, path, request, default_ttl, max_ttl }
    }

    /// What identifies the login: the client, its secret, where and for what it asks.
    fn login_identity(&self) -> Vec<u8> {
        let target = match &self.request {
            TokenRequest::JsonBody { audience } => audience.as_str(),
            TokenRequest::BasicForm { resource, .. } => resource.as_str(),
        };
        [self.client_id.as_str(), self.secret.expose(), self.path, target].join("\0").into_bytes()
    }
}

impl Auth {
    /// The operator's own secret, which no error text may show.
    fn credential(&self) -> &SecretValue {
        match self {
            Auth::Token(token) => token,
            Auth::ClientCredentials(grant) => &grant.secret,
        }
    }

    /// What identifies the credential: the token itself, or the client id of a grant (a new
    /// client secret is still the same application).
    fn identity(&self) -> &str {
        match self {
            Auth::Token(token) => token.expose(),
            Auth::ClientCredentials(grant) => &grant.client_id,
        }
    }

    /// What identifies a login: the token, or the grant's client, secret, endpoint and audience
    /// (a new secret is a new login, tried at once).
    fn login_identity(&self) -> Vec<u8> {
        match self {
            Auth::Token(token) => ["token", token.expose()].join("\0").into_bytes(),
            Auth::ClientCredentials(grant) => grant.login_identity(),
        }
    }
}

/// One broker account's management API.
#[derive(Debug)]
pub(crate) struct ManagementApi {
    upstream: Upstream,
    /// `host[:port]` of the API, or why the broker spec gives none usable.
    host: Result<String, String>,
    /// Prefix of every API path (`/api/v2`), or why the broker spec gives none usable.
    prefix: Result<String, String>,
    auth: Auth,
    /// The rate this client was configured with (the spec's `rateLimit` or the broker's default).
    rate: Option<Rate>,
    /// The account's budget, shared with every other client of the account.
    budget: Arc<RequestBudget>,
    /// The credential's login, shared with every other client of the same credential.
    login: SharedLogin,
    dialect: Dialect,
}

impl ManagementApi {
    pub fn new(
        upstream: Upstream,
        host: Result<String, String>,
        prefix: Result<String, String>,
        auth: Auth,
        rate: Option<Rate>,
        dialect: Dialect,
    ) -> Self {
        Self { upstream, host, prefix, auth, rate, budget: Arc::new(RequestBudget::new(rate)), login: SharedLogin::default(), dialect }
    }

    /// The account this client's requests count against; `fingerprints` keys the credential's
    /// fingerprint.
    pub fn account(&self, fingerprints: &Fingerprinter) -> AccountKey {
        let host = match &self.host {
            Ok(host) => host.to_ascii_lowercase(),
            Err(why) => format!("(unusable: {why})"),
        };
        let credential = match self.dialect.limits {
            Limits::PerHost => None,
            Limits::PerCredential => Some(fingerprints.fingerprint_bytes(self.auth.identity().as_bytes())),
        };
        AccountKey { broker: self.dialect.name, host, credential }
    }

    /// The API host as a claim key names it (see [`super::ownership`]).
    pub fn host_key(&self) -> String {
        match &self.host {
            Ok(host) => host.to_ascii_lowercase(),
            Err(_) => "(unusable)".into(),
        }
    }

    /// A stable, one-way identity of the credential (a SHA-256 of the token or client id), for
    /// claim keys of brokers whose account only the credential names. Unlike [`Self::account`],
    /// the same in every replica and across restarts; the credential cannot be read back from it.
    pub fn credential_key(&self) -> String {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(["idp-bridge-claim-credential", self.auth.identity()].join("\0").as_bytes()))
    }

    pub fn budget(&self) -> &Arc<RequestBudget> {
        &self.budget
    }

    /// The login this client's credential belongs to, keyed by `fingerprints` (never the
    /// credential itself); `None` when the spec gives no usable host (nothing is called).
    pub fn login_account(&self, fingerprints: &Fingerprinter) -> Option<AccountKey> {
        let host = self.host.as_ref().ok()?.to_ascii_lowercase();
        Some(AccountKey { broker: self.dialect.name, host, credential: Some(fingerprints.fingerprint_bytes(&self.auth.login_identity())) })
    }

    pub fn login(&self) -> &SharedLogin {
        &self.login
    }

    /// Uses the login state shared by every client of the same login from now on.
    pub fn share_login(&mut self, login: SharedLogin) {
        self.login = login;
    }

    /// Uses the account's shared budget from now on, at this client's configured rate (the most
    /// recently configured client of an account sets its pace).
    pub fn share_budget(&mut self, budget: Arc<RequestBudget>) {
        budget.set_rate(self.rate);
        self.budget = budget;
    }

    /// Calls for one operation; `synced` is the Azure secret it pushes, if any, so no error text
    /// of the operation can show it.
    pub fn session<'a>(&'a self, synced: Option<&'a SecretValue>) -> Session<'a> {
        Session { api: self, synced }
    }

    fn host(&self) -> Result<&str, BrokerError> {
        self.host.as_deref().map_err(|why| BrokerError::Rejected(why.clone()))
    }

    fn prefix(&self) -> Result<&str, BrokerError> {
        self.prefix.as_deref().map_err(|why| BrokerError::Rejected(why.clone()))
    }

    async fn acquire(&self) -> Result<(), BrokerError> {
        self.budget.acquire().await.map_err(|blocked| BrokerError::RateLimited { retry_after: blocked.remaining })
    }

    /// The bearer to send: the static token, or a client-credentials token from cache when it is
    /// still good, else a new one, unless the login was refused and its backoff still runs. The
    /// lock is held across the request, so concurrent callers wait for its answer.
    async fn bearer(&self, synced: Option<&SecretValue>) -> Result<SecretValue, BrokerError> {
        let mut login = self.login.lock().await;
        let grant = match &self.auth {
            Auth::Token(token) => return login.refusal().map_or_else(|| Ok(token.clone()), Err),
            Auth::ClientCredentials(grant) => grant,
        };
        if let Some((token, refresh_at)) = login.token.as_ref()
            && *refresh_at > Instant::now()
        {
            return Ok(token.clone());
        }
        if let Some(refused) = login.refusal() {
            return Err(refused);
        }
        match self.fetch_token(grant, synced).await {
            Ok((token, ttl)) => {
                *login = LoginState { token: Some((token.clone(), super::token_refresh_at(ttl))), ..LoginState::default() };
                Ok(token)
            }
            Err(error) => {
                login.record_failure(&error);
                Err(error)
            }
        }
    }

    /// The static token to send, unless its refusal's backoff runs. Until the broker has accepted
    /// the token, the login stays locked across the call (the returned guard): concurrent callers
    /// wait for the first answer instead of each sending a token the broker may refuse.
    async fn static_bearer(&self, token: &SecretValue) -> Result<(SecretValue, Option<MutexGuard<'_, LoginState>>), BrokerError> {
        let login = self.login.lock().await;
        if let Some(refused) = login.refusal() {
            return Err(refused);
        }
        Ok((token.clone(), (!login.token_accepted).then_some(login)))
    }

    async fn fetch_token(&self, grant: &ClientCredentials, synced: Option<&SecretValue>) -> Result<(SecretValue, Duration), BrokerError> {
        let host = self.host()?;
        self.acquire().await?;
        let request = self.upstream.request(Method::POST, host, grant.path);
        let request = match &grant.request {
            TokenRequest::JsonBody { audience } => request.json(&serde_json::json!({
                "grant_type": "client_credentials",
                "client_id": grant.client_id,
                "client_secret": grant.secret.expose(),
                "audience": audience,
            })),
            TokenRequest::BasicForm { resource, scope } => {
                let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                request.basic_auth(encode(&grant.client_id), Some(encode(grant.secret.expose()))).form(&[
                    ("grant_type", "client_credentials"),
                    ("resource", resource.as_str()),
                    ("scope", scope),
                ])
            }
        };
        let answer = self.upstream.send(request).await?;
        if !answer.status.is_success() {
            return Err(match self.error_from(&answer, &[synced]).await {
                // Any refusal of the grant (unknown client, wrong secret, wrong audience or
                // resource, no role) is about the operator's management credentials.
                BrokerError::Rejected(message) | BrokerError::Conflict(message) => {
                    BrokerError::Auth(format!("token request refused: {message}"))
                }
                BrokerError::NotFound => BrokerError::Rejected(format!(
                    "https://{host}{} answered 404: {} has no token endpoint there (check the endpoint)",
                    grant.path, self.dialect.name
                )),
                other => other,
            });
        }
        #[derive(Deserialize)]
        struct TokenBody {
            access_token: String,
            expires_in: Option<u64>,
        }
        let body: TokenBody = answer.body.json().map_err(|_| BrokerError::Unexpected("token response is not valid JSON".into()))?;
        let ttl = body.expires_in.map_or(grant.default_ttl, Duration::from_secs).min(grant.max_ttl);
        Ok((SecretValue::new(body.access_token), ttl))
    }

    /// Drops the cached token, if it is still `token`.
    async fn forget(&self, token: &SecretValue) {
        let mut login = self.login.lock().await;
        if login.token.as_ref().is_some_and(|(held, _)| held == token) {
            login.token = None;
        }
    }

    /// The error an unsuccessful answer means, with its text made safe. A 429 also blocks the
    /// account for every caller until the broker's reset time.
    async fn error_from(&self, answer: &Answer, extra: &[Option<&SecretValue>]) -> BrokerError {
        let status = answer.status;
        if status == StatusCode::TOO_MANY_REQUESTS {
            let wait = retry_after(&answer.headers, jiff::Timestamp::now()).unwrap_or(self.dialect.default_retry).max(MIN_RETRY);
            self.budget.block_for(wait).await;
            return BrokerError::RateLimited { retry_after: wait };
        }
        let body = (self.dialect.read_error)(answer);
        let mut message = self.safe_message(&body.message, extra);
        if let Some(code) = body.code.as_deref().filter(|c| !c.is_empty()) {
            let code: String = self.safe_message(code, extra).chars().take(MAX_CODE_CHARS).collect();
            message = format!("{message} ({code})");
        }
        match (status, body.meaning) {
            (_, Some(Meaning::PermissionMissing)) => BrokerError::PermissionMissing(message),
            (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN, _) => BrokerError::Auth(message),
            (s, _) if s.is_server_error() => BrokerError::Server { status: s.as_u16(), message },
            (_, Some(Meaning::Credentials)) => BrokerError::Auth(message),
            (_, Some(Meaning::Conflict(rule))) => BrokerError::Conflict(format!("{rule}: {message}")),
            (StatusCode::NOT_FOUND, None) => BrokerError::NotFound,
            (s, None) if s.is_client_error() => BrokerError::Rejected(message),
            (s, None) => BrokerError::Unexpected(format!("HTTP {}: {message}", s.as_u16())),
        }
    }

    /// Upstream text fit for an error: the management credential, and `extra` secrets (the
    /// token sent, the Azure secret pushed), removed, then bounded.
    fn safe_message(&self, text: &str, extra: &[Option<&SecretValue>]) -> String {
        let mut secrets = vec![self.auth.credential()];
        secrets.extend(extra.iter().flatten());
        safe_message(text, &secrets)
    }
}

/// The calls of one operation (a sync, a delete, a check).
pub(crate) struct Session<'a> {
    api: &'a ManagementApi,
    synced: Option<&'a SecretValue>,
}

impl Session<'_> {
    /// Proves the management credentials: for client credentials, by getting a token.
    pub async fn authenticate(&self) -> Result<(), BrokerError> {
        self.api.bearer(self.synced).await.map(drop)
    }

    /// One API call (`path` below the API's prefix). Answers other than 2xx are typed errors; a
    /// 401 with a client-credentials token drops the token and retries once with a new one.
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Answer, BrokerError> {
        let api = self.api;
        let (host, path) = (api.host()?, format!("{}{path}", api.prefix()?));
        let retries = if matches!(api.auth, Auth::ClientCredentials(_)) { 1 } else { 0 };
        let mut attempt = 0;
        loop {
            let (token, mut probe) = match &api.auth {
                Auth::Token(token) => api.static_bearer(token).await?,
                Auth::ClientCredentials(_) => (api.bearer(self.synced).await?, None),
            };
            api.acquire().await?;
            let mut request = api.upstream.request(method.clone(), host, &path).bearer_auth(token.expose());
            if let Some(body) = body {
                request = request.json(body);
            }
            let answer = api.upstream.send(request).await?;
            if answer.status.is_success() {
                if let Some(login) = probe.as_mut() {
                    login.token_accepted = true;
                }
                return Ok(answer);
            }
            if answer.status == StatusCode::UNAUTHORIZED && attempt < retries {
                api.forget(&token).await;
                attempt += 1;
                continue;
            }
            let error = api.error_from(&answer, &[Some(&token), self.synced]).await;
            if answer.status == StatusCode::UNAUTHORIZED && matches!(api.auth, Auth::Token(_)) {
                // A static token the broker does not accept: refused for every caller alike.
                match probe.as_mut() {
                    Some(login) => login.record_failure(&error),
                    None => api.login.lock().await.record_failure(&error),
                }
            }
            return Err(error);
        }
    }

    /// A read of one object; a 404 means it is absent.
    pub async fn get(&self, path: &str) -> Result<Option<Answer>, BrokerError> {
        match self.call(Method::GET, path, None).await {
            Ok(answer) => Ok(Some(answer)),
            Err(BrokerError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A read of one JSON object; a 404 means it is absent. `what` names it in errors.
    pub async fn get_json(&self, path: &str, what: &str) -> Result<Option<Value>, BrokerError> {
        self.get(path).await?.map(|answer| json(&answer, what)).transpose()
    }

    /// Deletes one object; a 404 means it is gone already, which is what was asked.
    pub async fn delete(&self, path: &str) -> Result<(), BrokerError> {
        match self.call(Method::DELETE, path, None).await {
            Ok(_) | Err(BrokerError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Upstream text (from a successful answer that still reports a failure) fit for an error.
    pub fn safe_message(&self, text: &str) -> String {
        self.api.safe_message(text, &[self.synced])
    }

    /// The same error with every secret of this session removed from its text, for errors built
    /// from values the broker returned outside an error body.
    pub fn scrubbed(&self, error: BrokerError) -> BrokerError {
        let error = error.scrubbed(self.api.auth.credential());
        match self.synced {
            Some(secret) => error.scrubbed(secret),
            None => error,
        }
    }
}

/// The JSON of a successful answer; `what` names it in the error when it is not.
pub(crate) fn json<T: serde::de::DeserializeOwned>(answer: &Answer, what: &str) -> Result<T, BrokerError> {
    answer.body.json().map_err(|_| BrokerError::Unexpected(format!("{what} is not valid JSON")))
}

/// What a lookup of the connection's broker object found.
#[derive(Debug)]
pub(crate) enum Found {
    /// The object this connection manages.
    Ours(Value),
    Missing,
    /// An object in the way that this connection may not take over; `kind` says what it is.
    Foreign {
        kind: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> BrokerError {
        BrokerError::Auth("token request refused: Unauthorized (access_denied)".into())
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_login_is_replayed_until_its_doubling_backoff_ends() {
        let mut login = LoginState::default();
        login.record_failure(&refused());
        for (count, backoff) in [(1, REFUSED_LOGIN_BACKOFF), (2, REFUSED_LOGIN_BACKOFF * 2), (3, REFUSED_LOGIN_BACKOFF * 4)] {
            tokio::time::advance(backoff - Duration::from_millis(1)).await;
            let replayed = login.refusal().unwrap_or_else(|| panic!("refusal {count} is replayed for {backoff:?}"));
            assert_eq!(replayed.to_string(), refused().to_string(), "the same text, so conditions stay stable");
            tokio::time::advance(Duration::from_millis(1)).await;
            assert!(login.refusal().is_none(), "refusal {count} is retried after {backoff:?}");
            login.record_failure(&refused());
        }
        assert_eq!(refusal_backoff(30), REFUSED_LOGIN_MAX_BACKOFF);
    }

    #[tokio::test(start_paused = true)]
    async fn transient_login_failures_are_not_kept() {
        let mut login = LoginState::default();
        login.record_failure(&BrokerError::Server { status: 503, message: "unavailable".into() });
        login.record_failure(&BrokerError::RateLimited { retry_after: Duration::from_secs(5) });
        assert!(login.refusal().is_none());
    }
}
