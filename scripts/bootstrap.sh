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
  local stamp="$KILN_VENV/.kiln-installed" want
  want="$(sha256sum "$KILN_ROOT/pyproject.toml" | cut -c1-16) [$extras]"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "installing Kiln and its dependencies into $KILN_VENV (first time: a few minutes)" >&2
    "$KILN_VENV/bin/pip" install -q --disable-pip-version-check -e "$KILN_ROOT${extras:+[$extras]}"
    echo "$want" > "$stamp"
  fi
}
