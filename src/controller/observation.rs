//! What one reconcile learned, as plain data: the input of the pure status computation.

use std::time::Duration;

use crate::{
    azure::{AzureError, Validation},
    broker::{BrokerError, SyncOutcome},
    crd::{
        conditions::{Desired, Reason, Status},
        connection::SecretStatus,
    },
    registration::Report,
};

/// A problem found in Kubernetes objects the connection references, with its condition reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub reason: Reason,
    pub message: String,
}

impl Problem {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self { reason, message: message.into() }
    }
}

/// The expiry facts known for the held secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expiry {
    /// Expiry tracking is off (`expiry.source: None`).
    Disabled,
    /// No source knew the date.
    Unknown(String),
    /// The source answered with an error the user must fix (e.g. a malformed annotation).
    Invalid(Problem),
    Known {
        expires_at: jiff::Timestamp,
        source: &'static str,
        key_id: Option<String>,
        /// Anything the user should know about how the date was found.
        note: Option<String>,
    },
    /// The source could not be asked now (Azure or Graph down or throttling): this says nothing
    /// about the date, so the last known one stands ([`Expiry::or_last_known`]).
    Unavailable(String),
}

/// The sources a stored expiry can name (`status.secret.expirySource`).
const SOURCES: [&str; 2] = ["Graph", "Annotation"];

impl Expiry {
    /// An `Unavailable` expiry replaced by the last known one in `previous` (status), with its
    /// source and key id, so an outage neither resolves expiry alerts nor fires them again; with
    /// none known, `Unknown`. Any other expiry is a fresh answer and stands as it is.
    pub fn or_last_known(self, previous: Option<&SecretStatus>) -> Expiry {
        let Expiry::Unavailable(why) = self else { return self };
        let last = previous.and_then(|s| {
            let source = SOURCES.into_iter().find(|known| s.expiry_source.as_deref() == Some(known))?;
            Some((s.expires_at.as_ref()?.0, source, s.key_id.clone()))
        });
        match last {
            Some((expires_at, source, key_id)) => {
                Expiry::Known { expires_at, source, key_id, note: Some(format!("the last date read; {source} cannot be asked now")) }
            }
            None => Expiry::Unknown(why),
        }
    }
}

/// The broker stage's result.
#[derive(Debug)]
pub enum BrokerStage {
    /// Not attempted because the credentials failed; the broker keeps its previous value.
    NotAttempted,
    /// The broker reference could not be resolved.
    Unresolved(Problem),
    Synced(SyncOutcome),
    Failed(BrokerError),
}

/// Everything `status::compute` needs about one reconcile.
#[derive(Debug)]
pub struct Observation {
    /// Keyed fingerprint of the secret value, when it was read.
    pub fingerprint: Option<String>,
    /// The Secret problem, or the Azure validation result (None when the secret was unusable).
    pub credentials: Result<Validation, CredentialsFailure>,
    pub expiry: Expiry,
    pub broker: BrokerStage,
    pub scim: ScimStage,
    pub observe_only: bool,
    /// The app registration check (AzureAppConfigured).
    pub app: AppCheck,
}

/// The app registration stage's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppCheck {
    /// The registration was compared with what the broker needs.
    Checked {
        report: Report,
        /// The redirect URI `azure.registration: Manage` added in this reconcile.
        added_redirect_uri: Option<String>,
        /// Why Manage could not add the missing redirect URI.
        manage_failed: Option<String>,
    },
    /// It could not be read or checked (a Graph permission, no token): Unknown, Ready unchanged.
    Unreadable(String),
    /// Graph is down or throttling: the last verdict stands; look again after `retry_after`.
    Unavailable { why: String, retry_after: Option<Duration> },
}

/// The SCIM stage's result (Cloudflare with `scim.enabled` only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScimStage {
    /// SCIM is not enabled: no ScimSecretReady condition.
    Off,
    /// Not looked at this time (the sync did not succeed, or ObserveOnly): the condition stays.
    Skipped,
    /// What ScimSecretReady says now, and whether Cloudflare issued a new SCIM token for it.
    Checked { condition: Desired, regenerated: bool },
}

impl ScimStage {
    /// A failure worth retrying soon: the token waits in memory, or a refresh failed.
    pub fn failed(&self) -> bool {
        matches!(self, ScimStage::Checked { condition, .. } if condition.status != Status::True && condition.reason != Reason::ScimSecretNotOwned)
    }
}

/// Why the credentials are not usable.
#[derive(Debug)]
pub enum CredentialsFailure {
    Secret(Problem),
    Azure(AzureError),
}

impl CredentialsFailure {
    pub fn reason(&self) -> Reason {
        match self {
            CredentialsFailure::Secret(p) => p.reason,
            CredentialsFailure::Azure(e) => e.reason(),
        }
    }

    pub fn message(&self) -> String {
        match self {
            CredentialsFailure::Secret(p) => p.message.clone(),
            CredentialsFailure::Azure(e) => e.advice(),
        }
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, CredentialsFailure::Azure(e) if e.is_transient())
    }
}
