//! Command line and environment, parsed once into a validated [`Config`]. Nothing else in the
//! crate reads the environment.

use std::{path::PathBuf, time::Duration};

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum, builder::BoolishValueParser};

use crate::{
    broker_hosts::{BrokerHosts, DEFAULT_BROKER_HOSTS},
    crd::duration,
    leader,
    upstream::EndpointOverrides,
};

#[derive(Parser, Debug)]
#[command(name = "idp-bridge", version, about = "Validates Entra ID client secrets and pushes them into identity brokers")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the controller against the cluster in KUBECONFIG or the in-cluster service account.
    Run(Box<RunArgs>),
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
    /// Ask an AzureAdClientSecret for a new password now (sets its `idpbridge.io/renew`
    /// annotation, or `idpbridge.io/revoke` with --revoke), with the cluster credentials of
    /// KUBECONFIG; the running operator does the rest.
    Rotate(RotateArgs),
    /// Print the version.
    Version,
}

#[derive(Args, Debug, Clone)]
pub struct RotateArgs {
    /// The AzureAdClientSecret, as NAMESPACE/NAME.
    pub target: String,
    /// Revoke: also remove the previous password as soon as every consumer has synced the new
    /// one, without waiting for the overlap (for a leaked secret).
    #[arg(long)]
    pub revoke: bool,
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
    /// A name for this cluster, part of the owner marker idp-bridge leaves on broker objects
    /// (Auth0 connection metadata): two clusters that share a broker account must use different
    /// names, so that neither takes the other's objects for its own.
    #[arg(long, env = "IDP_BRIDGE_CLUSTER_NAME", default_value = "default")]
    pub cluster_name: String,
    /// Name of the Secret (in --namespace) holding the key for secret fingerprints; created with a
    /// random key when missing.
    #[arg(long, env = "IDP_BRIDGE_FINGERPRINT_KEY_SECRET", default_value = "idp-bridge-fingerprint-key")]
    pub fingerprint_key_secret: String,
    /// Redirect outbound hosts, as comma-separated HOST=URL pairs (test emulators, egress proxies).
    /// Operator-level only: no resource field can do this.
    #[arg(long, env = "IDP_BRIDGE_ENDPOINT_OVERRIDES", default_value = "")]
    pub endpoint_overrides: EndpointOverrides,
    /// Broker management hosts the operator may call, as comma-separated patterns: HOST,
    /// HOST:PORT or *.SUFFIX (any depth, port 443 only). IP literals, localhost, link-local names
    /// and ports other than 443 need an exact pattern. Replaces the default list (the vendors'
    /// hosts); checked against the host a broker's spec names, before any endpoint override.
    #[arg(long, env = "IDP_BRIDGE_BROKER_HOSTS", default_value = DEFAULT_BROKER_HOSTS)]
    pub broker_hosts: BrokerHosts,
    /// PEM bundle of extra CA certificates trusted for outbound HTTPS.
    #[arg(long, env = "IDP_BRIDGE_CA_BUNDLE")]
    pub ca_bundle: Option<PathBuf>,
    /// Timeout of one outbound HTTP request.
    #[arg(long, env = "IDP_BRIDGE_HTTP_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub http_timeout: Duration,
    /// Deadline of one reconcile (a connection's or a broker's status check), so that a slow or
    /// hanging endpoint cannot hold a --concurrency slot; past it the reconcile is retried with
    /// backoff and the connection reports ReconcileTimedOut.
    #[arg(long, env = "IDP_BRIDGE_RECONCILE_TIMEOUT", default_value = "2m", value_parser = parse_duration)]
    pub reconcile_timeout: Duration,
    /// How long deletion under deletionPolicy Delete keeps retrying a failing broker before it
    /// releases the resource and leaves the broker object behind (with a Warning event).
    #[arg(long, env = "IDP_BRIDGE_DELETION_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub deletion_timeout: Duration,
    /// Watch only these namespaces (comma-separated); empty watches the whole cluster.
    #[arg(long, env = "IDP_BRIDGE_WATCH_NAMESPACES", value_delimiter = ',')]
    pub watch_namespaces: Vec<String>,
    /// Objects each controller reconciles at once (connections, brokers, client secrets).
    #[arg(long, env = "IDP_BRIDGE_CONCURRENCY", default_value_t = 16)]
    pub concurrency: u16,
    /// Log format.
    #[arg(long, env = "IDP_BRIDGE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    #[arg(long, env = "IDP_BRIDGE_HTTP_ADDRESS", default_value = "0.0.0.0:8080")]
    pub http_address: std::net::SocketAddr,
    /// Name reported on Events (the pod name in a cluster).
    /// Name reported on Events (the pod name in a cluster); with a random suffix, also the
    /// identity in the leader election.
    #[arg(long, env = "POD_NAME", default_value = "idp-bridge")]
    pub instance: String,
    /// Reconcile only while holding the leader Lease (in --namespace), so that of several replicas
    /// exactly one works and a standby takes over when it dies. `--leader-election=false` runs
    /// without the Lease (a single replica only).
    #[arg(
        long,
        env = "IDP_BRIDGE_LEADER_ELECTION",
        default_value_t = true,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        action = ArgAction::Set,
        value_parser = BoolishValueParser::new(),
    )]
    pub leader_election: bool,
    /// Name of the leader Lease in --namespace.
    #[arg(long, env = "IDP_BRIDGE_LEADER_ELECTION_LEASE", default_value = leader::DEFAULT_LEASE_NAME)]
    pub leader_election_lease: String,
    /// How long a standby waits, after it last saw the Lease renewed, before taking over.
    #[arg(long, env = "IDP_BRIDGE_LEADER_ELECTION_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub leader_election_lease_duration: Duration,
    /// How long the leader keeps working without a successful renewal; shorter than the lease
    /// duration.
    #[arg(long, env = "IDP_BRIDGE_LEADER_ELECTION_RENEW_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    pub leader_election_renew_deadline: Duration,
    /// Interval between renewals of the leader and between attempts of a standby.
    #[arg(long, env = "IDP_BRIDGE_LEADER_ELECTION_RETRY_PERIOD", default_value = "2s", value_parser = parse_duration)]
    pub leader_election_retry_period: Duration,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    duration::parse(text).map_err(|e| e.to_string())
}

/// Validated operator configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub namespace: String,
    /// Part of every owner marker (`--cluster-name`).
    pub cluster_name: String,
    pub fingerprint_key_secret: String,
    pub endpoint_overrides: EndpointOverrides,
    /// Broker management hosts the operator may call.
    pub broker_hosts: BrokerHosts,
    pub ca_bundle: Option<PathBuf>,
    pub http_timeout: Duration,
    pub reconcile_timeout: Duration,
    pub deletion_timeout: Duration,
    pub concurrency: u16,
    pub instance: String,
    /// Empty: the whole cluster.
    pub watch_namespaces: Vec<String>,
    /// Where /metrics, /healthz and /readyz are served; None serves nothing.
    pub http_address: Option<std::net::SocketAddr>,
    /// `None`: no leader election, this process always reconciles.
    pub leader_election: Option<LeaderElectionConfig>,
}

/// The leader Lease (in the operator's namespace) and its timings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderElectionConfig {
    pub lease_name: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Default for LeaderElectionConfig {
    fn default() -> Self {
        Self {
            lease_name: leader::DEFAULT_LEASE_NAME.to_owned(),
            lease_duration: leader::DEFAULT_LEASE_DURATION,
            renew_deadline: leader::DEFAULT_RENEW_DEADLINE,
            retry_period: leader::DEFAULT_RETRY_PERIOD,
        }
    }
}

impl LeaderElectionConfig {
    /// The settings of one process: the Lease in `namespace`, a unique identity for `instance`.
    pub fn settings(&self, namespace: &str, instance: &str) -> leader::LeaseSettings {
        leader::LeaseSettings {
            namespace: namespace.to_owned(),
            name: self.lease_name.clone(),
            identity: leader::unique_identity(instance),
            lease_duration: self.lease_duration,
            renew_deadline: self.renew_deadline,
            retry_period: self.retry_period,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--ca-bundle {0} does not exist")]
    MissingCaBundle(String),
    #[error("--reconcile-timeout must be at least --http-timeout: a reconcile makes one request or more")]
    ReconcileTimeout,
    #[error("--concurrency must be at least 1")]
    Concurrency,
    #[error("--namespace must not be empty")]
    Namespace,
    #[error("--cluster-name must not be empty")]
    ClusterName,
    #[error("--leader-election-lease must not be empty")]
    LeaseName,
    #[error("leader election: {0}")]
    LeaderElection(#[from] leader::SettingsError),
}

impl TryFrom<RunArgs> for Config {
    type Error = ConfigError;

    fn try_from(args: RunArgs) -> Result<Self, Self::Error> {
        if let Some(path) = &args.ca_bundle
            && !path.exists()
        {
            return Err(ConfigError::MissingCaBundle(path.display().to_string()));
        }
        if args.reconcile_timeout < args.http_timeout {
            return Err(ConfigError::ReconcileTimeout);
        }
        if args.concurrency == 0 {
            return Err(ConfigError::Concurrency);
        }
        if args.namespace.trim().is_empty() {
            return Err(ConfigError::Namespace);
        }
        if args.cluster_name.trim().is_empty() {
            return Err(ConfigError::ClusterName);
        }
        let leader_election = if args.leader_election {
            let lease_name = args.leader_election_lease.trim().to_owned();
            if lease_name.is_empty() {
                return Err(ConfigError::LeaseName);
            }
            leader::validate_timing(
                args.leader_election_lease_duration,
                args.leader_election_renew_deadline,
                args.leader_election_retry_period,
            )?;
            Some(LeaderElectionConfig {
                lease_name,
                lease_duration: args.leader_election_lease_duration,
                renew_deadline: args.leader_election_renew_deadline,
                retry_period: args.leader_election_retry_period,
            })
        } else {
            None
        };
        Ok(Config {
            namespace: args.namespace,
            cluster_name: args.cluster_name.trim().to_owned(),
            fingerprint_key_secret: args.fingerprint_key_secret,
            endpoint_overrides: args.endpoint_overrides,
            broker_hosts: args.broker_hosts,
            ca_bundle: args.ca_bundle,
            http_timeout: args.http_timeout,
            reconcile_timeout: args.reconcile_timeout,
            deletion_timeout: args.deletion_timeout,
            concurrency: args.concurrency,
            instance: args.instance,
            watch_namespaces: args.watch_namespaces.into_iter().map(|n| n.trim().to_owned()).filter(|n| !n.is_empty()).collect(),
            http_address: Some(args.http_address),
            leader_election,
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
    fn a_reconcile_timeout_shorter_than_one_request_is_refused() {
        let Command::Run(args) = parse(&["run", "--http-timeout=30s", "--reconcile-timeout=10s"]).unwrap().command else { panic!() };
        assert!(matches!(Config::try_from(*args), Err(ConfigError::ReconcileTimeout)));
        let Command::Run(args) = parse(&["run", "--reconcile-timeout=5m"]).unwrap().command else { panic!() };
        assert_eq!(Config::try_from(*args).unwrap().reconcile_timeout, Duration::from_secs(300));
    }

    #[test]
    fn run_defaults() {
        let Command::Run(args) = parse(&["run"]).unwrap().command else { panic!() };
        let config = Config::try_from(*args).unwrap();
        assert_eq!(config.http_timeout, Duration::from_secs(15));
        assert_eq!(config.deletion_timeout, Duration::from_secs(600));
        assert_eq!(config.reconcile_timeout, Duration::from_secs(120));
        assert!(config.endpoint_overrides.is_empty());
        assert_eq!(config.broker_hosts, BrokerHosts::default());
        assert!(config.broker_hosts.allows("acme.eu.auth0.com"));
        assert_eq!(config.leader_election, Some(LeaderElectionConfig::default()));
    }

    #[test]
    fn leader_election_flags() {
        let config = |args: &[&str]| {
            let Command::Run(args) = parse(args).unwrap().command else { panic!() };
            Config::try_from(*args)
        };
        assert_eq!(config(&["run", "--leader-election=false"]).unwrap().leader_election, None);
        assert_eq!(config(&["run", "--leader-election"]).unwrap().leader_election, Some(LeaderElectionConfig::default()));
        let custom = config(&[
            "run",
            "--leader-election-lease",
            "other",
            "--leader-election-lease-duration",
            "3s",
            "--leader-election-renew-deadline",
            "2s",
            "--leader-election-retry-period",
            "500ms",
        ])
        .unwrap()
        .leader_election
        .unwrap();
        assert_eq!(
            custom,
            LeaderElectionConfig {
                lease_name: "other".into(),
                lease_duration: Duration::from_secs(3),
                renew_deadline: Duration::from_secs(2),
                retry_period: Duration::from_millis(500),
            }
        );
        let settings = custom.settings("ops", "pod-1");
        assert!(settings.identity.starts_with("pod-1-") && settings.identity.len() > "pod-1-".len());
        assert_ne!(settings.identity, custom.settings("ops", "pod-1").identity, "identities are unique per process");
        assert!(matches!(
            config(&["run", "--leader-election-renew-deadline", "20s"]),
            Err(ConfigError::LeaderElection(leader::SettingsError::RenewDeadline { .. }))
        ));
        assert!(matches!(config(&["run", "--leader-election-lease", " "]), Err(ConfigError::LeaseName)));
        // Disabled: its timings are not checked.
        assert!(config(&["run", "--leader-election=false", "--leader-election-renew-deadline", "20s"]).is_ok());
    }

    #[test]
    fn broker_hosts_flag_replaces_the_defaults() {
        let hosts = |args: &[&str]| {
            let Command::Run(args) = parse(args).unwrap().command else { panic!() };
            Config::try_from(*args).unwrap().broker_hosts
        };
        let custom = hosts(&["run", "--broker-hosts", "auth.corp.example, logto.corp.example:8443"]);
        assert!(custom.allows("auth.corp.example"));
        assert!(custom.allows("logto.corp.example:8443"));
        assert!(!custom.allows("acme.eu.auth0.com"), "the flag replaces the defaults");
        assert_eq!(hosts(&["run", "--broker-hosts=acme.eu.auth0.com"]).to_string(), "acme.eu.auth0.com");
    }

    #[test]
    fn bad_flags_are_clear_errors() {
        let err = parse(&["run", "--endpoint-overrides", "nohost"]).unwrap_err().to_string();
        assert!(err.contains("HOST=https://"), "{err}");
        let err = parse(&["run", "--broker-hosts", "https://auth.example.com"]).unwrap_err().to_string();
        assert!(err.contains("not HOST, HOST:PORT or *.SUFFIX"), "{err}");
        let err = parse(&["run", "--broker-hosts", ""]).unwrap_err().to_string();
        assert!(err.contains("no broker could be reached"), "{err}");
        let err = parse(&["run", "--broker-hosts", "*.example.com:8443"]).unwrap_err().to_string();
        assert!(err.contains("wildcard may not carry a port"), "{err}");
        let err = parse(&["run", "--http-timeout", "5 seconds"]).unwrap_err().to_string();
        assert!(err.contains("not a duration"), "{err}");
        let Command::Run(args) = parse(&["run", "--ca-bundle", "/nonexistent/ca.pem"]).unwrap().command else { panic!() };
        assert!(matches!(Config::try_from(*args), Err(ConfigError::MissingCaBundle(_))));
    }
}
