#!/usr/bin/env bash
# Build a real kube-apiserver (Kubernetes 1.20.2) from Debian's `kubernetes`
# source package with Debian's Go, into a cache outside the repository.
#
#   tests/peers/kube-build.sh          # idempotent; fast no-op once built
#
# Result: ${KILN_CACHE:-~/.cache/kiln}/kube-apiserver-1.20.2/kube-apiserver
# Go build cache: ${KILN_CACHE}/go-build (re-builds are incremental).
# Env knobs: KILN_KUBE_BUILD_TIMEOUT (s, default 3600), KILN_KUBE_KEEP_SRC=1
# (keep the unpacked source tree after a successful build), KILN_GO_PARALLEL
# (go build -p, default 2).
set -euo pipefail

KUBE_VERSION=1.20.2
CACHE_ROOT="${KILN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln}"
OUT_DIR="$CACHE_ROOT/kube-apiserver-$KUBE_VERSION"
BIN="$OUT_DIR/kube-apiserver"
WORK="$CACHE_ROOT/kube-src-$KUBE_VERSION"
GOCACHE_DIR="$CACHE_ROOT/go-build"
BUILD_TIMEOUT="${KILN_KUBE_BUILD_TIMEOUT:-3600}"
GO_PARALLEL="${KILN_GO_PARALLEL:-2}"

log() { printf '[kube-build %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { log "ERROR: $*" >&2; exit 1; }

# Bump RECIPE whenever the patches below change: cached binaries from an older
# recipe are rebuilt (the stamp file sits next to the binary).
RECIPE="kiln-kube-apiserver-$KUBE_VERSION-r2 (reflect2+json-iterator from Debian; openapi-gen; kube-openapi zero-value fix)"
binary_ok() {
    [[ -x "$BIN" ]] && [[ "$(cat "$OUT_DIR/RECIPE" 2>/dev/null)" == "$RECIPE" ]] \
        && "$BIN" --version 2>/dev/null | grep -q "v$KUBE_VERSION"
}

if binary_ok; then
    log "cached: $BIN ($("$BIN" --version))"
    exit 0
fi

mkdir -p "$CACHE_ROOT"
# Serialise concurrent builders (two test sessions on one machine).
exec 9>"$CACHE_ROOT/kube-build.lock"
log "waiting for build lock $CACHE_ROOT/kube-build.lock"
flock 9
if binary_ok; then
    log "built by a concurrent run: $BIN"
    exit 0
fi
START=$(date +%s)

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || die "need root or sudo for apt-get"
    SUDO="sudo -n"
fi
APT=($SUDO env DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=600)

# --- 1. build dependencies -------------------------------------------------
DEPS=(golang-go dpkg-dev xz-utils etcd-server
      golang-github-modern-go-reflect2-dev golang-github-json-iterator-go-dev
      openssl ca-certificates)
missing=()
for p in "${DEPS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
APT_UPDATED=0
apt_update() { if [[ $APT_UPDATED -eq 0 ]]; then log "apt-get update"; "${APT[@]}" update >/dev/null; APT_UPDATED=1; fi; }
if ((${#missing[@]})); then
    log "installing: ${missing[*]}"
    if ! "${APT[@]}" install -y --no-install-recommends "${missing[@]}" >/dev/null; then
        apt_update
        "${APT[@]}" install -y --no-install-recommends "${missing[@]}" >/dev/null
    fi
fi
export PATH="/usr/lib/go/bin:$PATH"
log "$(go version)"

# --- 2. Debian source package ----------------------------------------------
SRC=""
find_src() { SRC=$(find "$WORK" -mindepth 1 -maxdepth 1 -type d -name "kubernetes-*$KUBE_VERSION*" 2>/dev/null | head -n1); }
mkdir -p "$WORK"
find_src
if [[ -z "$SRC" || ! -f "$SRC/.kiln-unpacked" ]]; then
    rm -rf "$WORK"; mkdir -p "$WORK"
    if ! apt-cache showsrc kubernetes 2>/dev/null | grep -q '^Package: kubernetes'; then
        if ! grep -rqs '^\s*\(Types:.*deb-src\|deb-src\)' /etc/apt/sources.list /etc/apt/sources.list.d/; then
            log "enabling deb-src entries (/etc/apt/sources.list.d/kiln-deb-src.*)"
            if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
                sed -e 's/^Types:.*/Types: deb-src/' /etc/apt/sources.list.d/debian.sources \
                    | $SUDO tee /etc/apt/sources.list.d/kiln-deb-src.sources >/dev/null
            elif grep -qs '^deb ' /etc/apt/sources.list; then
                sed -n 's/^deb /deb-src /p' /etc/apt/sources.list \
                    | $SUDO tee /etc/apt/sources.list.d/kiln-deb-src.list >/dev/null
            else
                die "no Debian apt source found to derive a deb-src entry from"
            fi
        fi
        APT_UPDATED=0; apt_update
    fi
    log "apt-get source kubernetes (into $WORK)"
    (cd "$WORK" && apt-get -q source kubernetes >"$CACHE_ROOT/kube-apt-source.log" 2>&1) \
        || { tail -n 20 "$CACHE_ROOT/kube-apt-source.log" >&2; die "apt-get source kubernetes failed"; }
    find_src
    [[ -n "$SRC" ]] || die "apt-get source did not produce kubernetes-*$KUBE_VERSION*"
    touch "$SRC/.kiln-unpacked"
fi
log "source tree: $SRC"

# GOPATH-mode layout, exactly as upstream 1.20's hack/ scripts use it.
export GO111MODULE=off GOFLAGS="" CGO_ENABLED=0
export GOPATH="$WORK/gopath" GOCACHE="$GOCACHE_DIR"
mkdir -p "$GOPATH/src/k8s.io" "$GOPATH/bin" "$GOCACHE"
ln -sfn "$SRC" "$GOPATH/src/k8s.io/kubernetes"
PKG_DIR="$GOPATH/src/k8s.io/kubernetes"
cd "$PKG_DIR"

# --- 3. fix 1: newer reflect2 / json-iterator (Go >= 1.18 SIGSEGV otherwise)
if [[ ! -f "$SRC/.kiln-vendor-fixed" ]]; then
    for pair in "github.com/modern-go/reflect2" "github.com/json-iterator/go"; do
        from="/usr/share/gocode/src/$pair"; to="$SRC/vendor/$pair"
        [[ -d "$from" && -d "$to" ]] || die "missing $from or $to"
        log "vendor fix: $pair <- $(dpkg-query -S "$from" 2>/dev/null | cut -d: -f1 | head -n1)"
        find "$to" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) -delete
        find "$from" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) ! -name '*_test.go' \
            -exec cp {} "$to/" \;
    done
    touch "$SRC/.kiln-vendor-fixed"
fi

# --- 3b. fix: CR validation of zero values ("" / 0 / false rejected as null).
# kube-openapi's type validator used reflect.DeepEqual on reflect.Value, which
# became true for zero values with Go >= 1.16 (kubernetes/kubernetes#99804);
# apply upstream's fix (kubernetes/kube-openapi#230): only nil is "null".
if [[ ! -f "$SRC/.kiln-zero-value-fixed" ]]; then
    for f in vendor/k8s.io/kube-openapi/pkg/validation/validate/type.go \
             vendor/github.com/go-openapi/validate/type.go; do
        sed -i 's/if data == nil || reflect\.DeepEqual(reflect\.Zero(reflect\.TypeOf(data)), reflect\.ValueOf(data)) {/if data == nil {/' "$SRC/$f"
        grep -q 'reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data))' "$SRC/$f" && die "zero-value patch did not apply to $f"
        log "zero-value validation fix: $f"
    done
    touch "$SRC/.kiln-zero-value-fixed"
fi

# --- 4. fix 2: generate the missing pkg/generated/openapi/zz_generated.openapi.go
OPENAPI_OUT="$SRC/pkg/generated/openapi/zz_generated.openapi.go"
if [[ ! -s "$OPENAPI_OUT" ]]; then
    log "building openapi-gen"
    timeout "$BUILD_TIMEOUT" go build -p "$GO_PARALLEL" -o "$GOPATH/bin/openapi-gen" \
        k8s.io/kubernetes/vendor/k8s.io/kube-openapi/cmd/openapi-gen
    # Same input set as Makefile.generated_files' KUBE target.
    dirs=$(find -H . \( -path './_*' -o -path './.*' -o -path ./vendor \) -prune \
               -o -type f -name '*.go' -print \
           | sed 's|^\./staging/src/|./vendor/|' | sed 's|^\./||' \
           | { grep -v -e '^vendor/k8s.io/code-generator/' -e '^vendor/k8s.io/sample-apiserver/' || true; } \
           | { xargs grep -l '^// *+k8s:' || true; } | { xargs grep -l '+k8s:openapi-gen=' || true; } \
           | xargs -n1 dirname | LC_ALL=C sort -u \
           | sed 's|^|k8s.io/kubernetes/|' | paste -sd, -)
    [[ -n "$dirs" ]] || die "no +k8s:openapi-gen packages found"
    log "running openapi-gen over $(tr ',' '\n' <<<"$dirs" | wc -l) packages"
    timeout "$BUILD_TIMEOUT" "$GOPATH/bin/openapi-gen" --logtostderr \
        -i "$dirs" -p k8s.io/kubernetes/pkg/generated/openapi -O zz_generated.openapi \
        -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt \
        -r "$WORK/openapi-violations.report" >"$WORK/openapi-gen.log" 2>&1 \
        || { tail -n 30 "$WORK/openapi-gen.log" >&2; die "openapi-gen failed"; }
    [[ -s "$OPENAPI_OUT" ]] || die "openapi-gen produced no $OPENAPI_OUT"
    log "generated $(wc -l <"$OPENAPI_OUT") lines of openapi definitions"
fi

# --- 5. build cmd/kube-apiserver only ----------------------------------------
V=k8s.io/kubernetes/vendor/k8s.io
ldflags="-s -w"
for pkg in "$V/client-go/pkg/version" "$V/component-base/version"; do
    ldflags+=" -X $pkg.gitVersion=v$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=20"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    ldflags+=" -X $pkg.gitCommit=debian-kubernetes-source"
done
log "go build k8s.io/kubernetes/cmd/kube-apiserver (-p $GO_PARALLEL, GOCACHE=$GOCACHE; cold build takes several minutes)"
timeout "$BUILD_TIMEOUT" go build -p "$GO_PARALLEL" -tags selinux,notest -ldflags "$ldflags" \
    -o "$WORK/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver

mkdir -p "$OUT_DIR"
cp "$WORK/kube-apiserver" "$BIN.tmp.$$" && mv -f "$BIN.tmp.$$" "$BIN"
printf '%s\n' "$RECIPE" >"$OUT_DIR/RECIPE"
binary_ok || die "built binary does not report v$KUBE_VERSION"
if [[ "${KILN_KUBE_KEEP_SRC:-0}" != 1 ]]; then
    log "removing source tree $WORK (set KILN_KUBE_KEEP_SRC=1 to keep it)"
    cd /; rm -rf "$WORK"
fi
log "done in $(( $(date +%s) - START ))s: $BIN ($(du -h "$BIN" | cut -f1)) $("$BIN" --version)"
