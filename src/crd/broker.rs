//! `IdentityBroker` (namespaced) and `ClusterIdentityBroker`: where a broker's management API is
//! and how the operator authenticates to it.

// kube's typed `printcolumn(..)` repeats `type_ = ..` keys, which this lint misreads.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

const ONE_PROVIDER: &str = "[has(self.auth0), has(self.cloudflare), has(self.logto), has(self.unified)].filter(b, b).size() == 1";
const ONE_PROVIDER_MESSAGE: &str = "exactly one broker type (auth0, cloudflare, logto or unified) must be set";

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
    /// Cloudflare Zero Trust account or zone, reached with an API token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloudflare: Option<CloudflareBrokerSpec>,
    /// Logto tenant, reached with a machine-to-machine application's client credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logto: Option<LogtoBrokerSpec>,
    /// Unified.to workspace, reached with a workspace API token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unified: Option<UnifiedBrokerSpec>,
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
    /// Cloudflare Zero Trust account or zone, reached with an API token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloudflare: Option<CloudflareBrokerSpec>,
    /// Logto tenant, reached with a machine-to-machine application's client credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logto: Option<LogtoBrokerSpec>,
    /// Unified.to workspace, reached with a workspace API token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unified: Option<UnifiedBrokerSpec>,
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
    /// Management API scopes read:connections, create:connections, update:connections,
    /// delete:connections, read:connections_options and update:connections_options.
    pub credentials_secret_ref: ClientCredentialsSecretRef,
}

/// A Cloudflare Zero Trust account (or zone) and the API token for it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.accountId) != has(self.zoneId)").message("set exactly one of accountId and zoneId"))]
pub struct CloudflareBrokerSpec {
    /// Account ID (32 hex characters): account-level identity providers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9a-f]{32}$')").message("accountId is 32 lowercase hex characters"))]
    pub account_id: Option<String>,
    /// Zone ID (32 hex characters): zone-level identity providers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9a-f]{32}$')").message("zoneId is 32 lowercase hex characters"))]
    pub zone_id: Option<String>,
    /// Secret with an API token that has "Access: Organizations, Identity Providers, and Groups
    /// Write". Cloudflare allows 1,200 requests per 5 minutes per token; the operator's default
    /// budget stays under it.
    pub api_token_secret_ref: TokenSecretRef,
}

/// A Logto tenant's Management API.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LogtoBrokerSpec {
    /// The tenant's endpoint, `https://HOST[:PORT]` without a path, e.g. `https://auth.example.com`
    /// or `https://abc123.logto.app`.
    #[schemars(length(min = 9, max = 263))]
    #[x_kube(validation = Rule::new("self.matches('^https://[a-zA-Z0-9]([a-zA-Z0-9.-]{0,251}[a-zA-Z0-9])?(:[0-9]{1,5})?/?$')").message("endpoint must be https://HOST[:PORT] with no path, e.g. https://auth.example.com"))]
    pub endpoint: String,
    /// The Management API resource indicator: `https://default.logto.app/api` for self-hosted
    /// Logto, `https://{tenant-id}.logto.app/api` for Logto Cloud.
    #[serde(default = "default_logto_resource")]
    #[schemars(length(max = 263))]
    #[x_kube(validation = Rule::new("self.matches('^https://[a-zA-Z0-9.-]+(:[0-9]{1,5})?/api$')").message("resource must look like https://default.logto.app/api"))]
    pub resource: String,
    /// Secret with the machine-to-machine application's ID and secret (an M2M role with the
    /// Management API permission `all`).
    pub credentials_secret_ref: ClientCredentialsSecretRef,
}

fn default_logto_resource() -> String {
    "https://default.logto.app/api".into()
}

/// A Unified.to workspace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UnifiedBrokerSpec {
    /// The workspace's region, which selects the API host.
    #[serde(default)]
    pub region: UnifiedRegion,
    /// Secret with the workspace API token (Settings > API in the Unified.to dashboard).
    pub api_token_secret_ref: TokenSecretRef,
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum UnifiedRegion {
    /// `api.unified.to`
    #[default]
    Us,
    /// `api-eu.unified.to`
    Eu,
    /// `api-au.unified.to`
    Au,
}

impl UnifiedRegion {
    pub fn host(self) -> &'static str {
        match self {
            UnifiedRegion::Us => "api.unified.to",
            UnifiedRegion::Eu => "api-eu.unified.to",
            UnifiedRegion::Au => "api-au.unified.to",
        }
    }
}

/// A Secret key holding an API token.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TokenSecretRef {
    /// Name of the Secret (the broker's namespace, or the operator's for a ClusterIdentityBroker).
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new(super::OBJECT_NAME_RULE).message(super::OBJECT_NAME_MESSAGE))]
    pub name: String,
    /// Key holding the token.
    #[serde(default = "default_token_key")]
    pub key: String,
}

fn default_token_key() -> String {
    "api-token".into()
}

/// A Secret holding a client ID and secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClientCredentialsSecretRef {
    /// Name of the Secret (the broker's namespace, or the operator's for a ClusterIdentityBroker).
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new(super::OBJECT_NAME_RULE).message(super::OBJECT_NAME_MESSAGE))]
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
    /// When a check last changed the status, or last confirmed it: a check that finds nothing
    /// new writes no status unless this is an hour old.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check_time: Option<Time>,
}

/// The provider block of either broker kind.
#[derive(Clone, Debug, PartialEq)]
pub enum BrokerProvider {
    Auth0(Auth0BrokerSpec),
    Cloudflare(CloudflareBrokerSpec),
    Logto(LogtoBrokerSpec),
    Unified(UnifiedBrokerSpec),
}

/// Where in a Secret the operator's credentials for a broker are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialKeys<'a> {
    /// A client ID and secret.
    ClientCredentials { id_key: &'a str, secret_key: &'a str },
    /// A single API token.
    Token { key: &'a str },
}

impl BrokerProvider {
    pub fn type_name(&self) -> &'static str {
        match self {
            BrokerProvider::Auth0(_) => "auth0",
            BrokerProvider::Cloudflare(_) => "cloudflare",
            BrokerProvider::Logto(_) => "logto",
            BrokerProvider::Unified(_) => "unified",
        }
    }

    /// Name of the Secret holding the operator's credentials for this broker.
    pub fn credentials_secret(&self) -> &str {
        match self {
            BrokerProvider::Auth0(a) => &a.credentials_secret_ref.name,
            BrokerProvider::Cloudflare(c) => &c.api_token_secret_ref.name,
            BrokerProvider::Logto(l) => &l.credentials_secret_ref.name,
            BrokerProvider::Unified(u) => &u.api_token_secret_ref.name,
        }
    }

    /// The keys of the credentials in that Secret.
    pub fn credential_keys(&self) -> CredentialKeys<'_> {
        fn client(r: &ClientCredentialsSecretRef) -> CredentialKeys<'_> {
            CredentialKeys::ClientCredentials { id_key: &r.client_id_key, secret_key: &r.client_secret_key }
        }
        match self {
            BrokerProvider::Auth0(a) => client(&a.credentials_secret_ref),
            BrokerProvider::Logto(l) => client(&l.credentials_secret_ref),
            BrokerProvider::Cloudflare(c) => CredentialKeys::Token { key: &c.api_token_secret_ref.key },
            BrokerProvider::Unified(u) => CredentialKeys::Token { key: &u.api_token_secret_ref.key },
        }
    }
}

/// The single provider block of a broker spec (the CRD guarantees exactly one).
fn provider_of(
    auth0: &Option<Auth0BrokerSpec>,
    cloudflare: &Option<CloudflareBrokerSpec>,
    logto: &Option<LogtoBrokerSpec>,
    unified: &Option<UnifiedBrokerSpec>,
) -> Option<BrokerProvider> {
    auth0
        .clone()
        .map(BrokerProvider::Auth0)
        .or_else(|| cloudflare.clone().map(BrokerProvider::Cloudflare))
        .or_else(|| logto.clone().map(BrokerProvider::Logto))
        .or_else(|| unified.clone().map(BrokerProvider::Unified))
}

impl IdentityBrokerSpec {
    pub fn provider(&self) -> Option<BrokerProvider> {
        provider_of(&self.auth0, &self.cloudflare, &self.logto, &self.unified)
    }
}

impl ClusterIdentityBrokerSpec {
    pub fn provider(&self) -> Option<BrokerProvider> {
        provider_of(&self.auth0, &self.cloudflare, &self.logto, &self.unified)
    }
}
