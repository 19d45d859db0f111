//! The one HTTP client every outbound call goes through.
//!
//! Callers name a fixed host (an Azure cloud's login host, a broker's domain) and a path; they
//! never pass a URL. An operator-level [`EndpointOverrides`] table may redirect a host to another
//! base URL (emulators in tests, an egress proxy in air-gapped clusters). Resources can't touch it.

use std::{
    collections::BTreeMap,
    path::Path,
    str::FromStr,
    sync::Arc,
    time::{Duration, Instant},
};

use reqwest::{Method, StatusCode, header::HeaderMap};
use url::Url;

use crate::metrics::Metrics;

/// Host -> base URL replacements, set by flag or environment only. Its `Display` and `Debug`
/// (which end up in logs) show a base URL's user and password as `***`: a proxy URL may carry
/// credentials.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct EndpointOverrides(BTreeMap<String, Url>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OverrideParseError {
    #[error("endpoint override {0:?} must look like HOST=https://ADDRESS[:PORT][/PATH]")]
    Shape(String),
    #[error("endpoint override for {host}: {reason}")]
    Url { host: String, reason: String },
}

impl FromStr for EndpointOverrides {
    type Err = OverrideParseError;

    /// Parses `host=url` pairs separated by commas.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut map = BTreeMap::new();
        for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let shape = || OverrideParseError::Shape(redact_userinfo_text(pair));
            let (host, url) = pair.split_once('=').ok_or_else(shape)?;
            let host = host.trim().to_ascii_lowercase();
            if host.is_empty() || host.contains('/') {
                return Err(shape());
            }
            let url = Url::parse(url.trim()).map_err(|e| OverrideParseError::Url { host: host.clone(), reason: e.to_string() })?;
            if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
                return Err(OverrideParseError::Url { host, reason: "must be an http(s) URL with a host".into() });
            }
            map.insert(host, url);
        }
        Ok(Self(map))
    }
}

impl EndpointOverrides {
    pub fn insert(&mut self, host: &str, base: Url) {
        self.0.insert(host.to_ascii_lowercase(), base);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `https://{host}{path_and_query}`, or the override's base with the path appended.
    pub fn url(&self, host: &str, path_and_query: &str) -> Url {
        debug_assert!(path_and_query.starts_with('/'));
        match self.0.get(&host.to_ascii_lowercase()) {
            Some(base) => {
                let prefix = base.as_str().trim_end_matches('/');
                Url::parse(&format!("{prefix}{path_and_query}")).expect("override base is a valid URL")
            }
            None => Url::parse(&format!("https://{host}{path_and_query}")).expect("host was validated"),
        }
    }
}

impl std::fmt::Display for EndpointOverrides {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pairs: Vec<String> = self.0.iter().map(|(h, u)| format!("{h}={}", redact_userinfo(u))).collect();
        f.write_str(&pairs.join(","))
    }
}

impl std::fmt::Debug for EndpointOverrides {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EndpointOverrides({self})")
    }
}

/// `url` with any user and password replaced by `***`.
fn redact_userinfo(url: &Url) -> Url {
    let mut url = url.clone();
    if !url.username().is_empty() || url.password().is_some() {
        // Both only fail for URLs that cannot have userinfo, which then has none to hide.
        let _ = url.set_password(None);
        let _ = url.set_username("***");
    }
    url
}

/// Text that may hold a URL (an override that failed to parse): whatever sits between `://` and
/// the next `@` of the authority is replaced by `***`.
fn redact_userinfo_text(text: &str) -> String {
    let Some(start) = text.find("://").map(|i| i + 3) else {
        return text.to_owned();
    };
    let authority_end = text[start..].find(['/', '?', '#', ',']).map_or(text.len(), |i| start + i);
    match text[start..authority_end].rfind('@') {
        Some(at) => format!("{}***{}", &text[..start], &text[start + at..]),
        None => text.to_owned(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    #[error("reading CA bundle {path}: {source}")]
    ReadCa { path: String, source: std::io::Error },
    #[error("CA bundle {path} holds no PEM certificate")]
    EmptyCa { path: String },
    #[error("building the HTTP client: {0}")]
    Build(#[from] reqwest::Error),
}

/// The largest answer body read. Management APIs answer a few KiB; anything near this is a broken
/// or hostile upstream, and reading it all would let one endpoint exhaust the operator's memory.
pub const MAX_BODY: usize = 1024 * 1024;

/// The longest a server may make us wait (`Retry-After`, `X-RateLimit-Reset`). Real brokers ask
/// for seconds to minutes; a larger value is clamped so a broken or hostile answer can neither
/// overflow a deadline nor park a connection for days.
pub const MAX_SERVER_DELAY: Duration = Duration::from_secs(3600);

/// Failure to get any complete HTTP answer. Every variant is transient: callers retry with backoff.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("connection failed: {0}")]
    Connect(String),
    /// The body was longer than `limit` bytes; reading stopped there. Treated like any other
    /// unexpected answer, transient: a misbehaving endpoint may recover, and the caller's backoff
    /// keeps the retries slow.
    #[error("the answer is larger than {} MiB", .limit / (1024 * 1024))]
    TooLarge { limit: usize },
    #[error("request failed: {0}")]
    Other(String),
}

impl TransportError {
    fn from_reqwest(e: reqwest::Error, timeout: Duration) -> Self {
        // reqwest's Display can include the URL but never the body; keep only the kind and root cause.
        let root = std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default();
        if e.is_timeout() {
            Self::Timeout(timeout)
        } else if e.is_connect() {
            Self::Connect(root)
        } else {
            Self::Other(root)
        }
    }
}

/// A complete HTTP answer, status and body, whatever the status.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: bytes_body::Body,
}

pub mod bytes_body {
    /// Response body bytes with a lossy text view for error messages.
    #[derive(Clone, Default)]
    pub struct Body(pub Vec<u8>);

    impl std::fmt::Debug for Body {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "Body({} bytes)", self.0.len())
        }
    }

    impl Body {
        pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
            serde_json::from_slice(&self.0)
        }

        /// The whole body as text, lossily. Raw: it may echo a secret, so it goes into a message
        /// only through [`crate::secret::safe_message`] (or [`Self::safe_message`]).
        pub fn text(&self) -> std::borrow::Cow<'_, str> {
            String::from_utf8_lossy(&self.0)
        }

        /// The body for an error message: `secrets` removed, then cut to its first line and
        /// [`crate::secret::MAX_MESSAGE_CHARS`].
        pub fn safe_message(&self, secrets: &[&crate::secret::SecretValue]) -> String {
            crate::secret::safe_message(&self.text(), secrets)
        }
    }
}

/// The shared client: one connection pool, one CA configuration, one override table.
#[derive(Clone, Debug)]
pub struct Upstream {
    client: reqwest::Client,
    /// Shared by every clone (each broker client holds one): with a test fleet's hundreds of
    /// overridden hosts, a copy per broker cost some 60 KiB each.
    overrides: Arc<EndpointOverrides>,
    timeout: Duration,
    /// The `upstream` label of this client's request metrics (azure, graph, auth0, ...).
    label: &'static str,
    metrics: Option<Arc<Metrics>>,
}

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(20);
const POOL_MAX_IDLE_PER_HOST: usize = 4;

impl Upstream {
    pub fn new(overrides: EndpointOverrides, ca_bundle: Option<&Path>, timeout: Duration) -> Result<Self, ClientBuildError> {
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("idp-bridge/", env!("CARGO_PKG_VERSION")))
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5))
            // Most hosts are called once per refresh of each connection that uses them: a
            // connection idle for longer is closed rather than held (with its TLS state) until
            // the next refresh. Busy hosts keep theirs, and at most a few idle ones each.
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
            // A redirect could carry a secret-bearing request to a host nobody chose.
            .redirect(reqwest::redirect::Policy::none())
            .https_only(overrides.is_empty());
        if let Some(path) = ca_bundle {
            let display = path.display().to_string();
            let pem = std::fs::read(path).map_err(|source| ClientBuildError::ReadCa { path: display.clone(), source })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)?;
            if certs.is_empty() {
                return Err(ClientBuildError::EmptyCa { path: display });
            }
            builder = builder.tls_certs_merge(certs);
        }
        Ok(Self { client: builder.build()?, overrides: Arc::new(overrides), timeout, label: "other", metrics: None })
    }

    /// Counts requests in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The same client (one connection pool), reporting its requests as `label`.
    pub fn with_label(&self, label: &'static str) -> Self {
        Self { label, ..self.clone() }
    }

    pub fn url(&self, host: &str, path_and_query: &str) -> Url {
        self.overrides.url(host, path_and_query)
    }

    pub fn request(&self, method: Method, host: &str, path_and_query: &str) -> reqwest::RequestBuilder {
        self.client.request(method, self.url(host, path_and_query))
    }

    /// Sends a request and reads the whole answer; only transport failures are errors.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Result<Answer, TransportError> {
        let request = request.build().map_err(|e| TransportError::from_reqwest(e, self.timeout))?;
        let operation = crate::metrics::operation(request.method().as_str(), request.url().path());
        let started = Instant::now();
        let answer = self.execute(request).await;
        if let Some(metrics) = &self.metrics {
            let status = answer.as_ref().map_or_else(|_| "error".to_owned(), |a| a.status.as_u16().to_string());
            metrics.upstream_request(self.label, &operation, &status, started.elapsed());
        }
        answer
    }

    async fn execute(&self, request: reqwest::Request) -> Result<Answer, TransportError> {
        let response = self.client.execute(request).await.map_err(|e| TransportError::from_reqwest(e, self.timeout))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = self.read_body(response).await?;
        Ok(Answer { status, headers, body: bytes_body::Body(body) })
    }

    /// Reads the body chunk by chunk and gives up past [`MAX_BODY`]: at once when `Content-Length`
    /// announces more, otherwise as soon as the bytes read exceed it. The client's timeout still
    /// bounds the whole read, so a body that drips ends too.
    async fn read_body(&self, mut response: reqwest::Response) -> Result<Vec<u8>, TransportError> {
        let too_large = || TransportError::TooLarge { limit: MAX_BODY };
        if response.content_length().is_some_and(|declared| declared > MAX_BODY as u64) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| TransportError::from_reqwest(e, self.timeout))? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// How long a 429 asks us to wait: `Retry-After` (seconds or HTTP date), else
/// `X-RateLimit-Reset` (UNIX seconds), else `None`. Never more than [`MAX_SERVER_DELAY`]: this is
/// the one place a server-given delay enters the operator.
pub fn retry_after(headers: &HeaderMap, now: jiff::Timestamp) -> Option<Duration> {
    server_delay(headers, now).map(|wait| wait.min(MAX_SERVER_DELAY))
}

fn server_delay(headers: &HeaderMap, now: jiff::Timestamp) -> Option<Duration> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(value) = header("retry-after") {
        if let Ok(secs) = value.parse::<u64>() {
            return Some(Duration::from_secs(secs));
        }
        if let Ok(when) = httpdate_to_timestamp(value) {
            return Some(until(now, when));
        }
    }
    let reset = header("x-ratelimit-reset")?.parse::<i64>().ok()?;
    let when = jiff::Timestamp::from_second(reset).ok()?;
    Some(until(now, when))
}

fn until(now: jiff::Timestamp, when: jiff::Timestamp) -> Duration {
    let secs = (when.as_second() - now.as_second()).max(0);
    Duration::from_secs(secs as u64)
}

fn httpdate_to_timestamp(value: &str) -> Result<jiff::Timestamp, jiff::Error> {
    // RFC 9110 IMF-fixdate, e.g. "Sun, 06 Nov 1994 08:49:37 GMT".
    jiff::fmt::rfc2822::parse(value).map(|zoned| zoned.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn overrides_replace_scheme_host_and_port_only() {
        let o: EndpointOverrides =
            "login.microsoftonline.com=https://127.0.0.1:8443, acme.auth0.com=http://localhost:9/prefix/".parse().unwrap();
        assert_eq!(o.url("login.microsoftonline.com", "/t/v2.0/x?a=b").as_str(), "https://127.0.0.1:8443/t/v2.0/x?a=b");
        assert_eq!(o.url("ACME.auth0.com", "/api/v2/connections").as_str(), "http://localhost:9/prefix/api/v2/connections");
        assert_eq!(o.url("other.auth0.com", "/oauth/token").as_str(), "https://other.auth0.com/oauth/token");
    }

    #[test]
    fn display_and_debug_hide_userinfo() {
        let o: EndpointOverrides = "login.microsoftonline.com=https://proxy-user:canary-pass@proxy.internal:3128/azure, \
             acme.auth0.com=https://only-user@proxy.internal, api.cloudflare.com=https://proxy.internal/cf"
            .parse()
            .unwrap();
        for shown in [o.to_string(), format!("{o:?}")] {
            assert!(!shown.contains("canary-pass") && !shown.contains("proxy-user") && !shown.contains("only-user"), "{shown}");
            assert!(shown.contains("login.microsoftonline.com=https://***@proxy.internal:3128/azure"), "{shown}");
            assert!(shown.contains("acme.auth0.com=https://***@proxy.internal/"), "{shown}");
            assert!(shown.contains("api.cloudflare.com=https://proxy.internal/cf"), "{shown}");
        }
        // The URL used for requests keeps its userinfo.
        assert_eq!(o.url("login.microsoftonline.com", "/t").password(), Some("canary-pass"));
        let err = "https://proxy-user:canary-pass@proxy.internal".parse::<EndpointOverrides>().unwrap_err();
        assert!(!err.to_string().contains("canary-pass"), "{err}");
    }

    #[test]
    fn bad_overrides_are_rejected() {
        assert!(matches!("nohost".parse::<EndpointOverrides>(), Err(OverrideParseError::Shape(_))));
        assert!(matches!("a=ftp://x".parse::<EndpointOverrides>(), Err(OverrideParseError::Url { .. })));
        assert!(matches!("a=not a url".parse::<EndpointOverrides>(), Err(OverrideParseError::Url { .. })));
    }

    #[test]
    fn retry_after_forms() {
        let now = jiff::Timestamp::from_second(1_000_000).unwrap();
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(7)));
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-reset", HeaderValue::from_static("1000030"));
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(30)));
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("Thu, 01 Jan 1970 00:00:10 GMT"));
        assert_eq!(retry_after(&h, jiff::Timestamp::from_second(4).unwrap()), Some(Duration::from_secs(6)));
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn a_huge_server_delay_is_clamped_to_an_hour() {
        let now = jiff::Timestamp::from_second(1_000_000).unwrap();
        let huge = [
            ("retry-after", u64::MAX.to_string()),
            ("retry-after", "Wed, 01 Jan 3000 00:00:00 GMT".to_owned()),
            ("x-ratelimit-reset", "32503680000".to_owned()),
        ];
        for (name, value) in huge {
            let mut h = HeaderMap::new();
            h.insert(name, HeaderValue::from_str(&value).unwrap());
            assert_eq!(retry_after(&h, now), Some(MAX_SERVER_DELAY), "{name}: {value}");
        }
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("3599"));
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(3599)), "a delay under the cap is kept");
    }
}
