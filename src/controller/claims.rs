//! The operator's claims on broker objects whose API has no field for an owner marker
//! (Cloudflare, Logto, Unified.to; see [`crate::broker::ownership`]).
//!
//! One ConfigMap per broker object, in the operator's namespace (where tenants have no rights),
//! named `idp-bridge-claims-<hash>` after the broker account and the object's key there (see
//! `BrokerClient::claim_key`). It holds the owner marker of the connection that claimed it, and
//! once known the object's id, or that a create is under way. Taking a claim is a create: the
//! API server lets exactly one through, so the older claim keeps the object and every later one
//! finds it held (an HTTP 409, then a read). A claim stays while its object does, like the
//! marker Auth0 keeps in the object itself: a connection deleted with `deletionPolicy: Orphan`
//! and created again under the same namespace and name finds its object again. It goes with the
//! object (`deletionPolicy: Delete`), and a renamed object's old claim goes once the new one
//! records it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams, Preconditions},
};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::broker::ownership::Claim;

/// The name prefix of every claim.
pub const PREFIX: &str = "idp-bridge-claims-";
/// The label naming the claim's owner marker, to find a connection's claims.
pub const OWNER_LABEL: &str = "idpbridge.io/claim-owner";
const OWNER_KEY: &str = "owner";
const ID_KEY: &str = "id";
const CREATING_KEY: &str = "creating";

/// The claim's name for a claim key: the key itself can be long and holds account ids.
pub fn name(key: &str) -> String {
    format!("{PREFIX}{}", &hex::encode(Sha256::digest(key.as_bytes()))[..40])
}

/// A claim this connection holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub name: String,
    uid: Option<String>,
    id: Option<String>,
    creating: bool,
}

impl Held {
    /// The claim's state, for the adapter.
    pub fn claim(&self) -> Claim<'_> {
        match (&self.id, self.creating) {
            (_, true) => Claim::Creating,
            (Some(id), false) => Claim::Recorded(id),
            (None, false) => Claim::Fresh,
        }
    }

    /// Whether the claim records `id` as its object.
    pub fn records(&self, id: &str) -> bool {
        self.id.as_deref() == Some(id) && !self.creating
    }
}

/// Who holds a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    Us(Held),
    /// Another connection: which one is not said, it may be another tenant's.
    Another,
    Nobody,
}

/// The claims, in the operator's namespace.
#[derive(Clone)]
pub struct Claims {
    api: Api<ConfigMap>,
}

impl Claims {
    pub fn new(client: Client, namespace: &str) -> Self {
        Self { api: Api::namespaced(client, namespace) }
    }

    /// Who holds the claim for `key`, without taking it.
    pub async fn holder(&self, key: &str, owner: &str) -> Result<Holder, kube::Error> {
        Ok(match self.api.get_opt(&name(key)).await? {
            Some(map) => judge(map, owner),
            None => Holder::Nobody,
        })
    }

    /// Takes the claim for `key` for `owner`, or finds who holds it.
    pub async fn take(&self, key: &str, owner: &str) -> Result<Holder, kube::Error> {
        if let found @ (Holder::Us(_) | Holder::Another) = self.holder(key, owner).await? {
            return Ok(found);
        }
        let claim = ConfigMap {
            metadata: ObjectMeta {
                name: Some(name(key)),
                labels: Some(BTreeMap::from([
                    ("app.kubernetes.io/managed-by".to_owned(), "idp-bridge".to_owned()),
                    (OWNER_LABEL.to_owned(), owner.to_owned()),
                ])),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(OWNER_KEY.to_owned(), owner.to_owned())])),
            ..Default::default()
        };
        match self.api.create(&PostParams::default(), &claim).await {
            Ok(created) => Ok(judge(created, owner)),
            // Another reconcile created it first: the older claim holds.
            Err(kube::Error::Api(status)) if status.code == 409 => self.holder(key, owner).await,
            Err(e) => Err(e),
        }
    }

    /// Records in the claim that a create is under way, or the object's id once known.
    pub async fn record(&self, held: &mut Held, id: Option<&str>) -> Result<(), kube::Error> {
        let data = match id {
            Some(id) => json!({ ID_KEY: id, CREATING_KEY: null }),
            None => json!({ CREATING_KEY: "true" }),
        };
        let mut patch = json!({ "data": data });
        if let Some(uid) = &held.uid {
            // Never onto a claim released and taken by another connection meanwhile.
            patch["metadata"] = json!({ "uid": uid });
        }
        self.api.patch(&held.name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        match id {
            Some(id) => (held.id, held.creating) = (Some(id.to_owned()), false),
            None => held.creating = true,
        }
        Ok(())
    }

    /// Releases a claim this connection holds (its object is gone).
    pub async fn release(&self, held: &Held) -> Result<(), kube::Error> {
        let params =
            DeleteParams { preconditions: Some(Preconditions { uid: held.uid.clone(), resource_version: None }), ..Default::default() };
        match self.api.delete(&held.name, &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Releases every claim of `owner` but `keep`: those of names the connection no longer uses
    /// (a renamed object, a changed broker).
    pub async fn release_others(&self, owner: &str, keep: &str) -> Result<(), kube::Error> {
        for held in self.of(owner).await? {
            if held.name != keep {
                self.release(&held).await?;
            }
        }
        Ok(())
    }

    /// Moves the record of object `id` into the fresh claim `held`, when another claim of the
    /// same owner records it: the object was renamed, and its new name's claim is taken over
    /// with it (the old claim goes once the sync is done). Returns whether it was.
    pub async fn carry_over(&self, owner: &str, held: &mut Held, id: &str) -> Result<bool, kube::Error> {
        if held.claim() != Claim::Fresh || !self.of(owner).await?.iter().any(|other| other.name != held.name && other.records(id)) {
            return Ok(false);
        }
        self.record(held, Some(id)).await?;
        Ok(true)
    }

    /// Every claim `owner` holds.
    async fn of(&self, owner: &str) -> Result<Vec<Held>, kube::Error> {
        let listed = self.api.list(&ListParams::default().labels(&format!("{OWNER_LABEL}={owner}"))).await?;
        Ok(listed
            .items
            .into_iter()
            .filter_map(|map| match judge(map, owner) {
                Holder::Us(held) => Some(held),
                _ => None,
            })
            .collect())
    }
}

/// Who holds the claim `map` is, from `owner`'s side.
fn judge(map: ConfigMap, owner: &str) -> Holder {
    let data = map.data.unwrap_or_default();
    if data.get(OWNER_KEY).map(String::as_str) != Some(owner) {
        return Holder::Another;
    }
    Holder::Us(Held {
        name: map.metadata.name.unwrap_or_default(),
        uid: map.metadata.uid,
        id: data.get(ID_KEY).filter(|id| !id.is_empty()).cloned(),
        creating: data.get(CREATING_KEY).is_some_and(|c| c == "true"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(data: &[(&str, &str)]) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta { name: Some("idp-bridge-claims-x".into()), uid: Some("u".into()), ..Default::default() },
            data: Some(data.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()),
            ..Default::default()
        }
    }

    #[test]
    fn names_are_valid_and_distinct() {
        let a = name("cloudflare\0account 1\0Contoso");
        assert!(a.starts_with(PREFIX) && a.len() <= 63 && a.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
        assert_ne!(a, name("cloudflare\0account 1\0Contoso 2"));
    }

    #[test]
    fn a_claim_is_ours_only_with_our_marker() {
        assert_eq!(judge(map(&[("owner", "theirs"), ("id", "x")]), "ours"), Holder::Another);
        assert_eq!(judge(map(&[]), "ours"), Holder::Another);
        let Holder::Us(fresh) = judge(map(&[("owner", "ours")]), "ours") else { panic!() };
        assert_eq!(fresh.claim(), Claim::Fresh);
        let Holder::Us(creating) = judge(map(&[("owner", "ours"), ("creating", "true")]), "ours") else { panic!() };
        assert_eq!(creating.claim(), Claim::Creating);
        let Holder::Us(recorded) = judge(map(&[("owner", "ours"), ("id", "x")]), "ours") else { panic!() };
        assert_eq!(recorded.claim(), Claim::Recorded("x"));
        assert!(recorded.records("x") && !recorded.records("y") && !creating.records("x"));
    }
}
