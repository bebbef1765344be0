"""Write a LemonLDAP::NG configuration for Kiln's SSO tests: lemonldap-ng.ini and lmConf-1.json.

Usage: python3 configure.py STATE_DIR PORTAL_URL REDIRECT_URI POST_LOGOUT_URI

The portal is an OpenID Connect provider (issuer = PORTAL_URL) with LemonLDAP::NG's own Demo
user database (dwho, rtyler, msmith; password = login) and public clients (`CLIENTS`) that must
use PKCE and get JWT access tokens carrying the claims; `kiln-console` may only return to
Kiln's callback and sign-in page. Roles and tenants come the way an LL::NG administrator gives them:
a macro (`kiln_roles`) and group rules (`groups`), released as claims `roles` and `groups` in a
`kiln` scope that a scope rule grants to every sign-in (like Keycloak's default client scopes).
The signing key is made afterwards by LL::NG's own `rotateOidcKeys`. Standard library only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HTDOCS = "/usr/share/lemonldap-ng/portal"
CLIENT_ID = "kiln-console"
# uid -> (roles, tenant groups): the test users
USERS = {
    "dwho": ("kiln-infra-admin", []),
    "rtyler": ("kiln-tenant-member", ["tenant-a"]),
    "msmith": ("kiln-tenant-admin", ["tenant-b"]),
}

# LL::NG configuration key -> (client id, options beyond client_options'): Kiln's console; a
# command-line client whose short-lived access tokens are also meant for Kiln (an additional
# audience, as Keycloak's audience mapper adds); another application whose tokens Kiln must refuse.
CLIENTS = {
    "kiln": ("kiln-console", {}),
    "kilncli": ("kiln-cli", {"oidcRPMetaDataOptionsAdditionalAudiences": "kiln-console",
                             "oidcRPMetaDataOptionsAccessTokenExpiration": 8}),
    "grafana": ("grafana", {}),
}
OTHER_REDIRECT = "http://127.0.0.1:9/callback"  # the other clients' redirect URI (never followed)
# claim -> session attribute[;type;array]: what every client may read
CLAIMS = {"preferred_username": "uid", "name": "cn", "email": "mail",
          "roles": "kiln_roles;string;always", "groups": "groups;string;always"}

INI = """[all]
logLevel = warn
checkTime = 1
[configuration]
type = File
dirName = {state}/conf
prettyPrint = 1
localStorage = Cache::FileCache
localStorageOptions = {{ 'namespace' => 'lemonldap-ng-config', 'default_expires_in' => 600, 'cache_root' => '{state}/cache', 'cache_depth' => 3, }}
[portal]
staticPrefix = /static
templateDir = {htdocs}/templates
languages = en
"""


def roles_macro() -> str:
    """A Perl expression giving each Demo user's roles (several are joined by `; `, LL::NG's multi-value separator)."""
    branches = " : ".join(f'$uid eq "{uid}" ? "{roles}"' for uid, (roles, _) in USERS.items())
    return f'{branches} : ""'


def group_rules() -> dict[str, str]:
    """LL::NG groups (rule per group): the tenant groups each Demo user belongs to."""
    tenants: dict[str, list[str]] = {}
    for uid, (_, groups) in USERS.items():
        for group in groups:
            tenants.setdefault(group, []).append(uid)
    return {group: " or ".join(f'$uid eq "{uid}"' for uid in uids) for group, uids in tenants.items()}


def configuration(state: Path, portal: str, redirect_uri: str, post_logout_uri: str) -> dict:
    """The lmConf document (LL::NG fills every key left out with its defaults)."""
    return {
        "cfgNum": 1, "cfgAuthor": "kiln tests", "cfgDate": "1700000000", "cfgVersion": "2.16.1",
        "portal": portal, "domain": "127.0.0.1", "securedCookie": 0, "cookieName": "lemonldap", "httpOnly": 1,
        "authentication": "Demo", "userDB": "Same", "passwordDB": "Demo", "registerDB": "Null",
        "demoExportedVars": {"cn": "cn", "mail": "mail", "uid": "uid"},
        "whatToTrace": "uid", "loginHistoryEnabled": 0, "notification": 0, "portalDisplayLogout": 1,
        "macros": {"kiln_roles": roles_macro()}, "groups": group_rules(),
        "globalStorage": "Apache::Session::File",
        "globalStorageOptions": {"Directory": f"{state}/sessions", "LockDirectory": f"{state}/sessions/lock",
                                 "generateModule": "Lemonldap::NG::Common::Apache::Session::Generate::SHA256"},
        "localSessionStorage": "Cache::FileCache",
        "localSessionStorageOptions": {"namespace": "lemonldap-ng-sessions", "default_expires_in": 600,
                                       "cache_root": f"{state}/cache", "cache_depth": 3},
        "persistentStorage": "Apache::Session::File",
        "persistentStorageOptions": {"Directory": f"{state}/psessions", "LockDirectory": f"{state}/psessions/lock"},
        "locationRules": {}, "exportedHeaders": {}, "applicationList": {},
        "issuerDBOpenIDConnectActivation": 1,
        "oidcServiceMetaDataIssuer": portal.rstrip("/"),
        "oidcServiceAllowImplicitFlow": 0, "oidcServiceAllowHybridFlow": 0,
        "oidcRPMetaDataOptions": {key: client_options(client_id, redirect_uri if key == "kiln" else OTHER_REDIRECT,
                                                       post_logout_uri, extra)
                                  for key, (client_id, extra) in CLIENTS.items()},
        "oidcRPMetaDataExportedVars": {key: dict(CLAIMS) for key in CLIENTS},
        "oidcRPMetaDataOptionsExtraClaims": {key: {"kiln": "roles groups"} for key in CLIENTS},
        "oidcRPMetaDataScopeRules": {key: {"kiln": "1"} for key in CLIENTS},
    }


def client_options(client_id: str, redirect_uri: str, post_logout_uri: str, extra: dict) -> dict:
    """A public client that must use PKCE, skips the consent page and gets RS256 JWT access tokens with the claims."""
    return {
        "oidcRPMetaDataOptionsClientID": client_id,
        "oidcRPMetaDataOptionsPublic": 1,
        "oidcRPMetaDataOptionsRequirePKCE": 1,
        "oidcRPMetaDataOptionsRedirectUris": redirect_uri,
        "oidcRPMetaDataOptionsPostLogoutRedirectUris": post_logout_uri,
        "oidcRPMetaDataOptionsBypassConsent": 1,
        "oidcRPMetaDataOptionsIDTokenSignAlg": "RS256",
        "oidcRPMetaDataOptionsIDTokenForceClaims": 1,
        "oidcRPMetaDataOptionsAccessTokenJWT": 1,
        "oidcRPMetaDataOptionsAccessTokenSignAlg": "RS256",
        "oidcRPMetaDataOptionsAccessTokenClaims": 1,
        "oidcRPMetaDataOptionsIDTokenExpiration": 300,
        "oidcRPMetaDataOptionsAccessTokenExpiration": 300,
        "oidcRPMetaDataOptionsUserIDAttr": "uid",
        **extra,
    }


def main(state_dir: str, portal: str, redirect_uri: str, post_logout_uri: str) -> None:
    state = Path(state_dir)
    for sub in ("conf", "cache", "sessions/lock", "psessions/lock"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    (state / "lemonldap-ng.ini").write_text(INI.format(state=state, htdocs=HTDOCS))
    document = configuration(state, portal, redirect_uri, post_logout_uri)
    (state / "conf" / "lmConf-1.json").write_text(json.dumps(document, indent=1))


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__.split("\n\n")[1])
    main(*sys.argv[1:])
