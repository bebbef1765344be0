# Sourced by scripts/kiln.sh and scripts/test.sh: make sure .venv has Kiln installed.
# Re-installs only when pyproject.toml (or the requested extras) changed since the last time.
set -euo pipefail
KILN_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KILN_VENV=${KILN_VENV:-$KILN_ROOT/.venv}
kiln_bootstrap() {  # kiln_bootstrap EXTRAS   e.g. kiln_bootstrap "test"
  local extras=$1 python=${KILN_PYTHON:-python3}
  if ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
    python=python3.11
    command -v "$python" >/dev/null || { echo "Kiln needs Python 3.11 (python3.11 not found)" >&2; exit 1; }
  fi
  if [ ! -x "$KILN_VENV/bin/python" ]; then
    echo "creating virtual environment $KILN_VENV" >&2
    "$python" -m venv "$KILN_VENV"
  fi
  local stamp="$KILN_VENV/.kiln-installed" hash have_hash have_extras
  hash=$(sha256sum "$KILN_ROOT/pyproject.toml" | cut -c1-16)
  if [ -f "$stamp" ]; then read -r have_hash have_extras < "$stamp" || true; fi
  # Up to date when pyproject.toml is unchanged and the installed extras include the asked ones.
  if [ "${have_hash:-}" != "$hash" ] || { [ -n "$extras" ] && [ "${have_extras:-}" != "$extras" ]; }; then
    echo "installing Kiln and its dependencies into $KILN_VENV (first time: a few minutes)" >&2
    # (this machine's pip config names local mirrors that may be absent: drop those warnings)
    "$KILN_VENV/bin/pip" install -q --disable-pip-version-check -e "$KILN_ROOT${extras:+[$extras]}" \
      2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
    echo "$hash ${extras:-${have_extras:-}}" > "$stamp"
  fi
}
