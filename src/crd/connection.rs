//! `AzureAdConnection`: one Entra ID application feeding one broker connection.

// kube's typed `printcolumn(..)` repeats `type_ = ..` keys, which this lint misreads.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::duration;

pub const GUID_PATTERN: &str = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";
const DNS_NAME_PATTERN: &str = "^([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\\.)+[a-zA-Z]{2,63}$";

/// Desired state of an AzureAdConnection.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "idpbridge.io",
    version = "v1alpha1",
    kind = "AzureAdConnection",
    namespaced,
    status = "AzureAdConnectionStatus",
    shortname = "aadc",
    category = "idpbridge",
    doc = "An Entra ID (Azure AD) application whose client secret, held in a Kubernetes Secret, is validated against Azure and pushed into one identity broker connection.",
    printcolumn(name = "Broker", type_ = "string", json_path = ".spec.brokerRef.name"),
    printcolumn(name = "Tenant", type_ = "string", json_path = ".status.tenantId"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    // `string`, not `date`: kubectl renders a `date` column as the time elapsed since it, and a
    // future time as `<invalid>`, which is every expiry worth showing.
    printcolumn(name = "Expires", type_ = "string", json_path = ".status.secret.expiresAt", description = "When the client secret expires (RFC 3339)"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("[has(self.auth0), has(self.cloudflare), has(self.logto), has(self.unified)].filter(b, b).size() == 1").message("exactly one broker block (auth0, cloudflare, logto or unified) must be set, matching the broker's type"))]
#[x_kube(validation = Rule::new("!has(self.auth0) || !(self.azure.signInAudience in ['Organizations', 'Common']) || self.auth0.userIdAttribute == 'sub'").message("Auth0's multi-tenant (common) endpoint needs auth0.userIdAttribute: sub"))]
#[serde(rename_all = "camelCase")]
pub struct AzureAdConnectionSpec {
    /// The IdentityBroker (same namespace) or ClusterIdentityBroker that receives the credentials.
    pub broker_ref: BrokerRef,
    /// The Entra ID application and where its client secret is kept.
    pub azure: AzureSpec,
    /// How the secret is checked against Azure before it is pushed.
    #[serde(default)]
    pub validation: ValidationSpec,
    /// Where the secret's expiry date comes from and when to warn.
    #[serde(default)]
    pub expiry: ExpirySpec,
    /// Settings of the Auth0 enterprise connection (strategy `waad`). Requires an Auth0 broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth0: Option<Auth0ConnectionSpec>,
    /// Settings of the Cloudflare Zero Trust Access identity provider (type `azureAD`). Requires a
    /// Cloudflare broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloudflare: Option<CloudflareConnectionSpec>,
    /// Settings of Logto's Microsoft social connector (`azuread-universal`). Requires a Logto broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logto: Option<LogtoConnectionSpec>,
    /// Settings of the Unified.to `microsoft_ad` connection imported with the app's client
    /// credentials. Requires a Unified.to broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unified: Option<UnifiedConnectionSpec>,
    /// What happens to the broker object when this resource is deleted. `Orphan` (default) keeps
    /// it; `Delete` removes it, which in Auth0 also deletes the connection's users.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// Stops every call to Azure and the broker until set back to false.
    #[serde(default)]
    pub suspend: bool,
    /// `Full` (default) creates and updates the broker object; `ObserveOnly` validates and
    /// reports what it would change, and writes nothing to the broker.
    #[serde(default)]
    pub management_policy: ManagementPolicy,
    /// Take over a broker object of the connection's name that idp-bridge did not create (made in
    /// the broker's dashboard, or by another tool): without it, such an object is left alone and
    /// the connection reports `BrokerConflict`. Never takes an object another connection manages.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopt: bool,
}

/// Reference to the broker that receives the credentials.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BrokerRef {
    /// `IdentityBroker` (default, in this namespace) or `ClusterIdentityBroker`.
    #[serde(default)]
    pub kind: BrokerRefKind,
    /// Name of the broker object.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new(super::OBJECT_NAME_RULE).message(super::OBJECT_NAME_MESSAGE))]
    pub name: String,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BrokerRefKind {
    #[default]
    IdentityBroker,
    ClusterIdentityBroker,
}

/// The Entra ID application.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AzureSpec {
    /// The application's home tenant: its tenant ID (GUID) or a verified domain such as
    /// `contoso.onmicrosoft.com`. `common`, `organizations` and `consumers` are not tenants; use
    /// `signInAudience` for multi-tenant sign-in.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new(concat!("self.matches('", "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", "') || self.matches('", "^([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\\\\.)+[a-zA-Z]{2,63}$", "')")).message("tenant must be a tenant ID (GUID) or a domain name such as contoso.onmicrosoft.com; common, organizations and consumers are not tenants (use signInAudience)"))]
    pub tenant: String,
    /// The national cloud the tenant lives in; mapped to fixed Azure hosts.
    #[serde(default)]
    pub cloud: AzureCloud,
    /// The application (client) ID, a GUID.
    #[schemars(length(min = 36, max = 36))]
    #[x_kube(validation = Rule::new(concat!("self.matches('", "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", "')")).message("clientId must be the application (client) ID, a GUID such as 00000000-0000-0000-0000-000000000000"))]
    pub client_id: String,
    /// The Secret, in this namespace, that holds the client secret value.
    pub client_secret_ref: SecretKeyRef,
    /// Who may sign in, as the app registration's supported account types say. The home
    /// `tenant` is still what validation and expiry use.
    #[serde(default)]
    pub sign_in_audience: SignInAudience,
    /// What the operator does with the app registration (checked through Microsoft Graph into
    /// the AzureAppConfigured condition): `Verify` (default) only reports; `Manage` also adds
    /// the broker's missing redirect URI to the Web platform, never removing one.
    #[serde(default)]
    pub registration: RegistrationPolicy,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RegistrationPolicy {
    /// Report what the registration lacks; change nothing.
    #[default]
    Verify,
    /// Also add a missing redirect URI (needs the application permission
    /// Application.ReadWrite.OwnedBy and the app's service principal as an owner of the
    /// registration). Permissions and consent are only reported: they need an administrator.
    Manage,
}

/// A key in a Secret in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new(super::OBJECT_NAME_RULE).message(super::OBJECT_NAME_MESSAGE))]
    pub name: String,
    /// Key within the Secret's data.
    #[serde(default = "default_secret_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_secret_key() -> String {
    "client-secret".into()
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub enum AzureCloud {
    #[default]
    AzurePublic,
    AzureUSGovernment,
    AzureChina,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SignInAudience {
    /// Accounts in the home tenant only.
    #[default]
    SingleTenant,
    /// Accounts in any Entra ID tenant.
    Organizations,
    /// Any Entra ID tenant and personal Microsoft accounts.
    Common,
    /// Personal Microsoft accounts only.
    Consumers,
}

/// How the secret is proven before it is pushed.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ValidationSpec {
    /// `ClientCredentials` (default) resolves the tenant and requests a token with the secret;
    /// `Discovery` only resolves the tenant (public or native clients whose secret is not used);
    /// `None` checks nothing.
    #[serde(default)]
    pub mode: ValidationMode,
    /// How long a successful validation is trusted before Azure is asked again, and how often the
    /// broker object is re-read for drift. Go duration, at least 1m.
    #[serde(default = "default_refresh_interval")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(concat!("self.matches('", "^([0-9]+(ms|s|m|h))+$", "') && duration(self) >= duration('1m')")).message("refreshInterval must be a duration such as 30m or 1h, at least 1m"))]
    pub refresh_interval: String,
}

impl Default for ValidationSpec {
    fn default() -> Self {
        Self { mode: ValidationMode::default(), refresh_interval: default_refresh_interval() }
    }
}

fn default_refresh_interval() -> String {
    "1h".into()
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub enum ValidationMode {
    #[default]
    ClientCredentials,
    Discovery,
    None,
}

/// Where the secret's expiry comes from.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExpirySpec {
    /// `Auto` (default) reads Microsoft Graph and falls back to the Secret's
    /// `idpbridge.io/expires-at` annotation; `Graph` and `Annotation` use one source; `None` skips.
    #[serde(default)]
    pub source: ExpirySource,
    /// How long before expiry the SecretExpiring condition turns True. Go duration, at least 1h.
    #[serde(default = "default_warn_before")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(concat!("self.matches('", "^([0-9]+(ms|s|m|h))+$", "') && duration(self) >= duration('1h')")).message("warnBefore must be a duration such as 720h (30 days), at least 1h"))]
    pub warn_before: String,
}

impl Default for ExpirySpec {
    fn default() -> Self {
        Self { source: ExpirySource::default(), warn_before: default_warn_before() }
    }
}

fn default_warn_before() -> String {
    "720h".into()
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ExpirySource {
    #[default]
    Auto,
    Graph,
    Annotation,
    None,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeletionPolicy {
    #[default]
    Orphan,
    Delete,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ManagementPolicy {
    #[default]
    Full,
    ObserveOnly,
}

/// Settings of an Auth0 enterprise connection with strategy `waad`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Auth0ConnectionSpec {
    /// Connection name in Auth0; letters, digits and inner hyphens. Auth0 cannot rename a
    /// connection, so this field is immutable.
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(validation = Rule::new("self.matches('^[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?$')").message("name may hold letters, digits and hyphens, and must start and end with a letter or digit"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("auth0.name is immutable: Auth0 cannot rename a connection; create a new AzureAdConnection instead"))]
    pub name: String,
    /// Name shown on the login button; defaults to `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub display_name: Option<String>,
    /// The tenant's primary domain (e.g. `contoso.onmicrosoft.com`). Defaults to `azure.tenant`
    /// when that is a domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub domain: Option<String>,
    /// Email domains that route to this connection in home-realm discovery.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub domain_aliases: Vec<String>,
    /// Microsoft endpoint version Auth0 uses.
    #[serde(default)]
    pub identity_api: Auth0IdentityApi,
    /// App ID URI of the Web app/API registration, for the native (resource owner password) setup
    /// where `clientId` is the native application's. Sent as Auth0's `app_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 500))]
    pub app_id_uri: Option<String>,
    /// Which Entra ID claim becomes the Auth0 user id: `oid` (default, stable per tenant) or
    /// `sub`, which Auth0 requires when signInAudience is Organizations or Common.
    #[serde(default)]
    pub user_id_attribute: Auth0UserIdAttribute,
    /// Fetch the user's groups (needs Graph Directory.Read.All on the app).
    #[serde(default)]
    pub ext_groups: bool,
    /// Include nested groups when extGroups is on.
    #[serde(default)]
    pub ext_nested_groups: bool,
    /// Store the extended profile.
    #[serde(default = "default_true")]
    pub ext_profile: bool,
    /// Enable Auth0's Users API access to the directory.
    #[serde(default)]
    pub api_enable_users: bool,
    /// Show the connection as a button on Universal Login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_as_button: Option<bool>,
    /// Auth0 application client IDs enabled for this connection. Listed clients are enabled;
    /// clients enabled elsewhere are left alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 200))]
    pub enabled_clients: Vec<String>,
}

fn default_true() -> bool {
    true
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Auth0IdentityApi {
    /// `microsoft-identity-platform-v2.0` (recommended).
    #[default]
    #[serde(rename = "microsoft-identity-platform-v2.0")]
    MicrosoftIdentityPlatformV2,
    /// `azure-active-directory-v1.0` (needed for the native resource owner flow).
    #[serde(rename = "azure-active-directory-v1.0")]
    AzureActiveDirectoryV1,
}

impl Auth0IdentityApi {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MicrosoftIdentityPlatformV2 => "microsoft-identity-platform-v2.0",
            Self::AzureActiveDirectoryV1 => "azure-active-directory-v1.0",
        }
    }
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Auth0UserIdAttribute {
    #[default]
    Oid,
    Sub,
}

/// A Cloudflare Zero Trust Access identity provider of type `azureAD`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CloudflareConnectionSpec {
    /// Name of the identity provider, shown on the Access login page. Cloudflare has no lookup by
    /// name; the operator records the provider's id in status and adopts an existing provider of
    /// this name and type when the id is unknown.
    #[schemars(length(min = 1, max = 255))]
    pub name: String,
    /// Load the user's Entra ID groups into Access policies.
    #[serde(default)]
    pub support_groups: bool,
    /// Use PKCE. Sent only when set: current Cloudflare schemas omit it for azureAD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pkce_enabled: Option<bool>,
    /// Load Entra ID authentication contexts for conditional access.
    #[serde(default)]
    pub conditional_access_enabled: bool,
    /// Extra id_token claims to pass through to Access.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub claims: Vec<String>,
    /// The claim that holds the user's email.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 255))]
    pub email_claim_name: Option<String>,
    /// The OIDC prompt sent to Entra ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<CloudflarePrompt>,
    /// SCIM provisioning from Entra ID into Cloudflare.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scim: Option<CloudflareScimSpec>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CloudflarePrompt {
    Login,
    SelectAccount,
    None,
}

/// SCIM provisioning settings of a Cloudflare identity provider.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!self.seatDeprovision || self.userDeprovision").message("scim.seatDeprovision needs scim.userDeprovision"))]
pub struct CloudflareScimSpec {
    /// Turn SCIM provisioning on.
    #[serde(default)]
    pub enabled: bool,
    /// Revoke a user's Access and Gateway sessions when Entra ID deprovisions them.
    #[serde(default)]
    pub user_deprovision: bool,
    /// Remove the user's Zero Trust seat on deprovisioning (needs userDeprovision).
    #[serde(default)]
    pub seat_deprovision: bool,
    /// What Cloudflare does when Entra ID updates a user's identity.
    #[serde(default)]
    pub identity_update_behavior: ScimIdentityUpdateBehavior,
    /// Secret, in this namespace, that the operator creates (owned by this connection) to hold the
    /// SCIM base URL (`scim-base-url`) and token (`scim-secret`). Cloudflare shows the token only
    /// once, when SCIM is first enabled; enter both in Entra ID's provisioning settings.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new(super::OBJECT_NAME_RULE).message(super::OBJECT_NAME_MESSAGE))]
    pub secret_name: String,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ScimIdentityUpdateBehavior {
    Automatic,
    Reauth,
    #[default]
    NoAction,
}

/// Logto's Microsoft social connector (`azuread-universal`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
// connectorId's immutability is a rule on this block, not on the field: a field rule does not run
// when the field is absent, so removing it in one update and setting another in the next passed.
#[x_kube(validation = Rule::new("!has(oldSelf.connectorId) || (has(self.connectorId) && self.connectorId == oldSelf.connectorId)").message("logto.connectorId is immutable: once set it can be neither changed nor removed"))]
pub struct LogtoConnectionSpec {
    /// Database id to create the connector with, which fixes the callback URL to register in
    /// Entra ID (`{endpoint}/callback/{connectorId}`). Absent: Logto picks one, shown in status.
    /// Immutable once set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 21))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]+$')").message("connectorId may hold lowercase letters and digits only"))]
    pub connector_id: Option<String>,
    /// OIDC prompts sent to Entra ID.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4))]
    pub prompts: Vec<LogtoPrompt>,
    /// Extra scopes, space-separated, on top of `User.Read`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1000))]
    pub scopes: Option<String>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogtoPrompt {
    None,
    Login,
    Consent,
    SelectAccount,
}

/// A Unified.to `microsoft_ad` connection imported with the app's client credentials.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct UnifiedConnectionSpec {
    /// Your identifier for the connection (Unified.to's `external_xref`); also how an existing
    /// connection is found again. Defaults to `idp-bridge:<azure.tenant>:<azure.clientId>`
    /// (lowercased); set it when two resources feed the same application to one workspace.
    /// Changing it later makes a new connection and leaves the old one in place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub external_xref: Option<String>,
    /// Unified.to permissions granted to the connection, e.g. `hris_employee_read`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub permissions: Vec<String>,
}

/// Observed state, kstatus-compatible.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AzureAdConnectionStatus {
    /// The generation the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready (summary), CredentialsValid, SecretExpiring, BrokerSynced and AzureAppConfigured.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The tenant GUID that discovery resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// What is known about the held secret (never the value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretStatus>,
    /// The broker object this connection manages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<BrokerObjectStatus>,
    /// When Azure last accepted the secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_validated_time: Option<Time>,
}

/// Facts about the held secret.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SecretStatus {
    /// Keyed HMAC-SHA256 fingerprint of the value: changes when the value changes, reveals nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// When the secret expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// Where `expiresAt` came from: Graph or Annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiry_source: Option<String>,
    /// The Azure credential's key ID (the portal's "Secret ID").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}

/// The broker-side object.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BrokerObjectStatus {
    /// The broker's id of the object (e.g. Auth0 `con_...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Fingerprint of the secret the broker holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synced_fingerprint: Option<String>,
    /// When the operator last wrote to the broker object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synced_at: Option<Time>,
}

impl AzureAdConnectionSpec {
    /// The broker type of the connection's broker block (`auth0`, `cloudflare`, ...).
    pub fn broker_type(&self) -> &'static str {
        if self.auth0.is_some() {
            "auth0"
        } else if self.cloudflare.is_some() {
            "cloudflare"
        } else if self.logto.is_some() {
            "logto"
        } else if self.unified.is_some() {
            "unified"
        } else {
            "none"
        }
    }

    pub fn refresh_interval(&self) -> std::time::Duration {
        duration::parse(&self.validation.refresh_interval).unwrap_or(std::time::Duration::from_secs(3600))
    }

    pub fn warn_before(&self) -> std::time::Duration {
        duration::parse(&self.expiry.warn_before).unwrap_or(std::time::Duration::from_secs(720 * 3600))
    }
}

/// Whether `tenant` is a GUID (as opposed to a domain name).
pub fn is_guid(text: &str) -> bool {
    static RE: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| regex::Regex::new(GUID_PATTERN).unwrap());
    RE.is_match(text)
}

/// Whether `text` is a DNS name as the CRD accepts it.
pub fn is_dns_name(text: &str) -> bool {
    static RE: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| regex::Regex::new(DNS_NAME_PATTERN).unwrap());
    text.len() <= 253 && RE.is_match(text)
}
