//! The README's first command runs this binary; keep its walkthrough working.

#[test]
fn the_demo_walkthrough_completes() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_idp-bridge-demo")).arg("--no-wait").output().expect("the demo binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "demo failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    for expected in
        ["Auth0 received the new value", "InvalidSecret", "Auth0 still holds the rotated, working secret: true", "export KUBECONFIG="]
    {
        assert!(stdout.contains(expected), "demo output lacks {expected:?}:\n{stdout}");
    }
    // Secret values from the examples are not printed.
    assert!(!stdout.contains("Zx98Q~example-web-secret-value"));
}
