//! What one reconcile learned, as plain data: the input of the pure status computation.

use crate::{
    azure::{AzureError, Validation},
    broker::{BrokerError, SyncOutcome},
    crd::conditions::Reason,
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
    pub observe_only: bool,
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
