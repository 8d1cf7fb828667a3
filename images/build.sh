#!/usr/bin/env bash
# Builds the recast-operator image from images/operator/Containerfile without a registry, and
# smoke-tests it: `recast-operator --version`, then a short embedded-mode run as the image's
# non-root user (health, readiness, the store created, HTTP boot serving Debian's iPXE binary
# the way the chart's init container lays it out), stopped with SIGTERM.
#
#   images/build.sh [--release]  puts cargo's debug (default) or release build of
#                                recast-operator and recastctl in the image (cargo builds them
#                                first; a no-op when they are current)
#   images/build.sh --bin-dir D  uses D/recast-operator and D/recastctl as they are (the tests:
#                                a cargo build with other features would rebuild and replace
#                                the binaries other tests are running)
#   RECAST_IMAGE_TAG=...         image name (default localhost/recast-operator:<version>)
#   RECAST_CACHE=/path           cache root (default ~/.cache/recast)
#   RECAST_IMAGE_WORK=DIR        buildah's storage (default target/recast-image); the image stays
#                                there: buildah --root DIR/storage --storage-driver vfs push TAG ...
#   RECAST_IMAGE_OCI_ARCHIVE=F   also write the image to F as an OCI archive (podman load -i F)
#   RECAST_IMAGE_CLEAN=1         remove DIR afterwards (the tests do: vfs storage is large)
#
# No registry is reachable here, so the bases come from Debian's packages: debootstrap makes a
# minimal bookworm root file system (cached under RECAST_CACHE/image-base/ by suite and package
# list, outside target/), buildah turns it into BASE_IMAGE (`FROM scratch`), and the build
# stage's image is that base plus the binary cargo already built (the Containerfile skips its
# compile when /out/recast-operator exists; a release build inside the image would take longer
# than CI allows). Needs root: debootstrap and buildah's chroot isolation.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
SUITE="bookworm"
MIRROR="${RECAST_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# What the runtime needs beyond minbase: TLS roots for BMCs and image downloads; wimlib and
# udpcast for multicast sessions (the pipable form of each image, udp-sender).
INCLUDE="ca-certificates,wimtools,udpcast"
cache_root="${RECAST_CACHE:-$HOME/.cache/recast}"
base_key="$SUITE-minbase-$(echo "$INCLUDE" | sha256sum | cut -c1-12)"
base_tar="$cache_root/image-base/$base_key.tar"
work="${RECAST_IMAGE_WORK:-$repo/target/recast-image}"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -n1)"
tag="${RECAST_IMAGE_TAG:-localhost/recast-operator:$version}"
profile=debug
cargo_profile=()
bin_dir=""
case "${1:-}" in
  "") ;;
  --release) profile=release; cargo_profile=(--release) ;;
  --bin-dir)
    [[ -n "${2:-}" ]] || { echo "usage: $0 [--release | --bin-dir DIR]" >&2; exit 2; }
    bin_dir="$2"
    ;;
  *) echo "usage: $0 [--release | --bin-dir DIR]" >&2; exit 2 ;;
esac

log() { echo "[image] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ $(id -u) == 0 ]] || die "run as root: debootstrap and buildah's chroot isolation need it"
missing=()
command -v buildah >/dev/null 2>&1 || missing+=(buildah)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if ((${#missing[@]})); then
  log "installing ${missing[*]} from Debian"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=900 update -qq
  apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends "${missing[@]}"
fi

if [[ -z "$bin_dir" ]]; then
  bin_dir="${CARGO_TARGET_DIR:-$repo/target}/$profile"
  log "cargo build ($profile) of recast-operator and recastctl"
  (cd "$repo" && cargo build --ignore-rust-version -q "${cargo_profile[@]}" -p recast-operator -p recastctl --bins) \
    || die "cargo build failed"
fi
for bin in recast-operator recastctl; do
  [[ -x "$bin_dir/$bin" ]] || die "no $bin in $bin_dir (cargo build -p recast-operator -p recastctl)"
done

start=$SECONDS
# Everything buildah stores lives under $work (vfs copies every layer, so it is wiped first).
rm -rf "$work"
mkdir -p "$work"
bah=(buildah --root "$work/storage" --runroot "$work/run" --storage-driver vfs)
export BUILDAH_ISOLATION=chroot

# 1. The Debian base, from Debian's packages.
if [[ ! -f "$base_tar" ]]; then
  log "debootstrap $SUITE (minbase + $INCLUDE) from $MIRROR (first run only; about 2-4 minutes)"
  mkdir -p "$(dirname "$base_tar")"
  rootfs="$(mktemp -d "$cache_root/image-base/.rootfs.XXXXXX")"
  trap 'rm -rf "$rootfs"' EXIT
  debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 30 "$work/debootstrap.log" >&2; die "debootstrap failed (log above)"; }
  # What a slim base leaves out: package lists and caches, logs, man pages.
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/log/* \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/doc/*/changelog*
  # Written to a temporary name first, so an interrupted run never leaves a half base.
  tar -C "$rootfs" --numeric-owner -cf "$base_tar.tmp" .
  mv "$base_tar.tmp" "$base_tar"
  rm -rf "$rootfs"
  trap - EXIT
  log "base cached at $base_tar"
else
  log "base: cached $base_tar"
fi
ctr="$("${bah[@]}" from scratch)"
mnt="$("${bah[@]}" mount "$ctr")"
tar -C "$mnt" --numeric-owner -xf "$base_tar"
"${bah[@]}" umount "$ctr" >/dev/null
"${bah[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd /bin/bash "$ctr"
"${bah[@]}" commit -q --rm "$ctr" localhost/recast-debian:"$SUITE" >/dev/null
log "base image localhost/recast-debian:$SUITE ($((SECONDS - start))s)"

# 2. The build stage's image: the base plus the prebuilt binary, stripped.
ctr="$("${bah[@]}" from localhost/recast-debian:"$SUITE")"
mnt="$("${bah[@]}" mount "$ctr")"
for bin in recast-operator recastctl; do
  install -D -m 0755 "$bin_dir/$bin" "$mnt/out/$bin"
  strip "$mnt/out/$bin" 2>/dev/null || true
done
"${bah[@]}" umount "$ctr" >/dev/null
"${bah[@]}" commit -q --rm "$ctr" localhost/recast-prebuilt:"$version" >/dev/null

# 3. The Containerfile itself.
log "buildah bud images/operator/Containerfile -> $tag"
"${bah[@]}" bud --isolation chroot --layers=false -q \
  --build-arg RUST_IMAGE=localhost/recast-prebuilt:"$version" \
  --build-arg BASE_IMAGE=localhost/recast-debian:"$SUITE" \
  -f "$repo/images/operator/Containerfile" -t "$tag" "$repo" >"$work/bud.log" 2>&1 \
  || { tail -n 40 "$work/bud.log" >&2; die "buildah bud failed (log above)"; }
log "built $tag in $((SECONDS - start))s"

# 4. Smoke tests inside the image.
config="$("${bah[@]}" inspect --type image --format '{{.OCIv1.Config.User}} {{.OCIv1.Config.Entrypoint}}' "$tag")"
log "image config: user and entrypoint: $config"
[[ "$config" == "65532:65532 [/usr/local/bin/recast-operator]" ]] \
  || die "the image must run /usr/local/bin/recast-operator as 65532:65532, not: $config"

ctr="$("${bah[@]}" from "$tag")"
mnt="$("${bah[@]}" mount "$ctr")"
smoke_pid=""
cleanup() {
  if [[ -n "$smoke_pid" ]]; then kill "$smoke_pid" 2>/dev/null || true; fi
  "${bah[@]}" umount "$ctr" >/dev/null 2>&1 || true
  "${bah[@]}" rm "$ctr" >/dev/null 2>&1 || true
}
trap cleanup EXIT

in_image() { chroot --userspec=65532:65532 "$mnt" "$@"; }

got="$(in_image /usr/local/bin/recast-operator --version)"
log "recast-operator --version: $got"
[[ "$got" == "recast-operator $version" ]] || die "--version printed '$got', expected 'recast-operator $version'"
got="$(in_image /usr/local/bin/recastctl --version)"
[[ "$got" == "recastctl $version" ]] || die "recastctl --version printed '$got', expected 'recastctl $version'"

for f in undionly.kpxe snponly.efi ipxe.efi; do
  cmp -s "$mnt/usr/share/recast/boot/ipxe/$f" /usr/lib/ipxe/"$f" 2>/dev/null \
    || [[ ! -f /usr/lib/ipxe/$f && -s "$mnt/usr/share/recast/boot/ipxe/$f" ]] \
    || die "/usr/share/recast/boot/ipxe/$f is missing or differs from Debian's ipxe package"
done
log "iPXE: $(cat "$mnt/usr/share/recast/boot/ipxe/VERSION")"
# The signed chain: PE files with an Authenticode signature (a security directory entry).
for f in shimx64.efi grubx64.efi; do
  [[ -s "$mnt/usr/share/recast/boot/sb/$f" ]] || die "/usr/share/recast/boot/sb/$f is missing"
  [[ "$(head -c2 "$mnt/usr/share/recast/boot/sb/$f")" == "MZ" ]] || die "/usr/share/recast/boot/sb/$f is not a PE file"
done
log "signed chain: $(tr '\n' ';' < "$mnt/usr/share/recast/boot/sb/VERSION")"
# Multicast sessions' tools run as the image's user.
in_image wimlib-imagex --version >/dev/null || die "wimlib-imagex does not run in the image"
in_image sh -c 'command -v udp-sender' >/dev/null || die "udp-sender is missing from the image"
log "multicast tools: $(in_image wimlib-imagex --version | head -1); udp-sender present"

# The chart's layout: a writable data volume, iPXE copied in by the init container's command.
data=/var/lib/recast
in_image /bin/cp -R /usr/share/recast/boot "$data/"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
port="$(free_port)"
boot_port="$(free_port)"
# A few of examples/ (no golden image: its URL is a placeholder), loaded at start.
install -d -o 65532 -g 65532 "$mnt/tmp/examples"
cp "$repo/examples/endpoints.yaml" "$repo/examples/policy.yaml" "$mnt/tmp/examples/"
chroot --userspec=65532:65532 "$mnt" /usr/local/bin/recast-operator run --backend embedded \
  --data-dir "$data" --listen "127.0.0.1:$port" --power-driver record --load /tmp/examples \
  --boot-http "127.0.0.1:$boot_port" --boot-root "$data/boot" >"$work/smoke.log" 2>&1 &
smoke_pid=$!
ready=0
for _ in $(seq 1 100); do
  if curl -sf --max-time 2 "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; then ready=1; break; fi
  kill -0 "$smoke_pid" 2>/dev/null || break
  sleep 0.2
done
((ready)) || { cat "$work/smoke.log" >&2; die "the operator in the image never became ready"; }
curl -sf "http://127.0.0.1:$port/healthz" >/dev/null || die "/healthz failed"
curl -sf "http://127.0.0.1:$port/metrics" | grep -q '^# ' || die "/metrics served no metrics"
curl -sf "http://127.0.0.1:$boot_port/boot.ipxe" | head -n1 | grep -q '^#!ipxe' || die "HTTP boot served no iPXE script"
curl -sf -o "$work/snponly.efi" "http://127.0.0.1:$boot_port/artifacts/ipxe/snponly.efi" \
  || die "HTTP boot did not serve ipxe/snponly.efi from the boot root"
cmp -s "$work/snponly.efi" "$mnt/usr/share/recast/boot/ipxe/snponly.efi" || die "HTTP boot served different iPXE bytes"
ls "$mnt$data" | grep -q . || die "the embedded store wrote nothing to $data"
# recastctl in the image reads the running operator's store, as `kubectl exec` would.
listing="$(in_image /usr/local/bin/recastctl --data-dir "$data" get rep)" \
  || die "recastctl get rep failed in the image"
grep -q kiosk-01 <<<"$listing" || die "recastctl get rep does not list the loaded kiosk-01: $listing"
owner="$(stat -c %u "$mnt$data/$(ls "$mnt$data" | grep -v '^boot$' | head -n1)")"
[[ "$owner" == 65532 ]] || die "the store's files belong to uid $owner, expected 65532"
kill -TERM "$smoke_pid"
status=0
wait "$smoke_pid" || status=$?
smoke_pid=""
[[ $status == 0 ]] || { cat "$work/smoke.log" >&2; die "the operator exited $status after SIGTERM"; }
log "smoke run: ready, healthy, metrics, HTTP boot with iPXE, recastctl reads the store, store owned by 65532, clean stop"
cleanup
trap - EXIT
if [[ -n "${RECAST_IMAGE_OCI_ARCHIVE:-}" ]]; then
  "${bah[@]}" push -q "$tag" "oci-archive:$RECAST_IMAGE_OCI_ARCHIVE:$tag"
  log "wrote $RECAST_IMAGE_OCI_ARCHIVE"
fi
size="$("${bah[@]}" images --format '{{.Size}}' "$tag" 2>/dev/null || echo "?")"
if [[ "${RECAST_IMAGE_CLEAN:-}" == 1 ]]; then
  rm -rf "$work"
fi
log "image $tag OK in $((SECONDS - start))s (size: $size)"
