//! `idp-bridge check`: validate a tenant, client and secret from a terminal, for the engineer
//! debugging a login failure, and with `--broker` check the app registration as the operator's
//! `AzureAppConfigured` does. The secret comes from a file or stdin, never an argument (argument
//! lists are visible to every user of the machine).

use std::{io::Read, path::PathBuf, time::Duration};

use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::{
    azure::{AzureClient, AzureError, ValidationRequest},
    crd::{
        connection::{AzureCloud, SignInAudience, ValidationMode},
        duration,
    },
    registration::{self, Callback, Finding, Guide, Needs},
    secret::{Fingerprinter, SecretValue},
    upstream::{EndpointOverrides, Upstream},
};

#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    /// The national cloud.
    #[arg(long, value_enum, default_value = "azure-public")]
    pub cloud: CloudArg,
    /// Tenant ID (GUID) or verified domain.
    #[arg(long)]
    pub tenant: String,
    /// Application (client) ID.
    #[arg(long)]
    pub client_id: String,
    /// File holding the client secret's value; `-` or absent reads standard input.
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
    /// Report format.
    #[arg(long, value_enum, default_value = "text")]
    pub output: OutputFormat,
    /// Redirect outbound hosts, as comma-separated HOST=URL pairs (proxies, emulators).
    #[arg(long, env = "IDP_BRIDGE_ENDPOINT_OVERRIDES", default_value = "")]
    pub endpoint_overrides: EndpointOverrides,
    /// PEM bundle of extra CA certificates trusted for outbound HTTPS.
    #[arg(long, env = "IDP_BRIDGE_CA_BUNDLE")]
    pub ca_bundle: Option<PathBuf>,
    /// Timeout of one request.
    #[arg(long, default_value = "15s", value_parser = |t: &str| duration::parse(t).map_err(|e| e.to_string()))]
    pub http_timeout: Duration,
    /// Also check the app registration for this broker's guide (redirect URI, account type,
    /// delegated permissions and consent, service principal).
    #[arg(long, value_enum)]
    pub broker: Option<BrokerArg>,
    /// The broker's callback to find among the Web redirect URIs (e.g.
    /// https://acme.eu.auth0.com/login/callback); without it the redirect URI is not checked.
    #[arg(long, requires = "broker")]
    pub redirect_uri: Option<String>,
    /// The connection's azure.signInAudience.
    #[arg(long, value_enum, default_value = "single-tenant", requires = "broker")]
    pub sign_in_audience: AudienceArg,
    /// Groups are on (Cloudflare supportGroups: GroupMember.Read.All). Auth0 is checked with
    /// extProfile on, its default (Directory.Read.All).
    #[arg(long, requires = "broker")]
    pub groups: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum BrokerArg {
    Auth0,
    Cloudflare,
    Logto,
    Unified,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum AudienceArg {
    SingleTenant,
    Organizations,
    Common,
    Consumers,
}

impl From<AudienceArg> for SignInAudience {
    fn from(a: AudienceArg) -> Self {
        match a {
            AudienceArg::SingleTenant => SignInAudience::SingleTenant,
            AudienceArg::Organizations => SignInAudience::Organizations,
            AudienceArg::Common => SignInAudience::Common,
            AudienceArg::Consumers => SignInAudience::Consumers,
        }
    }
}

impl CheckArgs {
    /// What `--broker` and its options ask of the registration.
    fn needs(&self, broker: BrokerArg) -> Needs {
        let guide = match broker {
            BrokerArg::Auth0 => Guide::Auth0 { directory: true },
            BrokerArg::Cloudflare => Guide::Cloudflare { groups: self.groups },
            BrokerArg::Logto => Guide::Logto,
            BrokerArg::Unified => Guide::Unified,
        };
        let callback = match &self.redirect_uri {
            Some(uri) => Callback::Known(uri.clone()),
            None => Callback::Unknown("no --redirect-uri given".into()),
        };
        Needs { callback, audience: self.sign_in_audience.into(), permissions: guide.permissions() }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum CloudArg {
    AzurePublic,
    AzureUsGovernment,
    AzureChina,
}

impl From<CloudArg> for AzureCloud {
    fn from(c: CloudArg) -> Self {
        match c {
            CloudArg::AzurePublic => AzureCloud::AzurePublic,
            CloudArg::AzureUsGovernment => AzureCloud::AzureUSGovernment,
            CloudArg::AzureChina => AzureCloud::AzureChina,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum OutputFormat {
    Text,
    Json,
}

/// What `check` found. Never holds the secret.
#[derive(Debug, Serialize)]
pub struct Report {
    pub cloud: String,
    pub tenant: String,
    pub tenant_id: Option<String>,
    pub client_id: String,
    pub valid: bool,
    /// The condition reason the operator would report.
    pub reason: String,
    pub aadsts: Option<u32>,
    pub message: String,
    pub expiry: Option<ExpiryReport>,
    /// With `--broker`: the app registration check (AzureAppConfigured).
    pub registration: Option<RegistrationReport>,
}

/// The app registration check, as the AzureAppConfigured condition would report it.
#[derive(Debug, Serialize)]
pub struct RegistrationReport {
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    /// Each finding's reason and the step that fixes it.
    pub findings: Vec<FindingReport>,
    /// What was not checked, and why.
    pub unchecked: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct FindingReport {
    pub reason: String,
    pub message: String,
}

#[derive(Debug, Serialize)]
pub struct ExpiryReport {
    pub expires_at: Option<String>,
    pub days_left: Option<i64>,
    pub key_id: Option<String>,
    /// Why the expiry is unknown, when it is.
    pub problem: Option<String>,
}

/// Exit codes: what a script needs to tell apart.
pub mod exit {
    /// Azure accepted the credentials.
    pub const VALID: u8 = 0;
    /// Azure rejected the credentials, or the input is unusable.
    pub const INVALID: u8 = 1;
    /// Azure could not be reached or throttled the request: try again.
    pub const UNREACHABLE: u8 = 3;
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("reading the secret: {0}")]
    ReadSecret(std::io::Error),
    #[error("the secret is empty")]
    EmptySecret,
    #[error("the secret is not UTF-8 text")]
    NotUtf8,
    #[error(transparent)]
    Http(#[from] crate::upstream::ClientBuildError),
}

fn read_secret(path: Option<&std::path::Path>) -> Result<SecretValue, CheckError> {
    let mut bytes = Vec::new();
    match path {
        None => std::io::stdin().read_to_end(&mut bytes).map_err(CheckError::ReadSecret)?,
        Some(p) if p.as_os_str() == "-" => std::io::stdin().read_to_end(&mut bytes).map_err(CheckError::ReadSecret)?,
        Some(p) => {
            bytes = std::fs::read(p).map_err(CheckError::ReadSecret)?;
            bytes.len()
        }
    };
    let text = String::from_utf8(bytes).map_err(|_| CheckError::NotUtf8)?;
    let text = text.trim();
    if text.is_empty() {
        return Err(CheckError::EmptySecret);
    }
    Ok(SecretValue::new(text))
}

/// Runs the checks and returns the report and the exit code.
pub async fn run(args: &CheckArgs) -> Result<(Report, u8), CheckError> {
    let secret = read_secret(args.secret_file.as_deref())?;
    let upstream = Upstream::new(args.endpoint_overrides.clone(), args.ca_bundle.as_deref(), args.http_timeout)?;
    let azure = AzureClient::new(upstream);
    let cloud: AzureCloud = args.cloud.into();
    let fingerprint = Fingerprinter::new(Fingerprinter::random_key()).fingerprint(&secret);
    let request = ValidationRequest {
        cloud,
        tenant: &args.tenant,
        client_id: &args.client_id,
        secret: &secret,
        fingerprint: &fingerprint,
        mode: ValidationMode::ClientCredentials,
        ttl: Duration::from_secs(60),
    };
    let mut report = Report {
        cloud: format!("{cloud:?}"),
        tenant: args.tenant.clone(),
        tenant_id: None,
        client_id: args.client_id.clone(),
        valid: false,
        reason: String::new(),
        aadsts: None,
        message: String::new(),
        expiry: None,
        registration: None,
    };
    if crate::crd::connection::is_guid(secret.expose()) {
        report.reason = "SecretIdInsteadOfValue".into();
        report.message =
            "the value is a GUID: that is the secret's ID, not its value. Use the Value shown when the secret was created".into();
        return Ok((report, exit::INVALID));
    }
    match azure.validate(&request).await {
        Err(error) => {
            report.reason = error.reason().as_str().to_owned();
            report.message = error.advice();
            if let AzureError::Aadsts { code, .. } = &error {
                report.aadsts = Some(*code);
            }
            if let Ok(tenant_id) = azure.discover(cloud, &args.tenant).await {
                report.tenant_id = Some(tenant_id);
            }
            let code = if error.is_transient() { exit::UNREACHABLE } else { exit::INVALID };
            Ok((report, code))
        }
        Ok(validation) => {
            report.valid = true;
            report.reason = "Valid".into();
            report.message = "Azure issued a token for this client secret".into();
            report.tenant_id.clone_from(&validation.tenant_id);
            let tenant_id = validation.tenant_id.unwrap_or_default();
            report.expiry = Some(match azure.secret_expiry(&request, &tenant_id).await {
                Ok(found) => ExpiryReport {
                    expires_at: Some(found.expires_at.to_string()),
                    days_left: Some((found.expires_at.as_second() - jiff::Timestamp::now().as_second()) / 86_400),
                    key_id: Some(found.key_id),
                    problem: (found.same_hint > 1).then(|| {
                        format!("{} secrets share this one's first three characters; the earliest expiry is shown", found.same_hint)
                    }),
                },
                Err(e) => ExpiryReport { expires_at: None, days_left: None, key_id: None, problem: Some(secret.scrub(&e.to_string())) },
            });
            if let Some(broker) = args.broker {
                report.registration = Some(check_registration(&azure, &request, &tenant_id, &args.needs(broker)).await);
            }
            let blocked = report.registration.as_ref().is_some_and(|r| r.status == "False");
            Ok((report, if blocked { exit::INVALID } else { exit::VALID }))
        }
    }
}

/// Reads the registration with the validation's token and compares it, as the operator does.
async fn check_registration(azure: &AzureClient, request: &ValidationRequest<'_>, tenant_id: &str, needs: &Needs) -> RegistrationReport {
    let found = match azure.registration(request, tenant_id).await {
        Ok(found) => found,
        Err(error) => {
            return RegistrationReport {
                status: "Unknown".into(),
                reason: "RegistrationUnreadable".into(),
                findings: Vec::new(),
                unchecked: vec![request.secret.scrub(&error.to_string())],
            };
        }
    };
    let compared = registration::compare(needs, &found);
    let (status, reason) = match (compared.findings.first(), compared.unreadable) {
        (Some(first), _) => ("False", first.reason().as_str()),
        (None, Some(_)) => ("Unknown", "RegistrationUnreadable"),
        (None, None) => ("True", "RegistrationConfigured"),
    };
    let findings =
        compared.findings.iter().map(|f: &Finding| FindingReport { reason: f.reason().as_str().into(), message: f.message() }).collect();
    RegistrationReport { status: status.into(), reason: reason.into(), findings, unchecked: compared.unchecked }
}

/// The human report.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let tenant = match &report.tenant_id {
        Some(id) if !id.eq_ignore_ascii_case(&report.tenant) => format!("{} -> {id}", report.tenant),
        _ => report.tenant.clone(),
    };
    out.push_str(&format!("Tenant   {tenant} ({})\n", report.cloud));
    out.push_str(&format!("Client   {}\n", report.client_id));
    if report.valid {
        out.push_str(&format!("Secret   valid: {}\n", report.message));
    } else {
        let code = report.aadsts.map(|c| format!("AADSTS{c}, ")).unwrap_or_default();
        out.push_str(&format!("Secret   NOT VALID ({code}{})\n         {}\n", report.reason, report.message));
    }
    if let Some(expiry) = &report.expiry {
        if let (Some(at), Some(days)) = (&expiry.expires_at, expiry.days_left) {
            let key = expiry.key_id.as_deref().map(|k| format!(", secret ID {k}")).unwrap_or_default();
            out.push_str(&format!("Expires  {at} ({days} days left{key})\n"));
        }
        if let Some(problem) = &expiry.problem {
            out.push_str(&format!("         {problem}\n"));
        }
    }
    if let Some(registration) = &report.registration {
        out.push_str(&format!("App      {} ({})\n", registration.status, registration.reason));
        for finding in &registration.findings {
            out.push_str(&format!("         {}: {}\n", finding.reason, finding.message));
        }
        for note in &registration.unchecked {
            out.push_str(&format!("         {note}\n"));
        }
    }
    out
}
