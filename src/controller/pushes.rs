//! What this process last wrote to each connection's broker object. Status records a push only
//! after it happened; when that status write fails (the API server restarting just then), the
//! stored status still names the previous secret, and the retry would write the same secret
//! again. The retry reads the connection as this memory knows it instead.

use std::{borrow::Cow, collections::HashMap, sync::Mutex};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use crate::crd::connection::{AzureAdConnection, BrokerObjectStatus};

/// One push: the object written, the fingerprint of the secret it got, and when it was done.
#[derive(Debug, Clone)]
struct Pushed {
    id: Option<String>,
    fingerprint: String,
    at: jiff::Timestamp,
}

/// The last push per connection UID.
#[derive(Debug, Default)]
pub struct Pushes(Mutex<HashMap<String, Pushed>>);

impl Pushes {
    /// Records that `fingerprint` was just written to the object `id` of `conn`.
    pub fn record(&self, conn: &AzureAdConnection, id: Option<&str>, fingerprint: &str) {
        let Some(uid) = conn.uid() else { return };
        let pushed = Pushed { id: id.map(str::to_owned), fingerprint: fingerprint.to_owned(), at: jiff::Timestamp::now() };
        self.0.lock().expect("pushes lock").insert(uid, pushed);
    }

    pub fn forget(&self, conn: &AzureAdConnection) {
        if let Some(uid) = conn.uid() {
            self.0.lock().expect("pushes lock").remove(&uid);
        }
    }

    /// `conn` with its broker object status as this process last wrote it, where that is newer
    /// than what the stored status says; `conn` itself otherwise.
    pub fn known<'a>(&self, conn: &'a AzureAdConnection) -> Cow<'a, AzureAdConnection> {
        let pushed = conn.uid().and_then(|uid| self.0.lock().expect("pushes lock").get(&uid).cloned());
        let stored = conn.status.as_ref().and_then(|s| s.broker.as_ref());
        match pushed.and_then(|p| unrecorded(stored, &p)) {
            Some(broker) => {
                let mut known = conn.clone();
                known.status.get_or_insert_with(Default::default).broker = Some(broker);
                Cow::Owned(known)
            }
            None => Cow::Borrowed(conn),
        }
    }
}

/// The broker object status that records `pushed`, when the stored one does not: it names
/// another object or secret, and was synced before the push (a newer stored sync, by another
/// replica after a leadership change, wins).
fn unrecorded(stored: Option<&BrokerObjectStatus>, pushed: &Pushed) -> Option<BrokerObjectStatus> {
    let stored = stored.cloned().unwrap_or_default();
    let recorded =
        stored.synced_fingerprint.as_deref() == Some(pushed.fingerprint.as_str()) && (pushed.id.is_none() || stored.id == pushed.id);
    let stored_is_newer = stored.synced_at.as_ref().is_some_and(|t| t.0 > pushed.at);
    if recorded || stored_is_newer {
        return None;
    }
    let at = pushed.at.round(jiff::Unit::Second).unwrap_or(pushed.at);
    Some(BrokerObjectStatus {
        id: pushed.id.clone().or(stored.id),
        synced_fingerprint: Some(pushed.fingerprint.clone()),
        synced_at: Some(Time(at)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pushed(id: &str, fingerprint: &str, at: &str) -> Pushed {
        Pushed { id: Some(id.into()), fingerprint: fingerprint.into(), at: at.parse().unwrap() }
    }

    fn stored(id: &str, fingerprint: &str, at: &str) -> BrokerObjectStatus {
        BrokerObjectStatus { id: Some(id.into()), synced_fingerprint: Some(fingerprint.into()), synced_at: Some(Time(at.parse().unwrap())) }
    }

    #[test]
    fn a_push_the_status_does_not_record_is_known() {
        let push = pushed("con_1", "fp-new", "2026-12-02T10:00:05.4Z");
        let known = unrecorded(Some(&stored("con_1", "fp-old", "2026-12-02T09:00:00Z")), &push).expect("the push is newer");
        assert_eq!(known.synced_fingerprint.as_deref(), Some("fp-new"));
        assert_eq!(known.id.as_deref(), Some("con_1"));
        assert_eq!(known.synced_at, Some(Time("2026-12-02T10:00:05Z".parse().unwrap())));
    }

    #[test]
    fn a_first_push_without_any_status_is_known() {
        let known = unrecorded(None, &pushed("con_1", "fp-1", "2026-12-02T10:00:00Z")).expect("nothing was recorded");
        assert_eq!(known.id.as_deref(), Some("con_1"));
    }

    #[test]
    fn a_recorded_push_changes_nothing() {
        // Status records the sync at the reconcile's start, before the push completed.
        let push = pushed("con_1", "fp-new", "2026-12-02T10:00:05.4Z");
        assert_eq!(unrecorded(Some(&stored("con_1", "fp-new", "2026-12-02T10:00:05Z")), &push), None);
    }

    #[test]
    fn a_newer_sync_by_another_replica_wins() {
        let push = pushed("con_1", "fp-b", "2026-12-02T10:00:05Z");
        assert_eq!(unrecorded(Some(&stored("con_1", "fp-c", "2026-12-02T10:00:30Z")), &push), None);
    }
}
