//! Cloudflare Zero Trust Access identity providers (`type: azureAD`). Being written.

use super::{BrokerError, SyncOutcome, SyncRequest};
use crate::{crd::broker::CloudflareBrokerSpec, crd::connection::AzureAdConnectionSpec, secret::SecretValue, upstream::Upstream};

#[derive(Debug)]
pub struct CloudflareClient {}

impl CloudflareClient {
    pub fn new(_upstream: Upstream, _spec: &CloudflareBrokerSpec, _token: SecretValue, _rate: Option<(u32, u32)>) -> Self {
        todo!("cloudflare adapter")
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
