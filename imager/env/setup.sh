#!/usr/bin/env bash
# Installs what imager/env/build.sh puts in (or uses to build) recast's Linux imaging environment
# (idempotent: only the missing packages are installed). Safe to run again.
set -euo pipefail
pkgs=(
  linux-image-amd64 kmod          # the kernel, its modules; depmod and modprobe --show-depends
  busybox-static cpio zstd xz-utils  # /bin/sh and friends; the archive, its compression (xz: compressed modules)
  wimtools ntfs-3g fdisk dosfstools util-linux libhivex-bin   # the imaging tools (+ blkid)
  syslinux syslinux-common mtools # BIOS boot code; `syslinux --install` runs mcopy/mattrib
  libc-bin                        # ldd
  udpcast                         # udp-receiver: a wave batch's multicast session
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "[imager-env] installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
