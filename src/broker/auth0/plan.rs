//! Pure Auth0 planning: the desired `waad` connection, the diff against what Auth0 reports, and
//! the read-merge-write of `options` that Auth0's replace-on-PATCH semantics require.

use serde_json::{Map, Value, json};

use crate::{
    broker::{AzureCredentials, BrokerError, ownership::MARKER_KEY},
    crd::connection::{Auth0ConnectionSpec, Auth0UserIdAttribute, SignInAudience, is_dns_name},
    secret::SecretValue,
};

/// Option keys the operator owns. Every other key in `options` (server-set fields such as
/// `thumbprints`, `tenantId`, `app_domain`, or toggles set in the dashboard) is carried back as is.
pub const MANAGED_OPTIONS: &[&str] = &[
    "client_id",
    "client_secret",
    "tenant_domain",
    "domain",
    "identity_api",
    "waad_protocol",
    "use_wsfed",
    "useCommonEndpoint",
    "userid_attribute",
    "api_enable_users",
    "basic_profile",
    "ext_profile",
    "ext_groups",
    "ext_nested_groups",
    "domain_aliases",
    "app_id",
];

/// The connection as it should be.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredConnection {
    pub name: String,
    pub display_name: String,
    pub show_as_button: Option<bool>,
    /// Managed options but the secret; a key absent here is removed from Auth0's options.
    pub options: Map<String, Value>,
    /// `options.client_secret`, held apart so that `Debug` redacts it; only the request bodies
    /// show it.
    pub client_secret: SecretValue,
    pub enabled_clients: Vec<String>,
    /// The owner marker, kept in `metadata` under [`MARKER_KEY`].
    pub owner: String,
}

/// Auth0 keeps at most this many `metadata` keys on a connection.
const MAX_METADATA_KEYS: usize = 10;

impl DesiredConnection {
    /// The managed options with the client secret, for a request body.
    fn options_with_secret(&self) -> Map<String, Value> {
        let mut options = self.options.clone();
        options.insert("client_secret".into(), json!(self.client_secret.expose()));
        options
    }
}

/// Builds the desired connection from the spec, the validated credentials and the owner marker.
pub fn desired(spec: &Auth0ConnectionSpec, azure: &AzureCredentials<'_>, owner: &str) -> Result<DesiredConnection, BrokerError> {
    let common_endpoint = match azure.audience {
        SignInAudience::SingleTenant => false,
        SignInAudience::Organizations | SignInAudience::Common => true,
        SignInAudience::Consumers => {
            return Err(BrokerError::Unsupported(
                "Auth0's waad connection signs in work or school accounts only; signInAudience Consumers (personal Microsoft accounts only) cannot be expressed. Use Microsoft's social connection in Auth0 for personal accounts".into(),
            ));
        }
    };
    let user_id_attribute = match (common_endpoint, spec.user_id_attribute) {
        (true, Auth0UserIdAttribute::Oid) => {
            return Err(BrokerError::Unsupported("Auth0's common endpoint requires userIdAttribute: sub".into()));
        }
        (_, Auth0UserIdAttribute::Oid) => "oid",
        (_, Auth0UserIdAttribute::Sub) => "sub",
    };
    let domain = spec.domain.clone().or_else(|| is_dns_name(azure.tenant).then(|| azure.tenant.to_owned()));
    let mut options = Map::new();
    let mut set = |k: &str, v: Value| {
        options.insert(k.to_owned(), v);
    };
    set("client_id", json!(azure.client_id));
    set("tenant_domain", json!(domain.as_deref().unwrap_or(azure.tenant)));
    if let Some(domain) = &domain {
        set("domain", json!(domain));
    }
    set("identity_api", json!(spec.identity_api.as_str()));
    set("waad_protocol", json!("openid-connect"));
    set("use_wsfed", json!(false));
    set("useCommonEndpoint", json!(common_endpoint));
    set("userid_attribute", json!(user_id_attribute));
    set("api_enable_users", json!(spec.api_enable_users));
    set("basic_profile", json!(true));
    set("ext_profile", json!(spec.ext_profile));
    set("ext_groups", json!(spec.ext_groups));
    set("ext_nested_groups", json!(spec.ext_nested_groups));
    set("domain_aliases", json!(spec.domain_aliases));
    if let Some(app_id) = &spec.app_id_uri {
        set("app_id", json!(app_id));
    }
    let mut enabled_clients = spec.enabled_clients.clone();
    enabled_clients.sort();
    enabled_clients.dedup();
    Ok(DesiredConnection {
        name: spec.name.clone(),
        display_name: spec.display_name.clone().unwrap_or_else(|| spec.name.clone()),
        show_as_button: spec.show_as_button,
        options,
        client_secret: azure.secret.clone(),
        enabled_clients,
        owner: owner.to_owned(),
    })
}

/// The owner marker a connection holds in its `metadata`, if any.
pub fn marker(connection: &Value) -> Option<&str> {
    connection.get("metadata").and_then(|m| m.get(MARKER_KEY)).and_then(Value::as_str)
}

/// The body of `POST /api/v2/connections`.
pub fn create_body(desired: &DesiredConnection) -> Value {
    let mut body = json!({
        "name": desired.name,
        "strategy": "waad",
        "display_name": desired.display_name,
        "options": desired.options_with_secret(),
        "metadata": { MARKER_KEY: desired.owner },
    });
    if let Some(show) = desired.show_as_button {
        body["show_as_button"] = json!(show);
    }
    body
}

/// How the secret Auth0 holds compares with the desired one.
fn secret_differs(
    desired: &DesiredConnection,
    observed_options: &Map<String, Value>,
    synced_fingerprint: Option<&str>,
    fingerprint: &str,
) -> bool {
    match observed_options.get("client_secret").and_then(Value::as_str) {
        // Auth0 returns the secret in plaintext today; compare it when it looks real.
        Some(held) if !looks_masked(held) => held != desired.client_secret.expose(),
        // Missing or masked: trust the fingerprint of what was last pushed.
        _ => synced_fingerprint != Some(fingerprint),
    }
}

/// Auth0's masked-value rule: Auth0 returns `options.client_secret` in plain text today, and
/// whether it will start masking it is unconfirmed (brokers.md §1.6); an empty value or one of
/// only `*`/`•` is taken for a mask, never for the secret.
fn looks_masked(value: &str) -> bool {
    value.is_empty() || value.chars().all(|c| c == '*' || c == '•')
}

/// Names of the fields where Auth0 differs from `desired` (never their values).
pub fn diff(desired: &DesiredConnection, observed: &Value, synced_fingerprint: Option<&str>, fingerprint: &str) -> Vec<String> {
    let empty = Map::new();
    let observed_options = observed.get("options").and_then(Value::as_object).unwrap_or(&empty);
    let mut differences = Vec::new();
    if observed.get("display_name").and_then(Value::as_str) != Some(desired.display_name.as_str()) {
        differences.push("display_name".to_owned());
    }
    if let Some(show) = desired.show_as_button
        && observed.get("show_as_button").and_then(Value::as_bool) != Some(show)
    {
        differences.push("show_as_button".to_owned());
    }
    for key in MANAGED_OPTIONS {
        let differs = if *key == "client_secret" {
            secret_differs(desired, observed_options, synced_fingerprint, fingerprint)
        } else {
            desired.options.get(*key) != observed_options.get(*key)
        };
        if differs {
            differences.push(format!("options.{key}"));
        }
    }
    differences
}

/// The body of `PATCH /api/v2/connections/{id}`: the observed options with the managed keys
/// replaced, because a PATCH replaces `options` wholesale. `display_name` is always sent, since
/// Auth0 resets an omitted one to the connection name. `metadata`, replaced wholesale too, is the
/// observed one with the owner marker set; it fails when Auth0's 10 keys are taken by others.
pub fn update_body(desired: &DesiredConnection, observed: &Value) -> Result<Value, BrokerError> {
    let mut options = observed.get("options").and_then(Value::as_object).cloned().unwrap_or_default();
    let managed = desired.options_with_secret();
    for key in MANAGED_OPTIONS {
        match managed.get(*key) {
            Some(value) => options.insert((*key).to_owned(), value.clone()),
            None => options.remove(*key),
        };
    }
    // A read-only mirror of useCommonEndpoint; Auth0 derives it.
    options.remove("waad_common_endpoint");
    let mut metadata = observed.get("metadata").and_then(Value::as_object).cloned().unwrap_or_default();
    metadata.insert(MARKER_KEY.into(), json!(desired.owner));
    if metadata.len() > MAX_METADATA_KEYS {
        return Err(BrokerError::Rejected(format!(
            "the connection's metadata already holds Auth0's maximum of {MAX_METADATA_KEYS} keys, so idp-bridge cannot add its {MARKER_KEY} key; remove one"
        )));
    }
    let mut body = json!({ "display_name": desired.display_name, "options": options, "metadata": metadata });
    if let Some(show) = desired.show_as_button {
        body["show_as_button"] = json!(show);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::connection::AzureCloud;

    const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
    const CLIENT: &str = "11111111-2222-3333-4444-555555555555";

    fn creds<'a>(secret: &'a SecretValue, tenant: &'a str, audience: SignInAudience) -> AzureCredentials<'a> {
        AzureCredentials {
            cloud: AzureCloud::AzurePublic,
            tenant,
            tenant_id: Some(TENANT),
            client_id: CLIENT,
            secret,
            fingerprint: "fp-1",
            audience,
        }
    }

    const OWNER: &str = "0123456789abcdef0123456789abcdef";

    fn desired_for(spec: &Auth0ConnectionSpec, azure: &AzureCredentials<'_>) -> Result<DesiredConnection, BrokerError> {
        desired(spec, azure, OWNER)
    }

    fn spec() -> Auth0ConnectionSpec {
        Auth0ConnectionSpec { name: "contoso".into(), ext_profile: true, ..Default::default() }
    }

    #[test]
    fn desired_fills_domain_from_a_domain_tenant() {
        let secret = SecretValue::new("s3cret-value");
        let d = desired_for(&spec(), &creds(&secret, "contoso.onmicrosoft.com", SignInAudience::SingleTenant)).unwrap();
        assert_eq!(d.options["tenant_domain"], "contoso.onmicrosoft.com");
        assert_eq!(d.options["domain"], "contoso.onmicrosoft.com");
        assert_eq!(d.options["userid_attribute"], "oid");
        assert_eq!(d.options["useCommonEndpoint"], false);
        assert_eq!(d.display_name, "contoso");
        assert!(!d.options.contains_key("app_id"));
    }

    #[test]
    fn native_setup_sends_app_id_and_tenant_guid() {
        let secret = SecretValue::new("any-value");
        let spec = Auth0ConnectionSpec {
            app_id_uri: Some("api://contoso-web".into()),
            identity_api: crate::crd::connection::Auth0IdentityApi::AzureActiveDirectoryV1,
            ..spec()
        };
        let d = desired_for(&spec, &creds(&secret, TENANT, SignInAudience::SingleTenant)).unwrap();
        assert_eq!(d.options["app_id"], "api://contoso-web");
        assert_eq!(d.options["tenant_domain"], TENANT);
        assert_eq!(d.options["identity_api"], "azure-active-directory-v1.0");
        assert!(!d.options.contains_key("domain"));
    }

    #[test]
    fn audiences_map_to_the_common_endpoint() {
        let secret = SecretValue::new("v");
        let multi = Auth0ConnectionSpec { user_id_attribute: Auth0UserIdAttribute::Sub, ..spec() };
        let d = desired_for(&multi, &creds(&secret, TENANT, SignInAudience::Organizations)).unwrap();
        assert_eq!(d.options["useCommonEndpoint"], true);
        assert_eq!(d.options["userid_attribute"], "sub");
        assert!(matches!(desired_for(&spec(), &creds(&secret, TENANT, SignInAudience::Common)), Err(BrokerError::Unsupported(_))));
        assert!(matches!(desired_for(&multi, &creds(&secret, TENANT, SignInAudience::Consumers)), Err(BrokerError::Unsupported(_))));
    }

    fn observed_from(d: &DesiredConnection) -> Value {
        let mut options = d.options_with_secret();
        options.insert("thumbprints".into(), json!(["abc"]));
        options.insert("tenantId".into(), json!(TENANT));
        json!({"id": "con_1", "name": d.name, "strategy": "waad", "display_name": d.display_name, "options": options})
    }

    #[test]
    fn steady_state_has_no_differences() {
        let secret = SecretValue::new("s3cret-value");
        let d = desired_for(&spec(), &creds(&secret, TENANT, SignInAudience::SingleTenant)).unwrap();
        assert!(diff(&d, &observed_from(&d), None, "fp-1").is_empty());
    }

    #[test]
    fn a_rotated_secret_is_a_difference_named_without_its_value() {
        let old = SecretValue::new("old-secret");
        let new = SecretValue::new("new-secret");
        let before = desired_for(&spec(), &creds(&old, TENANT, SignInAudience::SingleTenant)).unwrap();
        let after = desired_for(&spec(), &creds(&new, TENANT, SignInAudience::SingleTenant)).unwrap();
        let differences = diff(&after, &observed_from(&before), Some("fp-0"), "fp-1");
        assert_eq!(differences, vec!["options.client_secret"]);
    }

    #[test]
    fn masked_secret_falls_back_to_the_fingerprint() {
        let secret = SecretValue::new("s3cret-value");
        let d = desired_for(&spec(), &creds(&secret, TENANT, SignInAudience::SingleTenant)).unwrap();
        let mut observed = observed_from(&d);
        observed["options"]["client_secret"] = json!("********");
        assert!(diff(&d, &observed, Some("fp-1"), "fp-1").is_empty());
        assert_eq!(diff(&d, &observed, Some("fp-0"), "fp-1"), vec!["options.client_secret"]);
        observed["options"].as_object_mut().unwrap().remove("client_secret");
        assert_eq!(diff(&d, &observed, None, "fp-1"), vec!["options.client_secret"]);
    }

    #[test]
    fn update_carries_back_server_fields_and_always_sends_display_name() {
        let secret = SecretValue::new("s3cret-value");
        let d = desired_for(&spec(), &creds(&secret, TENANT, SignInAudience::SingleTenant)).unwrap();
        let mut observed = observed_from(&d);
        observed["options"]["ext_groups"] = json!(true);
        observed["options"]["app_id"] = json!("stale");
        observed["options"]["strategy_version"] = json!(2);
        observed["options"]["waad_common_endpoint"] = json!(false);
        let body = update_body(&d, &observed).unwrap();
        assert_eq!(body["display_name"], "contoso");
        assert_eq!(body["options"]["thumbprints"], json!(["abc"]));
        assert_eq!(body["options"]["tenantId"], TENANT);
        assert_eq!(body["options"]["strategy_version"], 2);
        assert_eq!(body["options"]["ext_groups"], false, "managed key is overwritten");
        assert!(body["options"].get("app_id").is_none(), "managed key absent from spec is removed");
        assert!(body["options"].get("waad_common_endpoint").is_none());
        assert!(body.get("name").is_none() && body.get("strategy").is_none(), "Auth0 rejects them on PATCH");
    }

    #[test]
    fn the_owner_marker_is_written_and_other_metadata_kept() {
        let secret = SecretValue::new("s3cret-value");
        let d = desired_for(&spec(), &creds(&secret, TENANT, SignInAudience::SingleTenant)).unwrap();
        assert_eq!(create_body(&d)["metadata"], json!({ MARKER_KEY: OWNER }));
        let mut observed = observed_from(&d);
        observed["metadata"] = json!({"team": "identity"});
        assert_eq!(update_body(&d, &observed).unwrap()["metadata"], json!({"team": "identity", MARKER_KEY: OWNER}));
        assert_eq!(marker(&observed), None);
        observed["metadata"] = (0..10).map(|i| (format!("k{i}"), json!("v"))).collect::<Map<_, _>>().into();
        assert!(matches!(update_body(&d, &observed), Err(BrokerError::Rejected(m)) if m.contains("10 keys")));
        observed["metadata"][MARKER_KEY] = json!(OWNER);
        observed["metadata"].as_object_mut().unwrap().remove("k0");
        assert!(update_body(&d, &observed).is_ok(), "ours among ten");
        assert_eq!(marker(&observed), Some(OWNER));
    }

    #[test]
    fn create_body_names_the_strategy() {
        let secret = SecretValue::new("s3cret-value");
        let d = desired_for(
            &Auth0ConnectionSpec { show_as_button: Some(true), ..spec() },
            &creds(&secret, TENANT, SignInAudience::SingleTenant),
        )
        .unwrap();
        let body = create_body(&d);
        assert_eq!(body["strategy"], "waad");
        assert_eq!(body["name"], "contoso");
        assert_eq!(body["show_as_button"], true);
        assert_eq!(body["options"]["client_secret"], "s3cret-value");
        assert_eq!(update_body(&d, &json!({})).unwrap()["options"]["client_secret"], "s3cret-value");
    }

    #[test]
    fn debug_of_the_desired_connection_redacts_the_secret() {
        let secret = SecretValue::new("canary-secret-value");
        let d = desired_for(&spec(), &creds(&secret, TENANT, SignInAudience::SingleTenant)).unwrap();
        assert!(!format!("{d:?}").contains("canary-secret-value"), "{d:?}");
    }
}
