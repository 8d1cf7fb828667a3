#!/usr/bin/env bash
# `make k8s-demo`: starts the real Kubernetes control plane,
# installs recast's CRDs and applies the examples, so `kubectl get recast` shows the API.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/k8s/harness.sh up
set -a; source .k8s/env; set +a
"$KUBECTL" apply --server-side --force-conflicts -f crds/yaml
"$KUBECTL" wait --for=condition=Established --timeout=60s -f crds/yaml
"$KUBECTL" apply -f examples/
"$KUBECTL" get recast
echo
echo "The API is served at $(grep server: .k8s/kubeconfig | awk '{print $2}')."
echo "Try: KUBECONFIG=$KUBECONFIG $KUBECTL get rep -o wide    (stop with: make k8s-down)"
