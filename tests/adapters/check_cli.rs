//! `idp-bridge check` as an engineer runs it: the real binary against the Azure emulator, the
//! secret on stdin, a report and an exit code that tell valid, invalid and unreachable apart.

use std::{
    io::Write,
    process::{Command, Stdio},
};

use idp_bridge_devenv::{azure::AzureEmulator, tls::TestCa};

const TENANT: &str = "3f2a1c4e-8b7d-4e6a-9c5b-2d1e0f9a8b7c";
const CLIENT: &str = "8c2e4b6a-1f3d-4a5b-9e7c-6d8f0a2b4c6e";
const SECRET: &str = "Zx98Q~check-canary-value-1234567890";

struct Setup {
    azure: AzureEmulator,
    ca: tempfile::NamedTempFile,
}

fn setup() -> Setup {
    idp_bridge::install_crypto_provider();
    let ca = TestCa::new();
    let file = tempfile::NamedTempFile::new().unwrap();
    ca.write_pem(file.path()).unwrap();
    let azure = AzureEmulator::start(&ca).unwrap();
    azure.add_tenant(TENANT, &["contoso.onmicrosoft.com"]);
    azure.add_app(TENANT, CLIENT);
    Setup { azure, ca: file }
}

/// Runs `idp-bridge check` off the test's runtime threads (the emulator serves meanwhile).
async fn check(setup: &Setup, secret: &str, extra: &[&str]) -> (i32, String, String) {
    let base = setup.azure.base_url();
    let overrides = format!("login.microsoftonline.com={base},graph.microsoft.com={base}");
    let ca = setup.ca.path().to_owned();
    let (secret, extra): (String, Vec<String>) = (secret.to_owned(), extra.iter().map(|s| s.to_string()).collect());
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_idp-bridge"))
            .args(["check", "--tenant", "contoso.onmicrosoft.com", "--client-id", CLIENT, "--endpoint-overrides", &overrides])
            .arg("--ca-bundle")
            .arg(&ca)
            .args(&extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(format!("{secret}\n").as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_secret_reports_tenant_and_expiry() {
    let setup = setup();
    let end = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 45 + 1);
    let key_id = setup.azure.add_secret(TENANT, CLIENT, SECRET, end);
    setup.azure.set_graph_read_all(TENANT, CLIENT, true);
    let (code, out, err) = check(&setup, SECRET, &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("contoso.onmicrosoft.com -> {TENANT}")), "{out}");
    assert!(out.contains("Secret   valid"), "{out}");
    assert!(out.contains("(45 days left") && out.contains(&key_id), "{out}");
    assert!(!out.contains(SECRET) && !err.contains(SECRET));

    let (code, out, _) = check(&setup, SECRET, &["--output", "json"]).await;
    assert_eq!(code, 0);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["valid"], true);
    assert_eq!(report["tenant_id"], TENANT);
    assert_eq!(report["expiry"]["days_left"], 45);
    assert_eq!(report["expiry"]["key_id"], key_id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_and_unreachable_have_their_own_exit_codes() {
    let setup = setup();
    setup.azure.add_secret(TENANT, CLIENT, SECRET, jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24));
    let (code, out, _) = check(&setup, "Wr0Q~wrong-value-not-the-secret", &[]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("NOT VALID (AADSTS7000215, InvalidSecret)"), "{out}");
    assert!(out.contains("not its Secret ID"), "the report says what to do: {out}");
    assert!(!out.contains("Wr0Q~wrong-value"));

    let expired = "Ex5Q~expired-secret-value-0000000000";
    setup.azure.add_secret(TENANT, CLIENT, expired, jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1));
    let (code, out, _) = check(&setup, expired, &["--output", "json"]).await;
    assert_eq!(code, 1);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((report["reason"].as_str(), report["aadsts"].as_u64()), (Some("SecretExpired"), Some(7000222)));

    let (code, out, _) = check(&setup, "6f5e2a39-0a42-4a4e-9a55-4f2a3cfe2f0b", &[]).await;
    assert_eq!(code, 1);
    assert!(out.contains("SecretIdInsteadOfValue"), "{out}");

    setup.azure.shutdown();
    let (code, out, _) = check(&setup, SECRET, &["--http-timeout", "2s"]).await;
    assert_eq!(code, 3, "unreachable is told apart from invalid: {out}");
    assert!(out.contains("AzureUnreachable"), "{out}");
}

#[test]
fn the_secret_is_never_an_argument() {
    let out = Command::new(env!("CARGO_BIN_EXE_idp-bridge")).args(["check", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--secret-file") && !help.contains("--secret "), "{help}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_broker_the_app_registration_is_checked_as_the_operator_does() {
    let setup = setup();
    setup.azure.add_secret(TENANT, CLIENT, SECRET, jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 90));
    setup.azure.set_graph_read_all(TENANT, CLIENT, true);
    setup.azure.set_directory_read_all(TENANT, CLIENT, true);
    let callback = "https://acme.eu.auth0.com/login/callback";
    let auth0 = ["--broker", "auth0", "--redirect-uri", callback];

    // The portal's defaults: no redirect URI, Directory.Read.All not requested, nothing consented.
    let (code, out, err) = check(&setup, SECRET, &auth0).await;
    assert_eq!(code, 1, "a registration that blocks sign-in fails the check: {out}{err}");
    assert!(out.contains("App      False (RedirectUriMissing)"), "{out}");
    assert!(out.contains(&format!("add {callback} under")), "{out}");
    assert!(out.contains("PermissionMissing: ") && out.contains("ConsentMissing: "), "{out}");
    assert!(!out.contains(SECRET) && !err.contains(SECRET));

    setup.azure.set_redirect_uris(TENANT, CLIENT, &[callback]);
    setup.azure.request_graph_permissions(TENANT, CLIENT, &["User.Read", "Directory.Read.All"]);
    setup.azure.grant_admin_consent(TENANT, CLIENT, &["User.Read", "Directory.Read.All"]);
    let mut json = auth0.to_vec();
    json.extend(["--output", "json"]);
    let (code, out, _) = check(&setup, SECRET, &json).await;
    assert_eq!(code, 0, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (report["registration"]["status"].as_str(), report["registration"]["reason"].as_str()),
        (Some("True"), Some("RegistrationConfigured"))
    );

    // The account type is checked against --sign-in-audience.
    let mut common = auth0.to_vec();
    common.extend(["--sign-in-audience", "common"]);
    let (code, out, _) = check(&setup, SECRET, &common).await;
    assert_eq!(code, 1);
    assert!(out.contains("SignInAudienceMismatch"), "{out}");

    // Unreadable: Unknown, naming the permission; the secret is still valid.
    setup.azure.set_graph_read_all(TENANT, CLIENT, false);
    let (code, out, _) = check(&setup, SECRET, &auth0).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("App      Unknown (RegistrationUnreadable)") && out.contains("Application.Read.All"), "{out}");

    // Without --broker nothing is read from the registration.
    let (code, out, _) = check(&setup, SECRET, &[]).await;
    assert_eq!(code, 0);
    assert!(!out.contains("App "), "{out}");
}
