#!/usr/bin/env bash
# Test peer: a real Prometheus 2.42 (Debian package) serving backfilled TSDB blocks.
# See /work/shared/PEERS.md "Prometheus 2.42 (Debian) with months of GPU data".
#
#   prometheus.sh install                          apt-get the package if prometheus/promtool are missing
#   prometheus.sh start STATE_DIR [BLOCKS_DIR [FLAG...]]
#       copy BLOCKS_DIR's blocks into STATE_DIR/data (Prometheus rewrites what it serves, so the
#       cached originals stay untouched), start prometheus on 127.0.0.1:<free port> with
#       --storage.tsdb.retention.time=3650d (the default 15 d would delete old backfilled blocks at
#       start-up) and any extra FLAGs, wait until /-/ready answers; last stdout line = URL.
#       STATE_DIR/prometheus.yml, if the caller wrote one, is the configuration (scrape jobs).
#   prometheus.sh stop STATE_DIR                   SIGTERM, up to 10 s, then SIGKILL
#
# Optional env for start: PROMETHEUS_START_TIMEOUT (seconds, default 60).
set -euo pipefail

die() { echo "prometheus.sh: $*" >&2; exit 1; }
# shellcheck source=tests/peers/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

cmd_install() {
    if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
        echo "installing prometheus (apt-get)" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends prometheus >/dev/null; } \
            || die "could not install prometheus"
    fi
    command -v prometheus
}

cmd_start() {
    local state="${1:-}" blocks="${2:-}"
    [ -n "$state" ] || die "usage: prometheus.sh start STATE_DIR [BLOCKS_DIR [FLAG...]]"
    shift $(( $# < 2 ? $# : 2 ))
    command -v prometheus >/dev/null 2>&1 || die "not installed; run: $0 install"
    mkdir -p "$state"
    state="$(cd "$state" && pwd)"
    if [ -f "$state/pid" ] && kill -0 "$(cat "$state/pid")" 2>/dev/null; then
        die "already running (pid $(cat "$state/pid")) in $state"
    fi
    mkdir -p "$state/data"
    if [ -n "$blocks" ]; then
        [ -d "$blocks" ] || die "no blocks directory $blocks"
        cp -a "$blocks/." "$state/data/"
    fi
    # A prometheus.yml the caller put in STATE_DIR is used as it is (e.g. scrape jobs for a
    # loopback exporter); otherwise no scrape jobs: this Prometheus serves the history it was given.
    [ -f "$state/prometheus.yml" ] || printf 'global:\n  scrape_interval: 1m\nscrape_configs: []\n' > "$state/prometheus.yml"

    local port
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')"
    nohup prometheus \
        --config.file="$state/prometheus.yml" \
        --storage.tsdb.path="$state/data" \
        --storage.tsdb.retention.time=3650d \
        --web.listen-address="127.0.0.1:$port" \
        "$@" >>"$state/prometheus.log" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" > "$state/pid"
    local url="http://127.0.0.1:$port"
    echo "$url" > "$state/url"

    peer_wait_ready prometheus "$url/-/ready" "$pid" "$state/prometheus.log" "${PROMETHEUS_START_TIMEOUT:-60}" \
        || die "start-up failed"
    echo "$url"
}

cmd_stop() {
    local state="${1:-}"
    [ -n "$state" ] || die "usage: prometheus.sh stop STATE_DIR"
    peer_stop_pidfile "$state/pid"
}

case "${1:-}" in
    install) shift; cmd_install "$@" ;;
    start)   shift; cmd_start "$@" ;;
    stop)    shift; cmd_stop "$@" ;;
    *) echo "usage: $0 {install|start STATE_DIR [BLOCKS_DIR [FLAG...]]|stop STATE_DIR}" >&2; exit 2 ;;
esac
