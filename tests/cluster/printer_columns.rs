//! The CRD's printer columns as people see them: the real `kubectl get aadc`, run against the
//! control plane, for a Ready connection with a known expiry and one Azure refused. The API's
//! Table (checked in crd_validation) is not enough: kubectl decides how each column *type*
//! renders, and a `date` column shows a future expiry as `<invalid>`.

use std::time::Instant;

use crate::common::e2e::{CLIENT_ID, Env, TENANT_ID};
use idp_bridge::crd::conditions::READY;
use serde_json::json;

const HEADER: [&str; 7] = ["NAME", "BROKER", "TENANT", "READY", "REASON", "EXPIRES", "AGE"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_renders_every_printer_column() {
    let started = Instant::now();
    let mut env = Env::new("printer-columns").await;
    env.upstreams.azure.set_graph_read_all(TENANT_ID, CLIENT_ID, true);
    let value = env.canary("valid");
    let expires = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 200)).round(jiff::Unit::Second).unwrap();
    env.upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, &value, expires);
    env.put_secret("valid-secret", &[("client-secret", &value)], &[]).await;
    env.connect("valid", "valid-secret", json!({})).await;
    let wrong = env.canary("wrong");
    env.put_secret("wrong-secret", &[("client-secret", &wrong)], &[]).await;
    env.connect("refused", "wrong-secret", json!({})).await;
    env.wait_ready("valid").await;
    let refused = env.wait_condition("refused", READY, "False", "InvalidSecret").await;
    // Azure refused the secret before the tenant or the expiry was learnt: those cells are blank.
    let refused_status = refused.status.unwrap_or_default();
    let refused_tenant = refused_status.tenant_id.unwrap_or_default();
    let refused_expiry = refused_status.secret.and_then(|s| s.expires_at).map(|t| t.0.to_string()).unwrap_or_default();

    let table = kubectl_get(&["get", "aadc", "--namespace", &env.ns]).await;
    let (header, rows) = table.split_first().expect("kubectl printed a header");
    assert_eq!(header, &HEADER, "{table:?}");
    let row = |name: &str| rows.iter().find(|r| r[0] == name).unwrap_or_else(|| panic!("no row {name} in {table:?}"));

    let valid = row("valid");
    assert_eq!(valid[1..6], ["auth0", TENANT_ID, "True", "Ready", expires.to_string().as_str()], "{table:?}");
    assert_age_since(&valid[6], started);

    let refused = row("refused");
    assert_eq!(refused[1..6], ["auth0", &refused_tenant, "False", "InvalidSecret", &refused_expiry], "{table:?}");
    assert_age_since(&refused[6], started);
    env.assert_no_canary_leaks().await;
}

/// kubectl's table output as cells, cut where the header's columns start: kubectl pads columns
/// to a common width and leaves an empty cell blank.
async fn kubectl_get(args: &[&str]) -> Vec<Vec<String>> {
    let mut kubectl = crate::common::control_plane().await.kubectl();
    kubectl.args(args);
    let output = tokio::task::spawn_blocking(move || kubectl.output()).await.unwrap().expect("kubectl runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "kubectl {args:?} failed ({}): {stdout}\n{}", output.status, String::from_utf8_lossy(&output.stderr));
    let starts = column_starts(stdout.lines().next().unwrap_or_default());
    stdout.lines().map(|line| cells(line, &starts)).collect()
}

/// Where each header word begins (header names hold no spaces).
fn column_starts(header: &str) -> Vec<usize> {
    let bytes = header.as_bytes();
    (0..bytes.len()).filter(|&i| bytes[i] != b' ' && (i == 0 || bytes[i - 1] == b' ')).collect()
}

/// `line` cut at the column offsets `starts`, each cell trimmed.
fn cells(line: &str, starts: &[usize]) -> Vec<String> {
    let ends = starts.iter().skip(1).copied().chain([usize::MAX]);
    starts.iter().zip(ends).map(|(&start, end)| line.get(start..end.min(line.len())).unwrap_or_default().trim().to_owned()).collect()
}

/// The Age cell is kubectl's short duration (`42s`, `2m5s`) and no older than the test.
fn assert_age_since(age: &str, started: Instant) {
    let seconds = parse_short_duration(age).unwrap_or_else(|| panic!("Age {age:?} is not a duration"));
    assert!(seconds <= started.elapsed().as_secs() + 1, "Age {age} predates the test");
}

/// Seconds in a duration like kubectl's `HumanDuration` prints: digits and units `s`, `m`, `h`, `d`.
fn parse_short_duration(text: &str) -> Option<u64> {
    let mut total = 0;
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return None,
        };
        total += digits.parse::<u64>().ok()? * unit;
        digits.clear();
    }
    (digits.is_empty() && !text.is_empty()).then_some(total)
}

#[test]
fn rows_are_cut_at_the_header_columns_keeping_blank_cells() {
    let header = "NAME      TENANT   READY";
    let starts = column_starts(header);
    assert_eq!(starts, [0, 10, 19]);
    assert_eq!(cells(header, &starts), ["NAME", "TENANT", "READY"]);
    assert_eq!(cells("refused            False", &starts), ["refused", "", "False"]);
}

#[test]
fn short_durations_parse_like_kubectl_prints_them() {
    assert_eq!(parse_short_duration("42s"), Some(42));
    assert_eq!(parse_short_duration("2m5s"), Some(125));
    assert_eq!(parse_short_duration("3h"), Some(10_800));
    assert_eq!(parse_short_duration("<invalid>"), None);
    assert_eq!(parse_short_duration("12"), None);
    assert_eq!(parse_short_duration(""), None);
}
