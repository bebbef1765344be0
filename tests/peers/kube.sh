#!/usr/bin/env bash
# Real Kubernetes API peer for tests: Debian etcd-server + kube-apiserver 1.20.2
# (built from Debian's source package by kube-build.sh, cached in ~/.cache/kiln).
#
#   tests/peers/kube.sh install            # build/cache kube-apiserver, ensure etcd
#   tests/peers/kube.sh start STATE_DIR    # prints https://127.0.0.1:PORT last
#   tests/peers/kube.sh stop STATE_DIR
#
# KILN_KUBE_APISERVER_ARGS adds kube-apiserver flags (word-split), e.g. a larger pod watch cache
# for benchmarks that watch from an old resourceVersion: --watch-cache-sizes=pods#30000
#
# STATE_DIR after start:
#   kubeconfig   admin kubeconfig (bearer token, user "kiln-admin" in system:masters;
#                certificate-authority-data = the apiserver's self-signed CA, ca.crt)
#   url          https://127.0.0.1:PORT
#   token        the admin bearer token
#   pids         one PID per line: kube-apiserver, then etcd
#   etcd.log, kube-apiserver.log, etcd/ (data), certs/, sa.key, tokens.csv
# Nothing listens on anything but 127.0.0.1. No kubelet: pods never run.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KUBE_VERSION=1.20.2
CACHE_ROOT="${KILN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln}"
APISERVER="${KILN_KUBE_APISERVER:-$CACHE_ROOT/kube-apiserver-$KUBE_VERSION/kube-apiserver}"
ETCD="${KILN_ETCD:-etcd}"
READY_TIMEOUT="${KILN_KUBE_READY_TIMEOUT:-60}"

log() { printf '[kube.sh] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
usage() { echo "usage: $0 install | start STATE_DIR | stop STATE_DIR" >&2; exit 2; }

free_ports() {  # free_ports N -> N distinct free loopback ports, one per line
    python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print("\n".join(str(s.getsockname()[1]) for s in socks))
PY
}

# wait_http URL TIMEOUT PID [TOKEN] -> 0 once URL answers 200 (TLS not verified);
# gives up early when PID exits.
wait_http() {
    python3 - "$@" <<'PY'
import ssl, sys, time, urllib.request
import os
url, timeout, pid = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
token = sys.argv[4] if len(sys.argv) > 4 else None
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
deadline, last = time.monotonic() + timeout, "no answer"
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        print("process %d exited while waiting for %s" % (pid, url), file=sys.stderr)
        sys.exit(1)
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=3, context=ctx) as r:
            if r.status == 200:
                sys.exit(0)
            last = "HTTP %d" % r.status
    except Exception as e:  # connection refused, 500 while post-start hooks run, ...
        last = repr(e)
    time.sleep(0.3)
print("timed out after %gs waiting for %s: %s" % (timeout, url, last), file=sys.stderr)
sys.exit(1)
PY
}

alive() { kill -0 "$1" 2>/dev/null; }

# our_pid PID -> true if PID is a running etcd / kube-apiserver (guards PID reuse)
our_pid() {
    alive "$1" && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qE '(^|/)(etcd|kube-apiserver) '
}

stop_pids() {  # SIGTERM, wait up to 10 s, SIGKILL leftovers
    local pids=() p i
    for p in "$@"; do our_pid "$p" && pids+=("$p"); done
    ((${#pids[@]})) || return 0
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        local left=0
        for p in "${pids[@]}"; do alive "$p" && left=1; done
        ((left)) || return 0
        sleep 0.1
    done
    for p in "${pids[@]}"; do
        if alive "$p"; then log "SIGKILL $p"; kill -KILL "$p" 2>/dev/null || true; fi
    done
}

cmd_install() {
    "$HERE/kube-build.sh"
    if ! command -v "$ETCD" >/dev/null; then
        log "installing etcd-server"
        local sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo -n"
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=600 \
            install -y --no-install-recommends etcd-server >/dev/null \
        || { $sudo apt-get -q update >/dev/null && $sudo env DEBIAN_FRONTEND=noninteractive \
             apt-get -q -o DPkg::Lock::Timeout=600 install -y --no-install-recommends etcd-server >/dev/null; }
    fi
    local version; version="$("$ETCD" --version)"  # not `| head -n1`: with pipefail, etcd's SIGPIPE failed the install now and then
    printf '%s\n' "${version%%$'\n'*}" >&2
    "$APISERVER" --version >&2
}

cmd_start() {
    local state="${1:-}"; [[ -n "$state" ]] || usage
    [[ -x "$APISERVER" ]] || die "$APISERVER missing: run '$0 install' first"
    command -v "$ETCD" >/dev/null || die "etcd not found: run '$0 install' first"
    command -v openssl >/dev/null || die "openssl not found"
    mkdir -p "$state"; state="$(cd "$state" && pwd)"
    if [[ -s "$state/pids" ]]; then
        local p; for p in $(cat "$state/pids"); do
            our_pid "$p" && die "$state already has a running peer (pid $p); run '$0 stop $state' first"
        done
    fi
    rm -rf "$state/etcd" "$state/certs"
    rm -f "$state/pids" "$state/url" "$state/kubeconfig" "$state/ca.crt" "$state"/*.log
    mkdir -p "$state/etcd" "$state/certs"
    chmod 700 "$state/etcd"

    local ports etcd_client etcd_peer api_port
    ports=($(free_ports 3)); etcd_client=${ports[0]}; etcd_peer=${ports[1]}; api_port=${ports[2]}

    local token; token="$(openssl rand -hex 24)"
    printf '%s\n' "$token" >"$state/token"
    printf '%s,kiln-admin,kiln-admin,"system:masters"\n' "$token" >"$state/tokens.csv"
    [[ -s "$state/sa.key" ]] || openssl genrsa -out "$state/sa.key" 2048 2>/dev/null
    chmod 600 "$state/token" "$state/tokens.csv" "$state/sa.key"

    log "starting etcd on 127.0.0.1:$etcd_client"
    setsid "$ETCD" --name kiln --data-dir "$state/etcd" \
        --listen-client-urls "http://127.0.0.1:$etcd_client" \
        --advertise-client-urls "http://127.0.0.1:$etcd_client" \
        --listen-peer-urls "http://127.0.0.1:$etcd_peer" \
        --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
        --initial-cluster "kiln=http://127.0.0.1:$etcd_peer" \
        --initial-cluster-state new \
        </dev/null >"$state/etcd.log" 2>&1 &
    local etcd_pid=$!
    echo "$etcd_pid" >"$state/pids"
    if ! wait_http "http://127.0.0.1:$etcd_client/health" 30 "$etcd_pid" || ! alive "$etcd_pid"; then
        log "etcd did not become healthy; last lines of $state/etcd.log:"
        tail -n 30 "$state/etcd.log" >&2 || true
        stop_pids "$etcd_pid"; rm -f "$state/pids"; exit 1
    fi

    log "starting kube-apiserver on https://127.0.0.1:$api_port"
    setsid "$APISERVER" \
        --etcd-servers "http://127.0.0.1:$etcd_client" \
        --bind-address 127.0.0.1 --advertise-address 127.0.0.1 \
        --secure-port "$api_port" --insecure-port 0 \
        --cert-dir "$state/certs" \
        --token-auth-file "$state/tokens.csv" \
        --authorization-mode RBAC \
        --endpoint-reconciler-type none \
        --disable-admission-plugins ServiceAccount \
        --service-account-key-file "$state/sa.key" \
        --service-account-signing-key-file "$state/sa.key" \
        --service-account-issuer https://kubernetes.default.svc.cluster.local \
        --service-cluster-ip-range 10.96.0.0/16 \
        --allow-privileged=true \
        --profiling=false \
        ${KILN_KUBE_APISERVER_ARGS:-} \
        </dev/null >"$state/kube-apiserver.log" 2>&1 &
    local api_pid=$!
    printf '%s\n%s\n' "$api_pid" "$etcd_pid" >"$state/pids"

    local url="https://127.0.0.1:$api_port"
    if ! wait_http "$url/readyz" "$READY_TIMEOUT" "$api_pid" "$token" || ! alive "$api_pid"; then
        log "kube-apiserver did not become ready (timeout ${READY_TIMEOUT}s); last lines of $state/kube-apiserver.log:"
        tail -n 40 "$state/kube-apiserver.log" >&2 || true
        log "last lines of $state/etcd.log:"
        tail -n 10 "$state/etcd.log" >&2 || true
        stop_pids "$api_pid" "$etcd_pid"; rm -f "$state/pids"; exit 1
    fi

    # --cert-dir holds apiserver.crt = leaf (SAN IP 127.0.0.1) + its self-signed CA:
    # hand the CA to clients so TLS is verified; fall back to skipping verification.
    local tls_line="insecure-skip-tls-verify: true"
    awk '/BEGIN CERTIFICATE/{n++} n==2' "$state/certs/apiserver.crt" >"$state/ca.crt" 2>/dev/null || true
    if [[ -s "$state/ca.crt" ]] && openssl verify -CAfile "$state/ca.crt" "$state/certs/apiserver.crt" >/dev/null 2>&1; then
        tls_line="certificate-authority-data: $(base64 -w0 <"$state/ca.crt")"
    else
        rm -f "$state/ca.crt"
    fi
    cat >"$state/kubeconfig" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: kiln
  cluster:
    server: $url
    $tls_line
users:
- name: kiln-admin
  user:
    token: $token
contexts:
- name: kiln
  context:
    cluster: kiln
    user: kiln-admin
    namespace: default
current-context: kiln
KCFG
    chmod 600 "$state/kubeconfig"
    echo "$url" >"$state/url"
    log "ready: $url (kubeconfig: $state/kubeconfig)"
    echo "$url"
}

cmd_stop() {
    local state="${1:-}"; [[ -n "$state" ]] || usage
    [[ -s "$state/pids" ]] || { log "no $state/pids; nothing to stop"; return 0; }
    stop_pids $(cat "$state/pids")
    rm -f "$state/pids"
    log "stopped"
}

case "${1:-}" in
    install) cmd_install ;;
    start) shift; cmd_start "$@" ;;
    stop) shift; cmd_stop "$@" ;;
    *) usage ;;
esac
