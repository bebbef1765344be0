#!/usr/bin/env bash
# Install everything the tests need (Kiln in .venv, the real peers) and run the test suite.
#   ./scripts/test.sh                  all tests (peers that cannot start are skipped)
#   KILN_REQUIRE_PEERS=1 ./scripts/test.sh   a missing peer fails its tests (what CI does)
#   ./scripts/test.sh -k tenants       any pytest arguments
#   KILN_TEST_WORKERS=1 ./scripts/test.sh    one pytest process (default 3, one module per worker at a time,
#                                            the longest modules first: tests/schedule.py)
source "$(dirname "$0")/bootstrap.sh"
cd "$KILN_ROOT"

# The peers install in parallel with Kiln itself: on a new machine building kube-apiserver
# alone takes minutes. apt-get runs one at a time through a shim that waits for a shared lock
# (apt's own lock timeout does not cover `apt-get update`).
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/bin"
printf '#!/bin/sh\nexec flock %s/apt.lock /usr/bin/apt-get "$@"\n' "$work" > "$work/bin/apt-get"
chmod +x "$work/bin/apt-get"
export PATH="$work/bin:$PATH"
declare -A installing
for peer in kube ironic postgres prometheus helm focus chromium buildah ipmisim lemonldap redfish; do  # each script's `install` is idempotent
  bash "tests/peers/$peer.sh" install >"$work/$peer.log" 2>&1 &
  installing[$peer]=$!
done
kiln_bootstrap "test"
export PYTHON="$KILN_VENV/bin/python"  # peers written in Python (bmcsim) run in Kiln's venv
bash tests/peers/bmcsim.sh install
failed=""
for peer in "${!installing[@]}"; do
  if wait "${installing[$peer]}"; then
    tail -n 2 "$work/$peer.log"
  else
    echo "installing the $peer peer failed:" >&2
    tail -n 30 "$work/$peer.log" >&2
    failed="$failed $peer"
  fi
done
[ -z "$failed" ] || { echo "peers not installed:$failed" >&2; exit 1; }
exec "$KILN_VENV/bin/python" -m pytest -n "${KILN_TEST_WORKERS:-3}" --dist loadfile --no-loadscope-reorder --durations=15 "$@"
