//! `--broker-hosts` on the real control plane: a broker whose host the operator does not allow
//! gets `BrokerHostNotAllowed` on its connection and on its own status, and the operator sends it
//! nothing. The disallowed hosts exist only as spec values: the endpoint overrides map them to
//! loopback emulators, whose request logs prove that no request left the operator.

use std::time::Duration;

use crate::common::e2e::{CLIENT_ID, Env, TENANT_ID, condition_is};
use idp_bridge::crd::{IdentityBroker, conditions::*};
use kube::Api;
use serde_json::json;

/// An Auth0 domain and a Logto endpoint no default pattern admits: a name outside the vendors'
/// domains, and an IP literal on a non-443 port.
const INTERNAL_DOMAIN: &str = "evil.internal";
const IP_HOST: &str = "10.0.0.1:8443";
const LOGTO_APP: &str = "logto-m2m-app";
const LOGTO_SECRET: &str = "logto-m2m-secret";

/// The broker's `Ready` condition once it has `reason`.
async fn wait_broker_reason(env: &Env, name: &str, reason: &str) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    let api: Api<IdentityBroker> = Api::namespaced(env.client.clone(), &env.ns);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    let mut last = None;
    while tokio::time::Instant::now() < deadline {
        let ready = api.get(name).await.ok().and_then(|b| b.status).and_then(|s| find(&s.conditions, READY).cloned());
        if ready.as_ref().is_some_and(|c| c.reason == reason) {
            return ready.unwrap();
        }
        last = ready;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("IdentityBroker {name} never had Ready reason {reason}; last: {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_on_disallowed_hosts_get_nothing() {
    let mut env = Env::without_operator("e2e-hosts").await;
    let value = env.canary("value");
    env.upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, &value, jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 365));
    env.put_secret("web", &[("client-secret", &value)], &[]).await;

    let internal = env.upstreams.auth0(INTERNAL_DOMAIN).unwrap();
    let m2m = env.canary("m2m");
    internal.add_m2m_client("m2m", &m2m, &["read:connections", "create:connections", "update:connections", "delete:connections"]);
    let ip = env.upstreams.logto(IP_HOST, "https://default.logto.app/api").unwrap();
    ip.add_m2m_app(LOGTO_APP, LOGTO_SECRET);
    env.put_secret("internal-m2m", &[("client-id", "m2m"), ("client-secret", &m2m)], &[]).await;
    env.put_secret("logto-m2m", &[("client-id", LOGTO_APP), ("client-secret", LOGTO_SECRET)], &[]).await;
    env.apply(
        "IdentityBroker",
        "internal",
        json!({"spec": {"auth0": {"domain": INTERNAL_DOMAIN, "credentialsSecretRef": {"name": "internal-m2m"}}}}),
    )
    .await;
    env.apply(
        "IdentityBroker",
        "ip",
        json!({"spec": {"logto": {"endpoint": format!("https://{IP_HOST}"), "credentialsSecretRef": {"name": "logto-m2m"}}}}),
    )
    .await;
    env.start_operator().await;

    env.connect_to("to-internal", "internal", json!({"auth0": {"name": "contoso"}}), "web", json!({})).await;
    env.connect_to("to-ip", "ip", json!({"logto": {}}), "web", json!({})).await;
    for (conn, host) in [("to-internal", INTERNAL_DOMAIN), ("to-ip", IP_HOST)] {
        let conn = env.wait_condition(conn, BROKER_SYNCED, "False", "BrokerHostNotAllowed").await;
        assert!(condition_is(&conn, READY, "False", "BrokerHostNotAllowed"));
        let message = &find(&conn.status.as_ref().unwrap().conditions, BROKER_SYNCED).unwrap().message;
        assert!(message.contains(host) && message.contains("--broker-hosts"), "{message}");
    }
    for (broker, host) in [("internal", INTERNAL_DOMAIN), ("ip", IP_HOST)] {
        let ready = wait_broker_reason(&env, broker, "BrokerHostNotAllowed").await;
        assert_eq!(ready.status, "False");
        assert!(ready.message.contains(host), "{}", ready.message);
    }
    // Reconciles keep happening (the Azure side is validated), and still nothing is sent.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(internal.requests(), vec![], "no request reaches a host outside --broker-hosts");
    assert_eq!(ip.requests(), vec![], "no request reaches a host outside --broker-hosts");

    // The same Logto host listed exactly: the operator calls it, so the silence above was the
    // allowlist's doing and not a broken route to the emulator.
    env.stop_operator().await;
    env.upstreams.allow_broker_host(IP_HOST);
    env.start_operator().await;
    env.wait_condition("to-ip", BROKER_SYNCED, "True", "Synced").await;
    wait_broker_reason(&env, "ip", "Ready").await;
    assert!(!ip.requests().is_empty());
    assert_eq!(internal.requests(), vec![], "evil.internal is still not listed");
    env.assert_no_canary_leaks().await;
}
