//! Who manages a broker object, and whether a connection may write to it.
//!
//! A broker object is managed by one connection, named by an owner marker: a hash of the cluster
//! name, the namespace and the connection's name, stable across a delete and re-create of the
//! resource and meaningless to anyone who reads it. Where the broker's API holds a free field
//! (Auth0 connections' `metadata`), the marker is written into the object itself; for the others
//! (Cloudflare, Logto, Unified.to) the operator keeps a claim per broker object in its own
//! namespace (`controller::claims`) and hands its state to the adapter as a [`Claim`].
//!
//! The rules, the same for every adapter: an object marked or claimed for this connection is
//! its own; one marked for another connection is never written to or deleted, whatever the
//! spec says; one that idp-bridge did not create (no marker, no claim) is taken only with
//! `spec.adopt`, or when the connection's status already records its id (written by the
//! operator only, as by a version that kept no markers).

use sha2::{Digest, Sha256};

use super::BrokerError;

/// The Auth0 `metadata` key holding the owner marker.
pub const MARKER_KEY: &str = "idp-bridge-owner";

/// The text of a refusal for an object another connection manages. It names no resource: the
/// other connection may be in another tenant's namespace.
pub const MANAGED_ELSEWHERE: &str =
    "the broker object is managed by another idp-bridge connection (another namespace, name or cluster); nothing was written";

/// The owner marker of the connection `namespace/name` in `cluster`: 32 hex characters, fit for an
/// Auth0 metadata value and a Kubernetes label value.
pub fn owner_marker(cluster: &str, namespace: &str, name: &str) -> String {
    let digest = Sha256::digest(["idp-bridge-owner-v1", cluster, namespace, name].join("\0").as_bytes());
    hex::encode(&digest[..16])
}

/// The state of the operator's claim on a broker object, for brokers without a marker field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim<'a> {
    /// Just taken: no object recorded under it and no create attempted.
    Fresh,
    /// A create was attempted under the claim; its answer may have been lost, so an object of the
    /// connection's name found now is the one it made.
    Creating,
    /// The id of the object the claim holds.
    Recorded(&'a str),
}

/// What a sync or delete may take as its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ownership<'a> {
    /// The connection's owner marker ([`owner_marker`]).
    pub owner: &'a str,
    /// `spec.adopt`: an object idp-bridge did not create may be taken over.
    pub adopt: bool,
    /// The operator's claim, for brokers whose objects cannot hold the marker; `None` for those
    /// that can (Auth0).
    pub claim: Option<Claim<'a>>,
}

impl<'a> Ownership<'a> {
    /// Where the object was last recorded: the claim's id, else the status's `known_id`.
    pub(crate) fn recorded_id(&self, known_id: Option<&'a str>) -> Option<&'a str> {
        match self.claim {
            Some(Claim::Recorded(id)) => Some(id),
            _ => known_id,
        }
    }

    /// Judges an object that carries a marker field: `marker` is what it holds there. `Ok(true)`
    /// means it is ours but unmarked, so the next write must mark it.
    pub(crate) fn judge_marked(&self, marker: Option<&str>, id: &str, known_id: Option<&str>) -> Result<bool, BrokerError> {
        match marker.filter(|m| !m.is_empty()) {
            Some(marker) if marker == self.owner => Ok(false),
            Some(_) => Err(BrokerError::Conflict(MANAGED_ELSEWHERE.into())),
            None if self.adopt || known_id == Some(id) => Ok(true),
            None => Err(unmanaged()),
        }
    }

    /// Judges an object of a broker without a marker field, by the claim.
    pub(crate) fn judge_claimed(&self, id: &str, known_id: Option<&str>) -> Result<(), BrokerError> {
        let claimed = match self.claim {
            Some(Claim::Recorded(recorded)) => recorded == id,
            Some(Claim::Creating) => true,
            Some(Claim::Fresh) | None => false,
        };
        if claimed || self.adopt || known_id == Some(id) { Ok(()) } else { Err(unmanaged()) }
    }

    /// Whether a missing object may be created now: always where the object carries the marker;
    /// under a claim, only once the claim says a create is under way (so that an object of the
    /// name found later is known to be the one it made).
    pub(crate) fn may_create(&self) -> bool {
        matches!(self.claim, None | Some(Claim::Creating))
    }
}

/// The refusal for an object idp-bridge did not create.
fn unmanaged() -> BrokerError {
    BrokerError::Conflict(
        "the broker already has an object of this name that idp-bridge did not create; set spec.adopt: true to take it over; nothing was written"
            .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: &str = "ours";

    fn ownership(adopt: bool, claim: Option<Claim<'static>>) -> Ownership<'static> {
        Ownership { owner: OURS, adopt, claim }
    }

    #[test]
    fn markers_are_stable_and_say_nothing() {
        let marker = owner_marker("prod", "team-a", "contoso");
        assert_eq!(marker, owner_marker("prod", "team-a", "contoso"));
        assert_eq!(marker.len(), 32);
        assert!(!marker.contains("team-a") && !marker.contains("contoso"));
        for other in
            [owner_marker("dev", "team-a", "contoso"), owner_marker("prod", "team-b", "contoso"), owner_marker("prod", "team-a", "x")]
        {
            assert_ne!(marker, other);
        }
        // The separator keeps (a, bc) and (ab, c) apart.
        assert_ne!(owner_marker("c", "ab", "c"), owner_marker("c", "a", "bc"));
    }

    #[test]
    fn a_marked_object_belongs_to_its_marker_alone() {
        for adopt in [false, true] {
            assert!(!ownership(adopt, None).judge_marked(Some(OURS), "id", None).unwrap(), "marked already");
            let err = ownership(adopt, None).judge_marked(Some("theirs"), "id", Some("id")).unwrap_err();
            assert!(matches!(&err, BrokerError::Conflict(m) if m == MANAGED_ELSEWHERE), "adopt never takes another's: {err:?}");
        }
        assert!(matches!(ownership(false, None).judge_marked(None, "id", None), Err(BrokerError::Conflict(m)) if m.contains("adopt")));
        assert!(ownership(true, None).judge_marked(None, "id", None).unwrap(), "adopted, to be marked");
        assert!(ownership(false, None).judge_marked(Some(""), "id", Some("id")).unwrap(), "recorded in status: marked now");
    }

    #[test]
    fn a_claimed_object_is_judged_by_the_claim() {
        assert!(ownership(false, Some(Claim::Recorded("a"))).judge_claimed("a", None).is_ok());
        assert!(ownership(false, Some(Claim::Recorded("a"))).judge_claimed("b", None).is_err());
        assert!(ownership(false, Some(Claim::Creating)).judge_claimed("b", None).is_ok());
        assert!(ownership(false, Some(Claim::Fresh)).judge_claimed("b", None).is_err());
        assert!(ownership(false, Some(Claim::Fresh)).judge_claimed("b", Some("b")).is_ok());
        assert!(ownership(true, Some(Claim::Fresh)).judge_claimed("b", None).is_ok());
        assert!(ownership(false, None).may_create() && ownership(false, Some(Claim::Creating)).may_create());
        assert!(!ownership(true, Some(Claim::Fresh)).may_create() && !ownership(false, Some(Claim::Recorded("a"))).may_create());
    }
}
