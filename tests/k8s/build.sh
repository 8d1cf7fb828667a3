#!/usr/bin/env bash
# Builds the real Kubernetes peers (kube-apiserver, kubectl, etcd) from their published Go
# modules and caches them outside target/, keyed by version, so `cargo clean` never costs a
# 20-minute rebuild. Prints the directory holding the binaries.
#
#   tests/k8s/build.sh            build (or reuse) and print the bin dir
#   tests/k8s/build.sh --print-dir  print the bin dir without building
#   RECAST_CACHE=/path ...        cache root (default: ~/.cache/recast)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
# Keep these in step with tests/k8s/kube/go.mod and tests/k8s/etcd/go.mod.
KUBE_VERSION="v1.35.4"
ETCD_VERSION="v3.6.5"
cache_root="${RECAST_CACHE:-$HOME/.cache/recast}"
bin_dir="$cache_root/k8s/kube-$KUBE_VERSION-etcd-$ETCD_VERSION/bin"

log() { echo "[k8s-build] $*" >&2; }

if [[ "${1:-}" == "--print-dir" ]]; then
  echo "$bin_dir"
  exit 0
fi

build_one() { # module-dir output-name package
  local mod="$1" out="$2" pkg="$3"
  if [[ -x "$bin_dir/$out" ]]; then
    log "$out: cached at $bin_dir/$out"
    return
  fi
  log "$out: building $pkg from $(basename "$mod")/go.mod (first run only; several minutes on 2 cores)"
  local start=$SECONDS
  mkdir -p "$bin_dir"
  # Build into a temp name and rename, so an interrupted build never leaves a half binary
  # that later runs would take for a cached one.
  (cd "$mod" && CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o "$bin_dir/.$out.tmp" "$pkg")
  mv "$bin_dir/.$out.tmp" "$bin_dir/$out"
  log "$out: built in $((SECONDS - start))s"
}

build_one "$here/etcd" etcd recast.dev/tests/k8s/etcd
build_one "$here/kube" kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
build_one "$here/kube" kubectl k8s.io/kubernetes/cmd/kubectl
echo "$bin_dir"
