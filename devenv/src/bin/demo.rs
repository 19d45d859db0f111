//! The demo: a real kube-apiserver and etcd on loopback, emulated Azure and Auth0, and the operator
//! reconciling the resources in `examples/`. It shows their status with the real kubectl (built
//! with the control plane), an app registration missing its redirect URI fixed by
//! `azure.registration: Manage`, rotates a secret, shows a bad secret being refused, and leaves
//! everything running for kubectl until Ctrl-C.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use clap::Parser;
use idp_bridge::crd::{AzureAdConnection, EXPIRES_AT_ANNOTATION, conditions};
use idp_bridge_devenv::{
    control_plane::{self, ControlPlane, create_namespace, install_crds},
    stack::{RunningOperator, Upstreams},
};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
    core::{ApiResource, DynamicObject, GroupVersionKind},
};
use serde_json::{Value, json};

/// The examples the demo applies, embedded so the demo needs nothing but this binary.
const EXAMPLES: &[(&str, &str)] = &[
    ("examples/auth0-broker.yaml", include_str!("../../../examples/auth0-broker.yaml")),
    ("examples/auth0-web.yaml", include_str!("../../../examples/auth0-web.yaml")),
    ("examples/auth0-native.yaml", include_str!("../../../examples/auth0-native.yaml")),
    ("examples/cloudflare.yaml", include_str!("../../../examples/cloudflare.yaml")),
    ("examples/logto.yaml", include_str!("../../../examples/logto.yaml")),
    ("examples/unified.yaml", include_str!("../../../examples/unified.yaml")),
];
/// The connections the examples define, one or more per broker.
const CONNECTIONS: &[&str] = &["contoso-web", "contoso-native", "contoso-access", "contoso-logto", "contoso-unified"];
/// The connection whose app registration starts without the broker's redirect URI.
const MISSING_REDIRECT: &str = "contoso-web";
const NAMESPACE: &str = "demo";
const OPERATOR_NAMESPACE: &str = "idp-bridge";
/// The GUID the emulated tenant `contoso.onmicrosoft.com` resolves to.
const TENANT_ID: &str = "3f2a1c4e-8b7d-4e6a-9c5b-2d1e0f9a8b7c";
const MANAGER: &str = "idp-bridge-demo";

#[derive(Parser)]
#[command(name = "idp-bridge-demo", about = "Runs idp-bridge against a local control plane and emulated Azure and Auth0")]
struct Args {
    /// Exit after the walkthrough instead of waiting for Ctrl-C.
    #[arg(long)]
    no_wait: bool,
}

type DemoResult<T> = Result<T, Box<dyn std::error::Error>>;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    idp_bridge::install_crypto_provider();
    let args = Args::parse();
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn step(text: &str) {
    println!("\n==> {text}");
}

async fn run(args: Args) -> DemoResult<()> {
    step("Starting a local Kubernetes control plane (kube-apiserver + etcd)");
    let control_plane = ControlPlane::start().await?;
    let client = control_plane.client().await;
    install_crds(&client, &idp_bridge::crd::all()).await?;
    for ns in [NAMESPACE, OPERATOR_NAMESPACE] {
        create_namespace(&client, ns).await?;
    }
    println!("    API server {} ready in {:.1}s; CRDs installed", control_plane.server_url(), control_plane.started_in().as_secs_f64());

    step("Starting emulated Azure (login + Graph), Auth0, Cloudflare Access, Logto and Unified.to, seeded from the examples");
    let documents = examples()?;
    let mut upstreams = Upstreams::start()?;
    seed(&mut upstreams, &documents)?;
    let log_path = upstreams.dir().join("operator.log");
    init_logs(log_path.clone())?;
    println!(
        "    Azure emulator {}; broker emulators for acme.eu.auth0.com, api.cloudflare.com, auth.example.com, api.unified.to",
        upstreams.azure.base_url()
    );

    step("Starting the operator (endpoint overrides + test CA, exactly as in production)");
    let config = upstreams.operator_config(OPERATOR_NAMESPACE, vec![]);
    let operator = RunningOperator::start(client.clone(), config).await?;
    println!("    operator logs: {}", log_path.display());

    step(&format!("Applying {}", EXAMPLES.iter().map(|(name, _)| *name).collect::<Vec<_>>().join(", ")));
    for doc in &documents {
        apply(&client, doc).await?;
        println!("    {}/{} applied", doc["kind"].as_str().unwrap_or_default(), doc["metadata"]["name"].as_str().unwrap_or_default());
    }
    let connections: Api<AzureAdConnection> = Api::namespaced(client.clone(), NAMESPACE);
    for name in CONNECTIONS.iter().filter(|n| **n != MISSING_REDIRECT) {
        wait_until(&connections, name, |c| ready_status(c) == Some("True")).await?;
    }
    fix_missing_redirect_uri(&control_plane, &client, &upstreams, &connections, &documents).await?;
    step("Every connection is Ready; kubectl (v1.35, built with the control plane) shows them");
    kubectl(&control_plane, &["get", "aadc", "-A"]).await?;
    let auth0 = upstreams.auth0("acme.eu.auth0.com")?;
    println!("\n    The brokers now hold:");
    for conn in auth0.connections() {
        println!(
            "      Auth0 connection       {:<26} strategy={} client_id={} app_id={}",
            conn["name"].as_str().unwrap_or_default(),
            conn["strategy"].as_str().unwrap_or_default(),
            conn["options"]["client_id"].as_str().unwrap_or_default(),
            conn["options"]["app_id"].as_str().unwrap_or("-")
        );
    }
    for idp in upstreams.cloudflare()?.providers() {
        println!(
            "      Cloudflare IdP         {:<26} type={} client_id={} directory_id={} scim={}",
            idp["name"].as_str().unwrap_or_default(),
            idp["type"].as_str().unwrap_or_default(),
            idp["config"]["client_id"].as_str().unwrap_or_default(),
            idp["config"]["directory_id"].as_str().unwrap_or_default(),
            idp["scim_config"]["enabled"]
        );
    }
    for connector in upstreams.logto("auth.example.com", "https://default.logto.app/api")?.connectors() {
        println!(
            "      Logto connector        {:<26} factory={} clientId={} tenantId={}",
            connector["id"].as_str().unwrap_or_default(),
            connector["connectorId"].as_str().unwrap_or_default(),
            connector["config"]["clientId"].as_str().unwrap_or_default(),
            connector["config"]["tenantId"].as_str().unwrap_or_default()
        );
    }
    for connection in upstreams.unified()?.connections() {
        println!(
            "      Unified.to connection  {:<26} integration={} client_id={}",
            connection["external_xref"].as_str().unwrap_or_default(),
            connection["integration_type"].as_str().unwrap_or_default(),
            connection["auth"]["client_id"].as_str().unwrap_or_default()
        );
    }
    let scim: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    if let Some(secret) = scim.get_opt("contoso-access-scim").await? {
        let keys: Vec<String> = secret.data.unwrap_or_default().into_keys().collect();
        println!("    Secret contoso-access-scim (SCIM for Entra ID provisioning) holds: {}", keys.join(", "));
    }

    step("Rotating contoso-web's client secret (a new secret in Entra ID, then the Secret updated)");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let rotated = "Rt42Q~rotated-web-secret-value-0987654321";
    let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 180);
    upstreams.azure.add_secret(TENANT_ID, "8c2e4b6a-1f3d-4a5b-9e7c-6d8f0a2b4c6e", rotated, expires);
    let writes_before = auth0.writes();
    let started = Instant::now();
    put_secret(&secrets, "contoso-web-client-secret", rotated, Some(&expires.round(jiff::Unit::Second)?.to_string())).await?;
    while auth0.connection_by_name("contoso-azure-ad").and_then(|c| c["options"]["client_secret"].as_str().map(|s| s == rotated))
        != Some(true)
    {
        if started.elapsed() > Duration::from_secs(30) {
            return Err("the broker did not receive the rotated secret within 30s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "    Auth0 received the new value {} ms after the Secret changed, in {} write(s)",
        started.elapsed().as_millis(),
        auth0.writes() - writes_before
    );
    wait_until(&connections, "contoso-web", |c| ready_status(c) == Some("True") && synced(c)).await?;
    kubectl(&control_plane, &["get", "aadc", "contoso-web", "-n", NAMESPACE]).await?;

    step("Pasting the secret's ID instead of its value, then a wrong value: refused, Auth0 keeps the working secret");
    put_secret(&secrets, "contoso-web-client-secret", "6f5e2a39-0a42-4a4e-9a55-4f2a3cfe2f0b", None).await?;
    wait_until(&connections, "contoso-web", |c| ready_reason(c) == Some("SecretIdInsteadOfValue")).await?;
    kubectl(&control_plane, &["get", "aadc", "contoso-web", "-n", NAMESPACE]).await?;
    put_secret(&secrets, "contoso-web-client-secret", "Xy11Q~this-is-not-the-secret-value-1234", None).await?;
    wait_until(&connections, "contoso-web", |c| ready_reason(c) == Some("InvalidSecret")).await?;
    kubectl(&control_plane, &["describe", "aadc", "contoso-web", "-n", NAMESPACE]).await?;
    let held = auth0.connection_by_name("contoso-azure-ad").and_then(|c| c["options"]["client_secret"].as_str().map(|s| s == rotated));
    println!("    Auth0 still holds the rotated, working secret: {}", held == Some(true));

    step("Restoring the working value");
    put_secret(&secrets, "contoso-web-client-secret", rotated, Some(&expires.round(jiff::Unit::Second)?.to_string())).await?;
    wait_until(&connections, "contoso-web", |c| ready_status(c) == Some("True")).await?;
    kubectl(&control_plane, &["get", "aadc", "-A"]).await?;

    rotate_by_itself(&control_plane, &client, &mut upstreams).await?;

    step("Use it yourself");
    println!("    export KUBECONFIG={}", control_plane.kubeconfig_path().display());
    println!("    export PATH={}:$PATH   # the kubectl used above", control_plane::binaries()?.dir.display());
    println!("    kubectl get aadc -A");
    println!("    kubectl describe aadc contoso-web -n {NAMESPACE}");
    println!("    kubectl edit secret contoso-web-client-secret -n {NAMESPACE}   # and watch the status follow");
    println!("    kubectl get aadcs -n {NAMESPACE}; idp-bridge rotate {NAMESPACE}/contoso-web   # another rotation");
    println!("    Against a real cluster and real Azure/Auth0: see \"Running against a cluster\" in README.md.");
    if args.no_wait {
        operator.stop().await;
        return Ok(());
    }
    println!("\n    Everything keeps running; press Ctrl-C to stop.");
    tokio::signal::ctrl_c().await?;
    operator.stop().await;
    Ok(())
}

const WEB_APP: &str = "8c2e4b6a-1f3d-4a5b-9e7c-6d8f0a2b4c6e";

/// examples/client-secret.yaml: an AzureAdClientSecret renewing contoso-web's password, applied
/// after the walkthrough above (whose manual rotations it would otherwise take over), with a
/// short overlap so the demo shows the previous password go.
async fn rotate_by_itself(control_plane: &ControlPlane, client: &Client, upstreams: &mut Upstreams) -> DemoResult<()> {
    use idp_bridge::crd::{AzureAdClientSecret, client_secret::AzureAdClientSecretStatus};
    step("Zero-touch rotation: examples/client-secret.yaml renews contoso-web's password in Entra ID by itself (overlap 5s for the demo)");
    upstreams.azure.set_graph_write_owned_by(TENANT_ID, WEB_APP, true);
    upstreams.azure.add_owner(TENANT_ID, WEB_APP, WEB_APP);
    let replication = jiff::SignedDuration::from_secs(5);
    upstreams.azure.set_password_policy(idp_bridge_devenv::azure::PasswordPolicy { replication_delay: replication, ..Default::default() });
    println!("    Emulated Entra ID accepts a new password {}s after it is created (replication)", replication.as_secs());
    let text = include_str!("../../../examples/client-secret.yaml");
    let mut doc: Value = serde_yaml::from_str(text)?;
    doc["metadata"]["namespace"] = json!(NAMESPACE);
    doc["spec"]["overlap"] = json!("5s");
    apply(client, &doc).await?;
    let api: Api<AzureAdClientSecret> = Api::namespaced(client.clone(), NAMESPACE);
    let status = |o: Option<AzureAdClientSecret>| o.and_then(|o| o.status).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(60);
    let ready = |s: &AzureAdClientSecretStatus| {
        s.current.is_some() && conditions::find(&s.conditions, conditions::READY).is_some_and(|c| c.status == "True")
    };
    while !ready(&status(api.get_opt("contoso-web").await?)) {
        if Instant::now() > deadline {
            return Err("the AzureAdClientSecret did not adopt the current password within 60s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    kubectl(control_plane, &["get", "aadcs", "-n", NAMESPACE]).await?;
    println!("\n    $ idp-bridge rotate {NAMESPACE}/contoso-web");
    println!("    {}", idp_bridge::rotation::request::rotate(client.clone(), &format!("{NAMESPACE}/contoso-web"), false).await?);
    let stage = |s: &AzureAdClientSecretStatus| match (&s.pending, &s.previous) {
        (Some(p), _) if p.proven_at.is_some() => "proven: Entra ID issued a token for it",
        (Some(p), _) if p.key_id.is_some() => "addPassword done; the value staged in client-secret-next",
        (Some(_), _) => "intent recorded in status (a marker)",
        (None, Some(_)) => "promoted to client-secret; the previous password waits for Auth0 and the overlap",
        (None, None) => "previous password removed",
    };
    let started = Instant::now();
    let mut last = "";
    loop {
        let current = status(api.get_opt("contoso-web").await?);
        let now = if current.last_rotation_time.is_none() && current.pending.is_none() { "" } else { stage(&current) };
        if now != last && !now.is_empty() {
            println!("    {:>5.1}s  {now}", started.elapsed().as_secs_f64());
            last = now;
        }
        let scheduled = conditions::find(&current.conditions, conditions::ISSUING).is_some_and(|c| c.reason == "RenewalScheduled");
        if now == "previous password removed" && scheduled {
            break;
        }
        if started.elapsed() > Duration::from_secs(90) {
            return Err("the rotation did not finish within 90s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let passwords = upstreams.azure.passwords(TENANT_ID, WEB_APP);
    println!(
        "    Entra ID now holds the app's passwords {:?}: the bootstrap one is gone; the example's first (made by a person) is never touched",
        passwords.iter().map(|p| &p.1).collect::<Vec<_>>()
    );
    let secret = Api::<Secret>::namespaced(client.clone(), NAMESPACE).get("contoso-web-client-secret").await?;
    let value = secret.data.and_then(|d| d.get("client-secret").cloned()).map(|b| String::from_utf8_lossy(&b.0).into_owned());
    let auth0 = upstreams.auth0("acme.eu.auth0.com")?;
    let held = auth0.connection_by_name("contoso-azure-ad").and_then(|c| c["options"]["client_secret"].as_str().map(str::to_owned));
    println!("    Auth0 holds the new password: {}", value.is_some() && held == value);
    kubectl(control_plane, &["get", "aadcs", "-n", NAMESPACE]).await?;
    Ok(())
}

/// Every YAML document of the embedded examples, as JSON, namespaced into the demo namespace.
fn examples() -> DemoResult<Vec<Value>> {
    use serde::Deserialize;
    let mut docs = Vec::new();
    for (name, text) in EXAMPLES {
        for document in serde_yaml::Deserializer::from_str(text) {
            let mut value = Value::deserialize(document).map_err(|e| format!("{name}: {e}"))?;
            if value.is_null() {
                continue;
            }
            value["metadata"]["namespace"] = json!(NAMESPACE);
            docs.push(value);
        }
    }
    Ok(docs)
}

fn string_data<'a>(docs: &'a [Value], secret: &str, key: &str) -> Option<&'a str> {
    docs.iter().find(|d| d["kind"] == "Secret" && d["metadata"]["name"] == secret).and_then(|d| d["stringData"][key].as_str())
}

/// Registers the examples' applications, secrets and broker credentials with the emulators.
fn seed(upstreams: &mut Upstreams, docs: &[Value]) -> DemoResult<()> {
    upstreams.azure.add_tenant(TENANT_ID, &["contoso.onmicrosoft.com"]);
    for doc in docs {
        match doc["kind"].as_str() {
            Some("AzureAdConnection") => {
                let azure = &doc["spec"]["azure"];
                let client_id = azure["clientId"].as_str().ok_or("connection without clientId")?;
                upstreams.azure.add_app(TENANT_ID, client_id);
                let secret = azure["clientSecretRef"]["name"].as_str().ok_or("connection without clientSecretRef")?;
                let key = azure["clientSecretRef"]["key"].as_str().unwrap_or("client-secret");
                let value = string_data(docs, secret, key).ok_or("connection's Secret is not in the examples")?;
                let expires = docs
                    .iter()
                    .find(|d| d["kind"] == "Secret" && d["metadata"]["name"] == secret)
                    .and_then(|d| d["metadata"]["annotations"][EXPIRES_AT_ANNOTATION].as_str())
                    .and_then(|t| t.parse().ok())
                    .unwrap_or_else(|| jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 365));
                upstreams.azure.add_secret(TENANT_ID, client_id, value, expires);
                // The app may read its own registration, so expiry comes from Microsoft Graph.
                upstreams.azure.set_graph_read_all(TENANT_ID, client_id, true);
                seed_registration(upstreams, docs, doc, client_id)?;
            }
            Some("IdentityBroker") => seed_broker(upstreams, docs, &doc["spec"])?,
            _ => {}
        }
    }
    Ok(())
}

/// Registers a broker's credentials with its emulator.
fn seed_broker(upstreams: &mut Upstreams, docs: &[Value], spec: &Value) -> DemoResult<()> {
    let client_credentials = |block: &Value| -> DemoResult<(&str, &str)> {
        let secret = block["credentialsSecretRef"]["name"].as_str().ok_or("broker without credentials")?;
        let id = string_data(docs, secret, "client-id").ok_or("broker credentials without client-id")?;
        let value = string_data(docs, secret, "client-secret").ok_or("broker credentials without client-secret")?;
        Ok((id, value))
    };
    let token = |block: &Value| -> DemoResult<&str> {
        let secret = block["apiTokenSecretRef"]["name"].as_str().ok_or("broker without a token Secret")?;
        Ok(string_data(docs, secret, "api-token").ok_or("broker token Secret without api-token")?)
    };
    if let Some(auth0) = spec.get("auth0") {
        let domain = auth0["domain"].as_str().ok_or("broker without domain")?;
        let (id, value) = client_credentials(auth0)?;
        let scopes = ["read:connections", "create:connections", "update:connections", "delete:connections"];
        upstreams.auth0(domain)?.add_m2m_client(id, value, &scopes);
    } else if let Some(cloudflare) = spec.get("cloudflare") {
        let account = cloudflare["accountId"].as_str().ok_or("the demo's Cloudflare broker uses an accountId")?;
        let emulator = upstreams.cloudflare()?;
        emulator.add_account(account);
        emulator.add_token(token(cloudflare)?, &[account]);
    } else if let Some(logto) = spec.get("logto") {
        let endpoint = url::Url::parse(logto["endpoint"].as_str().ok_or("broker without endpoint")?)?;
        let resource = logto["resource"].as_str().unwrap_or("https://default.logto.app/api");
        let (id, value) = client_credentials(logto)?;
        let host = endpoint.host_str().ok_or("endpoint without host")?;
        upstreams.logto(host, resource)?.add_m2m_app(id, value);
        // A self-hosted Logto: listed in --broker-hosts, as a platform team would.
        upstreams.allow_broker_host(host);
    } else if let Some(unified) = spec.get("unified") {
        let emulator = upstreams.unified()?;
        emulator.add_token(token(unified)?);
        // The one manual step in the Unified.to dashboard.
        emulator.activate_integration("microsoft_ad");
    }
    Ok(())
}

/// contoso-web's app registration lacks Auth0's callback: users would get AADSTS50011. The
/// condition names the URI; `azure.registration: Manage` adds it.
async fn fix_missing_redirect_uri(
    control_plane: &ControlPlane,
    client: &Client,
    upstreams: &Upstreams,
    connections: &Api<AzureAdConnection>,
    documents: &[Value],
) -> DemoResult<()> {
    step("contoso-web's app registration lacks Auth0's redirect URI: AzureAppConfigured says which, and Ready is False");
    wait_until(connections, MISSING_REDIRECT, |c| ready_reason(c) == Some("RedirectUriMissing")).await?;
    kubectl(control_plane, &["get", "aadc", MISSING_REDIRECT, "-n", NAMESPACE]).await?;
    let jsonpath = "jsonpath={.status.conditions[?(@.type==\"AzureAppConfigured\")].message}";
    kubectl(control_plane, &["get", "aadc", MISSING_REDIRECT, "-n", NAMESPACE, "-o", jsonpath]).await?;

    step("Granting the app Application.ReadWrite.OwnedBy on its own registration, and setting azure.registration: Manage");
    let doc = documents.iter().find(|d| d["kind"] == "AzureAdConnection" && d["metadata"]["name"] == MISSING_REDIRECT);
    let client_id = doc.and_then(|d| d["spec"]["azure"]["clientId"].as_str()).ok_or("contoso-web has no clientId")?;
    upstreams.azure.set_can_write_itself(TENANT_ID, client_id, true);
    let patch = json!({"spec": {"azure": {"registration": "Manage"}}});
    connections.patch(MISSING_REDIRECT, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    wait_until(connections, MISSING_REDIRECT, |c| ready_status(c) == Some("True")).await?;
    println!("    The registration's Web redirect URIs now: {}", upstreams.azure.redirect_uris(TENANT_ID, client_id).join(", "));
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), NAMESPACE);
    let added = events.list(&Default::default()).await?.items.into_iter().find(|e| e.reason.as_deref() == Some("RedirectUriAdded"));
    if let Some(event) = added {
        println!("    Event RedirectUriAdded: {}", event.message.unwrap_or_default());
    }
    Ok(())
}

/// Registers a connection's app as its broker's guide asks (redirect URI, delegated
/// permissions with admin consent), readable by the operator; contoso-web without its redirect
/// URI, for the walkthrough.
fn seed_registration(upstreams: &mut Upstreams, docs: &[Value], doc: &Value, client_id: &str) -> DemoResult<()> {
    use idp_bridge::{
        crd::{broker::UnifiedRegion, connection::AzureAdConnectionSpec},
        registration::{self, BrokerSide, Callback},
    };
    let spec: AzureAdConnectionSpec = serde_json::from_value(doc["spec"].clone())?;
    let broker = docs
        .iter()
        .find(|d| d["kind"] == "IdentityBroker" && d["metadata"]["name"] == spec.broker_ref.name)
        .ok_or("the connection's broker is not in the examples")?;
    let team = format!("{}.cloudflareaccess.com", idp_bridge_devenv::cloudflare::TEAM);
    let region: UnifiedRegion = serde_json::from_value(broker["spec"]["unified"]["region"].clone()).unwrap_or_default();
    let b = &broker["spec"];
    let side = if let Some(domain) = b["auth0"]["domain"].as_str() {
        BrokerSide::Auth0 { domain }
    } else if b.get("cloudflare").is_some() {
        BrokerSide::Cloudflare { team_domain: Some(&team) }
    } else if let Some(endpoint) = b["logto"]["endpoint"].as_str() {
        BrokerSide::Logto { endpoint, connector_id: spec.logto.as_ref().and_then(|l| l.connector_id.as_deref()) }
    } else {
        BrokerSide::Unified { region }
    };
    let azure = &upstreams.azure;
    if let Callback::Known(uri) = registration::callback(&spec, side)
        && doc["metadata"]["name"] != MISSING_REDIRECT
    {
        azure.set_redirect_uris(TENANT_ID, client_id, &[&uri]);
    }
    let permissions = registration::permissions(&spec);
    azure.request_graph_permissions(TENANT_ID, client_id, &permissions);
    azure.grant_admin_consent(TENANT_ID, client_id, &permissions);
    azure.set_directory_read_all(TENANT_ID, client_id, true);
    Ok(())
}

/// Sends the operator's logs to a file, so the walkthrough stays readable.
fn init_logs(path: PathBuf) -> DemoResult<()> {
    let file = std::fs::File::create(path)?;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info,kube_runtime=warn,kube_client=warn"))
        .with_writer(std::sync::Mutex::new(file))
        .with_ansi(false)
        .init();
    Ok(())
}

async fn apply(client: &Client, doc: &Value) -> DemoResult<()> {
    let api_version = doc["apiVersion"].as_str().ok_or("document without apiVersion")?;
    let kind = doc["kind"].as_str().ok_or("document without kind")?;
    let name = doc["metadata"]["name"].as_str().ok_or("document without name")?;
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let plural = format!("{}s", kind.to_ascii_lowercase());
    let resource = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), &plural);
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), NAMESPACE, &resource);
    api.patch(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(doc)).await?;
    Ok(())
}

async fn put_secret(api: &Api<Secret>, name: &str, value: &str, expires_at: Option<&str>) -> DemoResult<()> {
    let annotations = expires_at.map_or_else(|| json!({}), |t| json!({ EXPIRES_AT_ANNOTATION: t }));
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "annotations": annotations}, "stringData": {"client-secret": value}});
    api.patch(name, &PatchParams::apply(&format!("{MANAGER}-rotation")).force(), &Patch::Apply(&secret)).await?;
    Ok(())
}

fn condition<'a>(c: &'a AzureAdConnection, type_: &str) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    c.status.as_ref().and_then(|s| conditions::find(&s.conditions, type_)).filter(|cond| cond.observed_generation == c.metadata.generation)
}

fn ready_status(c: &AzureAdConnection) -> Option<&str> {
    condition(c, conditions::READY).map(|c| c.status.as_str())
}

fn ready_reason(c: &AzureAdConnection) -> Option<&str> {
    condition(c, conditions::READY).map(|c| c.reason.as_str())
}

fn synced(c: &AzureAdConnection) -> bool {
    let status = c.status.as_ref();
    let fingerprint = status.and_then(|s| s.secret.as_ref()).and_then(|s| s.fingerprint.as_ref());
    fingerprint.is_some() && fingerprint == status.and_then(|s| s.broker.as_ref()).and_then(|b| b.synced_fingerprint.as_ref())
}

async fn wait_until(api: &Api<AzureAdConnection>, name: &str, check: impl Fn(&AzureAdConnection) -> bool) -> DemoResult<AzureAdConnection> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(conn) = api.get_opt(name).await?
            && check(&conn)
        {
            return Ok(conn);
        }
        if Instant::now() > deadline {
            return Err(format!("{name} did not reach the expected state within 60s").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the real kubectl against the control plane and prints the command and its output.
async fn kubectl(control_plane: &ControlPlane, args: &[&str]) -> DemoResult<()> {
    println!("\n    $ kubectl {}", args.join(" "));
    let output = tokio::process::Command::from(control_plane.kubectl()).args(args).output().await?;
    if !output.status.success() {
        return Err(format!("kubectl {} failed ({}): {}", args.join(" "), output.status, String::from_utf8_lossy(&output.stderr)).into());
    }
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        println!("    {line}");
    }
    Ok(())
}
