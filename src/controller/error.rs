//! Reconcile errors: Kubernetes API failures, which are always retried with backoff. Problems a
//! user must fix are not errors; they become conditions.

use kube::runtime::finalizer;

use crate::broker::BrokerError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading a Secret: {0}")]
    ReadSecret(#[source] kube::Error),
    #[error("reading a broker: {0}")]
    ReadBroker(#[source] kube::Error),
    #[error("writing status: {0}")]
    WriteStatus(#[source] kube::Error),
    #[error("writing the SCIM Secret: {0}")]
    WriteScimSecret(#[source] kube::Error),
    #[error("deleting the broker object: {0}")]
    Cleanup(#[source] BrokerError),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
}

impl Error {
    /// A short label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Error::ReadSecret(_) => "read_secret",
            Error::ReadBroker(_) => "read_broker",
            Error::WriteStatus(_) => "write_status",
            Error::WriteScimSecret(_) => "write_scim_secret",
            Error::Cleanup(_) => "cleanup",
            Error::Finalizer(_) => "finalizer",
        }
    }
}
