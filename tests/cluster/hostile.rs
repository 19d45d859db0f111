//! Hostile or broken brokers must not stop the operator: a connection whose broker answers
//! every page slowly, just inside the per-request timeout, and always promises one more, would
//! hold a `--concurrency` slot for many minutes. Under the reconcile deadline it is cut, says
//! so in Ready, and the healthy connections keep syncing on the same operator.

use std::time::Duration;

use idp_bridge::crd::conditions::READY;
use idp_bridge_devenv::kit::{Fault, RequestMatch};
use reqwest::Method;
use serde_json::json;

use crate::common::e2e::{CF_ACCOUNT, CLIENT_ID, Env, TENANT_ID, condition, condition_is};

const SLOW: [&str; 2] = ["slow-one", "slow-two"];
/// As many reconciles at once as there are slow connections: without a deadline they take
/// every slot.
const CONCURRENCY: u16 = 2;
const DEADLINE: Duration = Duration::from_secs(15);
/// Generous on a loaded machine: several deadlines.
const BOUNDED_WAIT: Duration = Duration::from_secs(90);

fn in_a_year() -> jiff::Timestamp {
    jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 365)
}

async fn wait_until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + BOUNDED_WAIT;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("not within {BOUNDED_WAIT:?}: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_brokers_hold_no_concurrency_slot_past_the_deadline() {
    let mut env = Env::without_operator("hostile").await;
    let cf = env.cloudflare_broker("slow-cloudflare").await;
    // Each page arrives after 3 s, inside the 5 s request timeout, and promises another: finding
    // a provider by name would take the page cap (200) times 3 s.
    let collection = format!("/client/v4/accounts/{CF_ACCOUNT}/access/identity_providers");
    let slow_pages = RequestMatch::any().method(Method::GET).path(&collection);
    cf.kit().faults().push(Fault::endless_pages().delay(Duration::from_secs(3)).on(slow_pages.clone()).forever());
    env.start_operator_with(|config| {
        config.concurrency = CONCURRENCY;
        config.reconcile_timeout = DEADLINE;
    })
    .await;

    let first = env.canary("healthy-first");
    env.upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, &first, in_a_year());
    env.put_secret("healthy-secret", &[("client-secret", &first)], &[]).await;
    env.connect("healthy", "healthy-secret", json!({})).await;
    env.wait_ready("healthy").await;
    assert_eq!(env.broker_secret("healthy"), first);

    let slow_secret = env.canary("slow");
    env.upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, &slow_secret, in_a_year());
    env.put_secret("slow-secret", &[("client-secret", &slow_secret)], &[]).await;
    for name in SLOW {
        env.connect_to(name, "slow-cloudflare", json!({"cloudflare": {"name": name}}), "slow-secret", json!({})).await;
    }
    // Both slots are taken by the slow listings.
    wait_until("both slow connections are listing", async || cf.kit().log().count(&slow_pages) >= 2).await;

    // The healthy connection's rotation still arrives at its broker.
    let second = env.canary("healthy-second");
    env.upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, &second, in_a_year());
    env.put_secret("healthy-secret", &[("client-secret", &second)], &[]).await;
    wait_until("the rotated secret reaches Auth0 while the slow brokers stall", async || env.broker_secret("healthy") == second).await;

    for name in SLOW {
        wait_until(&format!("{name} reports the deadline"), async || {
            let conn = env.connections().get(name).await.unwrap();
            condition_is(&conn, READY, "False", "ReconcileTimedOut")
        })
        .await;
        let ready = condition(&env.connections().get(name).await.unwrap(), READY);
        assert!(ready.message.contains("--reconcile-timeout"), "{}", ready.message);
        assert!(!ready.message.chars().any(|c| c.is_ascii_digit()), "a stable message: {}", ready.message);
    }
    let (status, _) = env.http_get("/healthz").await;
    assert_eq!(status, 200, "the operator is still up");
    let (_, metrics) = env.http_get("/metrics").await;
    assert!(metrics.contains("idpbridge_reconcile_total{result=\"timeout\"}"), "{metrics}");
    assert!(env.connections().get("healthy").await.is_ok_and(|c| condition_is(&c, READY, "True", "Ready")));
    env.assert_no_canary_leaks().await;
}

/// A broker tenant of its own for one hostile behaviour, with a connection using it.
async fn hostile_auth0(env: &mut Env, name: &str, fault: Fault) {
    let domain = format!("{name}.eu.auth0.com");
    let tenant = env.upstreams.auth0(&domain).unwrap();
    tenant.add_m2m_client("m2m", "m2m-hostile-secret", &["read:connections", "create:connections", "update:connections"]);
    tenant.kit().faults().push(fault.on(RequestMatch::any().under("/api/v2")).forever());
    env.put_secret(&format!("{name}-management"), &[("client-id", "m2m"), ("client-secret", "m2m-hostile-secret")], &[]).await;
    env.apply(
        "IdentityBroker",
        name,
        json!({"spec": {"auth0": {"domain": domain, "credentialsSecretRef": {"name": format!("{name}-management")}}}}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_answers_end_in_conditions_while_healthy_connections_sync() {
    let mut env = Env::without_operator("hostile-answers").await;
    // Each hostile broker with the Ready its connection must reach. Auth0 finds a connection by
    // name in one request, so endless pages end at the page cap of the enabled-clients listing,
    // and the sync completes.
    let hostile = [
        ("drip", Fault::drip(1, Duration::from_secs(1)), "False", "BrokerUnreachable"),
        ("retry-forever", Fault::status(429).retry_after(u64::MAX), "False", "BrokerRateLimited"),
        ("huge-body", Fault::huge_body(u64::MAX), "False", "BrokerUnreachable"),
        ("endless", Fault::endless_pages(), "True", "Ready"),
    ];
    for (name, fault, _, _) in &hostile {
        hostile_auth0(&mut env, name, fault.clone()).await;
    }
    env.start_operator_with(|config| config.reconcile_timeout = DEADLINE).await;

    let secret = env.canary("shared");
    env.upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, &secret, in_a_year());
    env.put_secret("hostile-secret", &[("client-secret", &secret)], &[]).await;
    for (name, _, _, _) in &hostile {
        env.connect_to(name, name, json!({"auth0": {"name": name}}), "hostile-secret", json!({})).await;
    }
    let healthy = ["healthy-a", "healthy-b", "healthy-c"];
    let first = env.canary("first");
    env.upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, &first, in_a_year());
    for name in healthy {
        env.put_secret(&format!("{name}-secret"), &[("client-secret", &first)], &[]).await;
        env.connect(name, &format!("{name}-secret"), json!({})).await;
    }
    for name in healthy {
        env.wait_ready(name).await;
    }
    let second = env.canary("second");
    env.upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, &second, in_a_year());
    env.put_secret("healthy-a-secret", &[("client-secret", &second)], &[]).await;
    wait_until("the rotation reaches Auth0 beside the hostile brokers", async || env.broker_secret("healthy-a") == second).await;

    for (name, _, ready, reason) in hostile {
        env.wait_for(name, reason, |conn| {
            condition_is(conn, READY, ready, reason) && (ready == "True" || condition_is(conn, "BrokerSynced", "False", reason))
        })
        .await;
    }
    let (status, _) = env.http_get("/healthz").await;
    assert_eq!(status, 200, "the operator is still up");
    for name in healthy {
        assert!(env.connections().get(name).await.is_ok_and(|c| condition_is(&c, READY, "True", "Ready")), "{name} stays Ready");
    }
    env.assert_no_canary_leaks().await;
}
