//! The app registration as Microsoft Graph shows it: the application's `signInAudience`,
//! `web.redirectUris` and `requiredResourceAccess`, its service principal (the enterprise
//! application, with `accountEnabled`), the service principal's `oauth2PermissionGrants`, and
//! Microsoft Graph's own service principal with the delegated permissions it publishes.
//!
//! Contracts: application (<https://learn.microsoft.com/graph/api/resources/application>),
//! `PATCH /applications` (<https://learn.microsoft.com/graph/api/application-update>),
//! servicePrincipal (<https://learn.microsoft.com/graph/api/resources/serviceprincipal>),
//! `GET /servicePrincipals/{id}/oauth2PermissionGrants`, which needs Directory.Read.All as an
//! application permission (<https://learn.microsoft.com/graph/api/serviceprincipal-list-oauth2permissiongrants>),
//! and paging by `@odata.nextLink` (<https://learn.microsoft.com/graph/paging>). A new app starts
//! as the portal registers one: single tenant, no redirect URI, User.Read requested but not
//! consented, and a service principal in its tenant.

use axum::{
    Json,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{App, AzureEmulator, AzureState, GRAPH_APP_ID, Reply, graph_error};

/// The object id of Microsoft Graph's service principal in every emulated tenant.
pub const GRAPH_SP_OBJECT_ID: &str = "6f1d7e0a-3c52-4a8e-9b1f-2e4d6c8a0b13";

/// Microsoft Graph's delegated permissions the guides name, with their published ids
/// (<https://learn.microsoft.com/graph/permissions-reference>): the same in every tenant.
pub const GRAPH_SCOPES: &[(&str, &str)] = &[
    ("email", "64a6cdd6-aab1-4aaf-94b8-3cc8405e90d0"),
    ("offline_access", "7427e0e9-2fba-42fe-b0c0-848c9e6a8182"),
    ("openid", "37f7f235-527c-4136-accd-4a02d197296e"),
    ("profile", "14dad69e-099b-42c9-810b-d002981feec1"),
    ("User.Read", "e1fe6dd8-ba31-4d61-89e7-88639da4683d"),
    ("Directory.Read.All", "06da0dbc-49e2-44d2-8312-53f166ab848a"),
    ("GroupMember.Read.All", "bc024368-1153-4739-b217-4326f2e966d0"),
];

/// Grants per page of `oauth2PermissionGrants` (small, so paging is exercised).
const GRANTS_PER_PAGE: usize = 2;

/// What the portal's registration and enterprise-application pages show.
pub(super) struct Registration {
    sign_in_audience: String,
    redirect_uris: Vec<String>,
    /// Delegated Microsoft Graph permission ids the app asks for.
    requested: Vec<String>,
    service_principal: Option<ServicePrincipal>,
    /// Application.ReadWrite.OwnedBy, and the app's service principal among its owners: what
    /// `PATCH` on the app's own registration needs.
    can_write_itself: bool,
    /// Directory.Read.All (application permission), to list permission grants.
    directory_read_all: bool,
}

struct ServicePrincipal {
    object_id: String,
    /// Grants of delegated Graph permissions: (consentType, space-separated scope names).
    grants: Vec<(String, String)>,
}

impl Registration {
    /// A new app as the portal registers one.
    pub(super) fn new() -> Self {
        Self {
            sign_in_audience: "AzureADMyOrg".into(),
            redirect_uris: Vec::new(),
            requested: vec![scope_id("User.Read").to_owned()],
            service_principal: Some(ServicePrincipal { object_id: Uuid::new_v4().to_string(), grants: Vec::new() }),
            can_write_itself: false,
            directory_read_all: false,
        }
    }

    pub(super) fn sign_in_audience(&self) -> &str {
        &self.sign_in_audience
    }

    pub(super) fn has_service_principal(&self) -> bool {
        self.service_principal.is_some()
    }

    /// The application's `web` and `requiredResourceAccess` as Graph shows them.
    pub(super) fn graph_fields(&self) -> (Value, Value) {
        let web = json!({
            "homePageUrl": null,
            "logoutUrl": null,
            "redirectUris": self.redirect_uris,
            "implicitGrantSettings": {"enableAccessTokenIssuance": false, "enableIdTokenIssuance": false},
            "redirectUriSettings": self.redirect_uris.iter().map(|u| json!({"uri": u, "index": null})).collect::<Vec<_>>(),
        });
        let access: Vec<Value> = self.requested.iter().map(|id| json!({"id": id, "type": "Scope"})).collect();
        let required = if access.is_empty() { json!([]) } else { json!([{"resourceAppId": GRAPH_APP_ID, "resourceAccess": access}]) };
        (web, required)
    }
}

fn scope_id(name: &str) -> &'static str {
    GRAPH_SCOPES.iter().find(|(n, _)| *n == name).map(|(_, id)| *id).unwrap_or_else(|| panic!("unknown Graph scope {name}"))
}

impl AzureEmulator {
    /// Replaces the Web platform's redirect URIs.
    pub fn set_redirect_uris(&self, tenant_id: &str, client_id: &str, uris: &[&str]) {
        self.with_app(tenant_id, client_id, |app| app.registration.redirect_uris = uris.iter().map(|u| (*u).to_owned()).collect());
    }

    /// The Web platform's redirect URIs, in order.
    pub fn redirect_uris(&self, tenant_id: &str, client_id: &str) -> Vec<String> {
        let mut uris = Vec::new();
        self.with_app(tenant_id, client_id, |app| uris.clone_from(&app.registration.redirect_uris));
        uris
    }

    /// `AzureADMyOrg`, `AzureADMultipleOrgs`, `AzureADandPersonalMicrosoftAccount` or
    /// `PersonalMicrosoftAccount`.
    pub fn set_sign_in_audience(&self, tenant_id: &str, client_id: &str, audience: &str) {
        self.with_app(tenant_id, client_id, |app| app.registration.sign_in_audience = audience.to_owned());
    }

    /// Replaces the delegated Graph permissions the app asks for (names from [`GRAPH_SCOPES`]).
    pub fn request_graph_permissions(&self, tenant_id: &str, client_id: &str, names: &[&str]) {
        let ids = names.iter().map(|n| scope_id(n).to_owned()).collect();
        self.with_app(tenant_id, client_id, |app| app.registration.requested = ids);
    }

    /// Grants admin consent (consentType `AllPrincipals`) for `names`, replacing earlier admin
    /// consent: as in Entra ID, one grant for the client and Microsoft Graph, its scopes
    /// space-separated.
    pub fn grant_admin_consent(&self, tenant_id: &str, client_id: &str, names: &[&str]) {
        self.with_app(tenant_id, client_id, |app| {
            let sp = app.registration.service_principal.as_mut().expect("admin consent needs a service principal");
            sp.grants.retain(|(kind, _)| kind != "AllPrincipals");
            sp.grants.insert(0, ("AllPrincipals".to_owned(), names.join(" ")));
        });
    }

    /// Consent of one user (consentType `Principal`, a grant of its own), which does not count
    /// for the organisation.
    pub fn grant_user_consent(&self, tenant_id: &str, client_id: &str, names: &[&str]) {
        self.with_app(tenant_id, client_id, |app| {
            let sp = app.registration.service_principal.as_mut().expect("consent needs a service principal");
            sp.grants.push(("Principal".to_owned(), names.join(" ")));
        });
    }

    /// Adds or deletes the app's service principal (the enterprise application). Without one,
    /// the tenant issues the app no token (AADSTS700016).
    pub fn set_service_principal(&self, tenant_id: &str, client_id: &str, present: bool) {
        self.with_app(tenant_id, client_id, |app| {
            let sp = &mut app.registration.service_principal;
            match (present, sp.is_some()) {
                (true, false) => *sp = Some(ServicePrincipal { object_id: Uuid::new_v4().to_string(), grants: Vec::new() }),
                (false, true) => *sp = None,
                _ => {}
            }
        });
    }

    /// Grants or revokes the Directory.Read.All application permission (reading grants).
    pub fn set_directory_read_all(&self, tenant_id: &str, client_id: &str, granted: bool) {
        self.with_app(tenant_id, client_id, |app| app.registration.directory_read_all = granted);
    }

    /// Grants Application.ReadWrite.OwnedBy and makes the app's service principal an owner of
    /// its registration (or undoes both).
    pub fn set_can_write_itself(&self, tenant_id: &str, client_id: &str, granted: bool) {
        self.with_app(tenant_id, client_id, |app| app.registration.can_write_itself = granted);
    }

    /// Graph `PATCH` requests on applications so far (answered or not).
    pub fn application_patches(&self) -> usize {
        use crate::kit::RequestMatch;
        self.kit().log().count(&RequestMatch::any().method(axum::http::Method::PATCH).under("/v1.0/applications"))
    }

    /// Graph requests so far whose path starts with `prefix` (answered or not).
    pub fn graph_requests_under(&self, prefix: &str) -> usize {
        use crate::kit::RequestMatch;
        self.kit().log().count(&RequestMatch::any().under(prefix))
    }
}

/// How a Graph path names a service principal or its grants.
enum SpPath<'a> {
    ByAppId(&'a str),
    Grants(&'a str),
}

fn sp_path(rest: &str) -> Option<SpPath<'_>> {
    if let Some(key) = rest.strip_prefix("servicePrincipals(appId='") {
        return key.strip_suffix("')").filter(|k| !k.contains('\'')).map(SpPath::ByAppId);
    }
    let id = rest.strip_prefix("servicePrincipals/")?.strip_suffix("/oauth2PermissionGrants")?;
    (!id.is_empty() && !id.contains('/')).then_some(SpPath::Grants(id))
}

fn forbidden() -> Response {
    graph_error(StatusCode::FORBIDDEN, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.")
}

fn not_found(id: &str) -> Response {
    let message = format!("Resource '{id}' does not exist or one of its queried reference-property objects are not present.");
    graph_error(StatusCode::NOT_FOUND, "Request_ResourceNotFound", &message)
}

impl AzureState {
    /// GET under `/v1.0/servicePrincipals`.
    pub(super) fn read_service_principal(&self, rest: &str, query: Option<&str>, headers: &HeaderMap) -> Reply {
        let caller = self.graph_caller(headers)?;
        let tenant = self.tenants.get(&caller.tenant);
        let caller_app = tenant.and_then(|t| t.apps.get(&caller.client_id));
        let Some(path) = sp_path(rest) else {
            let segment = rest.split('/').next().unwrap_or_default();
            return Err(graph_error(StatusCode::BAD_REQUEST, "BadRequest", &format!("Resource not found for the segment '{segment}'.")));
        };
        match path {
            SpPath::ByAppId(app_id) => {
                if !caller_app.is_some_and(|a| a.graph_read_all) {
                    return Err(forbidden());
                }
                if app_id.eq_ignore_ascii_case(GRAPH_APP_ID) {
                    return Ok(Json(graph_service_principal(&self.cloud.graph_host)).into_response());
                }
                let app = tenant.and_then(|t| t.apps.get(&app_id.to_ascii_lowercase()));
                let (app, sp) = app.and_then(|a| Some((a, a.registration.service_principal.as_ref()?))).ok_or_else(|| not_found(app_id))?;
                Ok(Json(service_principal_json(app, sp, &self.cloud.graph_host)).into_response())
            }
            SpPath::Grants(object_id) => {
                if !caller_app.is_some_and(|a| a.registration.directory_read_all) {
                    return Err(forbidden());
                }
                let sp = tenant
                    .and_then(|t| {
                        t.apps.values().filter_map(|a| a.registration.service_principal.as_ref()).find(|sp| sp.object_id == object_id)
                    })
                    .ok_or_else(|| not_found(object_id))?;
                Ok(Json(grants_page(sp, query, &self.cloud.graph_host)).into_response())
            }
        }
    }

    /// PATCH `applications(appId='…')` or `applications/{objectId}`: only `web.redirectUris` is
    /// emulated, replaced as a whole as Graph replaces a collection.
    pub(super) fn patch_application(&mut self, rest: &str, headers: &HeaderMap, body: &[u8]) -> Reply {
        let caller = self.graph_caller(headers)?;
        let (caller_tenant, caller_client) = (caller.tenant.clone(), caller.client_id.clone());
        let key = super::AppKey::parse(rest).ok_or_else(|| graph_error(StatusCode::BAD_REQUEST, "BadRequest", "Unsupported segment."))?;
        let tenant = self.tenants.get_mut(&caller_tenant).ok_or_else(forbidden)?;
        let target = match &key {
            super::AppKey::AppId(id) => id.to_ascii_lowercase(),
            super::AppKey::ObjectId(id) => {
                tenant.apps.iter().find(|(_, a)| a.object_id.eq_ignore_ascii_case(id)).map(|(k, _)| k.clone()).unwrap_or_default()
            }
        };
        // OwnedBy: an app may write only registrations it owns; here, only its own.
        let allowed = target == caller_client && tenant.apps.get(&caller_client).is_some_and(|a| a.registration.can_write_itself);
        if !allowed {
            return Err(forbidden());
        }
        let app: &mut App = tenant.apps.get_mut(&target).ok_or_else(|| not_found(key.id()))?;
        let patch: Value = serde_json::from_slice(body)
            .map_err(|_| graph_error(StatusCode::BAD_REQUEST, "BadRequest", "Unable to read JSON request payload."))?;
        let uris = patch
            .pointer("/web/redirectUris")
            .and_then(Value::as_array)
            .ok_or_else(|| graph_error(StatusCode::BAD_REQUEST, "Request_BadRequest", "The emulator only updates web.redirectUris."))?;
        let uris: Option<Vec<String>> = uris.iter().map(|u| u.as_str().map(str::to_owned)).collect();
        app.registration.redirect_uris =
            uris.ok_or_else(|| graph_error(StatusCode::BAD_REQUEST, "Request_BadRequest", "redirectUris must be strings."))?;
        Ok(StatusCode::NO_CONTENT.into_response())
    }
}

fn service_principal_json(app: &App, sp: &ServicePrincipal, graph_host: &str) -> Value {
    json!({
        "@odata.context": format!("https://{graph_host}/v1.0/$metadata#servicePrincipals/$entity"),
        "id": sp.object_id,
        "appId": app.app_id,
        "displayName": app.display_name,
        "accountEnabled": !app.disabled,
        "servicePrincipalType": "Application",
        "appRoleAssignmentRequired": false,
    })
}

fn graph_service_principal(graph_host: &str) -> Value {
    let scopes: Vec<Value> = GRAPH_SCOPES
        .iter()
        .map(|(name, id)| json!({"id": id, "value": name, "type": "User", "isEnabled": true, "adminConsentDisplayName": name}))
        .collect();
    json!({
        "@odata.context": format!("https://{graph_host}/v1.0/$metadata#servicePrincipals/$entity"),
        "id": GRAPH_SP_OBJECT_ID,
        "appId": GRAPH_APP_ID,
        "displayName": "Microsoft Graph",
        "accountEnabled": true,
        "oauth2PermissionScopes": scopes,
    })
}

/// One page of grants; `$skiptoken` is the index of the first grant of the page.
fn grants_page(sp: &ServicePrincipal, query: Option<&str>, graph_host: &str) -> Value {
    let pairs = crate::query_pairs(query);
    let start: usize = crate::query_value(&pairs, "$skiptoken").and_then(|s| s.parse().ok()).unwrap_or(0);
    let page: Vec<Value> = sp
        .grants
        .iter()
        .skip(start)
        .take(GRANTS_PER_PAGE)
        .map(|(consent_type, scope)| {
            json!({
                "id": Uuid::new_v4().to_string(),
                "clientId": sp.object_id,
                "consentType": consent_type,
                "principalId": if consent_type == "Principal" { json!(Uuid::new_v4().to_string()) } else { Value::Null },
                "resourceId": GRAPH_SP_OBJECT_ID,
                // Graph separates scopes with spaces and often leaves one at each end.
                "scope": format!(" {scope} "),
            })
        })
        .collect();
    let mut body = json!({
        "@odata.context": format!("https://{graph_host}/v1.0/$metadata#oauth2PermissionGrants"),
        "value": page,
    });
    if start + GRANTS_PER_PAGE < sp.grants.len() {
        let next = format!(
            "https://{graph_host}/v1.0/servicePrincipals/{}/oauth2PermissionGrants?$skiptoken={}",
            sp.object_id,
            start + GRANTS_PER_PAGE
        );
        body["@odata.nextLink"] = json!(next);
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_principal_paths() {
        assert!(matches!(sp_path("servicePrincipals(appId='abc')"), Some(SpPath::ByAppId("abc"))));
        assert!(matches!(sp_path("servicePrincipals/xyz/oauth2PermissionGrants"), Some(SpPath::Grants("xyz"))));
        assert!(sp_path("servicePrincipals/xyz").is_none());
        assert!(sp_path("servicePrincipals(appId='a'b')").is_none());
    }

    #[test]
    fn grants_page_through_next_links() {
        let sp =
            ServicePrincipal { object_id: "sp".into(), grants: (0..5).map(|i| ("AllPrincipals".to_owned(), format!("s{i}"))).collect() };
        let first = grants_page(&sp, None, "graph.microsoft.com");
        assert_eq!(first["value"].as_array().unwrap().len(), 2);
        let next = first["@odata.nextLink"].as_str().unwrap();
        assert!(next.ends_with("$skiptoken=2"), "{next}");
        let last = grants_page(&sp, Some("$skiptoken=4"), "graph.microsoft.com");
        assert_eq!(last["value"].as_array().unwrap().len(), 1);
        assert!(last.get("@odata.nextLink").is_none());
    }
}
