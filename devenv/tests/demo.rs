//! The README's first command runs this binary; keep its walkthrough working.

const CONNECTIONS: [&str; 5] = ["contoso-access", "contoso-logto", "contoso-native", "contoso-unified", "contoso-web"];

#[test]
fn the_demo_walkthrough_completes() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_idp-bridge-demo")).arg("--no-wait").output().expect("the demo binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "demo failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    for expected in [
        "Auth0 received the new value",
        "Auth0 still holds the rotated, working secret: true",
        "export KUBECONFIG=",
        "$ kubectl get aadc -A",
        "$ kubectl describe aadc contoso-web -n demo",
        "$ idp-bridge rotate demo/contoso-web",
        "previous password removed",
        "Auth0 holds the new password: true",
        "the bootstrap one is gone",
        "contoso-web   auth0    3f2a1c4e-8b7d-4e6a-9c5b-2d1e0f9a8b7c   False   RedirectUriMissing",
        "add https://acme.eu.auth0.com/login/callback under Authentication > Web > Redirect URIs",
        "Event RedirectUriAdded: added https://acme.eu.auth0.com/login/callback",
    ] {
        assert!(stdout.contains(expected), "demo output lacks {expected:?}:\n{stdout}");
    }
    assert_kubectl_tables(&stdout);
    assert_kubectl_describe(&stdout);
    // Secret values from the examples are not printed.
    assert!(!stdout.contains("Zx98Q~example-web-secret-value"));
}

/// The output of the real `kubectl get aadc -A`: its header, and every connection Ready with a
/// readable expiry or none (a `date` column would print `<invalid>` for it).
fn assert_kubectl_tables(stdout: &str) {
    let lines: Vec<Vec<&str>> = stdout.lines().map(|l| l.split_whitespace().collect()).collect();
    let header = ["NAMESPACE", "NAME", "BROKER", "TENANT", "READY", "REASON", "EXPIRES", "AGE"];
    let table = lines.iter().position(|words| words == &header).unwrap_or_else(|| panic!("no kubectl get aadc -A header:\n{stdout}"));
    let rows = &lines[table + 1..table + 1 + CONNECTIONS.len()];
    for (row, name) in rows.iter().zip(CONNECTIONS) {
        assert_eq!(row[..2], ["demo", name], "{stdout}");
        assert_eq!(row[3..6], ["3f2a1c4e-8b7d-4e6a-9c5b-2d1e0f9a8b7c", "True", "Ready"], "{stdout}");
        // Expires is blank where Graph gives no expiry (contoso-native); Age is the last cell.
        if row.len() == 8 {
            assert!(row[6].parse::<jiff::Timestamp>().is_ok(), "Expires {:?} is not RFC 3339:\n{stdout}", row[6]);
        }
    }
    assert!(!stdout.contains("<invalid>"), "kubectl printed <invalid>:\n{stdout}");
}

/// `kubectl describe` of the refused connection shows the Ready condition's reason.
fn assert_kubectl_describe(stdout: &str) {
    let describe = &stdout[stdout.find("$ kubectl describe aadc contoso-web").expect("a describe")..];
    let lines: Vec<Vec<&str>> = describe.lines().map(|l| l.split_whitespace().collect()).collect();
    for expected in [&["Name:", "contoso-web"][..], &["Kind:", "AzureAdConnection"], &["Reason:", "InvalidSecret"], &["Type:", "Ready"]] {
        assert!(lines.iter().any(|words| words == expected), "describe lacks {expected:?}:\n{describe}");
    }
}
