#!/usr/bin/env bash
# Builds helm from its published Go module (release binaries cannot be downloaded here) and
# caches it outside target/, keyed by version, like tests/k8s/build.sh does for the kube
# binaries. Prints the path of the helm binary.
#
#   tests/helm/setup.sh              build (or reuse) and print the binary's path
#   tests/helm/setup.sh --print-path print the path without building
#   RECAST_CACHE=/path ...           cache root (default: ~/.cache/recast)
#
# Without Go it fails with a message; the chart tests then skip loudly unless
# RECAST_REQUIRE_HELM=1.
set -euo pipefail

# helm 3 is what GitOps tools (Argo CD, Flux) still render charts with; a patch release the Go
# module proxy serves.
HELM_VERSION="v3.21.4"
# The Kubernetes minor of the client-go helm v3.21.4 builds with (k8s.io/client-go v0.36):
# helm's own release build stamps it in, and `helm template` assumes it as the cluster version.
HELM_K8S_MINOR="36"
cache_root="${RECAST_CACHE:-$HOME/.cache/recast}"
bin_dir="$cache_root/helm/$HELM_VERSION/bin"
helm="$bin_dir/helm"

log() { echo "[helm-setup] $*" >&2; }

if [[ "${1:-}" == "--print-path" ]]; then
  echo "$helm"
  exit 0
fi

if [[ -x "$helm" ]]; then
  log "helm $HELM_VERSION: cached at $helm"
  echo "$helm"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  log "ERROR: Go is not installed, so helm cannot be built (install Go 1.25+)"
  exit 1
fi

log "helm $HELM_VERSION: building helm.sh/helm/v3/cmd/helm (first run only; a few minutes on 2 cores)"
start=$SECONDS
mkdir -p "$bin_dir"
# Build into a scratch GOBIN and rename, so an interrupted build never leaves a half binary
# that later runs would take for a cached one.
scratch="$(mktemp -d "$bin_dir/.build.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT
CGO_ENABLED=0 GOBIN="$scratch" GOFLAGS=-mod=mod \
  go install -trimpath \
  -ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION \
    -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$HELM_K8S_MINOR \
    -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$HELM_K8S_MINOR" \
  "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
mv "$scratch/helm" "$helm"
log "helm $HELM_VERSION: built in $((SECONDS - start))s"
"$helm" version --short >&2
echo "$helm"
