//! The fault suite behind `idp-bridge-faults`: the benchmark's fleet (connections over all four
//! brokers and several namespaces, the operator as a separate process) driven through upstream
//! failures, lost answers, kills and a leader failover. Every scenario records each request per
//! upstream and operation, each status write and each Event, and checks invariants (nothing
//! lost, nothing duplicated, requests bounded by the backoff), never timings.

pub mod scenarios;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use idp_bridge::crd::AzureAdConnection;
use k8s_openapi::api::core::v1::Event;
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams},
};
use serde_json::json;

use crate::{
    bench::{
        BenchResult,
        fleet::{BrokerKind, Fleet},
        operator::OperatorProcess,
        phases::{self, Bench, Traffic},
        report::{Report, Verdict},
        watch::ConnectionWatch,
    },
    control_plane::{self, ControlPlane},
    kit::Kit,
    stack::Upstreams,
};

/// Flags of the operator in every scenario: short request timeouts, so that a lost answer is
/// noticed in seconds.
const OPERATOR_ARGS: &[&str] = &["--http-timeout=2s", "--reconcile-timeout=20s"];
/// Leader election as fast as a test can afford, for the failover scenario.
const LEADER_ARGS: &[&str] = &[
    "--leader-election=true",
    "--leader-election-lease-duration=3s",
    "--leader-election-renew-deadline=2s",
    "--leader-election-retry-period=500ms",
];
const POLL: Duration = Duration::from_millis(100);

/// One control plane, the emulators, the fleet and the operator, shared by the scenarios in turn;
/// each starts from a converged fleet.
pub struct Stage {
    pub bench: Bench,
    control_plane: ControlPlane,
    binary: PathBuf,
    log: PathBuf,
    /// Connections deleted by a scenario and not yet created again.
    pub deleted: BTreeSet<usize>,
}

impl Stage {
    /// Starts everything and brings `connections` connections to Ready.
    pub async fn start(binary: &Path, log: &Path, connections: usize, namespaces: usize) -> BenchResult<Self> {
        control_plane::install_crypto_provider();
        let control_plane = ControlPlane::start().await?;
        let client = control_plane.client().await;
        control_plane::install_crds(&client, &idp_bridge::crd::all()).await?;
        let mut upstreams = Upstreams::start()?;
        let fleet = Fleet::plan(&mut upstreams, connections, namespaces, "1m")?;
        fleet.install_brokers(&client).await?;
        let (watch, _task) = ConnectionWatch::start(&client);
        std::fs::File::create(log)?;
        let operator = launch(binary, &control_plane, &upstreams, log, &["--leader-election=false"]).await?;
        let bench = Bench::new(client, upstreams, fleet, watch, operator, Duration::from_secs(180));
        let mut stage = Self { bench, control_plane, binary: binary.to_owned(), log: log.to_owned(), deleted: BTreeSet::new() };
        let cold = phases::cold_start(&mut stage.bench).await?;
        if cold.ready < connections {
            return Err(format!("only {}/{connections} connections got Ready: {:?}", cold.ready, cold.not_ready).into());
        }
        Ok(stage)
    }

    pub fn connections(&self) -> usize {
        self.bench.fleet.connections.len()
    }

    /// Starts another operator process on the same cluster; `args` decide leader election.
    pub async fn launch(&self, args: &[&str]) -> BenchResult<OperatorProcess> {
        launch(&self.binary, &self.control_plane, &self.bench.upstreams, &self.log, args).await
    }

    /// SIGKILLs the operator and starts a new one without leader election.
    pub async fn kill_and_restart(&mut self) -> BenchResult<()> {
        self.bench.operator.kill().await;
        self.bench.operator = self.launch(&["--leader-election=false"]).await?;
        Ok(())
    }

    /// Every distinct broker emulator (one per Logto tenant, one shared for each other broker).
    pub fn broker_kits(&self) -> Vec<Kit> {
        let mut seen = BTreeSet::new();
        self.bench.fleet.connections.iter().map(|c| c.broker.kit().clone()).filter(|k| seen.insert(k.addr())).collect()
    }

    pub fn azure_kit(&self) -> &Kit {
        self.bench.upstreams.azure.kit()
    }

    /// Connections whose broker does not hold the value of their Secret (or that are deleted).
    pub fn behind(&self) -> Vec<usize> {
        (0..self.connections()).filter(|&i| !self.deleted.contains(&i) && !self.holds_latest(i)).collect()
    }

    /// Whether connection `i`'s broker object holds the value its Secret holds now.
    pub fn holds_latest(&self, i: usize) -> bool {
        let conn = &self.bench.fleet.connections[i];
        let id = self.bench.watch.get(&conn.key()).and_then(|o| o.broker_id);
        id.is_some_and(|id| conn.broker.held_secret(&id).as_deref() == Some(self.bench.value(i)))
    }

    /// Waits until every live connection is Ready and its broker holds its latest value; the
    /// connections still behind at `timeout`.
    pub async fn converge(&mut self, timeout: Duration) -> Vec<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let behind: Vec<usize> = self.behind().into_iter().chain(self.not_ready()).collect::<BTreeSet<_>>().into_iter().collect();
            if behind.is_empty() || Instant::now() > deadline {
                return behind;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn not_ready(&self) -> Vec<usize> {
        let connections = &self.bench.fleet.connections;
        (0..connections.len())
            .filter(|i| !self.deleted.contains(i) && !self.bench.watch.get(&connections[*i].key()).is_some_and(|o| o.ready))
            .collect()
    }

    /// Broker kinds whose emulators hold another number of objects than live connections.
    pub fn duplicates(&self) -> Vec<String> {
        let mut wrong = Vec::new();
        for kind in BrokerKind::ALL {
            let live =
                (0..self.connections()).filter(|i| self.bench.fleet.connections[*i].kind == kind && !self.deleted.contains(i)).count();
            let held = self.objects_of(kind);
            if held != live {
                wrong.push(format!("{}: {held} objects for {live} connections", kind.label()));
            }
        }
        wrong
    }

    fn objects_of(&self, kind: BrokerKind) -> usize {
        use crate::bench::fleet::BrokerEmulator as E;
        let mut logto = BTreeSet::new();
        let mut count = 0;
        for conn in self.bench.fleet.connections.iter().filter(|c| c.kind == kind) {
            count = match &conn.broker {
                E::Auth0(e) => e.connections().len(),
                E::Cloudflare(e) => e.providers().len(),
                E::Unified(e) => e.connections().len(),
                E::Logto(e) => {
                    if logto.insert(e.kit().addr()) {
                        count + e.connectors().len()
                    } else {
                        count
                    }
                }
            };
        }
        count
    }

    /// Asks for a check of connection `i` now, as a person would (the refresh annotation).
    pub async fn poke(&self, i: usize, nonce: usize) -> BenchResult<()> {
        let conn = &self.bench.fleet.connections[i];
        let api: Api<AzureAdConnection> = Api::namespaced(self.bench.client.clone(), &conn.namespace);
        let patch = json!({"metadata": {"annotations": {"idpbridge.io/refresh": nonce.to_string()}}});
        api.patch(&conn.name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        Ok(())
    }

    /// Events about connections in the fleet's namespaces, by occurrences (a repeated Event is
    /// one object with a count).
    pub async fn events(&self) -> BenchResult<i64> {
        let mut total = 0;
        for namespace in &self.bench.fleet.namespaces {
            let api: Api<Event> = Api::namespaced(self.bench.client.clone(), namespace);
            let listed = api.list(&ListParams::default().fields("involvedObject.kind=AzureAdConnection")).await?;
            total += listed.items.iter().map(occurrences).sum::<i64>();
        }
        Ok(total)
    }

    /// The status's expiry of every connection, as the API server holds it now.
    pub async fn expiries(&self) -> BenchResult<Vec<Option<String>>> {
        let mut expiries = Vec::new();
        for conn in &self.bench.fleet.connections {
            let api: Api<AzureAdConnection> = Api::namespaced(self.bench.client.clone(), &conn.namespace);
            let got = api.get(&conn.name).await?;
            expiries.push(got.status.and_then(|s| s.secret).and_then(|s| s.expires_at).map(|t| t.0.to_string()));
        }
        Ok(expiries)
    }

    /// Starts recording a scenario's window.
    pub async fn window(&self) -> BenchResult<Window> {
        Ok(Window { from: Instant::now(), events: self.events().await? })
    }

    /// Requests, status writes and Events since `window` began, as rows of `report`.
    pub async fn record(&self, window: &Window, report: &mut Report) -> BenchResult<Recorded> {
        let to = Instant::now();
        let traffic = phases::traffic(&self.bench, window.from, to);
        let writes = self.bench.watch.writes_between(window.from, to).len();
        let events = self.events().await? - window.events;
        let recorded = Recorded { minutes: (to - window.from).as_secs_f64() / 60.0, traffic, status_writes: writes, events };
        recorded.report(self.connections(), report);
        Ok(recorded)
    }
}

async fn launch(
    binary: &Path,
    control_plane: &ControlPlane,
    upstreams: &Upstreams,
    log: &Path,
    args: &[&str],
) -> BenchResult<OperatorProcess> {
    let args: Vec<String> = OPERATOR_ARGS.iter().chain(args).map(|a| (*a).to_owned()).collect();
    let hosts = (&upstreams.overrides(), &upstreams.broker_hosts());
    OperatorProcess::start_with_args(binary, control_plane.kubeconfig_path(), hosts, upstreams.ca_path(), log, &args).await
}

/// The leader-election flags for a replica named `name`.
pub fn replica_args(name: &str) -> Vec<String> {
    LEADER_ARGS.iter().map(|a| (*a).to_owned()).chain([format!("--instance={name}")]).collect()
}

fn occurrences(event: &Event) -> i64 {
    let series = event.series.as_ref().and_then(|s| s.count).unwrap_or(0);
    i64::from(series.max(event.count.unwrap_or(0)).max(1))
}

pub struct Window {
    pub from: Instant,
    events: i64,
}

/// What a scenario's window saw.
pub struct Recorded {
    pub minutes: f64,
    pub traffic: Traffic,
    pub status_writes: usize,
    pub events: i64,
}

impl Recorded {
    fn report(&self, n: usize, report: &mut Report) {
        let per = |count: usize| count as f64 / n as f64 / self.minutes.max(1.0 / 60.0);
        let azure = &self.traffic.azure;
        let azure_line = format!("token {:.2}, discovery {:.2}, Graph {:.2}", per(azure.tokens), per(azure.discovery), per(azure.graph));
        report.info("Azure requests per connection per minute", azure_line, Some(per(azure.total())));
        for (broker, requests) in &self.traffic.brokers {
            let line = format!("token {:.2}, reads {:.2}, writes {:.2}", per(requests.tokens), per(requests.reads), per(requests.writes));
            report.info(format!("{broker} requests per connection per minute"), line, Some(per(requests.total())));
        }
        report.info("status writes", self.status_writes.to_string(), Some(self.status_writes as f64));
        report.info("Events", self.events.to_string(), Some(self.events as f64));
    }
}

/// An invariant row: `ok`, with what was seen.
pub fn check(report: &mut Report, invariant: &str, ok: bool, seen: impl Into<String>) {
    report.row(invariant, "holds", seen, Verdict::invariant(ok), None);
}

/// The most attempts a connection's exponential backoff (2 s doubling, at least 0.8 of each
/// step; see the controller's schedule) allows in `window`, plus the attempt that starts it and
/// one for a trigger of the scenario's own (a rotation, a poke).
pub fn backoff_bound(window: Duration) -> usize {
    let (mut elapsed, mut step, mut attempts) = (0.0, 1.6, 2);
    while elapsed + step <= window.as_secs_f64() {
        elapsed += step;
        step = (step * 2.0).min(240.0);
        attempts += 1;
    }
    attempts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_bound_counts_the_shortest_steps_that_fit() {
        assert_eq!(backoff_bound(Duration::from_secs(1)), 2);
        // 1.6 + 3.2 + 6.4 = 11.2 s: three retries fit in 15 s.
        assert_eq!(backoff_bound(Duration::from_secs(15)), 5);
        // ... + 12.8 + 25.6 + 51.2 = 100.8 s, then 102.4 more is past 150 s.
        assert_eq!(backoff_bound(Duration::from_secs(150)), 8);
    }
}
