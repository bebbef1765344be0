# Shared by the peer scripts (source it): wait for a started server, stop one by its PID file.

# peer_wait_ready NAME URL PID LOG TIMEOUT_S [CA_FILE]: poll URL until it answers 200 (an https
# URL's certificate checked against CA_FILE when given); on the server's exit or the timeout,
# print the log's tail, stop the server, and fail naming NAME.
peer_wait_ready() {
    local name=$1 url=$2 pid=$3 log=$4 timeout=$5 cafile=${6:-}
    local deadline=$(( $(date +%s) + timeout ))
    while :; do
        if python3 - "$url" "$cafile" <<'PY' 2>/dev/null
import ssl, sys, urllib.request
context = ssl.create_default_context(cafile=sys.argv[2]) if sys.argv[2] else None
with urllib.request.urlopen(sys.argv[1], timeout=2, context=context) as r:
    sys.exit(0 if r.status == 200 else 1)
PY
        then return 0; fi
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 40 "$log" >&2
            echo "$name exited during start-up" >&2
            return 1
        fi
        if [ "$(date +%s)" -ge "$deadline" ]; then
            tail -n 40 "$log" >&2
            kill -TERM "$pid" 2>/dev/null || true
            echo "$name did not answer at $url within $timeout s" >&2
            return 1
        fi
        sleep 0.1
    done
}

# peer_stop_pidfile PIDFILE: SIGTERM the process, wait up to 10 s, then SIGKILL; remove the file.
peer_stop_pidfile() {
    local pidfile=$1 pid i
    [ -f "$pidfile" ] || return 0
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}
