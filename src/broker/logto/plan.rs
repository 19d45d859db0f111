//! Pure Logto planning: the desired `azuread-universal` connector config, whose connector a
//! Logto answer is, the diff against what Logto reports, and the bodies of create and update.
//!
//! Logto returns `config.clientSecret` in plain text, so every field is compared directly; the
//! recorded fingerprint is only a fallback for a secret that comes back absent or masked. A PATCH
//! replaces `config` wholesale, so the update body is always the complete config.

use serde_json::{Map, Value, json};

use crate::{
    azure::cloud,
    broker::AzureCredentials,
    crd::connection::{AzureCloud, LogtoConnectionSpec, SignInAudience},
    secret::SecretValue,
};

/// The connector factory of Logto's Microsoft social connector.
pub const FACTORY_ID: &str = "azuread-universal";
/// The social target the factory signs in to; Logto allows one connector per target and platform.
pub const TARGET: &str = "azuread";
/// Config keys the operator owns. Any other key Logto reports is carried back on update.
pub const MANAGED_CONFIG: &[&str] = &["clientId", "clientSecret", "tenantId", "cloudInstance", "prompts", "scopes"];

/// The connector as it should be.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredConnector {
    /// The fixed database id (`logto.connectorId`), if the spec sets one.
    pub id: Option<String>,
    /// Managed config but the secret; a managed key absent here is removed from Logto's config.
    pub config: Map<String, Value>,
    /// `config.clientSecret`, held apart so that `Debug` redacts it; only the request bodies
    /// show it.
    pub client_secret: SecretValue,
}

impl DesiredConnector {
    /// The managed config with the client secret, for a request body.
    fn config_with_secret(&self) -> Map<String, Value> {
        let mut config = self.config.clone();
        config.insert("clientSecret".into(), json!(self.client_secret.expose()));
        config
    }
}

/// `https://{login host}` of the named cloud: Entra ID's authority host, never typed by a user.
pub fn cloud_instance(cloud: AzureCloud) -> String {
    format!("https://{}", cloud::hosts(cloud).login)
}

/// The `tenantId` the connector builds its authority from: the home tenant for single-tenant apps,
/// else the multi-tenant alias matching the app registration's account type.
pub fn tenant_id(azure: &AzureCredentials<'_>) -> String {
    match azure.audience {
        SignInAudience::SingleTenant => azure.tenant_id.unwrap_or(azure.tenant).to_owned(),
        SignInAudience::Organizations => "organizations".into(),
        SignInAudience::Common => "common".into(),
        SignInAudience::Consumers => "consumers".into(),
    }
}

/// Builds the desired connector from the spec and the validated credentials. Empty prompts and
/// scopes are left out: Logto's `cleanDeep` drops them anyway, so sending them would show as drift.
pub fn desired(spec: &LogtoConnectionSpec, azure: &AzureCredentials<'_>) -> DesiredConnector {
    let mut config = Map::new();
    config.insert("clientId".into(), json!(azure.client_id));
    config.insert("tenantId".into(), json!(tenant_id(azure)));
    config.insert("cloudInstance".into(), json!(cloud_instance(azure.cloud)));
    let mut prompts: Vec<Value> = Vec::new();
    for prompt in &spec.prompts {
        let prompt = serde_json::to_value(prompt).expect("a prompt serializes to a string");
        if !prompts.contains(&prompt) {
            prompts.push(prompt);
        }
    }
    if !prompts.is_empty() {
        config.insert("prompts".into(), Value::Array(prompts));
    }
    if let Some(scopes) = spec.scopes.as_deref().map(normalize_scopes).filter(|s| !s.is_empty()) {
        config.insert("scopes".into(), json!(scopes));
    }
    DesiredConnector { id: spec.connector_id.clone(), config, client_secret: azure.secret.clone() }
}

/// Space-separated scopes with runs of whitespace collapsed, as Logto splits them.
fn normalize_scopes(scopes: &str) -> String {
    scopes.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whose connector a Logto answer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// `azuread-universal` configured with this application's client id.
    Ours,
    /// `azuread-universal` configured for another application (or for none).
    OtherClient(String),
    /// A connector of another factory.
    OtherFactory(String),
}

pub fn owner(connector: &Value, client_id: &str) -> Owner {
    let factory = connector.get("connectorId").and_then(Value::as_str).unwrap_or_default();
    if factory != FACTORY_ID {
        return Owner::OtherFactory(factory.to_owned());
    }
    match connector.get("config").and_then(|c| c.get("clientId")).and_then(Value::as_str) {
        Some(held) if held.eq_ignore_ascii_case(client_id) => Owner::Ours,
        held => Owner::OtherClient(held.unwrap_or_default().to_owned()),
    }
}

/// The body of `POST /api/connectors`. Never `metadata`: Logto refuses it for this non-standard
/// connector.
pub fn create_body(desired: &DesiredConnector) -> Value {
    let mut body = json!({ "connectorId": FACTORY_ID, "config": desired.config_with_secret() });
    if let Some(id) = &desired.id {
        body["id"] = json!(id);
    }
    body
}

/// Logto's masked-value rule: Logto returns `config.clientSecret` in plain text (brokers.md §5,
/// comparison table: "Secret readable back: yes"); an empty value or one of only `*`/`•` is taken
/// for a mask, never for the secret.
fn looks_masked(value: &str) -> bool {
    value.is_empty() || value.chars().all(|c| c == '*' || c == '•')
}

/// An absent value, or one Logto's `cleanDeep` would drop (empty string or array, null).
fn is_empty(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::Object(o)) => o.is_empty(),
        Some(_) => false,
    }
}

/// Names of the config fields where Logto differs from `desired` (never their values).
pub fn diff(desired: &DesiredConnector, observed: &Value, synced_fingerprint: Option<&str>, fingerprint: &str) -> Vec<String> {
    let empty = Map::new();
    let config = observed.get("config").and_then(Value::as_object).unwrap_or(&empty);
    let mut differences = Vec::new();
    for key in MANAGED_CONFIG {
        let (want, held) = (desired.config.get(*key), config.get(*key));
        let differs = match *key {
            "clientSecret" => match held.and_then(Value::as_str) {
                Some(held) if !looks_masked(held) => held != desired.client_secret.expose(),
                // Absent or masked: trust the fingerprint of what was last pushed.
                _ => synced_fingerprint != Some(fingerprint),
            },
            "scopes" => {
                want.and_then(Value::as_str) != held.and_then(Value::as_str).map(normalize_scopes).as_deref().filter(|s| !s.is_empty())
            }
            _ if is_empty(want) => !is_empty(held),
            _ => want != held,
        };
        if differs {
            differences.push(format!("config.{key}"));
        }
    }
    differences
}

/// The body of `PATCH /api/connectors/{id}`: the complete config, because Logto replaces `config`
/// wholesale and validates it against the full guard. Keys the operator does not manage are carried
/// back as Logto reported them.
pub fn update_body(desired: &DesiredConnector, observed: &Value) -> Value {
    let mut config = observed.get("config").and_then(Value::as_object).cloned().unwrap_or_default();
    let managed = desired.config_with_secret();
    for key in MANAGED_CONFIG {
        match managed.get(*key) {
            Some(value) => config.insert((*key).to_owned(), value.clone()),
            None => config.remove(*key),
        };
    }
    json!({ "config": config })
}

/// The redirect URI to register in Entra ID for connector `id` of the Logto tenant at `endpoint`
/// (`https://HOST[:PORT]`).
pub fn callback_url(endpoint: &str, id: &str) -> String {
    format!("{}/callback/{id}", endpoint.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::connection::LogtoPrompt;

    const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
    const CLIENT: &str = "11111111-2222-3333-4444-555555555555";

    fn creds<'a>(secret: &'a SecretValue, cloud: AzureCloud, audience: SignInAudience) -> AzureCredentials<'a> {
        AzureCredentials {
            cloud,
            tenant: "contoso.onmicrosoft.com",
            tenant_id: Some(TENANT),
            client_id: CLIENT,
            secret,
            fingerprint: "fp-1",
            audience,
        }
    }

    fn single(secret: &SecretValue) -> AzureCredentials<'_> {
        creds(secret, AzureCloud::AzurePublic, SignInAudience::SingleTenant)
    }

    fn observed_from(d: &DesiredConnector) -> Value {
        json!({"id": "abc", "connectorId": FACTORY_ID, "target": TARGET, "config": d.config_with_secret(), "metadata": {}})
    }

    #[test]
    fn desired_config_is_complete_and_derived() {
        let secret = SecretValue::new("s3cret-value");
        let d = desired(&LogtoConnectionSpec::default(), &single(&secret));
        assert_eq!(
            Value::Object(d.config_with_secret()),
            json!({"clientId": CLIENT, "clientSecret": "s3cret-value", "tenantId": TENANT, "cloudInstance": "https://login.microsoftonline.com"})
        );
        assert_eq!(d.id, None);
        assert_eq!(create_body(&d)["config"]["clientSecret"], "s3cret-value");
        assert_eq!(update_body(&d, &json!({}))["config"]["clientSecret"], "s3cret-value");
        assert!(!format!("{d:?}").contains("s3cret-value"), "Debug of the plan redacts the secret: {d:?}");
    }

    #[test]
    fn cloud_instance_follows_the_cloud() {
        assert_eq!(cloud_instance(AzureCloud::AzurePublic), "https://login.microsoftonline.com");
        assert_eq!(cloud_instance(AzureCloud::AzureUSGovernment), "https://login.microsoftonline.us");
        assert_eq!(cloud_instance(AzureCloud::AzureChina), "https://login.partner.microsoftonline.cn");
    }

    #[test]
    fn tenant_id_follows_the_audience() {
        let secret = SecretValue::new("v");
        let of = |audience| tenant_id(&creds(&secret, AzureCloud::AzurePublic, audience));
        assert_eq!(of(SignInAudience::SingleTenant), TENANT);
        assert_eq!(of(SignInAudience::Organizations), "organizations");
        assert_eq!(of(SignInAudience::Common), "common");
        assert_eq!(of(SignInAudience::Consumers), "consumers");
        let mut unresolved = single(&secret);
        unresolved.tenant_id = None;
        assert_eq!(tenant_id(&unresolved), "contoso.onmicrosoft.com", "falls back to the tenant as written");
    }

    #[test]
    fn prompts_and_scopes_are_sent_only_when_set() {
        let secret = SecretValue::new("v");
        let spec = LogtoConnectionSpec {
            connector_id: Some("abc123".into()),
            prompts: vec![LogtoPrompt::SelectAccount, LogtoPrompt::Consent, LogtoPrompt::SelectAccount],
            scopes: Some("  Mail.Read   offline_access ".into()),
        };
        let d = desired(&spec, &single(&secret));
        assert_eq!(d.config["prompts"], json!(["select_account", "consent"]));
        assert_eq!(d.config["scopes"], "Mail.Read offline_access");
        assert_eq!(d.id.as_deref(), Some("abc123"));
        let body = create_body(&d);
        assert_eq!((body["connectorId"].as_str(), body["id"].as_str()), (Some(FACTORY_ID), Some("abc123")));
        assert!(body.get("metadata").is_none());

        let blank = LogtoConnectionSpec { scopes: Some("   ".into()), ..Default::default() };
        let d = desired(&blank, &single(&secret));
        assert!(!d.config.contains_key("scopes") && !d.config.contains_key("prompts"));
        assert!(create_body(&d).get("id").is_none());
    }

    #[test]
    fn ownership() {
        let ours = json!({"connectorId": FACTORY_ID, "config": {"clientId": CLIENT.to_uppercase()}});
        assert_eq!(owner(&ours, CLIENT), Owner::Ours);
        let theirs = json!({"connectorId": FACTORY_ID, "config": {"clientId": "other"}});
        assert_eq!(owner(&theirs, CLIENT), Owner::OtherClient("other".into()));
        let empty = json!({"connectorId": FACTORY_ID, "config": {}});
        assert_eq!(owner(&empty, CLIENT), Owner::OtherClient(String::new()));
        let google = json!({"connectorId": "google-universal", "config": {"clientId": CLIENT}});
        assert_eq!(owner(&google, CLIENT), Owner::OtherFactory("google-universal".into()));
    }

    #[test]
    fn steady_state_has_no_differences() {
        let secret = SecretValue::new("s3cret-value");
        let spec = LogtoConnectionSpec { prompts: vec![LogtoPrompt::Login], scopes: Some("Mail.Read".into()), ..Default::default() };
        let d = desired(&spec, &single(&secret));
        assert!(diff(&d, &observed_from(&d), None, "fp-1").is_empty());
        // Logto's cleanDeep leaves empty values out; empty and absent are the same.
        let plain = desired(&LogtoConnectionSpec::default(), &single(&secret));
        let mut observed = observed_from(&plain);
        observed["config"]["prompts"] = json!([]);
        observed["config"]["scopes"] = json!("");
        assert!(diff(&plain, &observed, None, "fp-1").is_empty());
    }

    #[test]
    fn differences_are_named_without_values() {
        let old = SecretValue::new("old-secret");
        let new = SecretValue::new("new-secret");
        let before = desired(&LogtoConnectionSpec::default(), &single(&old));
        let after = desired(&LogtoConnectionSpec::default(), &single(&new));
        assert_eq!(diff(&after, &observed_from(&before), Some("fp-0"), "fp-1"), ["config.clientSecret"]);

        let mut observed = observed_from(&after);
        observed["config"]["tenantId"] = json!("common");
        observed["config"]["cloudInstance"] = json!("https://login.microsoftonline.us");
        observed["config"]["prompts"] = json!(["login"]);
        observed["config"]["scopes"] = json!("Files.Read");
        observed["config"]["extra"] = json!("kept, not managed");
        assert_eq!(diff(&after, &observed, None, "fp-1"), ["config.tenantId", "config.cloudInstance", "config.prompts", "config.scopes"]);
    }

    #[test]
    fn absent_or_masked_secret_falls_back_to_the_fingerprint() {
        let secret = SecretValue::new("s3cret-value");
        let d = desired(&LogtoConnectionSpec::default(), &single(&secret));
        let mut observed = observed_from(&d);
        observed["config"]["clientSecret"] = json!("******");
        assert!(diff(&d, &observed, Some("fp-1"), "fp-1").is_empty());
        assert_eq!(diff(&d, &observed, Some("fp-0"), "fp-1"), ["config.clientSecret"]);
        observed["config"].as_object_mut().unwrap().remove("clientSecret");
        assert_eq!(diff(&d, &observed, None, "fp-1"), ["config.clientSecret"]);
    }

    #[test]
    fn update_sends_the_complete_config() {
        let secret = SecretValue::new("s3cret-value");
        let d = desired(&LogtoConnectionSpec::default(), &single(&secret));
        let mut observed = observed_from(&d);
        observed["config"]["clientSecret"] = json!("stale");
        observed["config"]["prompts"] = json!(["login"]);
        observed["config"]["futureOption"] = json!(true);
        let body = update_body(&d, &observed);
        assert_eq!(
            body,
            json!({"config": {
                "clientId": CLIENT, "clientSecret": "s3cret-value", "tenantId": TENANT,
                "cloudInstance": "https://login.microsoftonline.com", "futureOption": true,
            }})
        );
        assert!(body.get("metadata").is_none() && body.get("connectorId").is_none());
    }

    #[test]
    fn callback_urls() {
        assert_eq!(callback_url("https://auth.example.com", "abc"), "https://auth.example.com/callback/abc");
        assert_eq!(callback_url("https://auth.example.com:8443/", "abc"), "https://auth.example.com:8443/callback/abc");
    }
}
