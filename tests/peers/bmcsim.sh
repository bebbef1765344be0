#!/usr/bin/env bash
# Kiln's IPMI 2.0 / DCMI BMC simulator (collectors/sim/bmc/), see its README.md.
#
#   bmcsim.sh install                  pip deps into the current python3,
#                                      ipmitool and freeipmi-tools (bmc-info)
#                                      from apt if missing
#   bmcsim.sh start STATE_DIR N [opts] start N BMCs on 127.0.0.1, write
#                                      STATE_DIR/bmcs.json and STATE_DIR/pids,
#                                      wait until all answer, print a summary
#   bmcsim.sh stop STATE_DIR
#   bmcsim.sh status STATE_DIR
#   bmcsim.sh fault STATE_DIR NAME freeze|authfail|normal   (NAME '*' = all)
#   bmcsim.sh power STATE_DIR NAME on|off
#
# start options (passed through): --base-port P (consecutive ports; default:
# kernel-chosen), --ports P1,P2,..., --names N1,N2,..., --username U,
# --password P, --cipher-suites 3,17, --seed S, --critical-every K (default
# 10; 0 = none), --off-every K, --per-process 250.
# PYTHON overrides the interpreter (default python3).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PY="${PYTHON:-python3}"

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

sim() { cd "$ROOT" && PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m collectors.sim.bmc.sim "$@"; }

cmd="${1:-}"
[ -n "$cmd" ] || usage
shift
case "$cmd" in
  install)
    # the simulator needs only `cryptography` (AES); python-ipmi is the client
    "$PY" -m pip install -q 'cryptography>=3.1' 'python-ipmi[rmcpplus]'
    # ipmitool and FreeIPMI's bmc-info (what ipmi_exporter runs) are the tests' referees
    for tool in ipmitool:ipmitool bmc-info:freeipmi-tools; do
      command -v "${tool%%:*}" >/dev/null 2>&1 && continue
      if [ "$(id -u)" = 0 ]; then
        apt-get install -y --no-install-recommends "${tool#*:}" >/dev/null 2>&1 || {
          apt-get update -qq && apt-get install -y --no-install-recommends "${tool#*:}" >/dev/null; }
      else
        echo "bmcsim: ${tool%%:*} missing (apt-get install ${tool#*:} as root)" >&2
      fi
    done
    "$PY" -c 'import cryptography, pyipmi.interfaces.rmcpplus' \
      && echo "bmcsim: python deps ok ($PY); ipmitool: $(command -v ipmitool || echo missing);" \
              "bmc-info: $(command -v bmc-info || echo missing)"
    ;;
  start|run)
    [ $# -ge 2 ] || usage
    state="$1"; n="$2"; shift 2
    sim "$cmd" --state-dir "$state" --count "$n" "$@"
    ;;
  stop|status)
    [ $# -ge 1 ] || usage
    sim "$cmd" --state-dir "$1"
    ;;
  fault|power)
    [ $# -eq 3 ] || usage
    sim "$cmd" --state-dir "$1" "$2" "$3"
    ;;
  *) usage ;;
esac
