//! The container image of `scripts/image.sh`, run the way a kubelet runs the chart's pod, without a
//! container engine: the rootfs unpacked from the OCI layout (every blob checked against its
//! digest), the entrypoint as the chart's user with no capabilities and no privilege escalation,
//! on a read-only root in private mount and PID namespaces (`unshare`; the tests run as root, as
//! CI does), with exactly the args and environment of the Deployment the chart installs, the
//! chart's ServiceAccount token and the CA bundle volume mounted where the pod has them, and the
//! chart's readiness probe. It brings a connection to Ready against the emulators and stops on
//! SIGTERM as PID 1, as in a pod.
//!
//! `scripts/test.sh` builds the image (`scripts/image.sh`) before the tests; a missing image
//! fails them.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use crate::{
    chart::{
        apply, auth0_broker, chart, connection, emulator_values, helm_ok, idp, in_a_year, path_str, put_ca_bundle, ready_condition, secret,
        upstreams, values_file, wait_ready,
    },
    common::e2e::{AUTH0_DOMAIN, CLIENT_ID, M2M_CLIENT, M2M_SECRET, TENANT_ID},
};
use idp_bridge_devenv::control_plane::{create_namespace, unique_name};
use k8s_openapi::api::{
    apps::v1::Deployment,
    authentication::v1::TokenRequest,
    core::v1::{ConfigMap, Secret, ServiceAccount},
};
use kube::{
    Api, Client,
    api::{ListParams, PostParams},
};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

const REPOSITORY: &str = "ghcr.io/idp-bridge/idp-bridge";
const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The PATH containerd gives a container whose image sets none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Where the kubelet mounts a pod's ServiceAccount token, and kube's in-cluster config reads it.
const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const WAIT: Duration = Duration::from_secs(60);

/// Where `scripts/image.sh` writes: $IDP_BRIDGE_IMAGE_DIR, else `image/` in the target directory.
fn image_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("IDP_BRIDGE_IMAGE_DIR") {
        return dir.into();
    }
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("image")
}

// ---------------------------------------------------------------------------------------------
// The OCI layout

/// The image in the OCI layout: its manifest, config and layer blobs.
struct OciImage {
    layout: PathBuf,
    config_digest: String,
    config: Value,
    layers: Vec<PathBuf>,
}

/// A blob of the layout, checked against its digest.
fn blob(layout: &Path, digest: &str) -> (PathBuf, Vec<u8>) {
    let hex = digest.strip_prefix("sha256:").unwrap_or_else(|| panic!("{digest} is not a sha256 digest"));
    let path = layout.join("blobs/sha256").join(hex);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("reading blob {}: {e}", path.display()));
    assert_eq!(hex::encode(Sha256::digest(&bytes)), hex, "blob {} matches its digest", path.display());
    (path, bytes)
}

fn json_blob(layout: &Path, digest: &Value) -> Value {
    let (path, bytes) = blob(layout, digest.as_str().expect("a digest string"));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("blob {} is not JSON: {e}", path.display()))
}

/// Reads the one image of the layout; no layout is a failure that says how to build it.
fn read_layout() -> OciImage {
    let layout = image_dir().join("oci");
    let index = std::fs::read(layout.join("index.json"))
        .unwrap_or_else(|e| panic!("no OCI layout at {} ({e}): build the image with scripts/image.sh", layout.display()));
    let index: Value = serde_json::from_slice(&index).expect("index.json is JSON");
    let marker: Value = serde_json::from_slice(&std::fs::read(layout.join("oci-layout")).expect("an oci-layout file")).unwrap();
    assert_eq!(marker["imageLayoutVersion"], "1.0.0");
    let manifests = index["manifests"].as_array().expect("index.json lists manifests");
    assert_eq!(manifests.len(), 1, "the layout holds one image: {index:#}");
    assert_eq!(manifests[0]["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    let manifest = json_blob(&layout, &manifests[0]["digest"]);
    assert_eq!(manifest["config"]["mediaType"], "application/vnd.oci.image.config.v1+json");
    let config = json_blob(&layout, &manifest["config"]["digest"]);
    let layers = manifest["layers"]
        .as_array()
        .expect("the manifest lists layers")
        .iter()
        .map(|layer| {
            assert_eq!(layer["mediaType"], LAYER_MEDIA_TYPE);
            blob(&layout, layer["digest"].as_str().unwrap()).0
        })
        .collect();
    let config_digest = manifest["config"]["digest"].as_str().unwrap().to_owned();
    OciImage { layout, config_digest, config, layers }
}

impl OciImage {
    fn label(&self, name: &str) -> &str {
        let key = format!("org.opencontainers.image.{name}");
        self.config["config"]["Labels"][&key].as_str().unwrap_or_else(|| panic!("the image has no label {key}"))
    }

    fn strings(&self, field: &str) -> Vec<String> {
        self.config["config"][field].as_array().into_iter().flatten().map(|s| s.as_str().unwrap().to_owned()).collect()
    }

    /// The layers extracted in order into `<dir>/rootfs`, as a container runtime does (a single
    /// layer here, so no whiteouts to apply).
    fn unpack(&self, dir: &Path) -> PathBuf {
        let rootfs = dir.join("rootfs");
        std::fs::create_dir(&rootfs).unwrap();
        std::fs::set_permissions(&rootfs, std::fs::Permissions::from_mode(0o755)).unwrap();
        for layer in &self.layers {
            let status = std::process::Command::new("tar")
                .args(["--extract", "--gzip", "--same-owner", "--file"])
                .arg(layer)
                .arg("--directory")
                .arg(&rootfs)
                .status()
                .expect("running tar");
            assert!(status.success(), "extracting {}", layer.display());
        }
        rootfs
    }
}

/// Every path under `root`, relative to it.
fn tree(root: &Path) -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            paths.insert(path.strip_prefix(root).unwrap().display().to_string());
            if path.is_dir() && !path.is_symlink() {
                pending.push(path);
            }
        }
    }
    paths
}

// ---------------------------------------------------------------------------------------------
// A container without a container engine

/// A host directory mounted read-only at a path of the container.
struct Mount {
    source: PathBuf,
    target: String,
}

/// What a kubelet and containerd give one container.
struct ContainerSpec {
    rootfs: PathBuf,
    argv: Vec<String>,
    env: BTreeMap<String, String>,
    uid: u32,
    groups: Vec<u32>,
    mounts: Vec<Mount>,
}

/// Runs in new mount and PID namespaces: the rootfs bind-mounted onto itself, /proc and the
/// volumes mounted, then the rootfs made read-only, then the command (which chroots).
const SANDBOX: &str = r#"set -eu
root=$1 count=$2
shift 2
mount --bind "$root" "$root"
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
while [ "$count" -gt 0 ]; do
  mount --bind -o ro "$1" "$root$2"
  shift 2
  count=$((count - 1))
done
mount -o remount,bind,ro "$root"
exec "$@"
"#;

/// A host tool by absolute path: the container's environment has no PATH of the host.
fn host_tool(name: &str) -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .unwrap_or_else(|| panic!("{name} is not installed (util-linux and coreutils run the image)"))
}

impl ContainerSpec {
    /// `unshare` running the sandbox script, which execs `env -i <the container env>` →
    /// `setpriv --no-new-privs` (allowPrivilegeEscalation: false) → `chroot --userspec` (the
    /// user, dropping every capability) → the entrypoint, which is PID 1 of its namespace.
    fn command(&self) -> tokio::process::Command {
        assert!(running_as_root(), "running the image needs root for the mount namespace (CI runs as root)");
        // Mount points, made in the unpacked rootfs before it turns read-only, as a runtime makes
        // them in the container's own layer; the image itself has none.
        for mount in &self.mounts {
            std::fs::create_dir_all(self.rootfs.join(mount.target.trim_start_matches('/'))).unwrap();
        }
        std::fs::create_dir_all(self.rootfs.join("proc")).unwrap();
        let mut command = tokio::process::Command::new(host_tool("unshare"));
        command.args(["--mount", "--pid", "--fork", "--propagation", "private", "--", "sh", "-c", SANDBOX, "sh"]);
        command.arg(&self.rootfs).arg(self.mounts.len().to_string());
        for mount in &self.mounts {
            command.arg(&mount.source).arg(&mount.target);
        }
        command.arg(host_tool("env")).arg("-i").args(self.env.iter().map(|(k, v)| format!("{k}={v}")));
        command.arg(host_tool("setpriv")).arg("--no-new-privs").arg(host_tool("chroot"));
        let groups: Vec<String> = self.groups.iter().map(u32::to_string).collect();
        command.arg(format!("--userspec={}:{}", self.uid, self.groups[0])).arg(format!("--groups={}", groups.join(",")));
        command.arg(&self.rootfs).args(&self.argv);
        command.env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default()).stdin(Stdio::null()).kill_on_drop(true);
        command
    }
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status").unwrap().lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
}

/// The running container: `unshare`, and the entrypoint's PID as the host sees it.
struct Container {
    unshare: tokio::process::Child,
    pid: u32,
    log: PathBuf,
}

impl Container {
    async fn start(spec: &ContainerSpec, log: PathBuf) -> Container {
        let file = std::fs::File::create(&log).unwrap();
        let mut command = spec.command();
        command.stdout(file.try_clone().unwrap()).stderr(file);
        let unshare = command.spawn().expect("starting unshare");
        let pid = entrypoint_pid(unshare.id().expect("unshare runs"), &log).await;
        Container { unshare, pid, log }
    }

    fn proc_file(&self, name: &str) -> String {
        std::fs::read_to_string(format!("/proc/{}/{name}", self.pid)).unwrap_or_else(|e| panic!("reading /proc/{}/{name}: {e}", self.pid))
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, as the kubelet stops a pod; the entrypoint must exit 0 on its own.
    async fn stop(mut self) -> String {
        signal(self.pid, "TERM");
        let status = tokio::time::timeout(Duration::from_secs(30), self.unshare.wait())
            .await
            .unwrap_or_else(|_| panic!("the container did not stop on SIGTERM:\n{}", self.logs()))
            .unwrap();
        assert!(status.success(), "the container exited with {status} on SIGTERM:\n{}", self.logs());
        self.logs()
    }
}

impl Drop for Container {
    /// The entrypoint is PID 1 of its namespace: killing it ends everything in the container.
    fn drop(&mut self) {
        if self.unshare.try_wait().ok().flatten().is_none() {
            signal(self.pid, "KILL");
        }
    }
}

fn signal(pid: u32, name: &str) {
    let _ = std::process::Command::new(host_tool("kill")).arg(format!("-{name}")).arg(pid.to_string()).status();
}

/// The PID of the entrypoint: unshare's forked child, once it has exec'd past sh, env, setpriv
/// and chroot.
async fn entrypoint_pid(unshare: u32, log: &Path) -> u32 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let children = std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children")).unwrap_or_default();
        if let Some(pid) = children.split_whitespace().next().and_then(|p| p.parse::<u32>().ok())
            && std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "idp-bridge")
        {
            return pid;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the entrypoint did not start:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The fields of /proc/<pid>/status that the pod's security context decides.
fn assert_confined(container: &Container, uid: u32, groups: &[u32]) {
    let status = container.proc_file("status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|| panic!("no {name} in /proc/<pid>/status"))
    };
    assert_eq!(field("Uid"), [uid; 4].map(|u| u.to_string()).join(" "), "runs as the chart's runAsUser");
    assert_eq!(field("Gid"), [groups[0]; 4].map(|g| g.to_string()).join(" "), "runs as the chart's runAsGroup");
    assert_eq!(field("Groups"), groups.iter().map(u32::to_string).collect::<Vec<_>>().join(" "));
    for capabilities in ["CapEff", "CapPrm", "CapInh", "CapAmb"] {
        assert_eq!(field(capabilities), "0000000000000000", "{capabilities}: no capabilities");
    }
    assert_eq!(field("NoNewPrivs"), "1", "allowPrivilegeEscalation: false");
    // Mount points as the process sees them: its root is the image's rootfs, read-only.
    let root_mount = container
        .proc_file("mountinfo")
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .find(|fields| fields[4] == "/")
        .expect("a mount at /");
    assert!(root_mount[5].split(',').any(|o| o == "ro"), "readOnlyRootFilesystem: the root is mounted {}", root_mount[5]);
}

/// The image's own environment with containerd's defaults: PATH when the image sets none,
/// HOSTNAME, and HOME from the image's passwd.
fn runtime_env(image: &OciImage, rootfs: &Path, uid: u32, hostname: &str) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> =
        image.strings("Env").iter().filter_map(|pair| pair.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
    env.entry("PATH".to_owned()).or_insert_with(|| DEFAULT_PATH.to_owned());
    env.insert("HOSTNAME".to_owned(), hostname.to_owned());
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).expect("the image has /etc/passwd");
    let home = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.get(2) == Some(&uid.to_string().as_str()))
        .map(|f| f[5].to_owned())
        .unwrap_or_else(|| panic!("the image's /etc/passwd has no entry for uid {uid}"));
    env.insert("HOME".to_owned(), home);
    env
}

/// The image's user as `uid:gid`.
fn image_user(image: &OciImage) -> (u32, u32) {
    let user = image.config["config"]["User"].as_str().expect("the image names a user");
    let (uid, gid) = user.split_once(':').unwrap_or_else(|| panic!("the image's user {user} is numeric uid:gid"));
    (uid.parse().unwrap(), gid.parse().unwrap())
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn image_holds_the_static_binary_certificates_and_a_nonroot_user_and_no_shell() {
    let image = read_layout();
    let config = &image.config;
    assert_eq!((config["os"].as_str(), config["architecture"].as_str()), (Some("linux"), Some("amd64")));
    assert_eq!(image.strings("Entrypoint"), ["/idp-bridge"]);
    assert_eq!(image.strings("Cmd"), ["run"], "`idp-bridge run` by default; the chart's args start with `run`");
    assert_eq!(image_user(&image), (65532, 65532));
    assert_eq!(image.label("title"), "idp-bridge");
    assert_eq!(image.label("version"), env!("CARGO_PKG_VERSION"));
    assert_eq!(image.label("licenses"), "Apache-2.0");
    assert!(image.label("source").starts_with("https://"), "{}", image.label("source"));
    let revision = image.label("revision");
    assert!(revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit()), "revision is a commit: {revision}");
    image.label("created").parse::<jiff::Timestamp>().expect("created is an RFC 3339 time");

    let dir = tempfile::tempdir().unwrap();
    let rootfs = image.unpack(dir.path());
    let expected: BTreeSet<String> =
        ["etc", "etc/group", "etc/passwd", "etc/ssl", "etc/ssl/certs", "etc/ssl/certs/ca-certificates.crt", "idp-bridge"]
            .map(str::to_owned)
            .into();
    assert_eq!(tree(&rootfs), expected, "the binary, the CA bundle and the user: no shell, no libc");
    let binary = std::fs::metadata(rootfs.join("idp-bridge")).unwrap();
    assert_eq!((binary.mode() & 0o7777, binary.uid(), binary.gid()), (0o755, 0, 0), "root-owned, not writable by the user");
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    assert!(passwd.lines().any(|l| l.starts_with("nonroot:x:65532:65532:")), "{passwd}");
    let group = std::fs::read_to_string(rootfs.join("etc/group")).unwrap();
    assert!(group.lines().any(|l| l.starts_with("nonroot:x:65532:")), "{group}");
    let bundle = std::fs::read_to_string(rootfs.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
    assert!(bundle.matches("-----BEGIN CERTIFICATE-----").count() > 100, "the Debian CA bundle, not an empty file");
    let blobs = image.layout.join("blobs");
    let compressed: u64 =
        tree(&blobs).iter().map(|p| std::fs::metadata(blobs.join(p)).unwrap()).filter(|m| m.is_file()).map(|m| m.len()).sum();
    assert!(compressed < 20 * 1024 * 1024, "the image is {compressed} bytes compressed, over 20 MiB");
}

#[test]
fn docker_load_tarball_holds_the_same_image_under_the_public_name() {
    let image = read_layout();
    let tarball = image_dir().join(format!("idp-bridge-{}.tar", env!("CARGO_PKG_VERSION")));
    let output = std::process::Command::new("tar")
        .args(["--extract", "--to-stdout", "--file"])
        .arg(&tarball)
        .arg("manifest.json")
        .output()
        .expect("running tar");
    assert!(output.status.success(), "no docker load tarball at {}: build the image with scripts/image.sh", tarball.display());
    let manifest: Value = serde_json::from_slice(&output.stdout).expect("manifest.json is JSON");
    let entries = manifest.as_array().expect("manifest.json is a list");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["RepoTags"], json!([format!("{REPOSITORY}:{}", env!("CARGO_PKG_VERSION"))]));
    let config = entries[0]["Config"].as_str().unwrap();
    assert!(config.contains(image.config_digest.trim_start_matches("sha256:")), "the tarball's config {config} is the layout's");
    assert_eq!(entries[0]["Layers"].as_array().map(Vec::len), Some(image.layers.len()));
}

#[test]
fn dockerfile_builds_the_same_content() {
    let dockerfile = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile")).unwrap();
    let script = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/image.sh")).unwrap();
    for expected in [
        "cargo auditable build --release --locked --target x86_64-unknown-linux-musl --bin idp-bridge",
        "CARGO_PROFILE_RELEASE_STRIP=symbols",
        "FROM scratch",
        "COPY scripts/image/passwd /etc/passwd",
        "COPY scripts/image/group /etc/group",
        "/etc/ssl/certs/ca-certificates.crt",
        "USER 65532:65532",
        "EXPOSE 8080",
        r#"ENTRYPOINT ["/idp-bridge"]"#,
        r#"CMD ["run"]"#,
    ] {
        assert!(dockerfile.contains(expected), "the Dockerfile lacks {expected:?}");
    }
    for label in ["title", "description", "version", "revision", "source", "licenses", "created"] {
        let key = format!("org.opencontainers.image.{label}=");
        assert!(dockerfile.contains(&key) && script.contains(&key), "the Dockerfile and scripts/image.sh both set {key}");
    }
    assert!(dockerfile.contains(&format!("ARG VERSION={}", env!("CARGO_PKG_VERSION"))), "the Dockerfile's VERSION follows Cargo.toml");
    let rust = dockerfile.lines().find(|l| l.starts_with("FROM rust:")).expect("a Rust builder stage");
    let rust_version: Vec<u32> =
        rust.trim_start_matches("FROM rust:").split(['-', ' ']).next().unwrap().split('.').map(|p| p.parse().unwrap()).collect();
    assert!(rust_version >= vec![1, 89], "the builder's Rust ({rust}) is at least the crate's rust-version");
    let auditable = script.split("CARGO_AUDITABLE_VERSION:-").nth(1).and_then(|rest| rest.split('}').next());
    let auditable = auditable.expect("scripts/image.sh pins cargo-auditable");
    assert!(dockerfile.contains(&format!("ARG CARGO_AUDITABLE_VERSION={auditable}")), "the Dockerfile pins cargo-auditable {auditable}");
    assert!(dockerfile.contains("cargo install --locked cargo-auditable@${CARGO_AUDITABLE_VERSION}"));
}

#[tokio::test]
async fn image_version_prints_the_version_and_commit() {
    let image = read_layout();
    let dir = tempfile::tempdir().unwrap();
    let rootfs = image.unpack(dir.path());
    let (uid, gid) = image_user(&image);
    let mut argv = image.strings("Entrypoint");
    argv.push("version".to_owned());
    let env = runtime_env(&image, &rootfs, uid, "version");
    let spec = ContainerSpec { rootfs, argv, env, uid, groups: vec![gid], mounts: vec![] };
    let output = spec.command().stdout(Stdio::piped()).stderr(Stdio::piped()).output().await.expect("running the image");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "`idp-bridge version` in the image failed ({}):\n{stderr}", output.status);
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!("idp-bridge {} (commit {})\n", env!("CARGO_PKG_VERSION"), image.label("revision")),
        "the version and the commit the image is labelled with"
    );
}

/// Resolves the container's env as the kubelet does: values, and the downward API fields the
/// chart uses.
fn deployment_env(container: &Value, namespace: &str, pod_name: &str) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for var in container["env"].as_array().into_iter().flatten() {
        let name = var["name"].as_str().unwrap().to_owned();
        let value = match (&var["value"], var["valueFrom"]["fieldRef"]["fieldPath"].as_str()) {
            (Value::String(value), _) => value.clone(),
            (_, Some("metadata.namespace")) => namespace.to_owned(),
            (_, Some("metadata.name")) => pod_name.to_owned(),
            _ => panic!("the test cannot resolve env {var}: teach deployment_env how the kubelet does"),
        };
        env.insert(name, value);
    }
    env
}

/// The pod's volumes the container mounts (Secret or ConfigMap items), written to host
/// directories under `dir` as the kubelet writes them.
async fn volume_mounts(admin: &Client, namespace: &str, pod: &Value, container: &Value, dir: &Path) -> Vec<Mount> {
    let mut mounts = Vec::new();
    for volume_mount in container["volumeMounts"].as_array().into_iter().flatten() {
        let name = volume_mount["name"].as_str().unwrap();
        assert_eq!(volume_mount["readOnly"], true, "volume {name} is mounted read-only");
        let volume = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == name).expect("the mounted volume exists");
        let (items, data) = if let Some(secret_name) = volume["secret"]["secretName"].as_str() {
            let secret = Api::<Secret>::namespaced(admin.clone(), namespace).get(secret_name).await.unwrap();
            let data: BTreeMap<String, Vec<u8>> = secret.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
            (&volume["secret"]["items"], data)
        } else if let Some(config_map_name) = volume["configMap"]["name"].as_str() {
            let config_map = Api::<ConfigMap>::namespaced(admin.clone(), namespace).get(config_map_name).await.unwrap();
            let data = config_map.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
            (&volume["configMap"]["items"], data)
        } else {
            panic!("the test cannot mount volume {volume}: teach volume_mounts how the kubelet does");
        };
        let source = dir.join(format!("volume-{name}"));
        std::fs::create_dir(&source).unwrap();
        for item in items.as_array().expect("the chart names the items it mounts") {
            let key = item["key"].as_str().unwrap();
            std::fs::write(source.join(item["path"].as_str().unwrap()), &data[key]).unwrap();
        }
        mounts.push(Mount { source, target: volume_mount["mountPath"].as_str().unwrap().to_owned() });
    }
    mounts
}

/// What the kubelet mounts for a pod of `service_account`: a bound token, the cluster CA and the
/// namespace.
async fn service_account_mount(admin: &Client, cp_ca: &str, namespace: &str, service_account: &str, dir: &Path) -> Mount {
    let request: TokenRequest = serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 3600}})).unwrap();
    let token = Api::<ServiceAccount>::namespaced(admin.clone(), namespace)
        .create_token_request(service_account, &PostParams::default(), &request)
        .await
        .expect("a token for the chart's ServiceAccount");
    let source = dir.join("serviceaccount");
    std::fs::create_dir(&source).unwrap();
    std::fs::write(source.join("token"), token.status.expect("an issued token").token).unwrap();
    std::fs::write(source.join("ca.crt"), cp_ca).unwrap();
    std::fs::write(source.join("namespace"), namespace).unwrap();
    Mount { source, target: SERVICE_ACCOUNT_DIR.to_owned() }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0").unwrap().local_addr().unwrap().port()
}

/// Polls the chart's readiness probe until it answers 200, as the kubelet does.
async fn wait_probe(container: &Container, port: u16, path: &str) {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(3)).build().unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(response) = client.get(format!("http://127.0.0.1:{port}{path}")).send().await
            && response.status() == 200
        {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{path} never answered 200:\n{}", container.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_runs_as_the_chart_deployment_and_brings_a_connection_to_ready() {
    idp_bridge::install_crypto_provider();
    let image = read_layout();
    let cp = crate::common::control_plane().await;
    let admin = cp.client().await;
    let (ns, team) = (unique_name("image-op"), unique_name("image-team"));
    for name in [&ns, &team] {
        create_namespace(&admin, name).await.unwrap();
    }

    // The chart installed as a team would: the emulators behind endpointOverrides and a CA bundle
    // Secret, one watched namespace (the control plane is shared), the metrics port free on this
    // host.
    let mut upstreams = upstreams();
    put_ca_bundle(&admin, &ns, &upstreams, "Secret").await;
    let mut values = emulator_values(&upstreams, "Secret");
    let port = free_port();
    values["watchNamespaces"] = json!([team]);
    values["metrics"] = json!({"port": port});
    let values = values_file(&values);
    helm_ok(Some(cp.kubeconfig_path()), &["install", "image", &chart(), "--namespace", &ns, "--values", path_str(&values)]);
    let deployment = Api::<Deployment>::namespaced(admin.clone(), &ns).get("image-idp-bridge").await.unwrap();
    let pod = serde_json::to_value(&deployment).unwrap()["spec"]["template"]["spec"].clone();
    let container = pod["containers"][0].clone();
    assert!(container["command"].is_null(), "the chart keeps the image's entrypoint");

    // The container as the kubelet would start it: the image's entrypoint with the chart's args,
    // the chart's user and groups (fsGroup joins them), the Deployment's env with the downward
    // API resolved, the in-cluster API address, the token of the chart's ServiceAccount.
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    let uid = security["runAsUser"].as_u64().expect("the chart sets runAsUser") as u32;
    let gid = security["runAsGroup"].as_u64().expect("the chart sets runAsGroup") as u32;
    assert_eq!(image_user(&image), (uid, gid), "the image's user is the chart's");
    let mut groups = vec![gid];
    groups.extend(pod["securityContext"]["fsGroup"].as_u64().map(|g| g as u32).filter(|g| *g != gid));
    let dir = tempfile::tempdir().unwrap();
    let rootfs = image.unpack(dir.path());
    let pod_name = format!("image-idp-bridge-{}", unique_name("pod").rsplit('-').next().unwrap());
    let mut env = runtime_env(&image, &rootfs, uid, &pod_name);
    env.extend(deployment_env(&container, &ns, &pod_name));
    let api = url::Url::parse(&cp.server_url()).unwrap();
    env.insert("KUBERNETES_SERVICE_HOST".to_owned(), api.host_str().unwrap().to_owned());
    env.insert("KUBERNETES_SERVICE_PORT".to_owned(), api.port().unwrap().to_string());
    let mut argv = image.strings("Entrypoint");
    argv.extend(container["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_owned()));
    assert!(argv.iter().any(|a| a == &format!("--http-address=0.0.0.0:{port}")), "{argv:?}");
    let mut mounts = volume_mounts(&admin, &ns, &pod, &container, dir.path()).await;
    let service_account = pod["serviceAccountName"].as_str().unwrap();
    mounts.push(service_account_mount(&admin, cp.ca_pem(), &ns, service_account, dir.path()).await);
    let spec = ContainerSpec { rootfs, argv, env, uid, groups: groups.clone(), mounts };
    let running = Container::start(&spec, dir.path().join("container.log")).await;
    assert_confined(&running, uid, &groups);
    let probe = container["readinessProbe"]["httpGet"]["path"].as_str().expect("the chart's readiness probe");
    wait_probe(&running, port, probe).await;

    // A connection in the watched namespace, synced into Auth0 by the image.
    let value = "Vb3N~image-client-secret-value";
    upstreams.azure.add_secret(TENANT_ID, CLIENT_ID, value, in_a_year());
    apply(&admin, Some(&team), secret("auth0-management", &[("client-id", M2M_CLIENT), ("client-secret", M2M_SECRET)])).await;
    apply(&admin, Some(&team), idp("IdentityBroker", "auth0", auth0_broker())).await;
    apply(&admin, Some(&team), secret("web-secret", &[("client-secret", value)])).await;
    apply(&admin, Some(&team), connection("web", json!({"name": "auth0"}), "web-secret", json!({"auth0": {"name": "image-web"}}))).await;
    let conn = wait_ready(&admin, &team, "web").await;
    assert_eq!(ready_condition(&conn).reason, "Ready");
    let auth0 = upstreams.auth0(AUTH0_DOMAIN).unwrap();
    assert_eq!(auth0.connection_by_name("image-web").expect("Auth0 has the connection")["options"]["client_secret"], value);
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(admin.clone(), &team).list(&ListParams::default()).await.unwrap();
    assert!(events.items.iter().any(|e| e.reporting_instance.as_deref() == Some(pod_name.as_str())), "Events name the pod");

    let logs = running.stop().await;
    assert!(!logs.contains(value), "the secret value reached the container's logs");
}
