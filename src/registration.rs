//! Whether an Entra app registration lets the connection's broker sign users in: what each
//! broker needs from the registration (its redirect URI on the Web platform, the account type,
//! the delegated Microsoft Graph permissions its guide asks for, consented for the organisation,
//! and an enabled service principal), compared with what Graph says. Pure: no I/O.
//!
//! The facts and their sources are in the README ("The Azure app registration").

use std::collections::BTreeSet;

use crate::{
    azure::registration::Registration,
    crd::{
        broker::UnifiedRegion,
        conditions::Reason,
        connection::{AzureAdConnectionSpec, SignInAudience},
    },
};

/// Where the broker sends users back after Entra ID signs them in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Callback {
    /// The exact URI to register on the Web platform.
    Known(String),
    /// The broker has a callback, but it cannot be known now; the text says why and what to do.
    Unknown(String),
    /// This setup signs nobody in through a browser redirect (the text says why).
    NotUsed(String),
}

/// What the operator knows about the broker side, to name its callback.
#[derive(Debug, Clone, Copy)]
pub enum BrokerSide<'a> {
    /// The Auth0 tenant domain (`acme.eu.auth0.com`).
    Auth0 {
        domain: &'a str,
    },
    /// The Access team domain (`team.cloudflareaccess.com`), once read from the account's Access
    /// organization.
    Cloudflare {
        team_domain: Option<&'a str>,
    },
    /// The Logto endpoint, and the connector id when fixed in the spec or known from status.
    Logto {
        endpoint: &'a str,
        connector_id: Option<&'a str>,
    },
    Unified {
        region: UnifiedRegion,
    },
}

/// The broker's callback for this connection.
pub fn callback(spec: &AzureAdConnectionSpec, side: BrokerSide<'_>) -> Callback {
    match side {
        BrokerSide::Auth0 { .. } if spec.auth0.as_ref().is_some_and(|a| a.app_id_uri.is_some()) => Callback::NotUsed(
            "the native (resource owner password) setup signs users in without a browser redirect".into(),
        ),
        BrokerSide::Auth0 { domain } => Callback::Known(format!("https://{domain}/login/callback")),
        BrokerSide::Cloudflare { team_domain: Some(team) } => Callback::Known(format!("https://{team}/cdn-cgi/access/callback")),
        BrokerSide::Cloudflare { team_domain: None } => Callback::Unknown(
            "the Access team domain could not be read from the Cloudflare account; register https://<team>.cloudflareaccess.com/cdn-cgi/access/callback"
                .into(),
        ),
        BrokerSide::Logto { endpoint, connector_id: Some(id) } => {
            Callback::Known(format!("{}/callback/{id}", endpoint.trim_end_matches('/')))
        }
        BrokerSide::Logto { endpoint, connector_id: None } => Callback::Unknown(format!(
            "the Logto connector has no id yet; once it exists, register {}/callback/<connector id>",
            endpoint.trim_end_matches('/')
        )),
        BrokerSide::Unified { region: UnifiedRegion::Us } => Callback::Known("https://api.unified.to/oauth/code".into()),
        BrokerSide::Unified { region } => Callback::Unknown(format!(
            "Unified.to documents its OAuth callback only for api.unified.to; the {} region's is not published, so it is not checked",
            region.host()
        )),
    }
}

/// Graph's `signInAudience` for the spec's `azure.signInAudience`.
pub fn graph_audience(audience: SignInAudience) -> &'static str {
    match audience {
        SignInAudience::SingleTenant => "AzureADMyOrg",
        SignInAudience::Organizations => "AzureADMultipleOrgs",
        SignInAudience::Common => "AzureADandPersonalMicrosoftAccount",
        SignInAudience::Consumers => "PersonalMicrosoftAccount",
    }
}

/// A seed guide, with the settings that change the permissions it asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guide {
    /// `directory`: extended attributes (Extended Profile or Security Groups) are on.
    Auth0 {
        directory: bool,
    },
    /// `groups`: Support Groups is on.
    Cloudflare {
        groups: bool,
    },
    Logto,
    Unified,
}

impl Guide {
    pub fn of(spec: &AzureAdConnectionSpec) -> Self {
        match (&spec.auth0, &spec.cloudflare, &spec.logto) {
            (Some(auth0), ..) => Guide::Auth0 { directory: auth0.ext_profile || auth0.ext_groups },
            (_, Some(cloudflare), _) => Guide::Cloudflare { groups: cloudflare.support_groups },
            (_, _, Some(_)) => Guide::Logto,
            _ => Guide::Unified,
        }
    }

    /// The delegated Microsoft Graph permissions the guide asks for.
    pub fn permissions(self) -> Vec<&'static str> {
        match self {
            Guide::Cloudflare { groups } => {
                let mut names = vec!["email", "offline_access", "openid", "profile", "User.Read", "Directory.Read.All"];
                if groups {
                    names.push("GroupMember.Read.All");
                }
                names
            }
            // "Extended attributes (like Extended Profile or Security Groups)" need directory reads.
            Guide::Auth0 { directory: true } => vec!["User.Read", "Directory.Read.All"],
            Guide::Auth0 { directory: false } | Guide::Logto => vec!["User.Read"],
            // The Unified.to guide leaves the scopes to the integration; it names none.
            Guide::Unified => Vec::new(),
        }
    }
}

/// The delegated Microsoft Graph permissions the connection's seed guide asks for.
pub fn permissions(spec: &AzureAdConnectionSpec) -> Vec<&'static str> {
    Guide::of(spec).permissions()
}

/// What the broker needs from the registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Needs {
    pub callback: Callback,
    pub audience: SignInAudience,
    pub permissions: Vec<&'static str>,
}

impl Needs {
    pub fn of(spec: &AzureAdConnectionSpec, side: BrokerSide<'_>) -> Self {
        Self { callback: callback(spec, side), audience: spec.azure.sign_in_audience, permissions: permissions(spec) }
    }
}

/// One way the registration keeps users from signing in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    ServicePrincipalMissing,
    ServicePrincipalDisabled,
    RedirectUriMissing { uri: String },
    SignInAudienceMismatch { registered: String, wanted: SignInAudience },
    PermissionMissing(Vec<String>),
    ConsentMissing(Vec<String>),
}

impl Finding {
    pub fn reason(&self) -> Reason {
        match self {
            Finding::ServicePrincipalMissing => Reason::ServicePrincipalMissing,
            Finding::ServicePrincipalDisabled => Reason::ServicePrincipalDisabled,
            Finding::RedirectUriMissing { .. } => Reason::RedirectUriMissing,
            Finding::SignInAudienceMismatch { .. } => Reason::SignInAudienceMismatch,
            Finding::PermissionMissing(_) => Reason::PermissionMissing,
            Finding::ConsentMissing(_) => Reason::ConsentMissing,
        }
    }

    /// What is wrong and the exact step that fixes it.
    pub fn message(&self) -> String {
        match self {
            Finding::ServicePrincipalMissing => "the app registration has no enterprise application (service principal) in the tenant, so it cannot sign anyone in: create it (Enterprise applications > New application, or `az ad sp create --id <clientId>`)".into(),
            Finding::ServicePrincipalDisabled => "the enterprise application (service principal) is disabled: set \"Enabled for users to sign-in?\" to Yes in its Properties".into(),
            Finding::RedirectUriMissing { uri } => format!("the Web platform lacks the broker's redirect URI: add {uri} under Authentication > Web > Redirect URIs"),
            Finding::SignInAudienceMismatch { registered, wanted } => format!(
                "the registration's supported account types are {registered}, but azure.signInAudience {wanted:?} needs {}: change one to match",
                graph_audience(*wanted)
            ),
            Finding::PermissionMissing(names) => format!(
                "the registration does not ask for the delegated Microsoft Graph permissions {}: add them under API permissions > Add a permission > Microsoft Graph > Delegated",
                names.join(", ")
            ),
            Finding::ConsentMissing(names) => format!(
                "the delegated permissions {} have no admin consent, so every user is asked to consent (or refused, AADSTS65001): an administrator selects Grant admin consent under API permissions",
                names.join(", ")
            ),
        }
    }
}

/// The comparison: what blocks sign-in, and what could not be checked.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    /// In the order people fix them: the service principal, then the redirect URI, the account
    /// type, the permissions and their consent.
    pub findings: Vec<Finding>,
    /// What was not checked, and why (an unknown callback, grants the operator may not read).
    pub unchecked: Vec<String>,
    /// The Graph permission that would let the rest be checked, when part could not be read.
    pub unreadable: Option<&'static str>,
}

/// Compares the registration with what the broker needs.
pub fn compare(needs: &Needs, registration: &Registration) -> Report {
    let mut report = Report::default();
    match &registration.service_principal {
        None => report.findings.push(Finding::ServicePrincipalMissing),
        Some(sp) if !sp.enabled => report.findings.push(Finding::ServicePrincipalDisabled),
        Some(_) => {}
    }
    match &needs.callback {
        Callback::Known(uri) if !registration.redirect_uris.iter().any(|registered| same_uri(registered, uri)) => {
            report.findings.push(Finding::RedirectUriMissing { uri: uri.clone() });
        }
        Callback::Known(_) => {}
        Callback::Unknown(why) => report.unchecked.push(format!("redirect URI not checked: {why}")),
        Callback::NotUsed(_) => {}
    }
    if registration.sign_in_audience != graph_audience(needs.audience) {
        report.findings.push(Finding::SignInAudienceMismatch { registered: registration.sign_in_audience.clone(), wanted: needs.audience });
    }
    let missing: Vec<String> =
        needs.permissions.iter().filter(|p| !contains_permission(&registration.requested, p)).map(|p| (*p).to_owned()).collect();
    let requested: Vec<&str> = needs.permissions.iter().copied().filter(|p| contains_permission(&registration.requested, p)).collect();
    if !missing.is_empty() {
        report.findings.push(Finding::PermissionMissing(missing));
    }
    if let Some(sp) = &registration.service_principal
        && !requested.is_empty()
    {
        match &sp.consented {
            Ok(consented) => {
                let unconsented: Vec<String> =
                    requested.iter().filter(|p| !contains_permission(consented, p)).map(|p| (*p).to_owned()).collect();
                if !unconsented.is_empty() {
                    report.findings.push(Finding::ConsentMissing(unconsented));
                }
            }
            Err(unreadable) => {
                report.unchecked.push(format!("admin consent not checked: reading permission grants needs {}", unreadable.permission));
                report.unreadable = Some(unreadable.permission);
            }
        }
    }
    report
}

/// Graph compares permission names without regard to case (`User.Read`, `user.read`).
fn contains_permission(set: &BTreeSet<String>, name: &str) -> bool {
    set.iter().any(|p| p.eq_ignore_ascii_case(name))
}

/// Entra ID compares the scheme and host of a redirect URI without regard to case, the path
/// and query exactly (a trailing slash is a different URI).
fn same_uri(registered: &str, wanted: &str) -> bool {
    match (url::Url::parse(registered), url::Url::parse(wanted)) {
        (Ok(a), Ok(b)) => a == b,
        _ => registered == wanted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::azure::registration::{ServicePrincipal, Unreadable};

    fn spec(block: serde_json::Value) -> AzureAdConnectionSpec {
        let mut value = serde_json::json!({
            "brokerRef": {"name": "b"},
            "azure": {"tenant": "contoso.onmicrosoft.com", "clientId": "8c2e4b6a-1f3d-4a5b-9e7c-6d8f0a2b4c6e", "clientSecretRef": {"name": "s"}},
        });
        value.as_object_mut().unwrap().extend(block.as_object().unwrap().clone());
        serde_json::from_value(value).unwrap()
    }

    fn auth0() -> AzureAdConnectionSpec {
        spec(serde_json::json!({"auth0": {"name": "azure"}}))
    }

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    /// A registration that satisfies the default Auth0 connection on acme.eu.auth0.com.
    fn good() -> Registration {
        Registration {
            object_id: "obj".into(),
            sign_in_audience: "AzureADMyOrg".into(),
            redirect_uris: vec!["https://acme.eu.auth0.com/login/callback".into()],
            requested: names(&["User.Read", "Directory.Read.All"]),
            service_principal: Some(ServicePrincipal { enabled: true, consented: Ok(names(&["User.Read", "Directory.Read.All"])) }),
        }
    }

    fn auth0_needs() -> Needs {
        Needs::of(&auth0(), BrokerSide::Auth0 { domain: "acme.eu.auth0.com" })
    }

    fn reasons(report: &Report) -> Vec<Reason> {
        report.findings.iter().map(Finding::reason).collect()
    }

    #[test]
    fn a_matching_registration_has_no_findings() {
        assert_eq!(compare(&auth0_needs(), &good()), Report::default());
    }

    #[test]
    fn callbacks_per_broker() {
        assert_eq!(
            callback(&auth0(), BrokerSide::Auth0 { domain: "acme.eu.auth0.com" }),
            Callback::Known("https://acme.eu.auth0.com/login/callback".into())
        );
        let cf = spec(serde_json::json!({"cloudflare": {"name": "Entra"}}));
        assert_eq!(
            callback(&cf, BrokerSide::Cloudflare { team_domain: Some("team.cloudflareaccess.com") }),
            Callback::Known("https://team.cloudflareaccess.com/cdn-cgi/access/callback".into())
        );
        assert!(matches!(callback(&cf, BrokerSide::Cloudflare { team_domain: None }), Callback::Unknown(_)));
        let logto = spec(serde_json::json!({"logto": {}}));
        assert_eq!(
            callback(&logto, BrokerSide::Logto { endpoint: "https://foo.logto.app/", connector_id: Some("abc123") }),
            Callback::Known("https://foo.logto.app/callback/abc123".into())
        );
        let Callback::Unknown(why) = callback(&logto, BrokerSide::Logto { endpoint: "https://foo.logto.app", connector_id: None }) else {
            panic!("no connector id: unknown")
        };
        assert!(why.contains("https://foo.logto.app/callback/<connector id>"), "{why}");
        let unified = spec(serde_json::json!({"unified": {}}));
        assert_eq!(
            callback(&unified, BrokerSide::Unified { region: UnifiedRegion::Us }),
            Callback::Known("https://api.unified.to/oauth/code".into())
        );
        for region in [UnifiedRegion::Eu, UnifiedRegion::Au] {
            assert!(matches!(callback(&unified, BrokerSide::Unified { region }), Callback::Unknown(_)), "{region:?} is not guessed");
        }
        let native = spec(serde_json::json!({"auth0": {"name": "native", "appIdUri": "api://web"}}));
        assert!(matches!(callback(&native, BrokerSide::Auth0 { domain: "acme.eu.auth0.com" }), Callback::NotUsed(_)));
    }

    #[test]
    fn permissions_per_guide() {
        let cf = |groups: bool| spec(serde_json::json!({"cloudflare": {"name": "Entra", "supportGroups": groups}}));
        assert_eq!(permissions(&cf(false)), ["email", "offline_access", "openid", "profile", "User.Read", "Directory.Read.All"]);
        assert_eq!(permissions(&cf(true)).last(), Some(&"GroupMember.Read.All"));
        assert_eq!(permissions(&auth0()), ["User.Read", "Directory.Read.All"], "extProfile is on by default");
        let plain = spec(serde_json::json!({"auth0": {"name": "azure", "extProfile": false}}));
        assert_eq!(permissions(&plain), ["User.Read"]);
        let groups = spec(serde_json::json!({"auth0": {"name": "azure", "extProfile": false, "extGroups": true}}));
        assert_eq!(permissions(&groups), ["User.Read", "Directory.Read.All"]);
        assert_eq!(permissions(&spec(serde_json::json!({"logto": {}}))), ["User.Read"]);
        assert!(permissions(&spec(serde_json::json!({"unified": {}}))).is_empty());
    }

    #[test]
    fn redirect_uri_missing_names_the_exact_uri() {
        let mut registration = good();
        registration.redirect_uris = vec!["https://acme.eu.auth0.com/login/callback/".into(), "https://other.example/cb".into()];
        let report = compare(&auth0_needs(), &registration);
        assert_eq!(reasons(&report), [Reason::RedirectUriMissing], "a trailing slash is another URI");
        assert!(report.findings[0].message().contains("add https://acme.eu.auth0.com/login/callback under"));
        registration.redirect_uris = vec!["HTTPS://ACME.eu.auth0.com/login/callback".into()];
        assert!(compare(&auth0_needs(), &registration).findings.is_empty(), "scheme and host compare without case");
        registration.redirect_uris = vec!["https://acme.eu.auth0.com/LOGIN/callback".into()];
        assert_eq!(reasons(&compare(&auth0_needs(), &registration)), [Reason::RedirectUriMissing], "the path is exact");
    }

    #[test]
    fn an_unknown_callback_is_reported_unchecked_not_missing() {
        let logto = spec(serde_json::json!({"logto": {}}));
        let needs = Needs::of(&logto, BrokerSide::Logto { endpoint: "https://foo.logto.app", connector_id: None });
        let mut registration = good();
        registration.redirect_uris.clear();
        let report = compare(&needs, &registration);
        assert!(report.findings.is_empty(), "{report:?}");
        assert!(report.unchecked[0].starts_with("redirect URI not checked"), "{:?}", report.unchecked);
    }

    #[test]
    fn sign_in_audience_mismatch() {
        let mut registration = good();
        registration.sign_in_audience = "AzureADMultipleOrgs".into();
        let report = compare(&auth0_needs(), &registration);
        assert_eq!(reasons(&report), [Reason::SignInAudienceMismatch]);
        let message = report.findings[0].message();
        assert!(message.contains("AzureADMultipleOrgs") && message.contains("needs AzureADMyOrg"), "{message}");
        let mut common = auth0();
        common.azure.sign_in_audience = SignInAudience::Common;
        let needs = Needs::of(&common, BrokerSide::Auth0 { domain: "acme.eu.auth0.com" });
        registration.sign_in_audience = "AzureADandPersonalMicrosoftAccount".into();
        assert!(compare(&needs, &registration).findings.is_empty());
    }

    #[test]
    fn permission_missing_names_each_permission_and_is_not_also_unconsented() {
        let mut registration = good();
        registration.requested = names(&["user.read"]);
        let report = compare(&auth0_needs(), &registration);
        assert_eq!(report.findings, [Finding::PermissionMissing(vec!["Directory.Read.All".into()])], "names compare without case");
        assert!(report.findings[0].message().contains("Directory.Read.All"));
    }

    #[test]
    fn consent_missing_names_each_permission() {
        let mut registration = good();
        registration.service_principal = Some(ServicePrincipal { enabled: true, consented: Ok(names(&["User.Read"])) });
        let report = compare(&auth0_needs(), &registration);
        assert_eq!(report.findings, [Finding::ConsentMissing(vec!["Directory.Read.All".into()])]);
        assert!(report.findings[0].message().contains("Grant admin consent"));
    }

    #[test]
    fn unreadable_grants_leave_consent_unchecked_and_name_the_permission() {
        let mut registration = good();
        registration.service_principal =
            Some(ServicePrincipal { enabled: true, consented: Err(Unreadable { permission: "Directory.Read.All" }) });
        let report = compare(&auth0_needs(), &registration);
        assert!(report.findings.is_empty());
        assert_eq!(report.unreadable, Some("Directory.Read.All"));
        assert!(report.unchecked[0].contains("needs Directory.Read.All"), "{:?}", report.unchecked);
    }

    #[test]
    fn service_principal_missing_or_disabled() {
        let mut registration = good();
        registration.service_principal = None;
        assert_eq!(reasons(&compare(&auth0_needs(), &registration)), [Reason::ServicePrincipalMissing]);
        registration.service_principal =
            Some(ServicePrincipal { enabled: false, consented: Ok(names(&["User.Read", "Directory.Read.All"])) });
        assert_eq!(reasons(&compare(&auth0_needs(), &registration)), [Reason::ServicePrincipalDisabled]);
    }

    #[test]
    fn findings_come_in_the_order_people_fix_them() {
        let registration = Registration {
            object_id: "obj".into(),
            sign_in_audience: "AzureADMultipleOrgs".into(),
            redirect_uris: vec![],
            requested: names(&["User.Read"]),
            service_principal: Some(ServicePrincipal { enabled: false, consented: Ok(BTreeSet::new()) }),
        };
        assert_eq!(
            reasons(&compare(&auth0_needs(), &registration)),
            [
                Reason::ServicePrincipalDisabled,
                Reason::RedirectUriMissing,
                Reason::SignInAudienceMismatch,
                Reason::PermissionMissing,
                Reason::ConsentMissing
            ]
        );
    }
}
