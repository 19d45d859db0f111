//! idp-bridge: a Kubernetes operator that validates Microsoft Entra ID client secrets and pushes
//! them into identity brokers.

pub mod crd;
pub mod devenv;
pub mod secret;
pub mod upstream;
