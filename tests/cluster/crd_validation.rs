//! The CRDs' schemas, defaults, CEL rules, status subresource and printer columns, checked on a
//! real kube-apiserver (see `idp_bridge_devenv::control_plane`).

use idp_bridge::crd::{AzureAdConnection, ClusterIdentityBroker, IdentityBroker};
use idp_bridge_devenv::control_plane::{FIELD_MANAGER, unique_name};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

const TENANT_ID: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";
const OBJECT_NAME: &str = "must be a Kubernetes object name";

fn dynamic_api<K: Resource<DynamicType = ()>>(client: &kube::Client, namespace: Option<&str>) -> Api<DynamicObject> {
    let resource = ApiResource::erase::<K>(&());
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    }
}

/// A minimal valid AzureAdConnection with an auth0 block.
fn connection(name: &str) -> Value {
    json!({
        "apiVersion": "idpbridge.io/v1alpha1",
        "kind": "AzureAdConnection",
        "metadata": {"name": name},
        "spec": {
            "brokerRef": {"name": "auth0-prod"},
            "azure": {
                "tenant": "contoso.onmicrosoft.com",
                "clientId": CLIENT_ID,
                "clientSecretRef": {"name": "contoso-azure"},
            },
            "auth0": {"name": "contoso-azure"},
        },
    })
}

fn broker(kind: &str, name: &str) -> Value {
    json!({
        "apiVersion": "idpbridge.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": {
            "auth0": {
                "domain": "acme.eu.auth0.com",
                "credentialsSecretRef": {"name": "auth0-m2m"},
            },
        },
    })
}

/// Sets the value at a JSON pointer, creating missing objects on the way.
fn set(doc: &mut Value, pointer: &str, value: Value) {
    let mut parts: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
    let last = parts.pop().expect("a non-empty pointer");
    let mut here = doc;
    for part in parts {
        here = here.as_object_mut().expect("an object on the path").entry(part).or_insert_with(|| json!({}));
    }
    here.as_object_mut().expect("an object at the end of the path").insert(last.to_owned(), value);
}

/// Removes the value at a JSON pointer.
fn remove(doc: &mut Value, pointer: &str) {
    let (parent, last) = pointer.rsplit_once('/').expect("a pointer with a parent");
    doc.pointer_mut(parent).and_then(Value::as_object_mut).expect("the parent exists").remove(last);
}

async fn create(api: &Api<DynamicObject>, manifest: &Value) -> Result<DynamicObject, kube::Error> {
    let object: DynamicObject = serde_json::from_value(manifest.clone()).expect("a manifest is an object");
    api.create(&PostParams::default(), &object).await
}

/// Asserts a 422 Invalid rejection whose message contains `expected`.
#[track_caller]
fn assert_rejected<T: std::fmt::Debug>(case: &str, result: Result<T, kube::Error>, expected: &str) {
    match result {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{case}: expected 422 Invalid, got {status:?}");
            assert!(status.message.contains(expected), "{case}: the rejection does not mention {expected:?}:\n{}", status.message);
        }
        other => panic!("{case}: expected a rejection mentioning {expected:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn valid_connection_is_accepted_and_defaulted() {
    let (client, ns) = crate::common::namespace("crd-valid").await;
    create(&dynamic_api::<AzureAdConnection>(&client, Some(&ns)), &connection("contoso")).await.expect("a valid connection is accepted");

    // Read back through the typed API: the stored object deserializes into the Rust type.
    let typed: Api<AzureAdConnection> = Api::namespaced(client, &ns);
    let stored = typed.get("contoso").await.expect("the connection can be read back");
    let raw = serde_json::to_value(&stored).unwrap();
    for (pointer, expected) in [
        ("/spec/validation/refreshInterval", json!("1h")),
        ("/spec/validation/mode", json!("ClientCredentials")),
        ("/spec/expiry/warnBefore", json!("720h")),
        ("/spec/expiry/source", json!("Auto")),
        ("/spec/deletionPolicy", json!("Orphan")),
        ("/spec/managementPolicy", json!("Full")),
        ("/spec/suspend", json!(false)),
        ("/spec/brokerRef/kind", json!("IdentityBroker")),
        ("/spec/azure/cloud", json!("AzurePublic")),
        ("/spec/azure/signInAudience", json!("SingleTenant")),
        ("/spec/azure/clientSecretRef/key", json!("client-secret")),
        ("/spec/auth0/userIdAttribute", json!("oid")),
        ("/spec/auth0/identityApi", json!("microsoft-identity-platform-v2.0")),
        ("/spec/auth0/extProfile", json!(true)),
    ] {
        assert_eq!(raw.pointer(pointer), Some(&expected), "default at {pointer}");
    }
    assert_eq!(stored.spec.refresh_interval(), std::time::Duration::from_secs(3600));
    assert_eq!(stored.spec.warn_before(), std::time::Duration::from_secs(720 * 3600));
}

/// What to change in the valid manifest.
enum Change {
    Set(&'static str, Value),
    Remove(&'static str),
}

#[tokio::test]
async fn invalid_connections_are_rejected_with_clear_messages() {
    use Change::{Remove, Set};
    let (client, ns) = crate::common::namespace("crd-invalid").await;
    let api = dynamic_api::<AzureAdConnection>(&client, Some(&ns));

    let tenant = "tenant must be a tenant ID (GUID) or a domain name";
    let refresh = "refreshInterval must be a duration such as 30m or 1h, at least 1m";
    let cases: Vec<(&str, Vec<Change>, &str)> = vec![
        ("tenant common", vec![Set("/spec/azure/tenant", json!("common"))], tenant),
        ("tenant with spaces", vec![Set("/spec/azure/tenant", json!("not a domain"))], tenant),
        ("truncated tenant GUID", vec![Set("/spec/azure/tenant", json!(&TENANT_ID[..35]))], tenant),
        (
            "clientId not a GUID",
            vec![Set("/spec/azure/clientId", json!("contoso-web-application-client-ids"))],
            "clientId must be the application (client) ID",
        ),
        ("clientId too short", vec![Set("/spec/azure/clientId", json!("12345"))], "clientId must be the application (client) ID"),
        ("no broker block", vec![Remove("/spec/auth0")], "exactly one broker block (auth0, cloudflare, logto or unified) must be set"),
        ("two broker blocks", vec![Set("/spec/cloudflare", json!({"name": "Contoso"}))], "exactly one broker block"),
        (
            "SCIM seat deprovisioning without user deprovisioning",
            vec![
                Remove("/spec/auth0"),
                Set("/spec/cloudflare", json!({"name": "C", "scim": {"enabled": true, "seatDeprovision": true, "secretName": "s"}})),
            ],
            "scim.seatDeprovision needs scim.userDeprovision",
        ),
        (
            "logto connectorId with capitals",
            vec![Remove("/spec/auth0"), Set("/spec/logto", json!({"connectorId": "Contoso"}))],
            "connectorId may hold lowercase letters and digits only",
        ),
        ("auth0 name with underscore", vec![Set("/spec/auth0/name", json!("contoso_azure"))], "name may hold letters, digits and hyphens"),
        ("refreshInterval below 1m", vec![Set("/spec/validation/refreshInterval", json!("10s"))], refresh),
        ("refreshInterval in days", vec![Set("/spec/validation/refreshInterval", json!("30d"))], refresh),
        (
            "warnBefore below 1h",
            vec![Set("/spec/expiry/warnBefore", json!("5m"))],
            "warnBefore must be a duration such as 720h (30 days), at least 1h",
        ),
        ("unknown cloud", vec![Set("/spec/azure/cloud", json!("AzureGermany"))], "Unsupported value: \"AzureGermany\""),
        ("unknown deletionPolicy", vec![Set("/spec/deletionPolicy", json!("Destroy"))], "Unsupported value: \"Destroy\""),
        (
            "multi-tenant audience with userIdAttribute oid",
            vec![Set("/spec/azure/signInAudience", json!("Common"))],
            "Auth0's multi-tenant (common) endpoint needs auth0.userIdAttribute: sub",
        ),
        ("unknown brokerRef kind", vec![Set("/spec/brokerRef/kind", json!("Foo"))], "Unsupported value: \"Foo\""),
        ("no clientSecretRef", vec![Remove("/spec/azure/clientSecretRef")], "spec.azure.clientSecretRef: Required value"),
        ("Secret name with a path", vec![Set("/spec/azure/clientSecretRef/name", json!("../kube-system/x"))], OBJECT_NAME),
        ("Secret name with capitals", vec![Set("/spec/azure/clientSecretRef/name", json!("Contoso"))], OBJECT_NAME),
        ("broker name with a slash", vec![Set("/spec/brokerRef/name", json!("auth0/prod"))], OBJECT_NAME),
        (
            "SCIM secretName with a path",
            vec![Remove("/spec/auth0"), Set("/spec/cloudflare", json!({"name": "C", "scim": {"enabled": true, "secretName": "a/../b"}}))],
            OBJECT_NAME,
        ),
    ];
    for (case, changes, expected) in cases {
        let mut manifest = connection(&unique_name("bad"));
        for change in changes {
            match change {
                Set(pointer, value) => set(&mut manifest, pointer, value),
                Remove(pointer) => remove(&mut manifest, pointer),
            }
        }
        assert_rejected(case, create(&api, &manifest).await, expected);
    }

    // The multi-tenant rule is satisfied by userIdAttribute: sub.
    let mut manifest = connection("multi-tenant");
    set(&mut manifest, "/spec/azure/signInAudience", json!("Organizations"));
    set(&mut manifest, "/spec/auth0/userIdAttribute", json!("sub"));
    create(&api, &manifest).await.expect("Organizations with userIdAttribute sub is accepted");
}

#[tokio::test]
async fn auth0_name_is_immutable_and_display_name_is_not() {
    let (client, ns) = crate::common::namespace("crd-immutable").await;
    let api = dynamic_api::<AzureAdConnection>(&client, Some(&ns));
    create(&api, &connection("contoso")).await.expect("created");

    let merge = |patch: Value| {
        let api = api.clone();
        async move { api.patch("contoso", &PatchParams::default(), &Patch::Merge(patch)).await }
    };
    assert_rejected("rename", merge(json!({"spec": {"auth0": {"name": "contoso-renamed"}}})).await, "auth0.name is immutable");

    let updated = merge(json!({"spec": {"auth0": {"displayName": "Contoso employees"}}})).await.expect("displayName can change");
    assert_eq!(updated.data.pointer("/spec/auth0/displayName"), Some(&json!("Contoso employees")));
    assert_eq!(updated.data.pointer("/spec/auth0/name"), Some(&json!("contoso-azure")));
}

/// A field rule does not run on an absent field, so the immutability of `connectorId` is checked
/// on its block: removing it, or removing it and then setting another, is refused.
#[tokio::test]
async fn logto_connector_id_cannot_be_changed_or_removed() {
    let (client, ns) = crate::common::namespace("crd-logto").await;
    let api = dynamic_api::<AzureAdConnection>(&client, Some(&ns));
    let mut manifest = connection("logto");
    remove(&mut manifest, "/spec/auth0");
    set(&mut manifest, "/spec/logto", json!({"connectorId": "contoso1"}));
    create(&api, &manifest).await.expect("created");
    let merge = |patch: Value| {
        let api = api.clone();
        async move { api.patch("logto", &PatchParams::default(), &Patch::Merge(patch)).await }
    };
    let immutable = "logto.connectorId is immutable";
    assert_rejected("change", merge(json!({"spec": {"logto": {"connectorId": "contoso2"}}})).await, immutable);
    assert_rejected("removal", merge(json!({"spec": {"logto": {"connectorId": null}}})).await, immutable);
    let unchanged = merge(json!({"spec": {"logto": {"scopes": "email"}}})).await.expect("other fields can change");
    assert_eq!(unchanged.data.pointer("/spec/logto/connectorId"), Some(&json!("contoso1")));

    // A connection created without one may still fix it later.
    let mut open = connection("logto-open");
    remove(&mut open, "/spec/auth0");
    set(&mut open, "/spec/logto", json!({}));
    create(&api, &open).await.expect("created without connectorId");
    api.patch("logto-open", &PatchParams::default(), &Patch::Merge(json!({"spec": {"logto": {"connectorId": "fixed1"}}})))
        .await
        .expect("a first connectorId is accepted");
}

#[tokio::test]
async fn brokers_are_validated() {
    let (client, ns) = crate::common::namespace("crd-brokers").await;
    let apis = [
        ("IdentityBroker", dynamic_api::<IdentityBroker>(&client, Some(&ns))),
        ("ClusterIdentityBroker", dynamic_api::<ClusterIdentityBroker>(&client, None)),
    ];
    for (kind, api) in &apis {
        let name = unique_name("broker");
        let created = create(api, &broker(kind, &name)).await.unwrap_or_else(|e| panic!("a valid {kind} is rejected: {e}"));
        assert_eq!(created.data.pointer("/spec/auth0/credentialsSecretRef/clientIdKey"), Some(&json!("client-id")));
        assert_eq!(created.data.pointer("/spec/auth0/credentialsSecretRef/clientSecretKey"), Some(&json!("client-secret")));

        let mut no_provider = broker(kind, &unique_name("broker"));
        remove(&mut no_provider, "/spec/auth0");
        assert_rejected(
            &format!("{kind} without a provider"),
            create(api, &no_provider).await,
            "exactly one broker type (auth0, cloudflare, logto or unified) must be set",
        );

        let mut two_providers = broker(kind, &unique_name("broker"));
        set(&mut two_providers, "/spec/unified", json!({"apiTokenSecretRef": {"name": "t"}}));
        assert_rejected(&format!("{kind} with two providers"), create(api, &two_providers).await, "exactly one broker type");

        let cloudflare = |body: Value| {
            let mut doc = broker(kind, &unique_name("broker"));
            remove(&mut doc, "/spec/auth0");
            set(&mut doc, "/spec/cloudflare", body);
            doc
        };
        let both = cloudflare(
            json!({"accountId": "0123456789abcdef0123456789abcdef", "zoneId": "0123456789abcdef0123456789abcdef", "apiTokenSecretRef": {"name": "t"}}),
        );
        assert_rejected(
            &format!("{kind} Cloudflare with account and zone"),
            create(api, &both).await,
            "set exactly one of accountId and zoneId",
        );
        let bad_id = cloudflare(json!({"accountId": "not-hex", "apiTokenSecretRef": {"name": "t"}}));
        assert_rejected(
            &format!("{kind} Cloudflare with a bad account id"),
            create(api, &bad_id).await,
            "accountId is 32 lowercase hex characters",
        );
        let good = create(api, &cloudflare(json!({"zoneId": "0123456789abcdef0123456789abcdef", "apiTokenSecretRef": {"name": "t"}})))
            .await
            .expect("a zone-level Cloudflare broker is accepted");
        assert_eq!(good.data.pointer("/spec/cloudflare/apiTokenSecretRef/key"), Some(&json!("api-token")));

        let mut logto = broker(kind, &unique_name("broker"));
        remove(&mut logto, "/spec/auth0");
        set(&mut logto, "/spec/logto", json!({"endpoint": "https://auth.example.com/api", "credentialsSecretRef": {"name": "m2m"}}));
        assert_rejected(&format!("{kind} Logto endpoint with a path"), create(api, &logto).await, "endpoint must be https://HOST[:PORT]");
        set(&mut logto, "/spec/logto/endpoint", json!("https://auth.example.com:8443"));
        let created = create(api, &logto).await.expect("a Logto broker is accepted");
        assert_eq!(created.data.pointer("/spec/logto/resource"), Some(&json!("https://default.logto.app/api")));

        let mut unified = broker(kind, &unique_name("broker"));
        remove(&mut unified, "/spec/auth0");
        set(&mut unified, "/spec/unified", json!({"region": "mars", "apiTokenSecretRef": {"name": "t"}}));
        assert_rejected(&format!("{kind} Unified.to in an unknown region"), create(api, &unified).await, "Unsupported value: \"mars\"");

        let mut url_domain = broker(kind, &unique_name("broker"));
        set(&mut url_domain, "/spec/auth0/domain", json!("https://x.auth0.com"));
        assert_rejected(&format!("{kind} with a URL as domain"), create(api, &url_domain).await, "domain must be a host name");

        let mut path_secret = broker(kind, &unique_name("broker"));
        set(&mut path_secret, "/spec/auth0/credentialsSecretRef/name", json!("../operator/key"));
        assert_rejected(&format!("{kind} with a path as Secret name"), create(api, &path_secret).await, OBJECT_NAME);

        let mut rate = broker(kind, &unique_name("broker"));
        set(&mut rate, "/spec/rateLimit", json!({"requestsPerSecond": 0}));
        assert_rejected(&format!("{kind} with a zero rate"), create(api, &rate).await, "spec.rateLimit.requestsPerSecond");
    }
}

/// Every property under `spec` must carry a description, so `kubectl explain` documents it.
#[test]
fn every_spec_property_has_a_description() {
    fn walk(schema: &Value, path: &str, missing: &mut Vec<String>) {
        if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
            for (name, property) in properties {
                let here = format!("{path}.{name}");
                let described = property.get("description").and_then(Value::as_str).is_some_and(|d| !d.trim().is_empty());
                if !described {
                    missing.push(here.clone());
                }
                walk(property, &here, missing);
            }
        }
        for key in ["items", "additionalProperties"] {
            if let Some(inner) = schema.get(key).filter(|v| v.is_object()) {
                walk(inner, &format!("{path}[]"), missing);
            }
        }
    }

    for crd in idp_bridge::crd::all() {
        let crd_name = crd.name_any();
        let value = serde_json::to_value(&crd).unwrap();
        let versions = value.pointer("/spec/versions").and_then(Value::as_array).expect("versions");
        for version in versions {
            let spec = version.pointer("/schema/openAPIV3Schema/properties/spec").unwrap_or_else(|| panic!("{crd_name} has a spec schema"));
            let mut missing = Vec::new();
            walk(spec, "spec", &mut missing);
            assert!(missing.is_empty(), "{crd_name}: properties without a description: {missing:#?}");
            let top = version.pointer("/schema/openAPIV3Schema/description").and_then(Value::as_str).unwrap_or("");
            assert!(!top.is_empty(), "{crd_name} has no top-level description");
        }
    }
}

#[tokio::test]
async fn status_subresource_and_printer_columns_work() {
    let (client, ns) = crate::common::namespace("crd-status").await;
    let api: Api<AzureAdConnection> = Api::namespaced(client.clone(), &ns);
    create(&dynamic_api::<AzureAdConnection>(&client, Some(&ns)), &connection("contoso")).await.expect("created");

    let status = json!({
        "apiVersion": "idpbridge.io/v1alpha1",
        "kind": "AzureAdConnection",
        "status": {
            "observedGeneration": 1,
            "tenantId": TENANT_ID,
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "Ready", "message": "pushed",
                 "lastTransitionTime": "2026-01-02T03:04:05Z", "observedGeneration": 1},
                {"type": "CredentialsValid", "status": "True", "reason": "Valid", "message": "token issued",
                 "lastTransitionTime": "2026-01-02T03:04:05Z", "observedGeneration": 1},
            ],
            "secret": {"expiresAt": "2027-01-02T03:04:05Z", "expirySource": "Graph", "fingerprint": "abc123"},
        },
    });
    let patched = api
        .patch_status("contoso", &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&status))
        .await
        .expect("status can be applied");
    let conditions = &patched.status.as_ref().expect("status was stored").conditions;
    assert_eq!(conditions.len(), 2);
    assert_eq!(conditions[0].type_, "Ready");
    assert_eq!(patched.metadata.generation, Some(1), "a status write does not bump the generation");

    // A second apply by the same manager that omits a condition removes it (listType=map keyed on type).
    let mut fewer = status.clone();
    fewer["status"]["conditions"].as_array_mut().unwrap().truncate(1);
    let patched = api.patch_status("contoso", &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&fewer)).await.unwrap();
    assert_eq!(patched.status.unwrap().conditions.len(), 1);

    // Status cannot be set through the main resource.
    let ignored = api.patch("contoso", &PatchParams::default(), &Patch::Merge(json!({"status": {"tenantId": "ignored"}}))).await.unwrap();
    assert_eq!(ignored.status.unwrap().tenant_id.as_deref(), Some(TENANT_ID));

    // The printer columns resolve: ask the server for a Table, as `kubectl get` does.
    let request = http::Request::get(format!("/apis/idpbridge.io/v1alpha1/namespaces/{ns}/azureadconnections/contoso"))
        .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
        .body(Vec::new())
        .unwrap();
    let table: Value = client.request(request).await.expect("a Table");
    let columns: Vec<&str> = table["columnDefinitions"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    let cells = table["rows"][0]["cells"].as_array().expect("one row");
    let cell = |name: &str| &cells[columns.iter().position(|c| *c == name).unwrap_or_else(|| panic!("column {name} in {columns:?}"))];
    assert_eq!(cell("Name"), "contoso");
    assert_eq!(cell("Broker"), "auth0-prod");
    assert_eq!(cell("Tenant"), TENANT_ID);
    assert_eq!(cell("Ready"), "True");
    assert_eq!(cell("Reason"), "Ready");
    assert!(cell("Expires").as_str().is_some_and(|s| !s.is_empty()), "Expires: {:?}", cell("Expires"));
    assert!(cell("Age").as_str().is_some_and(|s| !s.is_empty()), "Age: {:?}", cell("Age"));
}

/// A minimal valid AzureAdClientSecret.
fn client_secret(name: &str) -> Value {
    json!({
        "apiVersion": "idpbridge.io/v1alpha1",
        "kind": "AzureAdClientSecret",
        "metadata": {"name": name},
        "spec": {"azure": {"tenant": "contoso.onmicrosoft.com", "clientId": CLIENT_ID}, "secretName": "contoso-azure"},
    })
}

#[tokio::test]
async fn client_secrets_are_defaulted_validated_and_keep_their_identity() {
    use Change::{Remove, Set};
    use idp_bridge::crd::AzureAdClientSecret;
    let (client, ns) = crate::common::namespace("crd-aadcs").await;
    let api = dynamic_api::<AzureAdClientSecret>(&client, Some(&ns));
    create(&api, &client_secret("contoso")).await.expect("a valid AzureAdClientSecret is accepted");
    let stored = Api::<AzureAdClientSecret>::namespaced(client.clone(), &ns).get("contoso").await.expect("read back typed");
    let raw = serde_json::to_value(&stored).unwrap();
    for (pointer, expected) in [
        ("/spec/lifetime", json!("2160h")),
        ("/spec/overlap", json!("24h")),
        ("/spec/propagationTimeout", json!("10m")),
        ("/spec/graphAuth/mode", json!("Self")),
        ("/spec/azure/cloud", json!("AzurePublic")),
    ] {
        assert_eq!(raw.pointer(pointer), Some(&expected), "default at {pointer}");
    }
    assert_eq!(stored.spec.renew_before(), std::time::Duration::from_secs(720 * 3600), "a third of the lifetime");

    let rotator = json!({"clientId": TENANT_ID, "clientSecretRef": {"name": "rotator"}});
    let cases: Vec<(&str, Vec<Change>, &str)> = vec![
        ("tenant common", vec![Set("/spec/azure/tenant", json!("common"))], "tenant must be a tenant ID (GUID) or a domain name"),
        (
            "clientId not a GUID",
            vec![Set("/spec/azure/clientId", json!("contoso-web-application-client-ids"))],
            "clientId must be the application",
        ),
        ("secretName with a path", vec![Set("/spec/secretName", json!("../x"))], OBJECT_NAME),
        ("no secretName", vec![Remove("/spec/secretName")], "spec.secretName: Required value"),
        ("lifetime below 2h", vec![Set("/spec/lifetime", json!("1h"))], "lifetime must be a duration such as 2160h"),
        ("lifetime in days", vec![Set("/spec/lifetime", json!("90d"))], "lifetime must be a duration such as 2160h"),
        (
            "renewBefore past the lifetime",
            vec![Set("/spec/lifetime", json!("2h")), Set("/spec/renewBefore", json!("3h"))],
            "renewBefore must be shorter than lifetime",
        ),
        (
            "overlap past renewBefore",
            vec![Set("/spec/renewBefore", json!("1h")), Set("/spec/overlap", json!("2h"))],
            "overlap must be shorter than renewBefore",
        ),
        (
            "propagationTimeout over an hour",
            vec![Set("/spec/propagationTimeout", json!("2h"))],
            "propagationTimeout must be a duration between 10s and 1h",
        ),
        (
            "Rotator without rotator",
            vec![Set("/spec/graphAuth", json!({"mode": "Rotator"}))],
            "graphAuth.rotator is required with mode Rotator",
        ),
        (
            "rotator with Self",
            vec![Set("/spec/graphAuth", json!({"mode": "Self", "rotator": rotator}))],
            "graphAuth.rotator is required with mode Rotator",
        ),
    ];
    for (case, changes, expected) in cases {
        let mut manifest = client_secret(&unique_name("bad"));
        for change in changes {
            match change {
                Set(pointer, value) => set(&mut manifest, pointer, value),
                Remove(pointer) => remove(&mut manifest, pointer),
            }
        }
        assert_rejected(case, create(&api, &manifest).await, expected);
    }
    let mut with_rotator = client_secret("rotated");
    set(&mut with_rotator, "/spec/graphAuth", json!({"mode": "Rotator", "rotator": rotator}));
    create(&api, &with_rotator).await.expect("Rotator with its rotator block is accepted");

    let merge = |patch: Value| {
        let api = api.clone();
        async move { api.patch("contoso", &PatchParams::default(), &Patch::Merge(patch)).await }
    };
    assert_rejected("new secretName", merge(json!({"spec": {"secretName": "other"}})).await, "secretName is immutable");
    assert_rejected("new clientId", merge(json!({"spec": {"azure": {"clientId": TENANT_ID}}})).await, "azure.clientId is immutable");
    merge(json!({"spec": {"overlap": "12h"}})).await.expect("overlap can change");
}
