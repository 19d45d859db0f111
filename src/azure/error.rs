//! Azure failures, classified into condition reasons.

use std::time::Duration;

use crate::{crd::conditions::Reason, upstream::TransportError};

/// Why Azure did not confirm a tenant or a secret.
#[derive(Debug, thiserror::Error)]
pub enum AzureError {
    /// An AADSTS error body. `description` is the first line of `error_description`, without the
    /// trace and correlation ids.
    #[error("AADSTS{code} ({error}): {description}")]
    Aadsts { code: u32, error: String, description: String },
    /// `retry_after` is the time left of Azure's block. It is not in the text: a message that
    /// counted down would change status at every reconcile during the block.
    #[error("Azure is throttling requests")]
    Throttled { retry_after: Option<Duration> },
    #[error("Azure is unreachable: {0}")]
    Unreachable(#[from] TransportError),
    #[error("Azure answered HTTP {status}: {snippet}")]
    Unexpected { status: u16, snippet: String },
    #[error("discovery for tenant {tenant} named issuer host {host}, which is not a {cloud} host")]
    IssuerMismatch { tenant: String, host: String, cloud: String },
}

impl AzureError {
    /// The condition reason this error stands for.
    pub fn reason(&self) -> Reason {
        match self {
            AzureError::Aadsts { code, error, .. } => match code {
                7000215 | 7000216 | 7000218 => Reason::InvalidSecret,
                7000222 => Reason::SecretExpired,
                700016 => Reason::ApplicationNotFound,
                7000112 => Reason::ApplicationDisabled,
                90002 => Reason::TenantNotFound,
                900023 | 9001023 | 50059 | 90019 => Reason::TenantInvalid,
                90038 | 900382 | 900432 | 500011 => Reason::WrongCloud,
                50196 | 90055 => Reason::AzureThrottled,
                50000 | 50033 | 90006 | 90024 | 90033 | 90090 => Reason::AzureUnreachable,
                // Microsoft asks clients to react to `error`, not the number; fall back on it.
                _ => match error.as_str() {
                    "invalid_client" => Reason::InvalidSecret,
                    "invalid_tenant" => Reason::TenantNotFound,
                    "unauthorized_client" => Reason::ApplicationNotFound,
                    "temporarily_unavailable" => Reason::AzureUnreachable,
                    _ => Reason::AzureError,
                },
            },
            AzureError::Throttled { .. } => Reason::AzureThrottled,
            AzureError::Unreachable(_) => Reason::AzureUnreachable,
            AzureError::Unexpected { status, .. } if *status >= 500 => Reason::AzureUnreachable,
            AzureError::Unexpected { .. } => Reason::AzureError,
            AzureError::IssuerMismatch { .. } => Reason::WrongCloud,
        }
    }

    /// Transient errors are retried with backoff; permanent ones wait for a change or the next
    /// refresh, so a wrong secret never causes a retry storm.
    pub fn is_transient(&self) -> bool {
        matches!(self.reason(), Reason::AzureThrottled | Reason::AzureUnreachable)
    }

    /// How long Azure asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            AzureError::Throttled { retry_after } => *retry_after,
            _ => None,
        }
    }

    /// A sentence for the condition message: what happened and what to do.
    pub fn advice(&self) -> String {
        let what_to_do = match self.reason() {
            Reason::InvalidSecret => {
                "Azure rejected the client secret. Check that the Secret holds the secret's Value (shown once when it was created), not its Secret ID."
            }
            Reason::SecretExpired => {
                "The client secret has expired. Create a new secret for the application in Entra ID and put its value in the Secret."
            }
            Reason::ApplicationNotFound => {
                "No application with this client ID exists in the tenant. Check azure.clientId and azure.tenant, and for a multi-tenant app that it has a service principal in the tenant."
            }
            Reason::ApplicationDisabled => "The application or its service principal is disabled in the tenant.",
            Reason::TenantNotFound => "The tenant was not found in this cloud. Check azure.tenant and azure.cloud.",
            Reason::TenantInvalid => "The tenant identifier is not a valid tenant ID or domain.",
            Reason::WrongCloud => "The tenant belongs to another national cloud. Check azure.cloud.",
            Reason::AzureThrottled => "Azure is throttling requests; the operator retries after the requested delay.",
            Reason::AzureUnreachable => "Azure could not be reached; the operator retries with backoff.",
            _ => "Azure gave an unexpected answer.",
        };
        format!("{what_to_do} ({self})")
    }
}
