//! Reading what a connection references: its client-secret Secret and its broker (with the
//! broker's own credentials). Kubernetes API failures are errors; problems a user must fix are
//! [`Problem`]s with a condition reason.

use std::collections::BTreeMap;

use k8s_openapi::{ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::LabelSelector};
use kube::{
    Api, Client, ResourceExt,
    core::{ParseExpressionError, Selector, SelectorExt},
};

use super::{
    error::Error,
    lookups::Lookups,
    observation::{Expiry, Problem},
};
use crate::{
    broker::management_host,
    broker_hosts::BrokerHosts,
    config::Config,
    crd::{
        BrokerProvider, EXPIRES_AT_ANNOTATION,
        broker::CredentialKeys,
        conditions::Reason,
        connection::{AzureAdConnection, BrokerRefKind, ExpirySource, ValidationMode, is_guid},
    },
    secret::SecretValue,
};

/// The client secret from a Secret's data, checked for the mistakes people make.
pub fn secret_from_data(
    secret_name: &str,
    key: &str,
    data: Option<&BTreeMap<String, ByteString>>,
    mode: ValidationMode,
) -> Result<SecretValue, Problem> {
    let bytes = data
        .and_then(|d| d.get(key))
        .ok_or_else(|| Problem::new(Reason::SecretKeyNotFound, format!("Secret {secret_name} has no key {key:?}")))?;
    let text = std::str::from_utf8(&bytes.0)
        .map_err(|_| Problem::new(Reason::SecretNotUtf8, format!("Secret {secret_name} key {key:?} is not UTF-8 text")))?;
    // A trailing newline from `echo` or a file is never part of an Azure secret.
    let text = text.trim();
    if text.is_empty() {
        return Err(Problem::new(Reason::SecretEmpty, format!("Secret {secret_name} key {key:?} is empty")));
    }
    if mode != ValidationMode::None && is_guid(text) {
        return Err(Problem::new(
            Reason::SecretIdInsteadOfValue,
            format!(
                "Secret {secret_name} key {key:?} holds a GUID: that is the secret's ID, not its value. Copy the Value column shown when the secret was created"
            ),
        ));
    }
    Ok(SecretValue::new(text))
}

/// The expiry date from the Secret's annotation, per `expiry.source`.
pub fn expiry_from_annotations(source: ExpirySource, annotations: &BTreeMap<String, String>) -> Expiry {
    match source {
        ExpirySource::None => Expiry::Disabled,
        ExpirySource::Graph => Expiry::Unknown("Microsoft Graph is asked for the expiry once Azure accepts the secret".into()),
        ExpirySource::Annotation | ExpirySource::Auto => match annotations.get(EXPIRES_AT_ANNOTATION) {
            None => Expiry::Unknown(format!("no expiry date known: set the {EXPIRES_AT_ANNOTATION} annotation (RFC 3339) on the Secret")),
            Some(text) => match text.trim().parse::<jiff::Timestamp>() {
                Ok(expires_at) => Expiry::Known { expires_at, source: "Annotation", key_id: None, note: None },
                Err(_) => Expiry::Invalid(Problem::new(
                    Reason::InvalidExpiryAnnotation,
                    format!("annotation {EXPIRES_AT_ANNOTATION} is {text:?}, not an RFC 3339 time such as 2027-01-31T00:00:00Z"),
                )),
            },
        },
    }
}

/// The connection's Secret: the value, or the problem, and the Secret's annotations.
pub async fn client_secret(
    lookups: &Lookups,
    conn: &AzureAdConnection,
) -> Result<(Result<SecretValue, Problem>, BTreeMap<String, String>), Error> {
    let namespace = conn.namespace().unwrap_or_default();
    let reference = &conn.spec.azure.client_secret_ref;
    let Some(secret) = lookups.secret(&namespace, &reference.name).await? else {
        return Ok((
            Err(Problem::new(Reason::SecretNotFound, format!("Secret {namespace}/{} not found", reference.name))),
            BTreeMap::new(),
        ));
    };
    let value = secret_from_data(&reference.name, &reference.key, secret.data.as_ref(), conn.spec.validation.mode);
    Ok((value, secret.annotations().clone()))
}

/// A broker object resolved to its provider block and the operator's credentials for it.
#[derive(Debug, Clone)]
pub struct ResolvedBroker {
    pub uid: String,
    pub generation: i64,
    pub provider: BrokerProvider,
    pub rate_limit: Option<(u32, u32)>,
    pub client_id: String,
    pub client_secret: SecretValue,
}

/// Finds the connection's broker, checks it may be used from the connection's namespace and is
/// of the connection's type and on an allowed host, and reads its credentials.
pub async fn broker(lookups: &Lookups, config: &Config, conn: &AzureAdConnection) -> Result<Result<ResolvedBroker, Problem>, Error> {
    let operator_namespace = config.namespace.as_str();
    let namespace = conn.namespace().unwrap_or_default();
    let reference = &conn.spec.broker_ref;
    let (meta, provider, rate_limit, secret_namespace) = match reference.kind {
        BrokerRefKind::IdentityBroker => {
            let Some(b) = lookups.identity_broker(&namespace, &reference.name).await? else {
                return Ok(Err(Problem::new(Reason::BrokerNotFound, format!("IdentityBroker {namespace}/{} not found", reference.name))));
            };
            (b.metadata.clone(), b.spec.provider(), b.spec.rate_limit.clone(), namespace.clone())
        }
        BrokerRefKind::ClusterIdentityBroker => {
            let Some(b) = lookups.cluster_broker(&reference.name).await? else {
                return Ok(Err(Problem::new(Reason::BrokerNotFound, format!("ClusterIdentityBroker {} not found", reference.name))));
            };
            if let Some(selector) = &b.spec.allowed_namespaces {
                let labels = lookups.namespace_labels(&namespace).await?;
                let refusal = match namespace_allowed(selector, &labels) {
                    Ok(true) => None,
                    Ok(false) => {
                        Some(format!("ClusterIdentityBroker {} does not allow namespace {namespace} (allowedNamespaces)", reference.name))
                    }
                    Err(e) => Some(format!("ClusterIdentityBroker {} has an invalid allowedNamespaces selector: {e}", reference.name)),
                };
                if let Some(message) = refusal {
                    return Ok(Err(Problem::new(Reason::BrokerNotAllowed, message)));
                }
            }
            (b.metadata.clone(), b.spec.provider(), b.spec.rate_limit.clone(), operator_namespace.to_owned())
        }
    };
    let Some(provider) = provider else {
        return Ok(Err(Problem::new(Reason::BrokerTypeMismatch, format!("broker {} has no provider block", reference.name))));
    };
    let wanted = conn.spec.broker_type();
    if provider.type_name() != wanted {
        return Ok(Err(Problem::new(
            Reason::BrokerTypeMismatch,
            format!("broker {} is of type {}, but the connection has a {wanted} block", reference.name, provider.type_name()),
        )));
    }
    // Before the credentials are read: nothing about them may go to a host the platform refused.
    if let Err(problem) = host_allowed(&config.broker_hosts, &reference.name, &provider) {
        return Ok(Err(problem));
    }
    let secret = lookups.secret(&secret_namespace, provider.credentials_secret()).await?;
    let credentials = match credentials_from(secret.as_deref(), &secret_namespace, &provider) {
        Ok(c) => c,
        Err(problem) => return Ok(Err(problem)),
    };
    Ok(Ok(ResolvedBroker {
        uid: meta.uid.unwrap_or_default(),
        generation: meta.generation.unwrap_or_default(),
        provider,
        rate_limit: rate_limit.map(|r| (r.requests_per_second, r.burst)),
        client_id: credentials.0,
        client_secret: credentials.1,
    }))
}

/// The operator's management credentials for a broker, read from the API server.
pub async fn credentials(
    client: &Client,
    secret_namespace: &str,
    provider: &BrokerProvider,
) -> Result<Result<(String, SecretValue), Problem>, Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), secret_namespace);
    let secret = secrets.get_opt(provider.credentials_secret()).await.map_err(Error::ReadSecret)?;
    Ok(credentials_from(secret.as_ref(), secret_namespace, provider))
}

/// The operator's management credentials for a broker from its credential Secret (None: not
/// found): (client id, secret) for client credentials, or ("", token) for an API token.
pub fn credentials_from(
    secret: Option<&Secret>,
    secret_namespace: &str,
    provider: &BrokerProvider,
) -> Result<(String, SecretValue), Problem> {
    let secret_name = provider.credentials_secret();
    let Some(secret) = secret else {
        return Err(Problem::new(
            Reason::BrokerCredentialsMissing,
            format!("broker credentials Secret {secret_namespace}/{secret_name} not found"),
        ));
    };
    let read = |key: &str| {
        secret_from_data(secret_name, key, secret.data.as_ref(), ValidationMode::None)
            .map_err(|p| Problem::new(Reason::BrokerCredentialsMissing, format!("broker credentials: {}", p.message)))
    };
    match provider.credential_keys() {
        CredentialKeys::ClientCredentials { id_key, secret_key } => {
            read(id_key).and_then(|id| Ok((id.expose().to_owned(), read(secret_key)?)))
        }
        CredentialKeys::Token { key } => read(key).map(|token| (String::new(), token)),
    }
}

/// Whether the operator may call the management host `provider` names (the spec's host, before any
/// operator-level endpoint override). A spec naming no usable host passes: its client refuses to
/// send anything and says why.
pub fn host_allowed(hosts: &BrokerHosts, broker_name: &str, provider: &BrokerProvider) -> Result<(), Problem> {
    match management_host(provider) {
        Ok(host) if !hosts.allows(&host) => Err(Problem::new(
            Reason::BrokerHostNotAllowed,
            format!(
                "broker {broker_name} names the host {host}, which the operator's allowed broker hosts (--broker-hosts) do not include; nothing was sent to it. The platform team adds self-hosted or custom hosts"
            ),
        )),
        _ => Ok(()),
    }
}

/// Whether a ClusterIdentityBroker's `allowedNamespaces` admits a namespace with `labels`. A
/// selector kube-core cannot parse (an unknown operator, `In` without values) is an error.
pub fn namespace_allowed(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> Result<bool, ParseExpressionError> {
    Ok(Selector::try_from(selector.clone())?.matches(labels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::IdentityBroker;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn data(key: &str, value: &[u8]) -> BTreeMap<String, ByteString> {
        BTreeMap::from([(key.to_owned(), ByteString(value.to_vec()))])
    }

    #[test]
    fn secret_mistakes_get_specific_reasons() {
        let mode = ValidationMode::ClientCredentials;
        let reason = |d: Option<&BTreeMap<String, ByteString>>| secret_from_data("s", "client-secret", d, mode).unwrap_err().reason;
        assert_eq!(reason(None), Reason::SecretKeyNotFound);
        assert_eq!(reason(Some(&data("other", b"x"))), Reason::SecretKeyNotFound);
        assert_eq!(reason(Some(&data("client-secret", b"  \n"))), Reason::SecretEmpty);
        assert_eq!(reason(Some(&data("client-secret", &[0xff, 0xfe, 0x00]))), Reason::SecretNotUtf8);
        assert_eq!(reason(Some(&data("client-secret", b"6f5e2a39-0a42-4a4e-9a55-4f2a3cfe2f0b"))), Reason::SecretIdInsteadOfValue);
        let ok = secret_from_data("s", "client-secret", Some(&data("client-secret", b"abc8Q~real-value\n")), mode).unwrap();
        assert_eq!(ok.expose(), "abc8Q~real-value");
        // Native setups push any value, a GUID included.
        assert!(
            secret_from_data(
                "s",
                "client-secret",
                Some(&data("client-secret", b"6f5e2a39-0a42-4a4e-9a55-4f2a3cfe2f0b")),
                ValidationMode::None
            )
            .is_ok()
        );
    }

    #[test]
    fn problem_messages_never_hold_the_value() {
        let p = secret_from_data("s", "k", Some(&data("k", b"6f5e2a39-0a42-4a4e-9a55-4f2a3cfe2f0b")), ValidationMode::ClientCredentials)
            .unwrap_err();
        assert!(!p.message.contains("6f5e2a39"));
    }

    #[test]
    fn expiry_annotation() {
        let ann = |v: &str| BTreeMap::from([(EXPIRES_AT_ANNOTATION.to_owned(), v.to_owned())]);
        assert!(matches!(
            expiry_from_annotations(ExpirySource::Annotation, &ann("2027-01-31T00:00:00Z")),
            Expiry::Known { source: "Annotation", .. }
        ));
        assert!(
            matches!(expiry_from_annotations(ExpirySource::Auto, &ann("next tuesday")), Expiry::Invalid(p) if p.reason == Reason::InvalidExpiryAnnotation)
        );
        assert!(matches!(expiry_from_annotations(ExpirySource::Annotation, &BTreeMap::new()), Expiry::Unknown(_)));
        assert_eq!(expiry_from_annotations(ExpirySource::None, &ann("2027-01-31T00:00:00Z")), Expiry::Disabled);
    }

    #[test]
    fn selectors() {
        let labels = BTreeMap::from([("team".to_owned(), "a".to_owned())]);
        let sel = |labels: Option<BTreeMap<String, String>>, exprs: Option<Vec<LabelSelectorRequirement>>| LabelSelector {
            match_labels: labels,
            match_expressions: exprs,
        };
        let allowed = |selector: &LabelSelector| namespace_allowed(selector, &labels).unwrap();
        assert!(allowed(&sel(None, None)));
        assert!(allowed(&sel(Some(labels.clone()), None)));
        assert!(!allowed(&sel(Some(BTreeMap::from([("team".into(), "b".into())])), None)));
        let req = |op: &str, values: &[&str]| LabelSelectorRequirement {
            key: "team".into(),
            operator: op.into(),
            values: Some(values.iter().map(|s| s.to_string()).collect()),
        };
        assert!(allowed(&sel(None, Some(vec![req("In", &["a", "b"])]))));
        assert!(!allowed(&sel(None, Some(vec![req("NotIn", &["a"])]))));
        assert!(allowed(&sel(None, Some(vec![req("Exists", &[])]))));
        assert!(!allowed(&sel(None, Some(vec![req("DoesNotExist", &[])]))));
        assert!(!allowed(&sel(Some(labels.clone()), Some(vec![req("DoesNotExist", &[])]))), "labels and expressions must all hold");
        assert!(namespace_allowed(&sel(None, Some(vec![req("Near", &["a"])])), &labels).is_err(), "unknown operators are refused");
    }

    #[test]
    fn broker_hosts_are_checked_on_the_host_each_provider_calls() {
        let provider = |spec: serde_json::Value| {
            serde_json::from_value::<IdentityBroker>(serde_json::json!({
                "apiVersion": "idpbridge.io/v1alpha1", "kind": "IdentityBroker", "metadata": {"name": "b"}, "spec": spec,
            }))
            .unwrap()
            .spec
            .provider()
            .unwrap()
        };
        let creds = serde_json::json!({"name": "m2m"});
        let token = serde_json::json!({"name": "token"});
        let auth0 = |domain: &str| provider(serde_json::json!({"auth0": {"domain": domain, "credentialsSecretRef": creds}}));
        let logto = |endpoint: &str| provider(serde_json::json!({"logto": {"endpoint": endpoint, "credentialsSecretRef": creds}}));
        let defaults = BrokerHosts::default();
        let reason = |hosts: &BrokerHosts, p: &BrokerProvider| host_allowed(hosts, "b", p).err().map(|problem| problem.reason);
        assert_eq!(reason(&defaults, &auth0("Acme.EU.auth0.com")), None);
        assert_eq!(reason(&defaults, &logto("https://abc123.logto.app")), None);
        assert_eq!(
            reason(&defaults, &provider(serde_json::json!({"cloudflare": {"accountId": "0".repeat(32), "apiTokenSecretRef": token}}))),
            None
        );
        for region in ["us", "eu", "au"] {
            let unified = provider(serde_json::json!({"unified": {"region": region, "apiTokenSecretRef": token}}));
            assert_eq!(reason(&defaults, &unified), None, "{region}");
        }
        for refused in
            [auth0("evil.internal"), logto("https://10.0.0.1:8443"), logto("https://[::1]"), logto("https://abc123.logto.app:8443")]
        {
            assert_eq!(reason(&defaults, &refused), Some(Reason::BrokerHostNotAllowed), "{refused:?}");
        }
        let problem = host_allowed(&defaults, "b", &logto("https://10.0.0.1:8443")).unwrap_err();
        assert!(problem.message.contains("10.0.0.1:8443") && problem.message.contains("--broker-hosts"), "{}", problem.message);
        let custom: BrokerHosts = "10.0.0.1:8443,auth.corp.example".parse().unwrap();
        assert_eq!(reason(&custom, &logto("https://10.0.0.1:8443")), None, "listed exactly");
        assert_eq!(reason(&custom, &auth0("auth.corp.example")), None);
        assert_eq!(reason(&custom, &auth0("acme.eu.auth0.com")), Some(Reason::BrokerHostNotAllowed));
    }
}
