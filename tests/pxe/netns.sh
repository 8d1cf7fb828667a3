#!/usr/bin/env bash
# A provisioning network for the PXE tests, all inside network namespaces this script creates:
#   NAME-site: bridge br0 (10.77.0.1, the site's DHCP server: dnsmasq, addresses only) and
#              TAPS tap devices (tap0, tap1, ...; default 1) for the QEMU machines;
#   NAME-boot: recast's boot service on vr0 (10.77.0.2), wired to br0 by a veth pair.
# usage: netns.sh up NAME [TAPS] | netns.sh down NAME | netns.sh dnsmasq NAME LEASEFILE
# The site's dnsmasq names recast (10.77.0.2) as next-server with no boot file, as a site must
# for the signed chain in proxy mode: Debian 12's signed GRUB reads only the site's DHCPACK.
set -euo pipefail
cmd=${1:?up|down|dnsmasq} name=${2:?name}
site="$name-site" boot="$name-boot"
case $cmd in
  up)
    ip netns add "$site"
    ip netns add "$boot"
    ip -n "$site" link set lo up
    ip -n "$boot" link set lo up
    ip -n "$site" link add br0 type bridge
    ip -n "$site" addr add 10.77.0.1/24 dev br0
    ip -n "$site" link set br0 up
    # One tap per QEMU machine that may run at once (tap0, tap1, ...; default one).
    for ((i = 0; i < ${3:-1}; i++)); do
      ip -n "$site" tuntap add dev "tap$i" mode tap
      ip -n "$site" link set "tap$i" master br0
      ip -n "$site" link set "tap$i" up
    done
    ip -n "$site" link add vb0 type veth peer name vr0 netns "$boot"
    ip -n "$site" link set vb0 master br0
    ip -n "$site" link set vb0 up
    # brd +: a multicast session (udp-sender) finds its receivers by broadcast.
    ip -n "$boot" addr add 10.77.0.2/24 brd + dev vr0
    ip -n "$boot" link set vr0 up
    # Limited broadcast (255.255.255.255) needs a route out of vr0.
    ip -n "$boot" route add default dev vr0
    ;;
  dnsmasq)
    leases=${3:?lease file}
    exec ip netns exec "$site" dnsmasq --no-daemon --port=0 --interface=br0 --bind-interfaces \
      --dhcp-range=10.77.0.100,10.77.0.199,255.255.255.0,1h --dhcp-leasefile="$leases" \
      --dhcp-boot=,,10.77.0.2 --dhcp-authoritative --log-dhcp --conf-file=/dev/null
    ;;
  down)
    ip netns pids "$site" 2>/dev/null | xargs -r kill 2>/dev/null || true
    ip netns pids "$boot" 2>/dev/null | xargs -r kill 2>/dev/null || true
    ip netns del "$site" 2>/dev/null || true
    ip netns del "$boot" 2>/dev/null || true
    ;;
  *) echo "unknown command $cmd"; exit 2 ;;
esac
