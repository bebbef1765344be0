#!/usr/bin/env bash
# Install (or upgrade) Kiln on a Debian/Ubuntu server. Safe to run again: it changes only what
# differs from the wanted state, and says what it did (or, with --dry-run, what it would do).
#
#   sudo deploy/install.sh                          SQLite in /var/lib/kiln
#   sudo deploy/install.sh --database postgresql    create role+database `kiln` in the local PostgreSQL
#   sudo deploy/install.sh --db-url postgresql://kiln:PW@db:5432/kiln   use an existing database
#
# Options:
#   --root DIR         install under DIR instead of / (a scratch root: nothing is started there)
#   --dry-run          print what would change, change nothing
#   --source DIR       Kiln source tree to install (default: this script's repository)
#   --database KIND    sqlite (default) or postgresql (local server, through `su postgres`)
#   --db-url URL       an existing PostgreSQL database (implies --database postgresql)
#   --python PATH      Python 3.11 interpreter for the virtual environment (default: python3.11 or python3)
#   --pip-args ARGS    extra arguments for `pip install` (e.g. a local wheelhouse)
#   --no-start         enable the services but do not (re)start them
#
# What it makes: system user `kiln`; /opt/kiln/venv (Kiln and its dependencies);
# /etc/kiln/kiln.toml (mode 0600, owner kiln: data dir, database URL and a generated secret key);
# /var/lib/kiln (data, mode 0750); /etc/systemd/system/kiln-api.service and kiln-worker.service
# (from deploy/systemd/, hardened); /usr/local/bin/kiln (runs the CLI as user kiln with that config).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT=/ DRY_RUN=0 SOURCE="$(cd "$HERE/.." && pwd)" DATABASE=sqlite DB_URL="" PYTHON=""
PIP_ARGS="" START=1
KILN_USER=kiln PREFIX=/opt/kiln CONF_DIR=/etc/kiln DATA_DIR=/var/lib/kiln UNIT_DIR=/etc/systemd/system
WRAPPER=/usr/local/bin/kiln UNITS=(kiln-api.service kiln-worker.service)

die() { echo "install.sh: error: $*" >&2; exit 1; }
while (($#)); do
    case "$1" in
        --root) ROOT="${2:?--root needs a directory}"; shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        --source) SOURCE="${2:?--source needs a directory}"; shift 2 ;;
        --database) DATABASE="${2:?--database needs sqlite or postgresql}"; shift 2 ;;
        --db-url) DB_URL="${2:?--db-url needs a URL}"; DATABASE=postgresql; shift 2 ;;
        --python) PYTHON="${2:?--python needs a path}"; shift 2 ;;
        --pip-args) PIP_ARGS="${2?}"; shift 2 ;;
        --no-start) START=0; shift ;;
        -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
[[ "$DATABASE" == sqlite || "$DATABASE" == postgresql ]] || die "--database must be sqlite or postgresql, not '$DATABASE'"
[[ -z "$DB_URL" || "$DB_URL" =~ ^postgres(ql)?(\+psycopg)?:// ]] || die "--db-url must be a postgresql:// URL"
[[ -f "$SOURCE/pyproject.toml" ]] || die "$SOURCE is not a Kiln source tree (no pyproject.toml)"
ROOT="${ROOT%/}"
[[ -z "$ROOT" || -d "$ROOT" ]] || die "--root $ROOT is not a directory"
if [[ -n "$ROOT" ]]; then ROOT="$(cd "$ROOT" && pwd)"; [[ "$ROOT" == / ]] && ROOT=""; fi
((DRY_RUN)) || [[ $(id -u) -eq 0 ]] || die "run as root (or with --dry-run)"
[[ "$DATABASE" == sqlite || -n "$DB_URL" || -z "$ROOT" ]] \
    || die "--database postgresql creates the database on this machine: not with --root (pass --db-url)"

CHANGES=0
r() { printf '%s%s' "$ROOT" "$1"; }             # a path inside the target root
changed() { CHANGES=$((CHANGES + 1)); if ((DRY_RUN)); then echo "would:     $*"; else echo "changed:   $*"; fi; }
unchanged() { echo "unchanged: $*"; }
run() { ((DRY_RUN)) || "$@"; }                  # mutate only when not a dry run

# --- Python ------------------------------------------------------------------------------
if [[ -z "$PYTHON" ]]; then PYTHON="$(command -v python3.11 || command -v python3 || true)"; fi
[[ -n "$PYTHON" ]] || die "no python3 found: apt-get install python3 python3-venv"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
    || die "Kiln needs Python 3.11 ($PYTHON is $("$PYTHON" -V 2>&1)); pass --python"
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || die "the venv module is missing: apt-get install python3-venv"

# --- system user ----------------------------------------------------------------------------
user_ids() { awk -F: -v u="$KILN_USER" '$1 == u {print $3 ":" $4}' "$(r /etc/passwd)" 2>/dev/null; }
if [[ -n "$(user_ids)" ]]; then
    unchanged "system user $KILN_USER ($(user_ids))"
else
    prefix=(); [[ -n "$ROOT" ]] && prefix=(--prefix "$ROOT")
    run useradd "${prefix[@]}" --system --user-group --home-dir "$DATA_DIR" --no-create-home \
        --shell /usr/sbin/nologin --comment "Kiln appliance" "$KILN_USER"
    changed "created system user $KILN_USER${ROOT:+ in $ROOT/etc/passwd} $(user_ids)"
fi
OWNER="$(user_ids)"; OWNER="${OWNER:-0:0}"     # (dry run without the user: root, for comparison only)
KILN_GID="${OWNER#*:}"

# ensure_dir PATH MODE UID:GID
ensure_dir() {
    local path; path="$(r "$1")"
    if [[ ! -d "$path" ]]; then
        run install -d -m "$2" -o "${3%:*}" -g "${3#*:}" "$path"; changed "created $1 (mode $2, owner $3)"
    elif [[ "$(stat -c '%a %u:%g' "$path")" != "${2#0} $3" ]]; then
        run chmod "$2" "$path"; run chown "$3" "$path"; changed "fixed mode/owner of $1 ($2, $3)"
    else
        unchanged "$1"
    fi
}
ensure_dir "$PREFIX" 0755 0:0
ensure_dir "$CONF_DIR" 0750 "0:$KILN_GID"
ensure_dir "$DATA_DIR" 0750 "$OWNER"

# --- virtual environment and Kiln ---------------------------------------------------------------
VENV="$(r "$PREFIX/venv")"
if [[ -x "$VENV/bin/python" ]]; then
    unchanged "virtual environment $PREFIX/venv"
else
    run "$PYTHON" -m venv "$VENV"; changed "created virtual environment $PREFIX/venv ($("$PYTHON" -V 2>&1))"
fi
source_hash() {  # what is installed: pyproject and every source file's content
    (cd "$SOURCE" && { sha256sum pyproject.toml; find kiln fleet collectors metering dashboards -type f \
        \( -name '*.py' -o -name '*.mako' -o -name '*.ini' \) -print0 2>/dev/null | sort -z | xargs -0 sha256sum; } \
        | sha256sum | cut -c1-32)
}
WANT_HASH="$(source_hash)"
if [[ -f "$VENV/.kiln-source" && "$(cat "$VENV/.kiln-source")" == "$WANT_HASH" ]]; then
    unchanged "Kiln $(sed -n 's/^version = "\(.*\)"/\1/p' "$SOURCE/pyproject.toml") in $PREFIX/venv"
else
    # build from a copy: setuptools writes build/ and *.egg-info/ next to the sources it builds
    build="$(mktemp -d)"
    for part in pyproject.toml README.md kiln fleet collectors metering dashboards; do
        [[ ! -e "$SOURCE/$part" ]] || cp -R "$SOURCE/$part" "$build/"
    done
    find "$build" -name __pycache__ -prune -exec rm -rf {} +
    # shellcheck disable=SC2086  # PIP_ARGS is a list of words on purpose
    run "$VENV/bin/pip" install --quiet --disable-pip-version-check $PIP_ARGS "$build"
    rm -rf "$build"
    run sh -c 'printf "%s\n" "$1" > "$2"' _ "$WANT_HASH" "$VENV/.kiln-source"
    changed "installed Kiln from $SOURCE into $PREFIX/venv"
fi

# --- database -----------------------------------------------------------------------------------
CONF="$(r "$CONF_DIR/kiln.toml")"
pg_sql() { su postgres -c "psql -X -q -tA -v ON_ERROR_STOP=1 -c \"$1\""; }
create_postgres_database() {  # prints the database URL
    command -v psql >/dev/null || die "PostgreSQL is not installed: apt-get install postgresql (or pass --db-url)"
    local password; password="$("$PYTHON" -c 'import secrets; print(secrets.token_hex(24))')"
    if ((DRY_RUN)); then echo "postgresql://$KILN_USER:PASSWORD@127.0.0.1:5432/kiln"; return; fi
    if [[ "$(pg_sql "SELECT 1 FROM pg_roles WHERE rolname = '$KILN_USER'")" == 1 ]]; then
        pg_sql "ALTER ROLE $KILN_USER LOGIN PASSWORD '$password'" >/dev/null
    else
        pg_sql "CREATE ROLE $KILN_USER LOGIN PASSWORD '$password'" >/dev/null
    fi
    [[ "$(pg_sql "SELECT 1 FROM pg_database WHERE datname = 'kiln'")" == 1 ]] \
        || pg_sql "CREATE DATABASE kiln OWNER $KILN_USER" >/dev/null
    echo "postgresql://$KILN_USER:$password@127.0.0.1:5432/kiln"
}

# --- config file with a generated secret key --------------------------------------------------------
if [[ -f "$CONF" ]]; then
    if [[ "$(stat -c '%a %u:%g' "$CONF")" != "600 $OWNER" ]]; then
        run chmod 0600 "$CONF"; run chown "$OWNER" "$CONF"; changed "fixed mode/owner of $CONF_DIR/kiln.toml (0600, $OWNER)"
    else
        unchanged "$CONF_DIR/kiln.toml (kept: its secret key encrypts the BMC passwords)"
    fi
else
    url=""
    if [[ "$DATABASE" == postgresql ]]; then
        url="${DB_URL:-$(create_postgres_database)}"
        [[ -n "$DB_URL" ]] || changed "created PostgreSQL role $KILN_USER and database kiln"
    fi
    key="$("$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(48))')"
    if ! ((DRY_RUN)); then
        tmp="$(mktemp "$(r "$CONF_DIR")/.kiln.toml.XXXXXX")"
        {
            echo "# Kiln settings (README.md \"Configuration\"). Written by deploy/install.sh."
            echo "# secret_key encrypts BMC passwords at rest: back it up, never change it."
            echo "data_dir = \"$DATA_DIR\""
            [[ -z "$url" ]] || echo "database_url = \"$url\""
            echo "secret_key = \"$key\""
        } > "$tmp"
        chmod 0600 "$tmp"; chown "$OWNER" "$tmp"; mv "$tmp" "$CONF"
    fi
    where="SQLite in $DATA_DIR"; [[ -z "$url" ]] || where="PostgreSQL"
    changed "wrote $CONF_DIR/kiln.toml (mode 0600, owner $KILN_USER) with a generated secret key, database $where"
fi

# --- files from the source tree: units and the CLI wrapper --------------------------------------------
# install_file SRC DEST MODE: copy when the content or mode differs
install_file() {
    local dest; dest="$(r "$2")"
    if [[ -f "$dest" ]] && cmp -s "$1" "$dest" && [[ "$(stat -c '%a' "$dest")" == "${3#0}" ]]; then
        unchanged "$2"; return 1
    fi
    run install -D -m "$3" -o 0 -g 0 "$1" "$dest"; changed "installed $2"
}
UNITS_CHANGED=0
for unit in "${UNITS[@]}"; do
    install_file "$SOURCE/deploy/systemd/$unit" "$UNIT_DIR/$unit" 0644 && UNITS_CHANGED=1
done
wrapper_src="$(mktemp)"; trap 'rm -f "$wrapper_src"' EXIT
cat > "$wrapper_src" <<EOF
#!/bin/sh
# The kiln command as user $KILN_USER with the installed settings (written by deploy/install.sh).
if [ "\$(id -un)" = "$KILN_USER" ]; then exec env KILN_CONFIG=$CONF_DIR/kiln.toml $PREFIX/venv/bin/kiln "\$@"; fi
[ "\$(id -u)" = 0 ] || { echo "kiln: error: run as root or as $KILN_USER" >&2; exit 1; }
exec runuser -u $KILN_USER -- env KILN_CONFIG=$CONF_DIR/kiln.toml $PREFIX/venv/bin/kiln "\$@"
EOF
install_file "$wrapper_src" "$WRAPPER" 0755 || true

# --- services -------------------------------------------------------------------------------------
systemctl_root=(); [[ -n "$ROOT" ]] && systemctl_root=(--root "$ROOT")
for unit in "${UNITS[@]}"; do
    if [[ "$(systemctl "${systemctl_root[@]}" is-enabled "$unit" 2>/dev/null)" == enabled ]]; then
        unchanged "$unit enabled"
    else
        run systemctl "${systemctl_root[@]}" --quiet enable "$unit"; changed "enabled $unit"
    fi
done
if [[ -z "$ROOT" && -d /run/systemd/system && $START -eq 1 ]]; then
    ((UNITS_CHANGED == 0)) || { run systemctl daemon-reload; changed "reloaded systemd"; }
    if ((CHANGES > 0)); then
        run systemctl restart "${UNITS[@]}"; changed "(re)started ${UNITS[*]}"
    fi
else
    why="no running systemd or --no-start"; [[ -z "$ROOT" ]] || why="scratch root $ROOT"
    echo "skipped:   starting the services ($why)"
fi

if ((DRY_RUN)); then
    echo "dry run: $CHANGES change(s) would be made"
elif ((CHANGES == 0)); then
    echo "Kiln is installed; nothing changed"
else
    echo "Kiln is installed: $CHANGES change(s). First admin: kiln users create admin --role infra-admin"
fi
