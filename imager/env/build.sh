#!/usr/bin/env bash
# Builds recast's Linux imaging environment: DIR/linux/vmlinuz (Debian's signed kernel, as
# installed) and DIR/linux/initrd (busybox, recast-imager, the tools it drives with their shared
# libraries, syslinux's BIOS boot code, the kernel modules for disks/NICs/FUSE/FAT, and ./init).
# `--imaging-environment linux` serves them as artifacts/linux/{vmlinuz,initrd}, which
# operator/templates/boot/imaging-linux.ipxe.tera boots with
#   initrd=initrd console=ttyS0 quiet recast.claim=<url>
#
#   imager/env/build.sh --imager target/release/recast-imager --out DIR [--kernel KVER] [--ca FILE]
#
# --ca FILE puts the site's CA (PEM) at /etc/recast/ca.pem: the imager then trusts the boot
# service's HTTPS listener (--boot-https), and no other server; without it, HTTPS is refused.
#
# Reproducible: every file gets mtime $SOURCE_DATE_EPOCH (default 0) and owner 0:0, the archive
# is a sorted `cpio -H newc --reproducible`, compressed without timestamps. The same inputs give
# the same bytes.
#
# Cached by content: KEY = sha256 of a manifest of every input (this script, ./init, the imager
# binary's sha256, the kernel version, SOURCE_DATE_EPOCH, RECAST_IMAGER_EXTRA_MODULES, and the
# `dpkg-query -W` version of every package a copied file or a build tool comes from; a copied
# file that no package owns contributes its sha256 instead). $RECAST_IMAGER_CACHE/KEY/ (default
# <repo>/target/imaging-environment/KEY/) holds vmlinuz, initrd and the manifest; a hit is two
# plain copies. A miss builds into a temporary directory next to it and renames it into place.
# Nothing prunes old keys (rm -rf the cache directory to reclaim the space).
#
# Packages: imager/env/setup.sh installs them. RECAST_IMAGER_EXTRA_MODULES="igb r8169 ..." adds
# kernel modules (with their dependencies) to the built-in list below.
set -euo pipefail
umask 022
export LC_ALL=C

say() { echo "[imager-env] $*"; }
die() { echo "[imager-env] error: $*" >&2; exit 1; }
usage() { echo "usage: $0 --imager PATH_TO_recast-imager --out DIR [--kernel KVER] [--ca FILE]" >&2; exit 2; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
imager="" out="" kver="" ca=""
while (($#)); do
  case $1 in
    --imager) imager=${2:?}; shift 2 ;;
    --out) out=${2:?}; shift 2 ;;
    --kernel) kver=${2:?}; shift 2 ;;
    --ca) ca=${2:?}; shift 2 ;;
    -h|--help) usage ;;
    *) echo "unknown argument: $1" >&2; usage ;;
  esac
done
[[ -n $imager && -n $out ]] || usage
[[ -f $imager ]] || die "no imager binary at $imager (cargo build --release -p recast-imager)"
imager=$(realpath "$imager")
if [[ -n $ca ]]; then
  [[ -f $ca ]] || die "no CA file at $ca"
  grep -q -- '-----BEGIN CERTIFICATE-----' "$ca" || die "$ca holds no PEM certificate"
fi
epoch=${SOURCE_DATE_EPOCH:-0}
[[ $epoch =~ ^[0-9]+$ ]] || die "SOURCE_DATE_EPOCH must be a number of seconds"
cache=${RECAST_IMAGER_CACHE:-$repo/target/imaging-environment}

# The newest installed kernel that has both its image and its modules (linux-image-amd64).
if [[ -z $kver ]]; then
  kver=$(for d in /lib/modules/*/; do k=$(basename "$d"); [[ -f /boot/vmlinuz-$k ]] && echo "$k"; done | sort -V | tail -1)
fi
[[ -n $kver && -f /boot/vmlinuz-$kver && -d /lib/modules/$kver/kernel ]] \
  || die "no Debian kernel with modules in /boot and /lib/modules (run imager/env/setup.sh)"

# ---------------------------------------------------------------------------------------------
# What goes in.

# Tools recast-imager runs, found where Debian installs them; each lands at the same path in the
# initramfs (PATH=/bin:/sbin:/usr/bin:/usr/sbin there). `syslinux` is Debian's mtools-based
# installer: it writes the VBR and ldlinux.sys itself and runs `mattrib` and `mcopy` through
# /bin/sh (popen) with a temporary MTOOLSRC in $TMPDIR or /tmp, so mtools comes along.
# udp-receiver (udpcast): joins a wave batch's multicast session (recast_core::multicast).
tools=(wimlib-imagex mkntfs ntfs-3g sfdisk mkfs.fat hivexsh syslinux mtools blkid udp-receiver)
# Names that are symlinks to one of the tools: mtools' applets, mount helpers, mkfs aliases.
tool_links=(mcopy:mtools mattrib:mtools mdir:mtools mount.ntfs-3g:ntfs-3g mount.ntfs:ntfs-3g
  mkfs.vfat:mkfs.fat mkfs.ntfs:mkntfs)
# syslinux-common data recast-imager copies to the disk for BIOS boot.
syslinux_files=(/usr/lib/syslinux/mbr/mbr.bin /usr/lib/syslinux/mbr/gptmbr.bin
  /usr/lib/syslinux/modules/bios/chain.c32 /usr/lib/syslinux/modules/bios/libcom32.c32
  /usr/lib/syslinux/modules/bios/libutil.c32 /usr/lib/syslinux/modules/bios/ldlinux.c32)
# glibc's iconv modules for the DOS code pages: mtools (so `syslinux --install`) fails without
# them ("Error converting to codepage 850"), mkfs.fat falls back to a built-in table.
gconv=/usr/lib/x86_64-linux-gnu/gconv
# hivexsh converts key and value names (Latin-1, UTF-16LE) with iconv: without these it fails
# with "hivex_node_name: Bad file descriptor" on the first key it prints.
gconv_files=("$gconv/gconv-modules.cache" "$gconv/IBM850.so" "$gconv/IBM437.so"
  "$gconv/ISO8859-1.so" "$gconv/UTF-16.so" "$gconv/UNICODE.so")
# Kernel modules, loaded in this order by ./init (`modprobe`, which reads modules.dep that
# `depmod -b` writes). Their dependencies and soft dependencies are resolved here with the host's
# kmod (`modprobe --show-depends`) and loaded first. Built-in ones are skipped. USB storage is
# left out on purpose: a USB stick must never be a candidate disk.
modules=(
  virtio_pci virtio_blk virtio_scsi virtio_net e1000 e1000e     # QEMU/KVM guests
  ahci libata sd_mod nvme crc64_rocksoft_generic                # SATA and NVMe (+ NVMe PI crc)
  fuse vfat fat nls_cp437 nls_iso8859-1 nls_utf8 nls_ascii      # ntfs-3g, the ESP
  efivarfs                                                      # UEFI variables
)
# shellcheck disable=SC2206
modules+=(${RECAST_IMAGER_EXTRA_MODULES:-})
# Build tools whose versions shape the output bytes.
build_pkgs=(cpio kmod zstd)

find_tool() {
  local d
  for d in /usr/sbin /usr/bin /sbin /bin; do
    [[ -x $d/$1 ]] && { echo "$d/$1"; return; }
  done
  die "$1 not found (run imager/env/setup.sh)"
}

# The path dpkg knows for a host file (merged-/usr hosts reach /sbin/x as /usr/sbin/x).
declare -A owner=()      # host path -> package
dpkg_owners() {
  local -a cands=() p
  for p in "$@"; do
    cands+=("$p" "$(realpath -m "$p")")
    case $p in /usr/*) cands+=("${p#/usr}") ;; *) cands+=("/usr$p") ;; esac
  done
  local line pkgs path
  while IFS= read -r line; do
    [[ $line == *": /"* && $line != diversion* ]] || continue
    pkgs=${line%%: /*}; path=/${line#*: /}
    [[ $pkgs == *,* ]] && continue        # shared directories
    owner[$path]=${pkgs%%:*}
  done < <(dpkg -S "${cands[@]}" 2>/dev/null || true)
}
owner_of() {
  local p=$1 c
  for c in "$p" "$(realpath -m "$p")" "${p#/usr}" "/usr$p"; do
    [[ -n ${owner[$c]:-} ]] && { echo "${owner[$c]}"; return; }
  done
}
# The path a tool has in its package: /sbin/mkntfs rather than /usr/sbin/mkntfs.
package_path() {
  local p=$1 c
  for c in "${p#/usr}" "$p"; do
    [[ -n ${owner[$c]:-} ]] && { echo "$c"; return; }
  done
  echo "$p"
}

is_elf() { [[ $(head -c 4 "$1" | od -An -c | tr -d ' ') == '177ELF' ]]; }
# Shared libraries (and the ELF interpreter) of an ELF file, one path a line; nothing for a
# static binary or a script.
libs_of() {
  is_elf "$1" || return 0
  local out
  out=$(ldd "$1" 2>&1) || { [[ $out == *"not a dynamic executable"* || $out == *"statically linked"* ]] && return 0; die "ldd $1: $out"; }
  [[ $out == *"not found"* ]] && die "ldd $1: missing libraries:"$'\n'"$out"
  awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$out"
}

say "kernel $kver; imager $imager"
declare -A tool_path=()
for t in "${tools[@]}"; do tool_path[$t]=$(find_tool "$t"); done
declare -A libs=()
for f in "$imager" "${tool_path[@]}"; do
  while IFS= read -r l; do [[ -n $l ]] && libs[$l]=1; done < <(libs_of "$f")
done
interp=/lib64/ld-linux-x86-64.so.2
[[ -e $interp ]] || die "no ELF interpreter at $interp"
for f in "${syslinux_files[@]}" "${gconv_files[@]}"; do [[ -f $f ]] || die "$f missing (run imager/env/setup.sh)"; done

# Module files: `modprobe --show-depends` prints `insmod PATH` for each module a name needs, its
# soft dependencies and dependencies first, and `builtin NAME` for built-in ones.
mod_files=() mod_names=()
declare -A seen_mod=()
for m in "${modules[@]}"; do
  deps=$(modprobe -S "$kver" --show-depends "$m" 2>&1) || die "kernel module $m: $deps"
  while read -r kind path _; do
    [[ $kind == insmod ]] || continue
    [[ -n ${seen_mod[$path]:-} ]] && continue
    seen_mod[$path]=1
    mod_files+=("$path")
    n=$(basename "$path"); n=${n%%.ko*}; mod_names+=("${n//-/_}")
  done <<<"$deps"
done

# ---------------------------------------------------------------------------------------------
# The cache key.
host_files=(/bin/busybox "/boot/vmlinuz-$kver" "${tool_path[@]}" "${!libs[@]}" "$interp"
  "${syslinux_files[@]}" "${gconv_files[@]}" "${mod_files[@]}")
dpkg_owners "${host_files[@]}"
declare -A pkgs=()
unowned=()
for f in "${host_files[@]}"; do
  p=$(owner_of "$f")
  if [[ -n $p ]]; then pkgs[$p]=1; else unowned+=("$f"); fi
done
for p in "${build_pkgs[@]}"; do pkgs[$p]=1; done
manifest=$(
  echo "recast imaging environment 1"
  echo "build.sh $(sha256sum < "$here/build.sh" | cut -d' ' -f1)"
  echo "init $(sha256sum < "$here/init" | cut -d' ' -f1)"
  echo "recast-imager $(sha256sum < "$imager" | cut -d' ' -f1)"
  [[ -z $ca ]] || echo "ca $(sha256sum < "$ca" | cut -d' ' -f1)"
  echo "kernel $kver"
  echo "source-date-epoch $epoch"
  echo "extra-modules ${RECAST_IMAGER_EXTRA_MODULES:-}"
  dpkg-query -W -f='package ${Package} ${Version}\n' "${!pkgs[@]}" | sort
  for f in "${unowned[@]}"; do echo "file $f $(sha256sum < "$f" | cut -d' ' -f1)"; done | sort
)
key=$(sha256sum <<<"$manifest" | cut -d' ' -f1)

publish() {                      # copy the two files from $1 into $out/linux, each atomically
  mkdir -p "$out/linux"
  local f
  for f in vmlinuz initrd; do
    cp "$1/$f" "$out/linux/.$f.$$"
    mv -f "$out/linux/.$f.$$" "$out/linux/$f"
  done
  say "$out/linux: vmlinuz $(stat -c %s "$out/linux/vmlinuz") bytes, initrd $(stat -c %s "$out/linux/initrd") bytes"
}

if [[ -f $cache/$key/initrd && -f $cache/$key/vmlinuz ]]; then
  say "cached: $cache/$key"
  publish "$cache/$key"
  exit 0
fi
say "building $key (${#mod_files[@]} modules, ${#libs[@]} libraries, ${#pkgs[@]} packages)"

# ---------------------------------------------------------------------------------------------
# The tree.
mkdir -p "$cache"
tmp=$(mktemp -d "$cache/.build-$key.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
root=$tmp/root
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,lib/x86_64-linux-gnu,lib64,etc/recast,proc,sys,dev,run,tmp,mnt,root}
chmod 1777 "$root/tmp"
mkdir -p "$root/usr/lib/syslinux/mbr" "$root/usr/lib/syslinux/modules/bios" "$root$gconv"

put() { install -m "$3" "$1" "$root$2"; }     # put SRC DEST MODE (follows symlinks)

put /bin/busybox /bin/busybox 0755
put "$imager" /bin/recast-imager 0755
put "$here/init" /init 0755
declare -A taken=()
for t in "${tools[@]}"; do
  dest=$(package_path "${tool_path[$t]}")
  mkdir -p "$root$(dirname "$dest")"
  put "${tool_path[$t]}" "$dest" 0755
  taken[$t]=$dest
done
for pair in "${tool_links[@]}"; do
  name=${pair%%:*} target=${taken[${pair#*:}]}
  ln -s "$(basename "$target")" "$root$(dirname "$target")/$name"
  taken[$name]=1
done
taken[recast-imager]=1
# busybox applets at their usual paths, except names a real tool has.
while IFS= read -r a; do
  name=$(basename "$a")
  [[ -n ${taken[$name]:-} || -e $root/$a ]] && continue
  mkdir -p "$root/$(dirname "$a")"
  rel=$(realpath -m --relative-to="$root/$(dirname "$a")" "$root/bin/busybox")
  ln -s "$rel" "$root/$a"
done < <(/bin/busybox --list-full)

# Shared libraries under their sonames, the interpreter where ELF headers look for it.
for l in "${!libs[@]}"; do
  [[ $l == "$interp" ]] && continue
  put "$l" "/lib/x86_64-linux-gnu/$(basename "$l")" 0755
done
put "$interp" /lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 0755
ln -s ../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$root/lib64/ld-linux-x86-64.so.2"

for f in "${syslinux_files[@]}"; do put "$f" "$f" 0644; done
for f in "${gconv_files[@]}"; do put "$f" "$f" 0644; done

# Modules under their kernel/ paths, then depmod writes modules.dep (+ .bin, alias, ...).
mroot=$root/lib/modules/$kver
mkdir -p "$mroot"
for f in "${mod_files[@]}"; do
  rel=${f#/lib/modules/$kver/}
  [[ $rel != "$f" ]] || rel=${f#/usr/lib/modules/$kver/}
  mkdir -p "$mroot/$(dirname "$rel")"
  case $f in
    *.ko.xz) xz -dc "$f" > "$mroot/${rel%.xz}" ;;
    *.ko.zst) zstd -dqc "$f" > "$mroot/${rel%.zst}" ;;
    *) install -m 0644 "$f" "$mroot/$rel" ;;
  esac
done
for f in modules.builtin modules.builtin.modinfo; do
  [[ -f /lib/modules/$kver/$f ]] && install -m 0644 "/lib/modules/$kver/$f" "$mroot/$f"
done
(cd "$mroot" && find kernel -name '*.ko' | sort) > "$mroot/modules.order"
depmod -b "$root" "$kver"
printf '%s\n' "${mod_names[@]}" > "$root/etc/recast/modules"

# /etc: enough for glibc, ntfs-3g (mtab) and udhcpc's script (resolv.conf, written at run time).
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$root/etc/passwd"
printf 'root:x:0:\n' > "$root/etc/group"
printf 'passwd: files\ngroup: files\nhosts: files dns\n' > "$root/etc/nsswitch.conf"
printf '127.0.0.1 localhost\n::1 localhost\n' > "$root/etc/hosts"
ln -s /proc/self/mounts "$root/etc/mtab"
printf 'key=%s\nkernel=%s\n' "$key" "$kver" > "$root/etc/recast/imaging-environment"
[[ -z $ca ]] || install -m 0644 "$ca" "$root/etc/recast/ca.pem"

# Everything that runs must find its libraries (and nothing from the host); chroot needs root.
if ((EUID == 0)); then
  for f in /bin/recast-imager "${taken[@]}"; do
    [[ $f == /* && -x $root$f && ! -L $root$f ]] || continue
    is_elf "$root$f" || continue
    missing=$(chroot "$root" /lib64/ld-linux-x86-64.so.2 --list "$f" 2>&1 | grep -E 'not found|No such' || true)
    [[ -z $missing ]] || die "$f in the initramfs: $missing"
  done
else
  say "not root: skipping the library check inside the tree"
fi

# ---------------------------------------------------------------------------------------------
# The archive. zstd -19: nearly as small as xz and unpacked twice as fast under TCG (Debian's
# kernel has CONFIG_RD_GZIP/XZ/ZSTD=y; xz would also need --check=crc32, the kernel's xz
# decoder has no CRC64). Measured here (6.1.0-57-amd64, shell stand-in imager, cpio 51,958,784
# bytes; "/init" = kernel timestamp of "Run /init" under `qemu -accel tcg -m 512`, two boots):
#   gzip -9 -n           20,404,877 bytes    8.6 s to compress    /init at 3.2-3.5 s
#   zstd -19 -T1         15,148,266 bytes   24-32 s to compress   /init at 2.8-3.3 s
#   xz -9 --check=crc32  13,261,760 bytes   21.6 s to compress    /init at 6.8 s
# (zstd's output is the same for -T1, -T2 and -T0, and no faster with more threads here.)
find "$root" -exec touch -h -d "@$epoch" {} +
(cd "$root" && find . -print0 | sort -z | cpio --null -o -H newc --reproducible -R 0:0 --quiet) > "$tmp/initrd.cpio"
zstd -q -19 -T1 --no-progress "$tmp/initrd.cpio" -o "$tmp/initrd"
rm "$tmp/initrd.cpio"
install -m 0644 "/boot/vmlinuz-$kver" "$tmp/vmlinuz"
printf '%s\n' "$manifest" > "$tmp/manifest"
rm -rf "$root"
chmod 0755 "$tmp"
if mv -T "$tmp" "$cache/$key" 2>/dev/null; then
  trap - EXIT
  say "built: $cache/$key"
else
  say "another build stored $key first; using it"
fi
publish "$cache/$key"
