//! Tier 3: the operator on a real kube-apiserver and etcd (one control plane for this binary),
//! with the emulators behind a test CA, and the Helm chart installed into it.

mod common;

mod alerts;
mod chart;
mod control_plane;
mod crd_validation;
mod e2e_auth0;
mod e2e_broker_hosts;
mod e2e_brokers;
mod gitops_health;
mod hostile;
mod image;
mod leader_election;
mod namespace_deletion;
mod printer_columns;
