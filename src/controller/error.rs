//! Reconcile errors: Kubernetes API failures, which are always retried with backoff, and a
//! broker that keeps refusing a deletion. Problems a user must fix are not errors; they become
//! conditions.

use kube::runtime::finalizer;

use crate::broker::BrokerError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading a Secret: {0}")]
    ReadSecret(#[source] kube::Error),
    #[error("reading a broker: {0}")]
    ReadBroker(#[source] kube::Error),
    #[error("reading the connection's Namespace: {0}")]
    ReadNamespace(#[source] kube::Error),
    #[error("writing status: {0}")]
    WriteStatus(#[source] kube::Error),
    #[error("reading or writing a claim on a broker object: {0}")]
    Claim(#[source] kube::Error),
    #[error("reading the AzureAdClientSecret: {0}")]
    ReadClientSecret(#[source] kube::Error),
    #[error("writing the rotated client-secret Secret: {0}")]
    WriteClientSecret(#[source] kube::Error),
    #[error("deleting the broker object: {0}")]
    Cleanup(#[source] BrokerError),
    #[error("adding the finalizer: {0}")]
    AddFinalizer(#[source] kube::Error),
    #[error("removing the finalizer: {0}")]
    RemoveFinalizer(#[source] kube::Error),
    /// Adding or removing the in-use finalizer of a broker or its credential Secret.
    #[error("writing the in-use finalizer: {0}")]
    Protect(#[source] kube::Error),
    /// The finalizer helper could not patch the object at all (no name, a bad JSON pointer):
    /// a bug, not a cluster condition.
    #[error("finalizer: {0}")]
    Finalizer(String),
    /// The reconcile ran out of its deadline (`--reconcile-timeout`): an endpoint too slow or
    /// hostile. The text is stable: it ends up in conditions and logs, where a changing number
    /// would only add noise.
    #[error("the reconcile did not finish within its deadline (--reconcile-timeout); an endpoint is too slow")]
    DeadlineExceeded,
    /// A bug hit by this object; the payload is deliberately not kept (it could carry a secret).
    #[error("the reconcile panicked (a bug); see the operator's log")]
    Panicked,
}

impl Error {
    /// A short label naming the cause, for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Error::ReadSecret(_) => "read_secret",
            Error::ReadBroker(_) => "read_broker",
            Error::ReadNamespace(_) => "read_namespace",
            Error::WriteStatus(_) => "write_status",
            Error::Claim(_) => "claim",
            Error::ReadClientSecret(_) => "read_client_secret",
            Error::WriteClientSecret(_) => "write_client_secret",
            Error::Cleanup(_) => "cleanup",
            Error::AddFinalizer(_) => "add_finalizer",
            Error::RemoveFinalizer(_) => "remove_finalizer",
            Error::Protect(_) => "protect",
            Error::Finalizer(_) => "finalizer",
            Error::DeadlineExceeded => "deadline",
            Error::Panicked => "panic",
        }
    }
}

/// The finalizer helper wraps whatever the apply or cleanup branch returned: unwrap it, so the
/// log and its `kind` name the real cause rather than "finalizer".
impl From<finalizer::Error<Error>> for Error {
    fn from(error: finalizer::Error<Error>) -> Self {
        match error {
            finalizer::Error::ApplyFailed(inner) | finalizer::Error::CleanupFailed(inner) => inner,
            finalizer::Error::AddFinalizer(e) => Error::AddFinalizer(e),
            finalizer::Error::RemoveFinalizer(e) => Error::RemoveFinalizer(e),
            other => Error::Finalizer(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error() -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status::failure("etcd is slow", "InternalError").with_code(500)))
    }

    #[test]
    fn finalizer_errors_flatten_to_their_cause() {
        let flat = |e: finalizer::Error<Error>| Error::from(e).label();
        assert_eq!(flat(finalizer::Error::ApplyFailed(Error::ReadSecret(api_error()))), "read_secret");
        assert_eq!(flat(finalizer::Error::ApplyFailed(Error::WriteStatus(api_error()))), "write_status");
        assert_eq!(flat(finalizer::Error::CleanupFailed(Error::Cleanup(BrokerError::NotFound))), "cleanup");
        assert_eq!(flat(finalizer::Error::CleanupFailed(Error::ReadBroker(api_error()))), "read_broker");
        assert_eq!(flat(finalizer::Error::AddFinalizer(api_error())), "add_finalizer");
        assert_eq!(flat(finalizer::Error::RemoveFinalizer(api_error())), "remove_finalizer");
        assert_eq!(flat(finalizer::Error::UnnamedObject), "finalizer");
    }

    #[test]
    fn a_flattened_error_keeps_its_message() {
        let error = Error::from(finalizer::Error::ApplyFailed(Error::WriteStatus(api_error())));
        assert_eq!(error.label(), "write_status");
        assert!(error.to_string().starts_with("writing status: "), "{error}");
        assert!(error.to_string().contains("etcd is slow"), "{error}");
    }
}
