//! Adapter tests of the operator's app-registration reads and its one write
//! (`AzureClient::registration`, `add_redirect_uri`) over HTTPS against the Entra ID emulator:
//! what each Graph answer becomes, the permissions each read needs, grant paging, the cache,
//! Graph's throttling, and a PATCH that adds and never removes.

use std::{collections::BTreeSet, time::Duration};

use idp_bridge::{
    azure::{
        AzureClient, RegistrationError, ValidationRequest,
        registration::{READ_APPLICATIONS, READ_GRANTS, Registration},
    },
    crd::connection::{AzureCloud, ValidationMode},
    secret::{Fingerprinter, SecretValue},
};
use idp_bridge_devenv::{
    azure::{AzureEmulator, GRAPH_SCOPES},
    kit::{Fault, RequestMatch},
};
use jiff::{SignedDuration, Timestamp};
use tempfile::NamedTempFile;

use crate::common::TENANT;
const CLIENT: &str = "11111111-2222-3333-4444-555555555555";
const CANARY: &str = "rEg8Q~canary-secret-value-must-not-leak-42";
const CALLBACK: &str = "https://acme.eu.auth0.com/login/callback";

struct Env {
    emu: AzureEmulator,
    client: AzureClient,
    _ca_file: NamedTempFile,
    secret: SecretValue,
    fingerprint: String,
}

/// An emulated tenant with the app registered as the portal does (single tenant, User.Read
/// requested, no consent, no redirect URI), and Application.Read.All granted to it.
fn env() -> Env {
    let (emu, upstream, ca_file) = crate::common::azure_upstream();
    emu.add_app(TENANT, CLIENT);
    emu.add_secret(TENANT, CLIENT, CANARY, Timestamp::now() + SignedDuration::from_hours(24 * 90));
    emu.set_graph_read_all(TENANT, CLIENT, true);
    let secret = SecretValue::new(CANARY);
    let fingerprint = Fingerprinter::new(b"test-key".to_vec()).fingerprint(&secret);
    Env { emu, client: AzureClient::new(upstream), _ca_file: ca_file, secret, fingerprint }
}

impl Env {
    fn request(&self) -> ValidationRequest<'_> {
        ValidationRequest {
            cloud: AzureCloud::AzurePublic,
            tenant: TENANT,
            client_id: CLIENT,
            secret: &self.secret,
            fingerprint: &self.fingerprint,
            mode: ValidationMode::ClientCredentials,
            ttl: Duration::from_secs(3600),
        }
    }

    /// Validates (which obtains the Graph token), then reads the registration.
    async fn read(&self) -> Result<Registration, RegistrationError> {
        self.client.validate(&self.request()).await.expect("the secret is valid");
        self.client.registration(&self.request(), TENANT).await
    }
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn no_canary(error: &RegistrationError) {
    for text in [error.to_string(), format!("{error:?}")] {
        assert!(!text.contains(CANARY), "the secret leaked into {text:?}");
    }
}

#[tokio::test]
async fn reads_the_portal_defaults() {
    let env = env();
    env.emu.set_directory_read_all(TENANT, CLIENT, true);
    let registration = env.read().await.unwrap();
    assert_eq!(registration.sign_in_audience, "AzureADMyOrg");
    assert!(registration.redirect_uris.is_empty());
    assert_eq!(registration.requested, names(&["User.Read"]), "ids are turned into Graph's names");
    let sp = registration.service_principal.expect("the portal creates the enterprise application");
    assert!(sp.enabled);
    assert_eq!(sp.consented, Ok(BTreeSet::new()), "requested is not consented");
}

#[tokio::test]
async fn reads_redirect_uris_audience_permissions_and_admin_consent_across_pages() {
    let env = env();
    env.emu.set_directory_read_all(TENANT, CLIENT, true);
    env.emu.set_redirect_uris(TENANT, CLIENT, &["https://first.example/cb", CALLBACK]);
    env.emu.set_sign_in_audience(TENANT, CLIENT, "AzureADMultipleOrgs");
    let all: Vec<&str> = GRAPH_SCOPES.iter().map(|(name, _)| *name).collect();
    env.emu.request_graph_permissions(TENANT, CLIENT, &all);
    // The admin grant and four users' own: five grants at two per page, three pages.
    env.emu.grant_admin_consent(TENANT, CLIENT, &all);
    for _ in 0..4 {
        env.emu.grant_user_consent(TENANT, CLIENT, &["Mail.Read"]);
    }
    let registration = env.read().await.unwrap();
    assert_eq!(registration.redirect_uris, ["https://first.example/cb", CALLBACK], "in the registration's order");
    assert_eq!(registration.sign_in_audience, "AzureADMultipleOrgs");
    assert_eq!(registration.requested, names(&all));
    let consented = registration.service_principal.unwrap().consented.unwrap();
    assert_eq!(consented, names(&all), "a user's consent is not the organisation's");
    let pages = env.emu.kit().log().count(&RequestMatch::any().path_where(|p| p.ends_with("/oauth2PermissionGrants")));
    assert_eq!(pages, 3, "every page was read");
}

#[tokio::test]
async fn a_missing_or_disabled_service_principal() {
    let env = env();
    env.emu.set_directory_read_all(TENANT, CLIENT, true);
    // The token comes first; then the enterprise application goes (the token stays valid).
    env.client.validate(&env.request()).await.unwrap();
    env.emu.set_service_principal(TENANT, CLIENT, false);
    let registration = env.client.registration(&env.request(), TENANT).await.unwrap();
    assert_eq!(registration.service_principal, None);

    let env = self::env();
    env.client.validate(&env.request()).await.unwrap();
    env.emu.set_app_disabled(TENANT, CLIENT, true);
    let registration = env.client.registration(&env.request(), TENANT).await.unwrap();
    assert!(!registration.service_principal.unwrap().enabled);
}

#[tokio::test]
async fn each_read_names_the_permission_it_needs() {
    let env = env();
    // Application.Read.All but not Directory.Read.All: everything but the consent is read.
    let registration = env.read().await.unwrap();
    let consented = registration.service_principal.unwrap().consented;
    assert_eq!(consented.unwrap_err().permission, READ_GRANTS);

    let env = self::env();
    env.emu.set_graph_read_all(TENANT, CLIENT, false);
    let error = env.read().await.unwrap_err();
    no_canary(&error);
    assert!(matches!(error, RegistrationError::Unreadable { permission } if permission == READ_APPLICATIONS), "{error:?}");
    assert!(error.to_string().contains("Application.Read.All"), "{error}");
    assert!(!error.is_transient());
}

#[tokio::test]
async fn reads_are_cached_until_a_new_validation() {
    let env = env();
    let mut request = env.request();
    request.ttl = Duration::from_millis(500);
    env.client.validate(&request).await.unwrap();
    env.client.registration(&request, TENANT).await.unwrap();
    let graph = env.emu.graph_requests_under("/v1.0");
    env.emu.set_redirect_uris(TENANT, CLIENT, &[CALLBACK]);
    let cached = env.client.registration(&request, TENANT).await.unwrap();
    assert!(cached.redirect_uris.is_empty(), "served from the cache");
    assert_eq!(env.emu.graph_requests_under("/v1.0"), graph, "nothing sent");
    // The validation runs out and is asked again: the registration is read again with it.
    tokio::time::sleep(Duration::from_millis(600)).await;
    env.client.validate(&request).await.unwrap();
    let fresh = env.client.registration(&request, TENANT).await.unwrap();
    assert_eq!(fresh.redirect_uris, [CALLBACK]);
}

/// The expiry lookup and the registration check read the same application object: one Graph
/// read between them per validation, whichever comes first.
#[tokio::test]
async fn the_expiry_and_the_registration_share_one_application_read() {
    let env = env();
    let applications = || env.emu.kit().log().count(&RequestMatch::any().path_where(|p| p.starts_with("/v1.0/applications")));
    let mut request = env.request();
    request.ttl = Duration::from_millis(500);
    env.client.validate(&request).await.unwrap();
    let expiry = env.client.secret_expiry(&request, TENANT).await.unwrap();
    let registration = env.client.registration(&request, TENANT).await.unwrap();
    assert_eq!(applications(), 1, "read once for both");
    assert!(expiry.expires_at > Timestamp::now(), "{expiry:?}");
    assert_eq!(registration.sign_in_audience, "AzureADMyOrg");

    // The other order, after a new validation (which drops what was read with the old one).
    env.emu.set_sign_in_audience(TENANT, CLIENT, "AzureADMultipleOrgs");
    tokio::time::sleep(Duration::from_millis(600)).await;
    env.client.validate(&request).await.unwrap();
    let registration = env.client.registration(&request, TENANT).await.unwrap();
    env.client.secret_expiry(&request, TENANT).await.unwrap();
    assert_eq!(registration.sign_in_audience, "AzureADMultipleOrgs", "read again with the new validation");
    assert_eq!(applications(), 2, "and once for both again");
}

#[tokio::test]
async fn graph_throttling_blocks_the_app_for_its_retry_after() {
    let env = env();
    env.client.validate(&env.request()).await.unwrap();
    env.emu.kit().faults().push(Fault::status(429).on(RequestMatch::any().under("/v1.0")).retry_after(30));
    let first = env.client.registration(&env.request(), TENANT).await.unwrap_err();
    assert!(first.is_transient(), "{first:?}");
    let sent = env.emu.graph_requests_under("/v1.0");
    for _ in 0..3 {
        match env.client.registration(&env.request(), TENANT).await.unwrap_err() {
            RegistrationError::Throttled { retry_after: Some(left) } => {
                assert!(left <= Duration::from_secs(30) && left > Duration::from_secs(20))
            }
            other => panic!("expected the block, got {other:?}"),
        }
    }
    assert_eq!(env.emu.graph_requests_under("/v1.0"), sent, "nothing was sent during the block");
    // The expiry lookup shares Graph's block.
    assert!(env.client.secret_expiry(&env.request(), TENANT).await.unwrap_err().is_transient());
    assert_eq!(env.emu.graph_requests_under("/v1.0"), sent);
}

#[tokio::test]
async fn graph_outages_are_transient_and_never_show_the_secret() {
    let env = env();
    env.client.validate(&env.request()).await.unwrap();
    env.emu.kit().faults().push(Fault::status(503).on(RequestMatch::any().under("/v1.0")));
    let error = env.client.registration(&env.request(), TENANT).await.unwrap_err();
    no_canary(&error);
    assert!(error.is_transient(), "{error:?}");
}

#[tokio::test]
async fn adding_a_redirect_uri_keeps_every_uri_a_person_added() {
    let env = env();
    env.emu.set_redirect_uris(TENANT, CLIENT, &["https://b.example/cb"]);
    env.read().await.unwrap();

    // Without Application.ReadWrite.OwnedBy and ownership, Graph refuses; nothing changes.
    let denied = env.client.add_redirect_uri(&env.request(), TENANT, CALLBACK).await.unwrap_err();
    assert!(matches!(denied, RegistrationError::WriteDenied), "{denied:?}");
    assert!(denied.to_string().contains("Application.ReadWrite.OwnedBy"));
    assert_eq!(env.emu.redirect_uris(TENANT, CLIENT), ["https://b.example/cb"]);

    // A person adds a URI after the operator's read: the write keeps it.
    env.emu.set_redirect_uris(TENANT, CLIENT, &["https://b.example/cb", "https://a.example/cb"]);
    env.emu.set_can_write_itself(TENANT, CLIENT, true);
    assert!(env.client.add_redirect_uri(&env.request(), TENANT, CALLBACK).await.unwrap());
    assert_eq!(
        env.emu.redirect_uris(TENANT, CLIENT),
        ["https://b.example/cb", "https://a.example/cb", CALLBACK],
        "added at the end; nothing removed or reordered"
    );
    let reread = env.client.registration(&env.request(), TENANT).await.unwrap();
    assert_eq!(reread.redirect_uris.last().map(String::as_str), Some(CALLBACK), "the write dropped the cached registration");

    // Already there: no write.
    let patches = env.emu.application_patches();
    assert!(!env.client.add_redirect_uri(&env.request(), TENANT, CALLBACK).await.unwrap());
    assert_eq!(env.emu.application_patches(), patches);
}

#[tokio::test]
async fn graphs_own_service_principal_is_read_once_per_tenant() {
    let env = env();
    env.read().await.unwrap();
    let graph_sp = |emu: &AzureEmulator| emu.graph_requests_under("/v1.0/servicePrincipals(appId='00000003-0000-0000-c000-000000000000')");
    assert_eq!(graph_sp(&env.emu), 1);
    // Another app of the tenant: its own reads, but Graph's permission names from the cache.
    let other = "22222222-3333-4444-5555-666666666666";
    let other_secret = "oTh8Q~another-app-secret-value-000000";
    env.emu.add_app(TENANT, other);
    env.emu.add_secret(TENANT, other, other_secret, Timestamp::now() + SignedDuration::from_hours(24));
    env.emu.set_graph_read_all(TENANT, other, true);
    let secret = SecretValue::new(other_secret);
    let fingerprint = Fingerprinter::new(b"test-key".to_vec()).fingerprint(&secret);
    let request = ValidationRequest { client_id: other, secret: &secret, fingerprint: &fingerprint, ..env.request() };
    env.client.validate(&request).await.unwrap();
    let registration = env.client.registration(&request, TENANT).await.unwrap();
    assert_eq!(registration.requested, names(&["User.Read"]));
    assert_eq!(graph_sp(&env.emu), 1, "read once for the tenant");
}
