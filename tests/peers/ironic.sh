#!/usr/bin/env bash
# Test peer: a real standalone OpenStack Ironic 39 (PyPI `ironic`), all-in-one process,
# noauth, rpc_transport=none, SQLite. See /work/shared/PEERS.md "OpenStack Ironic 39".
#
#   ironic.sh install           idempotent: venv at ${KILN_PEERS_DIR:-$REPO/.peers}/ironic (with sushy,
#                               the redfish hardware type's client) + ipmitool
#   ironic.sh start STATE_DIR   config + schema + background server; last stdout line = URL
#   ironic.sh stop STATE_DIR    SIGTERM, up to 10 s, then SIGKILL
#
# Optional env for start: IRONIC_FAKE_DEPLOY_DELAY, IRONIC_FAKE_CLEAN_DELAY
# ("min:max" seconds or a number, [fake] deploy_delay / clean_delay; default 0),
# IRONIC_START_TIMEOUT (default 60).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PEERS_DIR="${KILN_PEERS_DIR:-$REPO/.peers}"
VENV="$PEERS_DIR/ironic"
PIN='ironic>=39,<40'
SUSHY_PIN='sushy>=5.12'  # a requirement of ironic 39 already; named so the redfish driver never loses it

die() { echo "ironic.sh: $*" >&2; exit 1; }
# shellcheck source=tests/peers/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

cmd_install() {
    if [ ! -x "$VENV/bin/ironic" ]; then
        mkdir -p "$PEERS_DIR"
        [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
        # drop the harmless "Location 'file:///opt/...' is ignored" noise from local pip config
        "$VENV/bin/pip" install --quiet "$PIN" 2>&1 | { grep -v "^WARNING: Location 'file:" >&2 || true; }
        [ "${PIPESTATUS[0]}" -eq 0 ] || die "pip install $PIN failed"
        [ -x "$VENV/bin/ironic" ] || die "pip install did not produce $VENV/bin/ironic"
    fi
    if ! "$VENV/bin/python" -c 'import sushy' 2>/dev/null; then
        "$VENV/bin/pip" install --quiet "$SUSHY_PIN" 2>&1 | { grep -v "^WARNING: Location 'file:" >&2 || true; }
        [ "${PIPESTATUS[0]}" -eq 0 ] || die "pip install $SUSHY_PIN failed"
    fi
    if ! command -v ipmitool >/dev/null 2>&1; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y ipmitool >/dev/null 2>&1 \
            || { apt-get update >/dev/null && apt-get install -y ipmitool >/dev/null; } \
            || die "could not install ipmitool"
    fi
    echo "$VENV"
}

cmd_start() {
    local state="${1:-}"
    [ -n "$state" ] || die "usage: ironic.sh start STATE_DIR"
    [ -x "$VENV/bin/ironic" ] || die "not installed; run: $0 install"
    mkdir -p "$state"
    state="$(cd "$state" && pwd)"
    if [ -f "$state/pid" ] && kill -0 "$(cat "$state/pid")" 2>/dev/null; then
        die "already running (pid $(cat "$state/pid")) in $state"
    fi
    mkdir -p "$state/tftpboot" "$state/httpboot"

    local port conf="$state/ironic.conf"
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')"
    sed -e "s|@STATE_DIR@|$state|g" \
        -e "s|@PORT@|$port|g" \
        -e "s|@DEPLOY_DELAY@|${IRONIC_FAKE_DEPLOY_DELAY:-0}|g" \
        -e "s|@CLEAN_DELAY@|${IRONIC_FAKE_CLEAN_DELAY:-0}|g" \
        "$HERE/ironic.conf.tmpl" > "$conf"

    # Fresh DB: create_schema (fails on an existing one); reused STATE_DIR: upgrade (no-op).
    local dbcmd=create_schema
    [ -s "$state/ironic.sqlite" ] && dbcmd=upgrade
    "$VENV/bin/ironic-dbsync" --config-file "$conf" "$dbcmd" >"$state/dbsync.log" 2>&1 \
        || { tail -n 30 "$state/dbsync.log" >&2; die "ironic-dbsync $dbcmd failed"; }

    # oslo.log writes to stderr (no log_file in the config), so ironic.log gets everything.
    nohup "$VENV/bin/ironic" --config-file "$conf" >>"$state/ironic.log" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" > "$state/pid"
    local url="http://127.0.0.1:$port"
    echo "$url" > "$state/url"

    peer_wait_ready ironic "$url/v1" "$pid" "$state/ironic.log" "${IRONIC_START_TIMEOUT:-60}" \
        || die "start-up failed"
    echo "$url"
}

cmd_stop() {
    local state="${1:-}"
    [ -n "$state" ] || die "usage: ironic.sh stop STATE_DIR"
    peer_stop_pidfile "$state/pid"
}

case "${1:-}" in
    install) shift; cmd_install "$@" ;;
    start)   shift; cmd_start "$@" ;;
    stop)    shift; cmd_stop "$@" ;;
    *) echo "usage: $0 {install|start STATE_DIR|stop STATE_DIR}" >&2; exit 2 ;;
esac
