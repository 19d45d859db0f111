//! Pausing an emulator: requests that arrive while it is paused wait (already logged) until it
//! resumes, so a test can hold a request in flight and act meanwhile.

use std::sync::Arc;

use tokio::sync::watch;

/// The shared gate of one emulator; clones share it. Open at start.
#[derive(Clone)]
pub struct Gate {
    inner: Arc<Inner>,
}

struct Inner {
    open: watch::Sender<bool>,
    held: watch::Sender<usize>,
}

impl Default for Gate {
    fn default() -> Self {
        Self { inner: Arc::new(Inner { open: watch::Sender::new(true), held: watch::Sender::new(0) }) }
    }
}

impl Gate {
    /// Requests arriving from now on wait until [`resume`](Self::resume).
    pub fn pause(&self) {
        self.inner.open.send_replace(false);
    }

    /// Lets held requests and new ones through.
    pub fn resume(&self) {
        self.inner.open.send_replace(true);
    }

    pub fn is_paused(&self) -> bool {
        !*self.inner.open.borrow()
    }

    /// Requests waiting at the gate now.
    pub fn held(&self) -> usize {
        *self.inner.held.borrow()
    }

    /// Waits until at least `n` requests are held (wrap it in a timeout).
    pub async fn wait_held(&self, n: usize) {
        let mut held = self.inner.held.subscribe();
        // The sender lives in `self`, so the channel cannot close while this waits.
        let _ = held.wait_for(|held| *held >= n).await;
    }

    /// Returns once the gate is open; counts the caller as held meanwhile.
    pub(super) async fn pass(&self) {
        let mut open = self.inner.open.subscribe();
        if *open.borrow_and_update() {
            return;
        }
        let _held = Held::new(&self.inner.held);
        let _ = open.wait_for(|open| *open).await;
    }
}

/// One held request; uncounted when dropped, also when the client gives up and the request's
/// future is dropped at the gate.
struct Held<'a>(&'a watch::Sender<usize>);

impl<'a> Held<'a> {
    fn new(count: &'a watch::Sender<usize>) -> Self {
        count.send_modify(|n| *n += 1);
        Self(count)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_paused_gate_holds_requests_until_resumed() {
        let gate = Gate::default();
        gate.pass().await;
        gate.pause();
        assert!(gate.is_paused());
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move { gate.pass().await }
        });
        tokio::time::timeout(Duration::from_secs(5), gate.wait_held(1)).await.expect("the request is held");
        assert_eq!(gate.held(), 1);
        assert!(!waiting.is_finished());
        gate.resume();
        tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("released").unwrap();
        assert_eq!(gate.held(), 0);
    }

    #[tokio::test]
    async fn a_request_given_up_at_the_gate_is_no_longer_held() {
        let gate = Gate::default();
        gate.pause();
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move { gate.pass().await }
        });
        tokio::time::timeout(Duration::from_secs(5), gate.wait_held(1)).await.unwrap();
        waiting.abort();
        let _ = waiting.await;
        assert_eq!(gate.held(), 0);
    }
}
