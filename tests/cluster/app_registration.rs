//! AzureAppConfigured on the real control plane: each reason the app registration check gives,
//! what it does to Ready, its Events and metric, the cache, and `azure.registration: Manage`
//! adding a missing redirect URI without removing the one a person added.

use std::time::Duration;

use idp_bridge::crd::conditions::{AZURE_APP_CONFIGURED, READY};
use jiff::{SignedDuration, Timestamp};
use serde_json::json;

use crate::common::e2e::{CLIENT_ID, Env, TENANT_ID, auth0_callback, condition, register_for_auth0};

/// A person's own redirect URI, which the operator must keep.
const THEIRS: &str = "https://intranet.contoso.example/signin-oidc";

/// The shared app with a valid secret in Secret `web`, readable through Graph (applications and
/// permission grants).
async fn env(prefix: &str) -> Env {
    let mut env = Env::new(prefix).await;
    let value = env.canary("registration");
    env.upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, &value, Timestamp::now() + SignedDuration::from_hours(24 * 90));
    env.upstreams.azure.set_graph_read_all(TENANT_ID, CLIENT_ID, true);
    env.upstreams.azure.set_directory_read_all(TENANT_ID, CLIENT_ID, true);
    env.put_secret("web", &[("client-secret", &value)], &[]).await;
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_redirect_uri_fails_ready_and_manage_adds_it_keeping_theirs() {
    let env = env("app-redirect").await;
    let azure = &env.upstreams.azure;
    azure.set_redirect_uris(TENANT_ID, CLIENT_ID, &[THEIRS]);
    env.connect("web", "web", json!({})).await;

    let conn = env.wait_condition("web", AZURE_APP_CONFIGURED, "False", "RedirectUriMissing").await;
    let message = condition(&conn, AZURE_APP_CONFIGURED).message;
    assert!(message.contains(&format!("add {} under Authentication > Web", auth0_callback())), "the exact URI: {message}");
    let ready = condition(&conn, READY);
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "RedirectUriMissing"), "users cannot sign in");
    let events = env.wait_events("web", "RedirectUriMissing", 1).await;
    assert_eq!(events.len(), 1, "one Warning on the transition");
    assert_eq!(events[0].type_.as_deref(), Some("Warning"));
    let (_, metrics) = env.http_get("/metrics").await;
    assert!(metrics.contains("status=\"False\",reason=\"RedirectUriMissing\"} 1"), "{metrics}");

    // Cached for the refresh interval: another reconcile reads nothing from Graph.
    let reads = azure.graph_requests_under("/v1.0/servicePrincipals");
    env.poke("web").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(azure.graph_requests_under("/v1.0/servicePrincipals"), reads, "served from the cache");
    assert_eq!(azure.application_patches(), 0, "Verify writes nothing");

    // Manage without the write permission: still missing, and the message says what to grant.
    env.connect("web", "web", json!({"azure": {"registration": "Manage"}})).await;
    let conn = env.wait_condition("web", AZURE_APP_CONFIGURED, "False", "RedirectUriMissing").await;
    assert!(condition(&conn, AZURE_APP_CONFIGURED).message.contains("Application.ReadWrite.OwnedBy"));
    assert_eq!(azure.redirect_uris(TENANT_ID, CLIENT_ID), [THEIRS]);

    // With it, the URI is added after the person's, and the connection becomes Ready.
    azure.set_can_write_itself(TENANT_ID, CLIENT_ID, true);
    env.poke("web").await;
    env.wait_condition("web", AZURE_APP_CONFIGURED, "True", "RegistrationConfigured").await;
    env.wait_ready("web").await;
    assert_eq!(azure.redirect_uris(TENANT_ID, CLIENT_ID), [THEIRS.to_owned(), auth0_callback()], "added; nothing removed or reordered");
    let added = env.wait_events("web", "RedirectUriAdded", 1).await;
    assert_eq!(added.len(), 1);
    assert!(added[0].message.as_deref().unwrap_or_default().contains(&auth0_callback()));
    let (_, metrics) = env.http_get("/metrics").await;
    assert!(metrics.contains("status=\"True\",reason=\"RegistrationConfigured\"} 1"), "{metrics}");
    assert!(!metrics.contains("reason=\"RedirectUriMissing\"} 1"), "the old state's series is gone: {metrics}");

    // Present now: no second write.
    let patches = azure.application_patches();
    env.poke("web").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    env.wait_ready("web").await;
    assert_eq!(azure.application_patches(), patches);
    env.assert_no_canary_leaks().await;
}

/// One app per case, each registered as the Auth0 guide asks and then broken in one way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_misconfiguration_has_its_reason_and_unreadable_leaves_ready_alone() {
    let mut env = env("app-reasons").await;
    type Break = fn(&idp_bridge_devenv::azure::AzureEmulator, &str);
    let cases: [(&str, &str, &str, Break); 6] = [
        ("audience", "False", "SignInAudienceMismatch", |azure, app| azure.set_sign_in_audience(TENANT_ID, app, "AzureADMultipleOrgs")),
        ("permission", "False", "PermissionMissing", |azure, app| azure.request_graph_permissions(TENANT_ID, app, &["User.Read"])),
        ("consent", "False", "ConsentMissing", |azure, app| azure.grant_admin_consent(TENANT_ID, app, &["User.Read"])),
        ("disabled", "False", "ServicePrincipalDisabled", |azure, app| azure.set_app_disabled(TENANT_ID, app, true)),
        ("no-app-read", "Unknown", "RegistrationUnreadable", |azure, app| azure.set_graph_read_all(TENANT_ID, app, false)),
        ("no-grant-read", "Unknown", "RegistrationUnreadable", |azure, app| azure.set_directory_read_all(TENANT_ID, app, false)),
    ];
    for (i, (name, _, _, break_it)) in cases.iter().enumerate() {
        let app = format!("b1c2d3e4-0000-4000-8000-00000000000{i}");
        let azure = &env.upstreams.azure;
        azure.add_app(TENANT_ID, &app);
        register_for_auth0(azure, &app);
        azure.set_graph_read_all(TENANT_ID, &app, true);
        azure.set_directory_read_all(TENANT_ID, &app, true);
        let value = env.canary(name);
        env.upstreams.azure.add_secret(TENANT_ID, &app, &value, Timestamp::now() + SignedDuration::from_hours(24 * 90));
        break_it(&env.upstreams.azure, &app);
        let secret = format!("secret-{name}");
        env.put_secret(&secret, &[("client-secret", &value)], &[]).await;
        env.connect(name, &secret, json!({"azure": {"clientId": app}})).await;
    }
    for (name, status, reason, _) in cases {
        let conn = env.wait_condition(name, AZURE_APP_CONFIGURED, status, reason).await;
        let app = condition(&conn, AZURE_APP_CONFIGURED);
        let ready = condition(&conn, READY);
        match (name, status) {
            ("disabled", _) => assert_eq!(ready.reason, "ApplicationDisabled", "CredentialsValid comes first"),
            (_, "False") => assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", reason), "{name}"),
            _ => assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("True", "Ready"), "{name}: Unknown changes nothing"),
        }
        let named = match name {
            "permission" | "consent" => Some("Directory.Read.All"),
            "no-app-read" => Some("Application.Read.All"),
            "no-grant-read" => Some("Directory.Read.All"),
            _ => None,
        };
        if let Some(named) = named {
            assert!(app.message.contains(named), "{name}: {}", app.message);
        }
    }
    assert!(env.events_with_reason("no-app-read", "RegistrationUnreadable").await.is_empty(), "no Event for Unknown");
    assert_eq!(env.wait_events("consent", "ConsentMissing", 1).await.len(), 1);
    env.assert_no_canary_leaks().await;
    env.stop_operator().await;
}

/// Cloudflare's callback is on the Access team domain, read from the account's Zero Trust
/// organization; Manage adds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudflare_needs_the_team_callback_and_its_seven_permissions() {
    const ACCOUNT: &str = "0123456789abcdef0123456789abcdef";
    const TOKEN: &str = "cf-api-token-value";
    let mut env = Env::without_operator("app-cloudflare").await;
    let cf = env.upstreams.cloudflare().unwrap();
    cf.add_account(ACCOUNT);
    cf.add_token(TOKEN, &[ACCOUNT]);
    env.put_secret("cf-token", &[("api-token", TOKEN)], &[]).await;
    let broker = json!({"spec": {"cloudflare": {"accountId": ACCOUNT, "apiTokenSecretRef": {"name": "cf-token"}}}});
    env.apply("IdentityBroker", "cloudflare", broker).await;
    env.start_operator().await;
    let value = env.canary("cloudflare");
    let azure = env.upstreams.azure.clone();
    azure.add_secret(TENANT_ID, CLIENT_ID, &value, Timestamp::now() + SignedDuration::from_hours(24 * 90));
    azure.set_graph_read_all(TENANT_ID, CLIENT_ID, true);
    azure.set_directory_read_all(TENANT_ID, CLIENT_ID, true);
    let five = ["email", "offline_access", "openid", "profile", "User.Read"];
    azure.request_graph_permissions(TENANT_ID, CLIENT_ID, &five);
    azure.grant_admin_consent(TENANT_ID, CLIENT_ID, &five);
    env.put_secret("web", &[("client-secret", &value)], &[]).await;
    env.connect_to("contoso", "cloudflare", json!({"cloudflare": {"name": "Contoso", "supportGroups": true}}), "web", json!({})).await;

    let callback = format!("https://{}.cloudflareaccess.com/cdn-cgi/access/callback", idp_bridge_devenv::cloudflare::TEAM);
    let conn = env.wait_condition("contoso", AZURE_APP_CONFIGURED, "False", "RedirectUriMissing").await;
    let message = condition(&conn, AZURE_APP_CONFIGURED).message;
    assert!(message.contains(&callback), "{message}");
    assert!(message.contains("Directory.Read.All, GroupMember.Read.All"), "supportGroups needs both: {message}");

    // Manage adds the callback; the permissions still need a person, and Ready says so.
    azure.set_can_write_itself(TENANT_ID, CLIENT_ID, true);
    env.connect_to(
        "contoso",
        "cloudflare",
        json!({"cloudflare": {"name": "Contoso", "supportGroups": true}}),
        "web",
        json!({"azure": {"registration": "Manage"}}),
    )
    .await;
    let conn = env.wait_condition("contoso", AZURE_APP_CONFIGURED, "False", "PermissionMissing").await;
    assert_eq!(condition(&conn, READY).reason, "PermissionMissing");
    assert!(azure.redirect_uris(TENANT_ID, CLIENT_ID).contains(&callback));
    let all = ["email", "offline_access", "openid", "profile", "User.Read", "Directory.Read.All", "GroupMember.Read.All"];
    azure.request_graph_permissions(TENANT_ID, CLIENT_ID, &all);
    azure.grant_admin_consent(TENANT_ID, CLIENT_ID, &all);
    // A new validation (a rotated secret) reads the registration again at once.
    let rotated = env.canary("cloudflare-rotated");
    azure.add_secret(TENANT_ID, CLIENT_ID, &rotated, Timestamp::now() + SignedDuration::from_hours(24 * 90));
    env.put_secret("web", &[("client-secret", &rotated)], &[]).await;
    env.wait_condition("contoso", AZURE_APP_CONFIGURED, "True", "RegistrationConfigured").await;
    env.wait_ready("contoso").await;
    let organization_reads = cf.requests().iter().filter(|(_, path)| path.ends_with("/access/organizations")).count();
    assert_eq!(organization_reads, 1, "the team domain is read once");
    env.assert_no_canary_leaks().await;
}

/// Logto's callback names the connector: known once Logto gave it an id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logto_needs_the_callback_of_its_connector() {
    const HOST: &str = "logto.example.com";
    let mut env = Env::without_operator("app-logto").await;
    let logto = env.upstreams.logto(HOST, "https://default.logto.app/api").unwrap();
    env.upstreams.allow_broker_host(HOST);
    logto.add_m2m_app("logto-m2m-app", "logto-m2m-secret");
    env.put_secret("logto-m2m", &[("client-id", "logto-m2m-app"), ("client-secret", "logto-m2m-secret")], &[]).await;
    let broker = json!({"spec": {"logto": {"endpoint": format!("https://{HOST}"), "credentialsSecretRef": {"name": "logto-m2m"}}}});
    env.apply("IdentityBroker", "logto", broker).await;
    env.start_operator().await;
    let value = env.canary("logto");
    env.upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, &value, Timestamp::now() + SignedDuration::from_hours(24 * 90));
    env.upstreams.azure.set_graph_read_all(TENANT_ID, CLIENT_ID, true);
    env.upstreams.azure.set_directory_read_all(TENANT_ID, CLIENT_ID, true);
    env.put_secret("web", &[("client-secret", &value)], &[]).await;
    env.connect_to("contoso", "logto", json!({"logto": {}}), "web", json!({})).await;

    let conn = env.wait_condition("contoso", AZURE_APP_CONFIGURED, "False", "RedirectUriMissing").await;
    let id = conn.status.as_ref().and_then(|s| s.broker.as_ref()).and_then(|b| b.id.clone()).expect("the connector's id");
    let message = condition(&conn, AZURE_APP_CONFIGURED).message;
    assert!(message.contains(&format!("add https://{HOST}/callback/{id} under")), "{message}");
    env.assert_no_canary_leaks().await;
}

/// Azure issues no token to an app without a service principal (AADSTS700016), so the check
/// sees one go missing only while a token is still valid: here, between Manage's write and the
/// read that follows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_principal_gone_while_the_token_lasts_is_missing() {
    use idp_bridge_devenv::kit::{Fault, RequestMatch};
    let env = env("app-sp-missing").await;
    let azure = env.upstreams.azure.clone();
    azure.set_redirect_uris(TENANT_ID, CLIENT_ID, &[]);
    azure.set_can_write_itself(TENANT_ID, CLIENT_ID, true);
    let patch = RequestMatch::any().method(reqwest::Method::PATCH).under("/v1.0/applications");
    azure.kit().faults().push(Fault::stall(Duration::from_secs(3)).on(patch));
    env.connect("web", "web", json!({"azure": {"registration": "Manage"}})).await;
    for _ in 0..200 {
        if azure.application_patches() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(azure.application_patches(), 1, "Manage writes the redirect URI");
    azure.set_service_principal(TENANT_ID, CLIENT_ID, false);
    let conn = env.wait_condition("web", AZURE_APP_CONFIGURED, "False", "ServicePrincipalMissing").await;
    assert!(condition(&conn, AZURE_APP_CONFIGURED).message.contains("Enterprise applications > New application"));
    assert_eq!(condition(&conn, READY).reason, "ServicePrincipalMissing");
    assert_eq!(azure.redirect_uris(TENANT_ID, CLIENT_ID), [auth0_callback()], "the write went through");
}
