//! One watch per kind and scope, shared by every controller of a run that needs it: its objects
//! are decoded once and kept once (one store), and each consumer gets its own stream of the
//! objects the watch touched (applied, listed or deleted), after the store has applied them.
//!
//! kube-runtime's shared streams (`reflector::store_shared`) announce applied objects only, not
//! deleted ones, which triggers here need (a deleted Secret or broker must reach its
//! connections), so the fan-out is this module's: a channel per consumer carrying the stored
//! `Arc`s. The consumers are controllers, which drain their triggers as they come, so a queue
//! holds at most one listing's worth of pointers to objects the store already keeps.

use std::{collections::BTreeMap, fmt::Debug, sync::Arc};

use futures::{
    FutureExt, Stream, StreamExt, TryStreamExt,
    channel::mpsc::{self, UnboundedSender},
    future::{self, BoxFuture},
    stream::BoxStream,
};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client, Resource, ResourceExt,
    core::PartialObjectMeta,
    runtime::{
        WatchStreamExt,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tracing::warn;

use super::readiness::Stores;

/// What a shared watch can hold.
pub(crate) trait Watched: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static {}
impl<K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static> Watched for K {}

/// One watch of `K`: its store, and the consumers its touched objects go to.
pub(crate) struct SharedWatch<K: Watched> {
    store: Store<K>,
    consumers: Vec<UnboundedSender<Arc<K>>>,
    touched: BoxStream<'static, Result<K, watcher::Error>>,
}

impl<K: Watched> SharedWatch<K> {
    /// A watch of `api`, its store registered with `stores` for readiness.
    pub fn new(api: Api<K>, config: watcher::Config, stores: &mut Stores) -> Self {
        Self::observed(api, config, stores, |_| {})
    }

    /// [`new`](Self::new), with every watch event (deletions and re-lists included) shown to
    /// `observe` once the store has applied it. Managed fields are dropped before they are
    /// stored: nothing reads them, and with every Secret's metadata kept they would dominate.
    pub fn observed(
        api: Api<K>,
        config: watcher::Config,
        stores: &mut Stores,
        observe: impl Fn(&watcher::Event<K>) + Send + 'static,
    ) -> Self {
        let watch = watcher(api, config).default_backoff().modify(|o| o.managed_fields_mut().clear());
        let shared = Self::over(watch, observe);
        stores.add(shared.store());
        shared
    }

    /// The shared watch of a stream of watch events.
    fn over(
        events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
        observe: impl Fn(&watcher::Event<K>) + Send + 'static,
    ) -> Self {
        let (store, writer) = reflector::store();
        let touched = events.reflect(writer).inspect_ok(move |event| observe(event)).touched_objects().boxed();
        Self { store, consumers: Vec::new(), touched }
    }

    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// The objects this watch touches from now on (the first listing included), for one trigger.
    pub fn subscribe(&mut self) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static + use<K> {
        let (sender, receiver) = mpsc::unbounded();
        self.consumers.push(sender);
        receiver.map(|object: Arc<K>| Ok(K::clone(&object)))
    }

    /// Drives the watch; it ends only with its API server stream (errors are retried with
    /// backoff), and a consumer gone (its controller stopped) is skipped.
    pub fn run(self) -> BoxFuture<'static, ()> {
        let Self { store, consumers, touched } = self;
        touched
            .for_each(move |touched| {
                match touched {
                    Ok(object) => {
                        // The store's own copy: a deleted object is no longer there.
                        let shared = store.get(&ObjectRef::from_obj(&object)).unwrap_or_else(|| Arc::new(object));
                        for consumer in &consumers {
                            let _ = consumer.unbounded_send(shared.clone());
                        }
                    }
                    Err(error) => warn!(error = %error, kind = %K::kind(&()), "watch failed; retrying with backoff"),
                }
                future::ready(())
            })
            .boxed()
    }
}

/// The Secret metadata watches of a run, by the namespace each covers (None: all of them). A
/// watch of every namespace serves every namespace, so a run that has one has no other.
pub(crate) struct SecretWatches {
    client: Client,
    by_scope: BTreeMap<Option<String>, SharedWatch<PartialObjectMeta<Secret>>>,
}

impl SecretWatches {
    pub fn new(client: Client) -> Self {
        Self { client, by_scope: BTreeMap::new() }
    }

    /// The watch that covers `namespace` (None: all), started on first use.
    pub fn covering(&mut self, namespace: Option<&str>, stores: &mut Stores) -> &mut SharedWatch<PartialObjectMeta<Secret>> {
        let scope = if self.by_scope.contains_key(&None) { None } else { namespace.map(str::to_owned) };
        let client = &self.client;
        self.by_scope
            .entry(scope)
            .or_insert_with_key(|scope| SharedWatch::new(super::scoped(client, scope.as_deref()), watcher::Config::default(), stores))
    }

    pub fn run(self) -> impl Future<Output = ()> + use<> {
        future::join_all(self.by_scope.into_values().map(SharedWatch::run)).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use futures::stream;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;

    use super::*;

    fn map(name: &str, version: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                resource_version: Some(version.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn versions(seen: &[ConfigMap]) -> Vec<String> {
        seen.iter()
            .map(|m| {
                format!("{}@{}", m.metadata.name.as_deref().unwrap_or_default(), m.metadata.resource_version.as_deref().unwrap_or_default())
            })
            .collect()
    }

    #[tokio::test]
    async fn every_consumer_sees_every_touched_object_deletions_included_and_the_store_is_one() {
        use watcher::Event::{Apply, Delete, Init, InitApply, InitDone};
        let events = [Init, InitApply(map("a", "1")), InitApply(map("b", "1")), InitDone, Apply(map("a", "2")), Delete(map("b", "1"))];
        let observed = Arc::new(std::sync::Mutex::new(0));
        let counted = observed.clone();
        let mut shared = SharedWatch::over(stream::iter(events.map(Ok)), move |_| *counted.lock().unwrap() += 1);
        let (first, second) = (shared.subscribe(), shared.subscribe());
        let store = shared.store();
        shared.run().await;
        let first: Vec<ConfigMap> = first.try_collect().await.expect("no errors");
        let second: Vec<ConfigMap> = second.try_collect().await.expect("no errors");
        assert_eq!(versions(&first), ["a@1", "b@1", "a@2", "b@1"], "listed, applied and deleted objects, in order");
        assert_eq!(versions(&first), versions(&second), "each consumer gets all of them");
        assert_eq!(*observed.lock().unwrap(), 6, "the observer sees every event, the re-list's markers included");
        assert_eq!(
            versions(&store.state().iter().map(|m| ConfigMap::clone(m)).collect::<Vec<_>>()),
            ["a@2"],
            "one store, as the watch left it"
        );
    }

    #[tokio::test]
    async fn a_consumer_that_stopped_does_not_stop_the_others() {
        let events = [watcher::Event::Apply(map("a", "1")), watcher::Event::Apply(map("a", "2"))];
        let mut shared = SharedWatch::over(stream::iter(events.map(Ok)), |_| {});
        drop(shared.subscribe());
        let kept = shared.subscribe();
        shared.run().await;
        let kept: Vec<ConfigMap> = kept.try_collect().await.expect("no errors");
        assert_eq!(versions(&kept), ["a@1", "a@2"]);
    }
}
