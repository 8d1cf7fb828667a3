#!/usr/bin/env bash
# Builds the fuzz targets with libFuzzer + AddressSanitizer on the stable toolchain (what
# `cargo fuzz build` does, spelled out, so cargo-fuzz and a nightly toolchain are not needed)
# and runs each for SECONDS (default 60). Usage: fuzz/run.sh [SECONDS] [TARGET...]
#
# Each target starts from fuzz/seeds/TARGET (committed, tiny) plus whatever fuzz/corpus/TARGET
# gathered in earlier runs (not committed). Its output goes to fuzz/logs/TARGET.log; a crash,
# leak, out-of-memory or slow input is saved under fuzz/artifacts/TARGET/ and fails the run
# after every target has had its turn. Reproduce one with
#   fuzz/target/<host>/release/TARGET fuzz/artifacts/TARGET/crash-...
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-60}
shift || true
targets=("$@")
all=(tftp_packet tftp_request dhcp_request dhcp_reply wim_header wim_xml wim_deep
  boot_http_head boot_range redfish_json agent_report event_xml boot_trust registry_hive)
((${#targets[@]})) || targets=("${all[@]}")
triple=$(rustc -vV | awk '/^host:/ {print $2}')
# The workspace's lockfile pins the same dependency versions the operator builds with.
cp ../Cargo.lock .
echo "[fuzz] building ${#targets[@]} targets (libFuzzer + ASan, release)"
bins=()
for t in "${targets[@]}"; do bins+=(--bin "$t"); done
RUSTC_BOOTSTRAP=1 RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module \
  -Cllvm-args=-sanitizer-coverage-level=4 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
  -Cllvm-args=-sanitizer-coverage-pc-table -Cllvm-args=-sanitizer-coverage-trace-compares \
  -Zsanitizer=address" \
  cargo build --ignore-rust-version --release --target "$triple" "${bins[@]}"
failed=()
mkdir -p logs
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  seeds=()
  [[ -d "seeds/$t" ]] && seeds=("seeds/$t")
  # -rss_limit_mb and -timeout: an input that needs more than 2 GiB or 10 s counts as a
  # finding (an attacker's WIM or packet must not get that far either).
  if "target/$triple/release/$t" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
    -print_final_stats=1 -artifact_prefix="artifacts/$t/" "corpus/$t" "${seeds[@]}" \
    >"logs/$t.log" 2>&1; then
    echo "[fuzz] $t: $(grep -m1 -o 'stat::number_of_executed_units: *[0-9]*' "logs/$t.log" | awk '{print $2}') inputs in ${seconds}s, no crash"
  else
    echo "[fuzz] $t: FAILED (fuzz/logs/$t.log; inputs in fuzz/artifacts/$t/):"
    grep -E 'ERROR|panicked|SUMMARY|Test unit written' "logs/$t.log" | head -20 || tail -20 "logs/$t.log"
    failed+=("$t")
  fi
done
if ((${#failed[@]})); then
  echo "[fuzz] crashed: ${failed[*]}"
  exit 1
fi
echo "[fuzz] ${#targets[@]} targets ran ${seconds}s each without a crash"
