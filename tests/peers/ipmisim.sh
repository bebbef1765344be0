#!/usr/bin/env bash
# Test peer: OpenIPMI's ipmi_sim (Debian `openipmi` 2.0.33), a BMC nobody here wrote, with a
# small loadable module that adds DCMI Get Power Reading (tests/peers/ipmisim/dcmi_power.c;
# stock ipmi_sim answers DCMI with 0xC1). See /work/shared/PEERS.md "OpenIPMI ipmi_sim".
#
#   ipmisim.sh install       apt-get openipmi, libopenipmi-dev (headers), gcc, ipmitool when
#                            missing; build the module into the cache (idempotent); print its path
#   ipmisim.sh start STATE_DIR [WATTS]
#       one BMC on 127.0.0.1:<free UDP port> (RMCP+ cipher suites 0-14, no 17), an account
#       allowed up to administrator, four threshold sensors, FRU 0, chassis power on and DCMI
#       power WATTS (default 347) from STATE_DIR/watts and STATE_DIR/power (change them at
#       will: every request reads them); writes STATE_DIR/bmc.json (host, port, username,
#       password); waits until ipmitool gets its device id; last stdout line = host:port
#   ipmisim.sh stop STATE_DIR        SIGTERM, up to 10 s, then SIGKILL
#
# The module is cached as ${KILN_CACHE:-~/.cache/kiln}/ipmisim-<source hash>/dcmi_power.so.
# Optional env for start: IPMISIM_START_TIMEOUT (seconds, default 20).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SRC="$HERE/ipmisim"
CACHE_ROOT="${KILN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln}"
die() { echo "ipmisim.sh: $*" >&2; exit 1; }
# shellcheck source=tests/peers/lib.sh
source "$HERE/lib.sh"

module_path() {
    echo "$CACHE_ROOT/ipmisim-$(sha256sum "$SRC/dcmi_power.c" | cut -c1-12)/dcmi_power.so"
}

build_module() {
    local so dir
    so="$(module_path)"
    [ -f "$so" ] && { echo "$so"; return 0; }
    [ -f /usr/include/OpenIPMI/mcserv.h ] || die "OpenIPMI headers missing (libopenipmi-dev); run: $0 install"
    dir="$(dirname "$so")"
    mkdir -p "$dir"
    gcc -shared -fPIC -O2 -Wall -Wextra -o "$dir/.dcmi_power.so.$$" "$SRC/dcmi_power.c" \
        || die "building the DCMI module failed"
    mv -f "$dir/.dcmi_power.so.$$" "$so"
    echo "$so"
}

cmd_install() {
    local need=()
    command -v ipmi_sim >/dev/null 2>&1 && command -v sdrcomp >/dev/null 2>&1 || need+=(openipmi)
    [ -f /usr/include/OpenIPMI/mcserv.h ] || need+=(libopenipmi-dev)
    command -v gcc >/dev/null 2>&1 || need+=(gcc libc6-dev)
    command -v ipmitool >/dev/null 2>&1 || need+=(ipmitool)
    if [ ${#need[@]} -gt 0 ]; then
        echo "installing ${need[*]} (apt-get)" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null; } \
            || die "could not install ${need[*]}"
    fi
    build_module
}

cmd_start() {
    local state="${1:-}" watts="${2:-347}"
    [ -n "$state" ] || die "usage: ipmisim.sh start STATE_DIR [WATTS]"
    command -v ipmi_sim >/dev/null 2>&1 && command -v sdrcomp >/dev/null 2>&1 || die "not installed; run: $0 install"
    command -v ipmitool >/dev/null 2>&1 || die "ipmitool missing; run: $0 install"
    local module
    module="$(build_module)"
    mkdir -p "$state"
    state="$(cd "$state" && pwd)"
    if [ -f "$state/pid" ] && kill -0 "$(cat "$state/pid")" 2>/dev/null; then
        die "already running (pid $(cat "$state/pid")) in $state"
    fi
    local port password
    port="$(python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    password="$(python3 -c 'import secrets; print(secrets.token_hex(8))')"
    echo "$watts" > "$state/watts"
    echo 1 > "$state/power"
    sed -e "s|@MODULE@|$module|g" -e "s|@STATE@|$state|g" -e "s|@PEER@|$SRC|g" -e "s|@PORT@|$port|g" \
        -e "s|@USER@|admin|g" -e "s|@PASSWORD@|$password|g" "$SRC/lan.conf.tmpl" > "$state/lan.conf"
    # ipmi_sim keeps a BMC's persistent data (here: its SDR repository) in STATE/ipmi_sim/NAME
    mkdir -p "$state/sim/ipmi_sim/kiln"
    sdrcomp -o "$state/sim/ipmi_sim/kiln/sdr.20.main" "$SRC/bmc.sdrs" || die "sdrcomp failed on bmc.sdrs"
    printf '{"host": "127.0.0.1", "port": %s, "username": "admin", "password": "%s"}\n' "$port" "$password" \
        > "$state/bmc.json"

    nohup ipmi_sim -n -c "$state/lan.conf" -f "$SRC/bmc.emu" -s "$state/sim" \
        >>"$state/ipmi_sim.log" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" > "$state/pid"
    local deadline=$(( $(date +%s) + ${IPMISIM_START_TIMEOUT:-20} ))
    until ipmitool -I lanplus -C 3 -N 1 -R 1 -H 127.0.0.1 -p "$port" -U admin -P "$password" mc info \
            >/dev/null 2>&1; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 40 "$state/ipmi_sim.log" >&2
            die "ipmi_sim exited during start-up"
        fi
        if [ "$(date +%s)" -ge "$deadline" ]; then
            tail -n 40 "$state/ipmi_sim.log" >&2
            peer_stop_pidfile "$state/pid"
            die "ipmi_sim did not answer on 127.0.0.1:$port within ${IPMISIM_START_TIMEOUT:-20} s"
        fi
        sleep 0.2
    done
    echo "127.0.0.1:$port"
}

cmd_stop() {
    local state="${1:-}"
    [ -n "$state" ] || die "usage: ipmisim.sh stop STATE_DIR"
    peer_stop_pidfile "$state/pid"
}

case "${1:-}" in
    install) shift; cmd_install "$@" ;;
    start)   shift; cmd_start "$@" ;;
    stop)    shift; cmd_stop "$@" ;;
    *) echo "usage: $0 {install|start STATE_DIR [WATTS]|stop STATE_DIR}" >&2; exit 2 ;;
esac
