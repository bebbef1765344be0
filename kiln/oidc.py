"""OIDC bearer tokens (Keycloak-compatible): signature against the issuer's JWKS, `iss`, `aud`, `exp`.

The issuer's keys are fetched from its discovery document (or `KILN_OIDC_JWKS_URL`), cached,
and re-fetched at most once a minute when a token names a key id that is not cached (key
rotation: a provider that replaces its key, as LemonLDAP::NG's `rotateOidcKeys` does, is
followed by a running Kiln without restart; tokens signed with a key the issuer no longer
publishes stop working at that refetch). Only asymmetric algorithms are accepted.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import jwt
from sqlmodel import Session, col, select

from kiln.auth import Principal
from kiln.errors import Unauthorized
from kiln.models import Tenant
from kiln.roles import PRECEDENCE, Role
from kiln.settings import Settings

ALLOWED_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"]
CLOCK_SKEW_SECONDS = 30
KEY_CACHE_SECONDS = 300
MIN_REFETCH_SECONDS = 60


class OIDCVerifier:
    """Validates bearer JWTs from one issuer and returns their claims."""

    def __init__(self, settings: Settings, http: httpx.Client | None = None, *,
                 refetch_interval: float = MIN_REFETCH_SECONDS, clock_skew: float = CLOCK_SKEW_SECONDS):
        """`refetch_interval`: least seconds between two JWKS fetches caused by unknown key ids (so
        forged kids cannot make Kiln hammer the issuer); `clock_skew`: leeway on `exp`, seconds."""
        if not settings.oidc_issuer or not settings.oidc_audience:
            raise ValueError("OIDC needs both KILN_OIDC_ISSUER and KILN_OIDC_AUDIENCE")
        self.issuer = settings.oidc_issuer.rstrip("/")
        self.audience = settings.oidc_audience
        self._jwks_url = settings.oidc_jwks_url
        self._http = http or httpx.Client(timeout=5.0)
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = 0.0
        self._lock = threading.Lock()
        self._refetch_interval = refetch_interval
        self._clock_skew = clock_skew

    def verify(self, token: str) -> dict[str, Any]:
        """The token's claims; Unauthorized with the reason when it is not acceptable."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise Unauthorized("bearer token is neither a Kiln API token nor a well-formed JWT") from None
        algorithm = header.get("alg")
        if algorithm not in ALLOWED_ALGORITHMS:
            raise Unauthorized(f"JWT algorithm {algorithm!r} is not accepted (use one of {', '.join(ALLOWED_ALGORITHMS)})")
        key = self._key_for(header.get("kid"))
        try:
            return jwt.decode(
                token,
                key.key,
                algorithms=[algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self._clock_skew,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("OIDC token has expired: sign in again") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized(f"OIDC token was not issued for this service (audience must be {self.audience!r})") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized(f"OIDC token comes from an untrusted issuer (expected {self.issuer!r})") from None
        except jwt.InvalidSignatureError:
            raise Unauthorized("OIDC token signature does not verify against the issuer's keys") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"OIDC token lacks the required claim {exc.claim!r}") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"OIDC token is invalid: {exc}") from None

    def _key_for(self, kid: str | None) -> jwt.PyJWK:
        with self._lock:
            stale = time.monotonic() - self._fetched_at > KEY_CACHE_SECONDS
            unknown = kid not in self._keys and time.monotonic() - self._fetched_at > self._refetch_interval
            if not self._keys or stale or unknown:
                self._keys = self._fetch_keys()
                self._fetched_at = time.monotonic()
            if kid is None and len(self._keys) == 1:
                return next(iter(self._keys.values()))
            if kid not in self._keys:
                raise Unauthorized(f"OIDC token is signed with key {kid!r}, which the issuer does not publish")
            return self._keys[kid]

    def _fetch_keys(self) -> dict[str, jwt.PyJWK]:
        try:
            jwks_url = self._jwks_url or self._get_json(f"{self.issuer}/.well-known/openid-configuration")["jwks_uri"]
            keyset = jwt.PyJWKSet.from_dict(self._get_json(jwks_url))
        except (httpx.HTTPError, KeyError, ValueError, jwt.PyJWKSetError) as exc:
            raise Unauthorized(f"cannot fetch the OIDC issuer's signing keys: {exc}") from None
        return {key.key_id or "": key for key in keyset.keys}

    def _get_json(self, url: str) -> dict[str, Any]:
        response = self._http.get(url)
        response.raise_for_status()
        return response.json()


def claim_at(claims: dict[str, Any], dotted_path: str) -> Any:
    """The value at a dotted claim path such as `realm_access.roles`, or None."""
    value: Any = claims
    for part in dotted_path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def role_from_claims(claims: dict[str, Any], settings: Settings) -> Role:
    """The most privileged Kiln role named in the roles claim; Unauthorized when there is none."""
    granted = {name.removeprefix(settings.oidc_role_prefix) for name in _as_list(claim_at(claims, settings.oidc_roles_claim))}
    for role in PRECEDENCE:
        if role.value in granted:
            return role
    raise Unauthorized(
        f"OIDC token grants no Kiln role: claim {settings.oidc_roles_claim!r} must contain one of "
        + ", ".join(settings.oidc_role_prefix + r.value for r in PRECEDENCE)
    )


def tenant_slugs_from_claims(claims: dict[str, Any], settings: Settings) -> list[str]:
    """Tenant slugs listed in the tenants claim (Keycloak group paths lose their leading `/`)."""
    return [name.strip("/").split("/")[-1] for name in _as_list(claim_at(claims, settings.oidc_tenants_claim))]


def principal_from_claims(session: Session, claims: dict[str, Any], settings: Settings, source: str = "") -> Principal:
    """The caller described by verified claims: role, known tenants, and `oidc:NAME` for the audit log."""
    role = role_from_claims(claims, settings)
    slugs = tenant_slugs_from_claims(claims, settings)
    tenant_ids = session.exec(select(Tenant.id).where(col(Tenant.slug).in_(slugs))).all() if slugs else []
    name = claims.get(settings.oidc_username_claim) or claims["sub"]
    return Principal(username=f"oidc:{name}", role=role, tenant_ids=frozenset(tenant_ids), source=source)
