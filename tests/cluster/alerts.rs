//! The chart's alerts and Grafana dashboard, checked by promtool (built from the Prometheus module
//! by `scripts/control-plane-bins.sh`) and against what a real operator exports: the rendered
//! PrometheusRule passes `promtool check rules` and the unit tests in
//! `charts/idp-bridge/tests/alerts.test.yaml` (each alert fires and resolves when it should); every
//! dashboard query passes `promtool check rules` as a recording rule; and every metric and label
//! the rules, the tests' input series and the dashboard use appears in a scrape of the operator's
//! /metrics with a Ready connection, so a renamed metric or label fails here.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::OnceLock,
};

use crate::{
    chart::{chart_dir, find, render},
    common::e2e::{CLIENT_ID, Env, TENANT_ID},
};
use idp_bridge_devenv::control_plane;
use promql_parser::parser::{Expr, VectorSelector};
use serde_json::{Value, json};

/// The release the unit tests' expectations are written for.
const RELEASE: &str = "idp-bridge";
const RELEASE_NAMESPACE: &str = "idp-bridge";
/// What the dashboard's `$job` variable resolves to for that release (the metrics Service).
const JOB: &str = "idp-bridge-metrics";
/// Labels Prometheus adds to every scraped series from its target; the operator does not export them.
/// `pod` is the one the chart's ServiceMonitor adds that differs between replicas: the alerts
/// drop it (with `instance`) so that a failover does not change an alert's identity.
const TARGET_LABELS: [&str; 3] = ["job", "instance", "pod"];
const RULES_FILE: &str = "idp-bridge-rules.yaml";
const TEST_FILE: &str = "alerts.test.yaml";

fn promtool_binary() -> &'static Path {
    static PROMTOOL: OnceLock<PathBuf> = OnceLock::new();
    PROMTOOL.get_or_init(|| {
        let dir = control_plane::binaries().unwrap_or_else(|e| panic!("no control-plane binaries: {e}")).dir;
        let promtool = dir.join("promtool");
        assert!(promtool.is_file(), "{} has no promtool; run scripts/control-plane-bins.sh", dir.display());
        promtool
    })
}

/// promtool with `args`, in `dir` (test files name their rule files relative to themselves).
fn promtool(dir: &Path, args: &[&str]) -> Output {
    Command::new(promtool_binary()).args(args).current_dir(dir).output().unwrap_or_else(|e| panic!("running promtool: {e}"))
}

fn printed(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// The `spec` (rule groups) of the chart's PrometheusRule, rendered with `values` on top of
/// `metrics.prometheusRule.enabled`.
fn rendered_rules(values: Value) -> Value {
    let mut all = json!({"metrics": {"prometheusRule": {"enabled": true}}});
    if let Some(extra) = values["metrics"]["prometheusRule"].as_object() {
        all["metrics"]["prometheusRule"].as_object_mut().unwrap().extend(extra.clone());
    }
    let docs = render(RELEASE, RELEASE_NAMESPACE, &all);
    find(&docs, "PrometheusRule", RELEASE)["spec"].clone()
}

/// The rule expressions of rendered rule groups.
fn rule_expressions(rules: &Value) -> Vec<String> {
    rules["groups"]
        .as_array()
        .expect("rule groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").iter())
        .map(|r| r["expr"].as_str().expect("an expr").to_owned())
        .collect()
}

fn alert_tests() -> Value {
    let text = std::fs::read_to_string(chart_dir().join("tests").join(TEST_FILE)).expect("reading the alert unit tests");
    serde_yaml::from_str(&text).expect("the alert unit tests are YAML")
}

/// A directory holding `rules` as the rule file the unit tests name, and the unit tests.
fn rules_and_tests(rules: &Value) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("idp-bridge-alerts").tempdir().expect("a temp dir");
    std::fs::write(dir.path().join(RULES_FILE), serde_yaml::to_string(rules).unwrap()).expect("writing the rules");
    std::fs::copy(chart_dir().join("tests").join(TEST_FILE), dir.path().join(TEST_FILE)).expect("copying the unit tests");
    dir
}

/// The shipped dashboard's queries (panel title, PromQL), with Grafana's variables as Grafana
/// would expand them for the chart's release: `$job` its metrics Service, `$__rate_interval` 5m.
fn dashboard_queries() -> Vec<(String, String)> {
    raw_dashboard_queries().into_iter().map(|(title, expr)| (title, expand_variables(&expr))).collect()
}

/// The dashboard's queries as written, with Grafana's variables.
fn raw_dashboard_queries() -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for panel in dashboard()["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("every panel has targets") {
            let expr = target["expr"].as_str().expect("every target has a PromQL expr");
            queries.push((panel["title"].as_str().expect("a title").to_owned(), expr.to_owned()));
        }
    }
    queries
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(chart_dir().join("dashboards/idp-bridge.json")).expect("reading the dashboard");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

fn expand_variables(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m").replace("$job", JOB)
}

/// The metric the dashboard's `$job` variable lists the label values of.
fn job_variable_metric() -> String {
    let dashboard = dashboard();
    let job = dashboard["templating"]["list"].as_array().unwrap().iter().find(|v| v["name"] == "job").expect("a job variable");
    let query = job["query"]["query"].as_str().expect("a label_values query");
    let inner = query.strip_prefix("label_values(").and_then(|q| q.strip_suffix(", job)")).expect("label_values(<metric>, job)");
    inner.to_owned()
}

// ---------------------------------------------------------------------------------------------
// PromQL: which series an expression selects

/// A vector selector's metric name and the label names it matches on.
#[derive(Debug)]
struct Selected {
    metric: String,
    labels: BTreeSet<String>,
}

/// Every selector in `expr`, and every label it groups or matches by.
fn selections(expr: &str) -> (Vec<Selected>, BTreeSet<String>) {
    let ast = promql_parser::parser::parse(expr).unwrap_or_else(|e| panic!("{expr:?} is not PromQL: {e}"));
    let (mut selected, mut grouping) = (Vec::new(), BTreeSet::new());
    walk(&ast, &mut selected, &mut grouping);
    (selected, grouping)
}

fn walk(expr: &Expr, selected: &mut Vec<Selected>, grouping: &mut BTreeSet<String>) {
    match expr {
        Expr::Aggregate(aggregate) => {
            grouping.extend(aggregate.modifier.iter().flat_map(|m| m.labels().labels.iter().cloned()));
            walk(&aggregate.expr, selected, grouping);
            aggregate.param.iter().for_each(|p| walk(p, selected, grouping));
        }
        Expr::Binary(binary) => {
            grouping.extend(binary.modifier.iter().flat_map(|m| m.matching.iter()).flat_map(|m| m.labels().labels.iter().cloned()));
            walk(&binary.lhs, selected, grouping);
            walk(&binary.rhs, selected, grouping);
        }
        Expr::Unary(unary) => walk(&unary.expr, selected, grouping),
        Expr::Paren(paren) => walk(&paren.expr, selected, grouping),
        Expr::Subquery(subquery) => walk(&subquery.expr, selected, grouping),
        Expr::Call(call) => call.args.args.iter().for_each(|a| walk(a, selected, grouping)),
        Expr::VectorSelector(vs) => selected.push(selector(vs)),
        Expr::MatrixSelector(ms) => selected.push(selector(&ms.vs)),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

fn selector(vs: &VectorSelector) -> Selected {
    let matchers = vs.matchers.matchers.iter().chain(vs.matchers.or_matchers.iter().flatten());
    let mut labels = BTreeSet::new();
    let mut metric = vs.name.clone();
    for matcher in matchers {
        if matcher.name == "__name__" {
            metric = Some(matcher.value.clone());
        } else {
            labels.insert(matcher.name.clone());
        }
    }
    Selected { metric: metric.expect("every selector names its metric"), labels }
}

/// One series in the exposition or series notation (`name{label="value",...}`).
fn series(notation: &str) -> Selected {
    let parsed = promql_parser::parser::parse(notation).unwrap_or_else(|e| panic!("{notation:?} is not a series: {e}"));
    let Expr::VectorSelector(vs) = parsed else { panic!("{notation:?} is not a series") };
    selector(&vs)
}

/// Sample name -> the label-name sets of its series, from the Prometheus/OpenMetrics text format.
fn exported_series(exposition: &str) -> BTreeMap<String, BTreeSet<BTreeSet<String>>> {
    let mut exported: BTreeMap<String, BTreeSet<BTreeSet<String>>> = BTreeMap::new();
    for line in exposition.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let first_space = line.find(' ').expect("a sample has a value");
        // Label values may hold spaces and braces ("PATCH connections/{id}"); the value never does.
        let end = match line.find('{') {
            Some(brace) if brace < first_space => line.rfind('}').expect("a closing brace") + 1,
            _ => first_space,
        };
        let sample = series(&line[..end]);
        exported.entry(sample.metric).or_default().insert(sample.labels);
    }
    exported
}

/// The label names of `metric` in the scrape, plus the target labels.
fn label_names(exported: &BTreeMap<String, BTreeSet<BTreeSet<String>>>, metric: &str) -> BTreeSet<String> {
    let sets = exported.get(metric).unwrap_or_else(|| panic!("the operator exports no {metric}; it exports {:?}", exported.keys()));
    sets.iter().flatten().cloned().chain(TARGET_LABELS.map(str::to_owned)).collect()
}

/// Every metric and label `expr` uses exists in the scrape (`up` is the target's own series,
/// made by Prometheus, with target labels only).
fn assert_exported(exported: &BTreeMap<String, BTreeSet<BTreeSet<String>>>, what: &str, expr: &str) {
    let (selected, grouping) = selections(expr);
    assert!(!selected.is_empty(), "{what}: {expr:?} selects no series");
    let mut known = BTreeSet::new();
    for s in &selected {
        let labels = if s.metric == "up" {
            ["job", "instance", "namespace"].map(str::to_owned).into_iter().collect()
        } else {
            label_names(exported, &s.metric)
        };
        let unknown: Vec<&String> = s.labels.difference(&labels).collect();
        assert!(unknown.is_empty(), "{what}: {expr:?} matches {} on labels it does not have: {unknown:?} (it has {labels:?})", s.metric);
        known.extend(labels);
    }
    let unknown: Vec<&String> = grouping.difference(&known).collect();
    assert!(unknown.is_empty(), "{what}: {expr:?} groups by labels its series do not have: {unknown:?}");
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn chart_alerts_pass_promtool_check_and_unit_tests() {
    let rules = rendered_rules(json!({}));
    let dir = rules_and_tests(&rules);
    let check = promtool(dir.path(), &["check", "rules", RULES_FILE]);
    assert!(check.status.success(), "promtool check rules:\n{}", printed(&check));
    assert!(printed(&check).contains("SUCCESS: 4 rules found"), "{}", printed(&check));
    let test = promtool(dir.path(), &["test", "rules", TEST_FILE]);
    assert!(test.status.success(), "promtool test rules:\n{}", printed(&test));

    // Every alert has a test in which it fires and a later one in which it has resolved.
    let tests = alert_tests();
    let cases: Vec<&Value> = tests["tests"].as_array().unwrap().iter().flat_map(|t| t["alert_rule_test"].as_array().unwrap()).collect();
    let seconds = |t: &Value| t["eval_time"].as_str().unwrap().parse::<jiff::Span>().unwrap().total(jiff::Unit::Second).unwrap();
    for alert in rules["groups"][0]["rules"].as_array().unwrap().iter().map(|r| r["alert"].as_str().unwrap()) {
        let of_alert: Vec<&&Value> = cases.iter().filter(|c| c["alertname"] == alert).collect();
        let fires = of_alert.iter().filter(|c| !c["exp_alerts"].as_array().unwrap().is_empty()).map(|c| seconds(c)).reduce(f64::min);
        let fires = fires.unwrap_or_else(|| panic!("no unit test in which {alert} fires"));
        assert!(
            of_alert.iter().any(|c| c["exp_alerts"].as_array().unwrap().is_empty() && seconds(c) > fires),
            "no unit test in which {alert} resolves after firing"
        );
    }

    // The tests fail when the rules change: a longer not-ready wait, a shorter expiry window.
    let changed = rendered_rules(json!({"metrics": {"prometheusRule": {"notReadyFor": "20m", "secretExpiryDays": 13}}}));
    let dir = rules_and_tests(&changed);
    let test = promtool(dir.path(), &["test", "rules", TEST_FILE]);
    assert!(!test.status.success(), "the unit tests pass against changed rules:\n{}", printed(&test));
    for alert in ["IdpBridgeConnectionNotReady", "IdpBridgeClientSecretExpiringSoon"] {
        assert!(printed(&test).contains(&format!("alertname: {alert}")), "{alert} failing is reported:\n{}", printed(&test));
    }
}

#[test]
fn dashboard_queries_pass_promtool_check() {
    let queries = dashboard_queries();
    let titles: BTreeSet<&str> = queries.iter().map(|(title, _)| title.as_str()).collect();
    for expected in [
        "Connections by broker and state",
        "Client secrets by time to expiry",
        "Secret rotation latency",
        "Upstream requests by upstream and status",
        "Upstream errors by upstream and status",
        "Reconcile errors",
        "Connections by state and reason",
        "Leader",
    ] {
        assert!(titles.contains(expected), "the dashboard has a panel {expected:?}: {titles:?}");
    }
    // One recording rule per query: promtool parses and checks each as Prometheus would.
    let rules: Vec<Value> = queries
        .iter()
        .enumerate()
        .map(|(i, (title, expr))| json!({"record": format!("idp_bridge_dashboard:query_{i}"), "expr": expr, "labels": {"panel": title}}))
        .collect();
    let dir = tempfile::Builder::new().prefix("idp-bridge-dashboard").tempdir().unwrap();
    let file = dir.path().join("dashboard-rules.yaml");
    std::fs::write(&file, serde_yaml::to_string(&json!({"groups": [{"name": "idp-bridge-dashboard", "rules": rules}]})).unwrap()).unwrap();
    let check = promtool(dir.path(), &["check", "rules", "dashboard-rules.yaml"]);
    assert!(check.status.success(), "promtool check rules on the dashboard's queries:\n{}", printed(&check));
    assert!(printed(&check).contains(&format!("SUCCESS: {} rules found", queries.len())), "{}", printed(&check));
}

#[test]
fn the_readme_lists_every_alert_and_dashboard_query() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).expect("reading README.md");
    let rules = rendered_rules(json!({}));
    for alert in rules["groups"][0]["rules"].as_array().unwrap().iter().map(|r| r["alert"].as_str().unwrap()) {
        assert!(readme.contains(&format!("| `{alert}` |")), "README.md's alerts table lacks {alert}");
    }
    let mut panels: Vec<(String, Vec<String>)> = Vec::new();
    for (title, expr) in raw_dashboard_queries() {
        let code = format!("`{}`", expr.replace('|', "\\|"));
        match panels.last_mut() {
            Some((last, exprs)) if *last == title => exprs.push(code),
            _ => panels.push((title, vec![code])),
        }
    }
    for (title, exprs) in panels {
        let row = format!("| {title} | {} |", exprs.join("<br>"));
        assert!(readme.contains(&row), "README.md's dashboard table lacks the row\n{row}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_and_dashboard_use_what_a_real_operator_exports() {
    let mut env = Env::new("alerts-scrape").await;
    // Graph access, so the operator knows (and exports) the secret's expiry.
    env.upstreams.azure.set_graph_read_all(TENANT_ID, CLIENT_ID, true);
    let value = env.canary("value");
    env.upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, &value, jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 90));
    env.put_secret("web", &[("client-secret", &value)], &[]).await;
    env.connect("web", "web", json!({})).await;
    env.wait_ready("web").await;
    env.wait_for("web", "the secret's expiry known", |c| {
        c.status.as_ref().and_then(|s| s.secret.as_ref()).is_some_and(|s| s.expires_at.is_some())
    })
    .await;
    let (status, exposition) = env.http_get("/metrics").await;
    assert_eq!(status, 200);
    let exported = exported_series(&exposition);
    for metric in [
        "idpbridge_connection_ready",
        "idpbridge_client_secret_expiry_timestamp_seconds",
        "idpbridge_upstream_requests_total",
        "idpbridge_leader",
    ] {
        assert!(exported.contains_key(metric), "a Ready connection with a known expiry exports {metric}:\n{exposition}");
    }

    // The unit tests' input series: the operator's names and labels, plus the target labels.
    let tests = alert_tests();
    for input in tests["tests"].as_array().unwrap().iter().flat_map(|t| t["input_series"].as_array().unwrap()) {
        let notation = input["series"].as_str().unwrap();
        let s = series(notation);
        if s.metric == "up" {
            continue;
        }
        let own: BTreeSet<String> = s.labels.iter().filter(|l| !TARGET_LABELS.contains(&l.as_str())).cloned().collect();
        let sets = exported.get(&s.metric).unwrap_or_else(|| panic!("input series {notation}: the operator exports no {}", s.metric));
        assert!(sets.contains(&own), "input series {notation}: the operator's {} has labels {sets:?}, not {own:?}", s.metric);
    }
    // The rules and every dashboard query.
    for expr in rule_expressions(&rendered_rules(json!({}))) {
        assert_exported(&exported, "alert rule", &expr);
    }
    for (title, expr) in dashboard_queries() {
        assert_exported(&exported, &format!("dashboard panel {title:?}"), &expr);
    }
    let metric = job_variable_metric();
    assert!(exported.contains_key(&metric), "the dashboard's job variable lists {metric}, which the operator does not export");
    env.assert_no_canary_leaks().await;
    env.stop_operator().await;
}
