//! The app registration stage: reads the Entra app registration through Graph with the token
//! the validation obtained, compares it with what the connection's broker needs
//! (`crate::registration`), and under `azure.registration: Manage` adds a missing redirect URI.

use super::{
    Context, decide,
    observation::{AppCheck, BrokerStage, CredentialsFailure},
    resolve::ResolvedBroker,
};
use crate::{
    azure::{Validation, ValidationRequest},
    crd::{
        BrokerProvider,
        conditions::Reason,
        connection::{AzureAdConnection, ManagementPolicy, RegistrationPolicy, ValidationMode},
    },
    registration::{self, BrokerSide, Callback, Finding, Needs, Report},
    secret::SecretValue,
};

/// What the stage needs from the earlier ones.
pub struct Inputs<'a> {
    pub secret: Option<&'a SecretValue>,
    pub fingerprint: &'a str,
    pub credentials: &'a Result<Validation, CredentialsFailure>,
    pub broker: Option<&'a ResolvedBroker>,
    pub broker_stage: &'a BrokerStage,
    /// The Access team domain of a Cloudflare broker, when it could be read.
    pub team_domain: Option<&'a str>,
}

pub async fn check(ctx: &Context, conn: &AzureAdConnection, inputs: &Inputs<'_>) -> AppCheck {
    let validation = match inputs.credentials {
        Ok(validation) => validation,
        // Azure's own answer says it: the enterprise application is disabled.
        Err(CredentialsFailure::Azure(e)) if e.reason() == Reason::ApplicationDisabled => {
            return checked(Report { findings: vec![Finding::ServicePrincipalDisabled], ..Report::default() });
        }
        Err(failure) if failure.is_transient() => {
            return AppCheck::Unavailable { why: failure.message(), retry_after: None };
        }
        Err(_) => {
            return AppCheck::Unreadable(
                "the credentials were not confirmed, so there is no Graph token to read the app registration with".into(),
            );
        }
    };
    let spec = &conn.spec;
    let (Some(secret), Some(tenant_id), ValidationMode::ClientCredentials) =
        (inputs.secret, validation.tenant_id.as_deref(), spec.validation.mode)
    else {
        return AppCheck::Unreadable(format!(
            "validation.mode {:?} obtains no Graph token; the app registration is read with the token of a ClientCredentials validation",
            spec.validation.mode
        ));
    };
    let request = ValidationRequest {
        cloud: spec.azure.cloud,
        tenant: &spec.azure.tenant,
        client_id: &spec.azure.client_id,
        secret,
        fingerprint: inputs.fingerprint,
        mode: spec.validation.mode,
        ttl: decide::cache_ttl(spec.refresh_interval(), rand::random()),
    };
    let needs = needs(conn, inputs);
    let report = match read(ctx, &request, tenant_id, &needs).await {
        Ok(report) => report,
        Err(check) => return check,
    };
    let missing_uri = report.findings.iter().find_map(|f| match f {
        Finding::RedirectUriMissing { uri } => Some(uri.clone()),
        _ => None,
    });
    // ObserveOnly writes nowhere, the app registration included.
    let manage = spec.azure.registration == RegistrationPolicy::Manage && spec.management_policy == ManagementPolicy::Full;
    let Some(uri) = missing_uri.filter(|_| manage) else {
        return checked(report);
    };
    match ctx.azure.add_redirect_uri(&request, tenant_id, &uri).await {
        Ok(_) => match read(ctx, &request, tenant_id, &needs).await {
            Ok(report) => AppCheck::Checked { report, added_redirect_uri: Some(uri), manage_failed: None },
            Err(check) => check,
        },
        Err(error) => AppCheck::Checked { report, added_redirect_uri: None, manage_failed: Some(error.to_string()) },
    }
}

fn checked(report: Report) -> AppCheck {
    AppCheck::Checked { report, added_redirect_uri: None, manage_failed: None }
}

/// Reads the registration and compares it; a read that failed is the check's answer.
async fn read(ctx: &Context, request: &ValidationRequest<'_>, tenant_id: &str, needs: &Needs) -> Result<Report, AppCheck> {
    match ctx.azure.registration(request, tenant_id).await {
        Ok(found) => Ok(registration::compare(needs, &found)),
        Err(error) if error.is_transient() => Err(AppCheck::Unavailable { why: error.to_string(), retry_after: error.retry_after() }),
        Err(error) => Err(AppCheck::Unreadable(error.to_string())),
    }
}

/// What the broker needs, from the broker spec and what the broker stage learned (Logto's
/// connector id).
fn needs(conn: &AzureAdConnection, inputs: &Inputs<'_>) -> Needs {
    let spec = &conn.spec;
    let synced_id = match inputs.broker_stage {
        BrokerStage::Synced(outcome) => outcome.id.clone(),
        _ => None,
    };
    let known_id = synced_id.or_else(|| conn.status.as_ref().and_then(|s| s.broker.as_ref()).and_then(|b| b.id.clone()));
    let connector_id = spec.logto.as_ref().and_then(|l| l.connector_id.clone()).or(known_id);
    let side = inputs.broker.map(|broker| match &broker.provider {
        BrokerProvider::Auth0(b) => BrokerSide::Auth0 { domain: &b.domain },
        BrokerProvider::Cloudflare(_) => BrokerSide::Cloudflare { team_domain: inputs.team_domain },
        BrokerProvider::Logto(b) => BrokerSide::Logto { endpoint: &b.endpoint, connector_id: connector_id.as_deref() },
        BrokerProvider::Unified(b) => BrokerSide::Unified { region: b.region },
    });
    let callback = match side {
        Some(side) => registration::callback(spec, side),
        None => Callback::Unknown("the broker could not be resolved, so its callback is not known".into()),
    };
    Needs { callback, audience: spec.azure.sign_in_audience, permissions: registration::permissions(spec) }
}
