#!/usr/bin/env bash
# Builds the operator's container image without a Docker engine: the release binary for
# x86_64-unknown-linux-musl (static) built with `cargo auditable`, the Debian CA bundle and a
# passwd/group entry for uid 65532 in one layer, assembled by crane (go-containerregistry, built
# from its Go module and cached like the control-plane binaries). No shell, no libc, no package
# manager: the Dockerfile builds the same content for people who have Docker.
#
# Outputs, under $IDP_BRIDGE_IMAGE_DIR (default target/image):
#   oci/                       an OCI image layout holding the one image
#   idp-bridge-<version>.tar   a `docker load` tarball tagged $IMAGE_REPOSITORY:<version>
# Prints the output directory on its last line. Installs what it needs (the musl Rust target,
# musl-tools, cargo-auditable, crane) on first use and reuses it after.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=x86_64-unknown-linux-musl
CARGO_AUDITABLE_VERSION="${CARGO_AUDITABLE_VERSION:-0.7.7}"
CRANE_VERSION="${CRANE_VERSION:-0.22.1}"
IMAGE_REPOSITORY="${IMAGE_REPOSITORY:-ghcr.io/idp-bridge/idp-bridge}"
IMAGE_SOURCE="${IMAGE_SOURCE:-https://github.com/idp-bridge/idp-bridge}"
CACHE="${IDP_BRIDGE_CACHE:-$HOME/.cache/idp-bridge}"
CRANE_DIR="$CACHE/bin/crane-v$CRANE_VERSION"
CRANE="$CRANE_DIR/crane"
OUT="${IDP_BRIDGE_IMAGE_DIR:-${CARGO_TARGET_DIR:-target}/image}"
BINARY="${CARGO_TARGET_DIR:-target}/$TARGET/release/idp-bridge"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

log() { echo "[image] $*" >&2; }
die() { log "error: $*"; exit 1; }
timed() { local name=$1 start=$SECONDS; shift; "$@"; log "$name done in $((SECONDS - start))s"; }

# ---------------------------------------------------------------------------------------------
# Tools

ensure_musl_target() {
  rustup target list --installed | grep -qx "$TARGET" && return
  log "adding the Rust target $TARGET"
  rustup target add "$TARGET" >&2
}

# ring compiles C and assembly for the target; musl-gcc (Debian's musl-tools) is its C compiler.
ensure_musl_gcc() {
  command -v musl-gcc >/dev/null && return
  command -v apt-get >/dev/null || die "musl-gcc is missing and apt-get is not available: install musl-tools"
  [[ $(id -u) == 0 ]] || die "musl-gcc is missing: install musl-tools (apt-get install musl-tools) or run as root"
  log "installing musl-tools from Debian"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends musl-tools >&2
}

# The Debian CA bundle (/etc/ssl/certs/ca-certificates.crt) goes into the image: the operator's
# HTTPS client trusts the platform's roots.
ensure_ca_certificates() {
  dpkg-query -W -f='${Status}' ca-certificates 2>/dev/null | grep -q 'install ok installed' &&
    [[ -s /etc/ssl/certs/ca-certificates.crt ]] && return
  [[ $(id -u) == 0 ]] || die "the Debian package ca-certificates is missing: install it or run as root"
  log "installing ca-certificates from Debian"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates >&2
}

ensure_cargo_auditable() {
  cargo install --list | grep -qx "cargo-auditable v$CARGO_AUDITABLE_VERSION:" && return
  log "installing cargo-auditable $CARGO_AUDITABLE_VERSION"
  cargo install --locked "cargo-auditable@$CARGO_AUDITABLE_VERSION" >&2
}

# crane from its own throwaway module (as scripts/control-plane-bins.sh builds every Go binary),
# cached by version.
build_crane() {
  command -v go >/dev/null || die "Go is not installed; install Go >= 1.25 (crane is built from its Go module)"
  local mod; mod="$(mktemp -d "${TMPDIR:-/tmp}/idp-bridge-gobuild.XXXXXX")"
  (
    cd "$mod"
    export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
    printf 'module idpbridgebuild\n\ngo 1.25.0\n' >go.mod
    log "building crane v$CRANE_VERSION (github.com/google/go-containerregistry)"
    go get "github.com/google/go-containerregistry/cmd/crane@v$CRANE_VERSION" >&2
    mkdir -p "$CRANE_DIR"
    go build -trimpath -ldflags "-s -w -X github.com/google/go-containerregistry/cmd/crane/cmd.Version=v$CRANE_VERSION" \
      -o "$CRANE.tmp" github.com/google/go-containerregistry/cmd/crane
    mv "$CRANE.tmp" "$CRANE"
  )
  rm -rf "$mod"
}

ensure_crane() {
  [[ -x "$CRANE" ]] && return
  timed "crane" build_crane
}

# ---------------------------------------------------------------------------------------------
# The binary

# The release binary, static (musl links statically by default), with its dependency list in the
# .dep-v0 section for image scanners (Trivy, Grype, `cargo audit bin`). IDP_BRIDGE_GIT_COMMIT is
# what `idp-bridge version` prints; symbols are stripped (the dependency section stays).
build_binary() {
  IDP_BRIDGE_GIT_COMMIT="$COMMIT" CC_x86_64_unknown_linux_musl=musl-gcc CARGO_PROFILE_RELEASE_STRIP=symbols \
    cargo auditable build --release --locked --target "$TARGET" --bin idp-bridge >&2
}

# The checks an image scanner relies on: no dynamic loader, and a readable dependency list naming
# the operator and its dependencies.
check_binary() {
  readelf -l "$BINARY" | grep -q 'Requesting program interpreter' && die "$BINARY is dynamically linked"
  local dependencies
  dependencies="$(objcopy --dump-section .dep-v0=/dev/stdout "$BINARY" 2>/dev/null | perl -MCompress::Zlib -MJSON::PP -e '
    local $/; my $json = uncompress(<STDIN>) // die "the .dep-v0 section is not zlib\n";
    my @names = map { $_->{name} } @{ decode_json($json)->{packages} };
    print join(" ", @names);
  ')" || die "$BINARY has no readable cargo-auditable dependency list (.dep-v0)"
  for package in idp-bridge kube-client rustls tokio; do
    grep -qw -- "$package" <<<"$dependencies" || die "the dependency list of $BINARY lacks $package"
  done
  log "static binary; cargo-auditable lists $(wc -w <<<"$dependencies") packages"
}

# ---------------------------------------------------------------------------------------------
# The image

# The one layer: /idp-bridge, the CA bundle, /etc/passwd and /etc/group. GNU tar with sorted names,
# the commit time and root ownership makes it byte-for-byte reproducible.
build_layer() {
  local rootfs=$1 layer=$2
  install -d -m 0755 "$rootfs/etc/ssl/certs"
  install -m 0755 "$BINARY" "$rootfs/idp-bridge"
  install -m 0644 /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
  install -m 0644 scripts/image/passwd "$rootfs/etc/passwd"
  install -m 0644 scripts/image/group "$rootfs/etc/group"
  tar --create --file "$layer" --directory "$rootfs" --sort=name --mtime="@$SOURCE_DATE_EPOCH" \
    --owner=0 --group=0 --numeric-owner --format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    idp-bridge etc
}

# crane mutate reads from and writes to a registry: an in-memory one of crane's own, on loopback,
# for the length of the build.
start_registry() {
  local log_file=$1
  "$CRANE" registry serve --address 127.0.0.1:0 2>"$log_file" &
  REGISTRY_PID=$!
  for _ in $(seq 100); do
    REGISTRY_PORT="$(sed -n 's/.*serving on port \([0-9]*\).*/\1/p' "$log_file")"
    [[ -n "$REGISTRY_PORT" ]] && return
    kill -0 "$REGISTRY_PID" 2>/dev/null || die "crane registry serve exited: $(cat "$log_file")"
    sleep 0.1
  done
  die "crane registry serve did not start: $(cat "$log_file")"
}

# What the chart and the Dockerfile rely on: entrypoint /idp-bridge with `run` as the default
# command (the chart's args start with `run`), user 65532, the metrics port, the OCI labels.
image_config_flags() {
  local created; created="$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)"
  printf '%s\n' --entrypoint=/idp-bridge --cmd=run --user=65532:65532 --exposed-ports=8080/tcp --set-platform=linux/amd64 \
    --label="org.opencontainers.image.title=idp-bridge" \
    --label="org.opencontainers.image.description=Kubernetes operator that validates Microsoft Entra ID client secrets and pushes them into identity brokers" \
    --label="org.opencontainers.image.version=$VERSION" \
    --label="org.opencontainers.image.revision=$COMMIT" \
    --label="org.opencontainers.image.source=$IMAGE_SOURCE" \
    --label="org.opencontainers.image.licenses=Apache-2.0" \
    --label="org.opencontainers.image.created=$created"
}

assemble_image() {
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/idp-bridge-image.XXXXXX")"
  trap 'kill "${REGISTRY_PID:-}" 2>/dev/null || true; rm -rf "$WORK"' EXIT
  local work=$WORK
  build_layer "$work/rootfs" "$work/layer.tar"
  start_registry "$work/registry.log"
  local registry="127.0.0.1:$REGISTRY_PORT/idp-bridge" flags tarball="$OUT/idp-bridge-$VERSION.tar"
  mapfile -t flags < <(image_config_flags)
  "$CRANE" append --oci-empty-base --new_layer "$work/layer.tar" --new_tag "$registry:layer" >/dev/null
  # The same mutation twice: once into the registry (for the OCI layout), once into the tarball
  # under the public name. Both are deterministic, so both hold the same image.
  "$CRANE" mutate "$registry:layer" "${flags[@]}" --tag "$registry:$VERSION" >/dev/null
  rm -rf "$OUT" && mkdir -p "$OUT"
  "$CRANE" pull --format=oci "$registry:$VERSION" "$OUT/oci"
  "$CRANE" mutate "$registry:layer" "${flags[@]}" --tag "$IMAGE_REPOSITORY:$VERSION" --output "$tarball"
  DIGEST="$("$CRANE" digest "$registry:$VERSION")"
  local layout_config tarball_config
  layout_config="$("$CRANE" manifest "$registry:$VERSION" | perl -MJSON::PP -e 'local $/; print decode_json(<STDIN>)->{config}{digest}')"
  tarball_config="sha256:$(tar --extract --to-stdout --file "$tarball" manifest.json | perl -MJSON::PP -e 'local $/; my ($m) = @{ decode_json(<STDIN>) }; $m->{Config} =~ /([0-9a-f]{64})/; print $1')"
  [[ "$layout_config" == "$tarball_config" ]] || die "the OCI layout ($layout_config) and the tarball ($tarball_config) differ"
  report_sizes "$work/layer.tar"
}

# Compressed: what a registry stores and a node pulls (the layout's blobs). Uncompressed: the
# layer as unpacked on the node.
report_sizes() {
  local compressed uncompressed
  compressed="$(find "$OUT/oci/blobs" -type f -printf '%s\n' | awk '{s += $1} END {print s}')"
  uncompressed="$(stat -c %s "$1")"
  log "image $IMAGE_REPOSITORY:$VERSION ($DIGEST): $((compressed / 1024)) KiB compressed, $((uncompressed / 1024)) KiB uncompressed"
}

COMMIT="$(git rev-parse HEAD)"
# The commit time stamps the layer's files and the created label, so a rebuild is identical.
SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}"
VERSION="$(cargo pkgid --quiet -p idp-bridge | sed 's/.*[#@]//')"
[[ -z "$(git status --porcelain --untracked-files=no)" ]] ||
  log "warning: the work tree has uncommitted changes; the image is labelled with HEAD ($COMMIT)"

ensure_musl_target
ensure_musl_gcc
ensure_ca_certificates
ensure_cargo_auditable
ensure_crane
timed "cargo auditable build ($TARGET)" build_binary
check_binary
timed "image assembly" assemble_image
cd "$OUT" && pwd
