#!/usr/bin/env bash
# Test peer: LemonLDAP::NG 2.16 (Debian `liblemonldap-ng-portal-perl`) as an OpenID Connect
# provider nobody here wrote, for the single sign-on tests (tests/test_sso_provider.py).
#
#   lemonldap.sh install     apt-get the portal and the Perl modules it loads at start-up when missing
#   lemonldap.sh start STATE_DIR KILN_URL
#       the portal on http://127.0.0.1:<free port> (issuer = that URL, no trailing slash), served by
#       plackup (Plack's HTTP::Server::PSGI; no nginx/Apache/FastCGI needed), configured by
#       tests/peers/lemonldap/configure.py: Demo users dwho/rtyler/msmith (password = login), one
#       public PKCE client `kiln-console` whose redirect URI is KILN_URL/oidc/callback and
#       post-logout URI KILN_URL/signin?reason=signedout; its RS256 signing key is made by LL::NG's
#       own rotateOidcKeys. Waits for the discovery document; last stdout line = the issuer URL.
#   lemonldap.sh rotate-keys STATE_DIR
#       LL::NG's rotateOidcKeys: a new key replaces the old one (the old kid leaves the JWKS);
#       the running portal loads the new configuration within a second (checkTime = 1);
#       last stdout line = the new key id
#   lemonldap.sh stop STATE_DIR      SIGTERM, up to 10 s, then SIGKILL
#
# Why the extra packages: the portal always loads its captcha module (GD::SecurityImage with
# Image::Magick) and IO::String, and rotateOidcKeys needs Convert::PEM and String::Random; Debian
# only recommends them. Optional env for start: LEMONLDAP_START_TIMEOUT (seconds, default 30).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
die() { echo "lemonldap.sh: $*" >&2; exit 1; }
# shellcheck source=tests/peers/lib.sh
source "$HERE/lib.sh"

PACKAGES=(liblemonldap-ng-portal-perl libplack-perl libconvert-pem-perl libcrypt-openssl-bignum-perl
          libstring-random-perl libgd-securityimage-perl libimage-magick-perl libio-string-perl)
ROTATE=/usr/share/lemonldap-ng/bin/rotateOidcKeys

installed() {
    [ -x "$ROTATE" ] && command -v plackup >/dev/null 2>&1 \
        && perl -MLemonldap::NG::Portal::Main -MConvert::PEM -MString::Random -MIO::String \
                -MCrypt::OpenSSL::Bignum -e 'use GD::SecurityImage use_magick => 1' 2>/dev/null
}

cmd_install() {
    if ! installed; then
        echo "installing ${PACKAGES[*]} (apt-get)" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >/dev/null; } \
            || die "could not install ${PACKAGES[*]}"
        installed || die "LemonLDAP::NG's portal modules do not load after installing"
    fi
    echo "$(dpkg-query -W -f '${Version}' liblemonldap-ng-portal-perl) $ROTATE"
}

cmd_start() {
    local state="${1:-}" kiln="${2:-}"
    [ -n "$state" ] && [ -n "$kiln" ] || die "usage: lemonldap.sh start STATE_DIR KILN_URL"
    installed || die "not installed; run: $0 install"
    mkdir -p "$state"
    state="$(cd "$state" && pwd)"
    if [ -f "$state/pid" ] && kill -0 "$(cat "$state/pid")" 2>/dev/null; then
        die "already running (pid $(cat "$state/pid")) in $state"
    fi
    local port url
    port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    url="http://127.0.0.1:$port"
    kiln="${kiln%/}"
    python3 "$HERE/lemonldap/configure.py" "$state" "$url/" "$kiln/oidc/callback" "$kiln/signin?reason=signedout" \
        || die "configure.py failed"
    export LLNG_DEFAULTCONFFILE="$state/lemonldap-ng.ini"
    "$ROTATE" >"$state/rotate.log" 2>&1 || { cat "$state/rotate.log" >&2; die "rotateOidcKeys made no signing key"; }
    (cd "$state" && exec setsid plackup -s HTTP::Server::PSGI --host 127.0.0.1 --port "$port" \
        "$HERE/lemonldap/portal.psgi") >"$state/portal.log" 2>&1 </dev/null &
    echo $! > "$state/pid"
    peer_wait_ready lemonldap "$url/.well-known/openid-configuration" "$(cat "$state/pid")" "$state/portal.log" \
        "${LEMONLDAP_START_TIMEOUT:-30}"
    echo "$url"
}

cmd_rotate_keys() {
    local state="${1:-}"
    [ -n "$state" ] && [ -f "$state/lemonldap-ng.ini" ] || die "usage: lemonldap.sh rotate-keys STATE_DIR (of a started portal)"
    LLNG_DEFAULTCONFFILE="$(cd "$state" && pwd)/lemonldap-ng.ini" "$ROTATE" || die "rotateOidcKeys failed"
    python3 - "$state/conf" <<'PY'
import json, pathlib, sys
latest = max(pathlib.Path(sys.argv[1]).glob("lmConf-*.json"), key=lambda p: int(p.stem.split("-")[1]))
print(json.loads(latest.read_text())["oidcServiceKeyIdSig"])
PY
}

case "${1:-}" in
    install) cmd_install ;;
    start) shift; cmd_start "$@" ;;
    rotate-keys) shift; cmd_rotate_keys "$@" ;;
    stop) shift; [ -n "${1:-}" ] || die "usage: lemonldap.sh stop STATE_DIR"; peer_stop_pidfile "$1/pid" ;;
    *) die "usage: lemonldap.sh {install|start STATE_DIR KILN_URL|rotate-keys STATE_DIR|stop STATE_DIR}" ;;
esac
