//! The measured phases, in the order the bench runs them: cold start, Secrets no connection
//! reads, one rotation at a time (with a floor sample after each), every connection rotated at
//! once, and a steady-state window. Every wait has a deadline.

use std::{
    collections::{BTreeMap, HashSet},
    time::{Duration, Instant},
};

use crate::{
    kit::{Kit, LoggedRequest},
    stack::Upstreams,
};
use futures::{StreamExt as _, TryStreamExt as _, stream};
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use serde::Serialize;

use super::{
    BenchResult,
    fleet::{BrokerKind, Connection, Fleet, IN_FLIGHT, TENANT_ID, put_secret},
    floor::{Floor, FloorSample},
    operator::OperatorProcess,
    watch::ConnectionWatch,
};

const POLL: Duration = Duration::from_millis(5);
const ROTATION_TIMEOUT: Duration = Duration::from_secs(60);
/// Unrelated Secrets created at once.
const UNRELATED_IN_FLIGHT: usize = 16;

/// Everything the phases share.
pub struct Bench {
    pub client: Client,
    pub upstreams: Upstreams,
    pub fleet: Fleet,
    pub watch: ConnectionWatch,
    pub operator: OperatorProcess,
    /// The deadline of a phase that waits for the whole fleet.
    pub phase_timeout: Duration,
    /// The value each connection's Secret holds now.
    values: Vec<String>,
    rotations: Vec<u32>,
    /// Each connection's broker object, once synced.
    ids: Vec<Option<String>>,
}

impl Bench {
    pub fn new(
        client: Client,
        upstreams: Upstreams,
        fleet: Fleet,
        watch: ConnectionWatch,
        operator: OperatorProcess,
        phase_timeout: Duration,
    ) -> Self {
        let n = fleet.connections.len();
        Self { client, upstreams, fleet, watch, operator, phase_timeout, values: Vec::new(), rotations: vec![0; n], ids: vec![None; n] }
    }

    /// The value connection `i`'s Secret holds now.
    pub fn value(&self, i: usize) -> &str {
        &self.values[i]
    }

    /// Records `value` as what connection `i`'s Secret holds (after a re-create).
    pub fn set_value(&mut self, i: usize, value: String) {
        self.values[i] = value;
    }

    /// Puts a fresh valid value into connection `i`'s Secret; returns when the update was sent.
    pub async fn rotate(&mut self, i: usize) -> BenchResult<Instant> {
        let value = self.next_value(i);
        let sent = put_value(&self.client, &self.fleet.connections[i], &value).await?;
        self.values[i] = value;
        Ok(sent)
    }

    /// Connection `i`'s broker object, as its status named it after the cold start.
    pub fn id(&self, i: usize) -> Option<&str> {
        self.ids[i].as_deref()
    }

    pub fn keys(&self) -> Vec<String> {
        self.fleet.connections.iter().map(Connection::key).collect()
    }

    /// A fresh secret value for connection `i`, registered with Azure so that it validates.
    pub fn next_value(&mut self, i: usize) -> String {
        self.rotations[i] += 1;
        let value = format!("Bn{}Q~bench-{i}-{}-{:016x}", i % 10, self.rotations[i], rand::random::<u64>());
        let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 365);
        self.upstreams.azure.add_secret(TENANT_ID, &self.fleet.connections[i].client_id, &value, expires);
        value
    }

    /// Waits until every connection is Ready (or the phase deadline, or the operator exits);
    /// returns how many are.
    pub async fn wait_all_ready(&mut self, since: Instant) -> usize {
        let keys = self.keys();
        let deadline = since + self.phase_timeout;
        loop {
            let ready = self.watch.ready_count(keys.iter().map(String::as_str));
            if ready == keys.len() || Instant::now() > deadline || self.operator.exited().is_some() {
                return ready;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The Ready reasons of the connections that are not Ready, counted.
    pub fn not_ready_reasons(&self) -> BTreeMap<String, usize> {
        let mut reasons = BTreeMap::new();
        for key in self.keys() {
            match self.watch.get(&key) {
                Some(o) if o.ready => {}
                Some(o) => *reasons.entry(o.ready_reason.unwrap_or_else(|| "no Ready condition".into())).or_default() += 1,
                None => *reasons.entry("not observed".to_owned()).or_default() += 1,
            }
        }
        reasons
    }

    /// The kits of `kind`'s emulators (one per Logto connection; one shared otherwise).
    fn kits(&self, kind: BrokerKind) -> Vec<Kit> {
        let of_kind = self.fleet.connections.iter().filter(|c| c.kind == kind).map(|c| c.broker.kit().clone());
        if kind == BrokerKind::Logto { of_kind.collect() } else { of_kind.take(1).collect() }
    }

    fn broker_requests(&self, kind: BrokerKind, from: Instant, to: Instant) -> Vec<LoggedRequest> {
        self.kits(kind).iter().flat_map(|k| k.log().entries_since(from)).filter(|r| r.arrived_at < to).collect()
    }

    fn count_of(&self, kind: BrokerKind) -> usize {
        self.fleet.connections.iter().filter(|c| c.kind == kind).count()
    }
}

/// The broker's own token endpoint (a POST, but not a write to the broker's objects).
fn is_broker_token(r: &LoggedRequest) -> bool {
    matches!(r.path.as_str(), "/oauth/token" | "/oidc/token")
}

/// Requests of one upstream, by role.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Requests {
    pub tokens: usize,
    pub reads: usize,
    pub writes: usize,
}

impl Requests {
    fn of_broker(requests: &[LoggedRequest]) -> Self {
        let tokens = requests.iter().filter(|r| is_broker_token(r)).count();
        let writes = requests.iter().filter(|r| r.write && !is_broker_token(r)).count();
        Self { tokens, reads: requests.len() - tokens - writes, writes }
    }

    pub fn total(&self) -> usize {
        self.tokens + self.reads + self.writes
    }
}

/// Requests to the Azure emulator, by endpoint.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct AzureRequests {
    pub tokens: usize,
    pub discovery: usize,
    pub graph: usize,
}

impl AzureRequests {
    fn of(requests: &[LoggedRequest]) -> Self {
        Self {
            tokens: requests.iter().filter(|r| r.path.ends_with("/oauth2/v2.0/token")).count(),
            discovery: requests.iter().filter(|r| r.path.ends_with("/.well-known/openid-configuration")).count(),
            graph: requests.iter().filter(|r| r.path.starts_with("/v1.0/")).count(),
        }
    }

    pub fn total(&self) -> usize {
        self.tokens + self.discovery + self.graph
    }
}

/// Requests to every upstream in a span of time.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Traffic {
    pub azure: AzureRequests,
    pub brokers: BTreeMap<&'static str, Requests>,
}

pub fn traffic(bench: &Bench, from: Instant, to: Instant) -> Traffic {
    let azure: Vec<LoggedRequest> =
        bench.upstreams.azure.kit().log().entries_since(from).into_iter().filter(|r| r.arrived_at < to).collect();
    let brokers =
        BrokerKind::ALL.into_iter().map(|kind| (kind.label(), Requests::of_broker(&bench.broker_requests(kind, from, to)))).collect();
    Traffic { azure: AzureRequests::of(&azure), brokers }
}

#[derive(Clone, Debug, Serialize)]
pub struct ColdStart {
    /// From the first create to every connection Ready.
    pub wall: Duration,
    /// Creating the Secrets and connections alone.
    pub create: Duration,
    pub ready: usize,
    pub not_ready: BTreeMap<String, usize>,
    pub traffic: Traffic,
    /// Requests per connection, per upstream (Azure per connection of the fleet, a broker per
    /// connection it serves).
    pub per_connection: BTreeMap<&'static str, f64>,
}

/// Creates every connection and its Secret at once and waits until all are Ready.
pub async fn cold_start(bench: &mut Bench) -> BenchResult<ColdStart> {
    let n = bench.fleet.connections.len();
    bench.values = (0..n).map(|i| bench.next_value(i)).collect();
    let started = Instant::now();
    bench.fleet.create_connections(&bench.client, &bench.values).await?;
    let create = started.elapsed();
    let ready = bench.wait_all_ready(started).await;
    let wall = started.elapsed();
    let done = Instant::now();
    bench.ids = bench.keys().iter().map(|k| bench.watch.get(k).and_then(|o| o.broker_id)).collect();
    let traffic = traffic(bench, started, done);
    let mut per_connection = BTreeMap::from([("azure", traffic.azure.total() as f64 / n.max(1) as f64)]);
    for kind in BrokerKind::ALL {
        per_connection.insert(kind.label(), traffic.brokers[kind.label()].total() as f64 / bench.count_of(kind).max(1) as f64);
    }
    Ok(ColdStart { wall, create, ready, not_ready: bench.not_ready_reasons(), traffic, per_connection })
}

/// Creates `count` Secrets of `size` random bytes that no connection reads, spread over the
/// fleet's namespaces; returns how long that took.
pub async fn create_unrelated(client: &Client, namespaces: &[String], count: usize, size: usize) -> BenchResult<Duration> {
    let mut blob = vec![0u8; size];
    rand::Rng::fill(&mut rand::rng(), blob.as_mut_slice());
    let blob = ByteString(blob);
    let started = Instant::now();
    let creates = (0..count).map(|j| {
        let api: Api<Secret> = Api::namespaced(client.clone(), &namespaces[j % namespaces.len()]);
        let secret = Secret {
            metadata: ObjectMeta { name: Some(format!("unrelated-{j:05}")), ..ObjectMeta::default() },
            data: Some(BTreeMap::from([("blob".to_owned(), blob.clone())])),
            ..Secret::default()
        };
        async move { api.create(&PostParams::default(), &secret).await }
    });
    stream::iter(creates).buffer_unordered(UNRELATED_IN_FLIGHT).try_collect::<Vec<_>>().await?;
    Ok(started.elapsed())
}

/// The first write to broker object `id` that arrived at or after `since` and was not refused.
/// One still being answered counts: the emulator changes its state before the log records the
/// answer, so a broker that already holds the value may show its write in flight.
fn write_after(conn: &Connection, id: &str, since: Instant) -> Option<Instant> {
    let suffix = format!("/{id}");
    let accepted = |r: &LoggedRequest| r.status.is_none_or(|s| s.is_success());
    conn.broker
        .kit()
        .log()
        .entries_since(since)
        .into_iter()
        .find(|r| r.write && accepted(r) && r.path.ends_with(&suffix))
        .map(|r| r.arrived_at)
}

/// Puts `value` into connection `i`'s Secret; returns when the update was sent.
async fn put_value(client: &Client, conn: &Connection, value: &str) -> BenchResult<Instant> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &conn.namespace);
    let sent = Instant::now();
    put_secret(&secrets, &conn.secret_name, &[("client-secret", value)]).await?;
    Ok(sent)
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Rotations {
    /// Secret update to the broker write, per sample.
    pub latencies: Vec<Duration>,
    pub by_broker: BTreeMap<&'static str, Vec<Duration>>,
    /// Samples whose write never arrived (or whose broker never held the value).
    pub missed: usize,
    #[serde(skip)]
    pub floor: Vec<FloorSample>,
}

/// `samples` rotations, one at a time, `spacing` apart, round-robin over the fleet; a floor
/// sample after each.
pub async fn rotate_one_at_a_time(bench: &mut Bench, floor: &mut Floor, samples: usize, spacing: Duration) -> BenchResult<Rotations> {
    let mut result = Rotations::default();
    let n = bench.fleet.connections.len();
    for k in 0..samples {
        let i = k % n;
        let value = bench.next_value(i);
        let conn = &bench.fleet.connections[i];
        let sent = put_value(&bench.client, conn, &value).await?;
        bench.values[i] = value;
        match wait_for_write(conn, bench.ids[i].as_deref(), &bench.values[i], sent, sent + ROTATION_TIMEOUT).await {
            Some(latency) => {
                result.latencies.push(latency);
                result.by_broker.entry(conn.kind.label()).or_default().push(latency);
            }
            None => result.missed += 1,
        }
        result.floor.push(floor.sample(k).await?);
        tokio::time::sleep(spacing).await;
    }
    Ok(result)
}

/// The latency from `sent` to the broker write, once the broker holds `value`; `None` by
/// `deadline`.
async fn wait_for_write(conn: &Connection, id: Option<&str>, value: &str, sent: Instant, deadline: Instant) -> Option<Duration> {
    let id = id?;
    while Instant::now() < deadline {
        if conn.broker.held_secret(id).as_deref() == Some(value) {
            return write_after(conn, id, sent).map(|at| at - sent);
        }
        tokio::time::sleep(POLL).await;
    }
    None
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct AllAtOnce {
    /// From the first Secret update to the last broker write.
    pub last: Duration,
    /// Each connection's own Secret update to its broker write.
    pub latencies: Vec<Duration>,
    pub missed: usize,
}

/// Rotates every connection at once (`IN_FLIGHT` updates in flight) and waits for every broker.
pub async fn rotate_all(bench: &mut Bench) -> BenchResult<AllAtOnce> {
    let n = bench.fleet.connections.len();
    let values: Vec<String> = (0..n).map(|i| bench.next_value(i)).collect();
    let started = Instant::now();
    let (client, connections) = (&bench.client, &bench.fleet.connections);
    let updates = connections.iter().zip(&values).map(|(conn, value)| put_value(client, conn, value));
    let sent: Vec<Instant> = stream::iter(updates).buffered(IN_FLIGHT).try_collect().await?;
    bench.values = values;
    let mut pending: HashSet<usize> = (0..n).collect();
    let mut result = AllAtOnce::default();
    let deadline = started + bench.phase_timeout;
    while !pending.is_empty() && Instant::now() < deadline && bench.operator.exited().is_none() {
        pending.retain(|&i| {
            let (conn, id) = (&bench.fleet.connections[i], bench.ids[i].as_deref());
            let Some(id) = id.filter(|id| conn.broker.held_secret(id).as_deref() == Some(bench.values[i].as_str())) else { return true };
            match write_after(conn, id, sent[i]) {
                Some(at) => {
                    result.latencies.push(at - sent[i]);
                    result.last = result.last.max(at - started);
                }
                None => result.missed += 1,
            }
            false
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    result.missed += pending.len();
    Ok(result)
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Steady {
    pub window: Duration,
    /// The window in refresh intervals.
    pub intervals: f64,
    pub traffic: Traffic,
    /// Status writes that moved lastValidatedTime (a refresh), and the others.
    pub refresh_writes: usize,
    pub other_writes: usize,
    /// The operator's requests to the API server in the window, by `VERB resource`.
    pub api_requests: BTreeMap<String, f64>,
    pub watch_errors: usize,
}

/// Waits until everything is Ready and quiet, then observes a window of `window`.
pub async fn steady(bench: &mut Bench, window: Duration, refresh_interval: Duration) -> BenchResult<Steady> {
    bench.wait_all_ready(Instant::now()).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = apiserver_requests(&bench.client).await?;
    let errors_before = bench.watch.errors();
    let from = Instant::now();
    while from.elapsed() < window && bench.operator.exited().is_none() {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let to = Instant::now();
    let after = apiserver_requests(&bench.client).await?;
    let writes = bench.watch.writes_between(from, to);
    let refresh_writes = writes.iter().filter(|w| w.refresh).count();
    let api_requests =
        after.into_iter().map(|(k, v)| (k.clone(), v - before.get(&k).copied().unwrap_or(0.0))).filter(|(_, v)| *v > 0.0).collect();
    Ok(Steady {
        window: to - from,
        intervals: (to - from).as_secs_f64() / refresh_interval.as_secs_f64(),
        traffic: traffic(bench, from, to),
        refresh_writes,
        other_writes: writes.len() - refresh_writes,
        api_requests,
        watch_errors: bench.watch.errors() - errors_before,
    })
}

/// Resources the operator reads or writes; the API server's own loops touch none of them, and
/// the bench sends nothing during the window (its two watches stay open). Not leases: the bench
/// runs the operator without leader election, and the API server renews its own identity Lease
/// every 10 s.
const OPERATOR_RESOURCES: &[&str] = &["azureadconnections", "identitybrokers", "clusteridentitybrokers", "secrets", "events"];

/// `apiserver_request_total` for the operator's resources, summed by `VERB resource[/sub]`.
async fn apiserver_requests(client: &Client) -> BenchResult<BTreeMap<String, f64>> {
    let request = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(request).await?;
    Ok(requests_by_resource(&text))
}

fn requests_by_resource(exposition: &str) -> BTreeMap<String, f64> {
    let mut totals = BTreeMap::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else { continue };
        let Some((labels, value)) = rest.rsplit_once("} ") else { continue };
        let labels = parse_labels(labels);
        let resource = labels.get("resource").copied().unwrap_or_default();
        if !OPERATOR_RESOURCES.contains(&resource) {
            continue;
        }
        let subresource = labels.get("subresource").copied().filter(|s| !s.is_empty()).map(|s| format!("/{s}")).unwrap_or_default();
        let key = format!("{} {resource}{subresource}", labels.get("verb").copied().unwrap_or_default());
        *totals.entry(key).or_insert(0.0) += value.trim().parse::<f64>().unwrap_or(0.0);
    }
    totals
}

/// `a="x",b="y"` into pairs (values here never hold quotes).
fn parse_labels(text: &str) -> BTreeMap<&str, &str> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let Some((value, tail)) = after.split_once('"') else { break };
        labels.insert(key.trim_start_matches(','), value);
        rest = tail;
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apiserver_requests_of_the_operators_resources_by_verb() {
        let text = r#"apiserver_request_total{code="200",component="apiserver",dry_run="",group="idpbridge.io",resource="azureadconnections",scope="resource",subresource="status",verb="APPLY",version="v1alpha1"} 7
apiserver_request_total{code="409",component="apiserver",dry_run="",group="idpbridge.io",resource="azureadconnections",scope="resource",subresource="status",verb="APPLY",version="v1alpha1"} 1
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="secrets",scope="namespace",subresource="",verb="LIST",version="v1"} 2
apiserver_request_total{code="200",component="apiserver",dry_run="",group="coordination.k8s.io",resource="leases",scope="resource",subresource="",verb="PUT",version="v1"} 90
apiserver_request_duration_seconds_count{resource="secrets",verb="LIST"} 2
"#;
        let totals = requests_by_resource(text);
        assert_eq!(totals, BTreeMap::from([("APPLY azureadconnections/status".to_owned(), 8.0), ("LIST secrets".to_owned(), 2.0)]));
    }
}
