#!/usr/bin/env bash
# The whole test suite: format, lint, unit, adapter, mock-controller and real control-plane tiers.
# Builds (or reuses) kube-apiserver, etcd and helm first; a missing binary fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."

declare -a timings=()
stage() {
  local name=$1 start=$SECONDS
  shift
  echo "==> $name"
  "$@"
  timings+=("$(printf '%-28s %5ss' "$name" "$((SECONDS - start))")")
}

total_start=$SECONDS
bins_file=$(mktemp)
stage "control-plane binaries" bash -c "scripts/control-plane-bins.sh > '$bins_file'"
IDP_BRIDGE_BIN_DIR=$(tail -n 1 "$bins_file")
rm -f "$bins_file"
export IDP_BRIDGE_BIN_DIR
stage "cargo fmt --check" cargo fmt --all -- --check
stage "cargo clippy" cargo clippy --locked --workspace --all-targets -- -D warnings
stage "cargo build (tests)" cargo test --locked --workspace --no-run
stage "cargo test" cargo test --locked --workspace

echo
echo "Stage timings:"
printf '  %s\n' "${timings[@]}"
printf '  %-28s %5ss\n' "total" "$((SECONDS - total_start))"
