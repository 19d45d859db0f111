//! A ValidatingAdmissionPolicy that refuses writes of one Secret in one namespace, as a missing
//! RBAC grant or a cluster's own policy would, for tests of what the operator does when it may
//! not write a Secret.

use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding};
use kube::{
    Api, Client,
    api::{DeleteParams, PostParams},
};
use serde_json::json;

pub struct SecretDenial {
    client: Client,
    name: String,
}

impl SecretDenial {
    /// Refuses `operations` (e.g. `["CREATE", "UPDATE"]`) on Secret `secret` in `namespace` with
    /// 403 Forbidden. Returns once the API server enforces it: `probe` (an attempt at such a write,
    /// undone by itself when it passes) fails.
    pub async fn install<F, Fut>(client: &Client, namespace: &str, secret: &str, operations: &[&str], probe: F) -> SecretDenial
    where
        F: Fn() -> Fut,
        Fut: Future<Output = bool>,
    {
        let name = format!("deny-{secret}-{namespace}");
        let policy: ValidatingAdmissionPolicy = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": operations, "resources": ["secrets"]}]},
                "validations": [{"expression": format!("object.metadata.name != '{secret}'"), "message": "refused by the test", "reason": "Forbidden"}],
            },
        }))
        .expect("a valid policy");
        let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "policyName": name,
                "validationActions": ["Deny"],
                "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}},
            },
        }))
        .expect("a valid binding");
        Api::<ValidatingAdmissionPolicy>::all(client.clone()).create(&PostParams::default(), &policy).await.expect("creating the policy");
        Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
            .create(&PostParams::default(), &binding)
            .await
            .expect("creating the binding");
        for _ in 0..100 {
            if !probe().await {
                return SecretDenial { client: client.clone(), name };
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("the admission policy {name} never took effect");
    }

    /// Lifts the denial (the API server may enforce it a moment longer).
    pub async fn remove(self) {
        let params = DeleteParams::default();
        Api::<ValidatingAdmissionPolicyBinding>::all(self.client.clone()).delete(&self.name, &params).await.expect("deleting the binding");
        Api::<ValidatingAdmissionPolicy>::all(self.client.clone()).delete(&self.name, &params).await.expect("deleting the policy");
    }
}
