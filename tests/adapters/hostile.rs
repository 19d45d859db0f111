//! Hostile or broken endpoints must not stop the operator: the real clients against emulators
//! whose kit plays a malicious or broken server (a `Retry-After` of `u64::MAX`, far-future reset
//! times, a body too large to hold, a body that drips slower than any deadline, list endpoints
//! that never end). Every case must end in a typed, transient error or a bounded result, promptly
//! and without a panic.

use std::time::{Duration, Instant};

use axum::http::{HeaderName, HeaderValue, header};
use idp_bridge::{
    azure::{AzureClient, AzureError},
    broker::{BrokerClient, BrokerError, DeleteRequest},
    crd::{
        BrokerProvider,
        broker::{Auth0BrokerSpec, ClientCredentialsSecretRef, CloudflareBrokerSpec, TokenSecretRef},
        connection::{Auth0ConnectionSpec, AzureCloud, CloudflareConnectionSpec},
    },
    secret::{Fingerprinter, SecretValue},
    upstream::{EndpointOverrides, MAX_BODY, MAX_SERVER_DELAY, TransportError, Upstream},
};
use idp_bridge_devenv::{
    auth0::Auth0Emulator,
    azure::AzureEmulator,
    cloudflare::CloudflareEmulator,
    kit::{Fault, RequestMatch},
    tls::{TestCa, install_crypto_provider},
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tempfile::NamedTempFile;

use crate::common::{self, TENANT};

const AUTH0: &str = "acme.auth0.com";
const M2M: &str = "m2m-client";
const M2M_SECRET: &str = "m2m-canary-secret-must-not-leak";
const CLOUDFLARE: &str = "api.cloudflare.com";
const ACCOUNT: &str = "023e105f4ecef8ad9ca31a8372d0c353";
const TOKEN: &str = "cf-token-canary-must-not-leak-0123456789abcdef";
const LOGIN: &str = "login.microsoftonline.com";
const TIMEOUT: Duration = Duration::from_secs(5);
/// `broker::cloudflare::MAX_PAGES`: how many pages of identity providers the client reads at most.
const CLOUDFLARE_MAX_PAGES: usize = 200;
/// A rate that never slows the tests down (the emulators' own budgets are far above it).
const FAST: Option<(u32, u32)> = Some((1000, 1000));

/// An Azure, an Auth0 and a Cloudflare emulator, and the operator's HTTP client pointed at them.
struct Env {
    azure: AzureEmulator,
    auth0: Auth0Emulator,
    cf: CloudflareEmulator,
    overrides: EndpointOverrides,
    ca_file: NamedTempFile,
}

fn env() -> Env {
    install_crypto_provider();
    let ca = TestCa::new();
    let ca_file = NamedTempFile::new().unwrap();
    ca.write_pem(ca_file.path()).unwrap();
    let azure = AzureEmulator::start(&ca).unwrap();
    azure.add_tenant(TENANT, &["contoso.onmicrosoft.com"]);
    let auth0 = Auth0Emulator::start(&ca, AUTH0).unwrap();
    auth0.add_m2m_client(M2M, M2M_SECRET, &["read:connections", "create:connections", "update:connections", "delete:connections"]);
    let cf = CloudflareEmulator::start(&ca).unwrap();
    cf.add_account(ACCOUNT);
    cf.add_token(TOKEN, &[ACCOUNT]);
    let mut overrides = EndpointOverrides::default();
    overrides.insert(LOGIN, azure.base_url());
    overrides.insert(AUTH0, auth0.base_url());
    overrides.insert(CLOUDFLARE, cf.base_url());
    Env { azure, auth0, cf, overrides, ca_file }
}

impl Env {
    fn upstream(&self, timeout: Duration) -> Upstream {
        Upstream::new(self.overrides.clone(), Some(self.ca_file.path()), timeout).unwrap()
    }

    fn auth0_broker(&self) -> BrokerClient {
        let spec = Auth0BrokerSpec {
            domain: AUTH0.into(),
            credentials_secret_ref: ClientCredentialsSecretRef {
                name: "auth0".into(),
                client_id_key: "client-id".into(),
                client_secret_key: "client-secret".into(),
            },
        };
        BrokerClient::build(&self.upstream(TIMEOUT), &BrokerProvider::Auth0(spec), M2M, SecretValue::new(M2M_SECRET), FAST)
    }

    fn cloudflare_broker(&self) -> BrokerClient {
        let spec = CloudflareBrokerSpec {
            account_id: Some(ACCOUNT.into()),
            zone_id: None,
            api_token_secret_ref: TokenSecretRef { name: "cloudflare".into(), key: "api-token".into() },
        };
        BrokerClient::build(&self.upstream(TIMEOUT), &BrokerProvider::Cloudflare(spec), "", SecretValue::new(TOKEN), FAST)
    }

    /// A plain GET through the operator's HTTP client.
    async fn get(&self, upstream: &Upstream, host: &str, path: &str) -> Result<idp_bridge::upstream::Answer, TransportError> {
        upstream.send(upstream.request(Method::GET, host, path)).await
    }
}

fn rate_limited(result: Result<(), BrokerError>) -> Duration {
    match result {
        Err(BrokerError::RateLimited { retry_after }) => retry_after,
        other => panic!("expected a rate limit, got {other:?}"),
    }
}

#[tokio::test]
async fn a_retry_after_of_u64_max_blocks_the_account_for_at_most_an_hour() {
    let env = env();
    let broker = env.auth0_broker();
    env.auth0.kit().faults().push(Fault::status(429).retry_after(u64::MAX));

    let retry_after = rate_limited(broker.check().await);
    assert_eq!(retry_after, MAX_SERVER_DELAY, "clamped, and the budget's deadline did not overflow");
    assert_eq!(env.auth0.kit().log().entries().len(), 1);

    // The block holds for everyone using the account: refused by the budget, nothing sent.
    let remaining = rate_limited(broker.check().await);
    assert!(remaining <= MAX_SERVER_DELAY && remaining > MAX_SERVER_DELAY - Duration::from_secs(60), "{remaining:?}");
    assert_eq!(env.auth0.kit().log().entries().len(), 1, "the budget refused without a request");
}

#[tokio::test]
async fn far_future_reset_times_are_clamped_to_an_hour() {
    let env = env();
    let far_future = [
        (header::RETRY_AFTER, "Wed, 01 Jan 3000 00:00:00 GMT"),
        (HeaderName::from_static("x-ratelimit-reset"), "32503680000"),
        (header::RETRY_AFTER, "18446744073709551615"),
    ];
    for (name, value) in far_future {
        let broker = env.cloudflare_broker();
        env.cf.kit().faults().push(Fault::status(429).header(name.clone(), HeaderValue::from_static(value)));
        assert_eq!(rate_limited(broker.check().await), MAX_SERVER_DELAY, "{name}: {value}");
    }

    // Azure's throttling answer goes through the same clamp.
    let azure = AzureClient::new(env.upstream(TIMEOUT));
    env.azure.kit().faults().push(Fault::status(429).retry_after(u64::MAX));
    match azure.discover(AzureCloud::AzurePublic, TENANT).await {
        Err(AzureError::Throttled { retry_after }) => assert_eq!(retry_after, Some(MAX_SERVER_DELAY)),
        other => panic!("expected throttling, got {other:?}"),
    }
}

#[tokio::test]
async fn a_body_larger_than_a_mebibyte_is_refused_without_reading_it_all() {
    let env = env();
    let upstream = env.upstream(TIMEOUT);
    let path = "/client/v4/accounts/x/access/identity_providers";

    // A body that never ends, as fast as the connection goes: only a client that stops at the cap
    // answers before its timeout, and it holds at most the cap meanwhile.
    env.cf.kit().faults().push(Fault::huge_body(u64::MAX));
    let started = Instant::now();
    let err = env.get(&upstream, CLOUDFLARE, path).await.unwrap_err();
    assert!(matches!(err, TransportError::TooLarge { limit: MAX_BODY }), "{err:?}");
    assert_eq!(err.to_string(), "the answer is larger than 1 MiB");
    assert!(started.elapsed() < TIMEOUT, "stopped reading at the cap, took {:?}", started.elapsed());

    // Exactly the cap is still an answer.
    env.cf.kit().faults().push(Fault::huge_body(MAX_BODY as u64));
    let answer = env.get(&upstream, CLOUDFLARE, path).await.unwrap();
    assert_eq!((answer.status, answer.body.0.len()), (StatusCode::OK, MAX_BODY));

    // Through a broker client: the broker is unreachable (transient), and the message says why.
    env.cf.kit().faults().push(Fault::huge_body(2 * MAX_BODY as u64));
    let err = env.cloudflare_broker().check().await.unwrap_err();
    assert!(matches!(err, BrokerError::Unreachable(TransportError::TooLarge { .. })), "{err:?}");
    assert!(err.is_transient());
    assert!(err.to_string().contains("larger than 1 MiB") && !err.to_string().contains(TOKEN), "{err}");
}

#[tokio::test]
async fn an_announced_oversized_body_fails_before_its_first_byte_is_read() {
    let env = env();
    let upstream = env.upstream(TIMEOUT);
    // The body would take far longer than the timeout to arrive; only the header is needed.
    let announced = HeaderValue::from(2 * MAX_BODY as u64);
    env.cf.kit().faults().push(Fault::drip(1, Duration::from_secs(60)).header(header::CONTENT_LENGTH, announced));
    let started = Instant::now();
    let err = env.get(&upstream, CLOUDFLARE, "/client/v4/accounts").await.unwrap_err();
    assert!(matches!(err, TransportError::TooLarge { limit: MAX_BODY }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn a_body_that_drips_ends_at_the_request_timeout() {
    let env = env();
    let timeout = Duration::from_secs(2);
    let upstream = env.upstream(timeout);
    // Each chunk comes well within any read timeout; the whole body never does.
    env.auth0.kit().faults().push(Fault::drip(16, Duration::from_millis(200)));
    let started = Instant::now();
    let err = env.get(&upstream, AUTH0, "/api/v2/connections").await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, TransportError::Timeout(t) if t == timeout), "{err:?}");
    assert!(took >= timeout && took < timeout + Duration::from_secs(2), "took {took:?}");

    // Through a broker client: transient, like any unreachable broker.
    env.auth0.kit().faults().push(Fault::drip(16, Duration::from_millis(200)));
    let err = env.auth0_broker().check().await.unwrap_err();
    assert!(matches!(err, BrokerError::Unreachable(TransportError::Timeout(_))) && err.is_transient(), "{err:?}");
}

#[tokio::test]
async fn endless_cloudflare_pages_stop_at_the_page_cap() {
    let env = env();
    let broker = env.cloudflare_broker();
    let collection = format!("/client/v4/accounts/{ACCOUNT}/access/identity_providers");
    env.cf.kit().faults().push(Fault::endless_pages().on(RequestMatch::any().method(Method::GET).path(&collection)).forever());
    let spec = common::connection_spec("cloudflare", |spec| {
        spec.cloudflare = Some(CloudflareConnectionSpec { name: "Contoso Entra ID".into(), ..Default::default() })
    });

    // Deleting by name looks for the provider page by page; every page is full and promises more.
    let started = Instant::now();
    broker.delete(&DeleteRequest::new(&spec, None, crate::common::OWNED).unwrap()).await.unwrap();
    let lists = env.cf.kit().log().count(&RequestMatch::any().method(Method::GET).path(&collection));
    assert_eq!(lists, CLOUDFLARE_MAX_PAGES);
    assert_eq!(env.cf.kit().log().count(&RequestMatch::any().writes()), 0, "nothing of ours was found, nothing deleted");
    assert!(started.elapsed() < Duration::from_secs(60), "took {:?}", started.elapsed());
}

/// The Auth0 emulator's endless enabled-clients pages, as the Auth0 client's page cap will meet
/// them: full pages, each with a new `next` cursor.
#[tokio::test]
async fn the_auth0_emulator_pages_enabled_clients_endlessly() {
    let env = env();
    let id = env.auth0.insert_connection(json!({"name": "contoso-entra", "strategy": "waad", "options": {}}));
    let upstream = env.upstream(TIMEOUT);
    let token = upstream
        .send(upstream.request(Method::POST, AUTH0, "/oauth/token").json(&json!({
            "grant_type": "client_credentials", "client_id": M2M, "client_secret": M2M_SECRET,
            "audience": format!("https://{AUTH0}/api/v2/"),
        })))
        .await
        .unwrap()
        .body
        .json::<Value>()
        .unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let clients = format!("/api/v2/connections/{id}/clients");
    env.auth0.kit().faults().push(Fault::endless_pages().on(RequestMatch::any().path(&clients)).forever());
    let mut cursors = Vec::new();
    let mut query = "take=100".to_owned();
    for _ in 0..5 {
        let request = upstream.request(Method::GET, AUTH0, &format!("{clients}?{query}")).bearer_auth(&token);
        let page: Value = upstream.send(request).await.unwrap().body.json().unwrap();
        assert_eq!(page["clients"].as_array().unwrap().len(), 100);
        let next = page["next"].as_str().expect("always a next page").to_owned();
        assert!(!cursors.contains(&next), "every cursor is new");
        query = format!("take=100&from={next}");
        cursors.push(next);
    }
    assert!(env.auth0.enabled_clients(&id).is_empty(), "filler only: the connection itself is unchanged");
}

/// `broker::auth0::MAX_CLIENT_PAGES`: how many pages of enabled clients the Auth0 client reads.
const AUTH0_MAX_CLIENT_PAGES: usize = 20;

#[tokio::test]
async fn endless_auth0_enabled_clients_stop_at_the_page_cap_with_an_error() {
    let env = env();
    let broker = env.auth0_broker();
    let id = env.auth0.insert_connection(json!({"name": "contoso-entra", "strategy": "waad", "options": {"client_id": "x"}}));
    let clients = format!("/api/v2/connections/{id}/clients");
    env.auth0.kit().faults().push(Fault::endless_pages().on(RequestMatch::any().method(Method::GET).path(&clients)).forever());
    let spec = common::connection_spec("auth0", |spec| {
        spec.auth0 =
            Some(Auth0ConnectionSpec { name: "contoso-entra".into(), enabled_clients: vec!["web-app".into()], ..Default::default() })
    });
    let creds = common::Creds::new(&Fingerprinter::new(b"k".to_vec()), "azure-secret-value");

    // Without a cap the client would follow the cursors for ever; with it the sync fails clearly.
    let request = common::request(&spec, &creds, Some(&id), None, false);
    let sync = broker.sync(&request);
    let err = tokio::time::timeout(Duration::from_secs(60), sync).await.expect("the page cap ends the listing").unwrap_err();
    assert!(matches!(err, BrokerError::Unexpected(ref m) if m.contains("20 pages of 100")), "{err:?}");
    assert_eq!(env.auth0.kit().log().count(&RequestMatch::any().method(Method::GET).path(&clients)), AUTH0_MAX_CLIENT_PAGES);
    assert_eq!(
        env.auth0.kit().log().count(&RequestMatch::any().method(Method::PATCH).path(&clients)),
        0,
        "no client is enabled on a truncated list"
    );
}
