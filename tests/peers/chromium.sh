#!/usr/bin/env bash
# Test peer: Debian's Chromium, driven by Playwright for Python in the console's browser tests.
# See /work/shared/PEERS.md "Browser tests for the Dash console": never `playwright install`.
#
#   chromium.sh install     apt-get chromium when it is missing; prints the binary's path
#
# The browser is started by the tests themselves (tests/browser.py launches it through
# Playwright with executable_path), so there is no start/stop here.
set -euo pipefail

die() { echo "chromium.sh: $*" >&2; exit 1; }

cmd_install() {
    if ! command -v chromium >/dev/null 2>&1; then
        echo "installing chromium (apt-get)" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends chromium >/dev/null; } \
            || die "could not install chromium"
    fi
    command -v chromium
}

case "${1:-}" in
    install) cmd_install ;;
    *) die "usage: chromium.sh install" ;;
esac
