#!/usr/bin/env bash
# Install everything the tests need (Kiln in .venv, the real peers) and run the test suite.
#   ./scripts/test.sh                  all tests (peers that cannot start are skipped)
#   KILN_REQUIRE_PEERS=1 ./scripts/test.sh   a missing peer fails its tests (what CI does)
#   ./scripts/test.sh -k tenants       any pytest arguments
source "$(dirname "$0")/bootstrap.sh"
kiln_bootstrap "test,ironic,k8s"
cd "$KILN_ROOT"
export PYTHON="$KILN_VENV/bin/python"  # peers written in Python (bmcsim) run in Kiln's venv
for peer in postgres ironic bmcsim kube prometheus helm focus chromium; do  # peers the suite starts; each script's `install` is idempotent
  bash "tests/peers/$peer.sh" install
done
exec "$KILN_VENV/bin/python" -m pytest "$@"
