//! Tier 3: the operator on a real kube-apiserver and etcd (one control plane for this binary),
//! with the emulators behind a test CA, the Helm chart installed into it, and the container image
//! run as the chart's pod.

mod common;

mod alerts;
mod app_registration;
mod broker_churn;
mod chart;
mod control_plane;
mod crd_validation;
mod e2e_auth0;
mod e2e_broker_hosts;
mod e2e_brokers;
mod e2e_client_secret;
mod e2e_ownership;
mod faults_azure;
mod gitops_health;
mod hostile;
mod image;
mod leader_election;
mod leader_metrics;
mod namespace_deletion;
mod printer_columns;
mod scim_secret;
