//! A small shared map whose entries expire, each at its own instant. Enough for the operator's
//! few hundred entries (validations, tokens, expiry lookups): expired entries are dropped on the
//! next insert, so the map never outgrows the set of live keys.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::Mutex,
    time::{Duration, Instant},
};

pub struct TtlCache<K, V> {
    entries: Mutex<HashMap<K, Entry<V>>>,
}

struct Entry<V> {
    value: V,
    expires_at: Instant,
}

impl<K: Eq + Hash, V: Clone> TtlCache<K, V> {
    pub fn new() -> Self {
        Self { entries: Mutex::new(HashMap::new()) }
    }

    /// The value, while it has not expired.
    pub fn get(&self, key: &K) -> Option<V> {
        self.get_valid_for(key, Duration::ZERO)
    }

    /// The value, if it stays valid for at least `margin` more (a token about to expire is no
    /// use for a request that may take a while).
    pub fn get_valid_for(&self, key: &K, margin: Duration) -> Option<V> {
        let entries = self.entries.lock().expect("cache lock");
        entries.get(key).filter(|e| e.expires_at > Instant::now() + margin).map(|e| e.value.clone())
    }

    /// Stores `value` until `expires_at`, replacing any previous entry for `key`.
    pub fn insert(&self, key: K, value: V, expires_at: Instant) {
        let mut entries = self.entries.lock().expect("cache lock");
        let now = Instant::now();
        entries.retain(|_, e| e.expires_at > now);
        entries.insert(key, Entry { value, expires_at });
    }

    pub fn remove(&self, key: &K) {
        self.entries.lock().expect("cache lock").remove(key);
    }
}

impl<K: Eq + Hash, V: Clone> Default for TtlCache<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_secs(secs: u64) -> Instant {
        Instant::now() + Duration::from_secs(secs)
    }

    fn past() -> Instant {
        Instant::now().checked_sub(Duration::from_secs(1)).expect("the monotonic clock is past its first second")
    }

    #[test]
    fn entries_live_until_their_own_expiry() {
        let cache = TtlCache::new();
        cache.insert("fresh", 1, in_secs(3600));
        cache.insert("stale", 2, past());
        assert_eq!(cache.get(&"fresh"), Some(1));
        assert_eq!(cache.get(&"stale"), None);
        assert_eq!(cache.get(&"absent"), None);
    }

    #[test]
    fn a_margin_refuses_entries_about_to_expire() {
        let cache = TtlCache::new();
        cache.insert("token", "t", in_secs(30));
        assert_eq!(cache.get(&"token"), Some("t"));
        assert_eq!(cache.get_valid_for(&"token", Duration::from_secs(60)), None);
        assert_eq!(cache.get_valid_for(&"token", Duration::from_secs(10)), Some("t"));
    }

    #[test]
    fn inserting_replaces_and_drops_expired_entries() {
        let cache = TtlCache::new();
        cache.insert("a", 1, past());
        cache.insert("b", 2, in_secs(60));
        assert_eq!(cache.entries.lock().unwrap().len(), 1, "the expired entry went with the insert");
        cache.insert("b", 3, in_secs(60));
        assert_eq!(cache.get(&"b"), Some(3));
        cache.remove(&"b");
        assert_eq!(cache.get(&"b"), None);
    }
}
