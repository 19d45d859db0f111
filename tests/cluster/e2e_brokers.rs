//! The Auth0 scenario list, run for Cloudflare Access, Logto and Unified.to on the real control
//! plane: create, rotate (one write), a bad secret keeps the old one, drift corrected, rate
//! limiting reported, deletion under both policies with adoption in between; plus each broker's
//! own rules (Cloudflare SCIM, Logto's one-connector rule, Unified.to regions).

use std::time::Duration;

use crate::common::e2e::{CLIENT_ID, Env, TENANT_ID, condition, condition_is};
use idp_bridge::crd::conditions::*;
use k8s_openapi::api::core::v1::Secret;
use kube::api::DeleteParams;
use serde_json::{Value, json};

const LOGTO_HOST: &str = "logto.example.com";
const LOGTO_APP: &str = "logto-m2m-app";
const LOGTO_SECRET: &str = "logto-m2m-secret";
const UNIFIED_TOKEN: &str = "unified-workspace-token";

fn in_a_year() -> jiff::Timestamp {
    jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 365)
}

async fn settle() {
    tokio::time::sleep(Duration::from_secs(3)).await;
}

/// How the scenarios see one broker's emulator.
struct Broker {
    /// The connection's broker block.
    block: Value,
    /// The secret the broker holds for the connection's object, if the object exists.
    held: Box<dyn Fn() -> Option<String> + Send + Sync>,
    /// How many Azure AD objects the broker holds.
    objects: Box<dyn Fn() -> usize + Send + Sync>,
    writes: Box<dyn Fn() -> usize + Send + Sync>,
    /// A dashboard edit of a field the operator manages.
    drift: Box<dyn Fn() + Send + Sync>,
    /// Whether the drift is still there.
    drifted: Box<dyn Fn() -> bool + Send + Sync>,
    /// Makes the next request a 429; true if the wait is short enough to see recovery.
    rate_limit: Box<dyn Fn() -> bool + Send + Sync>,
}

async fn wait_until(what: &str, check: impl Fn() -> bool) {
    for _ in 0..300 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting until {what}");
}

async fn wait_gone(env: &Env, name: &str) {
    for _ in 0..300 {
        if env.connections().get_opt(name).await.unwrap().is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{name} was not deleted");
}

/// The shared scenario list, for the broker named "broker" in `env`.
async fn scenarios(env: &mut Env, broker: &Broker) {
    let first = env.canary("first");
    env.upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, &first, in_a_year());
    env.put_secret("web", &[("client-secret", &first)], &[]).await;
    env.connect_to("contoso", "broker", broker.block.clone(), "web", json!({})).await;

    // Created and Ready; the broker holds the secret.
    let conn = env.wait_ready("contoso").await;
    assert_eq!(conn.status.as_ref().unwrap().tenant_id.as_deref(), Some(TENANT_ID));
    assert_eq!((broker.held)().as_deref(), Some(first.as_str()));
    assert_eq!((broker.objects)(), 1);
    let writes = (broker.writes)();
    settle().await;
    assert_eq!((broker.writes)(), writes, "steady state writes nothing");

    // Rotation: one write.
    let second = env.canary("second");
    env.upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, &second, in_a_year());
    env.put_secret("web", &[("client-secret", &second)], &[]).await;
    wait_until("the broker holds the rotated secret", || (broker.held)().as_deref() == Some(second.as_str())).await;
    env.wait_ready("contoso").await;
    settle().await;
    assert_eq!((broker.writes)(), writes + 1, "a rotation is one write");

    // A wrong value is refused; the broker keeps the working one.
    let wrong = env.canary("wrong");
    env.put_secret("web", &[("client-secret", &wrong)], &[]).await;
    env.wait_condition("contoso", CREDENTIALS_VALID, "False", "InvalidSecret").await;
    assert_eq!((broker.held)().as_deref(), Some(second.as_str()));
    assert_eq!((broker.writes)(), writes + 1);
    env.put_secret("web", &[("client-secret", &second)], &[]).await;
    env.wait_ready("contoso").await;

    // Drift: a dashboard edit is corrected, with a Drifted event.
    (broker.drift)();
    env.poke("contoso").await;
    wait_until("the drift is corrected", || !(broker.drifted)()).await;
    assert!(!env.wait_events("contoso", "Drifted", 1).await.is_empty());

    // Orphan keeps the object; a new connection adopts it without a duplicate; Delete removes it.
    env.connections().delete("contoso", &DeleteParams::default()).await.unwrap();
    wait_gone(env, "contoso").await;
    assert_eq!((broker.objects)(), 1, "Orphan keeps the broker object");
    env.connect_to("contoso", "broker", broker.block.clone(), "web", json!({"deletionPolicy": "Delete"})).await;
    env.wait_ready("contoso").await;
    assert_eq!((broker.objects)(), 1, "adopted, not duplicated");
    env.connections().delete("contoso", &DeleteParams::default()).await.unwrap();
    wait_gone(env, "contoso").await;
    assert_eq!((broker.objects)(), 0, "Delete removes the broker object");

    // Rate limited: the status says so instead of failing repeatedly.
    env.connect_to("contoso", "broker", broker.block.clone(), "web", json!({"deletionPolicy": "Delete"})).await;
    env.wait_ready("contoso").await;
    let third = env.canary("third");
    env.upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, &third, in_a_year());
    let recovers = (broker.rate_limit)();
    env.put_secret("web", &[("client-secret", &third)], &[]).await;
    env.wait_condition("contoso", BROKER_SYNCED, "False", "BrokerRateLimited").await;
    if recovers {
        env.wait_ready("contoso").await;
        assert_eq!((broker.held)().as_deref(), Some(third.as_str()));
        env.connections().delete("contoso", &DeleteParams::default()).await.unwrap();
        wait_gone(env, "contoso").await;
        assert_eq!((broker.objects)(), 0);
    }
    env.assert_no_canary_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudflare_access() {
    let mut env = Env::without_operator("e2e-cf").await;
    let cf = env.cloudflare_broker("broker").await;
    env.start_operator().await;
    let id_of = {
        let cf = cf.clone();
        move || cf.provider_by_name("Contoso").and_then(|p| p["id"].as_str().map(str::to_owned))
    };
    let broker = Broker {
        block: json!({"cloudflare": {"name": "Contoso"}}),
        held: Box::new({
            let (cf, id_of) = (cf.clone(), id_of.clone());
            move || id_of().and_then(|id| cf.client_secret(&id))
        }),
        objects: Box::new({
            let cf = cf.clone();
            move || cf.providers().iter().filter(|p| p["type"] == "azureAD").count()
        }),
        writes: Box::new({
            let cf = cf.clone();
            move || cf.writes()
        }),
        drift: Box::new({
            let (cf, id_of) = (cf.clone(), id_of.clone());
            move || cf.edit_provider(&id_of().unwrap(), |p| p["config"]["support_groups"] = json!(true))
        }),
        drifted: Box::new({
            let (cf, id_of) = (cf.clone(), id_of.clone());
            move || cf.provider(&id_of().unwrap()).is_some_and(|p| p["config"]["support_groups"] == true)
        }),
        // Cloudflare blocks for 5 minutes after a 429: the status must say so, recovery is not awaited.
        rate_limit: Box::new({
            let cf = cf.clone();
            move || {
                cf.rate_limit_next(1);
                false
            }
        }),
    };
    let requests_before_block = cf.requests().len();
    scenarios(&mut env, &broker).await;
    assert!(cf.rate_limited() >= 1);
    // While blocked, the operator sends nothing more than the requests that got the 429.
    assert!(cf.requests().len() >= requests_before_block);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudflare_scim_secret_is_written_once() {
    let mut env = Env::without_operator("e2e-cf-scim").await;
    env.cloudflare_broker("broker").await;
    env.start_operator().await;
    let value = env.canary("value");
    env.upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, &value, in_a_year());
    env.put_secret("web", &[("client-secret", &value)], &[]).await;
    let block =
        json!({"cloudflare": {"name": "Contoso SCIM", "scim": {"enabled": true, "userDeprovision": true, "secretName": "contoso-scim"}}});
    env.connect_to("scim", "broker", block, "web", json!({})).await;
    env.wait_ready("scim").await;
    let secrets: kube::Api<Secret> = kube::Api::namespaced(env.client.clone(), &env.ns);
    let scim = secrets.get("contoso-scim").await.expect("the SCIM Secret exists");
    let data = scim.data.unwrap();
    let url = String::from_utf8(data["scim-base-url"].0.clone()).unwrap();
    assert!(url.starts_with("https://") && url.ends_with("/scim/v2"), "{url}");
    assert!(!data["scim-secret"].0.is_empty());
    let owner = &scim.metadata.owner_references.unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("AzureAdConnection", "scim"));
    assert_eq!(env.wait_events("scim", "ScimSecretStored", 1).await.len(), 1);
    // The SCIM token is never in logs, events or status.
    let token = String::from_utf8(data["scim-secret"].0.clone()).unwrap();
    let logs = String::from_utf8_lossy(&crate::common::e2e::captured_logs().lock().unwrap()).into_owned();
    assert!(!logs.contains(&token));
    let conn = serde_json::to_string(&env.connections().get("scim").await.unwrap()).unwrap();
    assert!(!conn.contains(&token));
    env.assert_no_canary_leaks().await;
}

fn logto_connector(logto: &idp_bridge_devenv::logto::LogtoEmulator) -> Option<Value> {
    logto.connectors().into_iter().find(|c| c["connectorId"] == "azuread-universal")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logto_microsoft_connector() {
    let mut env = Env::without_operator("e2e-logto").await;
    let logto = env.upstreams.logto(LOGTO_HOST, "https://default.logto.app/api").unwrap();
    // A self-hosted Logto: the platform team lists its host.
    env.upstreams.allow_broker_host(LOGTO_HOST);
    logto.add_m2m_app(LOGTO_APP, LOGTO_SECRET);
    env.put_secret("logto-m2m", &[("client-id", LOGTO_APP), ("client-secret", LOGTO_SECRET)], &[]).await;
    env.apply(
        "IdentityBroker",
        "broker",
        json!({"spec": {"logto": {"endpoint": format!("https://{LOGTO_HOST}"), "credentialsSecretRef": {"name": "logto-m2m"}}}}),
    )
    .await;
    env.start_operator().await;
    let broker = Broker {
        block: json!({"logto": {"prompts": ["select_account"]}}),
        held: Box::new({
            let logto = logto.clone();
            move || logto_connector(&logto).and_then(|c| c["config"]["clientSecret"].as_str().map(str::to_owned))
        }),
        objects: Box::new({
            let logto = logto.clone();
            move || logto.connectors().iter().filter(|c| c["connectorId"] == "azuread-universal").count()
        }),
        writes: Box::new({
            let logto = logto.clone();
            move || logto.writes()
        }),
        drift: Box::new({
            let logto = logto.clone();
            move || {
                let id = logto_connector(&logto).unwrap()["id"].as_str().unwrap().to_owned();
                logto.edit_connector(&id, |c| c["config"]["scopes"] = json!("Mail.Read"));
            }
        }),
        drifted: Box::new({
            let logto = logto.clone();
            move || logto_connector(&logto).is_some_and(|c| c["config"]["scopes"] == "Mail.Read")
        }),
        rate_limit: Box::new({
            let logto = logto.clone();
            move || {
                logto.rate_limit_next(1, 1);
                true
            }
        }),
    };
    scenarios(&mut env, &broker).await;

    // The derived settings: cloudInstance from the cloud, tenantId from the audience.
    let value = env.canary("value");
    env.upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, &value, in_a_year());
    env.put_secret("web", &[("client-secret", &value)], &[]).await;
    env.connect_to("first", "broker", json!({"logto": {"connectorId": "contosoazuread"}}), "web", json!({})).await;
    env.wait_ready("first").await;
    let connector = logto.connector("contosoazuread").expect("created with the fixed id");
    assert_eq!(connector["config"]["cloudInstance"], "https://login.microsoftonline.com");
    assert_eq!(connector["config"]["tenantId"], TENANT_ID);

    // Logto allows one Microsoft connector per tenant: a second connection gets a clear
    // condition and no loop of failing creates.
    let other_app = "00000000-1111-2222-3333-444444444444";
    env.upstreams.azure.add_app(TENANT_ID, other_app);
    let other = env.canary("other");
    env.upstreams.azure.add_secret(TENANT_ID, other_app, &other, in_a_year());
    env.put_secret("other", &[("client-secret", &other)], &[]).await;
    env.connect_to("second", "broker", json!({"logto": {}}), "other", json!({"azure": {"clientId": other_app}})).await;
    let conn = env.wait_condition("second", BROKER_SYNCED, "False", "BrokerConflict").await;
    assert!(condition(&conn, BROKER_SYNCED).message.contains("one"), "{}", condition(&conn, BROKER_SYNCED).message);
    let writes = logto.writes();
    settle().await;
    assert_eq!(logto.writes(), writes, "no retry loop of creates");
    assert!(condition_is(&env.connections().get("first").await.unwrap(), READY, "True", "Ready"));
    env.assert_no_canary_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unified_microsoft_ad_connection() {
    let mut env = Env::without_operator("e2e-unified").await;
    let unified = env.upstreams.unified().unwrap();
    unified.add_token(UNIFIED_TOKEN);
    // The one dashboard step: activating the microsoft_ad integration in the workspace.
    unified.activate_integration("microsoft_ad");
    env.put_secret("unified-token", &[("api-token", UNIFIED_TOKEN)], &[]).await;
    env.apply("IdentityBroker", "broker", json!({"spec": {"unified": {"region": "eu", "apiTokenSecretRef": {"name": "unified-token"}}}}))
        .await;
    env.start_operator().await;
    let ours = {
        let unified = unified.clone();
        move || {
            unified
                .connections()
                .into_iter()
                .find(|c| c["integration_type"] == "microsoft_ad")
                .and_then(|c| c["id"].as_str().map(str::to_owned))
        }
    };
    let broker = Broker {
        block: json!({"unified": {"externalXref": "contoso-entra", "permissions": ["auth_login"]}}),
        held: Box::new({
            let (unified, ours) = (unified.clone(), ours.clone());
            move || ours().and_then(|id| unified.client_secret(&id))
        }),
        objects: Box::new({
            let unified = unified.clone();
            move || unified.connections().iter().filter(|c| c["integration_type"] == "microsoft_ad").count()
        }),
        writes: Box::new({
            let unified = unified.clone();
            move || unified.writes()
        }),
        drift: Box::new({
            let (unified, ours) = (unified.clone(), ours.clone());
            move || unified.edit_connection(&ours().unwrap(), |c| c["permissions"] = json!(["auth_login", "hris_employee_read"]))
        }),
        drifted: Box::new({
            let (unified, ours) = (unified.clone(), ours.clone());
            move || unified.connection(&ours().unwrap()).is_some_and(|c| c["permissions"].as_array().is_some_and(|p| p.len() == 2))
        }),
        rate_limit: Box::new({
            let unified = unified.clone();
            move || {
                unified.rate_limit_next(1, 1);
                true
            }
        }),
    };
    scenarios(&mut env, &broker).await;
    assert!(unified.requests().iter().all(|(_, path)| path.starts_with("/unified/")));
}
