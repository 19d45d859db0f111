//! `IdentityBroker` (namespaced) and `ClusterIdentityBroker`: where a broker's management API is
//! and how the operator authenticates to it.

// kube's typed `printcolumn(..)` repeats `type_ = ..` keys, which this lint misreads.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

const ONE_PROVIDER: &str = "[has(self.auth0)].filter(b, b).size() == 1";
const ONE_PROVIDER_MESSAGE: &str = "exactly one broker type (auth0) must be set";

/// A broker usable by AzureAdConnections in its own namespace.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "idpbridge.io",
    version = "v1alpha1",
    kind = "IdentityBroker",
    namespaced,
    status = "IdentityBrokerStatus",
    shortname = "idb",
    category = "idpbridge",
    doc = "An identity broker's management API and the credentials the operator uses for it, usable by AzureAdConnections in this namespace.",
    printcolumn(name = "Type", type_ = "string", json_path = ".status.type"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new(ONE_PROVIDER).message(ONE_PROVIDER_MESSAGE))]
#[serde(rename_all = "camelCase")]
pub struct IdentityBrokerSpec {
    /// Auth0 tenant, reached with a machine-to-machine application's client credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth0: Option<Auth0BrokerSpec>,
    /// Request budget towards this broker account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

/// A broker usable from any namespace its `allowedNamespaces` selector matches. Its credential
/// Secret lives in the operator's own namespace, out of reach of application teams.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "idpbridge.io",
    version = "v1alpha1",
    kind = "ClusterIdentityBroker",
    status = "IdentityBrokerStatus",
    shortname = "cidb",
    category = "idpbridge",
    doc = "An identity broker's management API and the credentials the operator uses for it, shared by AzureAdConnections in the namespaces it allows.",
    printcolumn(name = "Type", type_ = "string", json_path = ".status.type"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new(ONE_PROVIDER).message(ONE_PROVIDER_MESSAGE))]
#[serde(rename_all = "camelCase")]
pub struct ClusterIdentityBrokerSpec {
    /// Auth0 tenant, reached with a machine-to-machine application's client credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth0: Option<Auth0BrokerSpec>,
    /// Request budget towards this broker account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Namespaces whose connections may use this broker, by label. Absent: every namespace.
    /// An empty selector (`{}`) also matches every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_namespaces: Option<LabelSelector>,
}

/// An Auth0 tenant's Management API.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Auth0BrokerSpec {
    /// The tenant's domain, e.g. `acme.eu.auth0.com` (a host name, no scheme or path).
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\\\\.)+[a-zA-Z]{2,63}$')").message("domain must be a host name such as acme.eu.auth0.com, without https:// or a path"))]
    pub domain: String,
    /// Secret with the machine-to-machine application's client ID and secret. It needs the
    /// Management API scopes read:connections, create:connections, update:connections and
    /// delete:connections.
    pub credentials_secret_ref: ClientCredentialsSecretRef,
}

/// A Secret holding a client ID and secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClientCredentialsSecretRef {
    /// Name of the Secret (the broker's namespace, or the operator's for a ClusterIdentityBroker).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key holding the client ID.
    #[serde(default = "default_client_id_key")]
    pub client_id_key: String,
    /// Key holding the client secret.
    #[serde(default = "default_client_secret_key")]
    pub client_secret_key: String,
}

fn default_client_id_key() -> String {
    "client-id".into()
}

fn default_client_secret_key() -> String {
    "client-secret".into()
}

/// A token bucket for requests to one broker account.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Sustained requests per second.
    #[schemars(range(min = 1, max = 1000))]
    pub requests_per_second: u32,
    /// Requests that may be sent at once after a quiet period.
    #[serde(default = "default_burst")]
    #[schemars(range(min = 1, max = 1000))]
    pub burst: u32,
}

fn default_burst() -> u32 {
    10
}

/// Observed state of a broker.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct IdentityBrokerStatus {
    /// The generation the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: the operator obtained a management token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The broker type (auth0).
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "type")]
    pub type_: Option<String>,
    /// When the credentials were last checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check_time: Option<Time>,
}

/// The provider block of either broker kind.
#[derive(Clone, Debug, PartialEq)]
pub enum BrokerProvider {
    Auth0(Auth0BrokerSpec),
}

impl BrokerProvider {
    pub fn type_name(&self) -> &'static str {
        match self {
            BrokerProvider::Auth0(_) => "auth0",
        }
    }

    /// Name of the Secret holding the operator's credentials for this broker.
    pub fn credentials_secret(&self) -> &str {
        match self {
            BrokerProvider::Auth0(a) => &a.credentials_secret_ref.name,
        }
    }
}

impl IdentityBrokerSpec {
    pub fn provider(&self) -> Option<BrokerProvider> {
        self.auth0.clone().map(BrokerProvider::Auth0)
    }
}

impl ClusterIdentityBrokerSpec {
    pub fn provider(&self) -> Option<BrokerProvider> {
        self.auth0.clone().map(BrokerProvider::Auth0)
    }
}
