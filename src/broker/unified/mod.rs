//! Unified.to `microsoft_ad` connections. Being written.

use super::{BrokerError, SyncOutcome, SyncRequest};
use crate::{crd::broker::UnifiedBrokerSpec, crd::connection::AzureAdConnectionSpec, secret::SecretValue, upstream::Upstream};

#[derive(Debug)]
pub struct UnifiedClient {}

impl UnifiedClient {
    pub fn new(_upstream: Upstream, _spec: &UnifiedBrokerSpec, _token: SecretValue, _rate: Option<(u32, u32)>) -> Self {
        todo!("unified adapter")
    }
    pub async fn sync(&self, _request: &SyncRequest<'_>) -> Result<SyncOutcome, BrokerError> {
        todo!()
    }
    pub async fn delete(&self, _spec: &AzureAdConnectionSpec, _known_id: Option<&str>) -> Result<(), BrokerError> {
        todo!()
    }
    pub async fn check(&self) -> Result<(), BrokerError> {
        todo!()
    }
}
