#!/usr/bin/env bash
# Test peer: Redfish services nobody here wrote, from OpenStack sushy-tools (PyPI `sushy-tools`
# 2.x): `sushy-static` serving a DMTF public mockup (tests/data/upstream/redfish/, cited there),
# or `sushy-emulator`, the dynamic emulator (power actions change the system's PowerState).
#
#   redfish.sh install                       idempotent: venv at ${KILN_PEERS_DIR:-$REPO/.peers}/redfish
#   redfish.sh start STATE_DIR MOCKUP_DIR    sushy-static on 127.0.0.1:<free port> serving MOCKUP_DIR
#       (a mockup's root: index.json, Systems/, Chassis/ ...); waits until /redfish/v1 answers
#       200; last stdout line = URL (without /redfish/v1)
#   redfish.sh start STATE_DIR --emulator USER PASSWORD
#       sushy-emulator (the dynamic emulator) with its fake driver (one system, "fake", power
#       Off, state kept in STATE_DIR) behind HTTP basic auth for USER/PASSWORD (a bcrypt
#       htpasswd file); waits like start; last stdout line = URL
#   redfish.sh stop STATE_DIR                SIGTERM, up to 10 s, then SIGKILL (either server)
#
# Optional env for start: REDFISH_START_TIMEOUT (seconds, default 30).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PEERS_DIR="${KILN_PEERS_DIR:-$REPO/.peers}"
VENV="$PEERS_DIR/redfish"
PIN='sushy-tools>=2,<3'

die() { echo "redfish.sh: $*" >&2; exit 1; }
# shellcheck source=tests/peers/lib.sh
source "$HERE/lib.sh"

cmd_install() {
    if [ ! -x "$VENV/bin/sushy-static" ]; then
        mkdir -p "$PEERS_DIR"
        if [ ! -x "$VENV/bin/python" ]; then
            python3 -m venv "$VENV" 2>/dev/null || {
                # Debian 12 ships venv without ensurepip until python3-venv is installed
                export DEBIAN_FRONTEND=noninteractive
                apt-get install -y -q python3-venv >/dev/null 2>&1 \
                    || { apt-get update -q >/dev/null && apt-get install -y -q python3-venv >/dev/null; } \
                    || die "could not install python3-venv"
                rm -rf "$VENV"
                python3 -m venv "$VENV"
            }
        fi
        # drop the harmless "Location 'file:///opt/...' is ignored" noise from local pip config
        "$VENV/bin/pip" install --quiet "$PIN" 2>&1 | { grep -v "^WARNING: Location 'file:" >&2 || true; }
        [ "${PIPESTATUS[0]}" -eq 0 ] || die "pip install $PIN failed"
        [ -x "$VENV/bin/sushy-static" ] || die "pip install did not produce $VENV/bin/sushy-static"
    fi
    echo "$VENV"
}

cmd_start() {
    if [ "${2:-}" = "--emulator" ]; then
        cmd_emulator "$1" "${3:-}" "${4:-}"
        return
    fi
    local state="${1:-}" mockup="${2:-}"
    [ -n "$state" ] && [ -n "$mockup" ] || die "usage: redfish.sh start STATE_DIR MOCKUP_DIR"
    [ -x "$VENV/bin/sushy-static" ] || die "not installed; run: $0 install"
    [ -f "$mockup/index.json" ] || die "no Redfish mockup (index.json) in $mockup"
    mockup="$(cd "$mockup" && pwd)"
    mkdir -p "$state"
    state="$(cd "$state" && pwd)"
    if [ -f "$state/pid" ] && kill -0 "$(cat "$state/pid")" 2>/dev/null; then
        die "already running (pid $(cat "$state/pid")) in $state"
    fi

    local port
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')"
    nohup "$VENV/bin/sushy-static" --interface 127.0.0.1 --port "$port" --mockup-files "$mockup" \
        >>"$state/sushy-static.log" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" > "$state/pid"
    local url="http://127.0.0.1:$port"
    echo "$url" > "$state/url"

    peer_wait_ready sushy-static "$url/redfish/v1" "$pid" "$state/sushy-static.log" "${REDFISH_START_TIMEOUT:-30}" \
        || die "start-up failed"
    echo "$url"
}

cmd_emulator() {
    local state="${1:-}" user="${2:-}" password="${3:-}"
    [ -n "$state" ] && [ -n "$user" ] && [ -n "$password" ] || die "usage: redfish.sh start STATE_DIR --emulator USER PASSWORD"
    [ -x "$VENV/bin/sushy-emulator" ] || die "not installed; run: $0 install"
    mkdir -p "$state"
    state="$(cd "$state" && pwd)"
    if [ -f "$state/pid" ] && kill -0 "$(cat "$state/pid")" 2>/dev/null; then
        die "already running (pid $(cat "$state/pid")) in $state"
    fi
    KILN_USER="$user" KILN_PASSWORD="$password" "$VENV/bin/python" -c '
import os, bcrypt
digest = bcrypt.hashpw(os.environ["KILN_PASSWORD"].encode(), bcrypt.gensalt()).decode()
print(os.environ["KILN_USER"] + ":" + digest)' > "$state/htpasswd"
    cat > "$state/emulator.conf" <<CONF
SUSHY_EMULATOR_AUTH_FILE = "$state/htpasswd"
SUSHY_EMULATOR_STATE_DIR = "$state/emulator-state"
CONF
    local port
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')"
    nohup "$VENV/bin/sushy-emulator" --fake --interface 127.0.0.1 --port "$port" --config "$state/emulator.conf" \
        >>"$state/sushy-emulator.log" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" > "$state/pid"
    local url="http://127.0.0.1:$port"
    echo "$url" > "$state/url"
    peer_wait_ready sushy-emulator "$url/redfish/v1" "$pid" "$state/sushy-emulator.log" "${REDFISH_START_TIMEOUT:-30}" \
        || die "start-up failed"
    echo "$url"
}

cmd_stop() {
    local state="${1:-}"
    [ -n "$state" ] || die "usage: redfish.sh stop STATE_DIR"
    peer_stop_pidfile "$state/pid"
}

case "${1:-}" in
    install) shift; cmd_install "$@" ;;
    start)   shift; cmd_start "$@" ;;
    stop)    shift; cmd_stop "$@" ;;
    *) echo "usage: $0 {install|start STATE_DIR MOCKUP_DIR|start STATE_DIR --emulator USER PASSWORD|stop STATE_DIR}" >&2; exit 2 ;;
esac
