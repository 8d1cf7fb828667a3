#!/usr/bin/env bash
# `make test`: starts the real peers the suites need, runs every Rust test in the workspace
# (or the cargo test arguments given, as `make e2e` does), and stops what it started. A harness that was already running is reused and left running.
set -uo pipefail
cd "$(dirname "$0")/.."

cargo_flags=(--ignore-rust-version)

# The real peers of each tier (QEMU/iPXE/dnsmasq, sushy-tools, wimlib, TFTP clients, openssl):
# installed on first use when this runs as root, so a fresh machine needs nothing else. Without
# root (a laptop) a tier whose peer is missing skips itself loudly instead, unless its
# RECAST_REQUIRE_* variable makes it mandatory.
if [[ $(id -u) == 0 ]]; then
  for setup in tests/pxe/setup.sh tests/redfish/setup.sh tests/golden/setup.sh tests/boot/setup.sh tests/gateway/setup.sh; do
    bash "$setup" || echo "*** $setup failed; the tests that need it will skip or fail"
  done
  # tmux drives `recastctl wave status --watch` in a real terminal.
  command -v tmux >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tmux; } ||
    echo "*** installing tmux failed; the --watch test will skip or fail"
fi
# helm for the chart tests, built from its Go module (needs Go, not root; cached by version).
if command -v go >/dev/null 2>&1; then
  tests/helm/setup.sh >/dev/null || echo "*** tests/helm/setup.sh failed; the chart tests will skip or fail"
fi
started_k8s=0
if ! tests/k8s/harness.sh status 2>/dev/null; then
  tests/k8s/harness.sh up || exit 1
  started_k8s=1
fi
cleanup() {
  if [[ $started_k8s == 1 ]]; then
    tests/k8s/harness.sh down || true
  fi
}
trap cleanup EXIT

log="$(mktemp)"
# Tests that skip themselves (a missing optional peer) write their reason here, because cargo
# hides the output of tests that pass.
export RECAST_SKIP_LOG="$(mktemp)"
status=0
# With arguments, only those cargo test targets (`make e2e`: the end-to-end suite); without,
# the whole workspace. --no-fail-fast: one failing suite must not hide the others.
if (($#)); then targets=("$@"); else targets=(--workspace --no-fail-fast); fi
cargo test "${cargo_flags[@]}" "${targets[@]}" 2>&1 | tee "$log" || status=$?
# The whole run also checks that README.md's commands work as written (after the cargo tests,
# which built every binary they use).
if ((!$#)); then
  echo
  echo "*** README commands (tests/readme-commands.sh)"
  tests/readme-commands.sh || status=1
fi
# cargo prints one "test result" line per test binary, the last often a doc-test run with no
# tests; close with the totals so a reader (or CI) sees what ran.
skipped=$(wc -l < "$RECAST_SKIP_LOG")
if ((skipped > 0)); then
  echo
  echo "*** $skipped test(s) SKIPPED themselves:"
  sort "$RECAST_SKIP_LOG" | uniq -c
fi
awk -v skipped="$skipped" '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1); if ($i ~ /^ignored;?$/) s += $(i-1) } }
     END { printf "\ntests: %d passed, %d failed, %d skipped\n", p - skipped, f, s + skipped }' "$log"
rm -f "$log" "$RECAST_SKIP_LOG"
exit "$status"
