//! A real `kube-apiserver`, `etcd` and `kube-controller-manager` on loopback, the way
//! controller-runtime's envtest runs the first two, for the integration tests and the demo.
//!
//! [`ControlPlane::start`] creates a private temp dir, picks free loopback ports, generates every
//! certificate with rcgen (serving CA and serving cert, service-account signing key, client CA,
//! an admin client cert with `CN=admin, O=system:masters` and one for
//! `CN=system:kube-controller-manager`), starts etcd and the apiserver with envtest's flags, waits
//! until `/readyz` answers, starts the controller-manager, and waits until namespace `default`
//! exists and the controller-manager's `/healthz` answers.
//!
//! The controller-manager runs only the namespace and garbage-collector controllers, so deleted
//! namespaces finish deleting and dependents of a deleted owner are collected, as in a real
//! cluster. Both act asynchronously: a test waits for their effect with a bounded poll. There is
//! no scheduler or kubelet and no other controller: no Pods run, no default ServiceAccount exists,
//! no Deployment gets a ReplicaSet.
//!
//! # Never outliving the test process
//!
//! Test binaries keep the control plane in a `static` that is never dropped, and a test process
//! may also die from a signal or `std::process::exit`. So `Drop` alone cannot stop the servers.
//! Each control plane therefore has a watchdog: a tiny `sh` in its own process group whose stdin
//! is a pipe from this process. The kernel closes the pipe's write end when this process ends, for
//! whatever reason (exit, panic, SIGKILL), so the watchdog's `read` sees end-of-file at once. It
//! then sends SIGTERM to the process group of the apiserver and then of etcd, each followed by
//! SIGKILL if it is still there after 10 s, and removes the temp dir (a few seconds in all). The
//! controller-manager's group is stopped first, before the apiserver it talks to. This
//! is more robust than polling the parent's pid with `kill -0` once a second (no delay, no pid
//! reuse) and than `PR_SET_PDEATHSIG`, which fires when the *thread* that spawned the child exits:
//! tests spawn from tokio worker threads of per-test runtimes that end long before the process
//! does. Rust creates the pipe with `O_CLOEXEC`, so no other child (etcd, the apiserver, helm)
//! holds the write end open.
//!
//! etcd, the apiserver, the controller-manager and the watchdog each run in their own process group, so a Ctrl-C on the
//! terminal reaches only the test process; the watchdog ignores INT, HUP and TERM and cleans up
//! once the test process is gone.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write as _};
use std::net::TcpListener;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine as _;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleRef, Subject};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::AuthInfo;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// Field manager of every write the harness makes.
pub const FIELD_MANAGER: &str = "idp-bridge-tests";
/// Environment variable naming a directory that already holds the binaries.
pub const BIN_DIR_ENV: &str = "IDP_BRIDGE_BIN_DIR";
/// Environment variable overriding the start-up timeout of each server, in seconds.
pub const TIMEOUT_ENV: &str = "IDP_BRIDGE_CONTROL_PLANE_TIMEOUT";

const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(90);
const NAMESPACE_TIMEOUT: Duration = Duration::from_secs(30);
const CRD_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_GRACE: Duration = Duration::from_secs(10);
const LOG_TAIL_LINES: usize = 60;
const START_ATTEMPTS: usize = 3;

/// The controllers the tests rely on: deleted namespaces are emptied and removed, dependents of a
/// deleted owner are collected.
const CONTROLLERS: [&str; 2] = ["namespace-controller", "garbage-collector-controller"];
/// The bootstrap ClusterRoles of those controllers, bound to [`CONTROLLER_MANAGER_USER`].
const CONTROLLER_ROLES: [&str; 2] = ["system:controller:namespace-controller", "system:controller:generic-garbage-collector"];
/// The user name the bootstrap RBAC policy grants the controller-manager's own role to.
const CONTROLLER_MANAGER_USER: &str = "system:kube-controller-manager";
const CONTROLLER_MANAGER_KUBECONFIG: &str = "kube-controller-manager.kubeconfig";

const HOW_TO_BUILD: &str = "build them with `bash scripts/control-plane-bins.sh` (needs Go >= 1.25 and the Go module proxy; \
     a cold build takes 10-20 minutes) and/or point IDP_BRIDGE_BIN_DIR at the directory it prints last";

/// Everything that can go wrong while providing a control plane.
#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error("control-plane binaries are not available: {0}")]
    Binaries(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("building an HTTP client for readiness checks: {0}")]
    HttpClient(String),
    #[error("generating certificates: {0}")]
    Certificates(#[from] rcgen::Error),
    #[error("etcd did not become healthy within {waited:?}: {reason}\n{logs}")]
    EtcdNotReady { waited: Duration, reason: String, logs: String },
    #[error("kube-apiserver did not become ready within {waited:?}: {reason}\n{logs}")]
    ApiServerNotReady { waited: Duration, reason: String, logs: String },
    #[error("kube-controller-manager did not become healthy within {waited:?}: {reason}\n{logs}")]
    ControllerManagerNotReady { waited: Duration, reason: String, logs: String },
    #[error("{process} exited during start-up ({status})\n{logs}")]
    Exited { process: &'static str, status: ExitStatus, logs: String },
    #[error("namespace `default` did not appear within {waited:?}: {reason}\n{logs}")]
    DefaultNamespace { waited: Duration, reason: String, logs: String },
    #[error("building a Kubernetes client: {0}")]
    Client(#[source] Box<kube::Error>),
    #[error("{context}: {source}")]
    Kube {
        context: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("CRD {name} was not established and served within {waited:?}: {reason}")]
    CrdNotEstablished { name: String, waited: Duration, reason: String },
    #[error("installing the CRDs during start-up: {source}\n{logs}")]
    CrdsNotInstalled {
        #[source]
        source: Box<ControlPlaneError>,
        logs: String,
    },
}

impl ControlPlaneError {
    fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }

    fn kube(context: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let context = context.into();
        move |source| Self::Kube { context, source: Box::new(source) }
    }

    /// Whether the failure is a lost race for a port that was free a moment earlier.
    fn is_address_in_use(&self) -> bool {
        let logs = match self {
            Self::EtcdNotReady { logs, .. }
            | Self::ApiServerNotReady { logs, .. }
            | Self::ControllerManagerNotReady { logs, .. }
            | Self::Exited { logs, .. }
            | Self::DefaultNamespace { logs, .. } => logs,
            _ => return false,
        };
        logs.contains("address already in use")
    }
}

/// The binaries every control plane needs; `helm` is optional (only the chart tests use it).
const REQUIRED_BINARIES: [&str; 4] = ["etcd", "kube-apiserver", "kube-controller-manager", "kubectl"];

/// The directory holding `etcd`, `kube-apiserver`, `kube-controller-manager`, `kubectl` and
/// (optionally) `helm`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BinDir {
    pub dir: PathBuf,
}

impl BinDir {
    pub fn etcd(&self) -> PathBuf {
        self.dir.join("etcd")
    }

    pub fn kube_apiserver(&self) -> PathBuf {
        self.dir.join("kube-apiserver")
    }

    pub fn kube_controller_manager(&self) -> PathBuf {
        self.dir.join("kube-controller-manager")
    }

    /// kubectl of the apiserver's version; [`ControlPlane::kubectl`] points it at a control plane.
    pub fn kubectl(&self) -> PathBuf {
        self.dir.join("kubectl")
    }

    /// The helm binary; an error if the directory has none.
    pub fn helm(&self) -> Result<PathBuf, ControlPlaneError> {
        let helm = self.dir.join("helm");
        if is_executable(&helm) {
            Ok(helm)
        } else {
            Err(ControlPlaneError::Binaries(format!("{} has no helm binary; {HOW_TO_BUILD}", self.dir.display())))
        }
    }

    fn check(self) -> Result<Self, String> {
        let missing: Vec<_> = REQUIRED_BINARIES.into_iter().filter(|name| !is_executable(&self.dir.join(name))).collect();
        match missing.split_last() {
            None => Ok(self),
            Some((last, [])) => Err(format!("{} is missing {last}; {HOW_TO_BUILD}", self.dir.display())),
            Some((last, others)) => Err(format!("{} is missing {} and {last}; {HOW_TO_BUILD}", self.dir.display(), others.join(", "))),
        }
    }
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Finds the binaries: `$IDP_BRIDGE_BIN_DIR` if set, otherwise the directory that
/// `scripts/control-plane-bins.sh` prints last (the script builds them first if they are not
/// cached; its progress goes to stderr). Runs once per process; missing binaries are an error.
pub fn binaries() -> Result<BinDir, ControlPlaneError> {
    static BINARIES: OnceLock<Result<BinDir, String>> = OnceLock::new();
    BINARIES.get_or_init(locate_binaries).clone().map_err(ControlPlaneError::Binaries)
}

fn locate_binaries() -> Result<BinDir, String> {
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV).filter(|d| !d.is_empty()) {
        return BinDir { dir: PathBuf::from(dir) }.check().map_err(|e| format!("{BIN_DIR_ENV}: {e}"));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/control-plane-bins.sh");
    let output = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("running {}: {e}; {HOW_TO_BUILD}", script.display()))?;
    if !output.status.success() {
        return Err(format!("{} failed ({}), see its output above; {HOW_TO_BUILD}", script.display(), output.status));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let dir = stdout
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .ok_or_else(|| format!("{} printed no directory; {HOW_TO_BUILD}", script.display()))?;
    BinDir { dir: PathBuf::from(dir) }.check()
}

/// A progress line on stderr. Written to the handle rather than with `eprintln!`, which libtest
/// captures: the start-up time should show in a plain `cargo test` run.
fn note(message: &str) {
    let _ = writeln!(io::stderr(), "[idp-bridge] {message}");
}

pub use idp_bridge::install_crypto_provider;

/// PEM material the harness generates.
struct Pki {
    serving_ca_pem: String,
    serving_ca_der: Vec<u8>,
    serving_cert_pem: String,
    serving_key_pem: String,
    sa_key_pem: String,
    sa_pub_pem: String,
    client_ca_pem: String,
    admin_cert_pem: String,
    admin_key_pem: String,
    controller_manager_cert_pem: String,
    controller_manager_key_pem: String,
}

fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.distinguished_name.push(DnType::OrganizationName, "idp-bridge");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

impl Pki {
    fn generate() -> Result<Self, rcgen::Error> {
        let serving_ca_key = KeyPair::generate()?;
        let serving_ca_params = ca_params("idp-bridge-serving-ca");
        let serving_ca = serving_ca_params.self_signed(&serving_ca_key)?;
        let serving_issuer = Issuer::new(serving_ca_params, serving_ca_key);

        let serving_key = KeyPair::generate()?;
        let mut serving = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
        serving.distinguished_name.push(DnType::CommonName, "localhost");
        serving.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        serving.use_authority_key_identifier_extension = true;
        let serving_cert = serving.signed_by(&serving_key, &serving_issuer)?;

        let sa_key = KeyPair::generate()?;

        let client_ca_key = KeyPair::generate()?;
        let client_ca_params = ca_params("idp-bridge-client-ca");
        let client_ca = client_ca_params.self_signed(&client_ca_key)?;
        let client_issuer = Issuer::new(client_ca_params, client_ca_key);

        let (admin_cert_pem, admin_key_pem) = client_cert("admin", Some("system:masters"), &client_issuer)?;
        // The user the bootstrap RBAC policy knows as the controller-manager; no group, so it
        // gets exactly what `grant_controller_roles` binds and nothing from system:masters.
        let (controller_manager_cert_pem, controller_manager_key_pem) = client_cert(CONTROLLER_MANAGER_USER, None, &client_issuer)?;

        Ok(Self {
            serving_ca_pem: serving_ca.pem(),
            serving_ca_der: serving_ca.der().to_vec(),
            serving_cert_pem: serving_cert.pem(),
            serving_key_pem: serving_key.serialize_pem(),
            sa_key_pem: sa_key.serialize_pem(),
            sa_pub_pem: sa_key.public_key_pem(),
            client_ca_pem: client_ca.pem(),
            admin_cert_pem,
            admin_key_pem,
            controller_manager_cert_pem,
            controller_manager_key_pem,
        })
    }
}

/// A client certificate and its key, in PEM, for user `common_name` in `organization` (a group).
fn client_cert(common_name: &str, organization: Option<&str>, issuer: &Issuer<'_, KeyPair>) -> Result<(String, String), rcgen::Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, common_name);
    if let Some(organization) = organization {
        params.distinguished_name.push(DnType::OrganizationName, organization);
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    Ok((params.signed_by(&key, issuer)?.pem(), key.serialize_pem()))
}

/// Running processes of one control plane.
struct Processes {
    /// The watchdog `sh`; its stdin is the pipe whose end-of-file means "this process is gone".
    watchdog: Child,
    controller_manager: Option<Child>,
    apiserver: Option<Child>,
    etcd: Option<Child>,
}

impl Processes {
    /// Tells the watchdog about a process group it must kill if this process disappears.
    fn guard(&mut self, pgid: u32) -> io::Result<()> {
        let stdin = self.watchdog.stdin.as_mut().ok_or_else(|| io::Error::other("watchdog stdin is closed"))?;
        writeln!(stdin, "{pgid}")?;
        stdin.flush()
    }

    /// Stops everything: the watchdog first (so it cannot signal reused pids later), then the
    /// controller-manager, the apiserver and etcd, each with SIGTERM and, after [`STOP_GRACE`],
    /// SIGKILL.
    fn stop(&mut self) {
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
        for child in [self.controller_manager.take(), self.apiserver.take(), self.etcd.take()].into_iter().flatten() {
            terminate_group(child);
        }
    }
}

fn signal_group(pgid: u32, signal: libc::c_int) {
    if let Ok(pgid) = libc::pid_t::try_from(pgid) {
        // SAFETY: kill(2) has no memory-safety preconditions; a negative pid addresses the
        // process group this harness created for the child.
        unsafe {
            libc::kill(-pgid, signal);
        }
    }
}

/// SIGTERM to the child's process group, up to [`STOP_GRACE`] to exit, then SIGKILL.
fn terminate_group(mut child: Child) {
    let pgid = child.id();
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    signal_group(pgid, libc::SIGTERM);
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_)) | Err(_)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    signal_group(pgid, libc::SIGKILL);
    let _ = child.wait();
}

/// The watchdog (see the module docs). `$1` is the temp dir; stdin carries one process group
/// id per line and ends when the test process ends. Groups are stopped in reverse order (the
/// controller-manager, then the apiserver before etcd: without etcd it takes much longer to shut
/// down), each with SIGTERM and
/// SIGKILL after 10 s. dash's `kill` takes no `--`.
const WATCHDOG_SCRIPT: &str = r#"
trap '' INT HUP TERM
groups=""
while read -r pg; do groups="$pg $groups"; done
for pg in $groups; do
  kill -TERM -"$pg" 2>/dev/null
  i=0
  while [ "$i" -lt 100 ] && kill -0 -"$pg" 2>/dev/null; do sleep 0.1; i=$((i + 1)); done
  kill -KILL -"$pg" 2>/dev/null
done
rm -rf -- "$1"
"#;

fn spawn_watchdog(dir: &Path) -> io::Result<Child> {
    Command::new("sh")
        .arg("-c")
        .arg(WATCHDOG_SCRIPT)
        .arg("idp-bridge-watchdog")
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
}

/// Appends to `log`, so that a restarted server's log follows the one it replaces.
fn spawn_logged(binary: &Path, args: &[String], log: &Path) -> io::Result<Child> {
    let out = fs::OpenOptions::new().create(true).append(true).open(log)?;
    let err = out.try_clone()?;
    Command::new(binary).args(args).stdin(Stdio::null()).stdout(out).stderr(err).process_group(0).spawn()
}

/// Last `lines` lines of a file, or a note that it cannot be read.
fn file_tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Picks `n` distinct free loopback ports. Another process may take one before the server binds
/// it; start-up retries on "address already in use".
fn free_ports<const N: usize>() -> io::Result<[u16; N]> {
    let listeners = (0..N).map(|_| TcpListener::bind("127.0.0.1:0")).collect::<io::Result<Vec<_>>>()?;
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

fn start_timeout() -> Duration {
    std::env::var(TIMEOUT_ENV).ok().and_then(|s| s.parse::<u64>().ok()).map(Duration::from_secs).unwrap_or(DEFAULT_START_TIMEOUT)
}

/// A private temp dir, created 0700.
fn create_temp_dir() -> io::Result<PathBuf> {
    let base = std::env::temp_dir();
    for _ in 0..16 {
        let dir = base.join(format!("idp-bridge-cp-{}-{}", std::process::id(), random_suffix(8)));
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("could not create a unique temp dir"))
}

fn random_suffix(len: usize) -> String {
    use rand::Rng as _;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len).map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())])).collect()
}

/// `prefix` plus a short random suffix, a valid DNS-1123 label (and so a valid name for any
/// object): lowercased, other characters turned into `-`, at most 63 characters.
pub fn unique_name(prefix: &str) -> String {
    let mut clean: String = prefix.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    clean.truncate(56);
    let clean = clean.trim_matches('-');
    if clean.is_empty() { format!("x-{}", random_suffix(6)) } else { format!("{clean}-{}", random_suffix(6)) }
}

/// A running kube-apiserver, etcd and kube-controller-manager on loopback. Dropping it (or
/// [`ControlPlane::stop`]) stops them and removes the temp dir; the watchdog does the same if the
/// process ends first.
///
/// It holds no `kube::Client`: a client is bound to the tokio runtime that created it, and tests
/// share one control plane across many runtimes. Call [`ControlPlane::client`] in each.
pub struct ControlPlane {
    dir: PathBuf,
    server_url: String,
    etcd_url: String,
    controller_manager_url: String,
    kubeconfig_path: PathBuf,
    kubectl: PathBuf,
    pki: Pki,
    started_in: Duration,
    /// Part of `started_in`: until the API was usable, before the controller-manager started.
    api_ready_in: Duration,
    processes: Option<Processes>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("server_url", &self.server_url)
            .field("etcd_url", &self.etcd_url)
            .field("controller_manager_url", &self.controller_manager_url)
            .field("dir", &self.dir)
            .field("running", &self.processes.is_some())
            .finish_non_exhaustive()
    }
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver and kube-controller-manager and waits until the API is usable
    /// and the controller-manager healthy. On failure all are stopped and the error carries the
    /// tail of every log.
    pub async fn start() -> Result<ControlPlane, ControlPlaneError> {
        Self::start_with_crds(&[]).await
    }

    /// [`ControlPlane::start`], with `crds` installed (see [`install_crds`]) before the
    /// controller-manager starts: its garbage collector then knows their kinds from the start.
    /// It refreshes discovery only every 30 s, so a dependent of a custom resource installed
    /// later may wait that long to be collected.
    pub async fn start_with_crds(crds: &[CustomResourceDefinition]) -> Result<ControlPlane, ControlPlaneError> {
        install_crypto_provider();
        let bins = tokio::task::spawn_blocking(binaries)
            .await
            .map_err(|e| ControlPlaneError::Binaries(format!("locating binaries panicked: {e}")))??;
        let started = Instant::now();
        let mut attempt = 1;
        loop {
            match Self::start_once(&bins, crds, started).await {
                Ok(cp) => {
                    note(&format!(
                        "control plane ready in {:.1}s (API usable after {:.1}s): {} (etcd {}, files in {})",
                        cp.started_in.as_secs_f64(),
                        cp.api_ready_in.as_secs_f64(),
                        cp.server_url,
                        cp.etcd_url,
                        cp.dir.display()
                    ));
                    return Ok(cp);
                }
                Err(e) if attempt < START_ATTEMPTS && e.is_address_in_use() => {
                    note(&format!("control plane lost a race for a port, retrying (attempt {attempt})"));
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn start_once(bins: &BinDir, crds: &[CustomResourceDefinition], started: Instant) -> Result<ControlPlane, ControlPlaneError> {
        let pki = Pki::generate()?;
        let [etcd_port, peer_port, api_port, controller_manager_port] =
            free_ports().map_err(ControlPlaneError::io("picking free loopback ports"))?;
        let dir = create_temp_dir().map_err(ControlPlaneError::io("creating the control plane's temp dir"))?;
        let watchdog = match spawn_watchdog(&dir) {
            Ok(w) => w,
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(ControlPlaneError::io("spawning the watchdog")(e));
            }
        };
        let mut cp = ControlPlane {
            server_url: format!("https://127.0.0.1:{api_port}"),
            etcd_url: format!("http://127.0.0.1:{etcd_port}"),
            controller_manager_url: format!("https://127.0.0.1:{controller_manager_port}"),
            kubeconfig_path: dir.join("kubeconfig"),
            kubectl: bins.kubectl(),
            dir,
            pki,
            started_in: Duration::ZERO,
            api_ready_in: Duration::ZERO,
            processes: Some(Processes { watchdog, controller_manager: None, apiserver: None, etcd: None }),
        };
        // On error `cp` drops here, which stops whatever was started and removes the dir.
        cp.write_files()?;
        cp.spawn_etcd(bins, peer_port)?;
        cp.wait_etcd().await?;
        cp.spawn_apiserver(bins, api_port)?;
        cp.wait_apiserver().await?;
        cp.api_ready_in = started.elapsed();
        let client = kube::Client::try_from(cp.config()).map_err(|e| ControlPlaneError::Client(Box::new(e)))?;
        if let Err(e) = install_crds(&client, crds).await {
            return Err(ControlPlaneError::CrdsNotInstalled { source: Box::new(e), logs: cp.logs_tail(LOG_TAIL_LINES) });
        }
        grant_controller_roles(&client).await?;
        cp.spawn_controller_manager(bins, controller_manager_port)?;
        cp.wait_default_namespace(&client).await?;
        cp.wait_controller_manager().await?;
        cp.started_in = started.elapsed();
        Ok(cp)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn write_files(&self) -> Result<(), ControlPlaneError> {
        let pki = &self.pki;
        let pki_dir = self.path("pki");
        fs::DirBuilder::new().mode(0o700).create(&pki_dir).map_err(ControlPlaneError::io("creating the pki dir"))?;
        for (name, pem) in [
            ("serving-ca.crt", &pki.serving_ca_pem),
            ("apiserver.crt", &pki.serving_cert_pem),
            ("apiserver.key", &pki.serving_key_pem),
            ("sa-signer.key", &pki.sa_key_pem),
            ("sa-signer.pub", &pki.sa_pub_pem),
            ("client-ca.crt", &pki.client_ca_pem),
            ("admin.crt", &pki.admin_cert_pem),
            ("admin.key", &pki.admin_key_pem),
        ] {
            write_private(&pki_dir.join(name), pem.as_bytes())?;
        }
        let admin = self.kubeconfig_value("admin", &pki.admin_cert_pem, &pki.admin_key_pem);
        write_private(&self.kubeconfig_path, serde_yaml::to_string(&admin).expect("a kubeconfig serializes").as_bytes())?;
        let controller_manager =
            self.kubeconfig_value(CONTROLLER_MANAGER_USER, &pki.controller_manager_cert_pem, &pki.controller_manager_key_pem);
        write_private(
            &self.path(CONTROLLER_MANAGER_KUBECONFIG),
            serde_yaml::to_string(&controller_manager).expect("a kubeconfig serializes").as_bytes(),
        )
    }

    fn kubeconfig_value(&self, user: &str, cert_pem: &str, key_pem: &str) -> serde_json::Value {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "idp-bridge-test", "cluster": {
                "server": self.server_url,
                "certificate-authority-data": b64(&self.pki.serving_ca_pem),
            }}],
            "users": [{"name": user, "user": {
                "client-certificate-data": b64(cert_pem),
                "client-key-data": b64(key_pem),
            }}],
            "contexts": [{"name": "idp-bridge-test", "context": {
                "cluster": "idp-bridge-test", "user": user, "namespace": "default",
            }}],
            "current-context": "idp-bridge-test",
            "preferences": {},
        })
    }

    fn processes(&mut self) -> &mut Processes {
        self.processes.as_mut().expect("the control plane is running")
    }

    fn spawn_etcd(&mut self, bins: &BinDir, peer_port: u16) -> Result<(), ControlPlaneError> {
        let peer = format!("http://127.0.0.1:{peer_port}");
        let mut args = vec![
            "--name=idp-bridge".to_owned(),
            format!("--listen-client-urls={}", self.etcd_url),
            format!("--advertise-client-urls={}", self.etcd_url),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster=idp-bridge={peer}"),
            format!("--data-dir={}", self.path("etcd-data").display()),
        ];
        if etcd_supports_no_fsync(&bins.etcd()) {
            args.push("--unsafe-no-fsync=true".to_owned());
        }
        let child = spawn_logged(&bins.etcd(), &args, &self.path("etcd.log"))
            .map_err(ControlPlaneError::io(format!("spawning {}", bins.etcd().display())))?;
        let pgid = child.id();
        let processes = self.processes();
        processes.etcd = Some(child);
        processes.guard(pgid).map_err(ControlPlaneError::io("registering etcd with the watchdog"))
    }

    fn spawn_apiserver(&mut self, bins: &BinDir, port: u16) -> Result<(), ControlPlaneError> {
        let pki = self.path("pki");
        let p = |name: &str| pki.join(name).display().to_string();
        // envtest's defaultArgs, plus explicit serving cert files.
        let args = vec![
            format!("--etcd-servers={}", self.etcd_url),
            format!("--cert-dir={}", pki.display()),
            format!("--tls-cert-file={}", p("apiserver.crt")),
            format!("--tls-private-key-file={}", p("apiserver.key")),
            format!("--secure-port={port}"),
            "--bind-address=127.0.0.1".to_owned(),
            "--service-cluster-ip-range=10.0.0.0/24".to_owned(),
            "--allow-privileged=true".to_owned(),
            "--authorization-mode=RBAC".to_owned(),
            // No controller-manager creates the default ServiceAccount.
            "--disable-admission-plugins=ServiceAccount".to_owned(),
            format!("--service-account-issuer=https://127.0.0.1:{port}/"),
            format!("--service-account-key-file={}", p("sa-signer.pub")),
            format!("--service-account-signing-key-file={}", p("sa-signer.key")),
            format!("--client-ca-file={}", p("client-ca.crt")),
        ];
        let child = spawn_logged(&bins.kube_apiserver(), &args, &self.path("kube-apiserver.log"))
            .map_err(ControlPlaneError::io(format!("spawning {}", bins.kube_apiserver().display())))?;
        let pgid = child.id();
        let processes = self.processes();
        processes.apiserver = Some(child);
        processes.guard(pgid).map_err(ControlPlaneError::io("registering kube-apiserver with the watchdog"))
    }

    /// The controller-manager with only the controllers the tests need. It acts as its own user
    /// (`--use-service-account-credentials=false`: no per-controller ServiceAccounts and tokens
    /// to set up first) and serves `/healthz` with the apiserver's serving certificate, which is
    /// valid for 127.0.0.1. The authentication and authorization kubeconfigs are given so that it
    /// never falls back to an in-cluster configuration when the tests run inside a Pod.
    fn spawn_controller_manager(&mut self, bins: &BinDir, port: u16) -> Result<(), ControlPlaneError> {
        let pki = self.path("pki");
        let p = |name: &str| pki.join(name).display().to_string();
        let kubeconfig = self.path(CONTROLLER_MANAGER_KUBECONFIG).display().to_string();
        let args = vec![
            format!("--kubeconfig={kubeconfig}"),
            format!("--authentication-kubeconfig={kubeconfig}"),
            format!("--authorization-kubeconfig={kubeconfig}"),
            // The apiserver has no request-header CA to publish; looking it up only logs errors.
            "--authentication-skip-lookup=true".to_owned(),
            format!("--controllers={}", CONTROLLERS.join(",")),
            "--leader-elect=false".to_owned(),
            "--use-service-account-credentials=false".to_owned(),
            format!("--secure-port={port}"),
            "--bind-address=127.0.0.1".to_owned(),
            format!("--tls-cert-file={}", p("apiserver.crt")),
            format!("--tls-private-key-file={}", p("apiserver.key")),
            "--profiling=false".to_owned(),
        ];
        let binary = bins.kube_controller_manager();
        let child = spawn_logged(&binary, &args, &self.path("kube-controller-manager.log"))
            .map_err(ControlPlaneError::io(format!("spawning {}", binary.display())))?;
        let pgid = child.id();
        let processes = self.processes();
        processes.controller_manager = Some(child);
        processes.guard(pgid).map_err(ControlPlaneError::io("registering kube-controller-manager with the watchdog"))
    }

    /// An error if etcd, the apiserver or the controller-manager has exited.
    fn check_alive(&mut self) -> Result<(), ControlPlaneError> {
        let processes = self.processes();
        let mut exited = None;
        for (process, child) in [
            ("etcd", &mut processes.etcd),
            ("kube-apiserver", &mut processes.apiserver),
            ("kube-controller-manager", &mut processes.controller_manager),
        ] {
            if let Some(c) = child
                && let Ok(Some(status)) = c.try_wait()
            {
                exited = Some((process, status));
                break;
            }
        }
        match exited {
            Some((process, status)) => Err(ControlPlaneError::Exited { process, status, logs: self.logs_tail(LOG_TAIL_LINES) }),
            None => Ok(()),
        }
    }

    async fn wait_etcd(&mut self) -> Result<(), ControlPlaneError> {
        let http =
            reqwest::Client::builder().timeout(Duration::from_secs(5)).build().map_err(|e| ControlPlaneError::HttpClient(e.to_string()))?;
        let url = format!("{}/health", self.etcd_url);
        let timeout = start_timeout();
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            let last = match http.get(&url).send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let body = resp.text().await.unwrap_or_default();
                    if status.is_success() && body.contains("true") {
                        return Ok(());
                    }
                    format!("{status}: {body}")
                }
                Err(e) => format!("{e:?}"),
            };
            if Instant::now() > deadline {
                return Err(ControlPlaneError::EtcdNotReady { waited: timeout, reason: last, logs: self.logs_tail(LOG_TAIL_LINES) });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// An HTTPS client trusting only the serving CA, for the anonymous health endpoints.
    fn health_client(&self) -> Result<reqwest::Client, ControlPlaneError> {
        let ca = reqwest::Certificate::from_pem(self.pki.serving_ca_pem.as_bytes())
            .map_err(|e| ControlPlaneError::HttpClient(format!("loading the serving CA: {e}")))?;
        reqwest::Client::builder()
            .tls_certs_only([ca])
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| ControlPlaneError::HttpClient(e.to_string()))
    }

    async fn wait_apiserver(&mut self) -> Result<(), ControlPlaneError> {
        let http = self.health_client()?;
        // `/readyz` is readable anonymously (system:public-info-viewer).
        let url = format!("{}/readyz?verbose", self.server_url);
        let timeout = start_timeout();
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            let last = match http.get(&url).send().await {
                Ok(resp) if resp.status().is_success() => return Ok(()),
                Ok(resp) => {
                    let status = resp.status();
                    let body = resp.text().await.unwrap_or_default();
                    let failing: Vec<&str> = body.lines().filter(|l| l.contains("failed")).collect();
                    let detail = if failing.is_empty() { body.trim().to_owned() } else { failing.join("; ") };
                    format!("{status}: {detail}")
                }
                Err(e) => format!("{e:?}"),
            };
            if Instant::now() > deadline {
                return Err(ControlPlaneError::ApiServerNotReady { waited: timeout, reason: last, logs: self.logs_tail(LOG_TAIL_LINES) });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the controller-manager serves `/healthz` (always allowed anonymously). It
    /// serves it once its controllers are started; they act as soon as their informers have
    /// synced, a moment later, so tests still wait for an effect with a bounded poll.
    async fn wait_controller_manager(&mut self) -> Result<(), ControlPlaneError> {
        let http = self.health_client()?;
        let url = format!("{}/healthz", self.controller_manager_url);
        let timeout = start_timeout();
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            let last = match http.get(&url).send().await {
                Ok(resp) if resp.status().is_success() => return Ok(()),
                Ok(resp) => format!("{}: {}", resp.status(), resp.text().await.unwrap_or_default().trim()),
                Err(e) => format!("{e:?}"),
            };
            if Instant::now() > deadline {
                return Err(ControlPlaneError::ControllerManagerNotReady {
                    waited: timeout,
                    reason: last,
                    logs: self.logs_tail(LOG_TAIL_LINES),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_default_namespace(&mut self, client: &kube::Client) -> Result<(), ControlPlaneError> {
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let deadline = Instant::now() + NAMESPACE_TIMEOUT;
        loop {
            self.check_alive()?;
            let reason = match namespaces.get_opt("default").await {
                Ok(Some(_)) => return Ok(()),
                Ok(None) => "not found".to_owned(),
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                return Err(ControlPlaneError::DefaultNamespace {
                    waited: NAMESPACE_TIMEOUT,
                    reason,
                    logs: self.logs_tail(LOG_TAIL_LINES),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops kube-apiserver (SIGTERM, then SIGKILL after [`STOP_GRACE`]) and leaves etcd and the
    /// controller-manager running: clients see their connections refused, as during an upgrade
    /// of the control plane, until [`ControlPlane::restart_apiserver`].
    pub fn stop_apiserver(&mut self) {
        if let Some(child) = self.processes().apiserver.take() {
            terminate_group(child);
        }
    }

    /// Starts kube-apiserver again on the same port, certificates and etcd (everything stored
    /// is still there), and waits until it is ready.
    pub async fn restart_apiserver(&mut self) -> Result<(), ControlPlaneError> {
        self.stop_apiserver();
        let bins = tokio::task::spawn_blocking(binaries)
            .await
            .map_err(|e| ControlPlaneError::Binaries(format!("locating binaries panicked: {e}")))??;
        let port = self.server_url.rsplit(':').next().and_then(|p| p.parse().ok()).expect("the server URL ends with its port");
        self.spawn_apiserver(&bins, port)?;
        self.wait_apiserver().await
    }

    /// A fresh client configuration for the admin user (`system:masters`, bypasses RBAC). Build
    /// the `kube::Client` in the runtime that uses it.
    pub fn config(&self) -> kube::Config {
        self.config_with(None, &[])
    }

    /// The admin's certificate plus impersonation of `user` in `groups`, to test what RBAC lets
    /// that identity do. Add `system:authenticated` to `groups` if the rules rely on it.
    pub fn impersonating_config(&self, user: &str, groups: &[&str]) -> kube::Config {
        self.config_with(Some(user), groups)
    }

    fn config_with(&self, user: Option<&str>, groups: &[&str]) -> kube::Config {
        install_crypto_provider();
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let mut auth = serde_json::json!({
            "client-certificate-data": b64(&self.pki.admin_cert_pem),
            "client-key-data": b64(&self.pki.admin_key_pem),
        });
        if let Some(user) = user {
            auth["as"] = user.into();
            if !groups.is_empty() {
                auth["as-groups"] = groups.iter().map(|g| serde_json::Value::from(*g)).collect();
            }
        }
        let mut config = kube::Config::new(self.server_url.parse().expect("the server URL is a valid URI"));
        config.root_cert = Some(vec![self.pki.serving_ca_der.clone()]);
        config.auth_info = serde_json::from_value::<AuthInfo>(auth).expect("an AuthInfo deserializes");
        config
    }

    /// A new admin client bound to the current tokio runtime.
    pub async fn client(&self) -> kube::Client {
        kube::Client::try_from(self.config()).expect("a client for the test control plane")
    }

    /// A kubeconfig file (embedded CA, client cert and key; context namespace `default`) for
    /// helm, kubectl or an operator subprocess.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// The real kubectl, as the admin of this control plane (`--kubeconfig` set; the context's
    /// namespace is `default`). Add the arguments and run it.
    pub fn kubectl(&self) -> Command {
        let mut kubectl = Command::new(&self.kubectl);
        kubectl.arg("--kubeconfig").arg(&self.kubeconfig_path).stdin(Stdio::null());
        kubectl
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> String {
        self.server_url.clone()
    }

    /// `https://127.0.0.1:<port>` of the controller-manager's `/healthz` (same serving CA).
    pub fn controller_manager_url(&self) -> String {
        self.controller_manager_url.clone()
    }

    /// The serving CA in PEM, for clients configured by hand.
    pub fn ca_pem(&self) -> &str {
        &self.pki.serving_ca_pem
    }

    /// The temp dir holding certificates, the kubeconfig, logs and etcd's data.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How long start-up took, from spawning etcd to namespace `default` being readable and the
    /// controller-manager healthy.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// The last `lines` lines of the etcd, kube-apiserver and kube-controller-manager logs, each
    /// under a heading.
    pub fn logs_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for name in ["etcd.log", "kube-apiserver.log", "kube-controller-manager.log"] {
            let path = self.path(name);
            if path.exists() {
                let _ = writeln!(out, "----- last {lines} lines of {} -----", path.display());
                let _ = writeln!(out, "{}", file_tail(&path, lines));
            } else {
                let _ = writeln!(out, "----- {} was not started -----", path.display());
            }
        }
        out
    }

    /// Stops the controller-manager, the apiserver, then etcd (SIGTERM, SIGKILL after ~10 s
    /// each), and removes the temp dir. Idempotent; `Drop` calls it.
    pub fn stop(&mut self) {
        if let Some(mut processes) = self.processes.take() {
            processes.stop();
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

fn write_private(path: &Path, contents: &[u8]) -> Result<(), ControlPlaneError> {
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(contents))
        .map_err(ControlPlaneError::io(format!("writing {}", path.display())))
}

/// Whether this etcd knows `--unsafe-no-fsync` (3.5 and later), as envtest checks.
fn etcd_supports_no_fsync(etcd: &Path) -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        Command::new(etcd).arg("--help").stdin(Stdio::null()).output().is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout).contains("unsafe-no-fsync") || String::from_utf8_lossy(&o.stderr).contains("unsafe-no-fsync")
        })
    })
}

/// Binds the bootstrap ClusterRoles of the namespace and garbage-collector controllers to the
/// controller-manager's user: acting as itself, it needs what those controllers' ServiceAccounts
/// get in a real cluster, on top of its own `system:kube-controller-manager` role (informers,
/// tokenreviews, subjectaccessreviews).
async fn grant_controller_roles(client: &kube::Client) -> Result<(), ControlPlaneError> {
    let api: Api<ClusterRoleBinding> = Api::all(client.clone());
    for role in CONTROLLER_ROLES {
        let name = format!("idp-bridge-tests:{role}");
        let binding = ClusterRoleBinding {
            metadata: kube::api::ObjectMeta { name: Some(name.clone()), ..Default::default() },
            role_ref: RoleRef { api_group: "rbac.authorization.k8s.io".to_owned(), kind: "ClusterRole".to_owned(), name: role.to_owned() },
            subjects: Some(vec![Subject {
                api_group: Some("rbac.authorization.k8s.io".to_owned()),
                kind: "User".to_owned(),
                name: CONTROLLER_MANAGER_USER.to_owned(),
                namespace: None,
            }]),
        };
        api.create(&PostParams::default(), &binding)
            .await
            .map_err(ControlPlaneError::kube(format!("creating ClusterRoleBinding {name}")))?;
    }
    Ok(())
}

/// Server-side applies each CRD (field manager [`FIELD_MANAGER`], forced) and waits until it is
/// `Established` and its resources are served by discovery.
pub async fn install_crds(client: &kube::Client, crds: &[CustomResourceDefinition]) -> Result<(), ControlPlaneError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for crd in crds {
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(&name, &params, &Patch::Apply(crd)).await.map_err(ControlPlaneError::kube(format!("applying CRD {name}")))?;
    }
    for crd in crds {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let not_established = |reason: String| ControlPlaneError::CrdNotEstablished { name: name.clone(), waited: CRD_TIMEOUT, reason };
        let established = kube::runtime::wait::await_condition(api.clone(), &name, kube::runtime::wait::conditions::is_crd_established());
        match tokio::time::timeout(CRD_TIMEOUT, established).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(not_established(e.to_string())),
            Err(_) => return Err(not_established("condition Established is not True".to_owned())),
        }
        wait_served(client, crd).await.map_err(not_established)?;
    }
    Ok(())
}

/// Waits until discovery lists the CRD's plural in every served version.
async fn wait_served(client: &kube::Client, crd: &CustomResourceDefinition) -> Result<(), String> {
    let deadline = Instant::now() + CRD_TIMEOUT;
    for version in crd.spec.versions.iter().filter(|v| v.served) {
        let group_version = format!("{}/{}", crd.spec.group, version.name);
        loop {
            let reason = match client.list_api_group_resources(&group_version).await {
                Ok(list) if list.resources.iter().any(|r| r.name == crd.spec.names.plural) => break,
                Ok(_) => format!("{group_version} does not list {} yet", crd.spec.names.plural),
                Err(e) => format!("discovery of {group_version}: {e}"),
            };
            if Instant::now() > deadline {
                return Err(reason);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Creates namespace `name`; an existing one is fine.
pub async fn create_namespace(client: &kube::Client, name: &str) -> Result<(), ControlPlaneError> {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace { metadata: kube::api::ObjectMeta { name: Some(name.to_owned()), ..Default::default() }, ..Default::default() };
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_already_exists() => Ok(()),
        Err(e) => Err(ControlPlaneError::kube(format!("creating namespace {name}"))(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_dns_label(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 63
            && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    }

    #[test]
    fn unique_names_are_dns_labels_and_differ() {
        for prefix in ["crd", "Bad_Prefix!", "", "---", &"x".repeat(100)] {
            let a = unique_name(prefix);
            assert!(is_dns_label(&a), "{a:?}");
            assert_ne!(a, unique_name(prefix));
        }
        assert!(unique_name("crd-validation").starts_with("crd-validation-"));
    }

    #[test]
    fn certificates_generate() {
        let pki = Pki::generate().unwrap();
        assert!(pki.admin_cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(pki.admin_key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(pki.controller_manager_cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert_ne!(pki.controller_manager_cert_pem, pki.admin_cert_pem);
        assert!(pki.sa_pub_pem.starts_with("-----BEGIN PUBLIC KEY-----"));
    }

    #[test]
    fn bin_dir_reports_missing_binaries_with_a_hint() {
        let err = BinDir { dir: PathBuf::from("/nonexistent/idp-bridge") }.check().unwrap_err();
        assert!(err.contains("is missing etcd, kube-apiserver, kube-controller-manager and kubectl;"), "{err}");
        assert!(err.contains("scripts/control-plane-bins.sh"), "{err}");
    }
}
