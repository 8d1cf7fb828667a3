#!/usr/bin/env bash
# Builds the fuzz targets with libFuzzer + AddressSanitizer on the stable toolchain (what
# `cargo fuzz build` does, spelled out, since cargo-fuzz may not be installed) and runs each for
# SECONDS (default 60). Usage: fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-60}
shift || true
targets=("$@")
((${#targets[@]})) || targets=(tftp_packet tftp_request dhcp_request wim_header wim_xml agent_report event_xml)
triple=$(rustc -vV | awk '/^host:/ {print $2}')
# The workspace's lockfile pins the same dependency versions the operator builds with.
[[ -f Cargo.lock ]] || cp ../Cargo.lock .
RUSTC_BOOTSTRAP=1 RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module \
  -Cllvm-args=-sanitizer-coverage-level=4 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
  -Cllvm-args=-sanitizer-coverage-pc-table -Cllvm-args=-sanitizer-coverage-trace-compares \
  -Zsanitizer=address" \
  cargo build --ignore-rust-version --release --bins --target "$triple"
seed=$'\x00\x01boot/x64/ipxe.efi\x00octet\x00blksize\x001468\x00tsize\x000\x00windowsize\x0016\x00'
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" artifacts
  [[ -n $(ls -A "corpus/$t") ]] || printf '%s' "$seed" > "corpus/$t/seed-rrq"
  "target/$triple/release/$t" -max_total_time="$seconds" -artifact_prefix=artifacts/ "corpus/$t"
done
