//! Tier 1: tests that need neither a network nor a control plane (the mocked API server, the
//! committed CRDs, the README's promises).

mod controller_mock;
mod crds_up_to_date;
mod readme;
