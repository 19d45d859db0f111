#!/usr/bin/env bash
# The demo: builds what it needs (kube-apiserver, etcd and kubectl from Go modules, cached; the operator),
# starts a local control plane, emulated Azure and Auth0, and the operator reconciling examples/.
# Pass --no-wait to exit after the walkthrough.
set -euo pipefail
cd "$(dirname "$0")/.."
bins_file=$(mktemp)
trap 'rm -f "$bins_file"' EXIT
bash scripts/control-plane-bins.sh >"$bins_file"
IDP_BRIDGE_BIN_DIR=$(tail -n 1 "$bins_file")
export IDP_BRIDGE_BIN_DIR
echo "[demo] building the operator (the first build takes a few minutes)" >&2
cargo build --locked --quiet -p idp-bridge-devenv --bin idp-bridge-demo
exec target/debug/idp-bridge-demo "$@"
