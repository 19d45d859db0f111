//! Start-up of the controller: build the shared clients once, load the fingerprint key, check
//! the CRDs are installed, then run until shutdown.

use std::sync::Arc;

use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api, Client,
    api::{ListParams, ObjectMeta, PostParams},
};
use tracing::info;

use crate::{
    config::Config,
    controller::{self, Context},
    crd::AzureAdConnection,
    http,
    metrics::Metrics,
    secret::Fingerprinter,
    upstream::{ClientBuildError, Upstream},
};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the idpbridge.io CRDs are not installed (apply crds/ first): {0}")]
    CrdsMissing(#[source] kube::Error),
    #[error("reading or creating the fingerprint key Secret {namespace}/{name}: {source}")]
    FingerprintKey { namespace: String, name: String, source: kube::Error },
    #[error("fingerprint key Secret {namespace}/{name} has no usable `key` entry (at least 32 bytes)")]
    FingerprintKeyInvalid { namespace: String, name: String },
    #[error(transparent)]
    HttpClient(#[from] ClientBuildError),
    #[error("serving HTTP on {address}: {source}")]
    Http { address: std::net::SocketAddr, source: std::io::Error },
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

/// Builds the shared context.
pub async fn context(client: Client, config: Config) -> Result<Arc<Context>, StartError> {
    Api::<AzureAdConnection>::all(client.clone()).list(&ListParams::default().limit(1)).await.map_err(StartError::CrdsMissing)?;
    let upstream = Upstream::new(config.endpoint_overrides.clone(), config.ca_bundle.as_deref(), config.http_timeout)?;
    if !config.endpoint_overrides.is_empty() {
        info!(overrides = %config.endpoint_overrides, "outbound endpoint overrides are active");
    }
    let key = fingerprint_key(&client, &config).await?;
    Ok(Arc::new(Context::new(client, Arc::new(config), upstream, Fingerprinter::new(key), Arc::new(Metrics::new()))))
}

/// Serves /metrics, /healthz and /readyz for `ctx` if the configuration asks for it; returns the
/// bound address.
pub async fn serve_http(
    ctx: &Context,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Option<std::net::SocketAddr>, StartError> {
    let Some(address) = ctx.config.http_address else { return Ok(None) };
    let endpoints = http::Endpoints { metrics: ctx.metrics.clone(), ready: ctx.caches_synced.clone() };
    let bound = http::serve(address, endpoints, shutdown).await.map_err(|source| StartError::Http { address, source })?;
    info!(address = %bound, "serving /metrics, /healthz and /readyz");
    Ok(Some(bound))
}

/// Runs the controllers and the HTTP endpoints until `shutdown` resolves.
pub async fn run(
    client: Client,
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), StartError> {
    let ctx = context(client, config).await?;
    let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
    serve_http(&ctx, shutdown.clone()).await?;
    controller::run(ctx, shutdown).await;
    Ok(())
}
