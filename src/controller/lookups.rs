//! Where a reconcile reads what a connection references: the run's reflector stores of brokers,
//! Namespaces and Secret metadata, instead of a GET to the API server per reconcile. Secret
//! data is not in any store (the Secret watch is metadata-only, so unrelated Secrets cost no
//! memory): it is read by GET once per resourceVersion and kept for the Secrets connections and
//! brokers actually read ([`SecretCache`]).
//!
//! A store can lag behind the API server by a watch event. Every lookup that reads a store also
//! has that store's events among the connection controller's triggers, so a reconcile that read
//! a stale entry is followed by one that reads the new one. An object the store does not hold
//! (yet) is read with a GET, so a new object is never reported missing for a store's delay.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{
    Api, Client, Resource, ResourceExt,
    core::PartialObjectMeta,
    runtime::reflector::{ObjectRef, Store},
};

use super::{error::Error, readiness::listed};
use crate::crd::{ClusterIdentityBroker, IdentityBroker};

/// The stores one connection controller reads from. Built per run (leadership term); a reconcile
/// waits until every one of them has listed, so it never reads an empty cache as "absent".
#[derive(Clone)]
pub struct Lookups {
    client: Client,
    brokers: Store<IdentityBroker>,
    cluster_brokers: Store<ClusterIdentityBroker>,
    namespaces: Store<PartialObjectMeta<Namespace>>,
    /// Secret metadata per watched scope: the namespace a store covers (None: all).
    secrets: Vec<(Option<String>, Store<PartialObjectMeta<Secret>>)>,
    cache: Arc<SecretCache>,
}

impl Lookups {
    pub fn new(
        client: Client,
        brokers: Store<IdentityBroker>,
        cluster_brokers: Store<ClusterIdentityBroker>,
        namespaces: Store<PartialObjectMeta<Namespace>>,
        secrets: Vec<(Option<String>, Store<PartialObjectMeta<Secret>>)>,
        cache: Arc<SecretCache>,
    ) -> Self {
        Self { client, brokers, cluster_brokers, namespaces, secrets, cache }
    }

    /// Resolves once every store has received its first complete list.
    pub async fn listed(&self) {
        listed(self.brokers.clone()).await;
        listed(self.cluster_brokers.clone()).await;
        listed(self.namespaces.clone()).await;
        for (_, store) in &self.secrets {
            listed(store.clone()).await;
        }
    }

    pub async fn identity_broker(&self, namespace: &str, name: &str) -> Result<Option<Arc<IdentityBroker>>, Error> {
        if let Some(found) = self.brokers.get(&ObjectRef::new(name).within(namespace)) {
            return Ok(Some(found));
        }
        let api: Api<IdentityBroker> = Api::namespaced(self.client.clone(), namespace);
        Ok(api.get_opt(name).await.map_err(Error::ReadBroker)?.map(Arc::new))
    }

    pub async fn cluster_broker(&self, name: &str) -> Result<Option<Arc<ClusterIdentityBroker>>, Error> {
        if let Some(found) = self.cluster_brokers.get(&ObjectRef::new(name)) {
            return Ok(Some(found));
        }
        let api: Api<ClusterIdentityBroker> = Api::all(self.client.clone());
        Ok(api.get_opt(name).await.map_err(Error::ReadBroker)?.map(Arc::new))
    }

    /// A namespace's labels (none for a namespace that does not exist).
    pub async fn namespace_labels(&self, namespace: &str) -> Result<BTreeMap<String, String>, Error> {
        if let Some(found) = self.namespaces.get(&ObjectRef::new(namespace)) {
            return Ok(found.labels().clone());
        }
        let api: Api<Namespace> = Api::all(self.client.clone());
        Ok(api.get_metadata_opt(namespace).await.map_err(Error::ReadNamespace)?.map(|n| n.labels().clone()).unwrap_or_default())
    }

    /// A Secret with its data: from the cache when the metadata store shows the resourceVersion
    /// it was read at, otherwise read (and cached) by GET.
    pub async fn secret(&self, namespace: &str, name: &str) -> Result<Option<Arc<Secret>>, Error> {
        let version = self.secret_version(namespace, name);
        if let Some(hit) = version.as_deref().and_then(|v| self.cache.get(namespace, name, v)) {
            return Ok(Some(hit));
        }
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let Some(mut secret) = api.get_opt(name).await.map_err(Error::ReadSecret)? else {
            self.cache.forget(namespace, name);
            return Ok(None);
        };
        secret.managed_fields_mut().clear();
        let secret = Arc::new(secret);
        self.cache.insert(namespace, name, secret.clone());
        Ok(Some(secret))
    }

    /// The resourceVersion the metadata store holds for a Secret, if a store covers its namespace
    /// and holds it.
    fn secret_version(&self, namespace: &str, name: &str) -> Option<String> {
        let (_, store) = self.secrets.iter().find(|(scope, _)| scope.as_deref().is_none_or(|s| s == namespace))?;
        store.get(&ObjectRef::new(name).within(namespace))?.resource_version()
    }
}

/// The Secrets reconciles read, with their data, each as of one resourceVersion. Only Secrets a
/// connection or broker names get here, and an entry is replaced at the next change and dropped
/// when a read finds the Secret gone, so it holds about one entry per referenced Secret.
#[derive(Default)]
pub struct SecretCache {
    entries: Mutex<HashMap<(String, String), Arc<Secret>>>,
}

impl SecretCache {
    /// The cached Secret, if it was read at `version`.
    fn get(&self, namespace: &str, name: &str, version: &str) -> Option<Arc<Secret>> {
        let entries = self.entries.lock().expect("secret cache lock");
        entries.get(&(namespace.to_owned(), name.to_owned())).filter(|s| s.meta().resource_version.as_deref() == Some(version)).cloned()
    }

    fn insert(&self, namespace: &str, name: &str, secret: Arc<Secret>) {
        self.entries.lock().expect("secret cache lock").insert((namespace.to_owned(), name.to_owned()), secret);
    }

    fn forget(&self, namespace: &str, name: &str) {
        self.entries.lock().expect("secret cache lock").remove(&(namespace.to_owned(), name.to_owned()));
    }
}
