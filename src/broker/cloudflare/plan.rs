//! Pure Cloudflare planning: the desired `azureAD` identity provider, the diff against what
//! Cloudflare reports, the complete body a PUT (full replace) needs, and the SCIM credentials a
//! write response may carry.

use serde_json::{Map, Value, json};

use crate::{
    broker::{AzureCredentials, BrokerError, ScimCredentials},
    crd::connection::{AzureCloud, CloudflareConnectionSpec, SignInAudience, is_guid},
    secret::SecretValue,
};

/// The identity provider type this adapter manages.
pub const TYPE: &str = "azureAD";

/// `config` keys the operator owns whatever the spec says: a key absent from the desired config is
/// removed by the next PUT. `pkce_enabled` is owned only when the spec sets it (current schemas
/// omit it for azureAD), so an unset one is carried back as Cloudflare holds it.
pub const MANAGED_CONFIG: &[&str] =
    &["client_id", "client_secret", "directory_id", "support_groups", "conditional_access_enabled", "claims", "email_claim_name", "prompt"];

/// `config` keys Cloudflare computes; never sent back.
const COMPUTED_CONFIG: &[&str] = &["redirect_url"];

/// `scim_config` keys the operator sends. The read-only `scim_base_url` and `secret`, and the
/// deprecated `group_member_deprovision`, are never sent.
pub const MANAGED_SCIM: &[&str] = &["enabled", "user_deprovision", "seat_deprovision", "identity_update_behavior"];

const BOOL_KEYS: &[&str] =
    &["support_groups", "conditional_access_enabled", "pkce_enabled", "enabled", "user_deprovision", "seat_deprovision"];

/// The identity provider as it should be.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredProvider {
    pub name: String,
    /// Managed `config` keys but the secret.
    pub config: Map<String, Value>,
    /// `config.client_secret`, held apart so that `Debug` redacts it; only the request bodies
    /// show it.
    pub client_secret: SecretValue,
    pub scim_config: Map<String, Value>,
}

impl DesiredProvider {
    pub fn scim_enabled(&self) -> bool {
        self.scim_config.get("enabled").and_then(Value::as_bool).unwrap_or(false)
    }

    /// The managed `config` with the client secret, for a request body.
    fn config_with_secret(&self) -> Map<String, Value> {
        let mut config = self.config.clone();
        config.insert("client_secret".into(), json!(self.client_secret.expose()));
        config
    }

    /// Whether the operator owns `key` of `config`.
    fn manages(&self, key: &str) -> bool {
        MANAGED_CONFIG.contains(&key) || self.config.contains_key(key)
    }
}

/// Builds the desired provider from the spec and the validated credentials. Fails, before any
/// request, on what an azureAD provider cannot express.
pub fn desired(spec: &CloudflareConnectionSpec, azure: &AzureCredentials<'_>) -> Result<DesiredProvider, BrokerError> {
    if azure.audience != SignInAudience::SingleTenant {
        return Err(BrokerError::Unsupported(format!(
            "a Cloudflare azureAD identity provider is bound to one directory (directory_id), so signInAudience {:?} cannot be expressed; use SingleTenant",
            azure.audience
        )));
    }
    if azure.cloud != AzureCloud::AzurePublic {
        return Err(BrokerError::Unsupported(format!(
            "Cloudflare's documented azureAD settings have no national-cloud option, so cloud {:?} cannot be expressed; only AzurePublic is supported",
            azure.cloud
        )));
    }
    let directory_id = match azure.tenant_id {
        Some(id) if is_guid(id) => id.to_ascii_lowercase(),
        _ if is_guid(azure.tenant) => azure.tenant.to_ascii_lowercase(),
        _ => {
            return Err(BrokerError::Unsupported(format!(
                "Cloudflare needs the tenant GUID as directory_id, and tenant {} has not been resolved to one; set azure.tenant to the GUID or use a validation mode that resolves it",
                azure.tenant
            )));
        }
    };
    let mut claims: Vec<&str> = Vec::with_capacity(spec.claims.len());
    for claim in &spec.claims {
        if !claims.contains(&claim.as_str()) {
            claims.push(claim);
        }
    }
    let mut config = Map::new();
    let mut set = |k: &str, v: Value| {
        config.insert(k.to_owned(), v);
    };
    set("client_id", json!(azure.client_id.to_ascii_lowercase()));
    set("directory_id", json!(directory_id));
    set("support_groups", json!(spec.support_groups));
    set("conditional_access_enabled", json!(spec.conditional_access_enabled));
    set("claims", json!(claims));
    if let Some(claim) = spec.email_claim_name.as_deref().filter(|c| !c.is_empty()) {
        set("email_claim_name", json!(claim));
    }
    if let Some(prompt) = spec.prompt {
        set("prompt", serde_json::to_value(prompt).expect("an enum serializes"));
    }
    if let Some(pkce) = spec.pkce_enabled {
        set("pkce_enabled", json!(pkce));
    }
    let scim = spec.scim.clone().unwrap_or_default();
    let scim_config = json!({
        "enabled": scim.enabled,
        "user_deprovision": scim.user_deprovision,
        "seat_deprovision": scim.seat_deprovision,
        "identity_update_behavior": scim.identity_update_behavior,
    });
    let Value::Object(scim_config) = scim_config else { unreachable!("a JSON object literal") };
    Ok(DesiredProvider { name: spec.name.clone(), config, client_secret: azure.secret.clone(), scim_config })
}

/// The body of `POST …/access/identity_providers`: the complete provider. `read_only` is never
/// sent (once set, the API can no longer change or delete the provider).
pub fn create_body(desired: &DesiredProvider) -> Value {
    json!({
        "name": desired.name,
        "type": TYPE,
        "config": desired.config_with_secret(),
        "scim_config": desired.scim_config,
    })
}

/// The body of `PUT …/access/identity_providers/{id}`. A PUT replaces the whole provider, so this
/// is the complete desired provider, `client_secret` included (Cloudflare never returns it, and
/// may drop it when absent), plus the `config` keys the operator does not own carried back as
/// Cloudflare holds them (e.g. `azure_cloud`, or `pkce_enabled` when the spec leaves it unset).
pub fn update_body(desired: &DesiredProvider, observed: &Value) -> Value {
    let mut config = Map::new();
    if let Some(held) = observed.get("config").and_then(Value::as_object) {
        for (key, value) in held {
            if !desired.manages(key) && !COMPUTED_CONFIG.contains(&key.as_str()) && !value.is_null() {
                config.insert(key.clone(), value.clone());
            }
        }
    }
    config.extend(desired.config_with_secret());
    json!({
        "name": desired.name,
        "type": TYPE,
        "config": config,
        "scim_config": desired.scim_config,
    })
}

/// A value as compared: absent, null and false are the same for flags; absent, null and empty
/// are the same for strings and lists; claims compare as sets; GUIDs ignore case.
fn normalized(key: &str, value: Option<&Value>) -> Value {
    let value = value.filter(|v| !v.is_null());
    if BOOL_KEYS.contains(&key) {
        return json!(value.and_then(Value::as_bool).unwrap_or(false));
    }
    match (key, value) {
        ("claims", v) => {
            let mut claims: Vec<String> =
                v.and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).map(str::to_owned).collect();
            claims.sort();
            claims.dedup();
            json!(claims)
        }
        ("identity_update_behavior", None) => json!("no_action"),
        ("client_id" | "directory_id", Some(Value::String(s))) => json!(s.to_ascii_lowercase()),
        (_, Some(Value::String(s))) if s.is_empty() => Value::Null,
        (_, v) => v.cloned().unwrap_or(Value::Null),
    }
}

/// Names of the fields where Cloudflare differs from `desired` (never their values).
///
/// Cloudflare never returns `client_secret`, so it is compared through the fingerprint of the
/// secret last pushed (`synced_fingerprint`) against the current one.
pub fn diff(desired: &DesiredProvider, observed: &Value, synced_fingerprint: Option<&str>, fingerprint: &str) -> Vec<String> {
    let empty = Map::new();
    let config = observed.get("config").and_then(Value::as_object).unwrap_or(&empty);
    let scim = observed.get("scim_config").and_then(Value::as_object).unwrap_or(&empty);
    let mut differences = Vec::new();
    if observed.get("name").and_then(Value::as_str) != Some(desired.name.as_str()) {
        differences.push("name".to_owned());
    }
    let mut config_keys: Vec<&str> = MANAGED_CONFIG.to_vec();
    if desired.config.contains_key("pkce_enabled") {
        config_keys.push("pkce_enabled");
    }
    for key in config_keys {
        let differs = if key == "client_secret" {
            synced_fingerprint != Some(fingerprint)
        } else {
            normalized(key, desired.config.get(key)) != normalized(key, config.get(key))
        };
        if differs {
            differences.push(format!("config.{key}"));
        }
    }
    for key in MANAGED_SCIM {
        if normalized(key, desired.scim_config.get(*key)) != normalized(key, scim.get(*key)) {
            differences.push(format!("scim_config.{key}"));
        }
    }
    differences
}

/// Cloudflare's masked-value rule, for the SCIM secret: it is returned in the clear only when SCIM
/// is first enabled and redacted afterwards; like Terraform v4, any value containing `*` is taken
/// for redacted (brokers.md §2.4, §2.5). `client_secret` is never returned at all, so it has no rule.
fn looks_masked(value: &str) -> bool {
    value.is_empty() || value.contains('*')
}

/// The SCIM endpoint and token from a write's response, when SCIM is wanted and the response
/// carries them in the clear (only the write that first enables SCIM does).
pub fn scim_credentials(desired: &DesiredProvider, written: &Value) -> Option<ScimCredentials> {
    if !desired.scim_enabled() {
        return None;
    }
    shown_scim_credentials(written)
}

/// The SCIM endpoint and token a provider in an answer shows in the clear: after the write that
/// first enables SCIM, and after a refresh of the SCIM secret.
pub fn shown_scim_credentials(provider: &Value) -> Option<ScimCredentials> {
    let scim = provider.get("scim_config")?;
    let secret = scim.get("secret").and_then(Value::as_str).filter(|s| !looks_masked(s))?;
    let base_url = scim.get("scim_base_url").and_then(Value::as_str).filter(|u| u.starts_with("https://"))?;
    Some(ScimCredentials { base_url: base_url.to_owned(), secret: SecretValue::new(secret) })
}

/// Whether `provider` is an azureAD provider.
pub fn is_azure_ad(provider: &Value) -> bool {
    provider.get("type").and_then(Value::as_str) == Some(TYPE)
}

/// Whether `provider` is the azureAD provider named `name`.
pub fn is_ours(provider: &Value, name: &str) -> bool {
    is_azure_ad(provider) && provider.get("name").and_then(Value::as_str) == Some(name)
}

/// `domain` when it is an Access team domain: one DNS label under `cloudflareaccess.com`.
pub fn team_domain(domain: &str) -> Option<&str> {
    let team = domain.strip_suffix(".cloudflareaccess.com")?;
    let label_ok = (1..=63).contains(&team.len())
        && team.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !team.starts_with('-')
        && !team.ends_with('-');
    label_ok.then_some(domain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::connection::{CloudflarePrompt, CloudflareScimSpec, ScimIdentityUpdateBehavior};

    const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
    const CLIENT: &str = "11111111-2222-3333-4444-555555555555";

    fn creds<'a>(secret: &'a SecretValue, tenant_id: Option<&'a str>) -> AzureCredentials<'a> {
        AzureCredentials {
            cloud: AzureCloud::AzurePublic,
            tenant: "contoso.onmicrosoft.com",
            tenant_id,
            client_id: CLIENT,
            secret,
            fingerprint: "fp-1",
            audience: SignInAudience::SingleTenant,
        }
    }

    fn spec() -> CloudflareConnectionSpec {
        CloudflareConnectionSpec { name: "Contoso Entra".into(), support_groups: true, ..Default::default() }
    }

    /// What Cloudflare would answer after storing `d`: no secret, plus server fields.
    fn observed_from(d: &DesiredProvider) -> Value {
        let mut config = d.config.clone();
        config.remove("client_secret");
        config.insert("redirect_url".into(), json!("https://team.cloudflareaccess.com/cdn-cgi/access/callback"));
        config.insert("azure_cloud".into(), json!("default"));
        let mut scim = d.scim_config.clone();
        scim.insert("scim_base_url".into(), json!("https://team.cloudflareaccess.com/populations/x/scim/v2"));
        json!({"id": "5b5a1f2e-0000-4000-8000-000000000001", "name": d.name, "type": "azureAD", "config": config, "scim_config": scim})
    }

    #[test]
    fn desired_uses_the_resolved_tenant_guid() {
        let secret = SecretValue::new("s3cret");
        let d = desired(&spec(), &creds(&secret, Some(TENANT))).unwrap();
        assert_eq!(d.config["directory_id"], TENANT);
        assert_eq!(d.config["client_id"], CLIENT);
        assert_eq!(d.config_with_secret()["client_secret"], "s3cret");
        assert_eq!(create_body(&d)["config"]["client_secret"], "s3cret");
        assert_eq!(update_body(&d, &json!({}))["config"]["client_secret"], "s3cret");
        assert!(!format!("{d:?}").contains("s3cret"), "Debug of the plan redacts the secret: {d:?}");
        assert_eq!(d.config["support_groups"], true);
        assert_eq!(d.config["conditional_access_enabled"], false);
        assert_eq!(d.config["claims"], json!([]));
        for absent in ["email_claim_name", "prompt", "pkce_enabled", "read_only"] {
            assert!(!d.config.contains_key(absent), "{absent}");
        }
        assert_eq!(
            Value::Object(d.scim_config.clone()),
            json!({"enabled": false, "user_deprovision": false, "seat_deprovision": false, "identity_update_behavior": "no_action"})
        );
        let body = create_body(&d);
        assert_eq!(body["type"], "azureAD");
        assert!(body.get("read_only").is_none());
    }

    #[test]
    fn optional_settings_are_sent_when_set() {
        let secret = SecretValue::new("s3cret");
        let spec = CloudflareConnectionSpec {
            pkce_enabled: Some(false),
            claims: vec!["groups".into(), "roles".into(), "groups".into()],
            email_claim_name: Some("upn".into()),
            prompt: Some(CloudflarePrompt::SelectAccount),
            scim: Some(CloudflareScimSpec {
                enabled: true,
                user_deprovision: true,
                seat_deprovision: true,
                identity_update_behavior: ScimIdentityUpdateBehavior::Reauth,
                secret_name: "scim".into(),
            }),
            ..spec()
        };
        let d = desired(&spec, &creds(&secret, Some(TENANT))).unwrap();
        assert_eq!(d.config["pkce_enabled"], false);
        assert_eq!(d.config["claims"], json!(["groups", "roles"]));
        assert_eq!(d.config["email_claim_name"], "upn");
        assert_eq!(d.config["prompt"], "select_account");
        assert_eq!(d.scim_config["identity_update_behavior"], "reauth");
        assert!(d.scim_enabled());
        assert!(!d.scim_config.contains_key("secret_name"));
    }

    #[test]
    fn tenant_guid_audience_and_cloud_are_required() {
        let secret = SecretValue::new("s3cret");
        // Not resolved, but the spec names the GUID itself.
        let mut c = creds(&secret, None);
        c.tenant = "72F988BF-86F1-41AF-91AB-2D7CD011DB47";
        assert_eq!(desired(&spec(), &c).unwrap().config["directory_id"], TENANT);
        // Not resolved, and a domain.
        assert!(matches!(desired(&spec(), &creds(&secret, None)), Err(BrokerError::Unsupported(m)) if m.contains("directory_id")));
        for audience in [SignInAudience::Organizations, SignInAudience::Common, SignInAudience::Consumers] {
            let c = AzureCredentials { audience, ..creds(&secret, Some(TENANT)) };
            assert!(matches!(desired(&spec(), &c), Err(BrokerError::Unsupported(m)) if m.contains("one directory")));
        }
        let c = AzureCredentials { cloud: AzureCloud::AzureUSGovernment, ..creds(&secret, Some(TENANT)) };
        assert!(matches!(desired(&spec(), &c), Err(BrokerError::Unsupported(_))));
    }

    #[test]
    fn steady_state_has_no_differences() {
        let secret = SecretValue::new("s3cret");
        let d = desired(&spec(), &creds(&secret, Some(TENANT))).unwrap();
        assert!(diff(&d, &observed_from(&d), Some("fp-1"), "fp-1").is_empty());
        // Absent lists, flags and SCIM block read as their defaults.
        let mut sparse = observed_from(&d);
        sparse["config"].as_object_mut().unwrap().remove("claims");
        sparse["config"].as_object_mut().unwrap().remove("conditional_access_enabled");
        sparse["config"]["directory_id"] = json!(TENANT.to_uppercase());
        sparse.as_object_mut().unwrap().remove("scim_config");
        assert!(diff(&d, &sparse, Some("fp-1"), "fp-1").is_empty(), "{:?}", diff(&d, &sparse, Some("fp-1"), "fp-1"));
    }

    #[test]
    fn the_secret_is_compared_by_fingerprint() {
        let secret = SecretValue::new("s3cret");
        let d = desired(&spec(), &creds(&secret, Some(TENANT))).unwrap();
        assert_eq!(diff(&d, &observed_from(&d), Some("fp-0"), "fp-1"), ["config.client_secret"]);
        assert_eq!(diff(&d, &observed_from(&d), None, "fp-1"), ["config.client_secret"]);
    }

    #[test]
    fn differences_are_named_without_values() {
        let secret = SecretValue::new("s3cret");
        let d = desired(&spec(), &creds(&secret, Some(TENANT))).unwrap();
        let mut observed = observed_from(&d);
        observed["config"]["support_groups"] = json!(false);
        observed["config"]["claims"] = json!(["evil-claim"]);
        observed["config"]["prompt"] = json!("none");
        observed["scim_config"]["identity_update_behavior"] = json!("automatic");
        observed["config"]["pkce_enabled"] = json!(true);
        let differences = diff(&d, &observed, Some("fp-1"), "fp-1");
        assert_eq!(differences, ["config.support_groups", "config.claims", "config.prompt", "scim_config.identity_update_behavior"]);
        assert!(!format!("{differences:?}").contains("evil-claim"));
    }

    #[test]
    fn update_is_complete_and_carries_unmanaged_config_back() {
        let secret = SecretValue::new("s3cret");
        let d = desired(&spec(), &creds(&secret, Some(TENANT))).unwrap();
        let mut observed = observed_from(&d);
        observed["config"]["pkce_enabled"] = json!(true);
        observed["config"]["email_claim_name"] = json!("stale");
        observed["scim_config"]["secret"] = json!("*****");
        observed["scim_config"]["group_member_deprovision"] = json!(true);
        observed["read_only"] = json!(false);
        let body = update_body(&d, &observed);
        assert_eq!(body["name"], "Contoso Entra");
        assert_eq!(body["type"], "azureAD");
        assert_eq!(body["config"]["client_secret"], "s3cret");
        assert_eq!(body["config"]["directory_id"], TENANT);
        assert_eq!(body["config"]["azure_cloud"], "default", "unmanaged keys survive the replace");
        assert_eq!(body["config"]["pkce_enabled"], true, "pkce is not owned while the spec leaves it unset");
        assert!(body["config"].get("email_claim_name").is_none(), "owned keys absent from the spec are removed");
        assert!(body["config"].get("redirect_url").is_none(), "computed");
        assert_eq!(Value::Object(d.scim_config.clone()), body["scim_config"]);
        assert!(body.get("read_only").is_none() && body.get("id").is_none());

        let owned = desired(&CloudflareConnectionSpec { pkce_enabled: Some(false), ..spec() }, &creds(&secret, Some(TENANT))).unwrap();
        assert_eq!(update_body(&owned, &observed)["config"]["pkce_enabled"], false);
        assert_eq!(diff(&owned, &observed, Some("fp-1"), "fp-1"), ["config.email_claim_name", "config.pkce_enabled"]);
    }

    #[test]
    fn scim_credentials_only_in_the_clear_and_when_wanted() {
        let secret = SecretValue::new("s3cret");
        let scim = CloudflareScimSpec { enabled: true, secret_name: "scim".into(), ..Default::default() };
        let on = desired(&CloudflareConnectionSpec { scim: Some(scim), ..spec() }, &creds(&secret, Some(TENANT))).unwrap();
        let off = desired(&spec(), &creds(&secret, Some(TENANT))).unwrap();
        let url = "https://team.cloudflareaccess.com/populations/x/scim/v2";
        let written = json!({"scim_config": {"enabled": true, "secret": "scim-token-value", "scim_base_url": url}});
        let creds = scim_credentials(&on, &written).unwrap();
        assert_eq!((creds.base_url.as_str(), creds.secret.expose()), (url, "scim-token-value"));
        assert!(!format!("{creds:?}").contains("scim-token-value"));
        assert!(scim_credentials(&off, &written).is_none());
        for secret in [json!("*****"), json!("abc***"), json!(""), Value::Null] {
            let written = json!({"scim_config": {"enabled": true, "secret": secret, "scim_base_url": url}});
            assert!(scim_credentials(&on, &written).is_none(), "{secret}");
        }
        assert!(scim_credentials(&on, &json!({"scim_config": {"secret": "t"}})).is_none(), "no base URL");
    }

    #[test]
    fn ours_means_this_name_and_type() {
        assert!(is_ours(&json!({"name": "a", "type": "azureAD"}), "a"));
        assert!(!is_ours(&json!({"name": "a", "type": "oidc"}), "a"));
        assert!(!is_ours(&json!({"name": "b", "type": "azureAD"}), "a"));
    }

    #[test]
    fn only_access_team_domains_name_a_callback() {
        assert_eq!(team_domain("acme.cloudflareaccess.com"), Some("acme.cloudflareaccess.com"));
        for bad in
            ["cloudflareaccess.com", "evil.example", "a.b.cloudflareaccess.com", "-x.cloudflareaccess.com", "x/y.cloudflareaccess.com"]
        {
            assert_eq!(team_domain(bad), None, "{bad}");
        }
    }
}
