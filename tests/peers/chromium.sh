#!/usr/bin/env bash
# Test peer: Debian's Chromium, driven by Playwright for Python in the console's browser tests,
# and Deque's axe-core (npm), injected into the console's pages to check their accessibility.
# See /work/shared/PEERS.md "Browser tests for the Dash console": never `playwright install`.
#
#   chromium.sh install     apt-get chromium when it is missing; npm-install axe-core (pinned)
#                           into ${KILN_PEERS_DIR:-$REPO/.peers}/axe-core; prints both paths
#
# The browser is started by the tests themselves (tests/browser.py launches it through
# Playwright with executable_path), so there is no start/stop here.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PEERS_DIR="${KILN_PEERS_DIR:-$REPO/.peers}"
AXE_DIR="$PEERS_DIR/axe-core"
AXE_PIN="axe-core@4.14.1"  # tests/browser.py AXE_VERSION says the same

die() { echo "chromium.sh: $*" >&2; exit 1; }

apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "$@" >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "$@" >/dev/null; } \
        || die "could not install $*"
}

cmd_install() {
    if ! command -v chromium >/dev/null 2>&1; then
        echo "installing chromium (apt-get)" >&2
        apt_install chromium
    fi
    local axe="$AXE_DIR/node_modules/axe-core/axe.min.js"
    if [ ! -f "$axe" ] || ! grep -q "\"version\": \"${AXE_PIN#axe-core@}\"" "$AXE_DIR/node_modules/axe-core/package.json"; then
        command -v npm >/dev/null 2>&1 || { echo "installing npm (apt-get)" >&2; apt_install npm; }
        mkdir -p "$AXE_DIR"
        npm install --prefix "$AXE_DIR" --no-audit --no-fund --no-save --loglevel=error "$AXE_PIN" >&2 \
            || die "npm install $AXE_PIN failed"
        [ -f "$axe" ] || die "npm install did not produce $axe"
    fi
    command -v chromium
    echo "$axe"
}

case "${1:-}" in
    install) cmd_install ;;
    *) die "usage: chromium.sh install" ;;
esac
