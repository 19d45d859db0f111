//! The README documents the closed set of condition reasons; keep it complete.

use idp_bridge::crd::conditions::Reason;

#[test]
fn every_condition_reason_is_documented() {
    let readme = include_str!("../../README.md");
    for reason in Reason::ALL {
        assert!(readme.contains(&format!("| `{}` |", reason.as_str())), "README.md's reasons table lacks {}", reason.as_str());
    }
}

#[test]
fn the_readme_names_both_setup_commands() {
    let readme = include_str!("../../README.md");
    assert!(readme.contains("scripts/demo.sh") && readme.contains("scripts/test.sh"));
    assert!(include_str!("../../.ci/run").contains("scripts/test.sh"), ".ci/run runs the README's test command");
}
