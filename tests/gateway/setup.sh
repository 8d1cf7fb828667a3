#!/bin/sh
# Installs what the agent-gateway tests and benchmark need: openssl (test certificates) and
# nginx (the benchmark's reference server). Idempotent: installs only what is missing.
set -eu
missing=""
command -v openssl >/dev/null 2>&1 || missing="$missing openssl"
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing="$missing nginx"
if [ -n "$missing" ]; then
    echo "tests/gateway/setup.sh: installing$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing
    # The Debian package starts a system nginx on port 80; the benchmark runs its own.
    if command -v systemctl >/dev/null 2>&1; then systemctl disable --now nginx >/dev/null 2>&1 || true; fi
    if [ -f /run/nginx.pid ]; then kill "$(cat /run/nginx.pid)" 2>/dev/null || true; fi
fi
