//! AzureAdClientSecret on the real control plane: one rotation feeding an Auth0 and a Cloudflare
//! connection through one Secret, with Entra ID's replication delay, while every broker holds a
//! secret Entra ID accepts at every moment (checked continuously, and by the emulator at each
//! removePassword); kills at step boundaries; a password whose value was lost; the revoke;
//! conflicts; the tenant's policies and a missing permission. No secret value ever shows up in
//! logs, events, status or metrics.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::common::e2e::{CLIENT_ID, Env, TENANT_ID};
use idp_bridge::{
    azure::passwords::{GraphCaller, PasswordClient},
    crd::{
        AzureAdClientSecret,
        client_secret::{AzureAdClientSecretStatus, CredentialOrigin},
        conditions,
        connection::AzureCloud,
    },
    secret::SecretValue,
    upstream::Upstream,
};
use idp_bridge_devenv::{
    auth0::Auth0Emulator,
    azure::{AzureEmulator, PasswordPolicy},
    cloudflare::CloudflareEmulator,
};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::json;

const SECRET: &str = "contoso-entra";
const NAME: &str = "contoso";

/// An environment with the application owning itself (Application.ReadWrite.OwnedBy), its
/// bootstrap password in the Secret, an Auth0 and a Cloudflare connection reading the Secret, and
/// an AzureAdClientSecret for it (`spec` merged into the defaults below).
struct Rig {
    env: Env,
    cf: CloudflareEmulator,
    bootstrap: String,
    bootstrap_key: String,
    violations: Arc<Mutex<Vec<String>>>,
}

async fn rig(prefix: &str, replication: SignedDuration, spec: serde_json::Value) -> Rig {
    let mut env = Env::without_operator(prefix).await;
    let cf = env.cloudflare_broker("cloudflare").await;
    let bootstrap = env.canary("bootstrap");
    let azure = &env.upstreams.azure;
    azure.set_graph_write_owned_by(TENANT_ID, CLIENT_ID, true);
    azure.add_owner(TENANT_ID, CLIENT_ID, CLIENT_ID);
    azure.set_password_policy(PasswordPolicy { replication_delay: replication, ..Default::default() });
    let bootstrap_key = azure.add_secret(TENANT_ID, CLIENT_ID, &bootstrap, Timestamp::now() + SignedDuration::from_hours(24 * 30));
    env.put_secret(SECRET, &[("client-secret", &bootstrap)], &[]).await;
    let violations = Arc::new(Mutex::new(Vec::new()));
    let mut rig = Rig { env, cf, bootstrap, bootstrap_key, violations };
    rig.watch_removals();
    rig.env.start_operator_with(|c| c.leader_election = None).await;
    rig.env.connect("web", SECRET, json!({})).await;
    rig.env.connect_to("access", "cloudflare", json!({"cloudflare": {"name": "Contoso"}}), SECRET, json!({})).await;
    let mut body = json!({
        "azure": {"tenant": crate::common::e2e::TENANT_DOMAIN, "clientId": CLIENT_ID},
        "secretName": SECRET,
        "lifetime": "2h",
        "renewBefore": "1h",
        "overlap": "2s",
        "propagationTimeout": "2m",
    });
    merge(&mut body, spec);
    rig.env.apply("AzureAdClientSecret", NAME, json!({"spec": body})).await;
    rig
}

/// [`rig`], once the bootstrap password is adopted and both connections are Ready.
async fn adopted_rig(prefix: &str, replication: SignedDuration, spec: serde_json::Value) -> Rig {
    let rig = rig(prefix, replication, spec).await;
    rig.wait_adopted().await;
    rig.env.wait_ready("web").await;
    rig.env.wait_ready("access").await;
    rig
}

fn merge(target: &mut serde_json::Value, extra: serde_json::Value) {
    if let (Some(t), serde_json::Value::Object(e)) = (target.as_object_mut(), extra) {
        for (k, v) in e {
            t.insert(k, v);
        }
    }
}

/// The client secret each broker holds now (None before its first sync).
fn held(auth0: &Auth0Emulator, cf: &CloudflareEmulator) -> Vec<(&'static str, Option<String>)> {
    let auth0_secret = auth0.connection_by_name("web").and_then(|c| c["options"]["client_secret"].as_str().map(str::to_owned));
    let cf_id = cf.provider_by_name("Contoso").and_then(|p| p["id"].as_str().map(str::to_owned));
    vec![("auth0", auth0_secret), ("cloudflare", cf_id.and_then(|id| cf.client_secret(&id)))]
}

impl Rig {
    /// The emulator's check at every removePassword: each broker still holds a secret Entra ID
    /// accepts once the password is gone.
    fn watch_removals(&self) {
        let (auth0, cf, violations) = (self.env.auth0.clone(), self.cf.clone(), self.violations.clone());
        self.env.upstreams.azure.on_remove_password(move |removed| {
            for (broker, secret) in held(&auth0, &cf) {
                if let Some(secret) = secret
                    && !removed.remaining.contains(&secret)
                {
                    violations.lock().unwrap().push(format!("removing {} left {broker} with a secret Entra ID refuses", removed.key_id));
                }
            }
        });
    }

    /// Checks every 50 ms, until the returned guard is dropped, that each broker holds a secret
    /// Entra ID accepts.
    fn watch_brokers(&self) -> tokio::task::JoinHandle<()> {
        let (auth0, cf, azure, violations) =
            (self.env.auth0.clone(), self.cf.clone(), self.env.upstreams.azure.clone(), self.violations.clone());
        tokio::spawn(async move {
            loop {
                for (broker, secret) in held(&auth0, &cf) {
                    if let Some(secret) = secret
                        && !azure.accepts(TENANT_ID, CLIENT_ID, &secret)
                    {
                        violations.lock().unwrap().push(format!("{broker} held a secret Entra ID refuses"));
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    }

    fn api(&self) -> Api<AzureAdClientSecret> {
        Api::namespaced(self.env.client.clone(), &self.env.ns)
    }

    async fn status(&self) -> AzureAdClientSecretStatus {
        self.api().get(NAME).await.expect("reading the AzureAdClientSecret").status.unwrap_or_default()
    }

    async fn wait(&self, what: &str, timeout: Duration, check: impl Fn(&AzureAdClientSecretStatus) -> bool) -> AzureAdClientSecretStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status().await;
            if check(&status) {
                return status;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; last status: {status:#?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_adopted(&self) -> AzureAdClientSecretStatus {
        let status = self.wait("the bootstrap password adopted", Duration::from_secs(40), |s| ready(s) && s.current.is_some()).await;
        assert_eq!(status.current.as_ref().unwrap().key_id, self.bootstrap_key);
        assert_eq!(status.current.as_ref().unwrap().origin, CredentialOrigin::Bootstrap);
        status
    }

    async fn annotate(&self, key: &str) {
        let patch = json!({"metadata": {"annotations": {key: Timestamp::now().to_string()}}});
        self.api().patch(NAME, &PatchParams::default(), &Patch::Merge(&patch)).await.expect("annotating");
    }

    async fn secret_value(&self) -> Option<String> {
        let secret = Api::<Secret>::namespaced(self.env.client.clone(), &self.env.ns).get(SECRET).await.unwrap();
        secret.data.and_then(|d| d.get("client-secret").cloned()).map(|b| String::from_utf8(b.0).unwrap())
    }

    /// A finished cycle: a password of ours is current, nothing pending, the previous one gone.
    async fn wait_rotated(&self, timeout: Duration) -> AzureAdClientSecretStatus {
        self.wait("a finished rotation", timeout, |s| {
            s.pending.is_none() && s.previous.is_none() && s.current.as_ref().is_some_and(|c| c.origin == CredentialOrigin::Issued)
        })
        .await
    }

    /// After a cycle: the application holds exactly the current password (the bootstrap one and
    /// every intermediate one removed), both brokers hold its value, and Entra ID accepts it.
    async fn assert_converged(&mut self, status: &AzureAdClientSecretStatus) {
        let current = status.current.as_ref().unwrap();
        let passwords = self.env.upstreams.azure.passwords(TENANT_ID, CLIENT_ID);
        let keys: Vec<&str> = passwords.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(keys, vec![current.key_id.as_str()], "no password leaked in Entra ID: {passwords:?}");
        let value = self.secret_value().await.expect("the Secret holds the new password");
        assert_ne!(value, self.bootstrap);
        self.env.add_canary(&value);
        assert!(self.env.upstreams.azure.accepts(TENANT_ID, CLIENT_ID, &value));
        let deadline = Instant::now() + Duration::from_secs(40);
        while held(&self.env.auth0, &self.cf).iter().any(|(_, s)| s.as_deref() != Some(value.as_str())) {
            assert!(
                Instant::now() < deadline,
                "the brokers did not follow: {:?}",
                held(&self.env.auth0, &self.cf).iter().map(|(b, s)| (b, s.is_some())).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let violations = self.violations.lock().unwrap().clone();
        assert!(violations.is_empty(), "{violations:?}");
        self.env.assert_no_canary_leaks().await;
    }
}

fn ready(status: &AzureAdClientSecretStatus) -> bool {
    conditions::find(&status.conditions, conditions::READY).is_some_and(|c| c.status == "True")
}

fn reason(status: &AzureAdClientSecretStatus, type_: &str) -> String {
    conditions::find(&status.conditions, type_).map(|c| c.reason.clone()).unwrap_or_default()
}

/// Which step a status stands at, for the timeline.
fn stage(status: &AzureAdClientSecretStatus) -> &'static str {
    match (&status.pending, &status.previous) {
        (Some(p), _) if p.proven_at.is_some() => "proven",
        (Some(p), _) if p.key_id.is_some() => "created and staged",
        (Some(_), _) => "intent recorded",
        (None, Some(_)) => "promoted (previous kept)",
        (None, None) if status.last_rotation_time.is_some() => "previous removed",
        (None, None) => "idle",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_feeds_auth0_and_cloudflare_with_a_secret_entra_accepts_at_every_moment() {
    let mut rig = adopted_rig("aadcs-cycle", SignedDuration::from_secs(30), json!({})).await;
    let monitor = rig.watch_brokers();
    let started = Instant::now();
    rig.annotate("idpbridge.io/renew").await;
    let mut timeline = vec![(Duration::ZERO, "renewal requested (idpbridge.io/renew)")];
    let mut saw_awaiting_replication = false;
    let deadline = started + Duration::from_secs(150);
    let status = loop {
        let status = rig.status().await;
        saw_awaiting_replication |= reason(&status, conditions::ISSUING) == "AwaitingReplication";
        let now = stage(&status);
        if timeline.last().map(|(_, s)| *s) != Some(now) {
            timeline.push((started.elapsed(), now));
        }
        if now == "previous removed" {
            break status;
        }
        assert!(Instant::now() < deadline, "no finished rotation after 150 s; timeline {timeline:?}; status {status:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    monitor.abort();
    let violations = rig.violations.lock().unwrap().clone();
    assert!(violations.is_empty(), "{violations:?}");
    for (at, what) in &timeline {
        eprintln!("rotation timeline: {:>6.1}s {what}", at.as_secs_f64());
    }
    assert!(saw_awaiting_replication, "the new password was proven only after Entra ID's replication delay");
    let proven = timeline.iter().find(|(_, s)| *s == "proven").expect("a proof").0;
    assert!(proven >= Duration::from_secs(29), "proven only once replicated: {proven:?}");
    assert!(
        !rig.env.upstreams.azure.passwords(TENANT_ID, CLIENT_ID).iter().any(|p| p.0 == rig.bootstrap_key),
        "the bootstrap password was removed"
    );
    let consumers = status.consumers.clone().unwrap();
    assert_eq!((consumers.total, consumers.synced), (2, 2));
    let renewal = status.current.as_ref().unwrap().renewal_time.clone().unwrap().0;
    assert!(renewal > Timestamp::now() + SignedDuration::from_mins(50), "the next renewal is an hour before the new expiry");
    rig.assert_converged(&status).await;
    for reason in ["Renewing", "Staged", "Promoted", "RemovedPrevious"] {
        assert!(!rig.env.events_with_reason(NAME, reason).await.is_empty(), "a {reason} event");
    }
    let (_, metrics) = rig.env.http_get("/metrics").await;
    assert!(metrics.contains("idpbridge_client_secret_rotations_total{result=\"promoted\"} 1"), "{metrics}");
    let series = format!("idpbridge_client_secret_renewal_timestamp_seconds{{namespace=\"{}\",name=\"{NAME}\"}}", rig.env.ns);
    assert!(metrics.contains(&series), "{metrics}");
    // Deleting the resource leaves the Secret and the password its consumers use, and its series goes.
    rig.api().delete(NAME, &Default::default()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while rig.env.http_get("/metrics").await.1.contains(&series) {
        assert!(Instant::now() < deadline, "the deleted resource's series stayed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(rig.secret_value().await.is_some(), "the Secret stays");
    let current = status.current.as_ref().unwrap().key_id.clone();
    assert!(rig.env.upstreams.azure.passwords(TENANT_ID, CLIENT_ID).iter().any(|p| p.0 == current), "its password stays");
}

/// The operator is killed (its task aborted mid-flight) after every status change of the cycle
/// and started again; it converges with no password leaked and no consumer broken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_after_every_step_converges() {
    let mut rig = adopted_rig("aadcs-kill", SignedDuration::from_secs(3), json!({})).await;
    let monitor = rig.watch_brokers();
    rig.annotate("idpbridge.io/renew").await;
    let mut kills = Vec::new();
    let mut last = stage(&rig.status().await);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = rig.status().await;
        let now = stage(&status);
        if now == "previous removed" {
            break;
        }
        if now != last {
            rig.env.kill_operator();
            kills.push(now);
            rig.env.start_operator_with(|c| c.leader_election = None).await;
            last = now;
        }
        assert!(Instant::now() < deadline, "no convergence; killed after {kills:?}; status {status:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    monitor.abort();
    eprintln!("killed after: {kills:?}");
    assert!(kills.len() >= 3, "killed at several step boundaries: {kills:?}");
    let status = rig.wait_rotated(Duration::from_secs(10)).await;
    rig.assert_converged(&status).await;
}

/// A password created but never stored (the operator died between addPassword and the Secret
/// write) is found by its marker, removed, and the cycle starts again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_whose_value_was_lost_is_removed_and_the_cycle_restarts() {
    let mut rig = rig("aadcs-lost", SignedDuration::from_secs(1), json!({})).await;
    rig.wait_adopted().await;
    rig.env.stop_operator().await;
    // What the dead operator left: the intent in status, and the password it created in Entra ID.
    let marker = "deadbeefdeadbeef";
    let upstream = Upstream::new(rig.env.upstreams.overrides(), Some(rig.env.upstreams.ca_path()), Duration::from_secs(5)).unwrap();
    let client = PasswordClient::new(upstream);
    let own = SecretValue::new(rig.bootstrap.clone());
    let caller = GraphCaller { cloud: AzureCloud::AzurePublic, tenant: TENANT_ID, client_id: CLIENT_ID, secret: &own, fingerprint: "fp" };
    let display_name = format!("idp-bridge:{}/{NAME}:{marker}", rig.env.ns);
    let lost = client.add(&caller, CLIENT_ID, &display_name, Timestamp::now() + SignedDuration::from_hours(2)).await.unwrap();
    rig.env.add_canary(lost.secret.expose());
    let mut status = rig.status().await;
    status.pending = Some(serde_json::from_value(json!({"marker": marker, "requestedAt": Timestamp::now().to_string()})).unwrap());
    let patch = json!({"apiVersion": "idpbridge.io/v1alpha1", "kind": "AzureAdClientSecret", "status": status});
    rig.api().patch_status(NAME, &PatchParams::apply("idp-bridge").force(), &Patch::Apply(&patch)).await.unwrap();
    rig.env.start_operator_with(|c| c.leader_election = None).await;
    let status = rig.wait_rotated(Duration::from_secs(60)).await;
    assert_ne!(status.current.as_ref().unwrap().key_id, lost.key_id);
    assert!(!rig.env.events_with_reason(NAME, "Restarted").await.is_empty());
    rig.assert_converged(&status).await;
}

/// A revoke renews at once and removes the previous password as soon as both consumers synced,
/// without waiting for the (hour-long) overlap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_skips_the_overlap_but_not_the_consumers() {
    let mut rig = adopted_rig("aadcs-revoke", SignedDuration::from_secs(1), json!({"overlap": "50m"})).await;
    let monitor = rig.watch_brokers();
    // What `idp-bridge rotate NAMESPACE/NAME --revoke` runs.
    let line = idp_bridge::rotation::request::rotate(rig.env.client.clone(), &format!("{}/{NAME}", rig.env.ns), true).await.unwrap();
    assert!(line.contains("idpbridge.io/revoke="), "{line}");
    let status = rig.wait_rotated(Duration::from_secs(60)).await;
    monitor.abort();
    rig.assert_converged(&status).await;
    // The renew annotation keeps the overlap: the previous password stays.
    rig.annotate("idpbridge.io/renew").await;
    let status = rig
        .wait("a renewal waiting out its overlap", Duration::from_secs(60), |s| {
            s.pending.is_none() && s.previous.is_some() && reason(s, conditions::ISSUING) == "AwaitingConsumers"
        })
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(rig.status().await.previous, status.previous, "kept through the overlap");
}

/// A person puts another of the application's passwords into `client-secret` (one made in the
/// portal, say): it becomes the current one, the consumers follow it, and the replaced bootstrap
/// password is removed only once they have and the overlap has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_put_in_the_secret_by_hand_is_adopted_and_the_replaced_one_removed() {
    let mut rig = adopted_rig("aadcs-hand", SignedDuration::from_secs(1), json!({})).await;
    let monitor = rig.watch_brokers();
    // Its first three characters (the hint Entra ID keeps) differ from the bootstrap's.
    let by_hand = format!("Hnd{}", rig.env.canary("by-hand"));
    let expires = Timestamp::now() + SignedDuration::from_hours(24 * 60);
    let hand_key = rig.env.upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, &by_hand, expires);
    rig.env.put_secret(SECRET, &[("client-secret", &by_hand)], &[]).await;
    let status = rig
        .wait("the password put by hand adopted and the replaced one removed", Duration::from_secs(60), |s| {
            s.pending.is_none() && s.previous.is_none() && s.current.as_ref().is_some_and(|c| c.key_id == hand_key)
        })
        .await;
    monitor.abort();
    assert_eq!(status.current.as_ref().unwrap().origin, CredentialOrigin::Bootstrap, "handed over, as the bootstrap one was");
    assert!(ready(&status), "{status:#?}");
    rig.assert_converged(&status).await;
}

/// A second AzureAdClientSecret for the same application, and one for a Secret another owns,
/// get a conflict and write nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_write_nothing() {
    let rig = rig("aadcs-conflict", SignedDuration::from_secs(1), json!({})).await;
    rig.wait_adopted().await;
    let spec = |secret: &str| json!({"spec": {"azure": {"tenant": TENANT_ID, "clientId": CLIENT_ID}, "secretName": secret, "lifetime": "2h", "renewBefore": "1h", "overlap": "2s"}});
    rig.env.apply("AzureAdClientSecret", "second", spec("other-secret")).await;
    let second = wait_named(&rig, "second", |s| reason(s, conditions::READY) == "ApplicationConflict").await;
    assert!(conditions::find(&second.conditions, conditions::READY).unwrap().message.contains(NAME));
    let secrets = Api::<Secret>::namespaced(rig.env.client.clone(), &rig.env.ns);
    assert!(secrets.get_opt("other-secret").await.unwrap().is_none(), "nothing written");
    rig.env.put_secret("owned", &[("client-secret", "x")], &[("idpbridge.io/client-secret-owner", "someone-else")]).await;
    let other_app = "0b9a8c7d-6e5f-4a3b-2c1d-0e9f8a7b6c5d";
    let body = json!({"spec": {"azure": {"tenant": TENANT_ID, "clientId": other_app}, "secretName": "owned", "lifetime": "2h", "renewBefore": "1h", "overlap": "2s"}});
    rig.env.apply("AzureAdClientSecret", "third", body).await;
    wait_named(&rig, "third", |s| reason(s, conditions::READY) == "SecretConflict").await;
    assert_eq!(rig.env.upstreams.azure.password_writes(), 0, "no addPassword or removePassword");
}

async fn wait_named(rig: &Rig, name: &str, check: impl Fn(&AzureAdClientSecretStatus) -> bool) -> AzureAdClientSecretStatus {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let status = rig.api().get(name).await.unwrap().status.unwrap_or_default();
        if check(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "timed out on {name}: {status:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The tenant's lifetime cap and a missing permission each get their reason, and the current
/// password keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_and_permission_errors_have_their_reasons() {
    let rig = rig("aadcs-policy", SignedDuration::from_secs(1), json!({})).await;
    rig.wait_adopted().await;
    let azure: AzureEmulator = rig.env.upstreams.azure.clone();
    azure.set_password_policy(PasswordPolicy { max_lifetime: Some(SignedDuration::from_hours(1)), ..Default::default() });
    rig.annotate("idpbridge.io/renew").await;
    let status =
        rig.wait("the lifetime policy", Duration::from_secs(40), |s| reason(s, conditions::ISSUING) == "PasswordLifetimePolicy").await;
    assert!(ready(&status), "the current password still works");
    assert_eq!(azure.passwords(TENANT_ID, CLIENT_ID).len(), 1, "nothing created");
    azure.set_password_policy(PasswordPolicy::default());
    azure.set_graph_write_owned_by(TENANT_ID, CLIENT_ID, false);
    azure.set_graph_read_all(TENANT_ID, CLIENT_ID, true);
    // A spec change is a change: the operator looks again at once.
    rig.env.apply("AzureAdClientSecret", NAME, json!({"spec": {"azure": {"tenant": crate::common::e2e::TENANT_DOMAIN, "clientId": CLIENT_ID}, "secretName": SECRET, "lifetime": "3h", "renewBefore": "1h", "overlap": "2s"}})).await;
    let status =
        rig.wait("the missing permission", Duration::from_secs(40), |s| reason(s, conditions::ISSUING) == "GraphPermissionMissing").await;
    let message = conditions::find(&status.conditions, conditions::ISSUING).unwrap().message.clone();
    assert!(message.contains("Application.ReadWrite.OwnedBy"), "{message}");
    rig.env.assert_no_canary_leaks().await;
}

/// With a rotator application the rotated one needs no bootstrap secret: the first password is
/// created at once and its connection comes up. A password Entra ID does not accept within
/// `propagationTimeout` is removed again (`ProofTimedOut`), and the current one keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotator_issues_the_first_password_and_a_password_that_never_replicates_is_removed() {
    const ROTATOR: &str = "0d1c2b3a-4f5e-4d6c-8b7a-9f8e7d6c5b4a";
    let mut env = Env::without_operator("aadcs-rotator").await;
    let rotator_secret = env.canary("rotator");
    let azure = env.upstreams.azure.clone();
    azure.add_app(TENANT_ID, ROTATOR);
    azure.add_secret(TENANT_ID, ROTATOR, &rotator_secret, Timestamp::now() + SignedDuration::from_hours(24 * 30));
    azure.set_graph_write_owned_by(TENANT_ID, ROTATOR, true);
    azure.add_owner(TENANT_ID, CLIENT_ID, ROTATOR);
    azure.set_graph_read_all(TENANT_ID, CLIENT_ID, true);
    env.put_secret("rotator-creds", &[("client-secret", &rotator_secret)], &[]).await;
    env.start_operator_with(|c| c.leader_election = None).await;
    env.connect("web", SECRET, json!({})).await;
    let spec = |timeout: &str| {
        json!({"spec": {
            "azure": {"tenant": TENANT_ID, "clientId": CLIENT_ID},
            "secretName": SECRET, "lifetime": "2h", "renewBefore": "1h", "overlap": "2s", "propagationTimeout": timeout,
            "graphAuth": {"mode": "Rotator", "rotator": {"clientId": ROTATOR, "clientSecretRef": {"name": "rotator-creds"}}},
        }})
    };
    env.apply("AzureAdClientSecret", NAME, spec("2m")).await;
    env.wait_ready("web").await;
    let api: Api<AzureAdClientSecret> = Api::namespaced(env.client.clone(), &env.ns);
    let status = api.get(NAME).await.unwrap().status.unwrap();
    let first = status.current.clone().expect("the first password");
    assert_eq!(first.origin, CredentialOrigin::Issued);
    assert_eq!(azure.passwords(TENANT_ID, CLIENT_ID).len(), 1);
    assert!(azure.passwords(TENANT_ID, ROTATOR).len() == 1, "the rotator's own passwords are not touched");

    azure.set_password_policy(PasswordPolicy { replication_delay: SignedDuration::from_secs(600), ..Default::default() });
    env.apply("AzureAdClientSecret", NAME, spec("10s")).await;
    let patch = json!({"metadata": {"annotations": {"idpbridge.io/renew": "now"}}});
    api.patch(NAME, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        let status = api.get(NAME).await.unwrap().status.unwrap_or_default();
        if reason(&status, conditions::ISSUING) == "ProofTimedOut" {
            break status;
        }
        if Instant::now() >= deadline {
            let logs = String::from_utf8_lossy(&crate::common::e2e::captured_logs().lock().unwrap()).into_owned();
            let steps: Vec<&str> =
                logs.lines().filter(|l| l.contains(&env.ns) && (l.contains("rotation step") || l.contains("failed"))).collect();
            panic!("no ProofTimedOut (first password {}): {status:#?}\nsteps:\n{}", first.key_id, steps.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(ready(&status), "the current password still works");
    assert_eq!(status.current.as_ref().unwrap().key_id, first.key_id);
    assert!(status.pending.is_none());
    assert!(status.retry_not_before.is_some(), "the next attempt waits");
    // It stays visible (the Secret write of the abandonment triggers more reconciles) and no
    // renewal starts again on its own meanwhile.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = api.get(NAME).await.unwrap().status.unwrap_or_default();
    assert_eq!(reason(&later, conditions::ISSUING), "ProofTimedOut", "{later:#?}");
    assert!(later.pending.is_none(), "{later:#?}");
    let keys: Vec<String> = azure.passwords(TENANT_ID, CLIENT_ID).into_iter().map(|p| p.0).collect();
    assert_eq!(keys, vec![first.key_id.clone()], "the password that never replicated was removed");
    let (_, metrics) = env.http_get("/metrics").await;
    assert!(metrics.contains("idpbridge_client_secret_rotations_total{result=\"abandoned\"} 1"), "{metrics}");
    let value = Api::<Secret>::namespaced(env.client.clone(), &env.ns).get(SECRET).await.unwrap().data.unwrap()["client-secret"].0.clone();
    env.add_canary(&String::from_utf8(value).unwrap());
    assert!(!env.events_with_reason(NAME, "ProofTimedOut").await.is_empty());
    env.assert_no_canary_leaks().await;
}
