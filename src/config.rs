//! Command line and environment, parsed once into a validated [`Config`]. Nothing else in the
//! crate reads the environment.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{crd::duration, upstream::EndpointOverrides};

#[derive(Parser, Debug)]
#[command(name = "idp-bridge", version, about = "Validates Entra ID client secrets and pushes them into identity brokers")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the controller against the cluster in KUBECONFIG or the in-cluster service account.
    Run(RunArgs),
    /// Print the CustomResourceDefinitions (or write one file per CRD with --out-dir).
    Crds {
        /// Directory to write `<name>.yaml` files into, instead of printing to stdout.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Check a tenant, client ID and secret against Azure and print the secret's expiry. Exit
    /// codes: 0 valid, 1 invalid (Azure rejected it, or unusable input), 2 usage error,
    /// 3 Azure unreachable or throttling.
    Check(crate::check::CheckArgs),
    /// Print the version.
    Version,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// The operator's own namespace: ClusterIdentityBroker credential Secrets and the
    /// fingerprint key live here.
    #[arg(long, env = "POD_NAMESPACE", default_value = "idp-bridge")]
    pub namespace: String,
    /// Name of the Secret (in --namespace) holding the key for secret fingerprints; created with a
    /// random key when missing.
    #[arg(long, env = "IDP_BRIDGE_FINGERPRINT_KEY_SECRET", default_value = "idp-bridge-fingerprint-key")]
    pub fingerprint_key_secret: String,
    /// Redirect outbound hosts, as comma-separated HOST=URL pairs (test emulators, egress proxies).
    /// Operator-level only: no resource field can do this.
    #[arg(long, env = "IDP_BRIDGE_ENDPOINT_OVERRIDES", default_value = "")]
    pub endpoint_overrides: EndpointOverrides,
    /// PEM bundle of extra CA certificates trusted for outbound HTTPS.
    #[arg(long, env = "IDP_BRIDGE_CA_BUNDLE")]
    pub ca_bundle: Option<PathBuf>,
    /// Timeout of one outbound HTTP request.
    #[arg(long, env = "IDP_BRIDGE_HTTP_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub http_timeout: Duration,
    /// How long deletion under deletionPolicy Delete keeps retrying a failing broker before it
    /// releases the resource and leaves the broker object behind (with a Warning event).
    #[arg(long, env = "IDP_BRIDGE_DELETION_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub deletion_timeout: Duration,
    /// Watch only these namespaces (comma-separated); empty watches the whole cluster.
    #[arg(long, env = "IDP_BRIDGE_WATCH_NAMESPACES", value_delimiter = ',')]
    pub watch_namespaces: Vec<String>,
    /// Connections reconciled at once.
    #[arg(long, env = "IDP_BRIDGE_CONCURRENCY", default_value_t = 16)]
    pub concurrency: u16,
    /// Log format.
    #[arg(long, env = "IDP_BRIDGE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    #[arg(long, env = "IDP_BRIDGE_HTTP_ADDRESS", default_value = "0.0.0.0:8080")]
    pub http_address: std::net::SocketAddr,
    /// Name reported on Events (the pod name in a cluster).
    #[arg(long, env = "POD_NAME", default_value = "idp-bridge")]
    pub instance: String,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    duration::parse(text).map_err(|e| e.to_string())
}

/// Validated operator configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub namespace: String,
    pub fingerprint_key_secret: String,
    pub endpoint_overrides: EndpointOverrides,
    pub ca_bundle: Option<PathBuf>,
    pub http_timeout: Duration,
    pub deletion_timeout: Duration,
    pub concurrency: u16,
    pub instance: String,
    /// Empty: the whole cluster.
    pub watch_namespaces: Vec<String>,
    /// Where /metrics, /healthz and /readyz are served; None serves nothing.
    pub http_address: Option<std::net::SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--ca-bundle {0} does not exist")]
    MissingCaBundle(String),
    #[error("--concurrency must be at least 1")]
    Concurrency,
    #[error("--namespace must not be empty")]
    Namespace,
}

impl TryFrom<RunArgs> for Config {
    type Error = ConfigError;

    fn try_from(args: RunArgs) -> Result<Self, Self::Error> {
        if let Some(path) = &args.ca_bundle
            && !path.exists()
        {
            return Err(ConfigError::MissingCaBundle(path.display().to_string()));
        }
        if args.concurrency == 0 {
            return Err(ConfigError::Concurrency);
        }
        if args.namespace.trim().is_empty() {
            return Err(ConfigError::Namespace);
        }
        Ok(Config {
            namespace: args.namespace,
            fingerprint_key_secret: args.fingerprint_key_secret,
            endpoint_overrides: args.endpoint_overrides,
            ca_bundle: args.ca_bundle,
            http_timeout: args.http_timeout,
            deletion_timeout: args.deletion_timeout,
            concurrency: args.concurrency,
            instance: args.instance,
            watch_namespaces: args.watch_namespaces.into_iter().map(|n| n.trim().to_owned()).filter(|n| !n.is_empty()).collect(),
            http_address: Some(args.http_address),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("idp-bridge").chain(args.iter().copied()))
    }

    #[test]
    fn run_defaults() {
        let Command::Run(args) = parse(&["run"]).unwrap().command else { panic!() };
        let config = Config::try_from(args).unwrap();
        assert_eq!(config.http_timeout, Duration::from_secs(15));
        assert_eq!(config.deletion_timeout, Duration::from_secs(600));
        assert!(config.endpoint_overrides.is_empty());
    }

    #[test]
    fn bad_flags_are_clear_errors() {
        let err = parse(&["run", "--endpoint-overrides", "nohost"]).unwrap_err().to_string();
        assert!(err.contains("HOST=https://"), "{err}");
        let err = parse(&["run", "--http-timeout", "5 seconds"]).unwrap_err().to_string();
        assert!(err.contains("not a duration"), "{err}");
        let Command::Run(args) = parse(&["run", "--ca-bundle", "/nonexistent/ca.pem"]).unwrap().command else { panic!() };
        assert!(matches!(Config::try_from(args), Err(ConfigError::MissingCaBundle(_))));
    }
}
