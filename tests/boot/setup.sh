#!/usr/bin/env bash
# Installs the independent TFTP peers the boot-service tests and `make bench-boot` run against:
# tftp-hpa's client, atftp (windowsize), and tftpd-hpa (the benchmark's reference server).
# Idempotent: installs only what is missing, and always leaves tftpd-hpa's system service
# stopped and disabled, because the tests and the bench start their own copy on a high port
# and a stray daemon on UDP 69 would answer PXE clients on a real network.
set -euo pipefail

need=()
command -v tftp >/dev/null 2>&1 || need+=(tftp-hpa)
command -v atftp >/dev/null 2>&1 || need+=(atftp)
command -v in.tftpd >/dev/null 2>&1 || need+=(tftpd-hpa)

if ((${#need[@]} > 0)); then
  export DEBIAN_FRONTEND=noninteractive
  sudo_cmd=()
  [[ $(id -u) == 0 ]] || sudo_cmd=(sudo)
  # Another apt run (a parallel setup script) may hold the lock: wait for it rather than fail.
  # policy-rc.d exit 101 forbids maintainer scripts to start services during this install,
  # so tftpd-hpa never binds port 69, not even for a moment.
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo_cmd[@]}" tee "$policy" >/dev/null
    "${sudo_cmd[@]}" chmod +x "$policy"
    created_policy=1
  fi
  "${sudo_cmd[@]}" apt-get -o DPkg::Lock::Timeout=600 update -qq || true
  status=0
  "${sudo_cmd[@]}" apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need[@]}" || status=$?
  if [[ $created_policy == 1 ]]; then
    "${sudo_cmd[@]}" rm -f "$policy"
  fi
  ((status == 0)) || exit "$status"
fi

# Whatever happened before this script ran (an earlier install without policy-rc.d), make sure
# the packaged daemon is neither running nor enabled.
sudo_cmd=()
[[ $(id -u) == 0 ]] || sudo_cmd=(sudo)
if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
  "${sudo_cmd[@]}" systemctl disable --now tftpd-hpa >/dev/null 2>&1 || true
fi
if [[ -x /etc/init.d/tftpd-hpa ]]; then
  "${sudo_cmd[@]}" /etc/init.d/tftpd-hpa stop >/dev/null 2>&1 || true
  command -v update-rc.d >/dev/null 2>&1 && "${sudo_cmd[@]}" update-rc.d tftpd-hpa disable >/dev/null 2>&1 || true
fi
# A daemon started some other way (e.g. no init system in a container) is found by its pid file.
if [[ -f /run/tftpd-hpa.pid ]]; then
  "${sudo_cmd[@]}" kill "$(cat /run/tftpd-hpa.pid)" 2>/dev/null || true
fi

for tool in tftp atftp in.tftpd; do
  command -v "$tool" >/dev/null 2>&1 || { echo "setup.sh: $tool is still missing" >&2; exit 1; }
done
echo "boot test peers ready: tftp (tftp-hpa), atftp, in.tftpd (tftpd-hpa, service disabled)"
