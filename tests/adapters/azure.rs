//! Adapter tests of the operator's Azure client (`AzureClient::validate`, `discover`,
//! `request_token`) over real HTTPS against the Entra ID emulator: every credential reason the
//! client can produce, the validation cache, and that no error ever shows the secret.
//!
//! Two answers the emulator cannot be made to give for input the client lets through (a
//! server-side AADSTS900023, and an error that echoes the secret) come from a small stub server
//! on the same test CA.

use std::time::{Duration, Instant};

use axum::{
    Json, Router,
    body::Bytes,
    extract::Path,
    http::{Method, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use idp_bridge::{
    azure::{AzureClient, AzureError, GraphError, Validation, ValidationRequest},
    crd::{
        conditions::Reason,
        connection::{AzureCloud, ValidationMode},
    },
    secret::{Fingerprinter, SecretValue},
    upstream::{EndpointOverrides, TransportError, Upstream},
};
use idp_bridge_devenv::{
    azure::{AzureCloud as EmulatedCloud, AzureEmulator},
    kit::{Fault, RequestMatch},
    tls::{TestCa, install_crypto_provider, serve_tls},
};
use jiff::{SignedDuration, Timestamp};
use serde_json::json;
use tempfile::NamedTempFile;

const PUBLIC_LOGIN: &str = "login.microsoftonline.com";
const PUBLIC_GRAPH: &str = "graph.microsoft.com";
const USGOV_LOGIN: &str = "login.microsoftonline.us";
const CHINA_LOGIN: &str = "login.partner.microsoftonline.cn";
const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const DOMAIN: &str = "contoso.onmicrosoft.com";
const CLIENT: &str = "11111111-2222-3333-4444-555555555555";
/// The registered secret, and the value no error text may ever contain.
const CANARY: &str = "cAn8Q~canary-secret-value-must-not-leak-42";
const HOUR: Duration = Duration::from_secs(3600);

/// One emulator, the operator's client pointed at it, and the CA file both trust.
struct Env {
    emu: AzureEmulator,
    client: AzureClient,
    overrides: EndpointOverrides,
    ca_file: NamedTempFile,
    /// keyId of the registered secret (the portal's "Secret ID").
    key_id: String,
    fingerprints: Fingerprinter,
}

/// A public-cloud emulator with one tenant (GUID plus two domains), one app and the canary secret.
/// The US Government login host is mapped to it as well, to play a tenant asked in the wrong
/// cloud; no test ever reaches a real host.
fn env() -> Env {
    env_with(EmulatedCloud::default(), &[PUBLIC_LOGIN, PUBLIC_GRAPH, USGOV_LOGIN])
}

/// An emulator naming `cloud`'s hosts in its answers, reachable under each of `hosts`.
fn env_with(cloud: EmulatedCloud, hosts: &[&str]) -> Env {
    install_crypto_provider();
    let ca = TestCa::new();
    let ca_file = NamedTempFile::new().unwrap();
    ca.write_pem(ca_file.path()).unwrap();
    let emu = AzureEmulator::start_cloud(&ca, cloud).unwrap();
    let mut overrides = EndpointOverrides::default();
    for host in hosts {
        overrides.insert(host, emu.base_url());
    }
    emu.add_tenant(TENANT, &[DOMAIN, "contoso.com"]);
    emu.add_app(TENANT, CLIENT);
    let key_id = emu.add_secret(TENANT, CLIENT, CANARY, Timestamp::now() + SignedDuration::from_hours(24 * 180));
    let client = AzureClient::new(upstream(&overrides, &ca_file));
    Env { emu, client, overrides, ca_file, key_id, fingerprints: Fingerprinter::new(b"test-key".to_vec()) }
}

fn upstream(overrides: &EndpointOverrides, ca_file: &NamedTempFile) -> Upstream {
    Upstream::new(overrides.clone(), Some(ca_file.path()), Duration::from_secs(5)).unwrap()
}

impl Env {
    /// A client with its own connection pool and an empty cache.
    fn fresh_client(&self) -> AzureClient {
        AzureClient::new(upstream(&self.overrides, &self.ca_file))
    }

    /// (discovery, token, graph) requests the emulator has answered.
    fn seen(&self) -> (usize, usize, usize) {
        (self.emu.discovery_requests(), self.emu.token_requests(), self.emu.graph_requests())
    }

    async fn validate(&self, tenant: &str, secret: &str, mode: ValidationMode) -> Result<Validation, AzureError> {
        validate_with(&self.client, &self.fingerprints, AzureCloud::AzurePublic, tenant, CLIENT, secret, mode, HOUR).await
    }
}

#[allow(clippy::too_many_arguments, reason = "spells out one ValidationRequest")]
async fn validate_with(
    client: &AzureClient,
    fingerprints: &Fingerprinter,
    cloud: AzureCloud,
    tenant: &str,
    client_id: &str,
    secret: &str,
    mode: ValidationMode,
    ttl: Duration,
) -> Result<Validation, AzureError> {
    let secret = SecretValue::new(secret);
    let fingerprint = fingerprints.fingerprint(&secret);
    let request = ValidationRequest { cloud, tenant, client_id, secret: &secret, fingerprint: &fingerprint, mode, ttl };
    client.validate(&request).await
}

/// The error's reason, after checking that none of its texts shows the canary secret.
fn reason_of(err: &AzureError) -> Reason {
    for text in [err.to_string(), format!("{err:?}"), err.advice()] {
        assert!(!text.contains(CANARY), "the secret leaked into {text:?}");
    }
    err.reason()
}

fn expect_err<T: std::fmt::Debug>(result: Result<T, AzureError>) -> AzureError {
    match result {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn valid_secret_resolves_guid_and_domain_tenants() {
    let env = env();
    for (tenant, requests) in [(TENANT.to_uppercase(), 1), (DOMAIN.to_owned(), 2), ("Contoso.COM".to_owned(), 3)] {
        let started = Timestamp::now();
        let validation = env.validate(&tenant, CANARY, ValidationMode::ClientCredentials).await.unwrap();
        assert_eq!(validation.tenant_id.as_deref(), Some(TENANT), "{tenant} resolves to the lower-case GUID");
        assert!(validation.validated_at >= started - SignedDuration::from_secs(1));
        assert_eq!(env.seen(), (requests, requests, 0), "{tenant}: one discovery and one token request each");
    }
    assert_eq!(env.emu.token_requests_for(CLIENT), 3);

    // The building blocks on their own.
    assert_eq!(env.client.discover(AzureCloud::AzurePublic, DOMAIN).await.unwrap(), TENANT);
    let token = env.client.request_token(AzureCloud::AzurePublic, TENANT, CLIENT, &SecretValue::new(CANARY)).await.unwrap();
    assert_eq!(token.value.expose().len(), 96);
    let lifetime = token.expires_at.saturating_duration_since(Instant::now());
    assert!((Duration::from_secs(3590)..=Duration::from_secs(3599)).contains(&lifetime), "{lifetime:?}");
    assert!(!format!("{token:?}").contains(token.value.expose()), "an access token never prints");
}

#[tokio::test]
async fn national_clouds_validate_against_their_own_hosts() {
    let usgov = env_with(
        EmulatedCloud { login_host: USGOV_LOGIN.into(), graph_host: "graph.microsoft.us".into() },
        &[USGOV_LOGIN, "graph.microsoft.us"],
    );
    let v = validate_with(
        &usgov.client,
        &usgov.fingerprints,
        AzureCloud::AzureUSGovernment,
        TENANT,
        CLIENT,
        CANARY,
        ValidationMode::ClientCredentials,
        HOUR,
    )
    .await
    .unwrap();
    assert_eq!(v.tenant_id.as_deref(), Some(TENANT));
    assert_eq!(usgov.emu.token_requests(), 1, "the token asked for https://graph.microsoft.us/.default");

    // China: queried at login.partner.microsoftonline.cn, the issuer names the alias
    // login.chinacloudapi.cn, which belongs to the same cloud.
    let china = env_with(
        EmulatedCloud { login_host: "login.chinacloudapi.cn".into(), graph_host: "microsoftgraph.chinacloudapi.cn".into() },
        &[CHINA_LOGIN],
    );
    let v = validate_with(
        &china.client,
        &china.fingerprints,
        AzureCloud::AzureChina,
        DOMAIN,
        CLIENT,
        CANARY,
        ValidationMode::ClientCredentials,
        HOUR,
    )
    .await
    .unwrap();
    assert_eq!(v.tenant_id.as_deref(), Some(TENANT));
}

#[tokio::test]
async fn unknown_tenant_is_tenant_not_found() {
    let env = env();
    for tenant in ["00000000-0000-0000-0000-000000000001", "fabrikam.onmicrosoft.com"] {
        let err = expect_err(env.validate(tenant, CANARY, ValidationMode::ClientCredentials).await);
        assert_eq!(reason_of(&err), Reason::TenantNotFound, "{err}");
        assert!(matches!(&err, AzureError::Aadsts { code: 90002, error, .. } if error == "invalid_tenant"), "{err:?}");
        assert!(!err.is_transient() && err.retry_after().is_none());
        assert!(err.to_string().contains(&format!("Tenant '{tenant}' not found")), "{err}");
        assert!(!err.to_string().contains("Trace ID"), "trace ids are dropped: {err}");
        assert!(err.advice().contains("azure.tenant and azure.cloud"), "{}", err.advice());
    }
    assert_eq!(env.seen(), (2, 0, 0), "no token is asked for an unresolved tenant");
    // Not cached: asking again asks Azure again.
    expect_err(env.validate("fabrikam.onmicrosoft.com", CANARY, ValidationMode::Discovery).await);
    assert_eq!(env.seen(), (3, 0, 0));
}

#[tokio::test]
async fn malformed_tenant_is_rejected_before_any_request() {
    let env = env();
    let truncated = &TENANT[..TENANT.len() - 1];
    let bad =
        ["common", "organizations", "consumers", "", truncated, "a/b", "../x", "t?x=1", "contoso.com/../evil", "x@evil.example", "%2e%2e"];
    let secret = SecretValue::new(CANARY);
    for tenant in bad {
        for mode in [ValidationMode::ClientCredentials, ValidationMode::Discovery] {
            let err = expect_err(env.validate(tenant, CANARY, mode).await);
            assert_eq!(reason_of(&err), Reason::TenantInvalid, "{tenant:?}: {err}");
            assert!(matches!(err, AzureError::Aadsts { code: 900023, .. }), "{err:?}");
            assert!(!err.is_transient());
        }
        let err = expect_err(env.client.discover(AzureCloud::AzurePublic, tenant).await);
        assert_eq!(reason_of(&err), Reason::TenantInvalid);
        let err = expect_err(env.client.request_token(AzureCloud::AzurePublic, tenant, CLIENT, &secret).await);
        assert_eq!(reason_of(&err), Reason::TenantInvalid);
    }
    assert_eq!(env.seen(), (0, 0, 0), "the emulator saw no request");

    // With nothing listening, a request would have been AzureUnreachable: none was attempted.
    env.emu.shutdown();
    let client = env.fresh_client();
    for tenant in bad {
        let err = expect_err(
            validate_with(
                &client,
                &env.fingerprints,
                AzureCloud::AzurePublic,
                tenant,
                CLIENT,
                CANARY,
                ValidationMode::ClientCredentials,
                HOUR,
            )
            .await,
        );
        assert_eq!(reason_of(&err), Reason::TenantInvalid, "{tenant:?}: {err}");
    }
}

/// Entra answers AADSTS900023 for identifiers it cannot parse. The emulator gives it only for
/// text that is neither a GUID nor a DNS name, which the client never sends (see the test above),
/// so a stub stands in for a server that rejects an identifier the client's syntax check passed.
#[tokio::test]
async fn server_side_900023_is_tenant_invalid() {
    install_crypto_provider();
    let ca = TestCa::new();
    let ca_file = NamedTempFile::new().unwrap();
    ca.write_pem(ca_file.path()).unwrap();
    let router = Router::new().route(
        "/{tenant}/v2.0/.well-known/openid-configuration",
        get(|Path(tenant): Path<String>| async move {
            aadsts_reply(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                900023,
                &format!("Specified tenant identifier '{tenant}' is neither a valid DNS name, nor a valid external domain."),
            )
        }),
    );
    let server = serve_tls(router, &ca).await.unwrap();
    let mut overrides = EndpointOverrides::default();
    overrides.insert(PUBLIC_LOGIN, server.base_url());
    let client = AzureClient::new(upstream(&overrides, &ca_file));
    let err = expect_err(client.discover(AzureCloud::AzurePublic, "contoso.onmicrosoft.c0m.example").await);
    assert_eq!(reason_of(&err), Reason::TenantInvalid, "{err}");
    assert!(matches!(&err, AzureError::Aadsts { code: 900023, error, .. } if error == "invalid_request"), "{err:?}");
    assert!(err.to_string().contains("neither a valid DNS name"), "{err}");
    assert!(!err.is_transient());
}

#[tokio::test]
async fn unknown_application_is_application_not_found() {
    let env = env();
    let other_app = "99999999-8888-7777-6666-555555555555";
    let err = expect_err(
        validate_with(
            &env.client,
            &env.fingerprints,
            AzureCloud::AzurePublic,
            DOMAIN,
            other_app,
            CANARY,
            ValidationMode::ClientCredentials,
            HOUR,
        )
        .await,
    );
    assert_eq!(reason_of(&err), Reason::ApplicationNotFound, "{err}");
    assert!(matches!(&err, AzureError::Aadsts { code: 700016, error, .. } if error == "unauthorized_client"), "{err:?}");
    assert!(err.to_string().contains(other_app), "{err}");
    assert!(err.advice().contains("azure.clientId"), "{}", err.advice());
    assert!(!err.is_transient());
    assert_eq!(env.emu.token_requests_for(other_app), 1);
}

#[tokio::test]
async fn disabled_application_is_application_disabled() {
    let env = env();
    env.emu.set_app_disabled(TENANT, CLIENT, true);
    let err = expect_err(env.validate(TENANT, CANARY, ValidationMode::ClientCredentials).await);
    assert_eq!(reason_of(&err), Reason::ApplicationDisabled, "{err}");
    assert!(matches!(err, AzureError::Aadsts { code: 7000112, .. }), "{err:?}");
    assert!(!err.is_transient());
    // Discovery alone cannot tell; re-enabled, the same secret is valid again.
    assert!(env.validate(TENANT, CANARY, ValidationMode::Discovery).await.is_ok());
    env.emu.set_app_disabled(TENANT, CLIENT, false);
    assert!(env.validate(TENANT, CANARY, ValidationMode::ClientCredentials).await.is_ok());
}

#[tokio::test]
async fn wrong_secret_and_pasted_key_id_are_invalid_secret() {
    let env = env();
    for wrong in ["abc8Q~not-the-registered-value-0123456789", env.key_id.as_str(), &CANARY[..CANARY.len() - 1]] {
        let err = expect_err(env.validate(TENANT, wrong, ValidationMode::ClientCredentials).await);
        assert_eq!(reason_of(&err), Reason::InvalidSecret, "{err}");
        assert!(matches!(&err, AzureError::Aadsts { code: 7000215, error, .. } if error == "invalid_client"), "{err:?}");
        assert!(err.advice().contains("not its Secret ID"), "{}", err.advice());
        assert!(!err.to_string().contains(wrong), "the sent value is never shown: {err}");
        assert!(!err.is_transient() && err.retry_after().is_none());
    }
    // A failure is not cached: the same wrong value is tried again.
    let before = env.emu.token_requests();
    expect_err(env.validate(TENANT, &env.key_id, ValidationMode::ClientCredentials).await);
    assert_eq!(env.emu.token_requests(), before + 1);
}

#[tokio::test]
async fn expired_secret_is_secret_expired() {
    let env = env();
    let expired = "old8Q~expired-secret-value-0123456789abcd";
    env.emu.add_secret(TENANT, CLIENT, expired, Timestamp::now() - SignedDuration::from_hours(1));
    let err = expect_err(env.validate(DOMAIN, expired, ValidationMode::ClientCredentials).await);
    assert_eq!(err.reason(), Reason::SecretExpired, "{err}");
    assert!(matches!(err, AzureError::Aadsts { code: 7000222, .. }), "{err:?}");
    assert!(!err.to_string().contains(expired) && !err.advice().contains(expired));
    assert!(err.advice().contains("expired"), "{}", err.advice());
    assert!(!err.is_transient());
    // The live secret of the same app is still fine.
    assert!(env.validate(DOMAIN, CANARY, ValidationMode::ClientCredentials).await.is_ok());
}

#[tokio::test]
async fn throttling_is_transient_with_retry_after() {
    let env = env();
    // Discovery throttled.
    env.emu.throttle_next(1, 60);
    let err = expect_err(env.validate(TENANT, CANARY, ValidationMode::ClientCredentials).await);
    assert_eq!(reason_of(&err), Reason::AzureThrottled, "{err}");
    assert!(matches!(err, AzureError::Throttled { .. }), "{err:?}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(60)));
    assert!(err.is_transient());
    assert_eq!(env.seen(), (1, 0, 0));
    // The token request throttled.
    env.emu.throttle_next(1, 7);
    let err = expect_err(env.client.request_token(AzureCloud::AzurePublic, TENANT, CLIENT, &SecretValue::new(CANARY)).await);
    assert_eq!(reason_of(&err), Reason::AzureThrottled);
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
    assert!(err.is_transient());
    // Once the throttling ends, the same request succeeds. This client still honours the 60 s
    // block of the throttled discovery (see `a_throttled_app_sees_no_request_until_retry_after_ends`);
    // one without that block shows Azure answers again.
    let fresh = env.fresh_client();
    validate_with(&fresh, &env.fingerprints, AzureCloud::AzurePublic, TENANT, CLIENT, CANARY, ValidationMode::ClientCredentials, HOUR)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_throttled_app_sees_no_request_until_retry_after_ends() {
    let env = env();
    let other_client = "99999999-2222-3333-4444-555555555555";
    env.emu.add_app(TENANT, other_client);
    env.emu.add_secret(TENANT, other_client, CANARY, Timestamp::now() + SignedDuration::from_hours(24));
    env.emu.kit().faults().push(Fault::status(429).on(RequestMatch::any().method(Method::POST)).retry_after(30));
    let err = expect_err(env.validate(TENANT, CANARY, ValidationMode::ClientCredentials).await);
    assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));
    let requests = env.emu.kit().log().entries().len();

    // Every later reconcile (whatever triggered it) is answered from the block, counting down.
    for _ in 0..5 {
        let err = expect_err(env.validate(TENANT, CANARY, ValidationMode::ClientCredentials).await);
        assert_eq!(reason_of(&err), Reason::AzureThrottled);
        assert!(err.is_transient());
        let left = err.retry_after().expect("the time left");
        assert!(left <= Duration::from_secs(30) && left > Duration::from_secs(20), "{left:?}");
    }
    let err_text = expect_err(env.validate(TENANT, CANARY, ValidationMode::ClientCredentials).await).advice();
    assert_eq!(env.emu.kit().log().entries().len(), requests, "nothing was sent during the block");
    assert_eq!(expect_err(env.validate(TENANT, CANARY, ValidationMode::ClientCredentials).await).advice(), err_text, "a stable message");

    // Another app of the tenant is not blocked.
    validate_with(
        &env.client,
        &env.fingerprints,
        AzureCloud::AzurePublic,
        TENANT,
        other_client,
        CANARY,
        ValidationMode::ClientCredentials,
        HOUR,
    )
    .await
    .unwrap();

    // A block ends with its Retry-After.
    env.emu.kit().faults().push(Fault::status(429).on(RequestMatch::any().method(Method::POST)).retry_after(1));
    let short = |client| {
        validate_with(
            &env.client,
            &env.fingerprints,
            AzureCloud::AzurePublic,
            TENANT,
            client,
            "another-value",
            ValidationMode::ClientCredentials,
            HOUR,
        )
    };
    assert_eq!(expect_err(short(other_client).await).reason(), Reason::AzureThrottled);
    assert_eq!(expect_err(short(other_client).await).reason(), Reason::AzureThrottled);
    let before = env.emu.token_requests();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(expect_err(short(other_client).await).reason(), Reason::InvalidSecret, "Azure is asked again");
    assert_eq!(env.emu.token_requests(), before + 1);
}

#[tokio::test]
async fn graph_throttling_is_honoured_and_graph_outages_read_the_same() {
    let env = env();
    env.emu.set_graph_read_all(TENANT, CLIENT, true);
    let secret = SecretValue::new(CANARY);
    let fingerprint = env.fingerprints.fingerprint(&secret);
    let request = graph_request(&secret, &fingerprint);
    env.client.validate(&request).await.unwrap();

    // Graph down: each answer carries a fresh request-id and date, the error reads the same.
    env.emu.kit().faults().push(Fault::status(503).on(RequestMatch::any().under("/v1.0")).times(2));
    let first = env.client.secret_expiry(&request, TENANT).await.unwrap_err();
    let second = env.client.secret_expiry(&request, TENANT).await.unwrap_err();
    assert_eq!(first.reason(), Reason::GraphUnreachable, "{first}");
    assert!(first.is_transient());
    assert_eq!(first.to_string(), second.to_string());
    assert!(!first.to_string().contains("request-id"), "{first}");

    // Graph throttling: nothing goes to Graph until its Retry-After ends.
    env.emu.kit().faults().push(Fault::status(429).on(RequestMatch::any().under("/v1.0")).retry_after(30));
    assert_eq!(env.client.secret_expiry(&request, TENANT).await.unwrap_err().reason(), Reason::GraphUnreachable);
    let graph = env.emu.graph_requests();
    for _ in 0..3 {
        match env.client.secret_expiry(&request, TENANT).await.unwrap_err() {
            GraphError::Throttled { retry_after: Some(left) } => assert!(left <= Duration::from_secs(30) && left > Duration::from_secs(20)),
            other => panic!("expected the block, got {other:?}"),
        }
    }
    assert_eq!(env.emu.graph_requests(), graph, "nothing was sent during the block");
}

#[tokio::test]
async fn a_new_validation_reads_graph_again() {
    let env = env();
    env.emu.set_graph_read_all(TENANT, CLIENT, true);
    let secret = SecretValue::new(CANARY);
    let fingerprint = env.fingerprints.fingerprint(&secret);
    let mut request = graph_request(&secret, &fingerprint);
    request.ttl = Duration::from_secs(2);
    let validation = env.client.validate(&request).await.unwrap();
    let trusted_until = validation.trusted_until.expect("a cached validation says until when");
    assert!(trusted_until > validation.validated_at && trusted_until <= validation.validated_at + SignedDuration::from_secs(2));
    // The expiry is read a second after the validation (a reconcile that came later), so its
    // entry would outlive the validation's.
    tokio::time::sleep(Duration::from_secs(1)).await;
    env.client.secret_expiry(&request, TENANT).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let graph = env.emu.graph_requests();
    let (_, tokens, _) = env.seen();
    env.client.validate(&request).await.unwrap();
    assert_eq!(env.emu.token_requests(), tokens + 1, "the validation ran out and was asked again");
    env.client.secret_expiry(&request, TENANT).await.unwrap();
    assert_eq!(env.emu.graph_requests(), graph + 1, "the expiry is read again with it, not a whole interval later");
}

#[tokio::test]
async fn server_errors_are_unreachable_and_transient() {
    let env = env();
    for status in [503, 500, 502] {
        env.emu.fail_next(1, status);
        let err = expect_err(env.validate(TENANT, CANARY, ValidationMode::ClientCredentials).await);
        assert_eq!(reason_of(&err), Reason::AzureUnreachable, "{status}: {err}");
        assert!(err.is_transient() && err.retry_after().is_none(), "{status}");
    }
    // On the token request.
    env.emu.fail_next(1, 503);
    let err = expect_err(env.client.request_token(AzureCloud::AzurePublic, TENANT, CLIENT, &SecretValue::new(CANARY)).await);
    assert_eq!(reason_of(&err), Reason::AzureUnreachable);
    assert!(err.is_transient());
    assert!(env.validate(TENANT, CANARY, ValidationMode::ClientCredentials).await.is_ok());
}

#[tokio::test]
async fn shut_down_emulator_is_unreachable() {
    let env = env();
    assert!(env.validate(TENANT, CANARY, ValidationMode::Discovery).await.is_ok());
    env.emu.shutdown();
    // The listener closes once the server task is dropped, on the runtime's next turn.
    tokio::task::yield_now().await;
    // A fresh client opens a new connection, which is refused.
    let err = expect_err(
        validate_with(
            &env.fresh_client(),
            &env.fingerprints,
            AzureCloud::AzurePublic,
            TENANT,
            CLIENT,
            CANARY,
            ValidationMode::ClientCredentials,
            HOUR,
        )
        .await,
    );
    assert_eq!(reason_of(&err), Reason::AzureUnreachable, "{err}");
    assert!(matches!(err, AzureError::Unreachable(TransportError::Connect(_))), "{err:?}");
    assert!(err.is_transient());
    // The client that had a pooled connection fails as well (closed by the server).
    let err = expect_err(env.validate(DOMAIN, CANARY, ValidationMode::ClientCredentials).await);
    assert!(matches!(err, AzureError::Unreachable(_)), "{err:?}");
    assert_eq!(reason_of(&err), Reason::AzureUnreachable);
}

#[tokio::test]
async fn issuer_of_another_cloud_is_wrong_cloud() {
    // The US Government login host points at an emulator whose issuer is the public login host.
    let env = env();
    let err = expect_err(
        validate_with(
            &env.client,
            &env.fingerprints,
            AzureCloud::AzureUSGovernment,
            TENANT,
            CLIENT,
            CANARY,
            ValidationMode::ClientCredentials,
            HOUR,
        )
        .await,
    );
    assert_eq!(reason_of(&err), Reason::WrongCloud, "{err}");
    assert!(matches!(&err, AzureError::IssuerMismatch { host, .. } if host == PUBLIC_LOGIN), "{err:?}");
    assert!(err.advice().contains("azure.cloud"), "{}", err.advice());
    assert!(!err.is_transient());
    assert_eq!(env.seen(), (1, 0, 0), "the secret is not sent to a host of the wrong cloud");
    // Discovery mode stops at the same check.
    let err = expect_err(env.client.discover(AzureCloud::AzureUSGovernment, DOMAIN).await);
    assert_eq!(reason_of(&err), Reason::WrongCloud);

    // Asked directly for a US Government Graph token, the public service does not know the
    // resource (AADSTS500011), which is also the wrong cloud.
    let err = expect_err(env.client.request_token(AzureCloud::AzureUSGovernment, TENANT, CLIENT, &SecretValue::new(CANARY)).await);
    assert_eq!(reason_of(&err), Reason::WrongCloud, "{err}");
    assert!(matches!(err, AzureError::Aadsts { code: 500011, .. }), "{err:?}");
}

#[tokio::test]
async fn successes_are_cached_per_fingerprint_and_mode() {
    let env = env();
    assert!(env.validate(TENANT, CANARY, ValidationMode::ClientCredentials).await.is_ok());
    assert_eq!(env.seen(), (1, 1, 0));
    // Same tenant, client and fingerprint (case differences ignored): from cache.
    for _ in 0..3 {
        let v = env.validate(&TENANT.to_uppercase(), CANARY, ValidationMode::ClientCredentials).await.unwrap();
        assert_eq!(v.tenant_id.as_deref(), Some(TENANT));
    }
    assert_eq!(env.seen(), (1, 1, 0), "cache hits make no request");

    // A different secret (fingerprint) is asked for.
    let second = "new8Q~rotated-secret-value-0123456789abcd";
    env.emu.add_secret(TENANT, CLIENT, second, Timestamp::now() + SignedDuration::from_hours(24));
    assert!(env.validate(TENANT, second, ValidationMode::ClientCredentials).await.is_ok());
    assert_eq!(env.seen(), (2, 2, 0));

    // Discovery mode resolves the tenant and never sends the secret; it is cached too.
    let v = env.validate(DOMAIN, "never-sent", ValidationMode::Discovery).await.unwrap();
    assert_eq!(v.tenant_id.as_deref(), Some(TENANT));
    assert!(env.validate(DOMAIN, "never-sent", ValidationMode::Discovery).await.is_ok());
    assert_eq!(env.seen(), (3, 2, 0));

    // Mode None asks nothing, whatever the tenant form.
    let v = env.validate(&TENANT.to_uppercase(), "anything", ValidationMode::None).await.unwrap();
    assert_eq!(v.tenant_id.as_deref(), Some(TENANT));
    let v = env.validate(DOMAIN, "anything", ValidationMode::None).await.unwrap();
    assert_eq!(v.tenant_id, None, "a domain is not resolved without discovery");
    assert_eq!(env.seen(), (3, 2, 0));

    // A zero TTL is never trusted.
    for _ in 0..2 {
        validate_with(
            &env.client,
            &env.fingerprints,
            AzureCloud::AzurePublic,
            DOMAIN,
            CLIENT,
            CANARY,
            ValidationMode::ClientCredentials,
            Duration::ZERO,
        )
        .await
        .unwrap();
    }
    assert_eq!(env.seen(), (5, 4, 0));

    // Mode None needs no Azure at all.
    env.emu.shutdown();
    let client = env.fresh_client();
    let v = validate_with(&client, &env.fingerprints, AzureCloud::AzurePublic, TENANT, CLIENT, CANARY, ValidationMode::None, HOUR)
        .await
        .unwrap();
    assert_eq!(v.tenant_id.as_deref(), Some(TENANT));
    // And a cached success survives an outage until its TTL ends.
    assert!(env.validate(TENANT, CANARY, ValidationMode::ClientCredentials).await.is_ok());
}

/// Answers discovery for [`TENANT`] and echoes the posted secret back in token errors, shaped by
/// the client id: an AADSTS body, a non-AADSTS JSON body and a plain-text 5xx.
fn echo_router() -> Router {
    async fn discovery() -> Response {
        Json(json!({
            "issuer": format!("https://{PUBLIC_LOGIN}/{TENANT}/v2.0"),
            "token_endpoint": format!("https://{PUBLIC_LOGIN}/{TENANT}/oauth2/v2.0/token"),
        }))
        .into_response()
    }
    async fn token(body: Bytes) -> Response {
        let form: std::collections::HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
        let secret = form.get("client_secret").cloned().unwrap_or_default();
        match form.get("client_id").map(String::as_str) {
            Some("echo-aadsts") => aadsts_reply(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7000215,
                &format!("Invalid client secret provided: '{secret}' is not the secret of app 'x'."),
            ),
            Some("echo-json") => {
                (StatusCode::BAD_REQUEST, Json(json!({"error": "invalid_client", "error_description": format!("bad secret {secret}")})))
                    .into_response()
            }
            Some("echo-throttle") => (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "5")], format!("slow down {secret}")).into_response(),
            // The secret where a 200-character cut falls inside it.
            Some("echo-straddle") => (StatusCode::BAD_GATEWAY, format!("{}{secret} trailing", "x".repeat(190))).into_response(),
            // The secret URL-encoded, as a proxy logging the form might quote it.
            Some("echo-encoded") => {
                let encoded: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
                (StatusCode::BAD_GATEWAY, format!("upstream rejected client_secret={encoded}")).into_response()
            }
            _ => (StatusCode::BAD_GATEWAY, format!("upstream rejected client_secret={secret}")).into_response(),
        }
    }
    Router::new().route("/{tenant}/v2.0/.well-known/openid-configuration", get(discovery)).route("/{tenant}/oauth2/v2.0/token", post(token))
}

fn aadsts_reply(status: StatusCode, error: &str, code: u32, message: &str) -> Response {
    let body = json!({
        "error": error,
        "error_description": format!("AADSTS{code}: {message}\r\nTrace ID: 1\r\nCorrelation ID: 2\r\nTimestamp: 2026-01-01 00:00:00Z"),
        "error_codes": [code],
    });
    (status, Json(body)).into_response()
}

#[tokio::test]
async fn no_error_ever_shows_the_secret() {
    // Every failure the emulator can produce, with the canary as the secret sent.
    let env = env();
    let unknown_app = "99999999-8888-7777-6666-555555555555";
    let mut errors = Vec::new();
    let run = |tenant: &'static str, client_id: &'static str, cloud: AzureCloud| {
        let (client, fingerprints) = (&env.client, &env.fingerprints);
        async move {
            validate_with(client, fingerprints, cloud, tenant, client_id, CANARY, ValidationMode::ClientCredentials, Duration::ZERO).await
        }
    };
    errors.push(expect_err(run("fabrikam.onmicrosoft.com", CLIENT, AzureCloud::AzurePublic).await));
    errors.push(expect_err(run("not a tenant", CLIENT, AzureCloud::AzurePublic).await));
    errors.push(expect_err(run(TENANT, unknown_app, AzureCloud::AzurePublic).await));
    errors.push(expect_err(run(TENANT, CLIENT, AzureCloud::AzureUSGovernment).await));
    env.emu.throttle_next(1, 1);
    errors.push(expect_err(run(TENANT, CLIENT, AzureCloud::AzurePublic).await));
    // The client honours the Retry-After: the next request waits for it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    env.emu.fail_next(1, 500);
    errors.push(expect_err(run(TENANT, CLIENT, AzureCloud::AzurePublic).await));
    env.emu.set_app_disabled(TENANT, CLIENT, true);
    errors.push(expect_err(run(TENANT, CLIENT, AzureCloud::AzurePublic).await));
    env.emu.set_app_disabled(TENANT, CLIENT, false);
    env.emu.remove_secret(TENANT, CLIENT, &env.key_id);
    errors.push(expect_err(run(TENANT, CLIENT, AzureCloud::AzurePublic).await));
    env.emu.add_secret(TENANT, CLIENT, CANARY, Timestamp::now() - SignedDuration::from_hours(1));
    errors.push(expect_err(run(TENANT, CLIENT, AzureCloud::AzurePublic).await));
    env.emu.shutdown();
    errors.push(expect_err(
        validate_with(
            &env.fresh_client(),
            &env.fingerprints,
            AzureCloud::AzurePublic,
            TENANT,
            CLIENT,
            CANARY,
            ValidationMode::ClientCredentials,
            HOUR,
        )
        .await,
    ));
    let reasons: Vec<Reason> = errors.iter().map(reason_of).collect();
    assert_eq!(
        reasons,
        [
            Reason::TenantNotFound,
            Reason::TenantInvalid,
            Reason::ApplicationNotFound,
            Reason::WrongCloud,
            Reason::AzureThrottled,
            Reason::AzureUnreachable,
            Reason::ApplicationDisabled,
            Reason::InvalidSecret,
            Reason::SecretExpired,
            Reason::AzureUnreachable,
        ]
    );

    // A server that echoes what it was sent: the value is scrubbed from every kind of answer.
    install_crypto_provider();
    let ca = TestCa::new();
    let ca_file = NamedTempFile::new().unwrap();
    ca.write_pem(ca_file.path()).unwrap();
    let server = serve_tls(echo_router(), &ca).await.unwrap();
    let mut overrides = EndpointOverrides::default();
    overrides.insert(PUBLIC_LOGIN, server.base_url());
    let client = AzureClient::new(upstream(&overrides, &ca_file));
    let fingerprints = Fingerprinter::new(b"k".to_vec());
    for (client_id, reason) in [
        ("echo-aadsts", Reason::InvalidSecret),
        ("echo-json", Reason::InvalidSecret),
        ("echo-throttle", Reason::AzureThrottled),
        ("echo-text", Reason::AzureUnreachable),
    ] {
        let err = expect_err(
            validate_with(
                &client,
                &fingerprints,
                AzureCloud::AzurePublic,
                TENANT,
                client_id,
                CANARY,
                ValidationMode::ClientCredentials,
                HOUR,
            )
            .await,
        );
        assert_eq!(reason_of(&err), reason, "{client_id}: {err}");
        if client_id != "echo-throttle" {
            assert!(err.to_string().contains("[redacted]"), "{client_id}: the echo is still explained: {err}");
        }
    }
}

#[tokio::test]
async fn echoed_secrets_are_scrubbed_before_the_message_is_cut() {
    install_crypto_provider();
    let ca = TestCa::new();
    let ca_file = NamedTempFile::new().unwrap();
    ca.write_pem(ca_file.path()).unwrap();
    let server = serve_tls(echo_router(), &ca).await.unwrap();
    let mut overrides = EndpointOverrides::default();
    overrides.insert(PUBLIC_LOGIN, server.base_url());
    let client = AzureClient::new(upstream(&overrides, &ca_file));
    let fingerprints = Fingerprinter::new(b"k".to_vec());
    let encoded: String = url::form_urlencoded::byte_serialize(CANARY.as_bytes()).collect();
    for client_id in ["echo-straddle", "echo-encoded"] {
        let err = expect_err(
            validate_with(
                &client,
                &fingerprints,
                AzureCloud::AzurePublic,
                TENANT,
                client_id,
                CANARY,
                ValidationMode::ClientCredentials,
                HOUR,
            )
            .await,
        );
        assert_eq!(reason_of(&err), Reason::AzureUnreachable, "{client_id}: {err}");
        let text = format!("{err} {err:?}");
        assert!(!text.contains(&CANARY[..10]) && !text.contains(&encoded[..10]), "{client_id}: no part of the secret survives: {text}");
    }
}

/// A ClientCredentials request for the canary secret, as the controller builds it.
fn graph_request<'a>(secret: &'a SecretValue, fingerprint: &'a str) -> ValidationRequest<'a> {
    ValidationRequest {
        cloud: AzureCloud::AzurePublic,
        tenant: DOMAIN,
        client_id: CLIENT,
        secret,
        fingerprint,
        mode: ValidationMode::ClientCredentials,
        ttl: HOUR,
    }
}

#[tokio::test]
async fn graph_expiry_matches_the_held_secret_by_hint() {
    let env = env();
    let secret = SecretValue::new(CANARY);
    let fingerprint = env.fingerprints.fingerprint(&secret);
    let request = graph_request(&secret, &fingerprint);
    env.client.validate(&request).await.unwrap();

    // Without Application.Read.All: a specific error naming the permission.
    let err = env.client.secret_expiry(&request, TENANT).await.unwrap_err();
    assert_eq!(err.reason(), Reason::GraphPermissionMissing);
    assert!(err.to_string().contains("Application.Read.All"));

    env.emu.set_graph_read_all(TENANT, CLIENT, true);
    let tokens = env.emu.token_requests();
    let found = env.client.secret_expiry(&request, TENANT).await.unwrap();
    assert_eq!(found.key_id, env.key_id);
    assert_eq!(found.same_hint, 1);
    assert!(found.expires_at > Timestamp::now() + SignedDuration::from_hours(24 * 179));
    assert_eq!(env.emu.token_requests(), tokens, "the validation's token is reused");

    // Cached for the refresh interval.
    let graph = env.emu.graph_requests();
    env.client.secret_expiry(&request, TENANT).await.unwrap();
    assert_eq!(env.emu.graph_requests(), graph);
}

#[tokio::test]
async fn graph_expiry_with_shared_hints_and_foreign_values() {
    let env = env();
    env.emu.set_graph_read_all(TENANT, CLIENT, true);
    // A second secret with the same first three characters that expires sooner.
    let sooner = Timestamp::now() + SignedDuration::from_hours(24 * 10);
    let sooner_key = env.emu.add_secret(TENANT, CLIENT, &format!("{}-another", &CANARY[..3]), sooner);
    let secret = SecretValue::new(CANARY);
    let fingerprint = env.fingerprints.fingerprint(&secret);
    let request = graph_request(&secret, &fingerprint);
    env.client.validate(&request).await.unwrap();
    let found = env.client.secret_expiry(&request, TENANT).await.unwrap();
    assert_eq!((found.same_hint, found.key_id.as_str()), (2, sooner_key.as_str()));
    assert_eq!(found.expires_at.as_second(), sooner.as_second());

    // A value whose hint matches nothing (Azure accepted it, say, for another app's reasons).
    let stranger = SecretValue::new("zzz-not-one-of-these");
    let fingerprint = env.fingerprints.fingerprint(&stranger);
    let err = env.fresh_client().secret_expiry(&graph_request(&stranger, &fingerprint), TENANT).await.unwrap_err();
    assert!(matches!(err.reason(), Reason::SecretNotInApplication | Reason::GraphError), "{err}");
    assert!(!err.to_string().contains("zzz-not"));
}
