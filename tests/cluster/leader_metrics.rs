//! Issue 11 defect 5: per-connection metrics follow the Lease. Two operator replicas on one
//! Lease, both scraped: only the leader exports per-connection series, `idpbridge_leader` says
//! which one leads, and a connection deleted while a replica stood by is never exported by it
//! when it leads again.

use std::time::{Duration, Instant};

use crate::common::e2e::{CLIENT_ID, Env, TENANT_ID, http_get};
use idp_bridge::leader::{DEFAULT_LEASE_NAME, LeaderState};
use idp_bridge_devenv::stack::RunningOperator;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams},
};
use serde_json::json;
use tokio::sync::watch;

/// Long enough for a Lease handover with the default timings (retry 2 s) and a reconcile.
const SETTLE: Duration = Duration::from_secs(40);

async fn scrape(op: &RunningOperator) -> String {
    let (status, body) = http_get(op, "/metrics").await;
    assert_eq!(status, 200);
    body
}

/// The names of the connections with a series of `metric` in the exposition.
fn connections_in(exposition: &str, metric: &str) -> Vec<String> {
    let mut names: Vec<String> = exposition
        .lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter_map(|l| l.split("name=\"").nth(1).and_then(|rest| rest.split('"').next()).map(str::to_owned))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Per-connection series of either kind.
fn per_connection(exposition: &str) -> Vec<String> {
    let mut names = connections_in(exposition, "idpbridge_connection_ready");
    names.extend(connections_in(exposition, "idpbridge_client_secret_expiry_timestamp_seconds"));
    names.sort();
    names.dedup();
    names
}

/// The value of the unlabelled `idpbridge_leader` gauge.
fn leader_gauge(exposition: &str) -> Option<i64> {
    exposition.lines().find_map(|l| l.strip_prefix("idpbridge_leader ")).map(|v| v.trim().parse().expect("a gauge value"))
}

async fn until(what: &str, check: impl AsyncFn() -> bool) {
    let deadline = Instant::now() + SETTLE;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Hands the Lease to `identity`, as if that replica had taken it: the current leader sees
/// another holder at its next renewal and stands by, and `identity` renews what it finds as its
/// own.
async fn hand_lease_to(env: &Env, identity: &str) {
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), &env.ns);
    let patch = json!({"spec": {"holderIdentity": identity}});
    leases.patch(DEFAULT_LEASE_NAME, &PatchParams::default(), &Patch::Merge(&patch)).await.expect("handing the Lease over");
}

fn leads(state: &watch::Receiver<LeaderState>) -> bool {
    state.borrow().is_leader()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_exports_per_connection_series() {
    let mut env = Env::new("le-metrics").await;
    let first = env.operator().leader_state().expect("leader election");
    until("the first operator to lead", async || leads(&first)).await;
    let value = env.canary("value");
    env.upstreams.azure.set_graph_read_all(TENANT_ID, CLIENT_ID, true);
    env.upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, &value, jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 90));
    env.put_secret("web", &[("client-secret", &value)], &[]).await;
    for name in ["contoso", "fabrikam"] {
        env.connect(name, "web", json!({})).await;
    }
    for name in ["contoso", "fabrikam"] {
        env.wait_ready(name).await;
    }
    until("the leader to export both connections", async || per_connection(&scrape(env.operator()).await) == ["contoso", "fabrikam"]).await;
    assert_eq!(leader_gauge(&scrape(env.operator()).await), Some(1));

    // A replica that starts as standby exports no per-connection series.
    let replica = env.start_replica("replica").await;
    let second = replica.leader_state().expect("leader election");
    until("the replica to stand by", async || matches!(*second.borrow(), LeaderState::Standby { holder: Some(_) })).await;
    let standby = scrape(&replica).await;
    assert_eq!(per_connection(&standby), Vec::<String>::new(), "a standby from start-up:\n{standby}");
    assert_eq!(leader_gauge(&standby), Some(0), "{standby}");

    // The first loses the Lease: it stops exporting its series; the replica exports them.
    hand_lease_to(&env, replica.identity().unwrap()).await;
    until("the replica to lead and the first to stand by", async || leads(&second) && !leads(&first)).await;
    until("the new leader to export both connections", async || per_connection(&scrape(&replica).await) == ["contoso", "fabrikam"]).await;
    until("the old leader to drop its series", async || per_connection(&scrape(env.operator()).await).is_empty()).await;
    let old = scrape(env.operator()).await;
    assert_eq!(leader_gauge(&old), Some(0), "{old}");
    assert_eq!(leader_gauge(&scrape(&replica).await), Some(1));

    // Deleted while the first stands by: it never exports it again, neither now nor as leader.
    env.connections().delete("fabrikam", &DeleteParams::default()).await.expect("deleting fabrikam");
    until("fabrikam to be gone", async || env.connections().get_opt("fabrikam").await.unwrap().is_none()).await;
    until("the leader to drop fabrikam", async || per_connection(&scrape(&replica).await) == ["contoso"]).await;
    assert!(per_connection(&scrape(env.operator()).await).is_empty());
    hand_lease_to(&env, env.operator().identity().unwrap()).await;
    until("the first to lead again", async || leads(&first) && !leads(&second)).await;
    until("the first to export contoso", async || per_connection(&scrape(env.operator()).await) == ["contoso"]).await;
    until("the replica to drop its series", async || per_connection(&scrape(&replica).await).is_empty()).await;
    // Settled: still only contoso, from the leader only.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (leader, standby) = (scrape(env.operator()).await, scrape(&replica).await);
    assert_eq!(per_connection(&leader), ["contoso"], "{leader}");
    assert_eq!(per_connection(&standby), Vec::<String>::new(), "{standby}");
    assert_eq!((leader_gauge(&leader), leader_gauge(&standby)), (Some(1), Some(0)));
    replica.stop().await;
    env.assert_no_canary_leaks().await;
}
