#!/usr/bin/env bash
# A real Kubernetes control plane for recast's tests: etcd 3.6 and kube-apiserver, built from
# their Go modules by build.sh, started on loopback with generated certificates.
#
#   tests/k8s/harness.sh up      start (idempotent: a healthy running harness is reused)
#   tests/k8s/harness.sh down    stop everything and remove the state directory
#   tests/k8s/harness.sh status  exit 0 when the apiserver answers /readyz
#   tests/k8s/harness.sh restart-apiserver  stop and start kube-apiserver (same port, same etcd)
#
# State lives in $RECAST_K8S_DIR (default: <repo>/.k8s). `up` writes there:
#   kubeconfig   admin (system:masters) client-certificate kubeconfig
#   env          KUBECONFIG=..., KUBECTL=..., RECAST_K8S_BIN=... for tests to source
#   *.log        etcd and kube-apiserver logs
#
# Without Go on PATH the harness cannot build its binaries: `up` then skips loudly (exit 0, no
# env file, so the Kubernetes tests skip themselves) unless RECAST_REQUIRE_K8S=1, when it fails.
# RECAST_K8S_APISERVER_EXTRA_ARGS adds flags to kube-apiserver (the harness's own tests use it to
# make the server fail on purpose).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
state="${RECAST_K8S_DIR:-$repo/.k8s}"
ready_timeout="${RECAST_K8S_READY_TIMEOUT:-120}"

log() { echo "[k8s-harness] $*" >&2; }

cached_bin_dir() {
  "$here/build.sh" --print-dir
}

# A port below the kernel's ephemeral range (32768-60999): a port from bind(0) is also what
# the next outgoing connection may take, and kube-apiserver once found its port in use (CI).
free_port() {
  python3 - "$state" <<'PY'
import os, random, socket, sys
taken = set()
path = os.path.join(sys.argv[1], "ports.taken")
if os.path.exists(path):
    taken = {int(p) for p in open(path).read().split()}
for _ in range(1000):
    port = random.randint(20000, 31999)
    if port in taken:
        continue
    try:
        s = socket.socket(); s.bind(("127.0.0.1", port)); s.close()
    except OSError:
        continue
    open(path, "a").write(f"{port}\n")
    print(port)
    break
else:
    sys.exit("no free port between 20000 and 31999")
PY
}

is_running() { # pidfile
  [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

readyz() {
  [[ -f "$state/apiserver.port" ]] || return 1
  curl -sf --max-time 3 --cacert "$state/pki/ca.crt" \
    --cert "$state/pki/admin.crt" --key "$state/pki/admin.key" \
    "https://127.0.0.1:$(cat "$state/apiserver.port")/readyz" >/dev/null 2>&1
}

stop_pidfile() { # pidfile name
  local pidfile="$1" name="$2"
  [[ -f "$pidfile" ]] || return 0
  local pid
  pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2>/dev/null; then
    # Each daemon runs in its own session (setsid), so killing the group catches children.
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name (pid $pid) ignored SIGTERM; killing"
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$pidfile"
}

fail_with_logs() { # message
  log "ERROR: $1"
  for f in etcd kube-apiserver; do
    if [[ -f "$state/$f.log" ]]; then
      log "---- last 40 lines of $state/$f.log ----"
      tail -n 40 "$state/$f.log" >&2
    fi
  done
  down_quiet
  exit 1
}

down_quiet() {
  stop_pidfile "$state/kube-apiserver.pid" kube-apiserver
  stop_pidfile "$state/etcd.pid" etcd
}

make_pki() {
  local pki="$state/pki"
  mkdir -p "$pki"
  (
    cd "$pki"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3 -subj "/CN=recast-test-ca" \
      -keyout ca.key -out ca.crt 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
      -keyout apiserver.key -out apiserver.csr 2>/dev/null
    cat > apiserver.ext <<EOF
subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.0.0.1
extendedKeyUsage=serverAuth
EOF
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3 \
      -extfile apiserver.ext -out apiserver.crt 2>/dev/null
    # The admin identity tests act as; system:masters bypasses RBAC like a cluster admin.
    openssl req -newkey rsa:2048 -nodes -subj "/CN=recast-test-admin/O=system:masters" \
      -keyout admin.key -out admin.csr 2>/dev/null
    printf 'extendedKeyUsage=clientAuth\n' > client.ext
    openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3 \
      -extfile client.ext -out admin.crt 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  )
}

write_kubeconfig() { # port
  local port="$1" pki="$state/pki"
  cat > "$state/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: recast-test
  cluster:
    server: https://127.0.0.1:$port
    certificate-authority: $pki/ca.crt
users:
- name: recast-test-admin
  user:
    client-certificate: $pki/admin.crt
    client-key: $pki/admin.key
contexts:
- name: recast-test
  context:
    cluster: recast-test
    user: recast-test-admin
    namespace: default
current-context: recast-test
EOF
}

# Starts kube-apiserver against etcd and waits for /readyz.
start_apiserver() { # bin etcd_port api_port ready_timeout
  local bin="$1" etcd_port="$2" api_port="$3" ready_timeout="$4"
  log "starting kube-apiserver on 127.0.0.1:$api_port"
  local pki="$state/pki"
  setsid "$bin/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" \
    --service-account-issuer https://kubernetes.default.svc \
    --service-account-key-file "$pki/sa.pub" \
    --service-account-signing-key-file "$pki/sa.key" \
    --service-cluster-ip-range 10.0.0.0/24 \
    --authorization-mode RBAC \
    --enable-priority-and-fairness=false \
    --profiling=false \
    ${RECAST_K8S_APISERVER_EXTRA_ARGS:-} \
    > "$state/kube-apiserver.log" 2>&1 < /dev/null &
  echo $! > "$state/kube-apiserver.pid"

  deadline=$((SECONDS + ready_timeout))
  local waited=0
  until readyz; do
    is_running "$state/kube-apiserver.pid" || fail_with_logs "kube-apiserver exited during start-up"
    ((SECONDS < deadline)) || fail_with_logs "kube-apiserver not ready after ${ready_timeout}s"
    sleep 0.5
    waited=$((waited + 1))
    ((waited % 20 == 0)) && log "waiting for kube-apiserver /readyz ($((waited / 2))s)"
  done
  return 0
}

# Stops kube-apiserver and starts it again on the same port with the same etcd: what a
# control-plane upgrade or a crash looks like to clients (the e2e suite's fault).
restart_apiserver() {
  [[ -f "$state/etcd.port" ]] || { log "ERROR: not running (no $state/etcd.port)"; exit 1; }
  local bin
  bin="$(sed -n 's/^RECAST_K8S_BIN=//p' "$state/env")"
  stop_pidfile "$state/kube-apiserver.pid" kube-apiserver
  start_apiserver "$bin" "$(cat "$state/etcd.port")" "$(cat "$state/apiserver.port")" "$ready_timeout"
  log "kube-apiserver restarted"
}

up() {
  if is_running "$state/kube-apiserver.pid" && is_running "$state/etcd.pid" && readyz; then
    log "already running: KUBECONFIG=$state/kubeconfig"
    return 0
  fi
  down_quiet
  rm -rf "$state"
  mkdir -p "$state"

  if ! command -v go >/dev/null 2>&1 && [[ ! -x "$(cached_bin_dir)/kube-apiserver" ]]; then
    if [[ "${RECAST_REQUIRE_K8S:-}" == 1 ]]; then
      log "ERROR: Go is not installed, so kube-apiserver and etcd cannot be built"
      exit 1
    fi
    log "*** SKIPPING the Kubernetes tier: Go is not installed (install Go 1.25+ to run it) ***"
    return 0
  fi

  local bin
  bin="$("$here/build.sh")"
  local etcd_port etcd_peer api_port
  etcd_port="$(free_port)"
  etcd_peer="$(free_port)"
  api_port="$(free_port)"
  echo "$api_port" > "$state/apiserver.port"
  make_pki

  log "starting etcd on 127.0.0.1:$etcd_port"
  # --unsafe-no-fsync: test data is thrown away, and fsync on a shared disk dominates
  # apiserver latency.
  setsid "$bin/etcd" --name recast-test --data-dir "$state/etcd-data" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" \
    --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "recast-test=http://127.0.0.1:$etcd_peer" \
    --listen-metrics-urls "" --unsafe-no-fsync --log-level warn \
    > "$state/etcd.log" 2>&1 < /dev/null &
  echo $! > "$state/etcd.pid"

  local deadline=$((SECONDS + 30))
  until curl -sf --max-time 2 "http://127.0.0.1:$etcd_port/health" >/dev/null 2>&1; do
    is_running "$state/etcd.pid" || fail_with_logs "etcd exited during start-up"
    ((SECONDS < deadline)) || fail_with_logs "etcd not healthy after 30s"
    sleep 0.3
  done

  echo "$etcd_port" > "$state/etcd.port"
  start_apiserver "$bin" "$etcd_port" "$api_port" "$ready_timeout"
  write_kubeconfig "$api_port"

  cat > "$state/env" <<EOF
KUBECONFIG=$state/kubeconfig
KUBECTL=$bin/kubectl
RECAST_K8S_BIN=$bin
EOF
  log "ready: KUBECONFIG=$state/kubeconfig (kubectl: $bin/kubectl)"
}

down() {
  down_quiet
  # Any stray process still running from this state directory (an earlier crashed run).
  pkill -f -- "--data-dir $state/etcd-data" 2>/dev/null || true
  rm -rf "$state"
  log "stopped"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) readyz ;;
  restart-apiserver) restart_apiserver ;;
  *)
    echo "usage: $0 up|down|status|restart-apiserver" >&2
    exit 2
    ;;
esac
