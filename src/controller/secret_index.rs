//! Which connections name a Secret (as their client secret or their Cloudflare SCIM Secret),
//! kept from the connection watch's events. A Secret event (and the cluster may hold thousands of
//! Secrets no connection reads) then costs one map lookup instead of a scan of every connection.
//!
//! It follows the watch the way the reflector store does: applies and deletions as they come, and
//! a re-list (after a lost watch) replaces the whole index at its end, so a connection deleted
//! while the watch was down leaves no entry behind. Its answers are candidates: the mapper checks
//! each against the store, so an entry that is briefly stale never triggers a wrong reconcile.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
};

use kube::{
    ResourceExt,
    runtime::{reflector::ObjectRef, watcher},
};

use super::scim;
use crate::crd::connection::AzureAdConnection;

type SecretKey = (String, String);
type ConnectionRef = ObjectRef<AzureAdConnection>;

#[derive(Default)]
pub struct SecretIndex {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_secret: HashMap<SecretKey, HashSet<ConnectionRef>>,
    by_connection: HashMap<ConnectionRef, Vec<SecretKey>>,
    /// During a re-list: the connections listed so far.
    relisted: Option<HashSet<ConnectionRef>>,
}

impl SecretIndex {
    /// Follows one event of the connection watch.
    pub fn apply(&self, event: &watcher::Event<AzureAdConnection>) {
        let mut inner = self.inner.lock().expect("secret index lock");
        match event {
            watcher::Event::Apply(conn) => inner.set(conn),
            watcher::Event::Delete(conn) => inner.remove(&ObjectRef::from_obj(conn)),
            watcher::Event::Init => inner.relisted = Some(HashSet::new()),
            watcher::Event::InitApply(conn) => {
                inner.set(conn);
                if let Some(listed) = inner.relisted.as_mut() {
                    listed.insert(ObjectRef::from_obj(conn));
                }
            }
            watcher::Event::InitDone => {
                let listed = inner.relisted.take().unwrap_or_default();
                let gone: Vec<_> = inner.by_connection.keys().filter(|c| !listed.contains(*c)).cloned().collect();
                for conn in gone {
                    inner.remove(&conn);
                }
            }
        }
    }

    /// The connections that named the Secret `namespace/name` when last seen.
    pub fn naming(&self, namespace: &str, name: &str) -> Vec<ConnectionRef> {
        let inner = self.inner.lock().expect("secret index lock");
        inner.by_secret.get(&(namespace.to_owned(), name.to_owned())).map(|c| c.iter().cloned().collect()).unwrap_or_default()
    }
}

impl Inner {
    fn set(&mut self, conn: &AzureAdConnection) {
        let reference = ObjectRef::from_obj(conn);
        self.remove(&reference);
        let namespace = conn.namespace().unwrap_or_default();
        let mut keys: Vec<SecretKey> = [Some(conn.spec.azure.client_secret_ref.name.as_str()), scim::secret_name(conn)]
            .into_iter()
            .flatten()
            .map(|name| (namespace.clone(), name.to_owned()))
            .collect();
        keys.dedup();
        for key in &keys {
            self.by_secret.entry(key.clone()).or_default().insert(reference.clone());
        }
        self.by_connection.insert(reference, keys);
    }

    fn remove(&mut self, reference: &ConnectionRef) {
        for key in self.by_connection.remove(reference).unwrap_or_default() {
            if let Some(set) = self.by_secret.get_mut(&key) {
                set.remove(reference);
                if set.is_empty() {
                    self.by_secret.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(name: &str, secret: &str) -> AzureAdConnection {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "idpbridge.io/v1alpha1", "kind": "AzureAdConnection",
            "metadata": {"name": name, "namespace": "app"},
            "spec": {
                "brokerRef": {"name": "auth0"},
                "azure": {"tenant": "contoso.onmicrosoft.com", "clientId": "11111111-2222-3333-4444-555555555555", "clientSecretRef": {"name": secret}},
                "auth0": {"name": "contoso"},
            }
        }))
        .unwrap()
    }

    fn names(index: &SecretIndex, secret: &str) -> Vec<String> {
        let mut found: Vec<_> = index.naming("app", secret).into_iter().map(|r| r.name).collect();
        found.sort();
        found
    }

    #[test]
    fn follows_applies_edits_and_deletions() {
        let index = SecretIndex::default();
        index.apply(&watcher::Event::Apply(conn("web", "shared")));
        index.apply(&watcher::Event::Apply(conn("api", "shared")));
        assert_eq!(names(&index, "shared"), ["api", "web"]);
        assert!(index.naming("other-namespace", "shared").is_empty(), "a namespace of its own");
        index.apply(&watcher::Event::Apply(conn("web", "web-secret")));
        assert_eq!(names(&index, "shared"), ["api"], "an edited reference leaves the old Secret");
        assert_eq!(names(&index, "web-secret"), ["web"]);
        index.apply(&watcher::Event::Delete(conn("api", "shared")));
        assert!(names(&index, "shared").is_empty());
    }

    #[test]
    fn a_relist_drops_connections_deleted_meanwhile() {
        let index = SecretIndex::default();
        index.apply(&watcher::Event::Apply(conn("web", "web-secret")));
        index.apply(&watcher::Event::Apply(conn("gone", "gone-secret")));
        index.apply(&watcher::Event::Init);
        index.apply(&watcher::Event::InitApply(conn("web", "web-secret")));
        assert_eq!(names(&index, "gone-secret"), ["gone"], "kept until the list is complete, like the store");
        index.apply(&watcher::Event::InitDone);
        assert!(names(&index, "gone-secret").is_empty());
        assert_eq!(names(&index, "web-secret"), ["web"]);
    }
}
