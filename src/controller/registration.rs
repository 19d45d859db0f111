//! The app registration stage: reads the Entra app registration through Graph with the token
//! the validation obtained, compares it with what the connection's broker needs
//! (`crate::registration`), and under `azure.registration: Manage` adds a missing redirect URI.

use tracing::warn;

use super::{
    Context, decide,
    observation::{AppCheck, BrokerStage, CredentialsFailure},
    resolve::ResolvedBroker,
};
use crate::{
    azure::{Validation, ValidationRequest, registration::Registration},
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
}

pub async fn check(ctx: &Context, conn: &AzureAdConnection, inputs: &Inputs<'_>) -> AppCheck {
    let (request, tenant_id) = match graph_request(conn, inputs) {
        Ok(found) => found,
        Err(check) => return check,
    };
    // Graph first: a registration the operator may not read needs no broker call.
    let found = match read(ctx, &request, tenant_id).await {
        Ok(found) => found,
        Err(check) => return check,
    };
    let team_domain = team_domain(ctx, inputs.broker).await;
    let needs = needs(conn, inputs, team_domain.as_deref());
    let report = registration::compare(&needs, &found);
    let missing_uri = report.findings.iter().find_map(|f| match f {
        Finding::RedirectUriMissing { uri } => Some(uri.clone()),
        _ => None,
    });
    // ObserveOnly writes nowhere, the app registration included.
    let spec = &conn.spec;
    let manage = spec.azure.registration == RegistrationPolicy::Manage && spec.management_policy == ManagementPolicy::Full;
    match missing_uri.filter(|_| manage) {
        Some(uri) => add_redirect_uri(ctx, &request, tenant_id, &needs, report, uri).await,
        None => checked(report),
    }
}

/// The Graph request of a successful ClientCredentials validation (its token reads the
/// registration) and the tenant GUID; otherwise what the check can say without Graph.
fn graph_request<'a>(conn: &'a AzureAdConnection, inputs: &Inputs<'a>) -> Result<(ValidationRequest<'a>, &'a str), AppCheck> {
    let validation = match inputs.credentials {
        Ok(validation) => validation,
        // Azure's own answer says it: the enterprise application is disabled.
        Err(CredentialsFailure::Azure(e)) if e.reason() == Reason::ApplicationDisabled => {
            return Err(checked(Report { findings: vec![Finding::ServicePrincipalDisabled], ..Report::default() }));
        }
        Err(failure) if failure.is_transient() => return Err(AppCheck::Unavailable { why: failure.message(), retry_after: None }),
        Err(_) => {
            return Err(AppCheck::Unreadable(
                "the credentials were not confirmed, so there is no Graph token to read the app registration with".into(),
            ));
        }
    };
    let spec = &conn.spec;
    let (Some(secret), Some(tenant_id), ValidationMode::ClientCredentials) =
        (inputs.secret, validation.tenant_id.as_deref(), spec.validation.mode)
    else {
        return Err(AppCheck::Unreadable(format!(
            "validation.mode {:?} obtains no Graph token; the app registration is read with the token of a ClientCredentials validation",
            spec.validation.mode
        )));
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
    Ok((request, tenant_id))
}

/// `azure.registration: Manage`: adds the missing redirect URI, then reads the registration
/// again to report what Graph now holds.
async fn add_redirect_uri(
    ctx: &Context,
    request: &ValidationRequest<'_>,
    tenant_id: &str,
    needs: &Needs,
    report: Report,
    uri: String,
) -> AppCheck {
    if let Err(error) = ctx.azure.add_redirect_uri(request, tenant_id, &uri).await {
        return AppCheck::Checked { report, added_redirect_uri: None, manage_failed: Some(error.to_string()) };
    }
    match read(ctx, request, tenant_id).await {
        Ok(found) => AppCheck::Checked { report: registration::compare(needs, &found), added_redirect_uri: Some(uri), manage_failed: None },
        Err(check) => check,
    }
}

fn checked(report: Report) -> AppCheck {
    AppCheck::Checked { report, added_redirect_uri: None, manage_failed: None }
}

/// Reads the registration; a read that failed is the check's answer.
async fn read(ctx: &Context, request: &ValidationRequest<'_>, tenant_id: &str) -> Result<Registration, AppCheck> {
    ctx.azure.registration(request, tenant_id).await.map_err(|error| match error {
        e if e.is_transient() => AppCheck::Unavailable { why: e.to_string(), retry_after: e.retry_after() },
        e => AppCheck::Unreadable(e.to_string()),
    })
}

/// The Access team domain of a Cloudflare broker (read once per broker client); `None` for the
/// other brokers, or when it could not be read (the callback is then reported unknown).
async fn team_domain(ctx: &Context, broker: Option<&ResolvedBroker>) -> Option<String> {
    let broker = broker.filter(|b| matches!(b.provider, BrokerProvider::Cloudflare(_)))?;
    match ctx.broker_client(broker).access_team_domain().await? {
        Ok(domain) => Some(domain),
        Err(error) => {
            warn!(%error, "the Cloudflare Access team domain could not be read");
            None
        }
    }
}

/// What the broker needs, from the broker spec and what the broker stage learned (Logto's
/// connector id).
fn needs(conn: &AzureAdConnection, inputs: &Inputs<'_>, team_domain: Option<&str>) -> Needs {
    let spec = &conn.spec;
    let synced_id = match inputs.broker_stage {
        BrokerStage::Synced(outcome) => outcome.id.clone(),
        _ => None,
    };
    let known_id = synced_id.or_else(|| conn.status.as_ref().and_then(|s| s.broker.as_ref()).and_then(|b| b.id.clone()));
    let connector_id = spec.logto.as_ref().and_then(|l| l.connector_id.clone()).or(known_id);
    let side = inputs.broker.map(|broker| match &broker.provider {
        BrokerProvider::Auth0(b) => BrokerSide::Auth0 { domain: &b.domain },
        BrokerProvider::Cloudflare(_) => BrokerSide::Cloudflare { team_domain },
        BrokerProvider::Logto(b) => BrokerSide::Logto { endpoint: &b.endpoint, connector_id: connector_id.as_deref() },
        BrokerProvider::Unified(b) => BrokerSide::Unified { region: b.region },
    });
    let callback = match side {
        Some(side) => registration::callback(spec, side),
        None => Callback::Unknown("the broker could not be resolved, so its callback is not known".into()),
    };
    Needs { callback, audience: spec.azure.sign_in_audience, permissions: registration::permissions(spec) }
}
