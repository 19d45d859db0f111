//! Pure Unified.to planning: the desired `microsoft_ad` connection (imported with the Entra
//! application's client credentials), the diff against what Unified.to reports, and the full
//! body a `PUT /unified/connection/{id}` needs.
//!
//! Decisions, where Unified.to's documentation is silent:
//! - Reads may mask or omit `auth.client_secret`. A secret that reads back in plain text is
//!   compared directly; a masked or missing one is judged by the fingerprint of what was last
//!   pushed.
//! - Updates use `PUT` with the whole connection. The documented update verb is `PUT`, and its
//!   payload requires `integration_type`, `permissions` and `categories` like a create. Whether a
//!   `PATCH` merges or replaces the nested `auth` object is undocumented, so the body always
//!   carries the complete `auth`: the managed keys, plus whatever non-secret keys Unified.to set
//!   on the connection.

use serde_json::{Map, Value, json};

use crate::{
    azure::cloud,
    broker::{AzureCredentials, BrokerError},
    crd::connection::{SignInAudience, UnifiedConnectionSpec},
    secret::SecretValue,
};

/// Unified.to's integration type for Microsoft Entra ID.
pub const INTEGRATION_TYPE: &str = "microsoft_ad";

/// The `microsoft_ad` integration's connection categories (HR & Directory, Authentication and
/// Passthrough), in the order they are sent.
pub const CATEGORIES: &[&str] = &["auth", "hris", "passthrough"];

/// `auth` keys the operator owns; every other non-secret key Unified.to keeps is sent back.
pub const MANAGED_AUTH: &[&str] = &["client_id", "client_secret", "token_url"];

/// `auth` keys holding tokens Unified.to obtained with the previous credentials. They are never
/// sent back: Unified.to fetches new ones through the client-credentials grant.
const TOKEN_CACHE: &[&str] =
    &["access_token", "refresh_token", "expires_in", "expiry_date", "refresh_token_expires_in", "refresh_token_expires_date"];

/// Top-level fields set in the dashboard or by Unified.to that a full-replace `PUT` would reset.
const CARRIED: &[&str] = &["environment", "is_paused", "integration_name"];

/// The connection as it should be.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredConnection {
    pub external_xref: String,
    /// Sorted, without duplicates.
    pub permissions: Vec<String>,
    /// Sorted, without duplicates.
    pub categories: Vec<String>,
    pub client_id: String,
    pub client_secret: SecretValue,
    pub token_url: String,
}

/// The `external_xref` that identifies the connection: the spec's, or
/// `idp-bridge:<tenant>:<client id>` from the Azure block (tenant as written in the spec,
/// lowercased). The default depends on the spec alone, so sync and delete (which sees no
/// resolved tenant id) always agree, and a change of validation mode cannot move it.
pub fn external_xref(unified: &UnifiedConnectionSpec, tenant: &str, client_id: &str) -> String {
    match unified.external_xref.as_deref().filter(|x| !x.is_empty()) {
        Some(xref) => xref.to_owned(),
        None => format!("idp-bridge:{}:{}", tenant.to_ascii_lowercase(), client_id.to_ascii_lowercase()),
    }
}

/// The Entra ID v2 token endpoint of the application's home tenant in its cloud.
pub fn token_url(azure: &AzureCredentials<'_>) -> String {
    let tenant = azure.tenant_id.unwrap_or(azure.tenant).to_ascii_lowercase();
    format!("https://{}/{tenant}/oauth2/v2.0/token", cloud::hosts(azure.cloud).login)
}

/// Builds the desired connection from the spec and the validated credentials.
pub fn desired(unified: &UnifiedConnectionSpec, azure: &AzureCredentials<'_>) -> Result<DesiredConnection, BrokerError> {
    if azure.audience != SignInAudience::SingleTenant {
        return Err(BrokerError::Unsupported(format!(
            "Unified.to imports a microsoft_ad connection with client credentials, which are bound to the app's home tenant; signInAudience {:?} cannot be expressed (use SingleTenant)",
            azure.audience
        )));
    }
    let mut permissions = unified.permissions.clone();
    permissions.sort();
    permissions.dedup();
    Ok(DesiredConnection {
        external_xref: external_xref(unified, azure.tenant, azure.client_id),
        categories: categories_for(&permissions),
        permissions,
        client_id: azure.client_id.to_owned(),
        client_secret: azure.secret.clone(),
        token_url: token_url(azure),
    })
}

/// The categories the permissions belong to (`hris_employee_read` is in `hris`), or every
/// category of the integration when no permission names one.
pub fn categories_for(permissions: &[String]) -> Vec<String> {
    let named: Vec<String> =
        CATEGORIES.iter().filter(|c| permissions.iter().any(|p| p.split('_').next() == Some(**c))).map(|c| (*c).to_owned()).collect();
    if named.is_empty() { CATEGORIES.iter().map(|c| (*c).to_owned()).collect() } else { named }
}

fn desired_auth(desired: &DesiredConnection) -> Map<String, Value> {
    let mut auth = Map::new();
    auth.insert("client_id".into(), json!(desired.client_id));
    auth.insert("client_secret".into(), json!(desired.client_secret.expose()));
    auth.insert("token_url".into(), json!(desired.token_url));
    auth
}

/// The body of `POST /unified/connection`.
pub fn create_body(desired: &DesiredConnection) -> Value {
    json!({
        "integration_type": INTEGRATION_TYPE,
        "external_xref": desired.external_xref,
        "permissions": desired.permissions,
        "categories": desired.categories,
        "auth": desired_auth(desired),
    })
}

/// Unified.to's masked-value rule: its documentation is silent on whether reads mask
/// `auth.client_secret` (brokers.md §4), so any value containing `*` or `•`, or reading
/// `redacted`, is taken for a placeholder rather than the secret itself.
pub fn looks_masked(value: &str) -> bool {
    let value = value.trim();
    value.is_empty()
        || value.contains('*')
        || value.contains('•')
        || value.eq_ignore_ascii_case("redacted")
        || value.eq_ignore_ascii_case("[redacted]")
}

fn secret_differs(
    desired: &DesiredConnection,
    observed_auth: &Map<String, Value>,
    synced_fingerprint: Option<&str>,
    fingerprint: &str,
) -> bool {
    match observed_auth.get("client_secret").and_then(Value::as_str) {
        Some(held) if !looks_masked(held) => held != desired.client_secret.expose(),
        // Masked or omitted: trust the fingerprint of what was last pushed.
        _ => synced_fingerprint != Some(fingerprint),
    }
}

fn string_set(value: Option<&Value>) -> Vec<&str> {
    let mut items: Vec<&str> = value.and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    items.sort_unstable();
    items.dedup();
    items
}

/// Names of the fields where Unified.to differs from `desired` (never their values).
pub fn diff(desired: &DesiredConnection, observed: &Value, synced_fingerprint: Option<&str>, fingerprint: &str) -> Vec<String> {
    let empty = Map::new();
    let auth = observed.get("auth").and_then(Value::as_object).unwrap_or(&empty);
    let mut differences = Vec::new();
    if string_set(observed.get("permissions")) != desired.permissions {
        differences.push("permissions".to_owned());
    }
    if string_set(observed.get("categories")) != desired.categories {
        differences.push("categories".to_owned());
    }
    if auth.get("client_id").and_then(Value::as_str) != Some(desired.client_id.as_str()) {
        differences.push("auth.client_id".to_owned());
    }
    if secret_differs(desired, auth, synced_fingerprint, fingerprint) {
        differences.push("auth.client_secret".to_owned());
    }
    if auth.get("token_url").and_then(Value::as_str) != Some(desired.token_url.as_str()) {
        differences.push("auth.token_url".to_owned());
    }
    differences
}

/// The body of `PUT /unified/connection/{id}`: the whole connection, since a PUT replaces it.
/// `auth` is the observed object without masked values and cached tokens, with the managed keys
/// set; dashboard-set top-level fields are carried over.
pub fn update_body(desired: &DesiredConnection, observed: &Value) -> Value {
    let mut auth: Map<String, Value> = observed
        .get("auth")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(k, v)| !TOKEN_CACHE.contains(&k.as_str()) && !v.as_str().is_some_and(looks_masked) && !v.is_null())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    auth.extend(desired_auth(desired));
    let mut body = create_body(desired);
    body["auth"] = Value::Object(auth);
    for key in CARRIED {
        if let Some(value) = observed.get(*key).filter(|v| !v.is_null()) {
            body[*key] = value.clone();
        }
    }
    body
}

/// Whether a connection read from Unified.to is the one this spec manages.
pub fn is_ours(connection: &Value, external_xref: &str) -> bool {
    connection.get("integration_type").and_then(Value::as_str) == Some(INTEGRATION_TYPE)
        && connection.get("external_xref").and_then(Value::as_str) == Some(external_xref)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::connection::{AzureAdConnectionSpec, AzureCloud, AzureSpec, BrokerRef, BrokerRefKind, SecretKeyRef};

    const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
    const CLIENT: &str = "11111111-2222-3333-4444-555555555555";

    fn spec(xref: Option<&str>, permissions: &[&str]) -> AzureAdConnectionSpec {
        AzureAdConnectionSpec {
            broker_ref: BrokerRef { kind: BrokerRefKind::IdentityBroker, name: "unified".into() },
            azure: AzureSpec {
                tenant: "Contoso.onmicrosoft.com".into(),
                cloud: AzureCloud::AzurePublic,
                client_id: CLIENT.into(),
                client_secret_ref: SecretKeyRef { name: "s".into(), key: "k".into() },
                sign_in_audience: SignInAudience::SingleTenant,
                registration: Default::default(),
            },
            validation: Default::default(),
            expiry: Default::default(),
            auth0: None,
            cloudflare: None,
            logto: None,
            unified: Some(UnifiedConnectionSpec {
                external_xref: xref.map(str::to_owned),
                permissions: permissions.iter().map(|p| p.to_string()).collect(),
            }),
            deletion_policy: Default::default(),
            suspend: false,
            management_policy: Default::default(),
            adopt: false,
        }
    }

    fn creds<'a>(secret: &'a SecretValue, cloud: AzureCloud, tenant_id: Option<&'a str>, audience: SignInAudience) -> AzureCredentials<'a> {
        AzureCredentials { cloud, tenant: "Contoso.onmicrosoft.com", tenant_id, client_id: CLIENT, secret, fingerprint: "fp-1", audience }
    }

    fn planned(spec: &AzureAdConnectionSpec, secret: &SecretValue) -> DesiredConnection {
        desired(spec.unified.as_ref().unwrap(), &creds(secret, AzureCloud::AzurePublic, Some(TENANT), SignInAudience::SingleTenant))
            .unwrap()
    }

    #[test]
    fn xref_defaults_to_tenant_and_client_from_the_spec() {
        let xref = |spec: AzureAdConnectionSpec| external_xref(spec.unified.as_ref().unwrap(), &spec.azure.tenant, &spec.azure.client_id);
        assert_eq!(xref(spec(None, &[])), format!("idp-bridge:contoso.onmicrosoft.com:{CLIENT}"));
        assert_eq!(xref(spec(Some(""), &[])), format!("idp-bridge:contoso.onmicrosoft.com:{CLIENT}"));
        assert_eq!(xref(spec(Some("customer-42"), &[])), "customer-42");
    }

    #[test]
    fn token_url_follows_the_cloud_and_prefers_the_tenant_guid() {
        let secret = SecretValue::new("s3cret-value");
        let url = |cloud, tenant_id| token_url(&creds(&secret, cloud, tenant_id, SignInAudience::SingleTenant));
        assert_eq!(url(AzureCloud::AzurePublic, Some(TENANT)), format!("https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/token"));
        assert_eq!(
            url(AzureCloud::AzureUSGovernment, Some(TENANT)),
            format!("https://login.microsoftonline.us/{TENANT}/oauth2/v2.0/token")
        );
        assert_eq!(url(AzureCloud::AzureChina, None), "https://login.partner.microsoftonline.cn/contoso.onmicrosoft.com/oauth2/v2.0/token");
    }

    #[test]
    fn only_single_tenant_apps_can_be_imported() {
        let secret = SecretValue::new("s3cret-value");
        let spec = spec(None, &[]);
        for audience in [SignInAudience::Organizations, SignInAudience::Common, SignInAudience::Consumers] {
            let err = desired(spec.unified.as_ref().unwrap(), &creds(&secret, AzureCloud::AzurePublic, None, audience)).unwrap_err();
            assert!(matches!(err, BrokerError::Unsupported(ref m) if m.contains("SingleTenant")), "{err:?}");
        }
    }

    #[test]
    fn categories_follow_the_permissions() {
        let of = |p: &[&str]| categories_for(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(of(&["hris_employee_read", "hris_group_read"]), ["hris"]);
        assert_eq!(of(&["auth_login", "hris_employee_read", "webhook"]), ["auth", "hris"]);
        assert_eq!(of(&[]), ["auth", "hris", "passthrough"]);
        assert_eq!(of(&["webhook"]), ["auth", "hris", "passthrough"]);
    }

    #[test]
    fn create_body_has_the_documented_shape() {
        let secret = SecretValue::new("s3cret-value");
        let d = planned(&spec(None, &["hris_group_read", "hris_employee_read", "hris_group_read"]), &secret);
        let body = create_body(&d);
        assert_eq!(body["integration_type"], "microsoft_ad");
        assert_eq!(body["external_xref"], format!("idp-bridge:contoso.onmicrosoft.com:{CLIENT}"));
        assert_eq!(body["permissions"], json!(["hris_employee_read", "hris_group_read"]));
        assert_eq!(body["categories"], json!(["hris"]));
        assert_eq!(
            body["auth"],
            json!({"client_id": CLIENT, "client_secret": "s3cret-value", "token_url": format!("https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/token")})
        );
        assert!(!format!("{d:?}").contains("s3cret-value"), "Debug of the plan redacts the secret");
    }

    fn observed_from(d: &DesiredConnection, secret: Value) -> Value {
        json!({
            "id": "65f0c0ffee", "integration_type": "microsoft_ad", "external_xref": d.external_xref,
            "permissions": d.permissions.iter().rev().collect::<Vec<_>>(), "categories": d.categories,
            "environment": "Production", "is_paused": false, "workspace_id": "ws1",
            "auth": {"client_id": d.client_id, "client_secret": secret, "token_url": d.token_url,
                     "access_token": "********", "expires_in": 3599, "name": "Contoso"},
        })
    }

    #[test]
    fn steady_state_has_no_differences_whatever_the_read_shows() {
        let secret = SecretValue::new("s3cret-value");
        let d = planned(&spec(None, &["hris_employee_read", "hris_group_read"]), &secret);
        // Plain text: compared directly, even without a recorded fingerprint.
        assert!(diff(&d, &observed_from(&d, json!("s3cret-value")), None, "fp-1").is_empty());
        // Masked or omitted: the fingerprints decide.
        for held in [json!("********"), json!("s3c*****"), json!(""), Value::Null] {
            assert!(diff(&d, &observed_from(&d, held.clone()), Some("fp-1"), "fp-1").is_empty(), "{held}");
            assert_eq!(diff(&d, &observed_from(&d, held.clone()), Some("fp-0"), "fp-1"), ["auth.client_secret"], "{held}");
            assert_eq!(diff(&d, &observed_from(&d, held), None, "fp-1"), ["auth.client_secret"]);
        }
        let mut no_auth = observed_from(&d, Value::Null);
        no_auth.as_object_mut().unwrap().remove("auth");
        assert_eq!(diff(&d, &no_auth, Some("fp-1"), "fp-1"), ["auth.client_id", "auth.token_url"]);
    }

    #[test]
    fn differences_are_named_without_values() {
        let old = SecretValue::new("old-secret-value");
        let new = SecretValue::new("new-secret-value");
        let before = planned(&spec(None, &["hris_employee_read"]), &old);
        let after = planned(&spec(None, &["hris_employee_read", "auth_login"]), &new);
        let differences = diff(&after, &observed_from(&before, json!("old-secret-value")), Some("fp-1"), "fp-1");
        assert_eq!(differences, ["permissions", "categories", "auth.client_secret"]);
        assert!(differences.iter().all(|d| !d.contains("secret-value")));
        let mut moved = observed_from(&after, json!("new-secret-value"));
        moved["auth"]["token_url"] = json!("https://evil.example/token");
        moved["auth"]["client_id"] = json!("someone-else");
        assert_eq!(diff(&after, &moved, None, "fp-1"), ["auth.client_id", "auth.token_url"]);
    }

    #[test]
    fn update_is_a_complete_connection_with_the_complete_auth() {
        let secret = SecretValue::new("new-secret-value");
        let d = planned(&spec(Some("customer-42"), &["hris_employee_read"]), &secret);
        let mut observed = observed_from(&d, json!("********"));
        observed["is_paused"] = json!(true);
        observed["integration_name"] = json!("Entra (Contoso)");
        observed["auth"]["refresh_token"] = json!("plain-but-stale");
        observed["auth"]["meta"] = json!({"tenant": "contoso"});
        let body = update_body(&d, &observed);
        for key in ["integration_type", "external_xref", "permissions", "categories"] {
            assert_eq!(body[key], create_body(&d)[key], "{key}");
        }
        assert_eq!(body["auth"]["client_secret"], "new-secret-value", "the masked placeholder is never sent back");
        assert_eq!(body["auth"]["client_id"], CLIENT);
        assert_eq!(body["auth"]["token_url"], d.token_url);
        assert_eq!(body["auth"]["name"], "Contoso", "server-set auth keys are kept");
        assert_eq!(body["auth"]["meta"], json!({"tenant": "contoso"}));
        for cached in ["access_token", "refresh_token", "expires_in"] {
            assert!(body["auth"].get(cached).is_none(), "{cached} is dropped");
        }
        assert_eq!(
            (&body["is_paused"], &body["integration_name"], &body["environment"]),
            (&json!(true), &json!("Entra (Contoso)"), &json!("Production"))
        );
        for read_only in ["id", "workspace_id", "created_at", "updated_at"] {
            assert!(body.get(read_only).is_none(), "{read_only}");
        }
    }

    #[test]
    fn ours_means_microsoft_ad_with_our_xref() {
        let ours = json!({"integration_type": "microsoft_ad", "external_xref": "x"});
        assert!(is_ours(&ours, "x"));
        assert!(!is_ours(&ours, "y"));
        assert!(!is_ours(&json!({"integration_type": "bamboohr", "external_xref": "x"}), "x"));
        assert!(!is_ours(&json!({"integration_type": "microsoft_ad"}), "x"));
    }
}
