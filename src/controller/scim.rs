//! The Cloudflare SCIM Secret: the SCIM base URL and token that Entra ID's provisioning needs,
//! written to the Secret `cloudflare.scim.secretName`. Cloudflare shows the token once (when SCIM
//! is enabled, or when it is regenerated), so a token not yet stored is held in memory until it
//! is; one that is lost (never stored before a restart, or a provider adopted with SCIM already
//! on) is regenerated through Cloudflare's SCIM secret refresh. The Secret is created by the
//! operator, owned by its connection, and never taken over: a Secret of that name that idp-bridge
//! did not create for this connection is left alone. Nothing here fails the reconcile: the
//! outcome is the `ScimSecretReady` condition, and the client secret's sync goes on regardless.

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;

use super::{Context, observation::ScimStage, reconcile::MANAGER};
use crate::{
    broker::{BrokerClient, ScimCredentials},
    crd::{
        conditions::{Desired, Reason, SCIM_SECRET_READY, Status},
        connection::AzureAdConnection,
    },
};

const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "idp-bridge");
const BASE_URL_KEY: &str = "scim-base-url";
const TOKEN_KEY: &str = "scim-secret";

/// The Secret named by `scim.secretName` when SCIM is enabled.
pub fn secret_name(conn: &AzureAdConnection) -> Option<&str> {
    let scim = conn.spec.cloudflare.as_ref()?.scim.as_ref()?;
    scim.enabled.then_some(scim.secret_name.as_str())
}

/// Whether `secret` is the one idp-bridge created for `conn`: labelled as managed by it and
/// controlled by this very connection (a same-named connection created again is another owner).
pub fn created_for(secret: &Secret, conn: &AzureAdConnection) -> bool {
    let labelled = secret.labels().get(MANAGED_BY.0).map(String::as_str) == Some(MANAGED_BY.1);
    let controlled = secret.owner_references().iter().any(|o| o.controller == Some(true) && Some(&o.uid) == conn.meta().uid.as_ref());
    labelled && controlled
}

fn holds_credentials(secret: &Secret) -> bool {
    let data = secret.data.as_ref();
    [BASE_URL_KEY, TOKEN_KEY].iter().all(|key| data.and_then(|d| d.get(*key)).is_some_and(|v| !v.0.is_empty()))
}

fn checked(status: Status, reason: Reason, message: String, regenerated: bool) -> ScimStage {
    ScimStage::Checked { condition: Desired::new(SCIM_SECRET_READY, status, reason, message), regenerated }
}

/// After a sync that left SCIM on at the provider `provider_id`: the SCIM Secret holds its
/// credentials, or the condition says why not.
pub async fn stage(ctx: &Context, conn: &AzureAdConnection, broker: &BrokerClient, provider_id: Option<&str>) -> ScimStage {
    let Some(name) = secret_name(conn) else {
        ctx.release_scim(conn);
        return ScimStage::Off;
    };
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &conn.namespace().unwrap_or_default());
    let existing = match api.get_opt(name).await {
        Ok(existing) => existing,
        Err(e) => return checked(Status::False, Reason::ScimSecretWriteFailed, format!("reading Secret {name} failed: {e}"), false),
    };
    if let Some(secret) = &existing
        && !created_for(secret, conn)
    {
        return checked(
            Status::False,
            Reason::ScimSecretNotOwned,
            format!(
                "Secret {name} exists and was not created by idp-bridge for this connection, so nothing was written to it; delete it or name another scim.secretName"
            ),
            false,
        );
    }
    let mut regenerated = false;
    let credentials = match ctx.held_scim(conn) {
        Some(held) => held,
        None if existing.as_ref().is_some_and(holds_credentials) => {
            return checked(Status::True, Reason::ScimSecretStored, format!("Secret {name} holds the SCIM base URL and token"), false);
        }
        None => {
            let Some(id) = provider_id else { return ScimStage::Skipped };
            match broker.refresh_scim_secret(id).await {
                Ok(fresh) => {
                    ctx.hold_scim(conn, fresh.clone());
                    regenerated = true;
                    fresh
                }
                Err(e) => {
                    let message = format!("no SCIM token is stored in Secret {name}, and asking Cloudflare for a new one failed: {e}");
                    return checked(Status::False, Reason::ScimSecretRefreshFailed, message, false);
                }
            }
        }
    };
    match write(&api, conn, name, &credentials, existing.is_some()).await {
        Ok(()) => {
            ctx.release_scim(conn);
            checked(Status::True, Reason::ScimSecretStored, format!("Secret {name} holds the SCIM base URL and token"), regenerated)
        }
        Err(e) => checked(
            Status::False,
            Reason::ScimSecretWriteFailed,
            format!("writing Secret {name} failed, retried with backoff (the token is kept until then): {e}"),
            regenerated,
        ),
    }
}

/// Creates the Secret (a create fails if someone else made one meanwhile), or updates the one
/// idp-bridge created before.
async fn write(api: &Api<Secret>, conn: &AzureAdConnection, name: &str, scim: &ScimCredentials, exists: bool) -> Result<(), kube::Error> {
    let owner = conn.controller_owner_ref(&()).expect("a stored connection has a name and uid");
    let secret = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "ownerReferences": [owner], "labels": {MANAGED_BY.0: MANAGED_BY.1}},
        "type": "Opaque",
        "stringData": {BASE_URL_KEY: scim.base_url, TOKEN_KEY: scim.secret.expose()},
    });
    if exists {
        api.patch(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&secret)).await?;
    } else {
        let secret: Secret = serde_json::from_value(secret).expect("a valid Secret");
        api.create(&PostParams { field_manager: Some(MANAGER.to_owned()), ..Default::default() }, &secret).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(uid: &str) -> AzureAdConnection {
        serde_json::from_value(json!({
            "apiVersion": "idpbridge.io/v1alpha1", "kind": "AzureAdConnection",
            "metadata": {"name": "c", "namespace": "team-a", "uid": uid},
            "spec": {
                "brokerRef": {"name": "cf"},
                "azure": {"tenant": "contoso.onmicrosoft.com", "clientId": "8c2e4b6a-1f3d-4a5b-9e7c-6d8f0a2b4c6e", "clientSecretRef": {"name": "s"}},
                "cloudflare": {"name": "Contoso", "scim": {"enabled": true, "secretName": "contoso-scim"}},
            },
        }))
        .expect("a valid connection")
    }

    fn secret(labels: serde_json::Value, owners: serde_json::Value) -> Secret {
        serde_json::from_value(json!({"metadata": {"name": "contoso-scim", "labels": labels, "ownerReferences": owners}})).unwrap()
    }

    #[test]
    fn only_a_secret_made_for_this_connection_is_ours() {
        let owner = |uid: &str, controller: bool| json!([{"apiVersion": "idpbridge.io/v1alpha1", "kind": "AzureAdConnection", "name": "c", "uid": uid, "controller": controller}]);
        let label = json!({"app.kubernetes.io/managed-by": "idp-bridge"});
        assert!(created_for(&secret(label.clone(), owner("u1", true)), &conn("u1")));
        assert!(!created_for(&secret(json!({}), json!([])), &conn("u1")), "a Secret made by someone else");
        assert!(!created_for(&secret(label.clone(), json!([])), &conn("u1")), "the label alone is anyone's to set");
        assert!(!created_for(&secret(label.clone(), owner("u0", true)), &conn("u1")), "an earlier connection of the same name");
        assert!(!created_for(&secret(label, owner("u1", false)), &conn("u1")), "owned, but not controlled");
        assert!(!created_for(&secret(json!({}), owner("u1", true)), &conn("u1")), "not labelled");
    }

    #[test]
    fn the_secret_is_named_only_while_scim_is_enabled() {
        let mut c = conn("u1");
        assert_eq!(secret_name(&c), Some("contoso-scim"));
        c.spec.cloudflare.as_mut().unwrap().scim.as_mut().unwrap().enabled = false;
        assert_eq!(secret_name(&c), None);
    }
}
