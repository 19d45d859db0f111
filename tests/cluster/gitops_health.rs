//! GitOps health, computed by the tools themselves on real objects from the operator: the
//! README's Argo CD health check (its Lua, taken from the README, run in Lua 5.1 as Argo CD's
//! gopher-lua runs it, with the object as `obj`), and kstatus (sigs.k8s.io/cli-utils, behind
//! Flux's health checks, kpt and Config Sync), as the `kstatus` program that
//! `scripts/control-plane-bins.sh` builds from its module.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
    time::Duration,
};

use crate::common::e2e::{CLIENT_ID, Env, TENANT_ID};
use idp_bridge::crd::{IdentityBroker, conditions::READY};
use idp_bridge_devenv::control_plane;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use mlua::LuaSerdeExt as _;
use serde_json::{Value, json};

/// The README's `argocd-cm` ConfigMap, with `&idpbridge-health` resolved for the broker kinds.
fn readme_argocd_cm() -> Value {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).expect("reading README.md");
    let block = fenced_blocks(&readme, "yaml")
        .into_iter()
        .find(|b| b.contains("resource.customizations.health.idpbridge.io_AzureAdConnection"))
        .expect("README.md has a yaml block with the Argo CD health check");
    serde_yaml::from_str(&block).unwrap_or_else(|e| panic!("the README's argocd-cm is not valid YAML: {e}\n{block}"))
}

/// The bodies of the fenced code blocks of `language` in a Markdown text.
fn fenced_blocks(markdown: &str, language: &str) -> Vec<String> {
    let opening = format!("```{language}");
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match current.as_mut() {
            None if line.trim_end() == opening => current = Some(String::new()),
            None => {}
            Some(_) if line.trim_end() == "```" => blocks.extend(current.take()),
            Some(body) => {
                body.push_str(line);
                body.push('\n');
            }
        }
    }
    blocks
}

/// The README's health check script for `kind`.
fn argo_cd_script(kind: &str) -> String {
    let cm = readme_argocd_cm();
    cm["data"][format!("resource.customizations.health.idpbridge.io_{kind}")]
        .as_str()
        .unwrap_or_else(|| panic!("the README's argocd-cm has no health check for {kind}"))
        .to_owned()
}

/// Runs an Argo CD health script on `object` as Argo CD does (the object as the global `obj`,
/// JSON null as nil) and returns its (status, message).
fn argo_cd_health(script: &str, object: &Value) -> (String, String) {
    let lua = mlua::Lua::new();
    let nulls_are_nil = mlua::serde::SerializeOptions::new().serialize_none_to_null(false).serialize_unit_to_null(false);
    let obj = lua.to_value_with(object, nulls_are_nil).expect("the object converts to Lua");
    lua.globals().set("obj", obj).expect("setting obj");
    let health: mlua::Table = lua.load(script).set_name("health.lua").eval().unwrap_or_else(|e| panic!("the health script failed: {e}"));
    let field = |name: &str| health.get::<Option<String>>(name).unwrap_or_else(|e| panic!("hs.{name}: {e}")).unwrap_or_default();
    (field("status"), field("message"))
}

fn kstatus_binary() -> &'static Path {
    static KSTATUS: OnceLock<PathBuf> = OnceLock::new();
    KSTATUS.get_or_init(|| {
        let dir = control_plane::binaries().unwrap_or_else(|e| panic!("no control-plane binaries: {e}")).dir;
        let kstatus = dir.join("kstatus");
        assert!(kstatus.is_file(), "{} has no kstatus; run scripts/control-plane-bins.sh", dir.display());
        kstatus
    })
}

/// kstatus' (status, message) for `object`, computed by sigs.k8s.io/cli-utils' `status.Compute`.
pub(crate) fn kstatus(object: &Value) -> (String, String) {
    let mut child = Command::new(kstatus_binary())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {}: {e}", kstatus_binary().display()));
    child.stdin.take().expect("stdin").write_all(object.to_string().as_bytes()).expect("writing the object to kstatus");
    let output = child.wait_with_output().expect("kstatus runs");
    assert!(output.status.success(), "kstatus failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr));
    let result: Value = serde_json::from_slice(&output.stdout).expect("kstatus prints JSON");
    (result["status"].as_str().unwrap_or_default().to_owned(), result["message"].as_str().unwrap_or_default().to_owned())
}

fn pair(status: &str, message: &str) -> (String, String) {
    (status.to_owned(), message.to_owned())
}

fn ready_message(object: &Value) -> (String, String) {
    let ready = object["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == READY))
        .unwrap_or_else(|| panic!("no Ready condition in {:#}", object["status"]));
    (ready["reason"].as_str().unwrap_or_default().to_owned(), ready["message"].as_str().unwrap_or_default().to_owned())
}

fn in_a_year() -> jiff::Timestamp {
    jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 365)
}

#[test]
fn the_readme_health_check_covers_every_kind_with_one_script() {
    let cm = readme_argocd_cm();
    assert_eq!(cm["kind"], "ConfigMap");
    assert_eq!(cm["metadata"], json!({"name": "argocd-cm", "namespace": "argocd"}));
    let script = argo_cd_script("AzureAdConnection");
    for kind in ["IdentityBroker", "ClusterIdentityBroker"] {
        assert_eq!(argo_cd_script(kind), script, "{kind} shares the connection's script (&idpbridge-health)");
    }
    // Before the operator's first status write, an object has no status at all.
    let fresh = json!({"apiVersion": "idpbridge.io/v1alpha1", "kind": "AzureAdConnection", "metadata": {"name": "web", "generation": 1}});
    assert_eq!(argo_cd_health(&script, &fresh), pair("Progressing", "Waiting for idp-bridge to reconcile"));
    assert_eq!(kstatus(&fresh), pair("Current", "Resource is current"), "kstatus' documented caveat");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argo_cd_and_kstatus_read_real_connections() {
    let script = argo_cd_script("AzureAdConnection");
    let argo = |object: &Value| argo_cd_health(&script, object);
    let mut env = Env::new("gitops-health").await;
    let value = env.canary("value");
    env.upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, &value, in_a_year());
    env.put_secret("web", &[("client-secret", &value)], &[]).await;

    // Ready at the current generation: Healthy, Current.
    env.connect("web", "web", json!({})).await;
    let ready = serde_json::to_value(env.wait_ready("web").await).unwrap();
    let (reason, message) = ready_message(&ready);
    assert_eq!(argo(&ready), pair("Healthy", &format!("{reason}: {message}")));
    assert_eq!(kstatus(&ready), pair("Current", "Resource is Ready"), "kstatus' own message for a True Ready");

    // The broker, through the same script.
    let brokers: Api<IdentityBroker> = Api::namespaced(env.client.clone(), &env.ns);
    let broker = wait_broker_ready(&brokers, "auth0").await;
    let (reason, message) = ready_message(&broker);
    assert_eq!(argo_cd_health(&argo_cd_script("IdentityBroker"), &broker), pair("Healthy", &format!("{reason}: {message}")));
    assert_eq!(kstatus(&broker), pair("Current", "Resource is Ready"));

    // A permanent failure: Degraded with the reason and message; kstatus InProgress with the
    // message (it has no Failed for a False Ready, only for Stalled), so Flux reports it at its
    // timeout.
    env.put_secret("secret-id", &[("client-secret", "6f5e2a39-0a42-4a4e-9a55-4f2a3cfe2f0b")], &[]).await;
    env.connect("secret-id", "secret-id", json!({})).await;
    let refused = serde_json::to_value(env.wait_condition("secret-id", READY, "False", "SecretIdInsteadOfValue").await).unwrap();
    let (_, message) = ready_message(&refused);
    assert!(!message.is_empty());
    assert_eq!(argo(&refused), pair("Degraded", &format!("SecretIdInsteadOfValue: {message}")));
    assert_eq!(kstatus(&refused), pair("InProgress", &message));

    // Suspended on purpose: Argo CD's Suspended.
    env.connect("paused", "web", json!({"suspend": true})).await;
    let paused = serde_json::to_value(env.wait_condition("paused", READY, "False", "Suspended").await).unwrap();
    let (_, message) = ready_message(&paused);
    assert_eq!(argo(&paused), pair("Suspended", &format!("Suspended: {message}")));
    assert_eq!(kstatus(&paused), pair("InProgress", &message));

    // A transient failure the operator retries by itself: Progressing, not Degraded.
    env.auth0.shutdown();
    env.connect("late", "web", json!({})).await;
    let unreachable = serde_json::to_value(env.wait_condition("late", READY, "False", "BrokerUnreachable").await).unwrap();
    let (_, message) = ready_message(&unreachable);
    assert_eq!(argo(&unreachable), pair("Progressing", &format!("BrokerUnreachable: {message}")));
    assert_eq!(kstatus(&unreachable), pair("InProgress", &message));

    // A spec change the operator has not seen: observedGeneration lags, whatever Ready says.
    env.stop_operator().await;
    let patch = json!({"spec": {"auth0": {"displayName": "Web, renamed"}}});
    env.connections().patch("web", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("changing the spec");
    let stale = serde_json::to_value(env.connections().get("web").await.unwrap()).unwrap();
    let (generation, observed) =
        (stale["metadata"]["generation"].as_i64().unwrap(), stale["status"]["observedGeneration"].as_i64().unwrap());
    assert_eq!(generation, observed + 1, "{:#}", stale["metadata"]);
    assert_eq!(argo(&stale), pair("Progressing", &format!("idp-bridge has not reconciled generation {generation} yet")));
    assert_eq!(
        kstatus(&stale),
        pair("InProgress", &format!("AzureAdConnection generation is {generation}, but latest observed generation is {observed}"))
    );
}

/// The broker as JSON, once its Ready condition is True.
async fn wait_broker_ready(api: &Api<IdentityBroker>, name: &str) -> Value {
    let mut last = Value::Null;
    for _ in 0..400 {
        if let Some(broker) = api.get_opt(name).await.expect("reading the broker") {
            last = serde_json::to_value(&broker).unwrap();
            if last["status"]["conditions"].as_array().is_some_and(|c| c.iter().any(|c| c["type"] == READY && c["status"] == "True")) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("broker {name} did not become Ready: {:#}", last["status"]);
}
