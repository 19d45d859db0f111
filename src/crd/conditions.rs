//! Condition types, the closed set of reasons, and `set_condition` with the semantics of
//! apimachinery's `SetStatusCondition`: one entry per type, the transition time moves only when
//! the status flips, and the caller learns whether anything changed.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const READY: &str = "Ready";
pub const CREDENTIALS_VALID: &str = "CredentialsValid";
pub const SECRET_EXPIRING: &str = "SecretExpiring";
pub const BROKER_SYNCED: &str = "BrokerSynced";
/// AzureAdClientSecret: a new password is being issued, proven or promoted.
pub const ISSUING: &str = "Issuing";
/// Cloudflare SCIM only: whether the SCIM Secret holds the SCIM endpoint and token.
pub const SCIM_SECRET_READY: &str = "ScimSecretReady";
pub const AZURE_APP_CONFIGURED: &str = "AzureAppConfigured";

/// Condition status values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    True,
    False,
    Unknown,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::True => "True",
            Status::False => "False",
            Status::Unknown => "Unknown",
        }
    }
}

macro_rules! reasons {
    ($( $(#[doc = $doc:literal])* $variant:ident ),* $(,)?) => {
        /// Every reason the controller writes. The README documents each one.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Reason { $( $(#[doc = $doc])* $variant ),* }

        impl Reason {
            pub const ALL: &'static [Reason] = &[$(Reason::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self { $(Reason::$variant => stringify!($variant)),* }
            }
        }
    };
}

reasons! {
    /// Ready: everything checked and the broker holds the secret.
    Ready,
    /// `spec.suspend` is true: no calls to Azure or the broker.
    Suspended,
    /// The reconcile ran out of `--reconcile-timeout` (an endpoint too slow); retried with backoff.
    ReconcileTimedOut,
    /// The reconcile panicked (a bug in the operator); retried with backoff.
    ReconcilePanicked,
    /// CredentialsValid: Azure issued a token for the secret.
    Valid,
    /// CredentialsValid: `validation.mode: Discovery` resolved the tenant; the secret was not tried.
    TenantResolved,
    /// CredentialsValid: `validation.mode: None`.
    ValidationSkipped,
    /// The Secret named in `azure.clientSecretRef` does not exist.
    SecretNotFound,
    /// The Secret exists but lacks the key.
    SecretKeyNotFound,
    /// The key holds an empty value.
    SecretEmpty,
    /// The key holds bytes that are not UTF-8 text.
    SecretNotUtf8,
    /// The value is a GUID: the secret's ID was pasted instead of its value.
    SecretIdInsteadOfValue,
    /// AADSTS7000215: Azure rejected the secret value.
    InvalidSecret,
    /// AADSTS7000222: the secret has expired.
    SecretExpired,
    /// AADSTS700016: no application with this client ID in the tenant.
    ApplicationNotFound,
    /// AADSTS7000112: the application is disabled.
    ApplicationDisabled,
    /// AADSTS90002: the tenant does not exist in this cloud.
    TenantNotFound,
    /// AADSTS900023: the tenant identifier is malformed.
    TenantInvalid,
    /// AADSTS90038 and relatives: the tenant lives in another national cloud.
    WrongCloud,
    /// Azure answered 429 or a throttling code.
    AzureThrottled,
    /// Azure could not be reached, or answered with a server error.
    AzureUnreachable,
    /// Azure answered in a way the operator does not understand.
    AzureError,
    /// BrokerSynced: the broker holds the desired state.
    Synced,
    /// ObserveOnly: the broker matches the desired state.
    InSync,
    /// The broker object differs from the desired state.
    Drifted,
    /// The secret failed validation, so it was not pushed; the broker keeps its previous value.
    NotPushed,
    /// The referenced IdentityBroker or ClusterIdentityBroker does not exist.
    BrokerNotFound,
    /// The broker is of another type than the connection's broker block.
    BrokerTypeMismatch,
    /// The ClusterIdentityBroker does not allow this namespace.
    BrokerNotAllowed,
    /// The broker's management host is not in the operator's `--broker-hosts` allowlist, so
    /// nothing was sent to it.
    BrokerHostNotAllowed,
    /// The broker's own credential Secret is missing or incomplete.
    BrokerCredentialsMissing,
    /// The broker rejected the operator's management credentials.
    BrokerAuthFailed,
    /// The broker accepted the operator's management credentials, but they lack a permission the
    /// sync needs (e.g. Auth0's `read:connections_options`); the message names it.
    BrokerPermissionMissing,
    /// The broker could not be reached or answered with a server error.
    BrokerUnreachable,
    /// The broker answered 429; the operator waits as told.
    BrokerRateLimited,
    /// The broker refused the request as invalid or conflicting.
    BrokerRejected,
    /// The broker already holds an object this connection may not take over (e.g. Logto allows one
    /// Microsoft connector per tenant and another connection's is there).
    BrokerConflict,
    /// The broker cannot express a setting of the connection (e.g. a sign-in audience).
    UnsupportedSetting,
    /// SecretExpiring: the expiry date is not known.
    ExpiryUnknown,
    /// SecretExpiring: the secret expires within `expiry.warnBefore`.
    SecretExpiring,
    /// SecretExpiring: the expiry date is further away than `expiry.warnBefore`.
    SecretValid,
    /// The Secret's `idpbridge.io/expires-at` annotation is not an RFC 3339 time.
    InvalidExpiryAnnotation,
    /// Microsoft Graph refused to read the application: Application.Read.All is missing.
    GraphPermissionMissing,
    /// No client secret of the application has the held value's first three characters.
    SecretNotInApplication,
    /// Microsoft Graph could not be reached or throttled the request.
    GraphUnreachable,
    /// Microsoft Graph answered in a way the operator does not understand.
    GraphError,
    /// AzureAdClientSecret: the tenant's app management policy caps password lifetimes below
    /// `spec.lifetime`.
    PasswordLifetimePolicy,
    /// AzureAdClientSecret: the tenant's app management policy forbids new passwords.
    PasswordAdditionForbidden,
    /// AzureAdClientSecret: the application holds as many passwords as Entra ID allows.
    PasswordLimitReached,
    /// AzureAdClientSecret with `graphAuth: Self`: the Secret holds no current secret to
    /// authenticate with (put the bootstrap secret under `client-secret`).
    BootstrapSecretMissing,
    /// AzureAdClientSecret: another AzureAdClientSecret already rotates this application.
    ApplicationConflict,
    /// AzureAdClientSecret: the Secret is written by another resource (another
    /// AzureAdClientSecret, or a controller that owns it); nothing is written.
    SecretConflict,
    /// AzureAdClientSecret: the operator may not write Secrets in this namespace (with the Helm
    /// chart: list it in `rbac.clientSecretNamespaces`); no password was created.
    SecretWriteForbidden,
    /// AzureAdClientSecret, Issuing=False: the current secret is valid; the next renewal is scheduled.
    RenewalScheduled,
    /// AzureAdClientSecret, Issuing=True: a new password is being created and staged.
    Issuing,
    /// AzureAdClientSecret, Issuing=True: the staged password waits for Entra ID to accept it.
    AwaitingReplication,
    /// AzureAdClientSecret, Issuing=True: promoted; the previous password stays until every
    /// consumer has synced the new one and the overlap has passed.
    AwaitingConsumers,
    /// AzureAdClientSecret: Entra ID did not accept the new password within
    /// `spec.propagationTimeout`; it was removed and the renewal is retried later.
    ProofTimedOut,
    /// ScimSecretReady: the SCIM Secret holds the SCIM base URL and token.
    ScimSecretStored,
    /// ScimSecretReady: a Secret of that name exists that idp-bridge did not create for this
    /// connection; nothing was written to it.
    ScimSecretNotOwned,
    /// ScimSecretReady: writing the SCIM Secret failed (e.g. no permission in this namespace).
    ScimSecretWriteFailed,
    /// ScimSecretReady: no SCIM token is stored and asking Cloudflare for a new one failed.
    ScimSecretRefreshFailed,
    /// AzureAppConfigured: the app registration has what the broker needs.
    RegistrationConfigured,
    /// AzureAppConfigured: the Web platform lacks the broker's redirect URI (AADSTS50011); the
    /// message gives the exact URI to add.
    RedirectUriMissing,
    /// AzureAppConfigured: the registration's supported account types differ from
    /// `azure.signInAudience`.
    SignInAudienceMismatch,
    /// AzureAppConfigured: the registration does not ask for a delegated Microsoft Graph
    /// permission the broker's guide needs; the message names each.
    PermissionMissing,
    /// AzureAppConfigured: a delegated permission has no admin consent (AADSTS65001, or a consent
    /// prompt for every user); the message names each.
    ConsentMissing,
    /// AzureAppConfigured: the app has no enterprise application (service principal) in the tenant.
    ServicePrincipalMissing,
    /// AzureAppConfigured: the enterprise application is disabled (AADSTS7000112).
    ServicePrincipalDisabled,
    /// AzureAppConfigured: the registration could not be read or checked (a Graph permission the
    /// message names, no Graph token, Graph unavailable); Ready is not changed.
    RegistrationUnreadable,
}

/// What a status should say for one condition type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub type_: &'static str,
    pub status: Status,
    pub reason: Reason,
    pub message: String,
}

impl Desired {
    pub fn new(type_: &'static str, status: Status, reason: Reason, message: impl Into<String>) -> Self {
        Self { type_, status, reason, message: message.into() }
    }
}

/// Sets `desired` in `conditions`. Returns true when the list changed.
#[must_use]
pub fn set_condition(conditions: &mut Vec<Condition>, desired: &Desired, generation: Option<i64>, now: jiff::Timestamp) -> bool {
    let now = Time(now.round(jiff::Unit::Second).unwrap_or(now));
    match conditions.iter_mut().find(|c| c.type_ == desired.type_) {
        None => {
            conditions.push(Condition {
                type_: desired.type_.to_owned(),
                status: desired.status.as_str().to_owned(),
                reason: desired.reason.as_str().to_owned(),
                message: desired.message.clone(),
                observed_generation: generation,
                last_transition_time: now,
            });
            true
        }
        Some(existing) => {
            let mut changed = false;
            if existing.status != desired.status.as_str() {
                existing.status = desired.status.as_str().to_owned();
                existing.last_transition_time = now;
                changed = true;
            }
            if existing.reason != desired.reason.as_str() {
                existing.reason = desired.reason.as_str().to_owned();
                changed = true;
            }
            if existing.message != desired.message {
                existing.message.clone_from(&desired.message);
                changed = true;
            }
            if existing.observed_generation != generation {
                existing.observed_generation = generation;
                changed = true;
            }
            changed
        }
    }
}

pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn adds_then_reports_no_change() {
        let mut list = vec![];
        let d = Desired::new(READY, Status::True, Reason::Ready, "ok");
        assert!(set_condition(&mut list, &d, Some(1), t(10)));
        assert!(!set_condition(&mut list, &d, Some(1), t(20)));
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].last_transition_time.0, t(10));
    }

    #[test]
    fn transition_time_moves_only_on_status_flip() {
        let mut list = vec![];
        let _ = set_condition(&mut list, &Desired::new(READY, Status::False, Reason::InvalidSecret, "a"), Some(1), t(10));
        assert!(set_condition(&mut list, &Desired::new(READY, Status::False, Reason::SecretExpired, "b"), Some(1), t(20)));
        assert_eq!(list[0].last_transition_time.0, t(10));
        assert!(set_condition(&mut list, &Desired::new(READY, Status::True, Reason::Ready, "c"), Some(2), t(30)));
        assert_eq!(list[0].last_transition_time.0, t(30));
        assert_eq!(list[0].observed_generation, Some(2));
        assert_eq!(list[0].reason, "Ready");
    }

    #[test]
    fn reasons_are_unique_pascal_case() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            assert!(seen.insert(r.as_str()));
            assert!(r.as_str().chars().next().unwrap().is_ascii_uppercase());
        }
    }
}
