//! The committed CRDs under crds/ must equal what the Rust types generate.

#[test]
fn committed_crds_match_the_rust_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let mut expected_files = Vec::new();
    for definition in idp_bridge::crd::all() {
        let name = idp_bridge::crd::file_name(&definition);
        let committed = std::fs::read_to_string(dir.join(&name))
            .unwrap_or_else(|e| panic!("crds/{name} is missing ({e}); run `cargo run -- crds --out-dir crds`"));
        assert!(
            committed == idp_bridge::crd::to_yaml(&definition),
            "crds/{name} differs from the Rust types; regenerate with `cargo run -- crds --out-dir crds` and commit it"
        );
        expected_files.push(name);
    }
    let mut present: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    present.sort();
    expected_files.sort();
    assert_eq!(present, expected_files, "crds/ holds files no CRD generates");
}

/// The Helm chart ships the same CRDs in charts/idp-bridge/crds/ (Helm installs them on first
/// install and never touches them again).
#[test]
fn chart_crds_equal_the_committed_crds() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = |dir: &std::path::Path| {
        let mut names: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    };
    let (top, chart) = (root.join("crds"), root.join("charts/idp-bridge/crds"));
    let fix = "run `cp crds/*.yaml charts/idp-bridge/crds/` (after `cargo run -- crds --out-dir crds`) and commit both";
    assert_eq!(files(&chart), files(&top), "charts/idp-bridge/crds/ holds other files than crds/; {fix}");
    for name in files(&top) {
        let (a, b) = (std::fs::read(top.join(&name)).unwrap(), std::fs::read(chart.join(&name)).unwrap());
        assert!(a == b, "charts/idp-bridge/crds/{name} differs from crds/{name}; {fix}");
    }
}
