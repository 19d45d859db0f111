//! Logto Management API: the Microsoft social connector. Being written.

use super::{BrokerError, SyncOutcome, SyncRequest};
use crate::{crd::broker::LogtoBrokerSpec, crd::connection::AzureAdConnectionSpec, secret::SecretValue, upstream::Upstream};

#[derive(Debug)]
pub struct LogtoClient {}

impl LogtoClient {
    pub fn new(_upstream: Upstream, _spec: &LogtoBrokerSpec, _client_id: &str, _secret: SecretValue, _rate: Option<(u32, u32)>) -> Self {
        todo!("logto adapter")
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
