#!/usr/bin/env bash
# The benchmark: builds what it needs (kube-apiserver, etcd and kubectl from Go modules, cached;
# the operator in release mode; the bench), then runs `idp-bridge-bench` against a local control
# plane and emulators, with the operator as a separate process. Arguments go to the bench, e.g.
#   scripts/bench.sh                                   # N=1000 connections, M=10000 Secrets of 100 KB
#   scripts/bench.sh --small                           # N=20, M=200, a short window: the check in test.sh
#   scripts/bench.sh --connections 300 --unrelated-secrets 3000 --out target/bench-300.json
# Prints one table and writes it as JSON (--out, default target/bench.json). Exits non-zero only
# when an invariant fails; see devenv/src/bin/bench.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
bins_file=$(mktemp)
trap 'rm -f "$bins_file"' EXIT
bash scripts/control-plane-bins.sh >"$bins_file"
IDP_BRIDGE_BIN_DIR=$(tail -n 1 "$bins_file")
export IDP_BRIDGE_BIN_DIR
echo "[bench] building the release operator and the bench (the first build takes a few minutes)" >&2
cargo build --locked --quiet --release -p idp-bridge --bin idp-bridge
# Release too: the emulators run inside the bench, and their speed is part of every latency.
cargo build --locked --quiet --release -p idp-bridge-devenv --bin idp-bridge-bench
exec target/release/idp-bridge-bench --operator-bin target/release/idp-bridge "$@"
