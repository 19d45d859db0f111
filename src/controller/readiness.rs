//! Whether the controllers' caches have synced: the `/readyz` answer of a leader (or of a process
//! without leader election). Every store of a run counts — the connections, both broker kinds and
//! the Secrets, in every watched scope — and the answer goes back to "no" when the run ends
//! (shutdown, or leadership lost), so a replica that leads again is not ready on stale caches.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::{FutureExt, future::BoxFuture};
use kube::{Resource, runtime::reflector::Store};

/// Shared between the controllers (which set it) and the HTTP endpoints (which read it).
#[derive(Clone, Default)]
pub struct Readiness {
    synced: Arc<AtomicBool>,
}

/// The stores of one run, collected while its controllers are built.
#[derive(Default)]
pub struct Stores {
    listed: Vec<BoxFuture<'static, ()>>,
}

impl Stores {
    pub fn add<K>(&mut self, store: Store<K>)
    where
        K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    {
        self.listed.push(listed(store).boxed());
    }
}

/// Resolves once `store` has received its first complete list. Polled again every second: a
/// store's readiness signal wakes only its latest waiter, and the controller waits on its own.
pub(super) async fn listed<K: Resource<DynamicType = ()> + Clone + 'static>(store: Store<K>) {
    while tokio::time::timeout(Duration::from_secs(1), store.wait_until_ready()).await.is_err() {}
}

/// Sets readiness back to false when dropped: however a run ends (returns, or is aborted).
struct ResetOnDrop(Arc<AtomicBool>);

impl Drop for ResetOnDrop {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl Readiness {
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::SeqCst)
    }

    /// Tracks one run: ready once every store in `stores` has listed, not ready again as soon as
    /// this future is dropped. It never resolves; run it alongside the controllers.
    pub async fn track(&self, stores: Stores) {
        self.synced.store(false, Ordering::SeqCst);
        let _reset = ResetOnDrop(self.synced.clone());
        futures::future::join_all(stores.listed).await;
        self.synced.store(true, Ordering::SeqCst);
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    use kube::runtime::{reflector, watcher};

    /// Lets the tracking task run until it waits again.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn ready_only_once_every_store_has_listed() {
        let readiness = Readiness::default();
        let (secrets, mut secrets_writer) = reflector::store::<Secret>();
        let (maps, mut maps_writer) = reflector::store::<ConfigMap>();
        let mut stores = Stores::default();
        stores.add(secrets);
        stores.add(maps);
        let run = tokio::spawn({
            let readiness = readiness.clone();
            async move { readiness.track(stores).await }
        });
        settle().await;
        assert!(!readiness.is_synced());
        secrets_writer.apply_watcher_event(&watcher::Event::Init);
        secrets_writer.apply_watcher_event(&watcher::Event::InitDone);
        settle().await;
        assert!(!readiness.is_synced(), "one store of two has listed");
        maps_writer.apply_watcher_event(&watcher::Event::Init);
        maps_writer.apply_watcher_event(&watcher::Event::InitDone);
        // The second store is noticed at the latest on the next one-second poll.
        tokio::time::timeout(Duration::from_secs(3), async {
            while !readiness.is_synced() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("ready once both stores listed");
        run.abort();
        let _ = run.await;
    }

    #[tokio::test]
    async fn a_run_that_ends_is_not_ready_any_more() {
        let readiness = Readiness::default();
        let (secrets, mut writer) = reflector::store::<Secret>();
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitDone);
        let mut stores = Stores::default();
        stores.add(secrets.clone());
        // As in a leader's term: the run is dropped when leadership is lost.
        let term = tokio::spawn({
            let readiness = readiness.clone();
            async move { readiness.track(stores).await }
        });
        tokio::time::timeout(Duration::from_secs(3), async {
            while !readiness.is_synced() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("ready while leading");
        term.abort();
        let _ = term.await;
        assert!(!readiness.is_synced(), "leadership lost: not ready");

        // The next term starts unready, even though its stores may list quickly.
        let (fresh, _writer) = reflector::store::<Secret>();
        let mut stores = Stores::default();
        stores.add(fresh);
        let next = tokio::spawn({
            let readiness = readiness.clone();
            async move { readiness.track(stores).await }
        });
        settle().await;
        assert!(!readiness.is_synced(), "a new term waits for its own stores");
        next.abort();
    }

    #[tokio::test]
    async fn a_run_without_stores_is_ready_at_once() {
        let readiness = Readiness::default();
        let run = tokio::spawn({
            let readiness = readiness.clone();
            async move { readiness.track(Stores::default()).await }
        });
        settle().await;
        assert!(readiness.is_synced());
        run.abort();
    }
}
