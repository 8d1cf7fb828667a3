#!/usr/bin/env bash
# Installs the independent WIM writer/verifier the golden-image tests compare against
# (Debian's wimtools: wimlib-imagex). Idempotent: does nothing when it is already there.
set -euo pipefail
if command -v wimlib-imagex >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
if [[ $(id -u) != 0 ]]; then SUDO=sudo; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get -o DPkg::Lock::Timeout=900 update -qq
$SUDO apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends wimtools
command -v wimlib-imagex >/dev/null
