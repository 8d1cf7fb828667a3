#!/usr/bin/env bash
# Installs what the PXE tier needs (idempotent): QEMU with Debian's iPXE ROMs, the iPXE
# binaries recast serves, dnsmasq as the site's DHCP server, and a Debian kernel + busybox for
# the test imaging environment. Called by .ci/run; safe to run again.
set -euo pipefail
# faketime: the end-to-end suite's clock-jump fault runs the operator an hour ahead.
# The imaged disks are read back with tools that are not recast: sfdisk (fdisk), mtools, ntfs-3g,
# hivexml (libhivex-bin); the golden image's boot-manager stand-ins are built with
# grub-mkstandalone (grub-efi-amd64-bin) and GNU as/ld (binutils), which also strips the imager,
# and signed by test CAs (openssl) with sbsign (sbsigntool). iptables: the kube end-to-end run
# spreads the agents' connections over the chart's gateway replicas as a Service does.
pkgs=(qemu-system-x86 ovmf ipxe-qemu ipxe dnsmasq-base busybox-static linux-image-amd64 cpio iproute2 curl faketime
  fdisk mtools ntfs-3g wimtools libhivex-bin grub-efi-amd64-bin binutils syslinux-common grub-common
  sbsigntool openssl iptables)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "[pxe] installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# recast's Linux imaging environment, which the PXE tier and the end-to-end suite boot.
"$(dirname "$0")/../../imager/env/setup.sh"
# The signed chain for Secure Boot machines (Debian's shim and GRUB, fetched, not installed):
# fills the cache the tests lay out from (target/signed-chain/).
sbroot=$(mktemp -d)
"$(dirname "$0")/../../imager/env/signed-chain.sh" --out "$sbroot"
rm -rf "$sbroot"
# virt-firmware's virt-fw-vars enrolls the test CAs (and dbx entries) into copies of OVMF's
# variable store, in a venv under ~/.cache/recast (tests/src/secure_boot.rs finds it there).
VIRT_FIRMWARE_VERSION="${VIRT_FIRMWARE_VERSION:-26.10}"
venv="${RECAST_VIRT_FIRMWARE_VENV:-$HOME/.cache/recast/virt-firmware/$VIRT_FIRMWARE_VERSION}"
if ! [ -x "$venv/bin/virt-fw-vars" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "virt-firmware==$VIRT_FIRMWARE_VERSION"
  echo "[pxe] virt-firmware $VIRT_FIRMWARE_VERSION installed in $venv"
fi
