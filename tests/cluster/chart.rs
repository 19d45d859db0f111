//! The Helm chart (`charts/idp-bridge`) on a real kube-apiserver and etcd: `helm lint` and
//! `helm template`, the values schema's messages, a server-side dry run of every rendered object,
//! `helm install` (CRDs included), the operator running out of cluster as the chart's
//! ServiceAccount (impersonation) and reconciling connections to Ready, which proves the RBAC is
//! enough, while actions outside it are forbidden; the same with `watchNamespaces` (namespaced
//! Roles), `helm upgrade` and `helm uninstall`, and connection status as kstatus itself reads it
//! (Flux, kpt, Config Sync).
//!
//! helm comes from the harness's bin dir (`scripts/control-plane-bins.sh`); a missing helm fails.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::OnceLock,
    time::Duration,
};

use crate::common::e2e::{AUTH0_DOMAIN, CLIENT_ID, M2M_CLIENT, M2M_SECRET, TENANT_DOMAIN, TENANT_ID};
use clap::Parser as _;
use idp_bridge::{
    config::{Cli, Command as CliCommand, Config, RunArgs},
    crd::{AzureAdConnection, ClusterIdentityBroker, IdentityBroker, conditions},
};
use idp_bridge_devenv::{
    control_plane::{self, ControlPlane, create_namespace, install_crds, unique_name},
    stack::{RunningOperator, Upstreams},
};
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        coordination::v1::Lease,
        core::v1::{ConfigMap, Namespace, Pod, Secret, Service, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, ValidationDirective},
    core::GroupVersionKind,
    discovery::Scope,
};
use serde::Deserialize as _;
use serde_json::{Value, json};

const MANAGER: &str = "chart-test";
const WAIT: Duration = Duration::from_secs(40);
const CF_ACCOUNT: &str = "0123456789abcdef0123456789abcdef";
const CF_TOKEN: &str = "cf-api-token-value";

// ---------------------------------------------------------------------------------------------
// helm

pub(crate) fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/idp-bridge")
}

pub(crate) fn chart() -> String {
    chart_dir().display().to_string()
}

/// helm from the harness's bin dir; a missing helm fails the test.
fn helm_binary() -> &'static Path {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| control_plane::binaries().and_then(|bins| bins.helm()).unwrap_or_else(|e| panic!("no helm: {e}")))
}

/// A private HELM_*_HOME, so the tests never read or write the user's helm configuration.
fn helm_home() -> &'static Path {
    static HOME: OnceLock<tempfile::TempDir> = OnceLock::new();
    HOME.get_or_init(|| tempfile::Builder::new().prefix("idp-bridge-helm").tempdir().expect("a temp dir for helm")).path()
}

/// Runs helm against the cluster of `kubeconfig` (none: commands that need no cluster).
fn helm(kubeconfig: Option<&Path>, args: &[&str]) -> Output {
    let home = helm_home();
    let mut command = Command::new(helm_binary());
    command
        .args(args)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env("KUBECONFIG", kubeconfig.map_or_else(|| home.join("no-kubeconfig"), Path::to_path_buf))
        .env_remove("HELM_NAMESPACE")
        .env_remove("HELM_KUBECONTEXT")
        .env_remove("HELM_DRIVER");
    let mut run = move || command.output().unwrap_or_else(|e| panic!("running {}: {e}", helm_binary().display()));
    // Blocking helm inside a test runtime: let the runtime move its other tasks elsewhere.
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(run),
        _ => run(),
    }
}

/// helm that must succeed; returns its standard output.
pub(crate) fn helm_ok(kubeconfig: Option<&Path>, args: &[&str]) -> String {
    let output = helm(kubeconfig, args);
    assert!(
        output.status.success(),
        "helm {} failed ({}):\n{}\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8(output.stdout).expect("helm prints UTF-8")
}

/// helm that must fail; returns its standard error.
fn helm_err(args: &[&str]) -> String {
    let output = helm(None, args);
    assert!(
        !output.status.success(),
        "helm {} succeeded but should have failed:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A values file holding `values`.
pub(crate) fn values_file(values: &Value) -> tempfile::NamedTempFile {
    let file = tempfile::Builder::new().prefix("values").suffix(".yaml").tempfile().expect("a temp values file");
    std::fs::write(file.path(), serde_yaml::to_string(values).expect("values serialize")).expect("writing the values file");
    file
}

pub(crate) fn path_str(file: &tempfile::NamedTempFile) -> &str {
    file.path().to_str().expect("temp paths are UTF-8")
}

/// `helm template` of the chart as `release` in `namespace`, with `values`: every object.
pub(crate) fn render(release: &str, namespace: &str, values: &Value) -> Vec<Value> {
    let file = values_file(values);
    let out = helm_ok(None, &["template", release, &chart(), "--namespace", namespace, "--values", path_str(&file)]);
    parse_documents(&out)
}

fn parse_documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("helm rendered invalid YAML: {e}\n{yaml}")))
        .filter(|doc| !doc.is_null())
        .collect()
}

pub(crate) fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} among {:?}", kinds(docs)))
}

fn kinds(docs: &[Value]) -> Vec<String> {
    docs.iter().map(|d| format!("{}/{}@{}", d["kind"], d["metadata"]["name"], d["metadata"]["namespace"])).collect()
}

/// Every (group/resource, verb, resourceNames) a Role or ClusterRole grants, one line each.
fn permissions(role: &Value) -> BTreeSet<String> {
    let strings =
        |v: &Value| v.as_array().map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect::<Vec<_>>()).unwrap_or_default();
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().expect("a role has rules") {
        let names = strings(&rule["resourceNames"]);
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    let group = if group.is_empty() { "core" } else { group.as_str() };
                    let names = if names.is_empty() { String::new() } else { format!(" {}", names.join(",")) };
                    out.insert(format!("{group}/{resource} {verb}{names}"));
                }
            }
        }
    }
    out
}

fn set(lines: &[&str]) -> BTreeSet<String> {
    lines.iter().map(|s| (*s).to_owned()).collect()
}

/// What the controller does in the namespaces it watches (all of them without watchNamespaces).
const NAMESPACED_PERMISSIONS: &[&str] = &[
    "idpbridge.io/azureadconnections get",
    "idpbridge.io/azureadconnections list",
    "idpbridge.io/azureadconnections watch",
    "idpbridge.io/azureadconnections patch",
    "idpbridge.io/azureadconnections/status patch",
    "idpbridge.io/azureadclientsecrets get",
    "idpbridge.io/azureadclientsecrets list",
    "idpbridge.io/azureadclientsecrets watch",
    "idpbridge.io/azureadclientsecrets/status patch",
    "idpbridge.io/identitybrokers get",
    "idpbridge.io/identitybrokers list",
    "idpbridge.io/identitybrokers watch",
    "idpbridge.io/identitybrokers patch",
    "idpbridge.io/identitybrokers/status patch",
    "core/secrets get",
    "core/secrets list",
    "core/secrets watch",
    "events.k8s.io/events create",
    "events.k8s.io/events patch",
];

/// What it may do in each namespace of `rbac.scimSecretNamespaces`, and nowhere else: write the
/// Cloudflare SCIM Secret a connection names, owned by that connection.
const SCIM_PERMISSIONS: &[&str] = &["core/secrets create", "core/secrets patch", "idpbridge.io/azureadconnections/finalizers update"];

/// What it does cluster-wide in either mode.
const CLUSTER_PERMISSIONS: &[&str] = &[
    "idpbridge.io/clusteridentitybrokers get",
    "idpbridge.io/clusteridentitybrokers list",
    "idpbridge.io/clusteridentitybrokers watch",
    "idpbridge.io/clusteridentitybrokers patch",
    "idpbridge.io/clusteridentitybrokers/status patch",
    "core/namespaces get",
    "core/namespaces list",
    "core/namespaces watch",
];

/// What it does in its own namespace: the leader Lease, the fingerprint key Secret and the claims
/// on broker objects.
const OPERATOR_NAMESPACE_PERMISSIONS: &[&str] = &[
    "coordination.k8s.io/leases create",
    "coordination.k8s.io/leases get idp-bridge-leader",
    "coordination.k8s.io/leases update idp-bridge-leader",
    "core/configmaps create",
    "core/configmaps get",
    "core/configmaps list",
    "core/configmaps patch",
    "core/configmaps delete",
    "core/secrets create",
    "core/secrets patch",
    "core/secrets get idp-bridge-fingerprint-key",
];

/// Values that turn on everything optional.
fn full_values(watch: &[&str]) -> Value {
    json!({
        "watchNamespaces": watch,
        "log": {"format": "json", "level": "debug"},
        "endpointOverrides": {"login.microsoftonline.com": "https://egress.internal:8443/login", "acme.eu.auth0.com": "https://egress.internal:8443/auth0"},
        "brokerHosts": ["acme.eu.auth0.com", "*.logto.app", "logto.corp.example:8443"],
        "caBundle": {"configMapName": "egress-ca"},
        "metrics": {
            "serviceMonitor": {"enabled": true, "labels": {"release": "prometheus"}},
            "prometheusRule": {"enabled": true, "labels": {"release": "prometheus"}, "alertLabels": {"team": "identity"}},
            "grafanaDashboard": {"enabled": true, "annotations": {"grafana_folder": "Identity"}},
        },
        "podDisruptionBudget": {"enabled": true},
        "networkPolicy": {"enabled": true, "metricsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]},
        "podAnnotations": {"example.com/audit": "enabled"},
        "podLabels": {"team": "identity"},
        "image": {"repository": "registry.internal/idp-bridge"},
        "reconcileTimeout": "5m",
    })
}

/// The container's args as the binary's own command-line parser reads them.
fn parse_run_args(args: &[String]) -> RunArgs {
    let cli = Cli::try_parse_from(std::iter::once("idp-bridge".to_owned()).chain(args.iter().cloned()))
        .unwrap_or_else(|e| panic!("idp-bridge rejects the chart's args {args:?}:\n{e}"));
    match cli.command {
        CliCommand::Run(run) => *run,
        other => panic!("the chart runs `idp-bridge run`, not {other:?}"),
    }
}

fn container_args(deployment: &Value) -> Vec<String> {
    let args = &deployment["spec"]["template"]["spec"]["containers"][0]["args"];
    args.as_array().expect("the container has args").iter().map(|a| a.as_str().expect("string args").to_owned()).collect()
}

/// The operator configuration the chart's installed Deployment gives the binary: its args through
/// the real command-line parser, POD_NAMESPACE from the downward API, and the CA bundle volume as
/// if mounted (`local_ca_bundle` holds the same PEM as the Secret or ConfigMap). Only the HTTP
/// address differs: a free loopback port instead of the pod's :8080.
fn chart_config(deployment: &Deployment, namespace: &str, local_ca_bundle: &Path) -> Config {
    let mut run = parse_run_args(&container_args(&serde_json::to_value(deployment).unwrap()));
    run.namespace = namespace.to_owned();
    assert_eq!(run.ca_bundle.as_deref(), Some(Path::new("/etc/idp-bridge/ca-bundle/ca.crt")), "the chart mounts the CA bundle");
    run.ca_bundle = Some(local_ca_bundle.to_owned());
    run.http_address = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    Config::try_from(run).unwrap_or_else(|e| panic!("the chart's args do not make a valid configuration: {e}"))
}

/// Values that send the operator to the emulators the way an air-gapped install sends it to a
/// proxy: `endpointOverrides` and a CA bundle from the Secret or ConfigMap `egress-ca`.
pub(crate) fn emulator_values(upstreams: &Upstreams, ca_from: &str) -> Value {
    let overrides: serde_json::Map<String, Value> = upstreams
        .overrides()
        .to_string()
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .map(|(h, u)| (h.to_owned(), json!(u)))
        .collect();
    let ca_bundle = if ca_from == "Secret" { json!({"secretName": "egress-ca"}) } else { json!({"configMapName": "egress-ca"}) };
    let broker_hosts: Vec<String> = upstreams.broker_hosts().to_string().split(',').map(str::to_owned).collect();
    json!({"endpointOverrides": overrides, "brokerHosts": broker_hosts, "caBundle": ca_bundle})
}

/// The Secret or ConfigMap `egress-ca` holding the emulators' CA under `ca.crt`.
pub(crate) async fn put_ca_bundle(client: &Client, namespace: &str, upstreams: &Upstreams, kind: &str) {
    let pem = std::fs::read_to_string(upstreams.ca_path()).expect("the test CA");
    let object = if kind == "Secret" {
        secret("egress-ca", &[("ca.crt", &pem)])
    } else {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "egress-ca"}, "data": {"ca.crt": pem}})
    };
    apply(client, Some(namespace), object).await;
}

// ---------------------------------------------------------------------------------------------
// Tests without a cluster

#[test]
fn chart_and_image_follow_the_crate_version() {
    let chart: Value = serde_yaml::from_str(&std::fs::read_to_string(chart_dir().join("Chart.yaml")).unwrap()).unwrap();
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(chart["version"], version, "Chart.yaml version follows Cargo.toml");
    assert_eq!(chart["appVersion"], version, "Chart.yaml appVersion follows Cargo.toml");
    assert_eq!(chart["kubeVersion"], ">=1.30.0-0");
    let values: Value = serde_yaml::from_str(&std::fs::read_to_string(chart_dir().join("values.yaml")).unwrap()).unwrap();
    assert_eq!(values["image"]["repository"], "ghcr.io/idp-bridge/idp-bridge");
    assert_eq!(values["image"]["tag"], "", "the tag defaults to appVersion");

    // The image itself and the Dockerfile: image.rs.
}

#[test]
fn lint_and_template_pass_with_default_and_full_values() {
    helm_ok(None, &["lint", "--strict", &chart()]);
    let full = values_file(&full_values(&["team-a", "team-b"]));
    helm_ok(None, &["lint", "--strict", &chart(), "--namespace", "idp-bridge", "--values", path_str(&full)]);

    // Defaults: the whole cluster, with a ClusterRole.
    let docs = render("idp-bridge", "idp-bridge", &json!({}));
    let default_run = parse_run_args(&container_args(find(&docs, "Deployment", "idp-bridge")));
    assert_eq!(
        default_run.broker_hosts,
        idp_bridge::broker_hosts::BrokerHosts::default(),
        "empty brokerHosts keeps the operator's defaults"
    );
    let mut found: Vec<String> =
        docs.iter().map(|d| format!("{} {}", d["kind"].as_str().unwrap(), d["metadata"]["name"].as_str().unwrap())).collect();
    found.sort();
    assert_eq!(
        found,
        [
            "ClusterRole idp-bridge",
            "ClusterRoleBinding idp-bridge",
            "Deployment idp-bridge",
            "Role idp-bridge-operator",
            "RoleBinding idp-bridge-operator",
            "Service idp-bridge-metrics",
            "ServiceAccount idp-bridge",
        ],
        "the release name contains the chart name, so objects are named idp-bridge"
    );
    let cluster_role = find(&docs, "ClusterRole", "idp-bridge");
    let expected: BTreeSet<String> = set(NAMESPACED_PERMISSIONS).union(&set(CLUSTER_PERMISSIONS)).cloned().collect();
    assert_eq!(permissions(cluster_role), expected, "the ClusterRole grants exactly what the controller uses");
    assert_eq!(permissions(find(&docs, "Role", "idp-bridge-operator")), set(OPERATOR_NAMESPACE_PERMISSIONS));
    let binding = find(&docs, "ClusterRoleBinding", "idp-bridge");
    assert_eq!(binding["subjects"], json!([{"kind": "ServiceAccount", "name": "idp-bridge", "namespace": "idp-bridge"}]));

    let deployment = find(&docs, "Deployment", "idp-bridge");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "idp-bridge");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    let container = &pod["containers"][0];
    assert_eq!(container["image"], format!("ghcr.io/idp-bridge/idp-bridge:{}", env!("CARGO_PKG_VERSION")));
    let security = &container["securityContext"];
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["runAsUser"], 65532);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");
    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(container["resources"][kind][resource].is_string(), "resources.{kind}.{resource} is set");
        }
    }
    let args: Vec<&str> = container["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(args[0], "run");
    let run = parse_run_args(&container_args(deployment));
    assert!(run.leader_election && run.watch_namespaces.is_empty() && run.ca_bundle.is_none());
    assert_eq!(run.reconcile_timeout, std::time::Duration::from_secs(120), "the chart's reconcile deadline is the binary's default");
    Config::try_from(run).expect("the default args make a valid configuration");
    for expected in
        ["--leader-election=true", "--http-address=0.0.0.0:8080", "--log-format=text", "--leader-election-lease=idp-bridge-leader"]
    {
        assert!(args.contains(&expected), "{expected} in {args:?}");
    }
    assert!(
        !args.iter().any(|a| a.starts_with("--watch-namespaces") || a.starts_with("--ca-bundle") || a.starts_with("--endpoint-overrides"))
    );
    let env = |name: &str| container["env"].as_array().unwrap().iter().find(|e| e["name"] == name).cloned().unwrap_or(Value::Null);
    assert_eq!(env("POD_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"], "metadata.namespace");
    assert_eq!(env("POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name");
    assert!(env("RUST_LOG")["value"].as_str().unwrap().starts_with("info,"));
    assert_eq!(container["livenessProbe"]["httpGet"], json!({"path": "/healthz", "port": "metrics"}));
    assert_eq!(container["readinessProbe"]["httpGet"], json!({"path": "/readyz", "port": "metrics"}));
    assert_eq!(container["ports"], json!([{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}]));
    let service = find(&docs, "Service", "idp-bridge-metrics");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "metrics");

    // Everything optional, watching two namespaces with Roles.
    let docs = render("ops", "idp-bridge", &full_values(&["team-a", "team-b"]));
    let cluster_role = find(&docs, "ClusterRole", "ops-idp-bridge");
    assert_eq!(
        permissions(cluster_role),
        set(CLUSTER_PERMISSIONS),
        "with watchNamespaces, only cluster brokers and namespaces are cluster-wide"
    );
    for ns in ["team-a", "team-b"] {
        let role =
            docs.iter().find(|d| d["kind"] == "Role" && d["metadata"]["namespace"] == ns).unwrap_or_else(|| panic!("a Role in {ns}"));
        assert_eq!(permissions(role), set(NAMESPACED_PERMISSIONS));
        let binding = docs.iter().find(|d| d["kind"] == "RoleBinding" && d["metadata"]["namespace"] == ns).unwrap();
        assert_eq!(binding["subjects"][0]["namespace"], "idp-bridge");
    }
    let operator_role = find(&docs, "Role", "ops-idp-bridge-operator");
    let expected: BTreeSet<String> = set(OPERATOR_NAMESPACE_PERMISSIONS)
        .union(&set(&["core/secrets get", "core/secrets list", "core/secrets watch"]))
        .cloned()
        .collect();
    assert_eq!(permissions(operator_role), expected, "ClusterIdentityBroker credentials are read in the release namespace");

    let deployment = find(&docs, "Deployment", "ops-idp-bridge");
    let pod = &deployment["spec"]["template"];
    assert_eq!(pod["metadata"]["annotations"]["example.com/audit"], "enabled");
    assert_eq!(pod["metadata"]["labels"]["team"], "identity");
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["image"], format!("registry.internal/idp-bridge:{}", env!("CARGO_PKG_VERSION")));
    let args: Vec<&str> = container["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    let run = parse_run_args(&container_args(deployment));
    assert_eq!(run.watch_namespaces, ["team-a", "team-b"]);
    assert_eq!(run.reconcile_timeout, std::time::Duration::from_secs(300));
    assert_eq!(run.log_format, idp_bridge::config::LogFormat::Json);
    assert_eq!(
        run.endpoint_overrides.to_string(),
        "acme.eu.auth0.com=https://egress.internal:8443/auth0,login.microsoftonline.com=https://egress.internal:8443/login"
    );
    assert_eq!(run.broker_hosts.to_string(), "acme.eu.auth0.com,*.logto.app,logto.corp.example:8443");
    assert!(!run.broker_hosts.allows("other.eu.auth0.com"), "brokerHosts replaces the defaults");
    for expected in [
        "--watch-namespaces=team-a,team-b",
        "--broker-hosts=acme.eu.auth0.com,*.logto.app,logto.corp.example:8443",
        "--endpoint-overrides=acme.eu.auth0.com=https://egress.internal:8443/auth0,login.microsoftonline.com=https://egress.internal:8443/login",
        "--ca-bundle=/etc/idp-bridge/ca-bundle/ca.crt",
        "--log-format=json",
    ] {
        assert!(args.contains(&expected), "{expected} in {args:?}");
    }
    let rust_log = container["env"].as_array().unwrap().iter().find(|e| e["name"] == "RUST_LOG").unwrap();
    assert!(rust_log["value"].as_str().unwrap().starts_with("debug,"), "{rust_log}");
    assert_eq!(container["volumeMounts"][0]["mountPath"], "/etc/idp-bridge/ca-bundle");
    assert_eq!(pod["spec"]["volumes"][0]["configMap"]["name"], "egress-ca");

    let rule = find(&docs, "PrometheusRule", "ops-idp-bridge");
    let rules = rule["spec"]["groups"][0]["rules"].as_array().unwrap();
    let alert = |name: &str| rules.iter().find(|r| r["alert"] == name).unwrap_or_else(|| panic!("alert {name}"));
    let expiring = alert("IdpBridgeClientSecretExpiringSoon");
    let expiry_on_leader =
        "max without (instance, pod) (idpbridge_client_secret_expiry_timestamp_seconds and on (job, instance) idpbridge_leader == 1)";
    assert_eq!(expiring["expr"], format!("{expiry_on_leader} - time() < 14 * 86400"));
    assert_eq!(expiring["labels"], json!({"severity": "warning", "team": "identity"}));
    let expired = alert("IdpBridgeClientSecretExpired");
    assert_eq!(expired["expr"], format!("{expiry_on_leader} <= time()"));
    assert_eq!(expired["labels"], json!({"severity": "critical", "team": "identity"}));
    let not_ready = alert("IdpBridgeConnectionNotReady");
    assert_eq!(
        not_ready["expr"],
        "max without (instance, pod, reason) (idpbridge_connection_ready and on (job, instance) idpbridge_leader == 1) == 0"
    );
    assert_eq!(not_ready["for"], "15m");
    assert!(not_ready["annotations"]["summary"].as_str().unwrap().contains("{{ $labels.namespace }}/{{ $labels.name }}"));
    let absent = alert("IdpBridgeOperatorAbsent");
    assert_eq!(absent["expr"], r#"absent(up{job="ops-idp-bridge-metrics",namespace="idp-bridge"} == 1)"#, "the ServiceMonitor's job");
    assert_eq!(absent["for"], "5m");
    assert_eq!(absent["labels"], json!({"severity": "critical", "team": "identity"}));
    assert_eq!(rules.len(), 4, "the alerts the promtool tests cover (alerts.rs)");
    let monitor = find(&docs, "ServiceMonitor", "ops-idp-bridge");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(monitor["spec"]["endpoints"][0]["honorLabels"], true, "the connection's namespace label stays `namespace`");
    find(&docs, "Service", "ops-idp-bridge-metrics");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(find(&docs, "PodDisruptionBudget", "ops-idp-bridge")["spec"]["maxUnavailable"], 1);
    let policy = find(&docs, "NetworkPolicy", "ops-idp-bridge");
    assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    assert_eq!(policy["spec"]["ingress"][0]["ports"][0]["port"], "metrics");

    // By default the operator can write no Secret outside its own namespace, kube-system included.
    let docs = render("idp-bridge", "idp-bridge", &json!({}));
    for role in docs.iter().filter(|d| matches!(d["kind"].as_str(), Some("ClusterRole" | "Role"))) {
        let granted = permissions(role);
        let own = role["metadata"]["name"] == "idp-bridge-operator";
        // In its own namespace: the fingerprint key (create) and the in-use finalizer of
        // ClusterIdentityBroker credentials (patch).
        for write in SCIM_PERMISSIONS.iter().filter(|w| !(own && w.starts_with("core/secrets "))) {
            assert!(!granted.contains(*write), "{} grants {write} by default", role["metadata"]["name"]);
        }
    }
    // SCIM Secrets only where listed: a Role of their own in team-a, nothing in team-b.
    let mut scoped = full_values(&["team-a", "team-b"]);
    scoped["rbac"] = json!({"scimSecretNamespaces": ["team-a"]});
    let docs = render("ops", "idp-bridge", &scoped);
    let scim_roles: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "Role" && d["metadata"]["name"] == "ops-idp-bridge-scim").collect();
    assert_eq!(scim_roles.len(), 1, "one SCIM Role");
    assert_eq!(scim_roles[0]["metadata"]["namespace"], "team-a");
    assert_eq!(permissions(scim_roles[0]), set(SCIM_PERMISSIONS));
    let scim_binding = docs.iter().find(|d| d["kind"] == "RoleBinding" && d["metadata"]["name"] == "ops-idp-bridge-scim").unwrap();
    assert_eq!(scim_binding["metadata"]["namespace"], "team-a");
    assert_eq!(scim_binding["subjects"][0]["namespace"], "idp-bridge");
    // Rotated client secrets likewise: a Role of their own in team-b only.
    scoped["rbac"] = json!({"clientSecretNamespaces": ["team-b"]});
    let docs = render("ops", "idp-bridge", &scoped);
    let roles: Vec<&Value> =
        docs.iter().filter(|d| d["kind"] == "Role" && d["metadata"]["name"] == "ops-idp-bridge-client-secrets").collect();
    assert_eq!(roles.len(), 1, "one client-secret Role");
    assert_eq!(roles[0]["metadata"]["namespace"], "team-b");
    assert_eq!(permissions(roles[0]), set(&["core/secrets create", "core/secrets patch"]));
    let binding = docs.iter().find(|d| d["kind"] == "RoleBinding" && d["metadata"]["name"] == "ops-idp-bridge-client-secrets").unwrap();
    assert_eq!(binding["metadata"]["namespace"], "team-b");
    // Nothing at all with rbac.create=false.
    let docs = render("idp-bridge", "idp-bridge", &json!({"rbac": {"create": false}}));
    assert!(!docs.iter().any(|d| d["apiVersion"].as_str().unwrap().starts_with("rbac.")), "{:?}", kinds(&docs));
}

#[test]
fn grafana_dashboard_config_map_renders_only_when_enabled() {
    let config_maps = |docs: &[Value]| docs.iter().filter(|d| d["kind"] == "ConfigMap").count();
    assert_eq!(config_maps(&render("idp-bridge", "idp-bridge", &json!({}))), 0, "no dashboard by default");

    let docs = render("idp-bridge", "idp-bridge", &json!({"metrics": {"grafanaDashboard": {"enabled": true}}}));
    let map = find(&docs, "ConfigMap", "idp-bridge-dashboard");
    assert_eq!(map["metadata"]["namespace"], "idp-bridge");
    assert_eq!(map["metadata"]["labels"]["grafana_dashboard"], "1", "the label kube-prometheus-stack's Grafana sidecar selects");
    assert_eq!(map["metadata"]["labels"]["app.kubernetes.io/instance"], "idp-bridge");
    let shipped = std::fs::read_to_string(chart_dir().join("dashboards/idp-bridge.json")).expect("the chart ships the dashboard");
    let shipped: Value = serde_json::from_str(&shipped).expect("the dashboard is JSON");
    let rendered: Value =
        serde_json::from_str(map["data"]["idp-bridge.json"].as_str().expect("a dashboard key")).expect("JSON in the ConfigMap");
    assert_eq!(rendered, shipped, "the ConfigMap holds the shipped dashboard unchanged");
    assert_eq!(rendered["uid"], "idp-bridge");

    // Another sidecar label, in Grafana's namespace, into a folder.
    let values = json!({"metrics": {"grafanaDashboard": {
        "enabled": true, "namespace": "monitoring", "labelName": "grafana.example.com/dashboard", "labelValue": "idp",
        "annotations": {"grafana_folder": "Identity"},
    }}});
    let docs = render("ops", "idp-bridge", &values);
    let map = find(&docs, "ConfigMap", "ops-idp-bridge-dashboard");
    assert_eq!(map["metadata"]["namespace"], "monitoring");
    assert_eq!(map["metadata"]["labels"]["grafana.example.com/dashboard"], "idp");
    assert!(map["metadata"]["labels"].get("grafana_dashboard").is_none(), "{:#}", map["metadata"]);
    assert_eq!(map["metadata"]["annotations"], json!({"grafana_folder": "Identity"}));
}

#[test]
fn wrong_values_fail_with_a_clear_message() {
    let cases = [
        (json!({"replicas": "two"}), "at '/replicas': got string, want integer"),
        (json!({"replica": 2}), "additional properties 'replica' not allowed"),
        (json!({"log": {"format": "xml"}}), "at '/log/format': value must be one of 'text', 'json'"),
        (json!({"image": {"repostory": "x"}}), "additional properties 'repostory' not allowed"),
        (json!({"watchNamespaces": "team-a"}), "at '/watchNamespaces': got string, want array"),
        (json!({"watchNamespaces": ["Team_A"]}), "at '/watchNamespaces/0'"),
        (json!({"httpTimeout": "15 seconds"}), "at '/httpTimeout'"),
        (json!({"brokerHosts": "*.auth0.com"}), "at '/brokerHosts': got string, want array"),
        (json!({"brokerHosts": ["https://auth.example.com"]}), "at '/brokerHosts/0'"),
        (json!({"reconcileTimeout": "2 minutes"}), "at '/reconcileTimeout'"),
        (
            json!({"endpointOverrides": {"login.microsoftonline.com": "proxy.internal"}}),
            "at '/endpointOverrides/login.microsoftonline.com'",
        ),
        (json!({"caBundle": {"secretName": "a", "configMapName": "b"}}), "caBundle: set either secretName or configMapName, not both"),
        (json!({"leaderElection": {"enabled": false}}), "replicas is 2 but leaderElection.enabled is false"),
        (json!({"rbac": {"scimSecrets": true}}), "rbac.scimSecrets was replaced by rbac.scimSecretNamespaces"),
        (
            json!({"watchNamespaces": ["team-a"], "rbac": {"scimSecretNamespaces": ["team-b"]}}),
            "rbac.scimSecretNamespaces lists team-b, which is not in watchNamespaces",
        ),
        (json!({"rbac": {"scimSecretNamespaces": ["kube system"]}}), "at '/rbac/scimSecretNamespaces/0'"),
        (json!({"metrics": {"grafanaDashboard": {"enable": true}}}), "additional properties 'enable' not allowed"),
        (json!({"metrics": {"grafanaDashboard": {"labelValue": 1}}}), "at '/metrics/grafanaDashboard/labelValue': got number, want string"),
        (json!({"metrics": {"prometheusRule": {"operatorAbsentFor": "five minutes"}}}), "at '/metrics/prometheusRule/operatorAbsentFor'"),
    ];
    for (values, message) in cases {
        let file = values_file(&values);
        let stderr = helm_err(&["template", "idp", &chart(), "--values", path_str(&file)]);
        assert!(stderr.contains(message), "values {values} should fail with {message:?}, got:\n{stderr}");
    }
    // The lint names the chart and the value, too.
    let file = values_file(&json!({"replicas": "two"}));
    let output = helm(None, &["lint", &chart(), "--values", path_str(&file)]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("at '/replicas': got string, want integer"));
    // A single replica may run without leader election.
    helm_ok(None, &["template", "idp", &chart(), "--set", "replicas=1", "--set", "leaderElection.enabled=false"]);
}

// ---------------------------------------------------------------------------------------------
// Server-side dry run

/// Minimal monitoring.coreos.com CRDs: exactly the fields the chart sets, so that a strict
/// server-side dry run catches a misspelt one.
fn monitoring_crds() -> Vec<CustomResourceDefinition> {
    let string = json!({"type": "string"});
    let string_map = json!({"type": "object", "additionalProperties": {"type": "string"}});
    let service_monitor = json!({
        "type": "object",
        "properties": {"spec": {"type": "object", "required": ["selector", "endpoints"], "properties": {
            "selector": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            "namespaceSelector": {"type": "object", "properties": {"matchNames": {"type": "array", "items": string}}},
            "endpoints": {"type": "array", "items": {"type": "object", "properties": {
                "port": string, "path": string, "interval": string, "scrapeTimeout": string, "honorLabels": {"type": "boolean"},
            }}},
        }}},
    });
    let prometheus_rule = json!({
        "type": "object",
        "properties": {"spec": {"type": "object", "properties": {"groups": {"type": "array", "items": {
            "type": "object", "required": ["name", "rules"],
            "properties": {"name": string, "rules": {"type": "array", "items": {"type": "object", "required": ["expr"], "properties": {
                "alert": string, "expr": {"x-kubernetes-int-or-string": true}, "for": string,
                "labels": string_map, "annotations": string_map,
            }}}},
        }}}}},
    });
    [("ServiceMonitor", "servicemonitors", service_monitor), ("PrometheusRule", "prometheusrules", prometheus_rule)]
        .into_iter()
        .map(|(kind, plural, schema)| {
            serde_json::from_value(json!({
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {"name": format!("{plural}.monitoring.coreos.com")},
                "spec": {
                    "group": "monitoring.coreos.com",
                    "scope": "Namespaced",
                    "names": {"kind": kind, "plural": plural, "singular": kind.to_ascii_lowercase(), "listKind": format!("{kind}List")},
                    "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {
                        "type": "object",
                        "properties": {"apiVersion": string, "kind": string, "metadata": {"type": "object"}, "spec": schema["properties"]["spec"]},
                    }}}],
                },
            }))
            .expect("a CRD")
        })
        .collect()
}

/// Server-side applies every document as a dry run with strict field validation.
async fn dry_run_apply(client: &Client, docs: &[Value], release_namespace: &str) {
    for doc in docs {
        let api_version = doc["apiVersion"].as_str().expect("apiVersion");
        let kind = doc["kind"].as_str().expect("kind");
        let name = doc["metadata"]["name"].as_str().expect("metadata.name");
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (resource, capabilities) = kube::discovery::pinned_kind(client, &gvk)
            .await
            .unwrap_or_else(|e| panic!("the API server does not serve {api_version} {kind}: {e}"));
        let api: Api<DynamicObject> = match capabilities.scope {
            Scope::Namespaced => {
                Api::namespaced_with(client.clone(), doc["metadata"]["namespace"].as_str().unwrap_or(release_namespace), &resource)
            }
            Scope::Cluster => Api::all_with(client.clone(), &resource),
        };
        let params = PatchParams::apply(MANAGER).dry_run().validation(ValidationDirective::Strict);
        api.patch(name, &params, &Patch::Apply(doc))
            .await
            .unwrap_or_else(|e| panic!("server-side dry run of {kind} {name} failed: {e}\n{doc:#}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_manifests_pass_a_server_side_dry_run() {
    let cp = crate::common::control_plane().await;
    let client = cp.client().await;
    install_crds(&client, &monitoring_crds()).await.expect("the monitoring CRDs install");
    let release_ns = unique_name("chart-dry-run");
    let watched = [unique_name("chart-dry-a"), unique_name("chart-dry-b")];
    for ns in std::iter::once(&release_ns).chain(&watched) {
        create_namespace(&client, ns).await.unwrap();
    }
    let watched: Vec<&str> = watched.iter().map(String::as_str).collect();
    let mut scim = full_values(&watched);
    scim["rbac"] = json!({"scimSecretNamespaces": [watched[0]]});
    for values in [json!({}), full_values(&watched), scim, json!({"replicas": 1, "leaderElection": {"enabled": false}})] {
        let docs = render("dry", &release_ns, &values);
        dry_run_apply(&client, &docs, &release_ns).await;
    }
    // The chart's CRDs, too.
    let crds = helm_ok(None, &["show", "crds", &chart()]);
    dry_run_apply(&client, &parse_documents(&crds), &release_ns).await;
    // A dry run persists nothing.
    assert!(Api::<Deployment>::namespaced(client.clone(), &release_ns).list(&ListParams::default()).await.unwrap().items.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Install and run the operator as the chart's ServiceAccount

/// The chart's ServiceAccount as the API server sees a pod using it.
fn service_account_config(cp: &ControlPlane, namespace: &str, name: &str) -> kube::Config {
    let user = format!("system:serviceaccount:{namespace}:{name}");
    let namespace_group = format!("system:serviceaccounts:{namespace}");
    cp.impersonating_config(&user, &["system:serviceaccounts", &namespace_group, "system:authenticated"])
}

pub(crate) fn in_a_year() -> jiff::Timestamp {
    jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 365)
}

/// Emulated Azure (with the app `CLIENT_ID` in `TENANT_ID`) and Auth0 (with the M2M client).
pub(crate) fn upstreams() -> Upstreams {
    let mut upstreams = Upstreams::start().expect("emulators start");
    upstreams.azure.add_tenant(TENANT_ID, &[TENANT_DOMAIN]);
    upstreams.azure.add_app(TENANT_ID, CLIENT_ID);
    let auth0 = upstreams.auth0(AUTH0_DOMAIN).expect("the Auth0 emulator starts");
    auth0.add_m2m_client(M2M_CLIENT, M2M_SECRET, &["read:connections", "create:connections", "update:connections", "delete:connections"]);
    upstreams
}

/// Server-side applies an object as the admin.
pub(crate) async fn apply(client: &Client, namespace: Option<&str>, object: Value) {
    let api_version = object["apiVersion"].as_str().unwrap();
    let kind = object["kind"].as_str().unwrap();
    let name = object["metadata"]["name"].as_str().unwrap().to_owned();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let (resource, _) = kube::discovery::pinned_kind(client, &GroupVersionKind::gvk(group, version, kind)).await.unwrap();
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&object))
        .await
        .unwrap_or_else(|e| panic!("applying {kind} {name}: {e}"));
}

pub(crate) fn secret(name: &str, data: &[(&str, &str)]) -> Value {
    let data: serde_json::Map<String, Value> = data.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect();
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data})
}

pub(crate) fn idp(kind: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "idpbridge.io/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec})
}

pub(crate) fn auth0_broker() -> Value {
    json!({"auth0": {"domain": AUTH0_DOMAIN, "credentialsSecretRef": {"name": "auth0-management"}}})
}

/// A connection of `CLIENT_ID` reading Secret `secret`, to the broker `broker` (`{kind, name}`).
pub(crate) fn connection(name: &str, broker: Value, secret: &str, block: Value) -> Value {
    let mut spec = json!({
        "brokerRef": broker,
        "azure": {"tenant": TENANT_DOMAIN, "clientId": CLIENT_ID, "clientSecretRef": {"name": secret}},
    });
    spec.as_object_mut().unwrap().extend(block.as_object().unwrap().clone());
    idp("AzureAdConnection", name, spec)
}

/// Waits until `check` holds for connection `namespace/name`.
async fn wait_for(
    client: &Client,
    namespace: &str,
    name: &str,
    what: &str,
    check: impl Fn(&AzureAdConnection) -> bool,
) -> AzureAdConnection {
    let api: Api<AzureAdConnection> = Api::namespaced(client.clone(), namespace);
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut last = None;
    while tokio::time::Instant::now() < deadline {
        if let Some(conn) = api.get_opt(name).await.expect("reading the connection") {
            if check(&conn) {
                return conn;
            }
            last = Some(conn);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {namespace}/{name}: {what}; last status: {:#?}", last.map(|c| c.status));
}

/// Waits for Ready True at the current generation (which kstatus reads as Current).
pub(crate) async fn wait_ready(client: &Client, namespace: &str, name: &str) -> AzureAdConnection {
    let conn = wait_for(client, namespace, name, "Ready True at the current generation", |c| {
        c.status.as_ref().is_some_and(|s| s.observed_generation == c.metadata.generation)
            && c.status.as_ref().and_then(|s| conditions::find(&s.conditions, conditions::READY)).is_some_and(|r| r.status == "True")
    })
    .await;
    assert_eq!(kstatus(&conn).0, "Current");
    conn
}

/// kstatus' reading of a connection (sigs.k8s.io/cli-utils/pkg/kstatus/status, behind Flux's
/// health checks, kpt and Config Sync), computed by the library itself (`gitops_health.rs`).
fn kstatus(conn: &AzureAdConnection) -> (String, String) {
    crate::gitops_health::kstatus(&serde_json::to_value(conn).expect("a connection serializes"))
}

pub(crate) fn ready_condition(conn: &AzureAdConnection) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    conn.status.as_ref().and_then(|s| conditions::find(&s.conditions, conditions::READY)).cloned().expect("a Ready condition")
}

/// Asserts the API server answers 403 Forbidden.
fn assert_forbidden<T: std::fmt::Debug>(result: Result<T, kube::Error>, action: &str) {
    match result {
        Err(kube::Error::Api(status)) if status.is_forbidden() => {}
        other => panic!("{action} should be forbidden to the operator, got {other:?}"),
    }
}

/// Waits until a broker kind's Ready condition is True.
async fn wait_broker_ready<K>(api: Api<K>, name: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + serde::Serialize,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut last = Value::Null;
    while tokio::time::Instant::now() < deadline {
        if let Some(broker) = api.get_opt(name).await.unwrap() {
            last = serde_json::to_value(&broker).unwrap();
            if last["status"]["conditions"].as_array().is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True")) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("broker {name} did not become Ready: {:#}", last["status"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_then_the_operator_reconciles_as_the_chart_service_account() {
    // A control plane of its own: this operator watches the whole cluster, and the chart's crds/
    // are installed by helm itself.
    let cp = ControlPlane::start().await.unwrap_or_else(|e| panic!("starting the control plane: {e}"));
    let admin = cp.client().await;
    let (ns, team) = ("idp-bridge", "team-a");
    for name in [ns, team] {
        create_namespace(&admin, name).await.unwrap();
    }
    // Emulated Azure and Auth0, reached through endpointOverrides and a CA bundle Secret, as an
    // air-gapped install reaches them through a proxy.
    let mut upstreams = upstreams();
    put_ca_bundle(&admin, ns, &upstreams, "Secret").await;
    let values = values_file(&emulator_values(&upstreams, "Secret"));
    let install =
        helm_ok(Some(cp.kubeconfig_path()), &["install", "idp-bridge", &chart(), "--namespace", ns, "--values", path_str(&values)]);
    assert!(install.contains("STATUS: deployed"), "{install}");
    assert!(install.contains("kubectl get aadc -A"), "NOTES.txt tells what to do next:\n{install}");

    // Every object exists, the CRDs included.
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    for crd in idp_bridge::crd::all() {
        assert!(crds.get_opt(&crd.name_any()).await.unwrap().is_some(), "helm installed CRD {}", crd.name_any());
    }
    let name = "idp-bridge";
    assert!(Api::<Deployment>::namespaced(admin.clone(), ns).get_opt(name).await.unwrap().is_some());
    assert!(Api::<ServiceAccount>::namespaced(admin.clone(), ns).get_opt(name).await.unwrap().is_some());
    assert!(Api::<Service>::namespaced(admin.clone(), ns).get_opt("idp-bridge-metrics").await.unwrap().is_some());
    assert!(Api::<ClusterRole>::all(admin.clone()).get_opt(name).await.unwrap().is_some());
    assert!(Api::<ClusterRoleBinding>::all(admin.clone()).get_opt(name).await.unwrap().is_some());
    assert!(Api::<Role>::namespaced(admin.clone(), ns).get_opt("idp-bridge-operator").await.unwrap().is_some());
    assert!(Api::<RoleBinding>::namespaced(admin.clone(), ns).get_opt("idp-bridge-operator").await.unwrap().is_some());

    // The documented CRD upgrade path: Helm creates the CRDs on first install and never updates
    // them. Its field manager owns what it created, so a changed CRD applied server-side conflicts
    // and needs --force-conflicts (as `kubectl apply --server-side --force-conflicts` does).
    let mut changed = idp_bridge::crd::all().into_iter().find(|c| c.spec.names.kind == "AzureAdConnection").unwrap();
    changed.spec.versions[0].additional_printer_columns.get_or_insert_with(Vec::new).truncate(1);
    let crd_name = changed.name_any();
    match crds.patch(&crd_name, &PatchParams::apply("kubectl"), &Patch::Apply(&changed)).await {
        Err(kube::Error::Api(status)) if status.is_conflict() && status.message.contains("\"helm\"") => {}
        other => panic!("applying a changed CRD over Helm's should conflict with the helm field manager, got {other:?}"),
    }
    let upgraded = crds
        .patch(&crd_name, &PatchParams::apply("kubectl").force(), &Patch::Apply(&changed))
        .await
        .expect("a forced apply upgrades the CRD");
    assert_eq!(upgraded.spec.versions[0].additional_printer_columns.as_ref().map(Vec::len), Some(1));
    let original = idp_bridge::crd::all().into_iter().find(|c| c.spec.names.kind == "AzureAdConnection").unwrap();
    crds.patch(&crd_name, &PatchParams::apply("kubectl").force(), &Patch::Apply(&original)).await.expect("re-applying the chart's CRD");

    // The world: a namespaced broker in team-a, a ClusterIdentityBroker whose credentials live in
    // the operator's namespace and that allows team-a by label.
    let value = "Kx8Q~chart-install-client-secret-value";
    upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, value, in_a_year());
    let management = secret("auth0-management", &[("client-id", M2M_CLIENT), ("client-secret", M2M_SECRET)]);
    apply(&admin, Some(team), management.clone()).await;
    apply(&admin, Some(ns), management).await;
    apply(
        &admin,
        None,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": team, "labels": {"idp-bridge/tenant": "yes"}}}),
    )
    .await;
    apply(&admin, Some(team), idp("IdentityBroker", "auth0", auth0_broker())).await;
    let mut shared = auth0_broker();
    shared["allowedNamespaces"] = json!({"matchLabels": {"idp-bridge/tenant": "yes"}});
    apply(&admin, None, idp("ClusterIdentityBroker", "shared-auth0", shared)).await;
    apply(&admin, Some(team), secret("web-secret", &[("client-secret", value)])).await;
    apply(&admin, Some(team), connection("web", json!({"name": "auth0"}), "web-secret", json!({"auth0": {"name": "web"}}))).await;
    let via_cluster = json!({"kind": "ClusterIdentityBroker", "name": "shared-auth0"});
    apply(&admin, Some(team), connection("shared", via_cluster, "web-secret", json!({"auth0": {"name": "shared"}}))).await;

    // The operator, out of cluster, as the chart's ServiceAccount, configured by the installed
    // Deployment's args: operator namespace = release namespace, the whole cluster, leader
    // election, the endpoint overrides and the CA bundle.
    let deployment = Api::<Deployment>::namespaced(admin.clone(), ns).get(name).await.unwrap();
    let config = chart_config(&deployment, ns, upstreams.ca_path());
    assert!(config.watch_namespaces.is_empty() && config.leader_election.is_some());
    let sa = Client::try_from(service_account_config(&cp, ns, name)).unwrap();
    let operator = RunningOperator::start(sa.clone(), config.clone()).await.expect("the operator starts with the chart's RBAC");

    let conn = wait_ready(&admin, team, "web").await;
    assert_eq!(ready_condition(&conn).reason, "Ready");
    let auth0 = upstreams.auth0(AUTH0_DOMAIN).unwrap();
    assert_eq!(auth0.connection_by_name("web").expect("Auth0 has the connection")["options"]["client_secret"], value);
    wait_ready(&admin, team, "shared").await;
    assert!(auth0.connection_by_name("shared").is_some(), "synced through the ClusterIdentityBroker");
    wait_broker_ready(Api::<IdentityBroker>::namespaced(admin.clone(), team), "auth0").await;
    wait_broker_ready(Api::<ClusterIdentityBroker>::all(admin.clone()), "shared-auth0").await;
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(admin.clone(), team).list(&ListParams::default()).await.unwrap();
    assert!(!events.items.is_empty(), "the operator recorded Events");
    let key =
        Api::<Secret>::namespaced(admin.clone(), ns).get("idp-bridge-fingerprint-key").await.expect("the fingerprint key was created");
    assert!(key.data.unwrap()["key"].0.len() >= 32);
    let lease = Api::<Lease>::namespaced(admin.clone(), ns).get("idp-bridge-leader").await.expect("the leader Lease was created");
    assert_eq!(lease.spec.unwrap().holder_identity.as_deref(), operator.identity());

    // kstatus: Ready at the current generation is Current. A failing connection is Ready False
    // with a reason, which kstatus reads as InProgress (with the Ready message), so Flux waits and
    // reports the message at its timeout.
    let (status, message) = kstatus(&conn);
    assert_eq!((status.as_str(), message.as_str()), ("Current", "Resource is Ready"), "kstatus' own message, not the condition's");
    apply(&admin, Some(team), secret("pasted-id", &[("client-secret", "6f5e2a39-0a42-4a4e-9a55-4f2a3cfe2f0b")])).await;
    apply(&admin, Some(team), connection("pasted-id", json!({"name": "auth0"}), "pasted-id", json!({"auth0": {"name": "pasted"}}))).await;
    let failing = wait_for(&admin, team, "pasted-id", "Ready False at the current generation", |c| {
        c.status.as_ref().is_some_and(|s| s.observed_generation == c.metadata.generation)
            && c.status.as_ref().and_then(|s| conditions::find(&s.conditions, conditions::READY)).is_some_and(|r| r.status == "False")
    })
    .await;
    let ready = ready_condition(&failing);
    assert_eq!(ready.reason, "SecretIdInsteadOfValue");
    assert_eq!(kstatus(&failing), ("InProgress".to_owned(), ready.message.clone()));

    // Things outside the role are forbidden.
    assert_forbidden(Api::<Secret>::namespaced(sa.clone(), team).delete("web-secret", &DeleteParams::default()).await, "deleting a Secret");
    assert_forbidden(Api::<Pod>::all(sa.clone()).list(&ListParams::default()).await, "listing Pods");
    let config_map: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap();
    assert_forbidden(
        Api::<ConfigMap>::namespaced(sa.clone(), team).create(&PostParams::default(), &config_map).await,
        "creating a ConfigMap",
    );
    assert_forbidden(
        Api::<AzureAdConnection>::namespaced(sa.clone(), team).delete("web", &DeleteParams::default()).await,
        "deleting a connection",
    );
    // Namespaces it may list and watch (their labels, for allowedNamespaces), never change.
    assert_forbidden(Api::<Namespace>::all(sa.clone()).delete(team, &DeleteParams::default()).await, "deleting a Namespace");
    assert_forbidden(Api::<Deployment>::namespaced(sa.clone(), ns).get(name).await, "reading its own Deployment");
    assert_forbidden(Api::<Lease>::namespaced(sa.clone(), ns).get("someone-elses-lease").await, "reading another Lease");

    // kstatus follows generations: a spec change the operator has not seen yet is InProgress,
    // and Current again once it has.
    operator.stop().await;
    let patch = json!({"spec": {"auth0": {"displayName": "Web, renamed"}}});
    Api::<AzureAdConnection>::namespaced(admin.clone(), team).patch("web", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let stale = Api::<AzureAdConnection>::namespaced(admin.clone(), team).get("web").await.unwrap();
    assert_eq!(
        kstatus(&stale),
        ("InProgress".to_owned(), "AzureAdConnection generation is 2, but latest observed generation is 1".to_owned())
    );
    let operator = RunningOperator::start(sa, config).await.unwrap();
    wait_ready(&admin, team, "web").await;
    assert_eq!(auth0.connection_by_name("web").unwrap()["display_name"], "Web, renamed");
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_namespaces_mode_runs_with_namespaced_roles() {
    let cp = crate::common::control_plane().await;
    let admin = cp.client().await;
    let ns = unique_name("chart-op");
    let (team_a, team_b, other) = (unique_name("chart-team-a"), unique_name("chart-team-b"), unique_name("chart-other"));
    for name in [&ns, &team_a, &team_b, &other] {
        create_namespace(&admin, name).await.unwrap();
    }
    let mut upstreams = upstreams();
    let cloudflare = upstreams.cloudflare().unwrap();
    put_ca_bundle(&admin, &ns, &upstreams, "ConfigMap").await;
    let mut values = emulator_values(&upstreams, "ConfigMap");
    values["watchNamespaces"] = json!([team_a, team_b]);
    // team-a's Cloudflare connection enables SCIM; team-b's do not.
    values["rbac"] = json!({"scimSecretNamespaces": [team_a], "clientSecretNamespaces": [team_a]});
    let values = values_file(&values);
    let release = "scoped";
    helm_ok(Some(cp.kubeconfig_path()), &["install", release, &chart(), "--namespace", &ns, "--values", path_str(&values)]);
    let name = "scoped-idp-bridge";
    for watched in [&team_a, &team_b] {
        let role = Api::<Role>::namespaced(admin.clone(), watched).get(name).await.expect("a Role in each watched namespace");
        assert_eq!(permissions(&serde_json::to_value(&role).unwrap()), set(NAMESPACED_PERMISSIONS));
        Api::<RoleBinding>::namespaced(admin.clone(), watched).get(name).await.expect("a RoleBinding in each watched namespace");
    }
    assert!(Api::<Role>::namespaced(admin.clone(), &other).get_opt(name).await.unwrap().is_none());
    let scim_role = format!("{name}-scim");
    assert!(Api::<Role>::namespaced(admin.clone(), &team_a).get_opt(&scim_role).await.unwrap().is_some());
    assert!(Api::<Role>::namespaced(admin.clone(), &team_b).get_opt(&scim_role).await.unwrap().is_none());

    cloudflare.add_account(CF_ACCOUNT);
    cloudflare.add_token(CF_TOKEN, &[CF_ACCOUNT]);
    let value = "Zq7R~chart-scoped-client-secret-value";
    upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, value, in_a_year());
    let management = secret("auth0-management", &[("client-id", M2M_CLIENT), ("client-secret", M2M_SECRET)]);
    // team-a: an Auth0 IdentityBroker, and Cloudflare with SCIM (the operator writes the SCIM Secret).
    apply(&admin, Some(&team_a), management.clone()).await;
    apply(&admin, Some(&team_a), idp("IdentityBroker", "auth0", auth0_broker())).await;
    apply(&admin, Some(&team_a), secret("cf-token", &[("api-token", CF_TOKEN)])).await;
    let cf_broker = json!({"cloudflare": {"accountId": CF_ACCOUNT, "apiTokenSecretRef": {"name": "cf-token"}}});
    apply(&admin, Some(&team_a), idp("IdentityBroker", "cloudflare", cf_broker)).await;
    // team-b: a ClusterIdentityBroker with credentials in the operator's namespace.
    apply(&admin, Some(&ns), management.clone()).await;
    let cluster_broker = unique_name("chart-shared");
    apply(&admin, None, idp("ClusterIdentityBroker", &cluster_broker, auth0_broker())).await;
    // other: not watched.
    apply(&admin, Some(&other), management).await;
    apply(&admin, Some(&other), idp("IdentityBroker", "auth0", auth0_broker())).await;
    for namespace in [&team_a, &team_b, &other] {
        apply(&admin, Some(namespace), secret("web-secret", &[("client-secret", value)])).await;
    }
    apply(&admin, Some(&team_a), connection("web", json!({"name": "auth0"}), "web-secret", json!({"auth0": {"name": "team-a-web"}}))).await;
    let scim = json!({"cloudflare": {"name": "Team A", "scim": {"enabled": true, "secretName": "team-a-scim"}}});
    apply(&admin, Some(&team_a), connection("access", json!({"name": "cloudflare"}), "web-secret", scim)).await;
    let via_cluster = json!({"kind": "ClusterIdentityBroker", "name": cluster_broker});
    apply(&admin, Some(&team_b), connection("web", via_cluster, "web-secret", json!({"auth0": {"name": "team-b-web"}}))).await;
    apply(&admin, Some(&other), connection("web", json!({"name": "auth0"}), "web-secret", json!({"auth0": {"name": "other-web"}}))).await;

    let sa = Client::try_from(service_account_config(cp, &ns, name)).unwrap();
    let deployment = Api::<Deployment>::namespaced(admin.clone(), &ns).get(name).await.unwrap();
    let config = chart_config(&deployment, &ns, upstreams.ca_path());
    assert_eq!(config.watch_namespaces, [team_a.clone(), team_b.clone()]);
    let operator = RunningOperator::start(sa.clone(), config).await.expect("the operator starts with namespaced Roles");
    wait_ready(&admin, &team_a, "web").await;
    wait_ready(&admin, &team_a, "access").await;
    wait_ready(&admin, &team_b, "web").await;
    let scim_secret = Api::<Secret>::namespaced(admin.clone(), &team_a).get("team-a-scim").await.expect("the SCIM Secret was written");
    assert_eq!(scim_secret.owner_references()[0].name, "access");
    wait_broker_ready(Api::<ClusterIdentityBroker>::all(admin.clone()), &cluster_broker).await;
    let auth0 = upstreams.auth0(AUTH0_DOMAIN).unwrap();
    assert!(auth0.connection_by_name("team-a-web").is_some() && auth0.connection_by_name("team-b-web").is_some());

    // The namespace outside watchNamespaces is untouched, and out of reach.
    let untouched = Api::<AzureAdConnection>::namespaced(admin.clone(), &other).get("web").await.unwrap();
    assert!(untouched.status.is_none() && untouched.finalizers().is_empty(), "{untouched:?}");
    assert!(auth0.connection_by_name("other-web").is_none());
    assert_forbidden(Api::<Secret>::namespaced(sa.clone(), &other).get("web-secret").await, "reading a Secret outside watchNamespaces");
    assert_forbidden(Api::<AzureAdConnection>::all(sa.clone()).list(&ListParams::default()).await, "listing connections cluster-wide");
    assert_forbidden(Api::<Secret>::all(sa.clone()).list(&ListParams::default()).await, "listing Secrets cluster-wide");
    let stray = serde_json::from_value::<Secret>(json!({"metadata": {"name": "stray"}})).unwrap();
    assert_forbidden(
        Api::<Secret>::namespaced(sa.clone(), &other).create(&PostParams::default(), &stray).await,
        "creating a Secret outside watchNamespaces",
    );
    assert_forbidden(
        Api::<Secret>::namespaced(sa.clone(), &team_b).create(&PostParams::default(), &stray).await,
        "creating a Secret in a watched namespace outside rbac.scimSecretNamespaces",
    );
    rotations_need_client_secret_namespaces(&admin, &upstreams, &team_a, &team_b).await;
    operator.stop().await;
}

/// An AzureAdClientSecret rotates in a namespace of `rbac.clientSecretNamespaces` (`allowed`),
/// and elsewhere (`refused`) reports SecretWriteForbidden without creating a password.
async fn rotations_need_client_secret_namespaces(admin: &Client, upstreams: &Upstreams, allowed: &str, refused: &str) {
    use idp_bridge::crd::AzureAdClientSecret;
    for (namespace, app) in [(allowed, "7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"), (refused, "7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4e")] {
        upstreams.azure.add_app(TENANT_ID, app);
        upstreams.azure.set_graph_write_owned_by(TENANT_ID, app, true);
        upstreams.azure.add_owner(TENANT_ID, app, app);
        let bootstrap = format!("Bt{}Q~chart-bootstrap-{namespace}", &app[35..]);
        upstreams.azure.add_secret(TENANT_ID, app, &bootstrap, in_a_year());
        apply(admin, Some(namespace), secret("rotated", &[("client-secret", &bootstrap)])).await;
        let spec = json!({"azure": {"tenant": TENANT_ID, "clientId": app}, "secretName": "rotated", "lifetime": "2h", "renewBefore": "1h", "overlap": "1s"});
        let mut object = idp("AzureAdClientSecret", "rotation", spec);
        object["metadata"]["annotations"] = json!({"idpbridge.io/renew": "now"});
        apply(admin, Some(namespace), object).await;
    }
    let wait = |namespace: &str, what: &'static str, check: fn(&AzureAdClientSecret) -> bool| {
        let api: Api<AzureAdClientSecret> = Api::namespaced(admin.clone(), namespace);
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(40);
            loop {
                let object = api.get("rotation").await.unwrap();
                if check(&object) {
                    return;
                }
                assert!(std::time::Instant::now() < deadline, "{what}: {:#?}", object.status);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    wait(allowed, "a rotation under the chart's RBAC", |o| o.status.as_ref().is_some_and(|s| s.last_rotation_time.is_some())).await;
    wait(refused, "SecretWriteForbidden outside rbac.clientSecretNamespaces", |o| {
        o.status
            .as_ref()
            .and_then(|s| conditions::find(&s.conditions, conditions::READY))
            .is_some_and(|c| c.reason == "SecretWriteForbidden")
    })
    .await;
    assert_eq!(
        upstreams.azure.passwords(TENANT_ID, "7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4e").len(),
        1,
        "no password created where the Secret cannot be written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_upgrade_changes_the_deployment_and_uninstall_removes_the_release() {
    let cp = crate::common::control_plane().await;
    let admin = cp.client().await;
    let kubeconfig = Some(cp.kubeconfig_path());
    let ns = unique_name("chart-upgrade");
    let watched = unique_name("chart-upgrade-team");
    for name in [&ns, &watched] {
        create_namespace(&admin, name).await.unwrap();
    }
    let release = "upg";
    let name = "upg-idp-bridge";
    helm_ok(kubeconfig, &["install", release, &chart(), "--namespace", &ns]);
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &ns);
    let before = deployments.get(name).await.unwrap();
    assert_eq!(before.spec.as_ref().unwrap().replicas, Some(2));

    let values = values_file(&json!({"replicas": 3, "log": {"format": "json", "level": "debug"}, "watchNamespaces": [watched]}));
    let upgrade = helm_ok(kubeconfig, &["upgrade", release, &chart(), "--namespace", &ns, "--values", path_str(&values)]);
    assert!(upgrade.contains("REVISION: 2"), "{upgrade}");
    let after = deployments.get(name).await.unwrap();
    let spec = after.spec.unwrap();
    assert_eq!(spec.replicas, Some(3));
    let container = &spec.template.spec.unwrap().containers[0];
    let args = container.args.clone().unwrap();
    assert!(args.contains(&"--log-format=json".to_owned()) && args.contains(&format!("--watch-namespaces={watched}")), "{args:?}");
    let rust_log = container.env.as_ref().unwrap().iter().find(|e| e.name == "RUST_LOG").unwrap();
    assert!(rust_log.value.as_deref().unwrap().starts_with("debug,"));
    assert!(after.metadata.generation > before.metadata.generation);
    // Switching to watchNamespaces moved the namespaced rules from the ClusterRole into a Role.
    let cluster_role = Api::<ClusterRole>::all(admin.clone()).get(name).await.unwrap();
    assert_eq!(permissions(&serde_json::to_value(&cluster_role).unwrap()), set(CLUSTER_PERMISSIONS));
    Api::<Role>::namespaced(admin.clone(), &watched).get(name).await.expect("the upgrade created the Role in the watched namespace");

    let uninstall = helm_ok(kubeconfig, &["uninstall", release, "--namespace", &ns]);
    assert!(uninstall.contains("uninstalled"), "{uninstall}");
    assert!(deployments.get_opt(name).await.unwrap().is_none(), "Deployment removed");
    assert!(Api::<ServiceAccount>::namespaced(admin.clone(), &ns).get_opt(name).await.unwrap().is_none(), "ServiceAccount removed");
    assert!(Api::<Service>::namespaced(admin.clone(), &ns).get_opt("upg-idp-bridge-metrics").await.unwrap().is_none(), "Service removed");
    assert!(Api::<Role>::namespaced(admin.clone(), &ns).get_opt("upg-idp-bridge-operator").await.unwrap().is_none(), "Role removed");
    assert!(Api::<RoleBinding>::namespaced(admin.clone(), &ns).get_opt("upg-idp-bridge-operator").await.unwrap().is_none());
    assert!(Api::<Role>::namespaced(admin.clone(), &watched).get_opt(name).await.unwrap().is_none(), "watched namespace's Role removed");
    assert!(Api::<RoleBinding>::namespaced(admin.clone(), &watched).get_opt(name).await.unwrap().is_none());
    assert!(Api::<ClusterRole>::all(admin.clone()).get_opt(name).await.unwrap().is_none(), "ClusterRole removed");
    assert!(Api::<ClusterRoleBinding>::all(admin.clone()).get_opt(name).await.unwrap().is_none(), "ClusterRoleBinding removed");
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    for crd in idp_bridge::crd::all() {
        assert!(crds.get_opt(&crd.name_any()).await.unwrap().is_some(), "CRD {} stays after uninstall", crd.name_any());
    }
    let history = helm(kubeconfig, &["status", release, "--namespace", &ns]);
    assert!(!history.status.success(), "the release is gone");
}
