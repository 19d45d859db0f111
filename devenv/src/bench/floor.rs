//! The floor: the least work a rotation needs, done directly on loopback in the same run: a
//! watch event on a Secret, a client-credentials token from the Azure emulator, and a write to a
//! broker emulator. Rotation latency is reported as a multiple of it.

use std::time::{Duration, Instant};

use crate::stack::Upstreams;
use futures::StreamExt as _;
use idp_bridge::upstream::Upstream;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client, ResourceExt,
    runtime::{WatchStreamExt as _, watcher},
};
use reqwest::Method;
use serde_json::json;
use tokio::sync::mpsc;

use super::{
    BenchResult,
    fleet::{TENANT_DOMAIN, TENANT_ID, put_secret},
};

const PROBE: &str = "floor-probe";
const DOMAIN: &str = "floor.eu.auth0.com";
const CLIENT_ID: &str = "00000000-0000-4000-9000-000000000001";
const CLIENT_SECRET: &str = "Fl00Q~floor-probe-secret-value";
const M2M_ID: &str = "floor-m2m";
const M2M_SECRET: &str = "floor-m2m-secret";
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// One direct pass, step by step.
#[derive(Clone, Copy, Debug)]
pub struct FloorSample {
    pub watch: Duration,
    pub token: Duration,
    pub write: Duration,
}

impl FloorSample {
    pub fn total(&self) -> Duration {
        self.watch + self.token + self.write
    }
}

pub struct Floor {
    secrets: Api<Secret>,
    versions: mpsc::UnboundedReceiver<String>,
    upstream: Upstream,
    broker_token: String,
    broker_object: String,
    _watch: tokio::task::JoinHandle<()>,
}

impl Floor {
    /// Registers the probe's app, an Auth0 tenant of its own (so the fleet's logs stay clean) and
    /// the probe Secret in `namespace`, and starts watching that Secret. Call before the
    /// operator starts, so its overrides include the probe tenant.
    pub fn seed(upstreams: &mut Upstreams) -> BenchResult<()> {
        upstreams.azure.add_app(TENANT_ID, CLIENT_ID);
        upstreams.azure.add_secret(
            TENANT_ID,
            CLIENT_ID,
            CLIENT_SECRET,
            jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 365),
        );
        upstreams.auth0(DOMAIN)?.add_m2m_client(M2M_ID, M2M_SECRET, &["update:connections"]);
        Ok(())
    }

    pub async fn prepare(client: &Client, upstreams: &mut Upstreams, namespace: &str) -> BenchResult<Self> {
        let auth0 = upstreams.auth0(DOMAIN)?;
        let broker_object = auth0.insert_connection(json!({"name": "floor-probe", "strategy": "waad", "options": {}}));
        let upstream = Upstream::new(upstreams.overrides(), Some(upstreams.ca_path()), STEP_TIMEOUT)?;
        let token = upstream
            .send(upstream.request(Method::POST, DOMAIN, "/oauth/token").json(&json!({
                "grant_type": "client_credentials", "client_id": M2M_ID, "client_secret": M2M_SECRET, "audience": format!("https://{DOMAIN}/api/v2/"),
            })))
            .await?;
        let broker_token = token.body.json::<serde_json::Value>()?["access_token"]
            .as_str()
            .ok_or("the floor's Auth0 token answer has no token")?
            .to_owned();
        let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
        put_secret(&secrets, PROBE, &[("value", "0")]).await?;
        let (sender, versions) = mpsc::unbounded_channel();
        let events = watcher(secrets.clone(), watcher::Config::default().fields(&format!("metadata.name={PROBE}")))
            .default_backoff()
            .applied_objects();
        let watch = tokio::spawn(events.for_each(move |secret| {
            if let Ok(secret) = secret {
                let _ = sender.send(secret.resource_version().unwrap_or_default());
            }
            std::future::ready(())
        }));
        Ok(Self { secrets, versions, upstream, broker_token, broker_object, _watch: watch })
    }

    /// One direct pass: update the probe Secret and wait for its watch event, get a token, write
    /// the broker object.
    pub async fn sample(&mut self, n: usize) -> BenchResult<FloorSample> {
        // A new value every time: an update that changes nothing has no watch event.
        while self.versions.try_recv().is_ok() {}
        let started = Instant::now();
        let written = put_secret(&self.secrets, PROBE, &[("value", &format!("sample-{n}"))]).await?.resource_version().unwrap_or_default();
        tokio::time::timeout(STEP_TIMEOUT, async {
            while let Some(version) = self.versions.recv().await {
                if version == written {
                    return;
                }
            }
        })
        .await
        .map_err(|_| "the floor's Secret watch event did not arrive")?;
        let watch = started.elapsed();

        let started = Instant::now();
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
            ("scope", "https://graph.microsoft.com/.default"),
        ];
        let path = format!("/{TENANT_DOMAIN}/oauth2/v2.0/token");
        let login = self.upstream.request(Method::POST, "login.microsoftonline.com", &path).form(&form);
        let answer = self.upstream.send(login).await?;
        if !answer.status.is_success() {
            return Err(format!("the floor's token request answered {}", answer.status).into());
        }
        let token = started.elapsed();

        let started = Instant::now();
        let path = format!("/api/v2/connections/{}", self.broker_object);
        let write = self
            .upstream
            .request(Method::PATCH, DOMAIN, &path)
            .bearer_auth(&self.broker_token)
            .json(&json!({"display_name": format!("floor {n}")}));
        let answer = self.upstream.send(write).await?;
        if !answer.status.is_success() {
            return Err(format!("the floor's broker write answered {}", answer.status).into());
        }
        Ok(FloorSample { watch, token, write: started.elapsed() })
    }
}
