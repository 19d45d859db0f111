//! Shared set-up for the integration tests: one real control plane per test binary, with the
//! CRDs installed, and one fresh namespace per test.

use idp_bridge_devenv::control_plane::{ControlPlane, create_namespace, unique_name};
use tokio::sync::OnceCell;

static CONTROL_PLANE: OnceCell<ControlPlane> = OnceCell::const_new();

/// The test binary's control plane, started by the first test that asks, with
/// `idp_bridge::crd::all()` installed. It is never dropped; its watchdog stops it when the test
/// process ends.
pub async fn control_plane() -> &'static ControlPlane {
    CONTROL_PLANE
        .get_or_init(|| async {
            ControlPlane::start_with_crds(&idp_bridge::crd::all())
                .await
                .unwrap_or_else(|e| panic!("starting the control plane with the CRDs: {e}"))
        })
        .await
}

/// An admin client for the current runtime and a new namespace named after `prefix`.
pub async fn namespace(prefix: &str) -> (kube::Client, String) {
    let cp = control_plane().await;
    let client = cp.client().await;
    let name = unique_name(prefix);
    create_namespace(&client, &name).await.unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
    (client, name)
}
pub mod admission;
pub mod e2e;
