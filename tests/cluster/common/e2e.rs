//! One isolated end-to-end environment per test: a namespace on the shared real control plane,
//! emulated Azure and Auth0 on loopback behind a test CA, and an in-process operator that watches
//! only that namespace and reaches the emulators through its endpoint overrides.

use std::{
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use idp_bridge::crd::{AzureAdConnection, conditions};
use idp_bridge_devenv::{
    auth0::Auth0Emulator,
    azure::AzureEmulator,
    stack::{RunningOperator, Upstreams},
};
use k8s_openapi::api::core::v1::{Event, Secret};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams},
};
use serde_json::{Value, json};

pub const TENANT_ID: &str = "3f2a1c4e-8b7d-4e6a-9c5b-2d1e0f9a8b7c";
pub const TENANT_DOMAIN: &str = "contoso.onmicrosoft.com";
pub const CLIENT_ID: &str = "8c2e4b6a-1f3d-4a5b-9e7c-6d8f0a2b4c6e";
pub const AUTH0_DOMAIN: &str = "acme.eu.auth0.com";
pub const M2M_CLIENT: &str = "m2m-client";
pub const M2M_SECRET: &str = "m2m-secret-value";
/// The Cloudflare account of [`Env::cloudflare_broker`], and the API token that may manage it.
pub const CF_ACCOUNT: &str = "0123456789abcdef0123456789abcdef";
pub const CF_TOKEN: &str = "cf-api-token-value";
const MANAGER: &str = "e2e-test";
const WAIT: Duration = Duration::from_secs(40);

/// Everything the operator logs in this test process, for the canary checks.
pub fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = buffer.clone();
        let make_writer = move || CaptureWriter(writer.clone());
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info,idp_bridge=debug"))
            .with_writer(make_writer)
            .with_ansi(false)
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        buffer
    })
    .clone()
}

struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub struct Env {
    pub client: Client,
    pub ns: String,
    pub upstreams: Upstreams,
    pub auth0: Auth0Emulator,
    operator: Option<RunningOperator>,
    canaries: Vec<String>,
}

impl Env {
    /// A namespace with an Auth0 IdentityBroker named `auth0`, an emulated tenant with the app
    /// `CLIENT_ID`, and a running operator.
    pub async fn new(prefix: &str) -> Env {
        let mut env = Env::without_operator(prefix).await;
        env.start_operator().await;
        env
    }

    /// The same environment, with the operator not started yet (to add emulators first).
    pub async fn without_operator(prefix: &str) -> Env {
        captured_logs();
        let (client, ns) = super::namespace(prefix).await;
        let mut upstreams = Upstreams::start().expect("emulators start");
        upstreams.azure.add_tenant(TENANT_ID, &[TENANT_DOMAIN]);
        upstreams.azure.add_app(TENANT_ID, CLIENT_ID);
        register_for_auth0(&upstreams.azure, CLIENT_ID);
        let auth0 = upstreams.auth0(AUTH0_DOMAIN).expect("auth0 emulator starts");
        auth0.add_m2m_client(
            M2M_CLIENT,
            M2M_SECRET,
            &["read:connections", "create:connections", "update:connections", "delete:connections"],
        );
        let env = Env { client, ns, upstreams, auth0, operator: None, canaries: Vec::new() };
        env.put_secret("auth0-management", &[("client-id", M2M_CLIENT), ("client-secret", M2M_SECRET)], &[]).await;
        env.apply(
            "IdentityBroker",
            "auth0",
            json!({"spec": {"auth0": {"domain": AUTH0_DOMAIN, "credentialsSecretRef": {"name": "auth0-management"}}}}),
        )
        .await;
        env
    }

    pub async fn start_operator(&mut self) {
        self.start_operator_with(|_| {}).await;
    }

    /// Starts the operator with the usual configuration changed by `adjust`.
    pub async fn start_operator_with(&mut self, adjust: impl FnOnce(&mut idp_bridge::config::Config)) {
        let mut config = self.upstreams.operator_config(&self.ns, vec![self.ns.clone()]);
        adjust(&mut config);
        self.operator = Some(RunningOperator::start(self.client.clone(), config).await.expect("operator starts"));
    }

    /// The operator `new` started (panics after `stop_operator`).
    pub fn operator(&self) -> &RunningOperator {
        self.operator.as_ref().expect("the operator is running")
    }

    /// Another replica of the operator, as a second pod would run it: same namespace, emulators
    /// and leader Lease, its own identity and `instance` name (reported on its Events).
    pub async fn start_replica(&self, instance: &str) -> RunningOperator {
        let mut config = self.upstreams.operator_config(&self.ns, vec![self.ns.clone()]);
        config.instance = instance.to_owned();
        RunningOperator::start(self.client.clone(), config).await.expect("the replica starts")
    }

    /// Aborts the operator's task where it stands, as a killed pod stops: no graceful shutdown,
    /// an in-flight reconcile cut at its next await.
    pub fn kill_operator(&mut self) {
        drop(self.operator.take());
    }

    pub async fn stop_operator(&mut self) {
        if let Some(op) = self.operator.take() {
            op.stop().await;
        }
    }

    /// GET `path` on the running operator's HTTP server: (status, body).
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.operator(), path).await
    }

    /// A secret value that must never show up anywhere but in the Secret and the broker.
    pub fn canary(&mut self, label: &str) -> String {
        let value = format!("Cn{}Q~{label}-{}", rand::random::<u16>() % 10, idp_bridge_devenv::control_plane::unique_name("canary"));
        self.canaries.push(value.clone());
        value
    }

    /// Adds a value made elsewhere (e.g. a password Graph generated) to the canaries.
    pub fn add_canary(&mut self, value: &str) {
        self.canaries.push(value.to_owned());
    }

    /// Creates or replaces a Secret's string data (and annotations).
    /// A Cloudflare emulator with account [`CF_ACCOUNT`] and token [`CF_TOKEN`] (in Secret
    /// `cf-token`), and an IdentityBroker `name` for that account.
    pub async fn cloudflare_broker(&mut self, name: &str) -> idp_bridge_devenv::cloudflare::CloudflareEmulator {
        let cf = self.upstreams.cloudflare().expect("the Cloudflare emulator starts");
        cf.add_account(CF_ACCOUNT);
        cf.add_token(CF_TOKEN, &[CF_ACCOUNT]);
        self.put_secret("cf-token", &[("api-token", CF_TOKEN)], &[]).await;
        let spec = json!({"spec": {"cloudflare": {"accountId": CF_ACCOUNT, "apiTokenSecretRef": {"name": "cf-token"}}}});
        self.apply("IdentityBroker", name, spec).await;
        cf
    }

    pub async fn put_secret(&self, name: &str, data: &[(&str, &str)], annotations: &[(&str, &str)]) {
        let data: serde_json::Map<String, Value> = data.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect();
        let annotations: serde_json::Map<String, Value> = annotations.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect();
        let secret =
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "annotations": annotations}, "stringData": data});
        Api::<Secret>::namespaced(self.client.clone(), &self.ns)
            .patch(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&secret))
            .await
            .unwrap_or_else(|e| panic!("applying Secret {name}: {e}"));
    }

    /// A Secret with raw bytes.
    pub async fn put_secret_bytes(&self, name: &str, key: &str, value: &[u8]) {
        use base64::Engine as _;
        let encoded = base64::engine::general_purpose::STANDARD.encode(value);
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": {key: encoded}});
        Api::<Secret>::namespaced(self.client.clone(), &self.ns)
            .patch(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&secret))
            .await
            .unwrap_or_else(|e| panic!("applying Secret {name}: {e}"));
    }

    /// Server-side applies an idpbridge.io object of `kind` with `body` (spec etc.).
    pub async fn apply(&self, kind: &str, name: &str, mut body: Value) {
        body["apiVersion"] = json!("idpbridge.io/v1alpha1");
        body["kind"] = json!(kind);
        body["metadata"] = json!({"name": name});
        let plural = format!("{}s", kind.to_ascii_lowercase());
        let resource = kube::core::ApiResource {
            group: "idpbridge.io".into(),
            version: "v1alpha1".into(),
            api_version: "idpbridge.io/v1alpha1".into(),
            kind: kind.into(),
            plural,
        };
        let api: Api<kube::core::DynamicObject> = if kind.starts_with("Cluster") {
            Api::all_with(self.client.clone(), &resource)
        } else {
            Api::namespaced_with(self.client.clone(), &self.ns, &resource)
        };
        api.patch(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&body))
            .await
            .unwrap_or_else(|e| panic!("applying {kind} {name}: {e}"));
    }

    /// Applies an AzureAdConnection using IdentityBroker `broker` with the broker block `block`
    /// (e.g. `{"cloudflare": {...}}`), reading Secret `secret`, with extra spec fields.
    pub async fn connect_to(&self, name: &str, broker: &str, block: Value, secret: &str, extra: Value) {
        let mut spec = json!({
            "brokerRef": {"name": broker},
            "azure": {"tenant": TENANT_DOMAIN, "clientId": CLIENT_ID, "clientSecretRef": {"name": secret}},
        });
        merge(&mut spec, block);
        merge(&mut spec, extra);
        self.apply("AzureAdConnection", name, json!({ "spec": spec })).await;
    }

    /// Applies an AzureAdConnection named `name` reading Secret `secret`, with extra spec fields.
    pub async fn connect(&self, name: &str, secret: &str, extra: Value) {
        let mut spec = json!({
            "brokerRef": {"name": "auth0"},
            "azure": {"tenant": TENANT_DOMAIN, "clientId": CLIENT_ID, "clientSecretRef": {"name": secret}},
            "auth0": {"name": name},
        });
        merge(&mut spec, extra);
        self.apply("AzureAdConnection", name, json!({ "spec": spec })).await;
    }

    /// Triggers a reconcile without changing the spec (an annotation does not bump generation),
    /// as the periodic refresh would.
    pub async fn poke(&self, name: &str) {
        let patch = json!({"metadata": {"annotations": {"e2e/poke": idp_bridge_devenv::control_plane::unique_name("p")}}});
        self.connections().patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.expect("poking the connection");
    }

    pub fn connections(&self) -> Api<AzureAdConnection> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Waits until `check` holds for the connection, or panics with its last state.
    pub async fn wait_for(&self, name: &str, what: &str, check: impl Fn(&AzureAdConnection) -> bool) -> AzureAdConnection {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut last = None;
        while tokio::time::Instant::now() < deadline {
            if let Some(conn) = self.connections().get_opt(name).await.expect("reading the connection") {
                if check(&conn) {
                    return conn;
                }
                last = Some(conn);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("timed out waiting for {name}: {what}; last state: {:#?}", last.map(|c| c.status));
    }

    /// Waits for condition `type_` with `status` and `reason`.
    pub async fn wait_condition(&self, name: &str, type_: &str, status: &str, reason: &str) -> AzureAdConnection {
        self.wait_for(name, &format!("{type_}={status} ({reason})"), |c| condition_is(c, type_, status, reason)).await
    }

    /// Waits until the status describes the current generation and Ready has `status`.
    pub async fn wait_ready(&self, name: &str) -> AzureAdConnection {
        self.wait_for(name, "Ready=True at the current generation", |c| {
            condition_is(c, conditions::READY, "True", "Ready")
                && c.status.as_ref().and_then(|s| s.observed_generation) == c.metadata.generation
        })
        .await
    }

    /// The Auth0 connection named `name`, from the emulator.
    pub fn broker_connection(&self, name: &str) -> Value {
        self.auth0.connection_by_name(name).unwrap_or_else(|| panic!("Auth0 has no connection {name}"))
    }

    pub fn broker_secret(&self, name: &str) -> String {
        self.broker_connection(name)["options"]["client_secret"].as_str().unwrap_or_default().to_owned()
    }

    pub async fn events(&self) -> Vec<Event> {
        Api::<Event>::namespaced(self.client.clone(), &self.ns).list(&ListParams::default()).await.expect("listing events").items
    }

    /// Events about `name` with `reason`.
    pub async fn events_with_reason(&self, name: &str, reason: &str) -> Vec<Event> {
        self.events()
            .await
            .into_iter()
            .filter(|e| e.involved_object.name.as_deref() == Some(name) && e.reason.as_deref() == Some(reason))
            .collect()
    }

    /// The events about `name` with `reason`, once at least `count` exist (events are published
    /// right after the status write they describe), or after 10 s.
    pub async fn wait_events(&self, name: &str, reason: &str, count: usize) -> Vec<Event> {
        for _ in 0..100 {
            let events = self.events_with_reason(name, reason).await;
            if events.len() >= count {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.events_with_reason(name, reason).await
    }

    /// No canary value appears in any log line, event, or connection or broker status.
    pub async fn assert_no_canary_leaks(&self) {
        let logs = String::from_utf8_lossy(&captured_logs().lock().unwrap()).into_owned();
        let events = serde_json::to_string(&self.events().await).unwrap();
        let connections = serde_json::to_string(&self.connections().list(&ListParams::default()).await.unwrap().items).unwrap();
        let client_secrets = serde_json::to_string(
            &Api::<idp_bridge::crd::AzureAdClientSecret>::namespaced(self.client.clone(), &self.ns)
                .list(&ListParams::default())
                .await
                .unwrap()
                .items,
        )
        .unwrap();
        let brokers = serde_json::to_string(
            &Api::<idp_bridge::crd::IdentityBroker>::namespaced(self.client.clone(), &self.ns)
                .list(&ListParams::default())
                .await
                .unwrap()
                .items,
        )
        .unwrap();
        assert!(!logs.is_empty(), "the operator logged nothing at all; the capture is broken");
        let metrics = if self.operator.is_some() { self.http_get("/metrics").await.1 } else { String::new() };
        for canary in self.canaries.iter().map(String::as_str).chain([M2M_SECRET]) {
            assert!(!logs.contains(canary), "a secret value leaked into the logs");
            assert!(!events.contains(canary), "a secret value leaked into an event");
            assert!(!connections.contains(canary), "a secret value leaked into a connection");
            assert!(!client_secrets.contains(canary), "a secret value leaked into an AzureAdClientSecret");
            assert!(!brokers.contains(canary), "a secret value leaked into a broker");
            assert!(!metrics.contains(canary), "a secret value leaked into the metrics");
        }
    }
}

/// The Auth0 connection's redirect URI on `AUTH0_DOMAIN`.
pub fn auth0_callback() -> String {
    format!("https://{AUTH0_DOMAIN}/login/callback")
}

/// Registers `client` as the Auth0 guide asks: the Web redirect URI on `AUTH0_DOMAIN`, and
/// User.Read and Directory.Read.All requested with admin consent. What the operator may read of
/// it is up to each test (`set_graph_read_all`, `set_directory_read_all`).
pub fn register_for_auth0(azure: &AzureEmulator, client: &str) {
    azure.set_redirect_uris(TENANT_ID, client, &[&auth0_callback()]);
    azure.request_graph_permissions(TENANT_ID, client, &["User.Read", "Directory.Read.All"]);
    azure.grant_admin_consent(TENANT_ID, client, &["User.Read", "Directory.Read.All"]);
}

/// GET `path` on `op`'s HTTP server (the operator or a replica): (status, body).
pub async fn http_get(op: &RunningOperator, path: &str) -> (u16, String) {
    let address = op.http_address().expect("the operator serves HTTP");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("an HTTP client");
    let response = client.get(format!("http://{address}{path}")).send().await.expect("the operator answers HTTP");
    (response.status().as_u16(), response.text().await.unwrap_or_default())
}

pub fn condition_is(conn: &AzureAdConnection, type_: &str, status: &str, reason: &str) -> bool {
    conn.status
        .as_ref()
        .and_then(|s| conditions::find(&s.conditions, type_))
        .is_some_and(|c| c.status == status && c.reason == reason && c.observed_generation == conn.metadata.generation)
}

pub fn condition(conn: &AzureAdConnection, type_: &str) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    conn.status
        .as_ref()
        .and_then(|s| conditions::find(&s.conditions, type_))
        .cloned()
        .unwrap_or_else(|| panic!("{} has no {type_} condition", conn.name_any()))
}

fn merge(target: &mut Value, extra: Value) {
    match (target, extra) {
        (Value::Object(t), Value::Object(e)) => {
            for (k, v) in e {
                merge(t.entry(k).or_insert(Value::Null), v);
            }
        }
        (t, e) => *t = e,
    }
}
