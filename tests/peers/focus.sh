#!/usr/bin/env bash
# Test peer: the official FinOps FOCUS validator (PyPI `focus-validator` 2.x) for FOCUS 1.2.
# See /work/shared/PEERS.md "FinOps FOCUS validator".
#
#   focus.sh install                 idempotent: a Python 3.12 venv with the pinned validator in
#                                    ${KILN_CACHE:-~/.cache/kiln}/focus-validator-<version>; prints its path
#   focus.sh run DATA_FILE OUT_DIR   validate a CSV or Parquet file (by its extension) for FOCUS 1.2,
#                                    offline, with Kiln's applicability criteria; writes
#                                    OUT_DIR/report.xml (JUnit, one testcase per rule), OUT_DIR/model.json
#                                    (the rule model it ran) and OUT_DIR/validator.log; last stdout line =
#                                    the report's path. Exit 3: not installed.
#
# The validator exits 0 whatever it finds: callers must read report.xml, never the exit code.
# Why this shape:
# - focus-validator 2.x needs Python >= 3.12 (pip on 3.11 silently installs 1.0.0, which knows no
#   FOCUS 1.2). Python 3.12 comes from `python3.12` on PATH or pyenv (3.12.x);
# - it pins numpy < 2, so pyarrow is pinned to 25.0.1 (26 needs numpy 2);
# - it reads focus_validator/rules/currency_codes.csv relative to the current directory and writes
#   focus_validator_detailed.log there: each run gets its own working directory with that path;
# - --block-download keeps it from fetching rule models from GitHub (the shipped 1.2 model is used).
set -euo pipefail

VALIDATOR_VERSION=2.2.1
PINS=("focus-validator==$VALIDATOR_VERSION" "pyarrow==25.0.1")
CACHE_ROOT="${KILN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln}"
VENV="$CACHE_ROOT/focus-validator-$VALIDATOR_VERSION"
# Kiln's provider features (metering/focus_columns.py APPLICABILITY_CRITERIA says why).
CRITERIA="${FOCUS_APPLICABILITY_CRITERIA:-ACCOUNT_NAMING_SUPPORTED,BILLING_BASED_ON_PROVISIONED_RESOURCES_SUPPORTED,NEGOTIATED_PRICING_SUPPORTED,REGION_SUPPORTED,RESOURCE_TYPE_ASSIGNMENT_SUPPORTED,SUB_ACCOUNT_SUPPORTED,TAGGING_SUPPORTED,UNIT_PRICING_SUPPORTED,USAGE_MEASUREMENT_SUPPORTED}"

die() { echo "focus.sh: $1" >&2; exit "${2:-1}"; }

find_python312() {
    local candidate
    for candidate in python3.12 "$(command -v pyenv >/dev/null 2>&1 && pyenv root || echo "$HOME/.pyenv")"/versions/3.12*/bin/python3.12; do
        if command -v "$candidate" >/dev/null 2>&1 \
            && "$candidate" -c 'import sys, venv; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then
            command -v "$candidate"; return 0
        fi
    done
    return 1
}

installed() {
    [ -x "$VENV/bin/focus-validator" ] && [ -f "$VENV/.kiln-pins" ] && [ "$(cat "$VENV/.kiln-pins")" = "${PINS[*]}" ]
}

cmd_install() {
    if ! installed; then
        local python
        python="$(find_python312)" || die "Python 3.12 not found (python3.12 on PATH or pyenv 3.12.x); focus-validator 2.x needs it"
        rm -rf "$VENV"
        mkdir -p "$CACHE_ROOT"
        "$python" -m venv "$VENV"
        # drop the harmless "Location 'file:///opt/...' is ignored" noise from local pip config
        "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PINS[@]}" 2>&1 \
            | { grep -v "^WARNING: Location 'file:" >&2 || true; }
        [ "${PIPESTATUS[0]}" -eq 0 ] || die "pip install ${PINS[*]} failed"
        # (run in the cache directory: the validator writes focus_validator_detailed.log into the cwd)
        (cd "$CACHE_ROOT" && "$VENV/bin/focus-validator" --show-applicability-criteria --validate-version 1.2 \
            --block-download >/dev/null 2>&1 && rm -f focus_validator_detailed.log) \
            || die "focus-validator does not start (or has no offline FOCUS 1.2 rule model)"
        echo "${PINS[*]}" > "$VENV/.kiln-pins"
    fi
    echo "$VENV"
}

cmd_run() {
    local data="${1:-}" out="${2:-}"
    [ -n "$data" ] && [ -n "$out" ] || die "usage: focus.sh run DATA_FILE OUT_DIR" 2
    [ -f "$data" ] || die "no data file $data" 2
    installed || die "not installed; run: $0 install" 3
    local rules format
    rules="$("$VENV/bin/python" -c 'import focus_validator, os; print(os.path.join(os.path.dirname(focus_validator.__file__), "rules"))')"
    case "$data" in
        *.csv) format=csv ;;
        *.parquet) format=parquet ;;
        *) die "$data: expected a .csv or .parquet file" 2 ;;
    esac
    data="$(cd "$(dirname "$data")" && pwd)/$(basename "$data")"
    mkdir -p "$out"
    out="$(cd "$out" && pwd)"
    local work
    work="$(mktemp -d)"
    trap "rm -rf '$work'" EXIT
    mkdir -p "$work/focus_validator"
    ln -s "$rules" "$work/focus_validator/rules"
    cp "$rules"/model-1.2*.json "$out/model.json"
    (
        cd "$work"
        "$VENV/bin/focus-validator" --data-file "$data" --data-format "$format" \
            --validate-version 1.2 --block-download --applicability-criteria "$CRITERIA" \
            --output-type unittest --output-destination "$out/report.xml"
    ) >"$out/validator.log" 2>&1 || { tail -n 20 "$out/validator.log" >&2; die "focus-validator failed on $data"; }
    [ -s "$out/report.xml" ] || { tail -n 20 "$out/validator.log" >&2; die "focus-validator wrote no report"; }
    echo "$out/report.xml"
}

case "${1:-}" in
    install) shift; cmd_install "$@" ;;
    run)     shift; cmd_run "$@" ;;
    *) echo "usage: $0 {install|run DATA_FILE OUT_DIR}" >&2; exit 2 ;;
esac
