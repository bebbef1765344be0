#!/usr/bin/env bash
# Test peer: Redfish services nobody here wrote, from OpenStack sushy-tools (PyPI `sushy-tools` 2.x):
# `sushy-static` serving a DMTF public mockup (tests/data/upstream/redfish/, cited there), and
# `sushy-emulator`, the dynamic emulator whose fake driver changes power state and boot device.
#
#   redfish.sh install                       idempotent: venv at ${KILN_PEERS_DIR:-$REPO/.peers}/redfish
#   redfish.sh start STATE_DIR MOCKUP_DIR    sushy-static on 127.0.0.1:<free port> serving MOCKUP_DIR
#       (a mockup's root: index.json, Systems/, Chassis/ ...); waits until /redfish/v1 answers
#       200; last stdout line = URL (without /redfish/v1)
#   redfish.sh stop STATE_DIR                SIGTERM, up to 10 s, then SIGKILL (either server)
#   redfish.sh start-emulator STATE_DIR [SYSTEMS [http|https]]
#       sushy-emulator (dynamic) with its fake systems driver on 127.0.0.1:<free port>: SYSTEMS
#       (default 2) ComputerSystems, all powered off, whose power state and boot device change
#       when asked (a power change lands 1-11 s later, at random, as on real hardware). HTTP basic
#       auth from an htpasswd file (bcrypt) guards everything below /redfish/v1; the user, its
#       random password and the systems (uuid, name) are in STATE_DIR/emulator.json. The
#       emulator keeps its state in STATE_DIR (never /tmp/sushy-emulator, which others share).
#       With `https` it serves HTTPS with a self-signed certificate for 127.0.0.1
#       (STATE_DIR/cert.pem, made with openssl), as BMCs ship. Last stdout line = URL (without
#       /redfish/v1).
#   redfish.sh stop STATE_DIR                SIGTERM, up to 10 s, then SIGKILL
#
# Optional env for start/start-emulator: REDFISH_START_TIMEOUT (seconds, default 30).
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

cmd_start_emulator() {
    local state="${1:-}" systems="${2:-2}" scheme="${3:-http}" cafile=""
    [ -n "$state" ] || die "usage: redfish.sh start-emulator STATE_DIR [SYSTEMS [http|https]]"
    [[ "$systems" =~ ^[1-9][0-9]*$ ]] || die "SYSTEMS must be a positive number, not '$systems'"
    [[ "$scheme" =~ ^https?$ ]] || die "the scheme must be http or https, not '$scheme'"
    [ -x "$VENV/bin/sushy-emulator" ] || die "not installed; run: $0 install"
    mkdir -p "$state"
    state="$(cd "$state" && pwd)"
    if [ -f "$state/pid" ] && kill -0 "$(cat "$state/pid")" 2>/dev/null; then
        die "already running (pid $(cat "$state/pid")) in $state"
    fi

    local port
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')"
    if [ "$scheme" = https ]; then
        openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=127.0.0.1" -addext "subjectAltName=IP:127.0.0.1" \
            -keyout "$state/key.pem" -out "$state/cert.pem" >/dev/null 2>&1 || die "openssl could not make a certificate"
        cafile="$state/cert.pem"
    fi
    # The config file is Python (Flask's from_pyfile); bcrypt comes with sushy-tools.
    "$VENV/bin/python" - "$state" "$port" "$systems" "$scheme" <<'PY' || die "could not write the emulator's config"
import json, pathlib, secrets, sys, uuid
import bcrypt
state, port, count, tls = pathlib.Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "https"
password = secrets.token_hex(12)
(state / "htpasswd").write_text("admin:" + bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode() + "\n")
systems = [{"uuid": str(uuid.uuid4()), "name": f"fake-{i}", "power_state": "Off",
            "nics": [{"mac": f"52:54:00:aa:00:{i:02x}", "ip": f"192.0.2.{i}"}]} for i in range(1, count + 1)]
config = {
    "SUSHY_EMULATOR_LISTEN_IP": "127.0.0.1",
    "SUSHY_EMULATOR_LISTEN_PORT": port,
    "SUSHY_EMULATOR_FAKE_DRIVER": True,
    "SUSHY_EMULATOR_FAKE_SYSTEMS": systems,
    "SUSHY_EMULATOR_STATE_DIR": str(state / "db"),
    "SUSHY_EMULATOR_AUTH_FILE": str(state / "htpasswd"),
}
if tls:
    config.update(SUSHY_EMULATOR_SSL_CERT=str(state / "cert.pem"), SUSHY_EMULATOR_SSL_KEY=str(state / "key.pem"))
(state / "emulator.conf").write_text("".join(f"{key} = {value!r}\n" for key, value in config.items()))
(state / "emulator.json").write_text(json.dumps({"username": "admin", "password": password, "systems": systems}))
PY
    nohup "$VENV/bin/sushy-emulator" --config "$state/emulator.conf" --fake \
        >>"$state/sushy-emulator.log" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" > "$state/pid"
    local url="$scheme://127.0.0.1:$port"
    echo "$url" > "$state/url"

    peer_wait_ready sushy-emulator "$url/redfish/v1" "$pid" "$state/sushy-emulator.log" "${REDFISH_START_TIMEOUT:-30}" \
        "$cafile" || die "start-up failed"
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
    start-emulator) shift; cmd_start_emulator "$@" ;;
    stop)    shift; cmd_stop "$@" ;;
    *) echo "usage: $0 {install|start STATE_DIR MOCKUP_DIR|start-emulator STATE_DIR [SYSTEMS [http|https]]|stop STATE_DIR}" >&2; exit 2 ;;
esac
