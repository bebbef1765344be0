#!/usr/bin/env bash
# PostgreSQL test peer: the machine's Debian cluster, started on loopback if it is stopped.
#   postgres.sh install            install the server package if it is missing
#   postgres.sh start STATE_DIR    start the cluster (if stopped), create a login role for this run, print its URL
#   postgres.sh stop STATE_DIR     drop the run's role; stop the cluster if this run started it and no other run is using it
set -euo pipefail

cmd=${1:-}
state=${2:-}

cluster() {  # prints "VERSION NAME PORT STATUS" of the first cluster
  pg_lsclusters --no-header 2>/dev/null | awk 'NR==1 {print $1, $2, $3, $4}'
}

case "$cmd" in
  install)
    if ! command -v pg_ctlcluster >/dev/null 2>&1 || [ -z "$(cluster)" ]; then
      echo "installing postgresql (apt-get)" >&2
      export DEBIAN_FRONTEND=noninteractive
      apt-get install -y -q postgresql >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q postgresql >/dev/null; }
    fi
    ;;
  start)
    [ -n "$state" ] || { echo "usage: $0 start STATE_DIR" >&2; exit 2; }
    mkdir -p "$state"
    read -r version name port status <<<"$(cluster)" || true
    [ -n "${version:-}" ] || { echo "no PostgreSQL cluster on this machine: run $0 install" >&2; exit 1; }
    if [ "$status" != "online" ]; then
      # another test process may be starting it at this very moment: then its start wins
      if pg_ctlcluster --skip-systemctl-redirect "$version" "$name" start 2>"$state/start.err"; then
        echo "$version $name" > "$state/started-by-us"
      else
        sleep 2
        read -r _ _ _ status <<<"$(cluster)" || true
        [ "$status" = "online" ] || { cat "$state/start.err" >&2; exit 1; }
      fi
    fi
    for _ in $(seq 1 60); do
      pg_isready -q -h 127.0.0.1 -p "$port" && break
      sleep 0.5
    done
    pg_isready -q -h 127.0.0.1 -p "$port" || { echo "PostgreSQL did not become ready on 127.0.0.1:$port" >&2; exit 1; }
    # One login role per run (kiln_test_<random>): concurrent test runs on one machine never
    # change each other's credentials.
    [ -s "$state/role" ] || echo "kiln_test_$(python3 -c 'import secrets; print(secrets.token_hex(4))')" > "$state/role"
    [ -s "$state/password" ] || python3 -c 'import secrets; print(secrets.token_hex(16))' > "$state/password"
    role=$(cat "$state/role")
    password=$(cat "$state/password")
    echo "$port" > "$state/port"
    su postgres -c "psql -q -v ON_ERROR_STOP=1 -p $port" >/dev/null <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$role') THEN
    CREATE ROLE $role LOGIN SUPERUSER PASSWORD '$password';
  END IF;
END \$\$;
SQL
    url="postgresql://$role:$password@127.0.0.1:$port/postgres"
    echo "$url" > "$state/url"
    echo "$url"
    ;;
  stop)
    [ -n "$state" ] || { echo "usage: $0 stop STATE_DIR" >&2; exit 2; }
    port=$(cat "$state/port" 2>/dev/null || echo 5432)
    if [ -s "$state/role" ]; then
      su postgres -c "psql -q -p $port -c 'DROP ROLE IF EXISTS $(cat "$state/role")'" >/dev/null 2>&1 || true
    fi
    # Stop the cluster only if this run started it and no other run's role is still there.
    if [ -f "$state/started-by-us" ]; then
      others=$(su postgres -c "psql -tA -p $port -c \"SELECT count(*) FROM pg_roles WHERE rolname LIKE 'kiln_test_%'\"" 2>/dev/null || echo 0)
      if [ "${others:-0}" = "0" ]; then
        read -r version name < "$state/started-by-us"
        pg_ctlcluster --skip-systemctl-redirect "$version" "$name" stop || true
      fi
      rm -f "$state/started-by-us"
    fi
    ;;
  *)
    echo "usage: $0 install | start STATE_DIR | stop STATE_DIR" >&2
    exit 2
    ;;
esac
