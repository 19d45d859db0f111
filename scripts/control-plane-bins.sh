#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, etcd, helm, kubectl, promtool and kstatus from the Go module proxy with the local Go toolchain and
# caches them by version under $IDP_BRIDGE_CACHE (default ~/.cache/idp-bridge). Prints the
# directory holding the binaries on its last line. Nothing is downloaded but Go modules.
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-1.35.4}"
ETCD_VERSION="${ETCD_VERSION:-3.6.6}"
HELM_VERSION="${HELM_VERSION:-3.20.2}"
PROMETHEUS_VERSION="${PROMETHEUS_VERSION:-3.16.0}"
CLI_UTILS_VERSION="${CLI_UTILS_VERSION:-0.37.2}"
CACHE="${IDP_BRIDGE_CACHE:-$HOME/.cache/idp-bridge}"
BIN_DIR="$CACHE/bin/k8s-v$KUBE_VERSION-etcd-v$ETCD_VERSION-helm-v$HELM_VERSION"

log() { echo "[control-plane-bins] $*" >&2; }
die() { log "error: $*"; exit 1; }

command -v go >/dev/null || die "Go is not installed; install Go >= 1.25 (the apiserver is built from Go modules)"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
mkdir -p "$BIN_DIR"

# Each binary gets its own throwaway module so minimum version selection cannot raise shared
# dependencies (grpc, protobuf) above what that binary was released with.
new_module() {
  local dir; dir="$(mktemp -d "${TMPDIR:-/tmp}/idp-bridge-gobuild.XXXXXX")"
  printf 'module idpbridgebuild\n\ngo 1.25.0\n\ngodebug default=go1.25\n' >"$dir/go.mod"
  echo "$dir"
}

timed() { local name=$1 start=$SECONDS; shift; "$@"; log "$name ready in $((SECONDS - start))s"; }

# A command of k8s.io/kubernetes (kube-apiserver, kube-controller-manager), each in its own module
# like every other binary; the second one reuses the first one's module and build caches.
build_kubernetes_cmd() {
  local cmd=$1 mod gomod
  mod="$(new_module)"; cd "$mod"
  log "resolving k8s.io/kubernetes@v$KUBE_VERSION from the module proxy"
  gomod="$(go mod download -json "k8s.io/kubernetes@v$KUBE_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
  [[ -f "$gomod" ]] || die "could not download k8s.io/kubernetes@v$KUBE_VERSION (is the Go module proxy reachable? GOPROXY=$(go env GOPROXY))"
  # k8s.io/kubernetes maps its staging modules with local replaces that consumers ignore; pin each
  # one to the published v0.<minor>.<patch> instead.
  echo "require k8s.io/kubernetes v$KUBE_VERSION" >>go.mod
  grep -oE '^[[:space:]]*k8s\.io/[a-z0-9-]+ => \./staging' "$gomod" | awk '{print $1}' | sort -u |
    while read -r m; do echo "replace $m => $m v0.${KUBE_VERSION#1.}"; done >>go.mod
  log "building $cmd v$KUBE_VERSION ($(grep -c '^replace' go.mod) staging replaces); a cold build takes 10-20 minutes"
  go get "k8s.io/kubernetes/cmd/$cmd@v$KUBE_VERSION" >&2
  go build -trimpath -tags selinux,notest,grpcnotrace -ldflags "$(kube_version_ldflags)" -o "$BIN_DIR/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd"
  mv "$BIN_DIR/$cmd.tmp" "$BIN_DIR/$cmd"
  cd / && rm -rf "$mod"
}

build_kube_apiserver() { build_kubernetes_cmd kube-apiserver; }

# The namespace and garbage-collector controllers of the test control plane.
build_kube_controller_manager() { build_kubernetes_cmd kube-controller-manager; }

# The version ldflags of the k8s.io/kubernetes commands and kubectl: client-go's is what `kubectl version` prints.
kube_version_ldflags() {
  local ld="-s -w" k
  for k in "gitVersion=v$KUBE_VERSION" gitMajor=1 "gitMinor=$(cut -d. -f2 <<<"$KUBE_VERSION")" gitTreeState=clean; do
    ld="$ld -X k8s.io/component-base/version.$k -X k8s.io/client-go/pkg/version.$k"
  done
  echo "$ld"
}

build_etcd() {
  local mod; mod="$(new_module)"; cd "$mod"
  log "building etcd v$ETCD_VERSION"
  echo "require go.etcd.io/etcd/server/v3 v$ETCD_VERSION" >>go.mod
  go get "go.etcd.io/etcd/server/v3@v$ETCD_VERSION" >&2
  go build -trimpath -ldflags "-s -w" -o "$BIN_DIR/etcd.tmp" go.etcd.io/etcd/server/v3
  mv "$BIN_DIR/etcd.tmp" "$BIN_DIR/etcd"
  cd / && rm -rf "$mod"
}

build_helm() {
  local mod; mod="$(new_module)"; cd "$mod"
  log "building helm v$HELM_VERSION"
  echo "require helm.sh/helm/v3 v$HELM_VERSION" >>go.mod
  go get "helm.sh/helm/v3/cmd/helm@v$HELM_VERSION" >&2
  go build -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$(cut -d. -f2 <<<"$KUBE_VERSION")" \
    -o "$BIN_DIR/helm.tmp" helm.sh/helm/v3/cmd/helm
  mv "$BIN_DIR/helm.tmp" "$BIN_DIR/helm"
  cd / && rm -rf "$mod"
}

# kubectl from its own published module (k8s.io/kubectl v0.<minor>.<patch>), with the same main as
# k8s.io/kubernetes/cmd/kubectl minus the cloud auth plugins: the control plane's kubeconfig
# authenticates with a client certificate.
build_kubectl() {
  local mod; mod="$(new_module)"; cd "$mod"
  log "building kubectl v$KUBE_VERSION"
  cat >main.go <<'GO'
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	"k8s.io/kubectl/pkg/cmd"
	"k8s.io/kubectl/pkg/cmd/util"
)

func main() {
	logs.GlogSetter(cmd.GetLogVerbosity(os.Args)) //nolint:errcheck
	if err := cli.RunNoErrOutput(cmd.NewDefaultKubectlCommand()); err != nil {
		util.CheckErr(err)
	}
}
GO
  echo "require k8s.io/kubectl v0.${KUBE_VERSION#1.}" >>go.mod
  go mod tidy >&2
  go build -trimpath -ldflags "$(kube_version_ldflags)" -o "$BIN_DIR/kubectl.tmp" .
  mv "$BIN_DIR/kubectl.tmp" "$BIN_DIR/kubectl"
  cd / && rm -rf "$mod"
}

# promtool checks and unit-tests the chart's alert rules and the dashboard's queries. Prometheus 3.x
# publishes its Go module as v0.<major*100+minor>.<patch>; remove_all_sd leaves out the service
# discovery plugins (cloud SDKs), which rule checking and testing never use.
build_promtool() {
  local mod minor patch; mod="$(new_module)"; cd "$mod"
  minor="$(cut -d. -f2 <<<"$PROMETHEUS_VERSION")"; patch="$(cut -d. -f3 <<<"$PROMETHEUS_VERSION")"
  log "building promtool v$PROMETHEUS_VERSION"
  go get "github.com/prometheus/prometheus/cmd/promtool@v0.$((300 + minor)).$patch" >&2
  go build -trimpath -tags remove_all_sd -ldflags "-s -w -X github.com/prometheus/common/version.Version=$PROMETHEUS_VERSION" \
    -o "$BIN_DIR/promtool.tmp" github.com/prometheus/prometheus/cmd/promtool
  mv "$BIN_DIR/promtool.tmp" "$BIN_DIR/promtool"
  cd / && rm -rf "$mod"
}

# kstatus: Flux's and cli-utils' health verdict for one object, computed by
# sigs.k8s.io/cli-utils/pkg/kstatus itself. Reads the object as JSON on stdin, prints
# {"status": ..., "message": ...}.
build_kstatus() {
  local mod; mod="$(new_module)"; cd "$mod"
  log "building kstatus (sigs.k8s.io/cli-utils v$CLI_UTILS_VERSION)"
  cat >main.go <<'GO'
package main

import (
	"encoding/json"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

func main() {
	// Unstructured's own decoder, as client-go's: integers stay int64, which kstatus requires.
	var object unstructured.Unstructured
	input, err := io.ReadAll(os.Stdin)
	if err == nil {
		err = object.UnmarshalJSON(input)
	}
	if err != nil {
		os.Stderr.WriteString("kstatus: reading the object from stdin: " + err.Error() + "\n")
		os.Exit(2)
	}
	result, err := status.Compute(&object)
	if err != nil {
		os.Stderr.WriteString("kstatus: " + err.Error() + "\n")
		os.Exit(1)
	}
	json.NewEncoder(os.Stdout).Encode(map[string]string{"status": result.Status.String(), "message": result.Message}) //nolint:errcheck
}
GO
  echo "require sigs.k8s.io/cli-utils v$CLI_UTILS_VERSION" >>go.mod
  go mod tidy >&2
  go build -trimpath -ldflags "-s -w" -o "$BIN_DIR/kstatus.tmp" .
  mv "$BIN_DIR/kstatus.tmp" "$BIN_DIR/kstatus"
  cd / && rm -rf "$mod"
}

for bin in etcd kube-apiserver kube-controller-manager helm kubectl promtool kstatus; do
  if [[ -x "$BIN_DIR/$bin" ]]; then
    log "$bin: cached in $BIN_DIR"
  else
    timed "$bin" "build_${bin//-/_}"
  fi
done
echo "$BIN_DIR"
