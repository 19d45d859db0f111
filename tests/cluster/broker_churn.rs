//! Issue 11 defect 3: a broker's status is written only when it changes, connections are not
//! re-reconciled by it, and a refused management login is tried once per backoff period for the
//! account however many connections use the broker. Issue 12: reconciles between refreshes reuse
//! the last broker check.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use crate::common::e2e::{CLIENT_ID, Env, M2M_CLIENT, M2M_SECRET, TENANT_ID};
use futures::StreamExt;
use idp_bridge::{broker::REFUSED_LOGIN_BACKOFF, crd::IdentityBroker};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;

const CONNECTIONS: usize = 6;
const WAIT: Duration = Duration::from_secs(40);

/// Counts the writes to IdentityBroker `auth0` (each a new resourceVersion) from now on.
struct BrokerWrites {
    count: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl BrokerWrites {
    /// Starts counting once the watch has listed the current object.
    async fn start(env: &Env) -> BrokerWrites {
        let api: Api<IdentityBroker> = Api::namespaced(env.client.clone(), &env.ns);
        let current = api.get("auth0").await.expect("reading the broker").resource_version();
        let count = Arc::new(AtomicUsize::new(0));
        let counter = count.clone();
        let task = tokio::spawn(async move {
            let mut seen = current;
            let mut events = std::pin::pin!(watcher(api, watcher::Config::default().fields("metadata.name=auth0")).applied_objects());
            while let Some(Ok(broker)) = events.next().await {
                if broker.resource_version() != seen {
                    seen = broker.resource_version();
                    counter.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        // The watch lists first; a write before it is listed would be seen as the listed state.
        tokio::time::sleep(Duration::from_millis(500)).await;
        BrokerWrites { count, task }
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

impl Drop for BrokerWrites {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn broker_ready(env: &Env, name: &str) -> Option<(String, String)> {
    let api: Api<IdentityBroker> = Api::namespaced(env.client.clone(), &env.ns);
    let broker = api.get(name).await.expect("reading the broker");
    let status = broker.status?;
    (status.observed_generation == broker.metadata.generation).then_some(())?;
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready")?;
    Some((ready.status.clone(), ready.reason.clone()))
}

/// Waits until IdentityBroker `auth0` is Ready with `status` and `reason`.
async fn wait_broker(env: &Env, status: &str, reason: &str) {
    wait_named_broker(env, "auth0", status, reason).await;
}

async fn wait_named_broker(env: &Env, name: &str, status: &str, reason: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = broker_ready(env, name).await;
        if now.as_ref().is_some_and(|(s, r)| s == status && r == reason) {
            return;
        }
        assert!(Instant::now() < deadline, "broker {name}'s Ready is {now:?}, not {status} ({reason})");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The number of Auth0 requests once none has come for longer than two requests of the Auth0
/// budget (1.5 s each). Ready is not the end of the start: each connection was also triggered by
/// the initial listing of its Secrets while its first reconcile ran, and that second reconcile's
/// read waits its turn in the budget.
async fn auth0_settled(env: &Env) -> usize {
    const QUIET: Duration = Duration::from_secs(4);
    let deadline = Instant::now() + WAIT;
    let mut seen = env.auth0.requests().len();
    loop {
        tokio::time::sleep(QUIET).await;
        let now = env.auth0.requests().len();
        if now == seen {
            return now;
        }
        assert!(Instant::now() < deadline, "Auth0 is still being called {WAIT:?} after the start");
        seen = now;
    }
}

/// `CONNECTIONS` connections on broker `auth0`, all reading Secret `web`.
async fn connections(env: &mut Env) -> Vec<String> {
    let names = azure_secret_and_names(env).await;
    for name in &names {
        env.connect(name, "web", json!({})).await;
    }
    names
}

/// A new valid Azure secret in Secret `web`: an event for every connection that reads it.
async fn put_valid_secret(env: &mut Env) {
    let value = env.canary("value");
    env.upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, &value, jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 90));
    env.put_secret("web", &[("client-secret", &value)], &[]).await;
}

/// The operator started on `CONNECTIONS` connections of broker `auth0`, all Ready.
async fn ready_connections(prefix: &str) -> (Env, Vec<String>) {
    let mut env = Env::without_operator(prefix).await;
    let names = connections(&mut env).await;
    env.start_operator().await;
    for name in &names {
        env.wait_ready(name).await;
    }
    (env, names)
}

/// Secret `web` with a valid Azure secret, and the names of `CONNECTIONS` connections.
async fn azure_secret_and_names(env: &mut Env) -> Vec<String> {
    put_valid_secret(env).await;
    (0..CONNECTIONS).map(|i| format!("app-{i}")).collect()
}

/// Token-based brokers have no token request: a 401 to any call refuses the token, and is
/// remembered for the same backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_static_token_is_tried_once_per_backoff_for_all_connections() {
    const ACCOUNT: &str = "0123456789abcdef0123456789abcdef";
    let mut env = Env::without_operator("broker-token-refused").await;
    let cf = env.upstreams.cloudflare().unwrap();
    cf.add_account(ACCOUNT);
    cf.add_token("the-granted-token", &[ACCOUNT]);
    env.put_secret("cf-token", &[("api-token", "a-revoked-token")], &[]).await;
    env.apply("IdentityBroker", "cf", json!({"spec": {"cloudflare": {"accountId": ACCOUNT, "apiTokenSecretRef": {"name": "cf-token"}}}}))
        .await;
    let names = azure_secret_and_names(&mut env).await;
    for (i, name) in names.iter().enumerate() {
        env.connect_to(name, "cf", json!({"cloudflare": {"name": format!("App {i}")}}), "web", json!({})).await;
    }
    env.start_operator().await;
    let started = Instant::now();
    for name in &names {
        env.wait_condition(name, "Ready", "False", "BrokerAuthFailed").await;
    }
    // Every connection re-triggered by its Secret, well inside the backoff: no new request.
    put_valid_secret(&mut env).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let elapsed = started.elapsed();
    assert!(elapsed < REFUSED_LOGIN_BACKOFF, "the scenario took {elapsed:?}, longer than the backoff it checks");
    let requests = cf.requests();
    println!("{CONNECTIONS} connections of one broker with a refused token: {} Cloudflare requests in {elapsed:?}", requests.len());
    assert_eq!(requests.len(), 1, "one refused call for {CONNECTIONS} connections and the broker check: {requests:?}");

    env.put_secret("cf-token", &[("api-token", "the-granted-token")], &[]).await;
    for name in &names {
        env.wait_ready(name).await;
    }
    env.assert_no_canary_leaks().await;
    env.stop_operator().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_management_login_is_tried_once_per_backoff_for_all_connections() {
    let mut env = Env::without_operator("broker-refused").await;
    env.put_secret("auth0-management", &[("client-id", M2M_CLIENT), ("client-secret", "not-the-m2m-secret")], &[]).await;
    let names = connections(&mut env).await;
    env.start_operator().await;
    let started = Instant::now();
    for name in &names {
        env.wait_condition(name, "Ready", "False", "BrokerAuthFailed").await;
    }
    wait_broker(&env, "False", "BrokerAuthFailed").await;

    // Steady state: the status says it all, so nothing writes it again, and the account's
    // refused login is not retried before its backoff ends, by the broker check or any of the
    // connections (a Secret event for the connections' Secret re-triggers them all).
    let writes = BrokerWrites::start(&env).await;
    put_valid_secret(&mut env).await;
    let observe_until = started + REFUSED_LOGIN_BACKOFF + Duration::from_secs(15);
    while Instant::now() < observe_until {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let elapsed = started.elapsed();
        let allowed = 1 + (elapsed.as_secs_f64() / REFUSED_LOGIN_BACKOFF.as_secs_f64()).floor() as usize;
        let logins = env.auth0.token_requests();
        assert!(
            logins <= allowed,
            "{logins} token requests in {elapsed:?} for {CONNECTIONS} connections of one broker (at most {allowed})"
        );
    }
    println!(
        "{CONNECTIONS} connections of one broker with refused management credentials: {} token requests in {:?}, {} broker status writes in steady state",
        env.auth0.token_requests(),
        started.elapsed(),
        writes.count()
    );
    assert_eq!(writes.count(), 0, "the broker's status was rewritten while nothing changed");

    // Fixed credentials are a new login: tried at once, whatever the backoff.
    env.put_secret("auth0-management", &[("client-id", M2M_CLIENT), ("client-secret", M2M_SECRET)], &[]).await;
    wait_broker(&env, "True", "Ready").await;
    for name in &names {
        env.wait_ready(name).await;
    }
    env.assert_no_canary_leaks().await;
    env.stop_operator().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_broker_is_not_rewritten_and_does_not_retrigger_its_connections() {
    let (mut env, _) = ready_connections("broker-quiet").await;
    wait_broker(&env, "True", "Ready").await;
    // Past the second of the last check, so a rewritten lastCheckTime would differ.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let requests = auth0_settled(&env).await;
    let writes = BrokerWrites::start(&env).await;

    // Metadata edits of the broker (a GitOps tool's label, an annotation) change neither its spec
    // nor its credentials: no status write, no reconcile of its connections (each would read the
    // broker's connection).
    for i in 0..3 {
        let patch = json!({"metadata": {"labels": {"e2e/touch": format!("t{i}")}}});
        Api::<IdentityBroker>::namespaced(env.client.clone(), &env.ns)
            .patch("auth0", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("labelling the broker");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(writes.count(), 3, "the three label edits, and no status write");
    let after: Vec<_> = env.auth0.requests().into_iter().skip(requests).collect();
    assert!(after.is_empty(), "requests to Auth0 in steady state: {after:?}");
    env.stop_operator().await;
}

/// Auth0 reads of connections since request `from`.
fn connection_reads(env: &Env, from: usize) -> Vec<String> {
    let requests = env.auth0.requests().into_iter().skip(from);
    requests.filter(|(method, path)| method == "GET" && path.starts_with("/api/v2/connections")).map(|(_, path)| path).collect()
}

/// A reconcile that nothing the broker sync depends on has changed for (here: a label on the
/// Secret every connection reads, which triggers all of them) reuses the last check until the
/// refresh and reads nothing from the broker; an annotation (a person asking for a look now)
/// does read it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciles_between_refreshes_reuse_the_last_broker_check() {
    let (mut env, names) = ready_connections("broker-checked").await;
    let settled = auth0_settled(&env).await;
    let tokens_before = env.upstreams.azure.token_requests();
    for i in 0..3 {
        let patch = json!({"metadata": {"labels": {"e2e/touch": format!("t{i}")}}});
        Api::<Secret>::namespaced(env.client.clone(), &env.ns)
            .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("labelling the Secret");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert_eq!(auth0_settled(&env).await, settled, "Auth0 requests after three label edits: {:?}", connection_reads(&env, settled));
    assert_eq!(env.upstreams.azure.token_requests(), tokens_before, "the validation is cached too");

    env.poke(&names[0]).await;
    let deadline = Instant::now() + WAIT;
    while connection_reads(&env, settled).is_empty() {
        assert!(Instant::now() < deadline, "the annotation did not make the connection look at Auth0");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    auth0_settled(&env).await;
    let reads = connection_reads(&env, settled);
    assert_eq!(reads.len(), 1, "only the annotated connection reads its Auth0 connection: {reads:?}");
    env.wait_ready(&names[0]).await;
    env.stop_operator().await;
}

/// Broker status checks run at most `--concurrency` at once, like connection reconciles: every
/// broker is checked when the operator starts, and unbounded, hundreds of brokers would each
/// hold a request (and a connection) to the API server and their broker at the same moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_checks_run_at_most_concurrency_at_once() {
    const BROKERS: usize = 5;
    const CONCURRENCY: u16 = 2;
    let mut env = Env::without_operator("broker-concurrency").await;
    // Each broker on an account and token of its own, so no check waits for another's answer.
    let cf = env.upstreams.cloudflare().expect("the Cloudflare emulator starts");
    for i in 0..BROKERS {
        let (account, token) = (format!("{:032x}", i + 1), format!("cf-token-{i}"));
        cf.add_account(&account);
        cf.add_token(&token, &[&account]);
        env.put_secret(&token, &[("api-token", &token)], &[]).await;
        let spec = json!({"spec": {"cloudflare": {"accountId": account, "apiTokenSecretRef": {"name": token}}}});
        env.apply("IdentityBroker", &format!("cf-{i}"), spec).await;
    }
    cf.kit().gate().pause();
    env.start_operator_with(|config| config.concurrency = CONCURRENCY).await;
    tokio::time::timeout(WAIT, cf.kit().gate().wait_held(CONCURRENCY.into())).await.expect("the first checks reach Cloudflare");
    // Time for any further check to arrive, well inside the request timeout.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(cf.kit().gate().held(), usize::from(CONCURRENCY), "broker checks in flight at once");
    cf.kit().gate().resume();
    for i in 0..BROKERS {
        wait_named_broker(&env, &format!("cf-{i}"), "True", "Ready").await;
    }
    env.stop_operator().await;
}
