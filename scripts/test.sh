#!/usr/bin/env bash
# The whole test suite: format, lint, dependency hygiene, unit, adapter, mock-controller and real
# control-plane tiers, the benchmark's small profile and the fault suite. Builds (or reuses) the Go binaries of
# scripts/control-plane-bins.sh first (kube-apiserver, kube-controller-manager, etcd, helm,
# kubectl, promtool, kstatus), and the container image of scripts/image.sh before the tests that
# run it (tests/cluster/image.rs); a missing binary or image fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."

# Cargo tools the checks need, pinned; installed into ~/.cargo/bin on first use and reused after.
CARGO_MACHETE_VERSION=0.9.2
CARGO_DENY_VERSION=0.20.2
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

# Installs crate `$1` at version `$2` unless its binary of that version is already on PATH.
cargo_tool() {
  local name=$1 version=$2 installed
  # `cargo-machete --version` prints the bare version, `cargo-deny --version` the name first.
  installed=$("$name" --version 2>/dev/null | awk '{print $NF}') || true
  if [[ "$installed" == "$version" ]]; then
    return
  fi
  echo "installing $name $version"
  cargo install --locked "$name@$version"
}

unused_dependencies() {
  cargo_tool cargo-machete "$CARGO_MACHETE_VERSION"
  cargo machete
}

dependency_policy() {
  cargo_tool cargo-deny "$CARGO_DENY_VERSION"
  cargo deny --workspace --locked check bans licenses sources
}

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
stage "unused dependencies" unused_dependencies
stage "cargo deny" dependency_policy
image_file=$(mktemp)
stage "container image" bash -c "scripts/image.sh > '$image_file'"
IDP_BRIDGE_IMAGE_DIR=$(tail -n 1 "$image_file")
rm -f "$image_file"
export IDP_BRIDGE_IMAGE_DIR
stage "cargo build (tests)" cargo test --locked --workspace --no-run
stage "cargo test" cargo test --locked --workspace
# The benchmark's small profile: a check that the bench works and its invariants hold (all Ready,
# every rotation arrived, no broker writes in the steady state), never a timed assertion.
stage "benchmark (small profile)" env IDP_BRIDGE_BENCH_PROFILE=dev bash scripts/bench.sh --small --out target/bench-small.json
# The fault suite: invariants under upstream faults, kills and a failover (devenv/src/fault_suite/).
stage "fault suite" bash scripts/faults.sh --out target/faults.json

echo
echo "Stage timings:"
printf '  %s\n' "${timings[@]}"
printf '  %-28s %5ss\n' "total" "$((SECONDS - total_start))"
