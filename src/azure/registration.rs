//! The app registration through Microsoft Graph, with the token a ClientCredentials validation
//! obtained: the application (`signInAudience`, `web.redirectUris`, `requiredResourceAccess`),
//! its service principal (`accountEnabled`), the service principal's `oauth2PermissionGrants`,
//! and the names of Microsoft Graph's delegated permissions (Graph's own service principal), to
//! turn the ids the registration holds into the names the guides use.
//!
//! Reads are cached like the expiry lookup (a fresh validation drops the cached registration);
//! Graph's Retry-After blocks the app as for every Graph read; answers are bounded by the
//! upstream client, grant pages by [`MAX_GRANT_PAGES`]. The one write, adding a redirect URI to
//! the Web platform, sends the full merged list (Graph replaces collections on PATCH).

use std::{collections::BTreeSet, sync::Arc, time::Instant};

use reqwest::{Method, StatusCode};
use serde::Deserialize;

use super::{APPLICATION_SELECT, AzureClient, CacheKey, GraphError, ThrottleKey, ValidationRequest, cloud};
use crate::{
    crd::connection::is_guid,
    upstream::{Answer, TransportError, retry_after},
};

/// Microsoft Graph's application id: `resourceAppId` of Graph permissions in every tenant.
pub const GRAPH_APP_ID: &str = "00000003-0000-0000-c000-000000000000";

/// How long Microsoft Graph's own service principal (its object id and the names of its
/// delegated permissions) is trusted per tenant: it changes when Microsoft publishes a new
/// permission, and its answer is large (every permission with its descriptions).
pub const GRAPH_SCOPES_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Microsoft Graph's service principal in one tenant: its object id (the `resourceId` of
/// grants) and its delegated permissions, id to name.
#[derive(Debug, Clone)]
pub(super) struct GraphScopes {
    object_id: String,
    names: std::collections::HashMap<String, String>,
}

/// A bound on grant pages: a client has one grant per resource and consent type, plus one per
/// user who consented; 20 pages of Graph's default 100 is more than any real client carries.
const MAX_GRANT_PAGES: usize = 20;

/// The Graph permission needed to read applications and service principals.
pub const READ_APPLICATIONS: &str = "Application.Read.All";
/// The Graph permission needed to list a service principal's permission grants.
pub const READ_GRANTS: &str = "Directory.Read.All";
/// The Graph permission (with the operator's service principal as an owner of the
/// registration) needed to add a redirect URI.
pub const WRITE_OWN_APPLICATION: &str = "Application.ReadWrite.OwnedBy";

/// What Graph says about the registration; the comparison with what the broker needs is in
/// `crate::registration`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The application's object id (what a PATCH addresses).
    pub object_id: String,
    /// `AzureADMyOrg`, `AzureADMultipleOrgs`, `AzureADandPersonalMicrosoftAccount` or
    /// `PersonalMicrosoftAccount`.
    pub sign_in_audience: String,
    /// The Web platform's redirect URIs, in the registration's order.
    pub redirect_uris: Vec<String>,
    /// Delegated Microsoft Graph permissions the app asks for, by name (an id Graph does not
    /// publish stays an id).
    pub requested: BTreeSet<String>,
    /// The enterprise application in the tenant, if there is one.
    pub service_principal: Option<ServicePrincipal>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePrincipal {
    pub enabled: bool,
    /// Delegated Graph permissions consented for the whole organisation (admin consent), or
    /// why they could not be read.
    pub consented: Result<BTreeSet<String>, Unreadable>,
}

/// A part of the registration the operator may not read: the Graph permission to grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    pub permission: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    /// Graph refused: the operator's app lacks `permission` (application type, admin consent).
    #[error("Microsoft Graph refused to read the app registration: grant the application permission {permission} (with admin consent)")]
    Unreadable { permission: &'static str },
    #[error("Microsoft Graph is throttling requests")]
    Throttled { retry_after: Option<std::time::Duration> },
    #[error("Microsoft Graph is unreachable: {0}")]
    Unreachable(#[from] TransportError),
    #[error("Microsoft Graph answered HTTP {status}: {message}")]
    Unexpected { status: u16, message: String },
    #[error("no Graph token: {0}")]
    Token(String),
    /// Graph refused the write: the permission and ownership it needs are missing.
    #[error(
        "Microsoft Graph refused to update the app registration: grant the application permission Application.ReadWrite.OwnedBy and add the application's service principal as an owner of the registration"
    )]
    WriteDenied,
}

impl RegistrationError {
    /// Graph is down or throttling: it may answer later, and says nothing about the registration.
    pub fn is_transient(&self) -> bool {
        match self {
            RegistrationError::Throttled { .. } | RegistrationError::Unreachable(_) => true,
            RegistrationError::Unexpected { status, .. } => *status >= 500,
            _ => false,
        }
    }

    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            RegistrationError::Throttled { retry_after } => *retry_after,
            _ => None,
        }
    }
}

impl From<GraphError> for RegistrationError {
    fn from(error: GraphError) -> Self {
        match error {
            GraphError::Throttled { retry_after } => RegistrationError::Throttled { retry_after },
            GraphError::Unreachable(e) => RegistrationError::Unreachable(e),
            other => RegistrationError::Token(other.to_string()),
        }
    }
}

/// The application object as Graph returns it for [`super::APPLICATION_SELECT`], typed: what the
/// expiry lookup and the registration check read (kept between them as this, not as JSON, which
/// cost some 25 KiB per connection).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ApplicationBody {
    id: String,
    #[serde(default)]
    sign_in_audience: String,
    #[serde(default)]
    web: Option<WebBody>,
    #[serde(default)]
    required_resource_access: Vec<RequiredResourceAccess>,
    #[serde(default)]
    pub password_credentials: Vec<super::graph::PasswordCredential>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WebBody {
    #[serde(default)]
    redirect_uris: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RequiredResourceAccess {
    resource_app_id: String,
    #[serde(default)]
    resource_access: Vec<ResourceAccess>,
}

#[derive(Deserialize)]
struct ResourceAccess {
    id: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServicePrincipalBody {
    id: String,
    #[serde(default = "enabled_by_default")]
    account_enabled: bool,
    #[serde(default)]
    oauth2_permission_scopes: Vec<PermissionScope>,
}

fn enabled_by_default() -> bool {
    true
}

#[derive(Deserialize)]
struct PermissionScope {
    id: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GrantPage {
    #[serde(default)]
    value: Vec<Grant>,
    #[serde(rename = "@odata.nextLink", default)]
    next_link: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Grant {
    consent_type: String,
    resource_id: String,
    #[serde(default)]
    scope: String,
}

impl AzureClient {
    /// The app registration of `request.client_id`, read with the Graph token of a successful
    /// ClientCredentials validation of the same request; cached for `request.ttl`. While
    /// Graph's Retry-After for the app lasts, nothing is sent.
    pub async fn registration(&self, request: &ValidationRequest<'_>, tenant_id: &str) -> Result<Registration, RegistrationError> {
        let key = CacheKey::of(request);
        if let Some(hit) = self.registrations.get(&key) {
            return Ok(hit);
        }
        let throttle_key = ThrottleKey::of(request);
        if let Some(left) = self.graph_throttle.remaining(&throttle_key) {
            return Err(RegistrationError::Throttled { retry_after: Some(left) });
        }
        if !is_guid(request.client_id) {
            return Err(RegistrationError::Unexpected { status: 404, message: "the client id is not a GUID".into() });
        }
        let read = Reader { client: self, request, key: &key, throttle_key: &throttle_key, tenant_id };
        let registration = read.registration().await?;
        self.registrations.insert(key, registration.clone(), Instant::now() + request.ttl);
        Ok(registration)
    }

    /// Adds `uri` to the Web platform's redirect URIs, keeping every URI already there in its
    /// order. The list is read again just before the write, not taken from the cache, so a URI
    /// a person added since the last read is kept too (Graph replaces the whole collection). The
    /// cached registration is dropped, so the next read shows what Graph holds. Returns false
    /// when the URI was already there and nothing was written.
    pub async fn add_redirect_uri(&self, request: &ValidationRequest<'_>, tenant_id: &str, uri: &str) -> Result<bool, RegistrationError> {
        let key = CacheKey::of(request);
        let throttle_key = ThrottleKey::of(request);
        if let Some(left) = self.graph_throttle.remaining(&throttle_key) {
            return Err(RegistrationError::Throttled { retry_after: Some(left) });
        }
        if !is_guid(request.client_id) {
            return Err(RegistrationError::Unexpected { status: 404, message: "the client id is not a GUID".into() });
        }
        let read = Reader { client: self, request, key: &key, throttle_key: &throttle_key, tenant_id };
        let path = format!("/v1.0/applications(appId='{}')?$select=id,web", request.client_id);
        let app: ApplicationBody = read
            .get_json(&path)
            .await?
            .ok_or(RegistrationError::Unexpected { status: 404, message: "Microsoft Graph does not know the application".into() })?;
        let mut uris = app.web.map(|w| w.redirect_uris).unwrap_or_default();
        if uris.iter().any(|u| u == uri) {
            return Ok(false);
        }
        uris.push(uri.to_owned());
        let body = serde_json::json!({"web": {"redirectUris": uris}});
        let answer = read.send(Method::PATCH, &format!("/v1.0/applications/{}", app.id), Some(&body)).await?;
        self.registrations.remove(&key);
        self.applications.remove(&key);
        match answer.status {
            s if s.is_success() => Ok(true),
            StatusCode::FORBIDDEN => Err(RegistrationError::WriteDenied),
            _ => Err(read.unexpected(&answer)),
        }
    }
}

/// One registration read: the client, its token and the app's throttle.
struct Reader<'a> {
    client: &'a AzureClient,
    request: &'a ValidationRequest<'a>,
    key: &'a CacheKey,
    throttle_key: &'a ThrottleKey,
    tenant_id: &'a str,
}

impl Reader<'_> {
    async fn registration(&self) -> Result<Registration, RegistrationError> {
        let client_id = self.request.client_id;
        let app = self.application().await?;
        let graph = self.graph_scopes().await?;
        let names = |id: &str| graph.names.get(&id.to_ascii_lowercase()).cloned();
        let requested = app
            .required_resource_access
            .iter()
            .filter(|r| r.resource_app_id.eq_ignore_ascii_case(GRAPH_APP_ID))
            .flat_map(|r| &r.resource_access)
            .filter(|a| a.kind == "Scope")
            .map(|a| names(&a.id).unwrap_or_else(|| a.id.clone()))
            .collect();
        let sp: Option<ServicePrincipalBody> =
            self.get_json(&format!("/v1.0/servicePrincipals(appId='{client_id}')?$select=id,accountEnabled")).await?;
        let service_principal = match sp {
            Some(sp) => {
                Some(ServicePrincipal { enabled: sp.account_enabled, consented: self.admin_consent(&sp.id, &graph.object_id).await? })
            }
            None => None,
        };
        Ok(Registration {
            object_id: app.id.clone(),
            sign_in_audience: app.sign_in_audience.clone(),
            redirect_uris: app.web.as_ref().map(|w| w.redirect_uris.clone()).unwrap_or_default(),
            requested,
            service_principal,
        })
    }

    /// The application object: as the expiry lookup of the same validation read it, or read now.
    async fn application(&self) -> Result<Arc<ApplicationBody>, RegistrationError> {
        if let Some(app) = self.client.applications.get(self.key) {
            return Ok(app);
        }
        let client_id = self.request.client_id;
        let app: ApplicationBody =
            self.get_json(&format!("/v1.0/applications(appId='{client_id}')?$select={APPLICATION_SELECT}"))
                .await?
                .ok_or(RegistrationError::Unexpected { status: 404, message: "Microsoft Graph does not know the application".into() })?;
        let app = Arc::new(app);
        self.client.applications.insert(self.key.clone(), app.clone(), Instant::now() + self.request.ttl);
        Ok(app)
    }

    /// Microsoft Graph's service principal in the tenant, from the cache when read in the last
    /// [`GRAPH_SCOPES_TTL`].
    async fn graph_scopes(&self) -> Result<GraphScopes, RegistrationError> {
        let key = (self.request.cloud, self.tenant_id.to_ascii_lowercase());
        if let Some(hit) = self.client.graph_scopes.get(&key) {
            return Ok(hit);
        }
        let graph: ServicePrincipalBody = self
            .get_json(&format!("/v1.0/servicePrincipals(appId='{GRAPH_APP_ID}')?$select=id,oauth2PermissionScopes"))
            .await?
            .ok_or(RegistrationError::Unexpected { status: 404, message: "Microsoft Graph's service principal was not found".into() })?;
        let names = graph.oauth2_permission_scopes.into_iter().map(|s| (s.id.to_ascii_lowercase(), s.value)).collect();
        let scopes = GraphScopes { object_id: graph.id, names };
        self.client.graph_scopes.insert(key, scopes.clone(), Instant::now() + GRAPH_SCOPES_TTL);
        Ok(scopes)
    }

    /// The Graph permissions consented for every user (consentType AllPrincipals) to the
    /// service principal `sp_id`, following `@odata.nextLink` on the fixed Graph host only.
    async fn admin_consent(&self, sp_id: &str, graph_sp_id: &str) -> Result<Result<BTreeSet<String>, Unreadable>, RegistrationError> {
        if !is_guid(sp_id) {
            return Err(RegistrationError::Unexpected { status: 200, message: "the service principal id is not a GUID".into() });
        }
        let mut consented = BTreeSet::new();
        let mut path = format!("/v1.0/servicePrincipals/{sp_id}/oauth2PermissionGrants");
        for _ in 0..MAX_GRANT_PAGES {
            let page: GrantPage = match self.get_json(&path).await {
                Ok(Some(page)) => page,
                Ok(None) => return Ok(Ok(consented)),
                Err(RegistrationError::Unreadable { .. }) => return Ok(Err(Unreadable { permission: READ_GRANTS })),
                Err(other) => return Err(other),
            };
            let organisation_wide =
                page.value.iter().filter(|g| g.consent_type == "AllPrincipals" && g.resource_id.eq_ignore_ascii_case(graph_sp_id));
            consented.extend(organisation_wide.flat_map(|g| g.scope.split_whitespace().map(str::to_owned)));
            match page.next_link.as_deref().map(|link| self.next_path(link)) {
                None => return Ok(Ok(consented)),
                Some(next) => path = next?,
            }
        }
        Err(RegistrationError::Unexpected {
            status: 200,
            message: format!("more than {MAX_GRANT_PAGES} pages of permission grants; giving up"),
        })
    }

    /// The path and query of a next link: it must name this cloud's Graph host, and is sent
    /// there (through the operator's endpoint overrides), never to a host a body chose.
    fn next_path(&self, link: &str) -> Result<String, RegistrationError> {
        let graph_host = cloud::hosts(self.request.cloud).graph;
        let url = url::Url::parse(link).ok().filter(|u| u.scheme() == "https" && u.host_str() == Some(graph_host));
        let url = url.ok_or_else(|| RegistrationError::Unexpected {
            status: 200,
            message: "a next page link does not point at Microsoft Graph".into(),
        })?;
        Ok(match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        })
    }

    /// GET `path` as JSON: `None` on 404, `Unreadable` on 403 (naming Application.Read.All,
    /// which every read but the grants needs).
    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<Option<T>, RegistrationError> {
        let answer = self.send(Method::GET, path, None).await?;
        match answer.status {
            s if s.is_success() => answer
                .body
                .json()
                .map(Some)
                .map_err(|_| RegistrationError::Unexpected { status: s.as_u16(), message: "the answer is not the expected JSON".into() }),
            StatusCode::NOT_FOUND => Ok(None),
            StatusCode::FORBIDDEN => Err(RegistrationError::Unreadable { permission: READ_APPLICATIONS }),
            _ => Err(self.unexpected(&answer)),
        }
    }

    /// Sends one Graph request with the validation's token; a 429 blocks the app for its
    /// Retry-After and comes back as `Throttled`.
    async fn send(&self, method: Method, path: &str, body: Option<&serde_json::Value>) -> Result<Answer, RegistrationError> {
        let token = self.client.graph_token(self.request, self.tenant_id, self.key, self.throttle_key).await?;
        let graph = &self.client.graph;
        let mut builder = graph.request(method, cloud::hosts(self.request.cloud).graph, path).bearer_auth(token.value.expose());
        if let Some(body) = body {
            builder = builder.json(body);
        }
        let answer = graph.send(builder).await?;
        if answer.status == StatusCode::TOO_MANY_REQUESTS {
            let retry_after = retry_after(&answer.headers, jiff::Timestamp::now());
            if let Some(wait) = retry_after {
                self.client.graph_throttle.block(self.throttle_key.clone(), wait);
            }
            return Err(RegistrationError::Throttled { retry_after });
        }
        if answer.status == StatusCode::UNAUTHORIZED {
            self.client.tokens.remove(self.key);
        }
        Ok(answer)
    }

    fn unexpected(&self, answer: &Answer) -> RegistrationError {
        RegistrationError::Unexpected { status: answer.status.as_u16(), message: answer.body.safe_message(&[self.request.secret]) }
    }
}
