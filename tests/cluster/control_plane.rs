//! The test harness itself: admin and impersonated clients, the kubeconfig file, `stop()`, the
//! watchdog that stops the servers when the test process dies without dropping them, and the
//! controller-manager's namespace and garbage-collector controllers.

use std::io::BufRead as _;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use idp_bridge::crd::{AzureAdConnection, IdentityBroker};
use idp_bridge_devenv::control_plane::ControlPlane;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;

const CHILD_ENV: &str = "IDP_BRIDGE_WATCHDOG_CHILD";

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().and_then(|p| p.trim_end_matches('/').parse().ok()).expect("a URL with a port")
}

fn is_listening(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

#[tokio::test]
async fn admin_client_and_kubeconfig_file_work() {
    let cp = crate::common::control_plane().await;
    let namespaces: Api<Namespace> = Api::all(cp.client().await);
    assert!(namespaces.get_opt("default").await.unwrap().is_some());

    let path = cp.kubeconfig_path();
    assert_eq!(std::fs::metadata(path).unwrap().permissions().mode() & 0o777, 0o600);
    let kubeconfig = kube::config::Kubeconfig::read_from(path).expect("the kubeconfig parses");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.expect("the kubeconfig loads");
    assert_eq!(config.cluster_url.to_string().trim_end_matches('/'), cp.server_url());
    let from_file: Api<Namespace> = Api::all(kube::Client::try_from(config).unwrap());
    assert!(from_file.get_opt("kube-system").await.unwrap().is_some());
}

#[tokio::test]
async fn impersonated_users_are_subject_to_rbac() {
    let cp = crate::common::control_plane().await;
    let client = kube::Client::try_from(cp.impersonating_config("alice", &["dev-team"])).unwrap();
    let namespaces: Api<Namespace> = Api::all(client);
    match namespaces.list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) => {
            assert!(status.is_forbidden(), "{status:?}");
            assert!(status.message.contains("\"alice\""), "{}", status.message);
        }
        other => panic!("alice has no RBAC grant and must be forbidden, got {other:?}"),
    }
}

#[tokio::test]
async fn stop_ends_every_server_and_removes_the_temp_dir() {
    let mut cp = ControlPlane::start().await.expect("a second control plane starts");
    let dir = cp.dir().to_path_buf();
    let port = port_of(&cp.server_url());
    let controller_manager_port = port_of(&cp.controller_manager_url());
    assert!(dir.join("kube-apiserver.log").exists());
    assert!(dir.join("kube-controller-manager.log").exists());
    assert!(is_listening(port));
    assert!(is_listening(controller_manager_port));

    let started = Instant::now();
    cp.stop();
    eprintln!("stop() took {:.1}s", started.elapsed().as_secs_f64());
    assert!(!dir.exists(), "{} still exists", dir.display());
    assert!(!is_listening(port), "the apiserver still listens on {port}");
    assert!(!is_listening(controller_manager_port), "the controller-manager still listens on {controller_manager_port}");
    cp.stop(); // idempotent
}

/// The fault suite's apiserver outage: stopped, nothing listens and requests fail; restarted on
/// the same port and etcd, what was stored is still there and the same client works again.
#[tokio::test]
async fn a_restarted_apiserver_serves_what_etcd_kept_on_the_same_address() {
    let mut cp = ControlPlane::start().await.expect("a second control plane starts");
    let client = cp.client().await;
    let maps: Api<ConfigMap> = Api::namespaced(client, "default");
    maps.create(&PostParams::default(), &config_map("kept")).await.expect("creating a ConfigMap");
    let port = port_of(&cp.server_url());

    cp.stop_apiserver();
    assert!(!is_listening(port), "the stopped apiserver still listens on {port}");
    assert!(maps.get_opt("kept").await.is_err(), "a read while the apiserver is down fails");
    cp.restart_apiserver().await.expect("the apiserver starts again");
    assert!(maps.get_opt("kept").await.expect("reading after the restart").is_some(), "the ConfigMap survived");
    let log = std::fs::read_to_string(cp.dir().join("kube-apiserver.log")).unwrap();
    assert!(log.matches("Serving securely").count() >= 2, "the log holds both runs");
}

/// Run by `watchdog_stops_servers_when_the_process_is_killed` in a child process: starts a
/// control plane, reports it, and dies by SIGKILL without running any destructor.
#[tokio::test]
async fn watchdog_child_process() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let cp = ControlPlane::start().await.expect("the child's control plane starts");
    println!("CP_DIR={}", cp.dir().display());
    println!("CP_URL={}", cp.server_url());
    println!("CP_KCM_URL={}", cp.controller_manager_url());
    use std::io::Write as _;
    std::io::stdout().flush().unwrap();
    // SAFETY: raise(3) has no preconditions; SIGKILL ends this process at once.
    unsafe {
        libc::raise(libc::SIGKILL);
    }
    unreachable!("SIGKILL returned");
}

#[test]
fn watchdog_stops_servers_when_the_process_is_killed() {
    let output = child_test("watchdog_child_process")
        .env(CHILD_ENV, "1")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("the child test runs");
    let mut dir = None;
    let mut url = None;
    let mut kcm_url = None;
    for line in output.stdout.lines() {
        let line = line.unwrap();
        // libtest may print "test watchdog_child_process ... " before the first line.
        if let Some((_, d)) = line.split_once("CP_DIR=") {
            dir = Some(PathBuf::from(d));
        } else if let Some((_, u)) = line.split_once("CP_KCM_URL=") {
            kcm_url = Some(u.to_owned());
        } else if let Some((_, u)) = line.split_once("CP_URL=") {
            url = Some(u.to_owned());
        }
    }
    let (dir, url, kcm_url) = match (dir, url, kcm_url) {
        (Some(d), Some(u), Some(k)) => (d, u, k),
        _ => panic!("the child did not report its control plane ({}):\n{}", output.status, String::from_utf8_lossy(&output.stdout)),
    };
    let (port, kcm_port) = (port_of(&url), port_of(&kcm_url));

    let died = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(30);
    while dir.exists() || is_listening(port) || is_listening(kcm_port) {
        assert!(Instant::now() < deadline, "30 s after the child died, {} exists or port {port} or {kcm_port} listens", dir.display());
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("the watchdog cleaned up {:.1}s after the child died", died.elapsed().as_secs_f64());
}

const FAILURE_CHILD_ENV: &str = "IDP_BRIDGE_START_FAILURE_CHILD";

/// Run by the start-failure tests in a child process (the binary directory is resolved once per
/// process): `ControlPlane::start` must fail with every `|`-separated text of the env var in its
/// message and leave no temp dir behind.
#[tokio::test]
async fn start_failure_child_process() {
    let Some(expected) = std::env::var_os(FAILURE_CHILD_ENV) else {
        return;
    };
    let message = ControlPlane::start().await.expect_err("start-up must fail").to_string();
    eprintln!("the start-up error reads:\n{message}");
    for text in expected.to_str().unwrap().split('|') {
        assert!(message.contains(text), "the error does not mention {text:?}");
    }
    for dir in message.split_whitespace().filter(|w| w.contains("/idp-bridge-cp-")) {
        let dir = PathBuf::from(dir.rsplit_once('/').map_or(dir, |(d, _)| d));
        assert!(!dir.exists(), "{} was left behind", dir.display());
    }
}

/// This test binary re-run to execute exactly the test `name` of this module. libtest names a
/// test by its module path within the binary, so `--exact` needs the qualified name.
fn child_test(name: &str) -> Command {
    let module = module_path!().split_once("::").map_or(module_path!(), |(_, m)| m);
    let mut command = Command::new(std::env::current_exe().unwrap());
    command.args([&format!("{module}::{name}"), "--exact", "--nocapture", "--test-threads=1"]);
    command
}

fn run_failure_child(bin_dir: &std::path::Path, expected: &str) {
    let output = child_test("start_failure_child_process")
        .env(FAILURE_CHILD_ENV, expected)
        .env("IDP_BRIDGE_BIN_DIR", bin_dir)
        .stdin(Stdio::null())
        .output()
        .expect("the child test runs");
    assert!(
        output.status.success() && String::from_utf8_lossy(&output.stdout).contains("1 passed"),
        "the child failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn missing_binaries_fail_with_instructions() {
    let empty = tempfile::tempdir().unwrap();
    run_failure_child(empty.path(), "is missing etcd, kube-apiserver, kube-controller-manager and kubectl|scripts/control-plane-bins.sh");
}

#[test]
fn a_crashing_apiserver_fails_start_with_both_log_tails() {
    let real = idp_bridge_devenv::control_plane::binaries().expect("the real binaries");
    let fake = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(real.etcd(), fake.path().join("etcd")).unwrap();
    std::os::unix::fs::symlink(real.kubectl(), fake.path().join("kubectl")).unwrap();
    std::os::unix::fs::symlink(real.kube_controller_manager(), fake.path().join("kube-controller-manager")).unwrap();
    let apiserver = fake.path().join("kube-apiserver");
    std::fs::write(&apiserver, "#!/bin/sh\necho 'E0101 fake kube-apiserver: no such flag' >&2\nexit 3\n").unwrap();
    std::fs::set_permissions(&apiserver, std::fs::Permissions::from_mode(0o755)).unwrap();
    run_failure_child(
        fake.path(),
        "kube-apiserver exited|exit status: 3|fake kube-apiserver: no such flag|etcd.log -----|kube-apiserver.log -----|kube-controller-manager.log was not started",
    );
}

#[test]
fn a_crashing_controller_manager_fails_start_with_every_log_tail() {
    let real = idp_bridge_devenv::control_plane::binaries().expect("the real binaries");
    let fake = tempfile::tempdir().unwrap();
    for (binary, name) in [(real.etcd(), "etcd"), (real.kube_apiserver(), "kube-apiserver"), (real.kubectl(), "kubectl")] {
        std::os::unix::fs::symlink(binary, fake.path().join(name)).unwrap();
    }
    let controller_manager = fake.path().join("kube-controller-manager");
    std::fs::write(&controller_manager, "#!/bin/sh\necho 'E0101 fake kube-controller-manager: unknown controller' >&2\nexit 4\n").unwrap();
    std::fs::set_permissions(&controller_manager, std::fs::Permissions::from_mode(0o755)).unwrap();
    run_failure_child(
        fake.path(),
        "kube-controller-manager exited|exit status: 4|fake kube-controller-manager: unknown controller|etcd.log -----|kube-apiserver.log -----|kube-controller-manager.log -----",
    );
}

/// How long the controller-manager may take for asynchronous work (its informers sync after
/// start-up). The CRDs are installed before it starts, so the garbage collector need not wait
/// for its next discovery refresh to know their kinds.
const CONTROLLER_WAIT: Duration = Duration::from_secs(60);

/// Waits until `name` is gone from `api`, or panics with its last state and the log tails.
async fn wait_until_gone<K>(api: &Api<K>, name: &str) -> Duration
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let started = Instant::now();
    let mut last = None;
    while started.elapsed() < CONTROLLER_WAIT {
        match api.get_opt(name).await.unwrap() {
            None => return started.elapsed(),
            Some(object) => last = Some(object),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let logs = crate::common::control_plane().await.logs_tail(40);
    panic!("{name} still exists after {CONTROLLER_WAIT:?}: {last:#?}\n{logs}");
}

fn from_json<K: DeserializeOwned>(value: serde_json::Value) -> K {
    serde_json::from_value(value).expect("a valid manifest")
}

fn config_map(name: &str) -> ConfigMap {
    from_json(json!({"metadata": {"name": name}, "data": {"key": "value"}}))
}

fn auth0_broker(name: &str) -> IdentityBroker {
    from_json(json!({
        "apiVersion": "idpbridge.io/v1alpha1",
        "kind": "IdentityBroker",
        "metadata": {"name": name},
        "spec": {"auth0": {"domain": "acme.eu.auth0.com", "credentialsSecretRef": {"name": "auth0-m2m"}}},
    }))
}

fn connection(name: &str) -> AzureAdConnection {
    from_json(json!({
        "apiVersion": "idpbridge.io/v1alpha1",
        "kind": "AzureAdConnection",
        "metadata": {"name": name},
        "spec": {
            "brokerRef": {"name": "auth0"},
            "azure": {
                "tenant": "contoso.onmicrosoft.com",
                "clientId": "11111111-2222-3333-4444-555555555555",
                "clientSecretRef": {"name": "contoso-azure"},
            },
            "auth0": {"name": "contoso-azure"},
        },
    }))
}

/// A Secret owned by `owner` (a live object, so its uid is set), or by nobody.
fn secret_owned_by<K: Resource<DynamicType = ()>>(name: &str, owner: Option<&K>) -> Secret {
    let mut secret: Secret = from_json(json!({"metadata": {"name": name}, "stringData": {"key": "value"}}));
    let reference: Option<OwnerReference> = owner.map(|o| o.controller_owner_ref(&()).expect("the owner has a name and uid"));
    secret.metadata.owner_references = reference.map(|r| vec![r]);
    secret
}

#[tokio::test]
async fn deleting_a_namespace_deletes_its_objects_and_then_the_namespace() {
    let (client, ns) = crate::common::namespace("ns-delete").await;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let brokers: Api<IdentityBroker> = Api::namespaced(client.clone(), &ns);
    config_maps.create(&PostParams::default(), &config_map("settings")).await.unwrap();
    brokers.create(&PostParams::default(), &auth0_broker("auth0")).await.unwrap();

    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces.delete(&ns, &DeleteParams::default()).await.unwrap();
    let took = wait_until_gone(&namespaces, &ns).await;
    eprintln!("namespace {ns} was deleted in {:.1}s", took.as_secs_f64());
    // A namespace is only removed once the namespace controller has emptied it.
    assert!(config_maps.get_opt("settings").await.unwrap().is_none());
    assert!(brokers.get_opt("auth0").await.unwrap().is_none());
}

#[tokio::test]
async fn garbage_collection_deletes_the_dependents_of_a_deleted_owner() {
    let (client, ns) = crate::common::namespace("gc").await;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let connections: Api<AzureAdConnection> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let config_map = config_maps.create(&PostParams::default(), &config_map("owner")).await.unwrap();
    // No operator watches this namespace, so the connection has no finalizer and goes at once.
    let connection = connections.create(&PostParams::default(), &connection("owner")).await.unwrap();
    let create = PostParams::default();
    secrets.create(&create, &secret_owned_by("of-a-config-map", Some(&config_map))).await.unwrap();
    secrets.create(&create, &secret_owned_by("of-a-connection", Some(&connection))).await.unwrap();
    secrets.create(&create, &secret_owned_by::<ConfigMap>("of-nobody", None)).await.unwrap();

    let deleted = Instant::now();
    config_maps.delete("owner", &DeleteParams::default()).await.unwrap();
    connections.delete("owner", &DeleteParams::default()).await.unwrap();
    for dependent in ["of-a-config-map", "of-a-connection"] {
        wait_until_gone(&secrets, dependent).await;
        eprintln!("Secret {dependent} was collected {:.1}s after its owner's deletion", deleted.elapsed().as_secs_f64());
    }
    let unowned = secrets.get_opt("of-nobody").await.unwrap().expect("a Secret without owner is kept");
    assert!(unowned.owner_references().is_empty());
}
