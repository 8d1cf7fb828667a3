#!/usr/bin/env bash
# A wave's image transfer: N machines (receiver processes, one network namespace each, on one
# bridge) fetch the same pipable WIM from the boot server, unicast HTTP from recast's boot
# service against one udpcast multicast session, in one run, for N = 1, 10, 50. The server's
# uplink is shaped to LINK (default 1gbit, a site's boot server on 1 GbE) with tc; the session
# is capped at RATE (default 900m). Wave time: from the start until the last machine has every
# byte. Server bytes: the tx_bytes of the server's interface (not anyone's own count). The first
# machine of each run hashes what it got; the run fails if that is not the file's sha256.
# Receivers discard the bytes (no apply): what is measured is the network, not 50 applies on
# 2 cores.
# usage: multicast.sh RECAST_OPERATOR_BINARY [SIZE_MIB] [N...]
set -euo pipefail
bin=$(realpath "${1:?usage: multicast.sh path/to/recast-operator [SIZE_MIB] [N...]}")
size_mib=${2:-128}
shift $(($# < 2 ? $# : 2))
if (($#)); then counts=("$@"); else counts=(1 10 50); fi
link=${LINK:-1gbit}
rate=${RATE:-900m}
command -v udp-sender >/dev/null || { echo "[bench] udpcast is needed (imager/env/setup.sh)"; exit 1; }

tag=$$
hub=mbh$tag
work=$(mktemp -d /tmp/recast-bench-mc.XXXX)
pids=()
max_n=0
for n in "${counts[@]}"; do ((n > max_n)) && max_n=$n; done
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del "$hub" 2>/dev/null || true
  ip netns del "mbs$tag" 2>/dev/null || true
  for ((i = 1; i <= max_n; i++)); do ip netns del "mbr$i-$tag" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/root/images" "$work/tree/Windows/System32"
# A pipable WIM of incompressible data (what a golden image's payload mostly is).
head -c "$((size_mib * 1024 * 1024))" /dev/urandom >"$work/tree/Windows/System32/payload.bin"
wimlib-imagex capture "$work/tree" "$work/golden.wim" golden --pipable --compress=none >/dev/null 2>&1
sha=$(sha256sum "$work/golden.wim" | cut -d' ' -f1)
# The boot service serves images by digest.
file="$work/root/images/$sha.wim"
mv "$work/golden.wim" "$file"
bytes=$(stat -c %s "$file")

# The network: a bridge in a hub namespace, the server and each machine on it.
ip netns add "$hub"
ip -n "$hub" link add br0 type bridge
ip -n "$hub" link set br0 up
member() { # name index
  local ns=$1 i=$2
  ip netns add "$ns"
  ip link add "v$i-$tag" type veth peer name "p$i-$tag"
  ip link set "v$i-$tag" netns "$ns"
  ip link set "p$i-$tag" netns "$hub"
  ip -n "$ns" link set "v$i-$tag" name eth0
  ip -n "$ns" addr add "10.81.$((i / 250)).$((i % 250 + 1))/16" broadcast + dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
  ip -n "$hub" link set "p$i-$tag" master br0
  ip -n "$hub" link set "p$i-$tag" up
}
srv=mbs$tag
member "$srv" 0
server_ip=10.81.0.1
# The boot server's uplink.
ip netns exec "$srv" tc qdisc add dev eth0 root tbf rate "$link" burst 1mb latency 200ms
for ((i = 1; i <= max_n; i++)); do member "mbr$i-$tag" "$i"; done

free_port=8081
RECAST_LOG=warn ip netns exec "$srv" "$bin" run --backend embedded --data-dir "$work/data" \
  --listen "127.0.0.1:18080" --boot-http "$server_ip:$free_port" --boot-root "$work/root" \
  2>"$work/recast.log" &
pids+=("$!")
for _ in $(seq 100); do
  ip netns exec "$srv" curl -sf -o /dev/null -r 0-0 "http://$server_ip:$free_port/artifacts/images/$sha.wim" && break
  sleep 0.2
done
url="http://$server_ip:$free_port/artifacts/images/$sha.wim"
tx() { ip netns exec "$srv" cat /sys/class/net/eth0/statistics/tx_bytes; }
# Busy and total jiffies of the whole host (every receiver, the bridge, the server share it).
cpu() { awk '/^cpu /{print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8}' /proc/stat; }
busy_since() { # "busy total" at the start -> percent busy since
  local b0 t0 b1 t1
  read -r b0 t0 <<<"$1"
  read -r b1 t1 < <(cpu)
  echo $(((b1 - b0) * 100 / (t1 - t0 > 0 ? t1 - t0 : 1)))
}
now() { date +%s.%N; }

unicast() { # n -> "seconds server_bytes"
  local n=$1 t0 b0 i
  only "$n"
  b0=$(tx)
  t0=$(now)
  local c0
  c0=$(cpu)
  local ps=()
  ip netns exec "mbr1-$tag" sh -c "curl -sSf '$url' | sha256sum >'$work/u1.sha'" &
  ps+=("$!")
  for ((i = 2; i <= n; i++)); do
    ip netns exec "mbr$i-$tag" curl -sSf -o /dev/null "$url" &
    ps+=("$!")
  done
  for p in "${ps[@]}"; do wait "$p"; done
  local t1
  t1=$(now)
  [[ $(cut -d' ' -f1 "$work/u1.sha") == "$sha" ]] || { echo "[bench] unicast: wrong bytes" >&2; exit 1; }
  echo "$(echo "$t1 - $t0" | bc) $(($(tx) - b0)) $(busy_since "$c0")"
}

# Only the run's N machines on the bridge: the others' ports down (a bridge floods multicast
# to every port without an IGMP querier, which would charge N=1 for 50 idle namespaces).
only() { # n
  local i
  for ((i = 1; i <= max_n; i++)); do
    if ((i <= $1)); then ip -n "$hub" link set "p$i-$tag" up; else ip -n "$hub" link set "p$i-$tag" down; fi
  done
}

multicast() { # n -> "seconds server_bytes"
  local n=$1 t0 b0 i
  only "$n"
  b0=$(tx)
  local ps=()
  # Receivers first (machines booted into the imaging environment), then the session starts
  # once all N joined (--min-receivers, as a batch does); the clock starts with the sender.
  ip netns exec "mbr1-$tag" sh -c "udp-receiver --nokbd --portbase 9000 --interface eth0 --start-timeout 120 --receive-timeout 30 2>/dev/null | sha256sum >'$work/m1.sha'" &
  ps+=("$!")
  for ((i = 2; i <= n; i++)); do
    ip netns exec "mbr$i-$tag" udp-receiver --nokbd --portbase 9000 --interface eth0 \
      --start-timeout 120 --receive-timeout 30 >/dev/null 2>&1 &
    ps+=("$!")
  done
  t0=$(now)
  local c0
  c0=$(cpu)
  # The arguments recast_core::multicast::sender_args gives (its unit test pins them).
  ip netns exec "$srv" udp-sender --nokbd --file "$file" --interface eth0 --portbase 9000 \
    --mcast-data-address 239.255.77.0 --ttl 1 --max-bitrate "$rate" --min-receivers "$n" \
    --max-wait 60 --start-timeout 120 --retries-until-drop 20 --nopointopoint >"$work/sender.log" 2>&1
  for p in "${ps[@]}"; do wait "$p"; done
  local t1
  t1=$(now)
  [[ $(cut -d' ' -f1 "$work/m1.sha") == "$sha" ]] || { echo "[bench] multicast: wrong bytes" >&2; exit 1; }
  echo "$(echo "$t1 - $t0" | bc) $(($(tx) - b0)) $(busy_since "$c0")"
}

declare -A us ub uc ms mb mc
for n in "${counts[@]}"; do
  read -r us[$n] ub[$n] uc[$n] < <(unicast "$n")
  read -r ms[$n] mb[$n] mc[$n] < <(multicast "$n")
  echo "[bench] N=$n unicast ${us[$n]} s ${ub[$n]} B ${uc[$n]}% CPU; multicast ${ms[$n]} s ${mb[$n]} B ${mc[$n]}% CPU" >&2
done

first=${counts[0]}
last=${counts[${#counts[@]} - 1]}
echo
echo "$size_mib MiB pipable WIM ($bytes bytes); server uplink $link (tc tbf); session cap $rate; $(nproc) cores"
echo
echo "| receivers | unicast HTTP: wave time | unicast: server bytes (× image) | unicast: host CPU busy | multicast: wave time | multicast: server bytes (× image) | multicast: host CPU busy |"
echo "|---|---|---|---|---|---|---|"
for n in "${counts[@]}"; do
  printf '| %s | %.1f s | %s (%.2f×) | %s%% | %.1f s | %s (%.2f×) | %s%% |\n' "$n" "${us[$n]}" "${ub[$n]}" \
    "$(echo "${ub[$n]} / $bytes" | bc -l)" "${uc[$n]}" "${ms[$n]}" "${mb[$n]}" "$(echo "${mb[$n]} / $bytes" | bc -l)" "${mc[$n]}"
done
ratio=$(echo "${ms[$last]} / ${ms[$first]}" | bc -l)
bytes_ratio=$(echo "${mb[$last]} / $bytes" | bc -l)
echo
printf 'Target: multicast wave time at N = %s within 1.5× of N = %s: %.2f× (%s); server bytes about 1× the image: %.2f× (%s).\n' \
  "$last" "$first" "$ratio" "$( (($(echo "$ratio <= 1.5" | bc))) && echo met || echo missed)" \
  "$bytes_ratio" "$( (($(echo "$bytes_ratio <= 1.2" | bc))) && echo met || echo missed)"
