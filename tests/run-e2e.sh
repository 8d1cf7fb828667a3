#!/usr/bin/env bash
# `make e2e`: the end-to-end suite alone (operator/tests/e2e): the whole loop on real iPXE
# firmware in QEMU, sushy-tools' Redfish emulator, wimlib-made golden WIMs, the embedded store
# and the real kube-apiserver, with faults at every step. `make test` runs it too.
# Needs root; installs its peers on first use. RECAST_REQUIRE_E2E=1 makes a missing peer fail.
set -uo pipefail
cd "$(dirname "$0")/.."
cargo_flags=(--ignore-rust-version)
if [[ $(id -u) == 0 ]]; then
  for setup in tests/pxe/setup.sh tests/redfish/setup.sh tests/golden/setup.sh; do
    bash "$setup" || echo "*** $setup failed; the end-to-end suite will skip or fail"
  done
fi
started_k8s=0
if ! tests/k8s/harness.sh status 2>/dev/null; then
  tests/k8s/harness.sh up || exit 1
  started_k8s=1
fi
trap '[[ $started_k8s == 1 ]] && tests/k8s/harness.sh down' EXIT
# The suite runs recast-agent and recastctl as a user would: build every binary first.
cargo build "${cargo_flags[@]}" --workspace --bins || exit 1
export RECAST_SKIP_LOG="$(mktemp)"
# --nocapture: the suite narrates each step and fault as it goes ([e2e] lines).
cargo test "${cargo_flags[@]}" -p recast-operator --test e2e -- --nocapture
status=$?
if [[ -s $RECAST_SKIP_LOG ]]; then
  echo "*** SKIPPED:"
  sort "$RECAST_SKIP_LOG" | uniq -c
fi
rm -f "$RECAST_SKIP_LOG"
exit "$status"
