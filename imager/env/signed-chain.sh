#!/usr/bin/env bash
# Lays out the signed network boot chain for UEFI Secure Boot machines under a boot root:
#
#   DIR/sb/shimx64.efi   Debian's shim, signed by Microsoft's UEFI CA (2011 and 2023)  shim-signed
#   DIR/sb/grubx64.efi   Debian's signed GRUB network image (prefix /grub)             grub-efi-amd64-signed
#
# Shim fetches grubx64.efi from the directory of its own boot file, so both sit in sb/. GRUB then
# reads grub/grub.cfg over TFTP, which recast's boot service generates (no file), and boots
# linux/vmlinuz (Debian's signed kernel, laid out by imager/env/build.sh) with linux/initrd.
#
#   imager/env/signed-chain.sh --out DIR
#
# The packages are fetched with `apt-get download` and unpacked with `dpkg-deb -x`, never
# installed: installing shim-signed would run grub-install on this host. The unpacked files are
# cached by package version under $RECAST_SIGNED_CHAIN_CACHE (default <repo>/target/signed-chain/).
set -euo pipefail
umask 022
say() { echo "[signed-chain] $*"; }
die() { echo "[signed-chain] error: $*" >&2; exit 1; }
usage() { echo "usage: $0 --out DIR" >&2; exit 2; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=""
while (($#)); do
  case $1 in
    --out) out=${2:?}; shift 2 ;;
    -h|--help) usage ;;
    *) echo "unknown argument: $1" >&2; usage ;;
  esac
done
[[ -n $out ]] || usage
cache=${RECAST_SIGNED_CHAIN_CACHE:-$repo/target/signed-chain}

pkgs=(shim-signed grub-efi-amd64-signed)
# The installed version when a package is installed, else the candidate apt would fetch.
versions=()
for p in "${pkgs[@]}"; do
  v=$(dpkg-query -W -f='${Version}' "$p" 2>/dev/null || true)
  [[ -n $v ]] || v=$(apt-cache policy "$p" | awk '/Candidate:/ {print $2}')
  [[ -n $v && $v != "(none)" ]] || die "apt knows no $p (Debian main; run apt-get update)"
  versions+=("$p=$v")
done
key=$(printf '%s\n' "${versions[@]}" | sha256sum | cut -c1-16)
dir=$cache/$key
if [[ ! -f $dir/shimx64.efi || ! -f $dir/grubx64.efi ]]; then
  say "fetching ${versions[*]}"
  tmp=$(mktemp -d "$cache.tmp.XXXXXX" 2>/dev/null || { mkdir -p "$cache"; mktemp -d "$cache.tmp.XXXXXX"; })
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && apt-get download -qq "${versions[@]}" >/dev/null) \
    || (apt-get update -qq && cd "$tmp" && apt-get download -qq "${versions[@]}" >/dev/null) \
    || die "cannot download ${versions[*]}"
  for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$tmp/x"; done
  install -m 0644 "$tmp/x/usr/lib/shim/shimx64.efi.signed" "$tmp/shimx64.efi"
  # grubnetx64: the network image, whose prefix is /grub (not grubx64.efi.signed, the disk one).
  install -m 0644 "$tmp/x/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed" "$tmp/grubx64.efi"
  # The disk image, for test disks that boot under Secure Boot (prefix /EFI/debian).
  install -m 0644 "$tmp/x/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed" "$tmp/grubx64-disk.efi"
  printf '%s\n' "${versions[@]}" > "$tmp/versions"
  mkdir -p "$cache"
  rm -rf "$dir"
  mkdir "$dir"
  mv "$tmp/shimx64.efi" "$tmp/grubx64.efi" "$tmp/grubx64-disk.efi" "$tmp/versions" "$dir/"
fi
mkdir -p "$out/sb"
install -m 0644 "$dir/shimx64.efi" "$out/sb/shimx64.efi"
install -m 0644 "$dir/grubx64.efi" "$out/sb/grubx64.efi"
say "laid out $out/sb/{shimx64,grubx64}.efi ($(tr '\n' ' ' < "$dir/versions"))"
