//! The development environment: emulators of the external APIs and a local Kubernetes control
//! plane. The demo and the test suite use it; the operator itself never does.

pub mod tls;
