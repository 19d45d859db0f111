#!/usr/bin/env bash
# The fault suite: builds what it needs (kube-apiserver, etcd and kubectl from Go modules, cached;
# the operator and the suite with the test profile), then runs `idp-bridge-faults`: the operator
# as a separate process, a fleet of connections over the four brokers on a local control plane
# with emulators, through broker 5xx, lost answers, Graph failures, refused management
# credentials, SIGKILLs, a leader failover and an Azure outage. Arguments go to the suite, e.g.
#   scripts/faults.sh                                 # 20 connections, 50 kills, a 150 s Azure outage
#   scripts/faults.sh --connections 40 --kills 100
# Prints a table per scenario, writes them as JSON (--out, default target/faults.json), and exits
# non-zero when an invariant fails; see devenv/src/fault_suite/.
set -euo pipefail
cd "$(dirname "$0")/.."
bins_file=$(mktemp)
trap 'rm -f "$bins_file"' EXIT
bash scripts/control-plane-bins.sh >"$bins_file"
IDP_BRIDGE_BIN_DIR=$(tail -n 1 "$bins_file")
export IDP_BRIDGE_BIN_DIR
# The test build: the suite checks invariants, never timings.
cargo build --locked --quiet -p idp-bridge --bin idp-bridge
cargo build --locked --quiet -p idp-bridge-devenv --bin idp-bridge-faults
exec target/debug/idp-bridge-faults --operator-bin target/debug/idp-bridge "$@"
