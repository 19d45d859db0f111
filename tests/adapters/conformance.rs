//! The broker contract, written once and run against every broker's emulator (in the manner of
//! cert-manager's `RunConformance`): each case is a generic function over a [`Fixture`], and
//! [`conformance!`] instantiates one `#[tokio::test]` per (case, broker).
//!
//! A fixture knows how to start its broker's emulator, build the operator's `BrokerClient`, make
//! the connection spec, read back what the broker holds, tamper with it, make a same-named object
//! for adoption, and inject faults. Faults the emulators do not offer (an answer that never
//! comes; an error body that echoes secrets) come from small stub servers here, which any broker
//! host can be pointed at through the endpoint overrides.
//!
//! What stays in the per-broker files is behaviour only one broker has (SCIM, the one-connector
//! rule, regions, masked secrets, enabled clients and the options merge, exact request shapes).

use crate::common::{self, ADOPTING, Creds, FRESH, deletion, request, request_as};

use std::{ops::RangeInclusive, time::Duration};

use axum::{
    Json, Router,
    http::{HeaderMap, StatusCode, Uri},
    response::IntoResponse,
};
use idp_bridge::{
    broker::{
        BrokerClient, BrokerError, DeleteRequest, SyncOutcome,
        ownership::{Claim, Ownership},
    },
    crd::{
        BrokerProvider,
        broker::{
            Auth0BrokerSpec, ClientCredentialsSecretRef, CloudflareBrokerSpec, LogtoBrokerSpec, TokenSecretRef, UnifiedBrokerSpec,
            UnifiedRegion,
        },
        conditions::Reason,
        connection::{Auth0ConnectionSpec, AzureAdConnectionSpec, CloudflareConnectionSpec, LogtoConnectionSpec, UnifiedConnectionSpec},
    },
    secret::{Fingerprinter, SecretValue},
    upstream::{EndpointOverrides, TransportError, Upstream},
};
use idp_bridge_devenv::{
    auth0::Auth0Emulator,
    cloudflare::CloudflareEmulator,
    logto::LogtoEmulator,
    tls::{ServerHandle, TestCa, install_crypto_provider, serve_tls},
    unified::UnifiedEmulator,
};
use serde_json::{Value, json};
use tempfile::NamedTempFile;
use url::Url;

/// The Entra client secret a sync pushes. It has characters that URL-encoding and JSON-escaping
/// change, so an echo in any of those forms is told apart from the plain value.
const CANARY: &str = r#"cAn8Q~conformance "canary"\secret/with+specials=0123456789"#;
/// The secret a rotation pushes.
const ROTATED: &str = "new8Q~conformance-rotated-secret-0123456789";
/// The client timeout of the stalled-broker case; the stub never answers.
const SHORT_TIMEOUT: Duration = Duration::from_millis(400);
const OBSERVE: bool = true;
const FULL: bool = false;

/// One broker, as the contract cases drive it.
trait Fixture: Sized {
    /// The host the operator's client calls; the overrides point it at the emulator or a stub.
    const HOST: &'static str;
    /// The operator's management credential (secret or token); no error text may show it.
    const MANAGEMENT_SECRET: &'static str;

    /// Starts the emulator on `ca`, with the operator's credentials registered.
    fn start(ca: &TestCa) -> Self;
    fn base_url(&self) -> Url;
    /// The broker spec, as the operator builds its client from it.
    fn provider() -> BrokerProvider;
    /// The operator's management client id (empty for token-based brokers).
    const MANAGEMENT_CLIENT_ID: &'static str = "";
    /// The connection, with this broker's block.
    fn spec() -> AzureAdConnectionSpec;

    /// The client secret the broker object holds.
    fn held_secret(&self, id: &str) -> Option<String>;
    fn exists(&self, id: &str) -> bool;
    /// How many objects the broker holds.
    fn objects(&self) -> usize;
    /// Changes a managed, non-secret field behind the operator's back.
    fn tamper(&self, id: &str);
    fn is_tampered(&self, id: &str) -> bool;
    /// Makes the connection's object outside the operator (same name, type and application),
    /// holding `secret`; returns its id.
    fn insert_same_named(&self, secret: &str) -> String;

    /// The next request of any kind answers `status`.
    fn fail_next(&self, status: u16);
    /// Makes an object that is not this connection's (another name or application).
    fn insert_unrelated(&self) -> String;
    /// The next request answers 429; returns the range the first wait must be in (the broker
    /// announces it as a reset time or a `Retry-After`).
    fn rate_limit_next(&self) -> RangeInclusive<Duration>;
    /// Stops the emulator: nothing listens on its port any more.
    fn shutdown(&self);
    /// Successful writes so far, from the emulator's request log.
    fn writes(&self) -> usize;
    /// Requests so far as (method, path), from the emulator's request log.
    fn requests(&self) -> Vec<(String, String)>;

    /// An error body in this broker's shape, carrying `message`.
    fn error_body(message: &str) -> Value;
}

/// A started fixture with the operator's client and the test's fingerprints.
struct Env<F: Fixture> {
    broker: F,
    ca: TestCa,
    ca_file: NamedTempFile,
    client: BrokerClient,
    spec: AzureAdConnectionSpec,
    fingerprints: Fingerprinter,
}

impl<F: Fixture> Env<F> {
    fn start() -> Self {
        install_crypto_provider();
        let ca = TestCa::new();
        let ca_file = NamedTempFile::new().unwrap();
        ca.write_pem(ca_file.path()).unwrap();
        let broker = F::start(&ca);
        let client = client::<F>(&upstream::<F>(broker.base_url(), &ca_file, Duration::from_secs(5)));
        Env { broker, ca, ca_file, client, spec: F::spec(), fingerprints: Fingerprinter::new(b"conformance-key".to_vec()) }
    }

    fn creds(&self, secret: &str) -> Creds {
        Creds::new(&self.fingerprints, secret)
    }

    /// A client for the same broker whose host is served from `base` instead.
    fn client_to(&self, base: Url, timeout: Duration) -> BrokerClient {
        client::<F>(&upstream::<F>(base, &self.ca_file, timeout))
    }

    async fn sync(
        &self,
        creds: &Creds,
        known_id: Option<&str>,
        synced: Option<&str>,
        observe_only: bool,
    ) -> Result<SyncOutcome, BrokerError> {
        self.client.sync(&request(&self.spec, creds, known_id, synced, observe_only)).await
    }

    /// Creates the object through a first sync; returns its id.
    async fn created(&self, creds: &Creds) -> String {
        let outcome = self.sync(creds, None, None, FULL).await.unwrap();
        assert!(outcome.wrote, "{outcome:?}");
        outcome.id.expect("an id")
    }
}

/// The operator's client for `F`, built as the controller builds it, calling through `up`.
fn client<F: Fixture>(up: &Upstream) -> BrokerClient {
    BrokerClient::build(up, &F::provider(), F::MANAGEMENT_CLIENT_ID, SecretValue::new(F::MANAGEMENT_SECRET), None)
}

fn upstream<F: Fixture>(base: Url, ca_file: &NamedTempFile, timeout: Duration) -> Upstream {
    let mut overrides = EndpointOverrides::default();
    overrides.insert(F::HOST, base);
    Upstream::new(overrides, Some(ca_file.path()), timeout).unwrap()
}

/// The error, after checking that none of its texts shows a secret in play, in any form.
fn checked<F: Fixture>(err: BrokerError) -> BrokerError {
    for text in [err.to_string(), format!("{err:?}")] {
        for secret in [CANARY, ROTATED, F::MANAGEMENT_SECRET] {
            for form in forms(secret) {
                assert!(!text.contains(&form), "a secret leaked into {text:?}");
            }
        }
    }
    err
}

fn expect_err<F: Fixture, T: std::fmt::Debug>(result: Result<T, BrokerError>) -> BrokerError {
    match result {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => checked::<F>(e),
    }
}

/// A secret as sent and as an echo may carry it: form-urlencoded, percent-encoded, JSON-escaped.
fn forms(secret: &str) -> Vec<String> {
    let form: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    let percent: String = secret
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-._~".contains(&b) { char::from(b).to_string() } else { format!("%{b:02X}") })
        .collect();
    let json = serde_json::to_string(secret).unwrap();
    vec![secret.to_owned(), form, percent, json[1..json.len() - 1].to_owned()]
}

// ---------------------------------------------------------------------------------------------
// The contract.

async fn first_sync_creates<F: Fixture>() {
    let env = Env::<F>::start();
    let creds = env.creds(CANARY);
    env.client.check().await.unwrap();
    let outcome = env.sync(&creds, None, None, FULL).await.unwrap();
    let id = outcome.id.clone().expect("an id");
    assert!(outcome.wrote && outcome.differences.iter().any(|d| d.ends_with("(created)")), "{outcome:?}");
    assert!(env.broker.exists(&id));
    assert_eq!(env.broker.held_secret(&id).as_deref(), Some(CANARY));
    assert_eq!((env.broker.objects(), env.broker.writes()), (1, 1), "one object, one write");
}

async fn steady_state_writes_nothing<F: Fixture>() {
    let env = Env::<F>::start();
    let creds = env.creds(CANARY);
    let id = env.created(&creds).await;
    let writes = env.broker.writes();
    for known_id in [Some(id.as_str()), None] {
        for observe_only in [FULL, OBSERVE] {
            let outcome = env.sync(&creds, known_id, Some(&creds.fingerprint), observe_only).await.unwrap();
            assert_eq!(outcome, SyncOutcome::existing(id.clone(), vec![], false), "{known_id:?} {observe_only}");
        }
    }
    assert_eq!(env.broker.writes(), writes, "steady state writes nothing");
}

async fn rotation_writes_once<F: Fixture>() {
    let env = Env::<F>::start();
    let (old, new) = (env.creds(CANARY), env.creds(ROTATED));
    let id = env.created(&old).await;
    let writes = env.broker.writes();
    let outcome = env.sync(&new, Some(&id), Some(&old.fingerprint), FULL).await.unwrap();
    assert!(outcome.wrote && !outcome.differences.is_empty(), "{outcome:?}");
    assert_eq!(outcome.id.as_deref(), Some(id.as_str()));
    assert_eq!(env.broker.writes(), writes + 1, "exactly one write");
    assert_eq!(env.broker.held_secret(&id).as_deref(), Some(ROTATED));
    // Settled: the next sync changes nothing.
    let outcome = env.sync(&new, Some(&id), Some(&new.fingerprint), FULL).await.unwrap();
    assert_eq!(outcome, SyncOutcome::existing(id, vec![], false));
    assert_eq!(env.broker.writes(), writes + 1);
}

async fn drift_is_reported_when_observing_and_corrected_in_full<F: Fixture>() {
    let env = Env::<F>::start();
    let creds = env.creds(CANARY);
    let id = env.created(&creds).await;
    env.broker.tamper(&id);
    let writes = env.broker.writes();

    let observed = env.sync(&creds, Some(&id), Some(&creds.fingerprint), OBSERVE).await.unwrap();
    assert!(!observed.wrote && !observed.differences.is_empty(), "{observed:?}");
    assert_eq!(env.broker.writes(), writes, "observing writes nothing");
    assert!(env.broker.is_tampered(&id));

    let corrected = env.sync(&creds, Some(&id), Some(&creds.fingerprint), FULL).await.unwrap();
    assert!(corrected.wrote, "{corrected:?}");
    assert_eq!(corrected.differences, observed.differences, "full mode fixes what observing reported");
    assert_eq!(env.broker.writes(), writes + 1);
    assert!(!env.broker.is_tampered(&id));
    assert_eq!(env.sync(&creds, Some(&id), Some(&creds.fingerprint), OBSERVE).await.unwrap(), SyncOutcome::existing(id, vec![], false));
}

/// Requests other than reads, from the broker's request log.
fn non_reads<F: Fixture>(env: &Env<F>) -> Vec<(String, String)> {
    env.broker.requests().into_iter().filter(|(method, _)| method != "GET").filter(|(_, path)| !path.ends_with("/token")).collect()
}

async fn an_object_made_by_hand_is_refused_without_adopt<F: Fixture>() {
    let env = Env::<F>::start();
    let creds = env.creds(CANARY);
    let theirs = env.broker.insert_same_named("made-by-hand-secret");
    for known_id in [None, Some("gone0000000000000000000000000000")] {
        for observe_only in [FULL, OBSERVE] {
            let err = expect_err::<F, _>(env.client.sync(&request_as(&env.spec, &creds, known_id, None, observe_only, FRESH)).await);
            assert!(matches!(err, BrokerError::Conflict(ref m) if m.contains("spec.adopt")), "{err:?}");
            assert_eq!(err.reason(), Reason::BrokerConflict);
            assert!(!err.is_transient());
        }
    }
    let err = expect_err::<F, _>(env.client.delete(&DeleteRequest::new(&env.spec, None, FRESH).unwrap()).await);
    assert_eq!(err.reason(), Reason::BrokerConflict);
    assert_eq!(non_reads(&env), vec![], "no write, no delete");
    assert!(env.broker.exists(&theirs));
    assert_eq!(env.broker.held_secret(&theirs).as_deref(), Some("made-by-hand-secret"));
}

async fn adopt_takes_an_object_made_by_hand<F: Fixture>() {
    let env = Env::<F>::start();
    let creds = env.creds(CANARY);
    let theirs = env.broker.insert_same_named("made-by-hand-secret");
    // No recorded id (status lost), and a stale one: both find the object by name.
    for known_id in [None, Some("gone0000000000000000000000000000")] {
        let outcome = env.client.sync(&request_as(&env.spec, &creds, known_id, None, FULL, ADOPTING)).await.unwrap();
        assert_eq!(outcome.id.as_deref(), Some(theirs.as_str()), "adopted, {known_id:?}");
    }
    assert_eq!(env.broker.objects(), 1, "not duplicated");
    assert_eq!(env.broker.held_secret(&theirs).as_deref(), Some(CANARY), "the adopted object now holds the secret");
}

async fn its_own_object_is_found_after_the_status_is_lost<F: Fixture>() {
    let env = Env::<F>::start();
    let creds = env.creds(CANARY);
    let id = env.created(&creds).await;
    // Status gone (no id, no fingerprint); what is left is the marker in the object or the claim.
    let restored = Ownership { claim: Some(Claim::Recorded(&id)), ..FRESH };
    let outcome = env.client.sync(&request_as(&env.spec, &creds, None, None, FULL, restored)).await.unwrap();
    assert_eq!(outcome.id.as_deref(), Some(id.as_str()));
    let outcome = env.client.sync(&request_as(&env.spec, &creds, Some(&id), Some(&creds.fingerprint), FULL, restored)).await.unwrap();
    assert_eq!(outcome, SyncOutcome::existing(id.clone(), vec![], false), "settled");
    assert_eq!(env.broker.objects(), 1, "never a duplicate");
    env.client.delete(&DeleteRequest::new(&env.spec, None, restored).unwrap()).await.unwrap();
    assert!(!env.broker.exists(&id), "and deleted as its own");
}

async fn another_connections_object_is_never_written_or_deleted<F: Fixture>() {
    let env = Env::<F>::start();
    let creds = env.creds(CANARY);
    let id = env.created(&creds).await;
    let before = non_reads(&env).len();
    // Another connection (another namespace) naming the same object, without a claim on it. For
    // Auth0 the marker refuses it even with adopt; for the others the claim, held by the first
    // connection, stops it in the controller before the adapter is called.
    let other = Ownership { owner: "fedcba9876543210fedcba9876543210", ..FRESH };
    let mut attempts = vec![other];
    if F::spec().auth0.is_some() {
        attempts.push(Ownership { adopt: true, ..other });
    }
    for other in attempts {
        let rotated = env.creds(ROTATED);
        let err = expect_err::<F, _>(env.client.sync(&request_as(&env.spec, &rotated, None, None, FULL, other)).await);
        assert_eq!(err.reason(), Reason::BrokerConflict, "{err:?}");
        assert!(!err.to_string().contains(common::OWNER), "the owner is not disclosed: {err}");
        let err = expect_err::<F, _>(env.client.delete(&DeleteRequest::new(&env.spec, None, other).unwrap()).await);
        assert_eq!(err.reason(), Reason::BrokerConflict);
    }
    assert_eq!(non_reads(&env).len(), before, "no write, no delete: {:?}", non_reads(&env));
    assert_eq!(env.broker.held_secret(&id).as_deref(), Some(CANARY));
}

async fn a_create_waits_for_its_claim_and_a_lost_answer_makes_no_duplicate<F: Fixture>() {
    let env = Env::<F>::start();
    let creds = env.creds(CANARY);
    if F::spec().auth0.is_none() {
        // Under a fresh claim a missing object is not created yet: the controller first records
        // in the claim that a create is under way, so that what it makes is known as its own.
        let outcome = env.client.sync(&request_as(&env.spec, &creds, None, None, FULL, FRESH)).await.unwrap();
        assert!(outcome.create_deferred && !outcome.wrote && outcome.id.is_none(), "{outcome:?}");
        assert_eq!(non_reads(&env), vec![], "nothing written");
    }
    // The create; its answer is lost, so neither status nor claim learns the id.
    let id = env.created(&creds).await;
    let retried = env.client.sync(&request(&env.spec, &creds, None, None, FULL)).await.unwrap();
    assert_eq!(retried.id.as_deref(), Some(id.as_str()), "found as its own, not refused");
    assert_eq!(env.broker.objects(), 1, "no duplicate");
}

async fn server_errors_are_transient<F: Fixture>() {
    let env = Env::<F>::start();
    let creds = env.creds(CANARY);
    let id = env.created(&creds).await;
    for status in [500, 502, 503] {
        env.broker.fail_next(status);
        let err = expect_err::<F, _>(env.sync(&creds, Some(&id), Some(&creds.fingerprint), FULL).await);
        assert!(matches!(err, BrokerError::Server { status: s, .. } if s == status), "{err:?}");
        assert_eq!(err.reason(), Reason::BrokerUnreachable);
        assert!(err.is_transient() && err.retry_after().is_none());
    }
    // The first request of a fresh client too (for client credentials, the token request).
    env.broker.fail_next(503);
    let err = expect_err::<F, _>(client::<F>(&upstream::<F>(env.broker.base_url(), &env.ca_file, Duration::from_secs(5))).check().await);
    assert!(matches!(err, BrokerError::Server { status: 503, .. }), "{err:?}");
    // Failed writes left the stored secret alone; the account is not blocked afterwards.
    assert_eq!(env.broker.held_secret(&id).as_deref(), Some(CANARY));
    let rotated = env.creds(ROTATED);
    env.sync(&rotated, Some(&id), Some(&creds.fingerprint), FULL).await.unwrap();
    assert_eq!(env.broker.held_secret(&id).as_deref(), Some(ROTATED));
}

async fn a_429_blocks_the_account_without_further_requests<F: Fixture>() {
    let env = Env::<F>::start();
    let creds = env.creds(CANARY);
    let id = env.created(&creds).await;
    let announced = env.broker.rate_limit_next();
    let err = expect_err::<F, _>(env.sync(&creds, Some(&id), Some(&creds.fingerprint), FULL).await);
    let wait = err.retry_after().expect("a wait");
    assert!(matches!(err, BrokerError::RateLimited { .. }) && err.is_transient(), "{err:?}");
    assert_eq!(err.reason(), Reason::BrokerRateLimited);
    assert!(announced.contains(&wait), "{wait:?} from the broker's {announced:?}");

    // Blocked: every further call fails at once, and the broker hears nothing.
    let seen = env.broker.requests().len();
    let rotated = env.creds(ROTATED);
    let blocked = [
        env.sync(&rotated, Some(&id), Some(&creds.fingerprint), FULL).await.map(drop),
        env.sync(&creds, None, None, OBSERVE).await.map(drop),
        env.client.delete(&deletion(&env.spec, Some(&id))).await,
    ];
    for result in blocked {
        let err = expect_err::<F, _>(result);
        let again = err.retry_after().expect("a wait");
        assert!(again <= wait && again + Duration::from_secs(5) >= wait, "{again:?} after {wait:?}");
        assert_eq!(err.reason(), Reason::BrokerRateLimited);
    }
    // A check either proves a cached token (no request) or is blocked too.
    if let Err(err) = env.client.check().await {
        assert_eq!(checked::<F>(err).reason(), Reason::BrokerRateLimited);
    }
    assert_eq!(env.broker.requests().len(), seen, "no request while blocked: {:?}", &env.broker.requests()[seen..]);
    assert_eq!(env.broker.held_secret(&id).as_deref(), Some(CANARY));
}

async fn a_broker_that_never_answers_times_out_transiently<F: Fixture>() {
    let env = Env::<F>::start();
    let creds = env.creds(CANARY);
    let stalled = Stall::start().await;
    let client = env.client_to(stalled.base_url(), SHORT_TIMEOUT);
    let err = expect_err::<F, _>(client.sync(&request(&env.spec, &creds, None, None, FULL)).await);
    assert!(matches!(err, BrokerError::Unreachable(TransportError::Timeout(t)) if t == SHORT_TIMEOUT), "{err:?}");
    assert_eq!(err.reason(), Reason::BrokerUnreachable);
    assert!(err.is_transient());
    let err = expect_err::<F, _>(client.delete(&deletion(&env.spec, None)).await);
    assert!(matches!(err, BrokerError::Unreachable(TransportError::Timeout(_))), "{err:?}");
}

async fn a_broker_nobody_listens_for_is_unreachable<F: Fixture>() {
    let env = Env::<F>::start();
    let creds = env.creds(CANARY);
    let id = env.created(&creds).await;
    env.broker.shutdown();
    // The listener closes once the server task is dropped, on the runtime's next turn.
    tokio::task::yield_now().await;
    let fresh = client::<F>(&upstream::<F>(env.broker.base_url(), &env.ca_file, Duration::from_secs(5)));
    let err = expect_err::<F, _>(fresh.check().await);
    assert!(matches!(err, BrokerError::Unreachable(TransportError::Connect(_))), "{err:?}");
    // With a cached token and a pooled connection, the outage shows the same way.
    for result in [
        env.sync(&creds, Some(&id), Some(&creds.fingerprint), FULL).await.map(drop),
        env.client.delete(&deletion(&env.spec, Some(&id))).await,
    ] {
        let err = expect_err::<F, _>(result);
        assert!(matches!(err, BrokerError::Unreachable(_)), "{err:?}");
        assert_eq!(err.reason(), Reason::BrokerUnreachable);
        assert!(err.is_transient());
    }
}

async fn delete_is_idempotent<F: Fixture>() {
    let env = Env::<F>::start();
    let creds = env.creds(CANARY);
    let unrelated = env.broker.insert_unrelated();
    let deletes = || env.broker.requests().iter().filter(|(method, _)| method == "DELETE").count();
    // Never created: done, and nothing deleted.
    env.client.delete(&deletion(&env.spec, None)).await.unwrap();
    env.client.delete(&deletion(&env.spec, Some("gone0000000000000000000000000000"))).await.unwrap();
    assert_eq!((env.broker.writes(), deletes()), (0, 0));

    // By recorded id, then again (the id answers 404 and nothing has the name): one DELETE.
    let id = env.created(&creds).await;
    let writes = env.broker.writes();
    env.client.delete(&deletion(&env.spec, Some(&id))).await.unwrap();
    assert!(!env.broker.exists(&id));
    env.client.delete(&deletion(&env.spec, Some(&id))).await.unwrap();
    env.client.delete(&deletion(&env.spec, None)).await.unwrap();
    assert_eq!((env.broker.writes(), deletes()), (writes + 1, 1), "one delete, however often asked");

    // By name, when no id was recorded.
    let id = env.created(&creds).await;
    env.client.delete(&deletion(&env.spec, None)).await.unwrap();
    assert!(!env.broker.exists(&id));
    assert!(env.broker.exists(&unrelated), "other objects are untouched");
    assert_eq!(env.broker.objects(), 1);
}

async fn a_missing_or_foreign_block_is_refused_before_any_request<F: Fixture>() {
    let env = Env::<F>::start();
    let creds = env.creds(CANARY);
    let mut no_block = env.spec.clone();
    (no_block.auth0, no_block.cloudflare, no_block.logto, no_block.unified) = (None, None, None, None);
    // Another broker's block, handed to this broker's client.
    let mut foreign = no_block.clone();
    if F::spec().auth0.is_some() {
        foreign.unified = Some(UnifiedConnectionSpec::default());
    } else {
        foreign.auth0 = Some(Auth0ConnectionSpec { name: "other".into(), ..Default::default() });
    }
    for spec in [&no_block, &foreign] {
        let errors = [
            expect_err::<F, _>(common::sync_spec(&env.client, spec, &creds, FULL).await),
            expect_err::<F, _>(common::delete_spec(&env.client, spec, None).await),
        ];
        for err in errors {
            assert!(matches!(err, BrokerError::Unsupported(_)), "sync and delete alike: {err:?}");
            assert_eq!(err.reason(), Reason::UnsupportedSetting);
            assert!(!err.is_transient());
        }
    }
    assert!(env.broker.requests().is_empty(), "{:?}", env.broker.requests());
}

async fn errors_never_show_a_secret<F: Fixture>() {
    let env = Env::<F>::start();
    let creds = env.creds(CANARY);
    let id = env.created(&creds).await;
    let rotated = env.creds(ROTATED);
    let mut errors = Vec::new();
    env.broker.fail_next(500);
    errors.push(env.sync(&rotated, Some(&id), Some(&creds.fingerprint), FULL).await.unwrap_err());
    env.broker.rate_limit_next();
    errors.push(env.sync(&rotated, Some(&id), Some(&creds.fingerprint), FULL).await.unwrap_err());
    let echo = Echo::start::<F>(&env.ca, EchoShape::BrokerJson, &[ROTATED, F::MANAGEMENT_SECRET]).await;
    errors.push(
        env.client_to(echo.base_url(), Duration::from_secs(5)).sync(&request(&env.spec, &rotated, None, None, FULL)).await.unwrap_err(),
    );
    env.broker.shutdown();
    tokio::task::yield_now().await;
    let fresh = client::<F>(&upstream::<F>(env.broker.base_url(), &env.ca_file, Duration::from_secs(5)));
    errors.push(fresh.check().await.unwrap_err());
    for err in errors {
        checked::<F>(err);
    }
}

async fn secrets_echoed_in_any_form_are_removed<F: Fixture>() {
    let env = Env::<F>::start();
    let creds = env.creds(CANARY);
    for shape in [EchoShape::BrokerJson, EchoShape::PlainText] {
        // A sync sends the Azure secret and the management credential (or the token it got).
        let echo = Echo::start::<F>(&env.ca, shape, &[CANARY, F::MANAGEMENT_SECRET]).await;
        let client = env.client_to(echo.base_url(), Duration::from_secs(5));
        let err = expect_err::<F, _>(client.sync(&request(&env.spec, &creds, None, None, FULL)).await);
        let text = err.to_string();
        assert!(
            text.contains("echoed [redacted] |") && text.contains("with Bearer [redacted]"),
            "the message is kept, the secrets removed: {text}"
        );
        // A delete sends only the management credential.
        let echo = Echo::start::<F>(&env.ca, shape, &[F::MANAGEMENT_SECRET]).await;
        let client = env.client_to(echo.base_url(), Duration::from_secs(5));
        let err = expect_err::<F, _>(client.delete(&deletion(&env.spec, None)).await);
        assert!(err.to_string().contains("echoed [redacted] |"), "{err}");
    }
}

async fn a_secret_straddling_the_length_bound_leaves_no_prefix<F: Fixture>() {
    let env = Env::<F>::start();
    let creds = env.creds(CANARY);
    let echo = Echo::start::<F>(&env.ca, EchoShape::Straddling, &[CANARY]).await;
    let err = expect_err::<F, _>(
        env.client_to(echo.base_url(), Duration::from_secs(5)).sync(&request(&env.spec, &creds, None, None, FULL)).await,
    );
    let text = format!("{err} {err:?}");
    assert!(!text.contains(&CANARY[..10]), "no prefix of the secret survives the cut: {text}");
    assert!(text.contains(&"x".repeat(100)) && text.contains('…'), "the text is still bounded: {text}");
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod auth0 { $(#[tokio::test] async fn $case() { super::$case::<super::Auth0>().await })* }
        mod cloudflare { $(#[tokio::test] async fn $case() { super::$case::<super::Cloudflare>().await })* }
        mod logto { $(#[tokio::test] async fn $case() { super::$case::<super::Logto>().await })* }
        mod unified { $(#[tokio::test] async fn $case() { super::$case::<super::Unified>().await })* }
    };
}

conformance!(
    first_sync_creates,
    steady_state_writes_nothing,
    rotation_writes_once,
    drift_is_reported_when_observing_and_corrected_in_full,
    an_object_made_by_hand_is_refused_without_adopt,
    adopt_takes_an_object_made_by_hand,
    its_own_object_is_found_after_the_status_is_lost,
    another_connections_object_is_never_written_or_deleted,
    a_create_waits_for_its_claim_and_a_lost_answer_makes_no_duplicate,
    server_errors_are_transient,
    a_429_blocks_the_account_without_further_requests,
    a_broker_that_never_answers_times_out_transiently,
    a_broker_nobody_listens_for_is_unreachable,
    delete_is_idempotent,
    a_missing_or_foreign_block_is_refused_before_any_request,
    errors_never_show_a_secret,
    secrets_echoed_in_any_form_are_removed,
    a_secret_straddling_the_length_bound_leaves_no_prefix,
);

// ---------------------------------------------------------------------------------------------
// Faults the emulators do not offer.

/// A TLS-less listener that accepts connections and never answers: every request times out.
struct Stall {
    addr: std::net::SocketAddr,
    _task: tokio::task::JoinHandle<()>,
}

impl Stall {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        Stall { addr, _task: task }
    }

    fn base_url(&self) -> Url {
        Url::parse(&format!("https://{}", self.addr)).unwrap()
    }
}

impl Drop for Stall {
    fn drop(&mut self) {
        self._task.abort();
    }
}

#[derive(Clone, Copy)]
enum EchoShape {
    /// The broker's own error body, its message quoting every form of every secret in play.
    BrokerJson,
    /// A plain-text body quoting every form of every secret in play.
    PlainText,
    /// A plain-text body where the Azure secret straddles the 200-character bound.
    Straddling,
}

/// A broker that grants any token request and answers everything else 400 with a body that
/// echoes the secrets in play: the Azure secret being synced, the management credential, and
/// the bearer it was sent.
struct Echo {
    server: ServerHandle,
}

impl Echo {
    /// `secrets`: the secrets in play, each echoed in every form.
    async fn start<F: Fixture>(ca: &TestCa, shape: EchoShape, secrets: &[&str]) -> Self {
        let every_form: Vec<String> = secrets.iter().copied().flat_map(forms).collect();
        let first = secrets.first().map(|s| s.to_string()).unwrap_or_default();
        let handler = move |uri: Uri, headers: HeaderMap| {
            let (every_form, first) = (every_form.clone(), first.clone());
            async move {
                if uri.path().ends_with("/token") {
                    return Json(json!({"access_token": "echo-token-value", "token_type": "Bearer", "expires_in": 3600})).into_response();
                }
                let bearer = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
                let message = format!("echoed {} with {bearer}", every_form.join(" | "));
                match shape {
                    EchoShape::BrokerJson => (StatusCode::BAD_REQUEST, Json(F::error_body(&message))).into_response(),
                    EchoShape::PlainText => (StatusCode::BAD_REQUEST, format!("{message}\nsecond line")).into_response(),
                    EchoShape::Straddling => (StatusCode::BAD_REQUEST, format!("{}{first} trailing", "x".repeat(190))).into_response(),
                }
            }
        };
        Echo { server: serve_tls(Router::new().fallback(handler), ca).await.unwrap() }
    }

    fn base_url(&self) -> Url {
        self.server.base_url()
    }
}

// ---------------------------------------------------------------------------------------------
// The four brokers.

const TENANT: &str = common::TENANT;

fn credentials_ref() -> ClientCredentialsSecretRef {
    ClientCredentialsSecretRef { name: "m2m".into(), client_id_key: "client-id".into(), client_secret_key: "client-secret".into() }
}
const CLIENT: &str = common::CLIENT;

/// A 429 with `Retry-After: 30`: exactly that.
const RETRY_AFTER_30: RangeInclusive<Duration> = Duration::from_secs(30)..=Duration::from_secs(30);

struct Auth0(Auth0Emulator);

impl Auth0 {
    const NAME: &'static str = "contoso-entra";
    const M2M: &'static str = "m2m-client";
}

impl Fixture for Auth0 {
    const HOST: &'static str = "acme.auth0.com";
    const MANAGEMENT_SECRET: &'static str = "m2m~conformance/management+secret";

    fn start(ca: &TestCa) -> Self {
        let auth0 = Auth0Emulator::start(ca, Self::HOST).unwrap();
        let scopes = ["read:connections", "create:connections", "update:connections", "delete:connections"];
        auth0.add_m2m_client(Self::M2M, Self::MANAGEMENT_SECRET, &scopes);
        Auth0(auth0)
    }
    fn base_url(&self) -> Url {
        self.0.base_url()
    }
    const MANAGEMENT_CLIENT_ID: &'static str = Self::M2M;
    fn provider() -> BrokerProvider {
        BrokerProvider::Auth0(Auth0BrokerSpec { domain: Self::HOST.into(), credentials_secret_ref: credentials_ref() })
    }
    fn spec() -> AzureAdConnectionSpec {
        let auth0 = Auth0ConnectionSpec { name: Self::NAME.into(), display_name: Some("Contoso staff".into()), ..Default::default() };
        common::connection_spec("acme", |spec| spec.auth0 = Some(auth0))
    }
    fn held_secret(&self, id: &str) -> Option<String> {
        self.0.connection(id)?["options"]["client_secret"].as_str().map(str::to_owned)
    }
    fn exists(&self, id: &str) -> bool {
        self.0.connection(id).is_some()
    }
    fn objects(&self) -> usize {
        self.0.connections().len()
    }
    fn tamper(&self, id: &str) {
        self.0.edit_connection(id, |c| c["display_name"] = json!("Edited in the dashboard"));
    }
    fn is_tampered(&self, id: &str) -> bool {
        self.0.connection(id).unwrap()["display_name"] == "Edited in the dashboard"
    }
    fn insert_same_named(&self, secret: &str) -> String {
        self.0.insert_connection(json!({"name": Self::NAME, "strategy": "waad", "options": {"client_id": CLIENT, "client_secret": secret}}))
    }
    fn fail_next(&self, status: u16) {
        self.0.fail_next(1, status);
    }
    fn insert_unrelated(&self) -> String {
        self.0.insert_connection(json!({"name": "unrelated", "strategy": "waad", "options": {"client_id": CLIENT}}))
    }
    /// Auth0 sends no `Retry-After`, only `X-RateLimit-Reset` in whole seconds.
    fn rate_limit_next(&self) -> RangeInclusive<Duration> {
        self.0.rate_limit_next(1, 30);
        Duration::from_secs(25)..=Duration::from_secs(30)
    }
    fn shutdown(&self) {
        self.0.shutdown();
    }
    fn writes(&self) -> usize {
        self.0.writes()
    }
    fn requests(&self) -> Vec<(String, String)> {
        self.0.requests()
    }
    fn error_body(message: &str) -> Value {
        json!({"statusCode": 400, "error": "Bad Request", "message": message, "errorCode": "invalid_body"})
    }
}

struct Cloudflare(CloudflareEmulator);

impl Cloudflare {
    const ACCOUNT: &'static str = "023e105f4ecef8ad9ca31a8372d0c353";
    const NAME: &'static str = "Contoso Entra ID";
}

impl Fixture for Cloudflare {
    const HOST: &'static str = "api.cloudflare.com";
    const MANAGEMENT_SECRET: &'static str = "cf~conformance/token+secret-0123456789";

    fn start(ca: &TestCa) -> Self {
        let cf = CloudflareEmulator::start(ca).unwrap();
        cf.add_account(Self::ACCOUNT);
        cf.add_token(Self::MANAGEMENT_SECRET, &[Self::ACCOUNT]);
        Cloudflare(cf)
    }
    fn base_url(&self) -> Url {
        self.0.base_url()
    }
    fn provider() -> BrokerProvider {
        BrokerProvider::Cloudflare(CloudflareBrokerSpec {
            account_id: Some(Self::ACCOUNT.into()),
            zone_id: None,
            api_token_secret_ref: TokenSecretRef { name: "cloudflare".into(), key: "api-token".into() },
        })
    }
    fn spec() -> AzureAdConnectionSpec {
        let cloudflare = CloudflareConnectionSpec { name: Self::NAME.into(), support_groups: true, ..Default::default() };
        common::connection_spec("cloudflare", |spec| spec.cloudflare = Some(cloudflare))
    }
    fn held_secret(&self, id: &str) -> Option<String> {
        self.0.client_secret(id)
    }
    fn exists(&self, id: &str) -> bool {
        self.0.provider(id).is_some()
    }
    fn objects(&self) -> usize {
        self.0.providers().len()
    }
    fn tamper(&self, id: &str) {
        self.0.edit_provider(id, |p| p["config"]["support_groups"] = json!(false));
    }
    fn is_tampered(&self, id: &str) -> bool {
        self.0.provider(id).unwrap()["config"]["support_groups"] == false
    }
    fn insert_same_named(&self, secret: &str) -> String {
        self.0.insert_provider(
            Self::ACCOUNT,
            json!({"name": Self::NAME, "type": "azureAD", "config": {"client_id": CLIENT, "client_secret": secret, "directory_id": TENANT}}),
        )
    }
    fn fail_next(&self, status: u16) {
        self.0.fail_next(1, status);
    }
    fn insert_unrelated(&self) -> String {
        self.0.insert_provider(Self::ACCOUNT, json!({"name": "Unrelated", "type": "azureAD", "config": {"client_id": CLIENT}}))
    }
    /// The emulator answers `Retry-After: 300`: Cloudflare's 5-minute block.
    fn rate_limit_next(&self) -> RangeInclusive<Duration> {
        self.0.rate_limit_next(1);
        Duration::from_secs(300)..=Duration::from_secs(300)
    }
    fn shutdown(&self) {
        self.0.shutdown();
    }
    fn writes(&self) -> usize {
        self.0.writes()
    }
    fn requests(&self) -> Vec<(String, String)> {
        self.0.requests()
    }
    fn error_body(message: &str) -> Value {
        json!({"success": false, "errors": [{"code": 7003, "message": message}], "messages": [], "result": null})
    }
}

struct Logto(LogtoEmulator);

impl Logto {
    const ENDPOINT: &'static str = "https://auth.example.com:8443";
    const RESOURCE: &'static str = "https://default.logto.app/api";
    const M2M: &'static str = "m2m-app";
}

impl Fixture for Logto {
    const HOST: &'static str = "auth.example.com:8443";
    const MANAGEMENT_SECRET: &'static str = "m2m~conformance/management+secret";

    fn start(ca: &TestCa) -> Self {
        let logto = LogtoEmulator::start(ca, Self::RESOURCE).unwrap();
        logto.add_m2m_app(Self::M2M, Self::MANAGEMENT_SECRET);
        Logto(logto)
    }
    fn base_url(&self) -> Url {
        self.0.base_url()
    }
    const MANAGEMENT_CLIENT_ID: &'static str = Self::M2M;
    fn provider() -> BrokerProvider {
        BrokerProvider::Logto(LogtoBrokerSpec {
            endpoint: Self::ENDPOINT.into(),
            resource: Self::RESOURCE.into(),
            credentials_secret_ref: credentials_ref(),
        })
    }
    fn spec() -> AzureAdConnectionSpec {
        common::connection_spec("logto", |spec| spec.logto = Some(LogtoConnectionSpec::default()))
    }
    fn held_secret(&self, id: &str) -> Option<String> {
        self.0.connector(id)?["config"]["clientSecret"].as_str().map(str::to_owned)
    }
    fn exists(&self, id: &str) -> bool {
        self.0.connector(id).is_some()
    }
    fn objects(&self) -> usize {
        self.0.connectors().len()
    }
    fn tamper(&self, id: &str) {
        self.0.edit_connector(id, |c| c["config"]["cloudInstance"] = json!("https://login.microsoftonline.us"));
    }
    fn is_tampered(&self, id: &str) -> bool {
        self.0.connector(id).unwrap()["config"]["cloudInstance"] == "https://login.microsoftonline.us"
    }
    fn insert_same_named(&self, secret: &str) -> String {
        self.0.insert_connector(json!({
            "connectorId": "azuread-universal",
            "config": {"clientId": CLIENT, "clientSecret": secret, "tenantId": TENANT, "cloudInstance": "https://login.microsoftonline.com"},
        }))
    }
    fn fail_next(&self, status: u16) {
        self.0.fail_next(1, status);
    }
    fn insert_unrelated(&self) -> String {
        self.0.insert_connector(json!({"connectorId": "google-universal", "target": "google", "config": {"clientId": "g"}}))
    }
    fn rate_limit_next(&self) -> RangeInclusive<Duration> {
        self.0.rate_limit_next(1, 30);
        RETRY_AFTER_30
    }
    fn shutdown(&self) {
        self.0.shutdown();
    }
    fn writes(&self) -> usize {
        self.0.writes()
    }
    fn requests(&self) -> Vec<(String, String)> {
        self.0.requests()
    }
    fn error_body(message: &str) -> Value {
        json!({"code": "guard.invalid_input", "message": message})
    }
}

struct Unified(UnifiedEmulator);

impl Unified {
    /// The default external_xref of the spec (tenant as written, client id).
    const XREF: &'static str = "idp-bridge:contoso.onmicrosoft.com:11111111-2222-3333-4444-555555555555";
}

impl Fixture for Unified {
    const HOST: &'static str = "api.unified.to";
    const MANAGEMENT_SECRET: &'static str = "uni~conformance/workspace+token";

    fn start(ca: &TestCa) -> Self {
        let unified = UnifiedEmulator::start(ca).unwrap();
        unified.add_token(Self::MANAGEMENT_SECRET);
        Unified(unified)
    }
    fn base_url(&self) -> Url {
        self.0.base_url()
    }
    fn provider() -> BrokerProvider {
        BrokerProvider::Unified(UnifiedBrokerSpec {
            region: UnifiedRegion::Us,
            api_token_secret_ref: TokenSecretRef { name: "unified".into(), key: "token".into() },
        })
    }
    fn spec() -> AzureAdConnectionSpec {
        let unified = UnifiedConnectionSpec { external_xref: None, permissions: vec!["hris_employee_read".into()] };
        common::connection_spec("unified", |spec| spec.unified = Some(unified))
    }
    fn held_secret(&self, id: &str) -> Option<String> {
        self.0.client_secret(id)
    }
    fn exists(&self, id: &str) -> bool {
        self.0.connection(id).is_some()
    }
    fn objects(&self) -> usize {
        self.0.connections().len()
    }
    fn tamper(&self, id: &str) {
        self.0.edit_connection(id, |c| c["auth"]["token_url"] = json!("https://login.example.com/other/oauth2/v2.0/token"));
    }
    fn is_tampered(&self, id: &str) -> bool {
        self.0.connection(id).unwrap()["auth"]["token_url"] == "https://login.example.com/other/oauth2/v2.0/token"
    }
    fn insert_same_named(&self, secret: &str) -> String {
        self.0.insert_connection(json!({
            "integration_type": "microsoft_ad",
            "external_xref": Self::XREF,
            "auth": {"client_id": CLIENT, "client_secret": secret},
        }))
    }
    fn fail_next(&self, status: u16) {
        self.0.fail_next(1, status);
    }
    fn insert_unrelated(&self) -> String {
        self.0
            .insert_connection(json!({"integration_type": "microsoft_ad", "external_xref": "someone-else", "auth": {"client_id": CLIENT}}))
    }
    fn rate_limit_next(&self) -> RangeInclusive<Duration> {
        self.0.rate_limit_next(1, 30);
        RETRY_AFTER_30
    }
    fn shutdown(&self) {
        self.0.shutdown();
    }
    fn writes(&self) -> usize {
        self.0.writes()
    }
    fn requests(&self) -> Vec<(String, String)> {
        self.0.requests()
    }
    fn error_body(message: &str) -> Value {
        json!({"statusCode": 400, "error": "Bad Request", "message": message})
    }
}
