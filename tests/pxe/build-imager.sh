#!/usr/bin/env bash
# Builds the test imaging environment into $1: linux/vmlinuz (Debian's kernel) and
# linux/initrd (busybox + the few modules QEMU's e1000 NIC and virtio disk need + imager-init).
# It plays WinPE's part in the PXE tests: it speaks recast's imaging protocol, downloads the
# image with a Range-resumed GET, checks its sha256, writes it to the disk and reports.
set -euo pipefail
out=${1:?usage: build-imager.sh OUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)
kver=$(ls /lib/modules | sort -V | tail -1)
[[ -n $kver && -f /boot/vmlinuz-$kver ]] || { echo "no Debian kernel in /boot (run tests/pxe/setup.sh)"; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work"/{bin,proc,sys,dev,tmp,lib/modules,etc} "$out/linux"
cp /bin/busybox "$work/bin/busybox"
mods=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk e1000)
: > "$work/lib/modules/order"
for m in "${mods[@]}"; do
  f=$(find "/lib/modules/$kver/kernel" -name "$m.ko*" | head -1)
  [[ -n $f ]] || continue
  case $f in
    *.xz) xz -dc "$f" > "$work/lib/modules/$m.ko" ;;
    *.zst) zstd -dqc "$f" > "$work/lib/modules/$m.ko" ;;
    *) cp "$f" "$work/lib/modules/$m.ko" ;;
  esac
  echo "$m.ko" >> "$work/lib/modules/order"
done
cp "$here/imager-init.sh" "$work/init"
chmod +x "$work/init"
(cd "$work" && find . | cpio -o -H newc --quiet | gzip -1) > "$out/linux/initrd"
cp "/boot/vmlinuz-$kver" "$out/linux/vmlinuz"
echo "[pxe] imaging environment: $out/linux (kernel $kver)"
