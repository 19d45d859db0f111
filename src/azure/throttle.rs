//! Azure's `Retry-After`, remembered per (cloud, tenant, client): while a block lasts, the
//! client sends nothing for that app and answers with the time left instead. The block lives
//! in the operator's one [`super::AzureClient`], so whatever starts the next reconcile (a status
//! write, a Secret or broker event, a restarted controller after a leadership change) finds it.
//!
//! The login service and Microsoft Graph throttle separately, so each keeps its own blocks.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::{crd::connection::AzureCloud, upstream::MAX_SERVER_DELAY};

/// Which app a block applies to. Tenant and client are compared case-insensitively.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ThrottleKey {
    cloud: AzureCloud,
    tenant: String,
    client_id: String,
}

impl ThrottleKey {
    pub fn new(cloud: AzureCloud, tenant: &str, client_id: &str) -> Self {
        Self { cloud, tenant: tenant.to_ascii_lowercase(), client_id: client_id.to_ascii_lowercase() }
    }
}

/// The blocks Azure asked for, each until its own instant.
#[derive(Default)]
pub struct Throttle {
    blocked_until: Mutex<HashMap<ThrottleKey, Instant>>,
}

impl Throttle {
    /// How long `key` must still wait, if it is blocked.
    pub fn remaining(&self, key: &ThrottleKey) -> Option<Duration> {
        self.remaining_at(key, Instant::now())
    }

    /// Blocks `key` for `retry_after` (at most [`MAX_SERVER_DELAY`]); a longer block already in
    /// place is kept.
    pub fn block(&self, key: ThrottleKey, retry_after: Duration) {
        self.block_at(key, retry_after, Instant::now());
    }

    fn remaining_at(&self, key: &ThrottleKey, now: Instant) -> Option<Duration> {
        let blocked = self.blocked_until.lock().expect("throttle lock");
        blocked.get(key).and_then(|until| until.checked_duration_since(now)).filter(|left| !left.is_zero())
    }

    fn block_at(&self, key: ThrottleKey, retry_after: Duration, now: Instant) {
        let wait = retry_after.min(MAX_SERVER_DELAY);
        // Clamped to an hour, the sum cannot overflow on any real clock; if it ever did, the
        // longest block that fits is still a block.
        let until = now.checked_add(wait).unwrap_or(now);
        let mut blocked = self.blocked_until.lock().expect("throttle lock");
        blocked.retain(|_, until| *until > now);
        let entry = blocked.entry(key).or_insert(until);
        *entry = (*entry).max(until);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(client: &str) -> ThrottleKey {
        ThrottleKey::new(AzureCloud::AzurePublic, "Contoso.onmicrosoft.com", client)
    }

    #[test]
    fn a_block_lasts_its_retry_after_for_that_app_only() {
        let throttle = Throttle::default();
        let now = Instant::now();
        throttle.block_at(key("app-a"), Duration::from_secs(30), now);
        assert_eq!(throttle.remaining_at(&key("APP-A"), now), Some(Duration::from_secs(30)), "ids compare case-insensitively");
        assert_eq!(throttle.remaining_at(&key("app-a"), now + Duration::from_secs(10)), Some(Duration::from_secs(20)));
        assert_eq!(throttle.remaining_at(&key("app-a"), now + Duration::from_secs(30)), None, "over when Retry-After ends");
        assert_eq!(throttle.remaining_at(&key("app-b"), now), None, "another app is not blocked");
        let other_cloud = ThrottleKey::new(AzureCloud::AzureChina, "contoso.onmicrosoft.com", "app-a");
        assert_eq!(throttle.remaining_at(&other_cloud, now), None, "another cloud is not blocked");
    }

    #[test]
    fn a_huge_retry_after_is_clamped_to_an_hour() {
        let throttle = Throttle::default();
        let now = Instant::now();
        throttle.block_at(key("app"), Duration::MAX, now);
        assert_eq!(throttle.remaining_at(&key("app"), now), Some(MAX_SERVER_DELAY));
    }

    #[test]
    fn a_shorter_block_does_not_shorten_a_longer_one() {
        let throttle = Throttle::default();
        let now = Instant::now();
        throttle.block_at(key("app"), Duration::from_secs(60), now);
        throttle.block_at(key("app"), Duration::from_secs(5), now);
        assert_eq!(throttle.remaining_at(&key("app"), now), Some(Duration::from_secs(60)));
    }

    #[test]
    fn ended_blocks_are_dropped() {
        let throttle = Throttle::default();
        let now = Instant::now();
        throttle.block_at(key("old"), Duration::from_secs(1), now);
        throttle.block_at(key("new"), Duration::from_secs(1), now + Duration::from_secs(5));
        assert_eq!(throttle.blocked_until.lock().unwrap().len(), 1);
    }
}
