//! The emulated outside world and an in-process operator pointed at it: what the demo and the
//! end-to-end tests run. The operator is configured exactly as in production, through
//! `--endpoint-overrides` and `--ca-bundle`; no resource field is involved.

use std::{
    collections::{BTreeMap, btree_map::Entry},
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::{sync::watch, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use super::{
    auth0::Auth0Emulator, azure::AzureEmulator, cloudflare::CloudflareEmulator, logto::LogtoEmulator, tls::TestCa, unified::UnifiedEmulator,
};
use idp_bridge::crd::broker::UnifiedRegion;
use idp_bridge::{
    broker_hosts::{BrokerHosts, DEFAULT_BROKER_HOSTS},
    config::{Config, LeaderElectionConfig},
    leader::{LeaderElection, LeaderState},
    operator::{self, StartError},
    upstream::EndpointOverrides,
};

/// Emulated Azure (login and Graph hosts of the public cloud) and the emulated brokers, started
/// on demand (Auth0 tenants and Logto tenants by host, one Cloudflare, one Unified.to), all
/// behind one test CA.
pub struct Upstreams {
    pub ca: TestCa,
    pub azure: AzureEmulator,
    auth0: BTreeMap<String, Auth0Emulator>,
    logto: BTreeMap<String, LogtoEmulator>,
    /// Broker hosts allowed beyond the operator's defaults.
    extra_broker_hosts: Vec<String>,
    cloudflare: Option<CloudflareEmulator>,
    unified: Option<UnifiedEmulator>,
    dir: tempfile::TempDir,
    ca_path: PathBuf,
}

impl Upstreams {
    /// Starts the Azure emulator. Must run inside a Tokio runtime.
    pub fn start() -> std::io::Result<Self> {
        super::tls::install_crypto_provider();
        let ca = TestCa::new();
        let dir = tempfile::Builder::new().prefix("idp-bridge-upstreams").tempdir()?;
        let ca_path = dir.path().join("ca.pem");
        ca.write_pem(&ca_path)?;
        let azure = AzureEmulator::start(&ca)?;
        Ok(Self {
            ca,
            azure,
            auth0: BTreeMap::new(),
            logto: BTreeMap::new(),
            extra_broker_hosts: Vec::new(),
            cloudflare: None,
            unified: None,
            dir,
            ca_path,
        })
    }

    /// Starts an emulated Auth0 tenant for `domain` (or returns the running one).
    pub fn auth0(&mut self, domain: &str) -> std::io::Result<Auth0Emulator> {
        started_once(&mut self.auth0, domain, || Auth0Emulator::start(&self.ca, domain))
    }

    /// Starts emulated Cloudflare (`api.cloudflare.com`), or returns the running one.
    pub fn cloudflare(&mut self) -> std::io::Result<CloudflareEmulator> {
        if self.cloudflare.is_none() {
            self.cloudflare = Some(CloudflareEmulator::start(&self.ca)?);
        }
        Ok(self.cloudflare.clone().expect("just started"))
    }

    /// Starts an emulated Logto tenant at `host` (the endpoint's host) with the Management API
    /// resource indicator `resource`, or returns the running one.
    pub fn logto(&mut self, host: &str, resource: &str) -> std::io::Result<LogtoEmulator> {
        started_once(&mut self.logto, host, || LogtoEmulator::start(&self.ca, resource))
    }

    /// Starts emulated Unified.to, serving every region's host, or returns the running one.
    pub fn unified(&mut self) -> std::io::Result<UnifiedEmulator> {
        if self.unified.is_none() {
            self.unified = Some(UnifiedEmulator::start(&self.ca)?);
        }
        Ok(self.unified.clone().expect("just started"))
    }

    /// Host overrides that send the operator's outbound calls to the emulators.
    pub fn overrides(&self) -> EndpointOverrides {
        let mut overrides = EndpointOverrides::default();
        let azure = self.azure.base_url();
        let cloud = self.azure.cloud();
        overrides.insert(&cloud.login_host, azure.clone());
        overrides.insert(&cloud.graph_host, azure);
        for (domain, emulator) in &self.auth0 {
            overrides.insert(domain, emulator.base_url());
        }
        for (host, emulator) in &self.logto {
            overrides.insert(host, emulator.base_url());
        }
        if let Some(cloudflare) = &self.cloudflare {
            overrides.insert("api.cloudflare.com", cloudflare.base_url());
        }
        if let Some(unified) = &self.unified {
            for region in [UnifiedRegion::Us, UnifiedRegion::Eu, UnifiedRegion::Au] {
                overrides.insert(region.host(), unified.base_url());
            }
        }
        overrides
    }

    /// Adds `pattern` to the operator's allowed broker hosts, as a platform team lists a
    /// self-hosted broker with `--broker-hosts`; vendor hosts are allowed by default.
    pub fn allow_broker_host(&mut self, pattern: &str) {
        self.extra_broker_hosts.push(pattern.to_owned());
    }

    /// The operator's default broker hosts plus those [`Self::allow_broker_host`] added.
    pub fn broker_hosts(&self) -> BrokerHosts {
        std::iter::once(DEFAULT_BROKER_HOSTS)
            .chain(self.extra_broker_hosts.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(",")
            .parse()
            .expect("allowed broker hosts are patterns")
    }

    /// The CA bundle that makes the emulators' certificates trusted.
    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// An operator configuration for these upstreams: operator namespace `namespace`, watching
    /// `watch_namespaces` (empty: all).
    pub fn operator_config(&self, namespace: &str, watch_namespaces: Vec<String>) -> Config {
        Config {
            namespace: namespace.to_owned(),
            cluster_name: "default".into(),
            fingerprint_key_secret: "idp-bridge-fingerprint-key".into(),
            endpoint_overrides: self.overrides(),
            broker_hosts: self.broker_hosts(),
            ca_bundle: Some(self.ca_path.clone()),
            http_timeout: Duration::from_secs(5),
            reconcile_timeout: Duration::from_secs(60),
            deletion_timeout: Duration::from_secs(60),
            concurrency: 8,
            instance: "devenv".into(),
            watch_namespaces,
            http_address: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
            // The Lease lives in `namespace`: a test's own namespace keeps its election private.
            leader_election: Some(LeaderElectionConfig::default()),
        }
    }
}

/// The emulator running for `key`, started by `start` if there is none yet.
fn started_once<E: Clone>(running: &mut BTreeMap<String, E>, key: &str, start: impl FnOnce() -> std::io::Result<E>) -> std::io::Result<E> {
    match running.entry(key.to_owned()) {
        Entry::Occupied(existing) => Ok(existing.get().clone()),
        Entry::Vacant(slot) => Ok(slot.insert(start()?).clone()),
    }
}

/// An operator running as a task of this process.
pub struct RunningOperator {
    stop: CancellationToken,
    task: JoinHandle<()>,
    http: Option<std::net::SocketAddr>,
    identity: Option<String>,
    leader: Option<watch::Receiver<LeaderState>>,
}

impl RunningOperator {
    /// Builds the operator's context (so start-up errors surface here) and runs it, under leader
    /// election when the configuration enables it: then it reconciles only while it leads.
    pub async fn start(client: kube::Client, config: Config) -> Result<Self, StartError> {
        let election = operator::leader_election(&client, &config)?;
        let identity = election.as_ref().map(|e| e.identity().to_owned());
        let leader = election.as_ref().map(LeaderElection::state);
        let ctx = operator::context(client, config).await?;
        let stop = CancellationToken::new();
        let http = operator::serve_http(&ctx, election.as_ref(), stop.clone()).await?;
        let task = tokio::spawn(operator::run_controllers(ctx, election, stop.clone()));
        Ok(Self { stop, task, http, identity, leader })
    }

    /// Where its /metrics, /healthz and /readyz are served.
    pub fn http_address(&self) -> Option<std::net::SocketAddr> {
        self.http
    }

    /// Its identity in the leader election (`None` without leader election).
    pub fn identity(&self) -> Option<&str> {
        self.identity.as_deref()
    }

    /// Its leader-election state (`None` without leader election).
    pub fn leader_state(&self) -> Option<watch::Receiver<LeaderState>> {
        self.leader.clone()
    }

    /// Stops it gracefully, as SIGTERM would, and waits until it has.
    pub async fn stop(mut self) {
        self.stop.cancel();
        let _ = (&mut self.task).await;
    }
}

impl Drop for RunningOperator {
    fn drop(&mut self) {
        self.task.abort();
    }
}
