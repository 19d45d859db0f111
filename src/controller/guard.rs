//! Every reconcile (connections and brokers) runs under a deadline and with its panics
//! contained: a slow or hostile endpoint cannot hold a concurrency slot for longer than the
//! deadline, and a bug hit by one object fails that object's reconcile, not the process. Both
//! become transient errors, retried with backoff by the controller's error policy.

use std::{panic::AssertUnwindSafe, time::Duration};

use futures::FutureExt;
use kube::runtime::controller::Action;
use tracing::error;

use super::Error;

/// Runs `work` for at most `deadline`, turning a panic inside it into [`Error::Panicked`] and
/// an overrun into [`Error::DeadlineExceeded`]. A panic's payload is not logged: it can carry
/// any string the panicking code formatted, a secret included.
pub(crate) async fn guarded<F>(deadline: Duration, work: F) -> Result<Action, Error>
where
    F: Future<Output = Result<Action, Error>>,
{
    // AssertUnwindSafe: after a panic, the future is dropped and nothing it borrowed is read
    // again by this reconcile; shared state (caches, backoff) is behind locks that recover.
    match tokio::time::timeout(deadline, AssertUnwindSafe(work).catch_unwind()).await {
        Ok(Ok(result)) => result,
        Ok(Err(_payload)) => {
            error!("the reconcile panicked; it is retried with backoff");
            Err(Error::Panicked)
        }
        Err(_elapsed) => Err(Error::DeadlineExceeded),
    }
}

#[cfg(test)]
mod tests {
    use futures::future;

    use super::*;

    const DEADLINE: Duration = Duration::from_secs(120);

    #[tokio::test]
    async fn a_finished_reconcile_passes_through() {
        let action = guarded(DEADLINE, async { Ok(Action::await_change()) }).await.unwrap();
        assert_eq!(action, Action::await_change());
        let error = guarded(DEADLINE, async { Err(Error::Finalizer("broken".into())) }).await.unwrap_err();
        assert_eq!(error.label(), "finalizer");
    }

    #[tokio::test]
    async fn a_panic_becomes_an_error_without_its_payload() {
        let error = guarded(DEADLINE, async { panic!("client secret s3cr3t-value leaked") }).await.unwrap_err();
        assert_eq!(error.label(), "panic");
        assert!(!error.to_string().contains("s3cr3t"), "{error}");
    }

    #[tokio::test]
    async fn a_panic_after_an_await_is_contained_too() {
        let error = guarded(DEADLINE, async {
            tokio::task::yield_now().await;
            let values: Vec<u8> = Vec::new();
            Ok(Action::requeue(Duration::from_secs(u64::from(values[3]))))
        })
        .await
        .unwrap_err();
        assert_eq!(error.label(), "panic");
    }

    #[tokio::test(start_paused = true)]
    async fn a_reconcile_that_never_ends_is_cut_at_the_deadline() {
        let started = tokio::time::Instant::now();
        let error = guarded(DEADLINE, future::pending()).await.unwrap_err();
        assert_eq!(error.label(), "deadline");
        assert_eq!(started.elapsed(), DEADLINE);
        assert!(!error.to_string().chars().any(|c| c.is_ascii_digit()), "stable text: {error}");
    }

    #[test]
    fn no_profile_aborts_on_panic() {
        // `panic = "abort"` would end the process before `catch_unwind` sees the panic.
        let manifest: String = include_str!("../../Cargo.toml").chars().filter(|c| !c.is_whitespace()).collect();
        assert!(!manifest.contains("panic=\"abort\""), "a Cargo profile sets panic = \"abort\"");
    }
}
