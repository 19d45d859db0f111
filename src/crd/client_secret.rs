//! `AzureAdClientSecret`: owns an Entra ID application's client secrets. It creates a new
//! password before the current one is due, proves it, writes it into a Secret (key
//! `client-secret`, annotation `idpbridge.io/expires-at`) that AzureAdConnections read as
//! before, and removes the previous password once every consumer has synced the new one.

// kube's typed `printcolumn(..)` repeats `type_ = ..` keys, which this lint misreads.
#![allow(clippy::duplicated_attributes)]

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    connection::{AzureCloud, SecretKeyRef},
    duration,
};

/// Data key of the current secret: what AzureAdConnections read.
pub const CURRENT_KEY: &str = "client-secret";
/// Data key of a new secret while it is proven: no consumer reads it.
pub const STAGED_KEY: &str = "client-secret-next";
/// Annotation on the Secret naming the AzureAdClientSecret that writes it.
pub const OWNER_ANNOTATION: &str = "idpbridge.io/client-secret-owner";
/// Annotation on the Secret: the marker of the staged password (matches `status.pending.marker`).
pub const STAGED_MARKER_ANNOTATION: &str = "idpbridge.io/staged-marker";
/// Annotation on the AzureAdClientSecret: a new value (any text, e.g. a time) asks for a renewal now.
pub const RENEW_ANNOTATION: &str = "idpbridge.io/renew";
/// Annotation on the AzureAdClientSecret: a new value asks for an urgent revoke (renew now and
/// remove the previous password as soon as every consumer has synced, skipping the overlap).
pub const REVOKE_ANNOTATION: &str = "idpbridge.io/revoke";

/// Desired state of an AzureAdClientSecret.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "idpbridge.io",
    version = "v1alpha1",
    kind = "AzureAdClientSecret",
    namespaced,
    status = "AzureAdClientSecretStatus",
    shortname = "aadcs",
    category = "idpbridge",
    doc = "The client secrets of an Entra ID (Azure AD) application, renewed by the operator before they expire and written into a Secret that AzureAdConnections read.",
    printcolumn(name = "Secret", type_ = "string", json_path = ".spec.secretName"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Issuing", type_ = "string", json_path = ".status.conditions[?(@.type==\"Issuing\")].reason"),
    printcolumn(
        name = "Expires",
        type_ = "string",
        json_path = ".status.current.expiresAt",
        description = "When the current password expires (RFC 3339)"
    ),
    printcolumn(
        name = "Renews",
        type_ = "string",
        json_path = ".status.current.renewalTime",
        description = "When the next password is created (RFC 3339)"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("!has(self.renewBefore) || duration(self.renewBefore) < duration(self.lifetime)").message("renewBefore must be shorter than lifetime"))]
#[x_kube(validation = Rule::new("!has(self.renewBefore) || duration(self.overlap) < duration(self.renewBefore)").message("overlap must be shorter than renewBefore: both passwords must stay valid through it"))]
#[serde(rename_all = "camelCase")]
pub struct AzureAdClientSecretSpec {
    /// The Entra ID application whose client secrets this resource owns.
    pub azure: ApplicationSpec,
    /// The Secret, in this namespace, that receives the current secret under `client-secret`
    /// (plus the `idpbridge.io/expires-at` annotation). AzureAdConnections reference it as usual.
    /// With `graphAuth.mode: Self` it must already hold the bootstrap secret.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new(super::OBJECT_NAME_RULE).message(super::OBJECT_NAME_MESSAGE))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("secretName is immutable; create a new AzureAdClientSecret instead"))]
    pub secret_name: String,
    /// Lifetime of each new password (Go duration, at least 2h). Default 2160h (90 days).
    #[serde(default = "default_lifetime")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(concat!("self.matches('", "^([0-9]+(ms|s|m|h))+$", "') && duration(self) >= duration('2h')")).message("lifetime must be a duration such as 2160h (90 days), at least 2h"))]
    pub lifetime: String,
    /// How long before a password expires its successor is created. Default: a third of `lifetime`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(concat!("self.matches('", "^([0-9]+(ms|s|m|h))+$", "') && duration(self) >= duration('1m')")).message("renewBefore must be a duration such as 720h, at least 1m"))]
    pub renew_before: Option<String>,
    /// The minimum time both passwords stay valid after the new one is promoted, before the
    /// previous one is removed (and only once every consumer has synced). Default 24h.
    #[serde(default = "default_overlap")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(concat!("self.matches('", "^([0-9]+(ms|s|m|h))+$", "')")).message("overlap must be a duration such as 24h"))]
    pub overlap: String,
    /// How long a new password may take to be accepted by Entra ID (replication) before it is
    /// removed and the renewal retried later. Default 10m.
    #[serde(default = "default_propagation_timeout")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(concat!("self.matches('", "^([0-9]+(ms|s|m|h))+$", "') && duration(self) >= duration('10s') && duration(self) <= duration('1h')")).message("propagationTimeout must be a duration between 10s and 1h"))]
    pub propagation_timeout: String,
    /// How the operator authenticates to Microsoft Graph.
    #[serde(default)]
    pub graph_auth: GraphAuth,
}

/// The application, as in an AzureAdConnection's `azure` block without the secret reference.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationSpec {
    /// The application's home tenant: its tenant ID (GUID) or a verified domain.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new(concat!("self.matches('", "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", "') || self.matches('", "^([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\\\\.)+[a-zA-Z]{2,63}$", "')")).message("tenant must be a tenant ID (GUID) or a domain name such as contoso.onmicrosoft.com; common, organizations and consumers are not tenants"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("azure.tenant is immutable"))]
    pub tenant: String,
    /// The national cloud the tenant lives in; mapped to fixed Azure hosts.
    #[serde(default)]
    pub cloud: AzureCloud,
    /// The application (client) ID, a GUID.
    #[schemars(length(min = 36, max = 36))]
    #[x_kube(validation = Rule::new(concat!("self.matches('", "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", "')")).message("clientId must be the application (client) ID, a GUID such as 00000000-0000-0000-0000-000000000000"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("azure.clientId is immutable"))]
    pub client_id: String,
}

/// Who calls Microsoft Graph's addPassword and removePassword.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(self.mode == 'Rotator') == has(self.rotator)").message("graphAuth.rotator is required with mode Rotator, and only then"))]
pub struct GraphAuth {
    /// `Self` (default): the application with its own current secret; its service principal must
    /// own its registration and hold Application.ReadWrite.OwnedBy. `Rotator`: a separate
    /// application that owns this one, with its credentials in `rotator`.
    #[serde(default)]
    pub mode: GraphAuthMode,
    /// The rotator application (mode `Rotator`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotator: Option<RotatorSpec>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum GraphAuthMode {
    #[default]
    #[serde(rename = "Self")]
    SelfApp,
    Rotator,
}

/// A separate application that manages this one's passwords, in the same tenant.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RotatorSpec {
    /// The rotator's application (client) ID.
    #[schemars(length(min = 36, max = 36))]
    #[x_kube(validation = Rule::new(concat!("self.matches('", "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", "')")).message("rotator.clientId must be a GUID"))]
    pub client_id: String,
    /// The Secret, in this namespace, holding the rotator's client secret.
    pub client_secret_ref: SecretKeyRef,
}

fn default_lifetime() -> String {
    "2160h".into()
}

fn default_overlap() -> String {
    "24h".into()
}

fn default_propagation_timeout() -> String {
    "10m".into()
}

impl AzureAdClientSecretSpec {
    pub fn lifetime(&self) -> Duration {
        duration::parse(&self.lifetime).unwrap_or(Duration::from_secs(2160 * 3600))
    }

    /// `renewBefore`, or a third of the lifetime.
    pub fn renew_before(&self) -> Duration {
        self.renew_before.as_deref().and_then(|t| duration::parse(t).ok()).unwrap_or(self.lifetime() / 3)
    }

    pub fn overlap(&self) -> Duration {
        duration::parse(&self.overlap).unwrap_or(Duration::from_secs(24 * 3600))
    }

    pub fn propagation_timeout(&self) -> Duration {
        duration::parse(&self.propagation_timeout).unwrap_or(Duration::from_secs(600))
    }
}

/// Observed state, kstatus-compatible.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AzureAdClientSecretStatus {
    /// The generation the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready (the Secret holds a password Entra ID accepts) and Issuing (a renewal in progress).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The password in the Secret's `client-secret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<CredentialStatus>,
    /// The password it replaced, kept until every consumer has synced and the overlap passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<CredentialStatus>,
    /// A renewal in progress: recorded before addPassword, so a restart can finish or undo it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<PendingStatus>,
    /// AzureAdConnections that read the Secret, and how many hold the current password in
    /// their broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumers: Option<ConsumersStatus>,
    /// The last `idpbridge.io/renew` annotation value acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_renew: Option<String>,
    /// The last `idpbridge.io/revoke` annotation value acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_revoke: Option<String>,
    /// When the last new password was promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotation_time: Option<Time>,
    /// After a renewal was abandoned (not accepted in time), when the next one may start on its
    /// own; the renew and revoke annotations do not wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_not_before: Option<Time>,
}

/// One password credential of the application (never its value).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CredentialStatus {
    /// Its key ID (the portal's "Secret ID").
    pub key_id: String,
    /// Its first three characters, as Graph shows them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// When it expires.
    pub expires_at: Time,
    /// `Issued` (created by idp-bridge) or `Bootstrap` (the one it was given).
    pub origin: CredentialOrigin,
    /// When its successor is created (current only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<Time>,
    /// When it may be removed, once every consumer has synced its successor (previous only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removable_after: Option<Time>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialOrigin {
    Issued,
    Bootstrap,
}

/// A renewal in progress.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PendingStatus {
    /// Unique marker, carried in the new password's displayName.
    pub marker: String,
    /// When the intent was recorded.
    pub requested_at: Time,
    /// Urgent revoke: the previous password goes as soon as every consumer has synced.
    #[serde(default)]
    pub revoke: bool,
    /// The new password, once created and staged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// Keyed fingerprint of the staged value (never the value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// When it was staged in the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staged_at: Option<Time>,
    /// When Entra ID first accepted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proven_at: Option<Time>,
}

/// The AzureAdConnections that read the Secret.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ConsumersStatus {
    /// How many AzureAdConnections read the Secret's `client-secret` and push it to a broker.
    pub total: u32,
    /// How many of them report the current password synced to their broker.
    pub synced: u32,
}
