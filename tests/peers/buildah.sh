#!/usr/bin/env bash
# Build and run Kiln's container image (deploy/container/Containerfile) without a Docker engine
# or Docker Hub: Debian's buildah and podman as root, a bookworm base image made locally by
# mmdebstrap from deb.debian.org.
#
#   tests/peers/buildah.sh install        apt packages + the base image (idempotent; prints the base's name)
#   tests/peers/buildah.sh check          exit 0 when everything `install` sets up is there
#   tests/peers/buildah.sh build TAG      build the Containerfile from this checkout as TAG
#   tests/peers/buildah.sh podman ARGS..  podman with the storage and runtime this script uses
#
# What works here and why these flags (measured on Debian 12 in a Firecracker VM, kernel 6.x):
# - storage: the overlay driver on ext4, kept in ~/.cache/kiln/containers so that re-builds
#   reuse unchanged layers (the dependencies' ~800 MB: only pyproject.toml invalidates them);
# - build: `--isolation chroot` (no OCI runtime needed); the host's CA bundle is mounted into
#   RUN steps and named by PIP_CERT because this network re-signs TLS (pip fails
#   CERTIFICATE_VERIFY_FAILED otherwise); it never lands in a layer;
# - run: crun refuses the hybrid cgroup v1/v2 layout ("cgroups in hybrid mode not supported"),
#   so podman uses runc with the cgroupfs manager; podman's default rlimits exceed what this
#   sandbox may set ("setrlimit RLIMIT_NOFILE: Operation not permitted"), so they are given
#   explicitly; there is no systemd, so health checks are not scheduled (--no-healthcheck).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE_ROOT="${KILN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln}"
BASE_TAR="$CACHE_ROOT/container-base/debian-bookworm-minbase.tar"
BASE_IMAGE="localhost/kiln-base:bookworm"
BASE_MAX_AGE_DAYS=30   # then made again, to pick up Debian's point releases and security fixes
# runroot: per-boot state (mount counts, locks) of that storage, so on /run, one per cache root
RUN_DIR="/run/kiln-containers-$(printf %s "$CACHE_ROOT" | sha256sum | cut -c1-8)"
STORAGE=(--root "$CACHE_ROOT/containers/storage" --runroot "$RUN_DIR/storage" --storage-driver overlay)
STORAGE_LIMIT_MB=8000
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
MIRROR=http://deb.debian.org/debian
PACKAGES=(buildah podman runc mmdebstrap)

log() { printf '[buildah.sh] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

base_is_fresh() {
    [[ -s "$BASE_TAR" ]] && [[ -z "$(find "$BASE_TAR" -mtime +"$BASE_MAX_AGE_DAYS")" ]]
}

base_label() {  # the checksum of the tarball the imported base image was made from
    buildah "${STORAGE[@]}" inspect --type image --format '{{index .OCIv1.Config.Labels "kiln.base.sha256"}}' \
        "$BASE_IMAGE" 2>/dev/null || true
}

cmd_install() {
    local missing=()
    for package in "${PACKAGES[@]}"; do
        dpkg-query -W -f '${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
    done
    if ((${#missing[@]})); then
        [[ $EUID -eq 0 ]] || die "needs root to install ${missing[*]} (and to run buildah without user namespaces)"
        log "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; }
    fi
    if ! base_is_fresh; then
        log "making the Debian bookworm base ($BASE_TAR) with mmdebstrap from $MIRROR"
        mkdir -p "$(dirname "$BASE_TAR")"
        # minbase without docs, man pages and locales: what debian:bookworm-slim holds.
        mmdebstrap --variant=minbase --mode=root --format=tar --quiet \
            --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
            --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
            bookworm "$BASE_TAR.tmp" \
            "deb $MIRROR bookworm main" "deb $MIRROR bookworm-updates main" \
            "deb http://deb.debian.org/debian-security bookworm-security main" >&2
        mv "$BASE_TAR.tmp" "$BASE_TAR"
    fi
    local sum; sum="$(sha256sum "$BASE_TAR" | cut -d' ' -f1)"
    if [[ "$(base_label)" != "$sum" ]]; then
        log "importing the base as $BASE_IMAGE"
        local ctr; ctr="$(buildah "${STORAGE[@]}" from scratch)"
        buildah "${STORAGE[@]}" add "$ctr" "$BASE_TAR" / >&2
        buildah "${STORAGE[@]}" config --cmd /bin/bash --label "kiln.base.sha256=$sum" "$ctr" >&2
        buildah "${STORAGE[@]}" commit --quiet --rm "$ctr" "$BASE_IMAGE" >&2
    fi
    echo "$BASE_IMAGE"
}

cmd_check() {
    [[ $EUID -eq 0 ]] || die "needs root (buildah and podman run here without user namespaces)"
    for tool in buildah podman runc; do
        command -v "$tool" >/dev/null || die "$tool is not installed: run '$0 install'"
    done
    [[ -n "$(base_label)" ]] || die "base image $BASE_IMAGE is missing: run '$0 install'"
}

cmd_build() {
    local tag="${1:?usage: $0 build TAG}"
    cmd_check
    local ca_args=()
    [[ -r "$CA_BUNDLE" ]] && ca_args=(--volume "$CA_BUNDLE:/run/build-ca.crt:ro" --build-arg PIP_CERT=/run/build-ca.crt)
    buildah "${STORAGE[@]}" build --isolation chroot --layers --format docker --quiet \
        --file "$ROOT/deploy/container/Containerfile" --build-arg "BASE_IMAGE=$BASE_IMAGE" \
        "${ca_args[@]}" --tag "$tag" "$ROOT" >&2
    # Old builds' untagged images are the layer cache (buildah finds cached steps through
    # them), so they are kept; past STORAGE_LIMIT_MB they all go and the next build is cold.
    if (( $(du -sm "$CACHE_ROOT/containers/storage" | cut -f1) > STORAGE_LIMIT_MB )); then
        log "layer cache over ${STORAGE_LIMIT_MB} MB: pruning it"
        buildah "${STORAGE[@]}" rmi --prune >/dev/null 2>&1 || true
    fi
    echo "$tag"
}

cmd_podman() {
    local limit; limit="$(ulimit -Hn)"
    local PODMAN=("${STORAGE[@]}" --tmpdir "$RUN_DIR/libpod" --runtime runc --cgroup-manager cgroupfs)
    case "${1:-}" in
        run|create)
            local sub="$1"; shift
            exec podman "${PODMAN[@]}" "$sub" \
                --ulimit "nofile=$limit:$limit" --ulimit nproc=4096:4096 --no-healthcheck "$@" ;;
        *) exec podman "${PODMAN[@]}" "$@" ;;
    esac
}

case "${1:-}" in
    install) cmd_install ;;
    check) cmd_check ;;
    build) shift; cmd_build "$@" ;;
    podman) shift; cmd_podman "$@" ;;
    *) echo "usage: $0 install | check | build TAG | podman ARGS..." >&2; exit 2 ;;
esac
