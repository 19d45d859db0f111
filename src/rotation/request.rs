//! `idp-bridge rotate NAMESPACE/NAME [--revoke]`: asks for a renewal by setting the resource's
//! `idpbridge.io/renew` (or `idpbridge.io/revoke`) annotation to the current time, as
//! `cmctl renew` does for a Certificate. The operator acts on each new value once.

use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use serde_json::json;

use crate::crd::client_secret::{AzureAdClientSecret, RENEW_ANNOTATION, REVOKE_ANNOTATION};

#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error("expected NAMESPACE/NAME, got {0:?}")]
    Target(String),
    #[error("AzureAdClientSecret {namespace}/{name} was not found")]
    NotFound { namespace: String, name: String },
    #[error("annotating AzureAdClientSecret {namespace}/{name}: {source}")]
    Patch { namespace: String, name: String, source: kube::Error },
}

/// `namespace/name` split, both non-empty.
pub fn parse_target(target: &str) -> Result<(&str, &str), RotateError> {
    match target.split_once('/') {
        Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() && !name.contains('/') => Ok((namespace, name)),
        _ => Err(RotateError::Target(target.to_owned())),
    }
}

/// The annotation a request sets.
pub fn annotation(revoke: bool) -> &'static str {
    if revoke { REVOKE_ANNOTATION } else { RENEW_ANNOTATION }
}

/// Sets the annotation; returns the line to print.
pub async fn rotate(client: Client, target: &str, revoke: bool) -> Result<String, RotateError> {
    let (namespace, name) = parse_target(target)?;
    let api: Api<AzureAdClientSecret> = Api::namespaced(client, namespace);
    let key = annotation(revoke);
    let at = jiff::Timestamp::now().to_string();
    let patch = json!({"metadata": {"annotations": {key: at}}});
    let err = |source| RotateError::Patch { namespace: namespace.to_owned(), name: name.to_owned(), source };
    match api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => {
            Ok(format!("{key}={at} set on {namespace}/{name}; the operator renews now (see `kubectl -n {namespace} get aadcs {name}`)"))
        }
        Err(kube::Error::Api(status)) if status.is_not_found() => {
            Err(RotateError::NotFound { namespace: namespace.to_owned(), name: name.to_owned() })
        }
        Err(e) => Err(err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_namespace_slash_name() {
        assert_eq!(parse_target("team-a/contoso").unwrap(), ("team-a", "contoso"));
        for bad in ["contoso", "/contoso", "team-a/", "a/b/c"] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
        assert_eq!(annotation(true), "idpbridge.io/revoke");
        assert_eq!(annotation(false), "idpbridge.io/renew");
    }
}
