//! The fleet under test: N connections spread round-robin over the four brokers and several
//! namespaces, each with its own Entra ID app and Secret, and the emulators seeded to accept
//! them. Logto allows one Microsoft connector per tenant, so every Logto connection gets a Logto
//! tenant (an emulator and an IdentityBroker) of its own.

use crate::{
    auth0::Auth0Emulator, cloudflare::CloudflareEmulator, control_plane, kit::Kit, logto::LogtoEmulator, stack::Upstreams,
    unified::UnifiedEmulator,
};
use futures::{StreamExt as _, TryStreamExt as _, stream};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
    core::{ApiResource, DynamicObject, GroupVersionKind},
};
use serde_json::{Value, json};

use super::BenchResult;

pub const TENANT_ID: &str = "7d3c5a1e-2b4f-4e6a-9c8d-0f1e2a3b4c5d";
pub const TENANT_DOMAIN: &str = "bench.onmicrosoft.com";
/// The operator's own namespace (its fingerprint key lives there).
pub const OPERATOR_NAMESPACE: &str = "idp-bridge";
const AUTH0_DOMAIN: &str = "bench.eu.auth0.com";
const M2M_ID: &str = "bench-m2m-client";
const M2M_SECRET: &str = "bench-m2m-secret-value";
const LOGTO_RESOURCE: &str = "https://default.logto.app/api";
/// Apply requests the bench keeps in flight while creating objects "at once".
pub const IN_FLIGHT: usize = 32;
const MANAGER: &str = "idp-bridge-bench";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BrokerKind {
    Auth0,
    Cloudflare,
    Logto,
    Unified,
}

impl BrokerKind {
    pub const ALL: [BrokerKind; 4] = [BrokerKind::Auth0, BrokerKind::Cloudflare, BrokerKind::Logto, BrokerKind::Unified];

    pub fn label(self) -> &'static str {
        match self {
            BrokerKind::Auth0 => "auth0",
            BrokerKind::Cloudflare => "cloudflare",
            BrokerKind::Logto => "logto",
            BrokerKind::Unified => "unified",
        }
    }
}

/// The emulator holding a connection's broker object.
#[derive(Clone)]
pub enum BrokerEmulator {
    Auth0(Auth0Emulator),
    Cloudflare(CloudflareEmulator),
    Logto(LogtoEmulator),
    Unified(UnifiedEmulator),
}

impl BrokerEmulator {
    pub fn kit(&self) -> &Kit {
        match self {
            BrokerEmulator::Auth0(e) => e.kit(),
            BrokerEmulator::Cloudflare(e) => e.kit(),
            BrokerEmulator::Logto(e) => e.kit(),
            BrokerEmulator::Unified(e) => e.kit(),
        }
    }

    /// The client secret the broker object `id` holds, read from the emulator's state.
    pub fn held_secret(&self, id: &str) -> Option<String> {
        match self {
            BrokerEmulator::Auth0(e) => e.connection(id).and_then(|c| c["options"]["client_secret"].as_str().map(str::to_owned)),
            BrokerEmulator::Cloudflare(e) => e.client_secret(id),
            BrokerEmulator::Logto(e) => e.connector(id).and_then(|c| c["config"]["clientSecret"].as_str().map(str::to_owned)),
            BrokerEmulator::Unified(e) => e.client_secret(id),
        }
    }
}

pub struct Connection {
    pub namespace: String,
    pub name: String,
    pub kind: BrokerKind,
    pub client_id: String,
    pub secret_name: String,
    broker_name: String,
    pub broker: BrokerEmulator,
}

impl Connection {
    /// `namespace/name`, as the watch keys connections.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    fn manifest(&self, index: usize, refresh_interval: &str) -> Value {
        let block = match self.kind {
            BrokerKind::Auth0 => json!({"auth0": {"name": format!("bench-{index}")}}),
            BrokerKind::Cloudflare => json!({"cloudflare": {"name": format!("Bench {index}")}}),
            // A fixed connector id fixes the callback, which the app registration then holds.
            BrokerKind::Logto => json!({"logto": {"connectorId": logto_connector_id(index)}}),
            BrokerKind::Unified => json!({"unified": {"permissions": ["auth_login"]}}),
        };
        let mut spec = json!({
            "brokerRef": {"name": self.broker_name},
            "azure": {"tenant": TENANT_DOMAIN, "clientId": self.client_id, "clientSecretRef": {"name": self.secret_name}},
            "validation": {"refreshInterval": refresh_interval},
            // Deleting a connection deletes its broker object, so the fault suite can check that
            // every deletion completes (the bench deletes nothing).
            "deletionPolicy": "Delete",
        });
        if let (Some(spec), Value::Object(block)) = (spec.as_object_mut(), block) {
            spec.extend(block);
        }
        json!({"apiVersion": "idpbridge.io/v1alpha1", "kind": "AzureAdConnection", "metadata": {"name": self.name, "namespace": self.namespace}, "spec": spec})
    }
}

pub struct Fleet {
    pub namespaces: Vec<String>,
    pub connections: Vec<Connection>,
    refresh_interval: String,
}

fn cloudflare_account(namespace_index: usize) -> String {
    format!("{:032x}", namespace_index + 1)
}

fn client_id(index: usize) -> String {
    format!("00000000-0000-4000-8000-{index:012}")
}

impl Fleet {
    /// Plans `connections` connections over `namespaces` namespaces and seeds the emulators:
    /// the Azure tenant with one app per connection, and each broker's credentials.
    pub fn plan(upstreams: &mut Upstreams, connections: usize, namespaces: usize, refresh_interval: &str) -> BenchResult<Fleet> {
        let namespace_names: Vec<String> = (0..namespaces.max(1)).map(|i| format!("bench-{i}")).collect();
        upstreams.azure.add_tenant(TENANT_ID, &[TENANT_DOMAIN]);
        // The self-hosted Logto tenants are no vendor host: the platform team lists them.
        upstreams.allow_broker_host(LOGTO_HOSTS);
        let auth0 = upstreams.auth0(AUTH0_DOMAIN)?;
        auth0.add_m2m_client(M2M_ID, M2M_SECRET, &["read:connections", "create:connections", "update:connections", "delete:connections"]);
        let cloudflare = upstreams.cloudflare()?;
        let unified = upstreams.unified()?;
        unified.activate_integration("microsoft_ad");
        for (i, _) in namespace_names.iter().enumerate() {
            cloudflare.add_account(&cloudflare_account(i));
            cloudflare.add_token(&format!("cf-token-{i}"), &[&cloudflare_account(i)]);
            unified.add_token(&format!("unified-token-{i}"));
        }
        let mut planned = Vec::with_capacity(connections);
        for index in 0..connections {
            let kind = BrokerKind::ALL[index % BrokerKind::ALL.len()];
            let namespace = namespace_names[index % namespace_names.len()].clone();
            let (broker_name, broker) = match kind {
                BrokerKind::Auth0 => ("auth0".to_owned(), BrokerEmulator::Auth0(auth0.clone())),
                BrokerKind::Cloudflare => ("cloudflare".to_owned(), BrokerEmulator::Cloudflare(cloudflare.clone())),
                BrokerKind::Unified => ("unified".to_owned(), BrokerEmulator::Unified(unified.clone())),
                BrokerKind::Logto => {
                    let logto = upstreams.logto(&logto_host(index), LOGTO_RESOURCE)?;
                    logto.add_m2m_app(M2M_ID, M2M_SECRET);
                    (format!("logto-{index}"), BrokerEmulator::Logto(logto))
                }
            };
            let client_id = client_id(index);
            upstreams.azure.add_app(TENANT_ID, &client_id);
            // The app may read its own registration, so expiry comes from Microsoft Graph.
            upstreams.azure.set_graph_read_all(TENANT_ID, &client_id, true);
            register_for_every_broker(&upstreams.azure, &client_id, index);
            let name = format!("conn-{index:04}");
            planned.push(Connection { secret_name: format!("{name}-secret"), namespace, name, kind, client_id, broker_name, broker });
        }
        Ok(Fleet { namespaces: namespace_names, connections: planned, refresh_interval: refresh_interval.to_owned() })
    }

    /// Namespaces, broker credentials and IdentityBrokers: everything but the connections.
    pub async fn install_brokers(&self, client: &Client) -> BenchResult<()> {
        control_plane::create_namespace(client, OPERATOR_NAMESPACE).await?;
        for (i, namespace) in self.namespaces.iter().enumerate() {
            control_plane::create_namespace(client, namespace).await?;
            let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
            put_secret(&secrets, "m2m", &[("client-id", M2M_ID), ("client-secret", M2M_SECRET)]).await?;
            put_secret(&secrets, "cf-token", &[("api-token", &format!("cf-token-{i}"))]).await?;
            put_secret(&secrets, "unified-token", &[("api-token", &format!("unified-token-{i}"))]).await?;
            let brokers = [
                // Every namespace's Auth0 broker is on one emulated tenant, which has no plan limit:
                // lift the operator's default budget (sized for Auth0's smallest paid plan), as the
                // design's targets assume unthrottled brokers.
                (
                    "auth0",
                    json!({"auth0": {"domain": AUTH0_DOMAIN, "credentialsSecretRef": {"name": "m2m"}}, "rateLimit": {"requestsPerSecond": 1000, "burst": 1000}}),
                ),
                ("cloudflare", json!({"cloudflare": {"accountId": cloudflare_account(i), "apiTokenSecretRef": {"name": "cf-token"}}})),
                ("unified", json!({"unified": {"region": "us", "apiTokenSecretRef": {"name": "unified-token"}}})),
            ];
            for (name, spec) in brokers {
                apply(client, &broker_manifest(namespace, name, spec)).await?;
            }
        }
        let logto_brokers = self.connections.iter().enumerate().filter(|(_, c)| c.kind == BrokerKind::Logto).map(|(index, c)| {
            let spec = json!({"logto": {"endpoint": format!("https://{}", logto_host(index)), "credentialsSecretRef": {"name": "m2m"}}});
            broker_manifest(&c.namespace, &c.broker_name, spec)
        });
        stream::iter(logto_brokers.map(|doc| async move { apply(client, &doc).await }))
            .buffer_unordered(IN_FLIGHT)
            .try_collect::<Vec<_>>()
            .await?;
        Ok(())
    }

    /// Creates every connection and its Secret holding `values[i]`, `IN_FLIGHT` at a time.
    pub async fn create_connections(&self, client: &Client, values: &[String]) -> BenchResult<()> {
        let creates = values.iter().enumerate().map(|(index, value)| self.create_connection(client, index, value));
        stream::iter(creates).buffer_unordered(IN_FLIGHT).try_collect::<Vec<_>>().await?;
        Ok(())
    }

    /// Creates (or re-applies) connection `index` and its Secret holding `value`.
    pub async fn create_connection(&self, client: &Client, index: usize, value: &str) -> BenchResult<()> {
        let conn = &self.connections[index];
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &conn.namespace);
        put_secret(&secrets, &conn.secret_name, &[("client-secret", value)]).await?;
        apply(client, &conn.manifest(index, &self.refresh_interval)).await
    }

    /// Deletes connection `index` (its finalizer then deletes the broker object).
    pub async fn delete_connection(&self, client: &Client, index: usize) -> BenchResult<()> {
        let conn = &self.connections[index];
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &conn.namespace, &connection_resource());
        api.delete(&conn.name, &Default::default()).await?;
        Ok(())
    }

    /// Whether connection `index` exists (a deleted one stays until its finalizer completes).
    pub async fn connection_exists(&self, client: &Client, index: usize) -> BenchResult<bool> {
        let conn = &self.connections[index];
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &conn.namespace, &connection_resource());
        Ok(api.get_opt(&conn.name).await?.is_some())
    }
}

/// Every bench Logto tenant's host matches this pattern.
const LOGTO_HOSTS: &str = "*.bench.example.com";

fn logto_connector_id(index: usize) -> String {
    format!("bench{index}")
}

fn logto_host(index: usize) -> String {
    format!("logto-{index}.bench.example.com")
}

fn broker_manifest(namespace: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "idpbridge.io/v1alpha1", "kind": "IdentityBroker", "metadata": {"name": name, "namespace": namespace}, "spec": spec})
}

/// Creates or replaces a Secret's string data by server-side apply.
pub async fn put_secret(api: &Api<Secret>, name: &str, data: &[(&str, &str)]) -> BenchResult<Secret> {
    let data: serde_json::Map<String, Value> = data.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect();
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data});
    Ok(api.patch(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&secret)).await?)
}

fn connection_resource() -> ApiResource {
    let gvk = GroupVersionKind::gvk("idpbridge.io", "v1alpha1", "AzureAdConnection");
    ApiResource::from_gvk_with_plural(&gvk, "azureadconnections")
}

/// Server-side applies an idpbridge.io document (its metadata names the namespace).
async fn apply(client: &Client, doc: &Value) -> BenchResult<()> {
    let kind = doc["kind"].as_str().ok_or("document without kind")?;
    let name = doc["metadata"]["name"].as_str().ok_or("document without name")?;
    let namespace = doc["metadata"]["namespace"].as_str().ok_or("document without namespace")?;
    let gvk = GroupVersionKind::gvk("idpbridge.io", "v1alpha1", kind);
    let resource = ApiResource::from_gvk_with_plural(&gvk, &format!("{}s", kind.to_ascii_lowercase()));
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    api.patch(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(doc)).await?;
    Ok(())
}

/// Registers an app as every broker's guide asks (their known callbacks on the Web platform, the
/// delegated permissions of the longest list with admin consent), readable by the operator: the
/// registration check then reports nothing, as in a fleet set up correctly.
fn register_for_every_broker(azure: &crate::azure::AzureEmulator, client_id: &str, index: usize) {
    let team_callback = format!("https://{}.cloudflareaccess.com/cdn-cgi/access/callback", crate::cloudflare::TEAM);
    let auth0_callback = format!("https://{AUTH0_DOMAIN}/login/callback");
    let logto_callback = format!("https://{}/callback/{}", logto_host(index), logto_connector_id(index));
    azure.set_redirect_uris(TENANT_ID, client_id, &[&auth0_callback, &team_callback, &logto_callback, "https://api.unified.to/oauth/code"]);
    let all: Vec<&str> = crate::azure::GRAPH_SCOPES.iter().map(|(name, _)| *name).collect();
    azure.request_graph_permissions(TENANT_ID, client_id, &all);
    azure.grant_admin_consent(TENANT_ID, client_id, &all);
    azure.set_directory_read_all(TENANT_ID, client_id, true);
}
