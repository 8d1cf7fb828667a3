#!/bin/busybox sh
# The test imaging environment's init: recast's imaging protocol, as startnet.cmd speaks it in
# WinPE, played by busybox. Everything it does is printed to the serial console.
/bin/busybox --install -s /bin
say() { echo "imager: $*"; }
fail_now() { say "FAILED: $*"; sleep 2; poweroff -f; }
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /lib/modules/order); do insmod "/lib/modules/$m" || say "insmod $m failed"; done
arg() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
claim_url=$(arg recast.claim)
base=${claim_url%/claim}

cat > /tmp/dhcp.sh <<'S'
#!/bin/sh
[ "$1" = bound ] || exit 0
ip addr add "$ip/${mask:-24}" dev "$interface"
[ -n "$router" ] && ip route add default via "$router"
exit 0
S
chmod +x /tmp/dhcp.sh
ip link set lo up
# The NIC appears once its driver has probed it.
for i in 1 2 3 4 5 6 7 8 9 10; do [ -e /sys/class/net/eth0 ] && break; sleep 1; done
say "interfaces: $(ls /sys/class/net | tr '\n' ' ')"
ip link set eth0 up
udhcpc -i eth0 -s /tmp/dhcp.sh -q -n -t 20 -T 2 || fail_now "no DHCP lease"
say "network up: $(ip -4 -o addr show eth0 | awk '{print $4}')"

# Claim the try before anything else: the session token it answers works only from this
# machine's address. Nothing touches the disk without it.
token=""
for i in $(seq 30); do
  token=$(wget -q -O - --post-data "" "$claim_url?format=text" 2>/dev/null | head -n 1)
  [ -n "$token" ] && break
  sleep 2
done
[ -n "$token" ] || fail_now "cannot claim the try at $claim_url"
say "try claimed"
task_url="$base/task"
auth="Authorization: Bearer $token"
# Every request is retried for a minute: the boot service may be restarting (the e2e suite
# restarts it mid-download), as startnet.cmd retries in WinPE.
post() {
  for i in $(seq 30); do
    wget -q -O /dev/null --header "$auth" --header "Content-Type: application/json" --post-data "$2" "$base/$1" && return 0
    sleep 2
  done
  say "could not post $1"
}
# A second disk, when the machine has one, is where "Windows" finds its agent configuration
# (what WinPE writes into the applied image); its first line, written by the test before boot,
# may tell this imager to misbehave: recast-e2e:pause-after-half (a long pause mid-download)
# or recast-e2e:fail-apply (the apply step fails).
control=""
[ -b /dev/vdb ] && control=$(head -c 64 /dev/vdb | tr -d '\000' | head -n 1)
[ -n "$control" ] && say "control: $control"
field() { sed -n "s/.*\"$1\":\"\{0,1\}\([^\",}]*\).*/\1/p" /tmp/task.json; }

for i in $(seq 30); do
  wget -q -O /tmp/task.json --header "$auth" "$task_url" && break
  sleep 2
done
[ -s /tmp/task.json ] || fail_now "cannot fetch the task from $task_url"
url=$(field url); sha=$(field sha256); size=$(field size)
say "task: image $url ($size bytes, sha256 $sha)"
post progress '{"percent":10,"step":"download","message":"downloading the image"}'

# A download that breaks half-way (the reader stops after half the bytes) and resumes where it
# stopped with wget -c, which asks for the rest with Range: bytes=N-.
half=$((size / 2))
wget -q -O - "$url" 2>/dev/null | head -c "$half" > /tmp/image
say "first part: $(wc -c < /tmp/image) bytes"
if [ "$control" = "recast-e2e:pause-after-half" ]; then
  post progress '{"percent":30,"step":"download","message":"half the image downloaded"}'
  say "pausing mid-download"
  sleep 10
fi
resumed=""
for i in $(seq 30); do
  wget -q -c -O /tmp/image "$url" && { resumed=1; break; }
  say "download interrupted; resuming"
  sleep 2
done
[ -n "$resumed" ] || fail_now "resumed download failed"
say "resumed: $(wc -c < /tmp/image) bytes"
post progress '{"percent":45,"step":"checksum","message":"checking sha256"}'
got=$(sha256sum /tmp/image | cut -d' ' -f1)
if [ "$got" != "$sha" ]; then
  post result "{\"ok\":false,\"step\":\"checksum\",\"error\":\"sha256 $got is not $sha\"}"
  fail_now "checksum mismatch"
fi
post progress '{"percent":50,"step":"apply","message":"writing the image to /dev/vda"}'
if [ "$control" = "recast-e2e:fail-apply" ]; then
  post result '{"ok":false,"step":"apply","error":"dism /Apply-Image failed: 0x8007000d (told to fail by the test)"}'
  fail_now "apply failed (as told)"
fi
dd if=/tmp/image of=/dev/vda bs=1M conv=fsync 2>/dev/null || { post result '{"ok":false,"step":"apply","error":"cannot write /dev/vda"}'; fail_now "dd failed"; }
sync
if [ -b /dev/vdb ]; then
  for i in $(seq 30); do
    wget -q -O /tmp/agent.json --header "$auth" "$base/agent.json" && break
    sleep 2
  done
  [ -s /tmp/agent.json ] || { post result '{"ok":false,"step":"agent","error":"cannot fetch agent.json"}'; fail_now "no agent.json"; }
  dd if=/dev/zero of=/dev/vdb bs=4096 count=1 conv=fsync 2>/dev/null
  dd if=/tmp/agent.json of=/dev/vdb conv=fsync 2>/dev/null
  say "agent configuration written"
fi
post progress '{"percent":100,"step":"done","message":"image written"}'
post result '{"ok":true}'
say "done"
sleep 1
poweroff -f
