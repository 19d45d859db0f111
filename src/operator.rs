//! Start-up of the controller: build the shared clients once, load the fingerprint key, check
//! the CRDs are installed, then run until shutdown (under leader election when enabled).

use std::sync::Arc;

use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api, Client,
    api::{ListParams, ObjectMeta, PostParams},
};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::{
    config::Config,
    controller::{self, Context},
    crd::AzureAdConnection,
    http,
    leader::{LeaderElection, SettingsError},
    metrics::Metrics,
    secret::Fingerprinter,
    upstream::{ClientBuildError, Upstream},
};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the idpbridge.io CRDs are not installed (apply crds/ first): {0}")]
    CrdsMissing(#[source] kube::Error),
    #[error(
        "the operator's identity may not list azureadconnections{scope} (check its RBAC: the Helm chart's ClusterRole, or Roles with watchNamespaces): {source}"
    )]
    Forbidden { scope: String, source: kube::Error },
    #[error("reading or creating the fingerprint key Secret {namespace}/{name}: {source}")]
    FingerprintKey { namespace: String, name: String, source: kube::Error },
    #[error("fingerprint key Secret {namespace}/{name} has no usable `key` entry (at least 32 bytes)")]
    FingerprintKeyInvalid { namespace: String, name: String },
    #[error(transparent)]
    HttpClient(#[from] ClientBuildError),
    #[error("serving HTTP on {address}: {source}")]
    Http { address: std::net::SocketAddr, source: std::io::Error },
    #[error("leader election: {0}")]
    LeaderElection(#[from] SettingsError),
}

const KEY_ENTRY: &str = "key";

/// Reads the fingerprint key, creating the Secret with a random key on first start.
async fn fingerprint_key(client: &Client, config: &Config) -> Result<Vec<u8>, StartError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &config.namespace);
    let err =
        |source| StartError::FingerprintKey { namespace: config.namespace.clone(), name: config.fingerprint_key_secret.clone(), source };
    let existing = match api.get_opt(&config.fingerprint_key_secret).await.map_err(err)? {
        Some(secret) => secret,
        None => {
            let secret = Secret {
                metadata: ObjectMeta { name: Some(config.fingerprint_key_secret.clone()), ..Default::default() },
                data: Some([(KEY_ENTRY.to_owned(), ByteString(Fingerprinter::random_key()))].into()),
                ..Default::default()
            };
            match api.create(&PostParams::default(), &secret).await {
                Ok(created) => created,
                // Another replica created it first.
                Err(kube::Error::Api(s)) if s.is_already_exists() => api.get(&config.fingerprint_key_secret).await.map_err(err)?,
                Err(e) => return Err(err(e)),
            }
        }
    };
    existing.data.and_then(|mut d| d.remove(KEY_ENTRY)).map(|b| b.0).filter(|k| k.len() >= 32).ok_or_else(|| {
        StartError::FingerprintKeyInvalid { namespace: config.namespace.clone(), name: config.fingerprint_key_secret.clone() }
    })
}

/// Checks that the CRDs are served by listing one connection where the operator will watch:
/// the whole cluster, or the first watched namespace (with namespaced RBAC a cluster-wide list
/// is forbidden).
async fn crds_installed(client: &Client, config: &Config) -> Result<(), StartError> {
    let (api, scope) = match config.watch_namespaces.first() {
        Some(ns) => (Api::<AzureAdConnection>::namespaced(client.clone(), ns), format!(" in namespace {ns}")),
        None => (Api::<AzureAdConnection>::all(client.clone()), " cluster-wide".to_owned()),
    };
    match api.list(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_forbidden() => Err(StartError::Forbidden { scope, source: kube::Error::Api(status) }),
        Err(e) => Err(StartError::CrdsMissing(e)),
    }
}

/// Builds the shared context.
pub async fn context(client: Client, config: Config) -> Result<Arc<Context>, StartError> {
    crds_installed(&client, &config).await?;
    let upstream = Upstream::new(config.endpoint_overrides.clone(), config.ca_bundle.as_deref(), config.http_timeout)?;
    if !config.endpoint_overrides.is_empty() {
        info!(overrides = %config.endpoint_overrides, "outbound endpoint overrides are active");
    }
    info!(broker_hosts = %config.broker_hosts, "brokers are called only on these hosts");
    let key = fingerprint_key(&client, &config).await?;
    Ok(Arc::new(Context::new(client, Arc::new(config), upstream, Fingerprinter::new(key), Arc::new(Metrics::new()))))
}

/// Serves /metrics, /healthz and /readyz for `ctx` if the configuration asks for it, until
/// `shutdown` is cancelled; returns the bound address.
pub async fn serve_http(
    ctx: &Context,
    election: Option<&LeaderElection>,
    shutdown: CancellationToken,
) -> Result<Option<std::net::SocketAddr>, StartError> {
    let Some(address) = ctx.config.http_address else { return Ok(None) };
    let endpoints =
        http::Endpoints { metrics: ctx.metrics.clone(), readiness: ctx.readiness.clone(), leader: election.map(LeaderElection::state) };
    let bound = http::serve(address, endpoints, shutdown.cancelled_owned()).await.map_err(|source| StartError::Http { address, source })?;
    info!(address = %bound, "serving /metrics, /healthz and /readyz");
    Ok(Some(bound))
}

/// The leader election the configuration asks for (`None` when it is disabled): the Lease in
/// the operator's namespace, with a unique identity for this process.
pub fn leader_election(client: &Client, config: &Config) -> Result<Option<LeaderElection>, StartError> {
    let Some(election) = &config.leader_election else { return Ok(None) };
    Ok(Some(LeaderElection::new(client.clone(), election.settings(&config.namespace, &config.instance))?))
}

/// Runs the controllers until `shutdown` is cancelled: directly, or under `election` only while
/// this process leads (each term stops on its own token; the Lease is released on shutdown).
/// Per-connection metrics exist only during a term: its end (or abort) removes them all.
pub async fn run_controllers(ctx: Arc<Context>, election: Option<LeaderElection>, shutdown: CancellationToken) {
    match election {
        Some(election) => election.run(shutdown.cancelled_owned(), move |stop| term(ctx.clone(), stop)).await,
        None => term(ctx, shutdown).await,
    }
}

/// The controllers for one leadership term (or the whole run, without an election).
async fn term(ctx: Arc<Context>, stop: CancellationToken) {
    let _term = ctx.metrics.leading_term();
    controller::run(ctx, stop).await;
}

/// Runs the controllers and the HTTP endpoints until `shutdown` is cancelled, the controllers
/// under leader election when it is enabled.
pub async fn run(client: Client, config: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    let election = leader_election(&client, &config)?;
    let ctx = context(client, config).await?;
    serve_http(&ctx, election.as_ref(), shutdown.clone()).await?;
    run_controllers(ctx, election, shutdown).await;
    Ok(())
}
