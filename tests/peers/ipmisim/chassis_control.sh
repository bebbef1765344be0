#!/bin/sh
# ipmi_sim's chassis_control program (lan.conf): ipmi_sim runs `chassis_control.sh STATE_DIR
# get power` for Get Chassis Status and reads back "power:0|1"; the state lives in
# STATE_DIR/power (tests change it). Power on/off requests write it.
state="$1"; op="$2"; shift 2
case "$op" in
  get)
    for parm in "$@"; do
      case "$parm" in
        power) echo "power:$(cat "$state/power" 2>/dev/null || echo 0)" ;;
        boot) echo "boot:default" ;;
        *) echo "unknown parameter $parm" >&2; exit 1 ;;
      esac
    done ;;
  set)
    while [ $# -ge 2 ]; do
      [ "$1" = power ] && echo "$2" > "$state/power"
      shift 2
    done ;;
  check) exit 1 ;;  # as upstream's ipmi_sim_chassiscontrol: nothing to check
  *) echo "unknown operation $op" >&2; exit 1 ;;
esac
