//! Leader election on a real kube-apiserver: candidates in one namespace with short timings
//! (lease 3 s, renew deadline 2 s, retry 500 ms). A background sampler checks every few
//! milliseconds that no two candidates lead, or run their work, at the same time. The measured
//! takeover times are printed.

use std::{
    io::Write as _,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use crate::common::e2e::{CLIENT_ID, Env, TENANT_ID};
use idp_bridge::leader::{LeaderElection, LeaderState, LeaseSettings};
use idp_bridge_devenv::stack::RunningOperator;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use serde_json::json;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{oneshot, watch},
    task::JoinHandle,
};

const LEASE: &str = "test-leader";
const LEASE_DURATION: Duration = Duration::from_secs(3);
const RENEW_DEADLINE: Duration = Duration::from_secs(2);
const RETRY_PERIOD: Duration = Duration::from_millis(500);
const SETTLE: Duration = Duration::from_secs(20);

fn settings(namespace: &str, instance: &str) -> LeaseSettings {
    LeaseSettings {
        name: LEASE.into(),
        lease_duration: LEASE_DURATION,
        renew_deadline: RENEW_DEADLINE,
        retry_period: RETRY_PERIOD,
        ..LeaseSettings::new(namespace, instance)
    }
}

/// A measurement on stderr, past libtest's capture, so it shows in every run.
fn report(what: &str, took: Duration) {
    let _ = writeln!(std::io::stderr(), "[leader_election] {what}: {} ms", took.as_millis());
}

/// Sets a flag while alive: the work is running until it returns or is aborted.
struct Running(Arc<AtomicBool>);

impl Running {
    fn new(flag: &Arc<AtomicBool>) -> Self {
        assert!(!flag.swap(true, Ordering::SeqCst), "the work started twice at once");
        Self(flag.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// One elector running a trivial piece of work that records when it runs.
struct Candidate {
    identity: String,
    state: watch::Receiver<LeaderState>,
    working: Arc<AtomicBool>,
    terms: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Candidate {
    fn start(client: Client, settings: LeaseSettings) -> Candidate {
        Self::start_slow(client, settings, Duration::ZERO)
    }

    /// A candidate whose work takes `stop_delay` to stop once told to.
    fn start_slow(client: Client, settings: LeaseSettings, stop_delay: Duration) -> Candidate {
        let election = LeaderElection::new(client, settings).expect("valid settings");
        let identity = election.identity().to_owned();
        let state = election.state();
        let working = Arc::new(AtomicBool::new(false));
        let terms = Arc::new(AtomicUsize::new(0));
        let (stop, stopped) = oneshot::channel::<()>();
        let (flag, count) = (working.clone(), terms.clone());
        let task = tokio::spawn(election.run(
            async {
                let _ = stopped.await;
            },
            move |stop_work| {
                let (flag, count) = (flag.clone(), count.clone());
                async move {
                    let _running = Running::new(&flag);
                    count.fetch_add(1, Ordering::SeqCst);
                    stop_work.cancelled().await;
                    tokio::time::sleep(stop_delay).await;
                }
            },
        ));
        Candidate { identity, state, working, terms, stop: Some(stop), task }
    }

    fn state(&self) -> LeaderState {
        self.state.borrow().clone()
    }

    fn leads(&self) -> bool {
        self.state.borrow().is_leader()
    }

    /// Graceful stop, as on SIGTERM: stops the work and releases the Lease.
    async fn stop(mut self) {
        let _ = self.stop.take().expect("not stopped yet").send(());
        (&mut self.task).await.expect("the election ends cleanly");
        assert!(!self.working.load(Ordering::SeqCst), "the work has stopped");
        assert_eq!(self.state(), LeaderState::Unknown);
    }

    /// A crash: the task is aborted, nothing is released.
    async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
        // The work's task is aborted with it (cancellation completes on the runtime, not inline).
        wait_until("the crashed candidate's work to be aborted", Duration::from_secs(1), || !self.working.load(Ordering::SeqCst)).await;
    }
}

/// Samples who leads and who works, every 5 ms, and remembers any moment with two of either.
struct Monitor {
    overlaps: Arc<Mutex<Vec<String>>>,
    samples: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Monitor {
    fn watch(candidates: &[&Candidate]) -> Monitor {
        let watched: Vec<_> = candidates.iter().map(|c| (c.identity.clone(), c.state.clone(), c.working.clone())).collect();
        Self::watch_states(watched)
    }

    fn watch_states(watched: Vec<(String, watch::Receiver<LeaderState>, Arc<AtomicBool>)>) -> Monitor {
        let overlaps = Arc::new(Mutex::new(Vec::new()));
        let samples = Arc::new(AtomicUsize::new(0));
        let (found, count) = (overlaps.clone(), samples.clone());
        let task = tokio::spawn(async move {
            loop {
                let leaders: Vec<&str> = watched.iter().filter(|(_, s, _)| s.borrow().is_leader()).map(|(id, _, _)| id.as_str()).collect();
                let workers: Vec<&str> =
                    watched.iter().filter(|(_, _, w)| w.load(Ordering::SeqCst)).map(|(id, _, _)| id.as_str()).collect();
                if leaders.len() > 1 || workers.len() > 1 {
                    found.lock().unwrap().push(format!("leaders {leaders:?}, working {workers:?}"));
                }
                count.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        Monitor { overlaps, samples, task }
    }

    fn assert_never_two(self) {
        self.task.abort();
        let overlaps = self.overlaps.lock().unwrap();
        assert!(self.samples.load(Ordering::Relaxed) > 10, "the monitor sampled");
        assert!(overlaps.is_empty(), "two leaders at once: {:?}", &overlaps[..overlaps.len().min(5)]);
    }
}

/// Waits until `check` holds (polling every 5 ms) and returns how long that took.
async fn wait_until(what: &str, limit: Duration, check: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

async fn lease(client: &Client, namespace: &str) -> Lease {
    Api::<Lease>::namespaced(client.clone(), namespace).get(LEASE).await.expect("the Lease exists")
}

async fn new_client() -> Client {
    crate::common::control_plane().await.client().await
}

/// Starts `a`, waits until it leads, then starts `b` and waits until it stands by.
async fn leader_and_standby(ns: &str) -> (Candidate, Candidate) {
    let a = Candidate::start(new_client().await, settings(ns, "a"));
    wait_until("a to lead", SETTLE, || a.leads()).await;
    let b = Candidate::start(new_client().await, settings(ns, "b"));
    wait_until("b to stand by", SETTLE, || b.state() == LeaderState::Standby { holder: Some(a.identity.clone()) }).await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_of_two_leads() {
    let (client, ns) = crate::common::namespace("le-one").await;
    let a = Candidate::start(new_client().await, settings(&ns, "a"));
    let b = Candidate::start(new_client().await, settings(&ns, "b"));
    assert!(a.identity.starts_with("a-") && b.identity.starts_with("b-"));
    wait_until("someone to lead", SETTLE, || a.leads() || b.leads()).await;
    let monitor = Monitor::watch(&[&a, &b]);
    let (leader, standby) = if a.leads() { (&a, &b) } else { (&b, &a) };
    wait_until("the other to stand by", SETTLE, || standby.state() == LeaderState::Standby { holder: Some(leader.identity.clone()) }).await;

    let first = lease(&client, &ns).await.spec.unwrap();
    assert_eq!(first.holder_identity.as_deref(), Some(leader.identity.as_str()));
    assert_eq!(first.lease_duration_seconds, Some(3));
    assert_eq!(first.lease_transitions, Some(0));
    assert!(first.acquire_time.is_some());

    // Several lease durations later: the same leader, renewing; the standby never ran its work.
    tokio::time::sleep(LEASE_DURATION * 2).await;
    assert!(leader.leads() && !standby.leads());
    assert_eq!(standby.terms.load(Ordering::SeqCst), 0);
    assert_eq!(leader.terms.load(Ordering::SeqCst), 1);
    let later = lease(&client, &ns).await.spec.unwrap();
    assert_eq!(later.holder_identity, first.holder_identity);
    assert_eq!(later.acquire_time, first.acquire_time, "renewals keep the acquire time");
    assert_eq!(later.lease_transitions, Some(0));
    assert!(later.renew_time.as_ref().unwrap().0 > first.renew_time.as_ref().unwrap().0, "the leader renews");
    monitor.assert_never_two();
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_from_a_crashed_leader() {
    let (client, ns) = crate::common::namespace("le-crash").await;
    let (a, b) = leader_and_standby(&ns).await;
    let monitor = Monitor::watch(&[&a, &b]);
    tokio::time::sleep(Duration::from_millis(700)).await;

    let crashed = Instant::now();
    a.kill().await;
    wait_until("b to take over", SETTLE, || b.leads()).await;
    let took = crashed.elapsed();
    report("takeover after a crash (lease 3 s, retry 500 ms)", took);
    // It waited for the lease to expire (the last renewal was at most one retry period before
    // the crash), and no longer than the lease duration plus a few retries.
    assert!(took >= LEASE_DURATION - RETRY_PERIOD - Duration::from_millis(100), "took over too early: {took:?}");
    assert!(took <= LEASE_DURATION + Duration::from_secs(2), "took over too late: {took:?}");
    wait_until("b's work to run", SETTLE, || b.working.load(Ordering::SeqCst)).await;

    let spec = lease(&client, &ns).await.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some(b.identity.as_str()));
    assert_eq!(spec.lease_transitions, Some(1));
    monitor.assert_never_two();
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_hands_over_at_once() {
    let (client, ns) = crate::common::namespace("le-release").await;
    let (a, b) = leader_and_standby(&ns).await;
    let monitor = Monitor::watch(&[&a, &b]);
    let b_state = b.state.clone();

    let stopping = Instant::now();
    a.stop().await;
    let released = stopping.elapsed();
    wait_until("b to take over", SETTLE, || b_state.borrow().is_leader()).await;
    let took = stopping.elapsed();
    report("takeover after a graceful stop (lease 3 s, retry 500 ms)", took);
    assert!(took < LEASE_DURATION / 2, "a released Lease is taken on the next retry, not after expiry: {took:?}");
    assert!(released < Duration::from_secs(1), "stopping and releasing is quick: {released:?}");

    let spec = lease(&client, &ns).await.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some(b.identity.as_str()));
    assert_eq!(spec.lease_transitions, Some(1));
    monitor.assert_never_two();
    b.stop().await;
    let released = lease(&client, &ns).await.spec.unwrap();
    assert_eq!(released.holder_identity, None, "the last one out releases too");
    assert_eq!(released.lease_duration_seconds, Some(1));
}

/// A TCP proxy to the apiserver that can be cut, to partition one client from it: connections
/// are dropped and new ones are accepted but never answered.
struct Partition {
    addr: SocketAddr,
    cut: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Partition {
    async fn to(target: SocketAddr) -> Partition {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, cut_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut cut = cut_rx.clone();
                tokio::spawn(async move {
                    if *cut.borrow_and_update() {
                        // Black hole until healed, then drop the connection.
                        let _ = cut.wait_for(|c| !*c).await;
                        return;
                    }
                    let Ok(mut outbound) = TcpStream::connect(target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.wait_for(|c| *c) => {}
                    }
                });
            }
        });
        Partition { addr, cut, task }
    }

    fn set(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_steps_down_before_anyone_takes_over() {
    let (_, ns) = crate::common::namespace("le-partition").await;
    let cp = crate::common::control_plane().await;
    let server: url::Url = cp.server_url().parse().unwrap();
    let target = SocketAddr::new(server.host_str().unwrap().parse().unwrap(), server.port().unwrap());
    let partition = Partition::to(target).await;
    let mut config = cp.config();
    config.cluster_url = format!("https://{}", partition.addr).parse().unwrap();
    // a's work ignores the stop signal for far longer than the lease: it must be aborted in time.
    let a = Candidate::start_slow(Client::try_from(config).unwrap(), settings(&ns, "a"), Duration::from_secs(60));
    wait_until("a to lead", SETTLE, || a.leads()).await;
    let b = Candidate::start(new_client().await, settings(&ns, "b"));
    wait_until("b to stand by", SETTLE, || b.state() == LeaderState::Standby { holder: Some(a.identity.clone()) }).await;
    let monitor = Monitor::watch(&[&a, &b]);
    tokio::time::sleep(Duration::from_millis(700)).await;

    let cut = Instant::now();
    partition.set(true);
    let stepped_down = wait_until("a to step down", SETTLE, || !a.leads()).await;
    let aborted = wait_until("a's work to be aborted", SETTLE, || !a.working.load(Ordering::SeqCst)).await.max(cut.elapsed());
    wait_until("b to take over", SETTLE, || b.leads()).await;
    let took_over = cut.elapsed();
    report("partitioned leader stepped down after", stepped_down);
    report("partitioned leader's stuck work aborted after", aborted);
    report("takeover after a partition (lease 3 s, renew deadline 2 s)", took_over);
    assert!(stepped_down <= RENEW_DEADLINE + Duration::from_millis(300), "the renew deadline is kept: {stepped_down:?}");
    assert!(stepped_down < aborted && aborted < took_over, "the old leader stops before the new one starts");
    assert!(took_over <= LEASE_DURATION + Duration::from_secs(2), "took over too late: {took_over:?}");
    assert_eq!(a.state(), LeaderState::Standby { holder: None });

    // Healed: a sees the new holder and stays standby.
    partition.set(false);
    wait_until("a to see b lead", SETTLE, || a.state() == LeaderState::Standby { holder: Some(b.identity.clone()) }).await;
    tokio::time::sleep(RETRY_PERIOD * 3).await;
    assert!(b.leads() && !a.leads());
    assert_eq!(a.terms.load(Ordering::SeqCst), 1);
    monitor.assert_never_two();
    a.stop().await;
    b.stop().await;
}

fn in_a_year() -> jiff::Timestamp {
    jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 365)
}

fn state_of(op: &RunningOperator) -> watch::Receiver<LeaderState> {
    op.leader_state().expect("the e2e operators run under leader election")
}

/// Instances that reported events about connection `name`.
/// The instances that published events about `name`. Events follow the status write that made
/// the connection Ready, so this waits (bounded) for the first of them instead of racing it.
async fn reporters(env: &Env, name: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut reporters: Vec<String> = env
            .events()
            .await
            .into_iter()
            .filter(|e| e.involved_object.name.as_deref() == Some(name))
            .map(|e| e.reporting_instance.unwrap_or_default())
            .collect();
        reporters.sort();
        reporters.dedup();
        if !reporters.is_empty() || Instant::now() > deadline {
            return reporters;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn connection_creates(env: &Env) -> usize {
    env.auth0.requests().iter().filter(|(method, path)| method == "POST" && path.ends_with("/api/v2/connections")).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_operators_only_the_leader_reconciles() {
    // The first operator ("devenv") leads; a second replica stands by on the same Lease.
    let mut env = Env::new("le-operators").await;
    let first = state_of(env.operator());
    wait_until("the first operator to lead", SETTLE, || first.borrow().is_leader()).await;
    let first_identity = env.operator().identity().unwrap().to_owned();
    let replica = env.start_replica("replica").await;
    let second = state_of(&replica);
    wait_until("the replica to stand by", SETTLE, || *second.borrow() == LeaderState::Standby { holder: Some(first_identity.clone()) })
        .await;
    let working = |_| Arc::new(AtomicBool::new(false));
    let monitor = Monitor::watch_states(vec![
        (first_identity.clone(), first.clone(), working(())),
        (replica.identity().unwrap().to_owned(), second.clone(), working(())),
    ]);

    // A connection is created once, by the leader only.
    let value = env.canary("value");
    env.upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, &value, in_a_year());
    env.put_secret("web", &[("client-secret", &value)], &[]).await;
    env.connect("contoso", "web", json!({})).await;
    env.wait_ready("contoso").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(connection_creates(&env), 1, "one create at the broker");
    assert_eq!(env.auth0.connections().iter().filter(|c| c["name"] == "contoso").count(), 1);
    assert_eq!(reporters(&env, "contoso").await, ["devenv"], "only the leader publishes events");
    assert!(!second.borrow().is_leader());

    // The leader stops (a rolling update): the replica takes over and reconciles new work.
    let stopping = Instant::now();
    env.stop_operator().await;
    wait_until("the replica to take over", SETTLE, || second.borrow().is_leader()).await;
    report("operator takeover after a graceful stop (default timings: lease 15 s, retry 2 s)", stopping.elapsed());
    env.connect("fabrikam", "web", json!({})).await;
    let ready = Instant::now();
    env.wait_ready("fabrikam").await;
    report("the new leader reconciled a new connection to Ready in", ready.elapsed());
    assert_eq!(reporters(&env, "fabrikam").await, ["replica"]);
    assert_eq!(env.auth0.connections().iter().filter(|c| c["name"] == "fabrikam").count(), 1);
    assert_eq!(connection_creates(&env), 2, "the takeover re-created nothing");
    env.wait_ready("contoso").await;
    monitor.assert_never_two();
    replica.stop().await;
    env.assert_no_canary_leaks().await;
}
