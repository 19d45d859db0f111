//! Microsoft Graph `addPassword` and `removePassword` on an application, as documented
//! (<https://learn.microsoft.com/graph/api/application-addpassword>,
//! <https://learn.microsoft.com/graph/api/application-removepassword>): the generated
//! `secretText` is returned once, `hint` is its first three characters, `endDateTime` defaults
//! to two years after `startDateTime` (default now). Both need Application.ReadWrite.OwnedBy on
//! an application the caller owns.
//!
//! What the service does around them, made configurable ([`PasswordPolicy`]): a replication
//! delay before the token endpoint accepts a new secret (undocumented; seconds to minutes are
//! reported), a tenant app-management policy that caps the lifetime
//! (`CredentialInvalidLifetimeAsPerAppPolicy`) or forbids password addition, and a limit on the
//! number of password credentials (`TooManyAppPasswords`).

use std::sync::Arc;

use axum::{
    Json,
    body::Bytes,
    extract::{Path, State as AxState},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{AppKey, AzureEmulator, AzureState, Secret, Shared, graph_error};
use crate::{Reply, lock, random_alnum};

/// The id the emulated tenant's app-management policy errors name.
const POLICY_ID: &str = "00000000-0000-0000-0000-00000000a11c";

/// How the emulated tenant treats new passwords.
#[derive(Clone, Debug, Default)]
pub struct PasswordPolicy {
    /// How long after addPassword the token endpoint starts accepting the new secret.
    pub replication_delay: SignedDuration,
    /// `passwordLifetime` restriction: the longest lifetime addPassword accepts.
    pub max_lifetime: Option<SignedDuration>,
    /// `passwordAddition` restriction: no new password at all.
    pub forbid_addition: bool,
    /// The most password credentials one application may hold.
    pub max_credentials: Option<usize>,
}

/// What a removePassword is about to remove, for a test's hook.
#[derive(Clone, Debug)]
pub struct RemovedPassword {
    pub client_id: String,
    pub key_id: String,
    /// The removed secret's value.
    pub value: String,
    /// The values the token endpoint still accepts for the app once it is gone.
    pub remaining: Vec<String>,
}

pub(super) type RemovalHook = Arc<dyn Fn(&RemovedPassword) + Send + Sync>;

impl AzureEmulator {
    /// Sets the rules addPassword follows from now on.
    pub fn set_password_policy(&self, policy: PasswordPolicy) {
        self.state().policy = policy;
    }

    /// Grants or revokes Application.ReadWrite.OwnedBy to an app.
    pub fn set_graph_write_owned_by(&self, tenant_id: &str, client_id: &str, granted: bool) {
        self.with_app(tenant_id, client_id, |app| app.graph_write_owned_by = granted);
    }

    /// Makes `owner_client_id`'s service principal an owner of `client_id`'s registration (for
    /// an app that rotates its own secret, the same id).
    pub fn add_owner(&self, tenant_id: &str, client_id: &str, owner_client_id: &str) {
        let owner = owner_client_id.to_ascii_lowercase();
        self.with_app(tenant_id, client_id, |app| app.owners.push(owner));
    }

    /// Calls `hook` at every removePassword, before the credential goes (the emulator's state is
    /// locked meanwhile: the hook must not call back into this emulator).
    pub fn on_remove_password(&self, hook: impl Fn(&RemovedPassword) + Send + Sync + 'static) {
        self.state().removal_hook = Some(Arc::new(hook));
    }

    /// The app's password credentials as Graph lists them: (keyId, displayName, hint, end).
    pub fn passwords(&self, tenant_id: &str, client_id: &str) -> Vec<(String, String, String, Timestamp)> {
        let mut out = Vec::new();
        self.with_app(tenant_id, client_id, |app| {
            out = app.secrets.iter().map(|s| (s.key_id.clone(), s.display_name.clone(), hint(&s.value), s.end)).collect();
        });
        out
    }

    /// Whether the token endpoint accepts `value` for the app now (known, replicated, unexpired).
    pub fn accepts(&self, tenant_id: &str, client_id: &str, value: &str) -> bool {
        let now = Timestamp::now();
        let mut accepted = false;
        self.with_app(tenant_id, client_id, |app| accepted = app.secrets.iter().any(|s| s.value == value && usable(s, now)));
        accepted
    }

    /// addPassword and removePassword calls so far (answered or not).
    pub fn password_writes(&self) -> usize {
        use crate::kit::RequestMatch;
        self.kit().log().count(&RequestMatch::any().method(axum::http::Method::POST).under("/v1.0"))
    }
}

fn usable(secret: &Secret, now: Timestamp) -> bool {
    secret.usable_from <= now && secret.end > now
}

fn hint(value: &str) -> String {
    value.chars().take(3).collect()
}

/// A secret in the current format: about 40 characters with `Q~` at positions 4 and 5.
fn generate_secret() -> String {
    let head = random_alnum(3);
    let digit = rand::random::<u8>() % 10;
    format!("{head}{digit}Q~{}", random_alnum(34))
}

pub(super) async fn graph_write(AxState(s): AxState<Shared>, Path(rest): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    lock(&s).password_write(&rest, &headers, &body).unwrap_or_else(|e| e)
}

fn bad_request(code: &str, message: &str) -> Response {
    graph_error(StatusCode::BAD_REQUEST, code, message)
}

impl AzureState {
    fn password_write(&mut self, rest: &str, headers: &HeaderMap, body: &[u8]) -> Reply {
        let (target, action) = rest.rsplit_once('/').ok_or_else(|| bad_request("BadRequest", "Unsupported Graph request."))?;
        let Some(key) = AppKey::parse(target) else {
            return Err(bad_request("BadRequest", &format!("Resource not found for the segment '{target}'.")));
        };
        let caller = self.graph_caller(headers)?;
        let (tenant_id, caller_id) = (caller.tenant.clone(), caller.client_id.clone());
        let (policy, hook) = (self.policy.clone(), self.removal_hook.clone());
        let tenant = self.tenants.get_mut(&tenant_id).expect("a token names a registered tenant");
        let caller_may_write = tenant.apps.get(&caller_id).is_some_and(|a| a.graph_write_owned_by);
        let app = match &key {
            AppKey::AppId(id) => tenant.apps.get_mut(&id.to_ascii_lowercase()),
            AppKey::ObjectId(id) => tenant.apps.values_mut().find(|a| a.object_id.eq_ignore_ascii_case(id)),
        };
        let Some(app) = app else {
            let message =
                format!("Resource '{}' does not exist or one of its queried reference-property objects are not present.", key.id());
            return Err(graph_error(StatusCode::NOT_FOUND, "Request_ResourceNotFound", &message));
        };
        if !(caller_may_write && app.owners.contains(&caller_id)) {
            return Err(graph_error(
                StatusCode::FORBIDDEN,
                "Authorization_RequestDenied",
                "Insufficient privileges to complete the operation.",
            ));
        }
        let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        match action {
            "addPassword" => add_password(app, &policy, &body),
            "removePassword" => remove_password(app, hook.as_deref(), &body),
            other => Err(bad_request("BadRequest", &format!("Resource not found for the segment '{other}'."))),
        }
    }
}

fn add_password(app: &mut super::App, policy: &PasswordPolicy, body: &Value) -> Reply {
    let requested = &body["passwordCredential"];
    let now = Timestamp::now();
    let time = |field: &str| -> Result<Option<Timestamp>, Response> {
        match requested.get(field).and_then(Value::as_str) {
            None => Ok(None),
            Some(text) => text
                .parse()
                .map(Some)
                .map_err(|_| bad_request("Request_BadRequest", &format!("Invalid value specified for property '{field}'."))),
        }
    };
    let start = time("startDateTime")?.unwrap_or(now);
    let end =
        time("endDateTime")?.unwrap_or_else(|| start.saturating_add(SignedDuration::from_hours(2 * 365 * 24 + 24)).expect("a duration"));
    if end <= start {
        return Err(bad_request("Request_BadRequest", "Key credential end date is invalid."));
    }
    if policy.forbid_addition {
        let message = format!("Adding password credentials is not allowed as per assigned policy '{POLICY_ID}'.");
        return Err(bad_request("CredentialTypeNotAllowedAsPerAppPolicy", &message));
    }
    if policy.max_lifetime.is_some_and(|max| end.duration_since(start) > max) {
        let message = format!("Credential lifetime exceeds the max value allowed as per assigned policy '{POLICY_ID}'.");
        return Err(bad_request("CredentialInvalidLifetimeAsPerAppPolicy", &message));
    }
    if let Some(max) = policy.max_credentials.filter(|max| app.secrets.len() >= *max) {
        // Graph's wording, as it answers `az ad app credential reset --append` at the limit.
        let message = format!("Not allowed to add {} passwords. You can only add a maximum of {max} passwords.", app.secrets.len() + 1);
        return Err(bad_request("TooManyAppPasswords", &message));
    }
    let value = generate_secret();
    let display_name = requested.get("displayName").and_then(Value::as_str).unwrap_or_default().to_owned();
    let key_id = Uuid::new_v4().to_string();
    let usable_from = now.saturating_add(policy.replication_delay).expect("a duration");
    let credential = json!({
        "@odata.type": "#microsoft.graph.passwordCredential",
        "customKeyIdentifier": null,
        "displayName": display_name,
        "endDateTime": end.to_string(),
        "hint": hint(&value),
        "keyId": key_id,
        "secretText": value,
        "startDateTime": start.to_string(),
    });
    app.secrets.push(Secret { key_id, value, display_name, start, end, usable_from });
    Ok(Json(credential).into_response())
}

fn remove_password(app: &mut super::App, hook: Option<&(dyn Fn(&RemovedPassword) + Send + Sync)>, body: &Value) -> Reply {
    let Some(key_id) = body.get("keyId").and_then(Value::as_str) else {
        return Err(bad_request("Request_BadRequest", "The request body must contain the property 'keyId'."));
    };
    let Some(index) = app.secrets.iter().position(|s| s.key_id.eq_ignore_ascii_case(key_id)) else {
        let message = format!("No password credential found with keyId {key_id}.");
        return Err(graph_error(StatusCode::NOT_FOUND, "Request_ResourceNotFound", &message));
    };
    if let Some(hook) = hook {
        let now = Timestamp::now();
        let remaining =
            app.secrets.iter().enumerate().filter(|(i, s)| *i != index && usable(s, now)).map(|(_, s)| s.value.clone()).collect();
        let removed = &app.secrets[index];
        hook(&RemovedPassword { client_id: app.app_id.clone(), key_id: removed.key_id.clone(), value: removed.value.clone(), remaining });
    }
    app.secrets.remove(index);
    Ok(StatusCode::NO_CONTENT.into_response())
}
