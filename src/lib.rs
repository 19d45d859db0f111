//! idp-bridge: a Kubernetes operator that validates Microsoft Entra ID client secrets and pushes
//! them into identity brokers.
//!
//! Layout: `crd` (the API), `config` (flags, parsed once), `controller` (watch and reconcile:
//! resolve -> validate -> sync -> a pure decision -> status, Events, requeue), `azure` and
//! `broker::*` (one module per external API), `broker_hosts` (where broker credentials may go), `registration` (what a broker needs from
//! the Entra app registration, compared with what Graph says), `upstream` (the single outbound HTTP client),
//! `cache` (the TTL cache behind the Azure client), `secret` (redaction and fingerprints),
//! `leader` (leader election on a Lease), `operator` (start-up), `http` (metrics and probes). The emulators and the local control plane used by the
//! demo and the tests live in the `idp-bridge-devenv` workspace member, never in this crate.
#![forbid(unsafe_code)]

pub mod azure;
pub mod broker;
pub mod broker_hosts;
pub mod cache;
pub mod check;
pub mod config;
pub mod controller;
pub mod crd;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod operator;
pub mod registration;
pub mod rotation;
pub mod secret;
pub mod telemetry;
pub mod upstream;

/// Installs ring as rustls' process-wide crypto provider. kube and reqwest are both built on
/// rustls without choosing one, so every entry point calls this first. Safe to call repeatedly.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
