#!/usr/bin/env bash
# Run the `kiln` command from a fresh checkout: installs Kiln into .venv on first use.
#   ./scripts/kiln.sh serve --dev      the API on http://127.0.0.1:8000 with an embedded SQLite database
source "$(dirname "$0")/bootstrap.sh"
kiln_bootstrap ""
exec "$KILN_VENV/bin/kiln" "$@"
