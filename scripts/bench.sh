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
# Release builds by default: the numbers are the product's. The check in test.sh sets
# IDP_BRIDGE_BENCH_PROFILE=dev to reuse the test build: it asserts invariants, never timings.
profile="${IDP_BRIDGE_BENCH_PROFILE:-release}"
case "$profile" in
  release) dir=release ;;
  dev) dir=debug ;;
  *) echo "[bench] IDP_BRIDGE_BENCH_PROFILE must be release or dev, not $profile" >&2; exit 2 ;;
esac
echo "[bench] building the $profile operator and the bench (the first release build takes a few minutes)" >&2
cargo build --locked --quiet --profile "$profile" -p idp-bridge --bin idp-bridge
# The same profile for the bench: the emulators run inside it, and their speed is part of every latency.
cargo build --locked --quiet --profile "$profile" -p idp-bridge-devenv --bin idp-bridge-bench
exec "target/$dir/idp-bridge-bench" --operator-bin "target/$dir/idp-bridge" "$@"
