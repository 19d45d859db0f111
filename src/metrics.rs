//! Prometheus metrics. Series of a connection are keyed by its UID, so a deleted connection or a
//! changed label value (a new tenant, a new Ready reason) never leaves a stale series behind.
//!
//! Only the leader exports per-connection series: they exist from the start of a leadership term
//! ([`Metrics::leading_term`]) and are all removed when it ends, so a standby (from start-up, or
//! after losing the Lease) exports none, and a connection deleted while this replica stood by is
//! never exported again. `idpbridge_leader` says which replica leads.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExpiryLabels {
    pub namespace: String,
    pub name: String,
    pub client_id: String,
    pub tenant_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    pub namespace: String,
    pub name: String,
    pub broker: String,
    /// The Ready condition's reason: one of the closed set of [`crate::crd::conditions::Reason`]
    /// names, so the series count stays bounded.
    pub reason: String,
}

/// An AzureAdClientSecret.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ObjectLabels {
    pub namespace: String,
    pub name: String,
}

/// A connection's AzureAppConfigured condition: its status and reason (one of the closed set).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppConfiguredLabels {
    pub namespace: String,
    pub name: String,
    pub status: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub upstream: String,
    pub operation: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamOperationLabels {
    pub upstream: String,
    pub operation: String,
}

/// The series one connection currently has, to remove or relabel them.
#[derive(Default)]
struct ConnectionSeries {
    ready: Option<ConnectionLabels>,
    expiry: Option<ExpiryLabels>,
    app: Option<AppConfiguredLabels>,
}

/// Every connection's series, and whether they may exist at all (this replica leads). One lock
/// for both, so a reconcile finishing as the term ends cannot export a series after the clear.
#[derive(Default)]
struct ConnectionSeriesByUid {
    leading: bool,
    by_uid: HashMap<String, ConnectionSeries>,
    /// AzureAdClientSecrets' renewal series, by UID.
    client_secrets: HashMap<String, ObjectLabels>,
}

pub struct Metrics {
    registry: Registry,
    expiry: Family<ExpiryLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    ready: Family<ConnectionLabels, Gauge>,
    app_configured: Family<AppConfiguredLabels, Gauge>,
    reconciles: Family<ResultLabels, Counter>,
    reconcile_seconds: Family<ResultLabels, Histogram>,
    upstream_requests: Family<UpstreamLabels, Counter>,
    upstream_seconds: Family<UpstreamOperationLabels, Histogram>,
    rotation_seconds: Histogram,
    renewal: Family<ObjectLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    client_secret_rotations: Family<ResultLabels, Counter>,
    series: Mutex<ConnectionSeriesByUid>,
    /// 1 while this replica leads (runs the controllers), else 0.
    leader: Gauge,
    /// When a Secret change was first seen for a connection (`namespace/name`), until its
    /// broker holds the new value.
    secret_changes: Mutex<HashMap<String, Instant>>,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0].into_iter()
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("idpbridge");
        let expiry = Family::default();
        registry.register("client_secret_expiry_timestamp_seconds", "When the held client secret expires (UNIX seconds)", expiry.clone());
        let ready = Family::default();
        registry.register("connection_ready", "1 when the connection is Ready, else 0", ready.clone());
        let app_configured = Family::default();
        registry.register(
            "azure_app_configured",
            "1 for the status and reason of each connection's AzureAppConfigured condition (the app registration check)",
            app_configured.clone(),
        );
        let reconciles = Family::default();
        registry.register("reconcile", "Reconciles of connections by result", reconciles.clone());
        let reconcile_seconds = Family::<ResultLabels, Histogram>::new_with_constructor(|| Histogram::new(latency_buckets()));
        registry.register("reconcile_duration_seconds", "Duration of connection reconciles", reconcile_seconds.clone());
        let upstream_requests = Family::default();
        registry.register(
            "upstream_requests",
            "HTTP requests to Azure, Graph and brokers by upstream, operation and status",
            upstream_requests.clone(),
        );
        let upstream_seconds = Family::<UpstreamOperationLabels, Histogram>::new_with_constructor(|| Histogram::new(latency_buckets()));
        registry.register(
            "upstream_request_duration_seconds",
            "Duration of HTTP requests to Azure, Graph and brokers",
            upstream_seconds.clone(),
        );
        let rotation_seconds = Histogram::new(latency_buckets());
        registry.register(
            "secret_rotation_sync_duration_seconds",
            "Time from a Secret change being observed to the broker holding the new value",
            rotation_seconds.clone(),
        );
        let renewal = Family::default();
        registry.register(
            "client_secret_renewal_timestamp_seconds",
            "When an AzureAdClientSecret creates its next password (UNIX seconds)",
            renewal.clone(),
        );
        let client_secret_rotations = Family::default();
        registry.register(
            "client_secret_rotations",
            "AzureAdClientSecret renewals by result: promoted, abandoned (not accepted in time), refused (by Graph)",
            client_secret_rotations.clone(),
        );
        let leader = Gauge::default();
        registry.register("leader", "1 on the replica that leads (and exports per-connection series), 0 on a standby", leader.clone());
        Self {
            registry,
            expiry,
            ready,
            app_configured,
            reconciles,
            reconcile_seconds,
            upstream_requests,
            upstream_seconds,
            rotation_seconds,
            renewal,
            client_secret_rotations,
            series: Mutex::new(ConnectionSeriesByUid::default()),
            leader,
            secret_changes: Mutex::new(HashMap::new()),
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    pub fn reconciled(&self, result: &str, took: Duration) {
        let labels = ResultLabels { result: result.to_owned() };
        self.reconciles.get_or_create(&labels).inc();
        self.reconcile_seconds.get_or_create(&labels).observe(took.as_secs_f64());
    }

    pub fn upstream_request(&self, upstream: &str, operation: &str, status: &str, took: Duration) {
        let labels = UpstreamLabels { upstream: upstream.to_owned(), operation: operation.to_owned(), status: status.to_owned() };
        self.upstream_requests.get_or_create(&labels).inc();
        self.upstream_seconds
            .get_or_create(&UpstreamOperationLabels { upstream: upstream.to_owned(), operation: operation.to_owned() })
            .observe(took.as_secs_f64());
    }

    /// Sets a connection's series, replacing any with other label values; ignored outside a
    /// leadership term.
    pub fn connection(&self, uid: &str, ready_labels: ConnectionLabels, ready: bool, expiry: Option<(ExpiryLabels, f64)>) {
        let mut series = self.series.lock().expect("series lock");
        if !series.leading {
            return;
        }
        let entry = series.by_uid.entry(uid.to_owned()).or_default();
        if let Some(old) = entry.ready.replace(ready_labels.clone())
            && old != ready_labels
        {
            self.ready.remove(&old);
        }
        self.ready.get_or_create(&ready_labels).set(i64::from(ready));
        let new_expiry_labels = expiry.as_ref().map(|(l, _)| l.clone());
        if let Some(old) = entry.expiry.take()
            && Some(&old) != new_expiry_labels.as_ref()
        {
            self.expiry.remove(&old);
        }
        if let Some((labels, at)) = expiry {
            self.expiry.get_or_create(&labels).set(at);
            entry.expiry = Some(labels);
        }
    }

    /// Sets an AzureAdClientSecret's renewal time (None removes it); ignored outside a term.
    pub fn client_secret(&self, uid: &str, namespace: &str, name: &str, renewal_at: Option<f64>) {
        let mut series = self.series.lock().expect("series lock");
        let labels = ObjectLabels { namespace: namespace.to_owned(), name: name.to_owned() };
        match renewal_at {
            Some(at) if series.leading => {
                self.renewal.get_or_create(&labels).set(at);
                series.client_secrets.insert(uid.to_owned(), labels);
            }
            _ => {
                if let Some(old) = series.client_secrets.remove(uid) {
                    self.renewal.remove(&old);
                }
            }
        }
    }

    /// One AzureAdClientSecret renewal ended with `result`.
    pub fn client_secret_rotated(&self, result: &str) {
        self.client_secret_rotations.get_or_create(&ResultLabels { result: result.to_owned() }).inc();
    }

    /// Sets a connection's AzureAppConfigured series, replacing the one of its previous status
    /// or reason; ignored outside a leadership term, like every per-connection series.
    pub fn app_configured(&self, uid: &str, labels: AppConfiguredLabels) {
        let mut series = self.series.lock().expect("series lock");
        if !series.leading {
            return;
        }
        let entry = series.by_uid.entry(uid.to_owned()).or_default();
        if let Some(old) = entry.app.replace(labels.clone())
            && old != labels
        {
            self.app_configured.remove(&old);
        }
        self.app_configured.get_or_create(&labels).set(1);
    }

    /// Removes every series of a deleted connection.
    pub fn forget_connection(&self, uid: &str) {
        if let Some(entry) = self.series.lock().expect("series lock").by_uid.remove(uid) {
            self.remove_series(entry);
        }
    }

    fn remove_series(&self, entry: ConnectionSeries) {
        if let Some(labels) = entry.ready {
            self.ready.remove(&labels);
        }
        if let Some(labels) = entry.expiry {
            self.expiry.remove(&labels);
        }
        if let Some(labels) = entry.app {
            self.app_configured.remove(&labels);
        }
    }

    /// Starts a leadership term: `idpbridge_leader` is 1 and connections export their series
    /// until the returned guard is dropped (the term's work ended, or was aborted).
    pub fn leading_term(self: &Arc<Self>) -> LeadershipTerm {
        self.series.lock().expect("series lock").leading = true;
        self.leader.set(1);
        LeadershipTerm(self.clone())
    }

    /// Ends the term: every per-connection series goes, and so do pending rotation timings
    /// (the next leader measures its own).
    fn stop_leading(&self) {
        let mut series = self.series.lock().expect("series lock");
        series.leading = false;
        for (_, entry) in series.by_uid.drain() {
            self.remove_series(entry);
        }
        for (_, labels) in series.client_secrets.drain() {
            self.renewal.remove(&labels);
        }
        self.secret_changes.lock().expect("changes lock").clear();
        self.leader.set(0);
    }

    /// A Secret the connection `key` (`namespace/name`) reads changed; keeps the first sighting.
    pub fn secret_changed(&self, key: String) {
        self.secret_changes.lock().expect("changes lock").entry(key).or_insert_with(Instant::now);
    }

    /// The broker now holds the connection's rotated secret: observe the latency from the first
    /// sighting of the change, or from `observed_at` when the watch event has not arrived yet.
    pub fn secret_synced(&self, key: &str, observed_at: Instant) {
        let seen = self.secret_changes.lock().expect("changes lock").remove(key).map_or(observed_at, |seen| seen.min(observed_at));
        self.rotation_seconds.observe(seen.elapsed().as_secs_f64());
    }

    /// Nothing to sync after a Secret change (it failed validation, or the value is the same).
    pub fn secret_change_settled(&self, key: &str) {
        self.secret_changes.lock().expect("changes lock").remove(key);
    }
}

/// A leadership term's hold on the metrics: dropping it removes every per-connection series and
/// sets `idpbridge_leader` to 0.
#[must_use = "the term ends when this is dropped"]
pub struct LeadershipTerm(Arc<Metrics>);

impl Drop for LeadershipTerm {
    fn drop(&mut self) {
        self.0.stop_leading();
    }
}

/// A bounded operation label for an upstream request: method plus the API resource the path
/// names (never ids, tenants or names, which would explode the series count).
pub fn operation(method: &str, path: &str) -> String {
    const RESOURCES: &[&str] = &[
        "openid-configuration",
        "token",
        "applications",
        "servicePrincipals",
        "oauth2PermissionGrants",
        "connections",
        "clients",
        "identity_providers",
        "organizations",
        "connectors",
        "connection",
    ];
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).map(|s| s.split('(').next().unwrap_or(s)).collect();
    match segments.iter().rposition(|s| RESOURCES.contains(s)) {
        Some(i) if i + 1 < segments.len() && !RESOURCES.contains(&segments[i + 1]) => format!("{method} {}/{{id}}", segments[i]),
        Some(i) => format!("{method} {}", segments[i]),
        None => format!("{method} other"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_have_bounded_names() {
        assert_eq!(operation("GET", "/contoso.com/v2.0/.well-known/openid-configuration"), "GET openid-configuration");
        assert_eq!(operation("POST", "/3f2a/oauth2/v2.0/token"), "POST token");
        assert_eq!(operation("GET", "/v1.0/applications(appId='8c2e')"), "GET applications");
        assert_eq!(operation("PATCH", "/api/v2/connections/con_abc"), "PATCH connections/{id}");
        assert_eq!(operation("PATCH", "/api/v2/connections/con_abc/clients"), "PATCH clients");
        assert_eq!(operation("GET", "/api/v2/connections"), "GET connections");
        assert_eq!(operation("GET", "/whatever/else"), "GET other");
        assert_eq!(operation("GET", "/v1.0/servicePrincipals(appId='8c2e')"), "GET servicePrincipals");
        assert_eq!(operation("GET", "/v1.0/servicePrincipals/6f1d/oauth2PermissionGrants"), "GET oauth2PermissionGrants");
        assert_eq!(operation("PATCH", "/v1.0/applications/6f1d"), "PATCH applications/{id}");
    }

    #[test]
    fn the_app_registration_series_follows_its_condition_and_goes_with_the_connection() {
        let m = Arc::new(Metrics::new());
        let labels = |status: &str, reason: &str| AppConfiguredLabels {
            namespace: "ns".into(),
            name: "web".into(),
            status: status.into(),
            reason: reason.into(),
        };
        m.app_configured("uid", labels("False", "RedirectUriMissing"));
        assert!(!m.encode().contains("RedirectUriMissing"), "a standby exports none");
        let _term = m.leading_term();
        m.app_configured("uid", labels("False", "RedirectUriMissing"));
        m.app_configured("uid", labels("True", "RegistrationConfigured"));
        let text = m.encode();
        assert!(!text.contains("RedirectUriMissing"), "{text}");
        assert!(
            text.contains(
                "idpbridge_azure_app_configured{namespace=\"ns\",name=\"web\",status=\"True\",reason=\"RegistrationConfigured\"} 1"
            ),
            "{text}"
        );
        m.forget_connection("uid");
        assert!(!m.encode().contains("RegistrationConfigured"));
    }

    fn labels(tenant: &str) -> (ConnectionLabels, ExpiryLabels) {
        (
            ConnectionLabels { namespace: "ns".into(), name: "web".into(), broker: "auth0".into(), reason: "Ready".into() },
            ExpiryLabels { namespace: "ns".into(), name: "web".into(), client_id: "c".into(), tenant_id: tenant.into() },
        )
    }

    #[test]
    fn relabelled_and_deleted_connections_leave_no_stale_series() {
        let m = Arc::new(Metrics::new());
        let _term = m.leading_term();
        let (ready, expiry) = labels("t1");
        m.connection("uid", ready.clone(), true, Some((expiry, 100.0)));
        assert!(m.encode().contains("tenant_id=\"t1\""));
        let (ready, expiry) = labels("t2");
        m.connection("uid", ready, true, Some((expiry, 200.0)));
        let text = m.encode();
        assert!(!text.contains("tenant_id=\"t1\"") && text.contains("tenant_id=\"t2\""), "{text}");
        m.forget_connection("uid");
        let text = m.encode();
        assert!(!text.contains("name=\"web\""), "{text}");
    }

    #[test]
    fn a_changed_ready_reason_replaces_the_series() {
        let m = Arc::new(Metrics::new());
        let _term = m.leading_term();
        let (ready, _) = labels("t1");
        m.connection("uid", ConnectionLabels { reason: "InvalidSecret".into(), ..ready.clone() }, false, None);
        m.connection("uid", ConnectionLabels { reason: "BrokerAuthFailed".into(), ..ready.clone() }, false, None);
        let text = m.encode();
        assert!(!text.contains("InvalidSecret") && text.contains("reason=\"BrokerAuthFailed\"} 0"), "{text}");
        m.connection("uid", ready, true, None);
        let text = m.encode();
        assert!(!text.contains("BrokerAuthFailed") && text.contains("reason=\"Ready\"} 1"), "{text}");
    }

    #[test]
    fn only_a_leadership_term_exports_connection_series() {
        let m = Arc::new(Metrics::new());
        let (ready, expiry) = labels("t1");
        m.connection("uid", ready.clone(), true, Some((expiry.clone(), 100.0)));
        let standby = m.encode();
        assert!(!standby.contains("name=\"web\"") && standby.contains("idpbridge_leader 0"), "a standby from start-up:\n{standby}");
        let term = m.leading_term();
        m.connection("uid", ready.clone(), true, Some((expiry.clone(), 100.0)));
        m.secret_changed("ns/web".into());
        let leading = m.encode();
        assert!(leading.contains("name=\"web\"") && leading.contains("idpbridge_leader 1"), "{leading}");
        drop(term);
        // A reconcile that finishes after the term ended exports nothing either.
        m.connection("uid", ready, true, Some((expiry, 100.0)));
        let lost = m.encode();
        assert!(!lost.contains("name=\"web\"") && lost.contains("idpbridge_leader 0"), "after losing the Lease:\n{lost}");
        assert!(m.secret_changes.lock().unwrap().is_empty());
    }

    #[test]
    fn client_secret_series_exist_only_during_a_term_and_go_with_their_object() {
        let m = Arc::new(Metrics::new());
        let series = "idpbridge_client_secret_renewal_timestamp_seconds{namespace=\"ns\",name=\"app\"}";
        m.client_secret("uid", "ns", "app", Some(100.0));
        assert!(!m.encode().contains(series), "a standby exports none");
        let term = m.leading_term();
        m.client_secret("uid", "ns", "app", Some(100.0));
        assert!(m.encode().contains(&format!("{series} 100.0")), "{}", m.encode());
        m.client_secret("uid", "ns", "app", None);
        assert!(!m.encode().contains(series), "no renewal time, no series");
        m.client_secret("uid", "ns", "app", Some(200.0));
        drop(term);
        assert!(!m.encode().contains(series), "the term's end removes it");
        m.client_secret_rotated("promoted");
        assert!(m.encode().contains("idpbridge_client_secret_rotations_total{result=\"promoted\"} 1"));
    }

    #[test]
    fn exposition_names() {
        let m = Metrics::new();
        m.reconciled("success", Duration::from_millis(5));
        m.upstream_request("auth0", "GET connections", "200", Duration::from_millis(3));
        m.secret_changed("ns/web".into());
        m.secret_synced("ns/web", Instant::now());
        let text = m.encode();
        for name in [
            "idpbridge_reconcile_total{result=\"success\"} 1",
            "idpbridge_reconcile_duration_seconds_count",
            "idpbridge_upstream_requests_total{upstream=\"auth0\",operation=\"GET connections\",status=\"200\"} 1",
            "idpbridge_upstream_request_duration_seconds_bucket",
            "idpbridge_secret_rotation_sync_duration_seconds_count 1",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
