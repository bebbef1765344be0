"""OIDC bearer tokens against a locally generated RSA key served as a real JWKS over HTTP."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient

from kiln.app import create_app
from kiln.settings import Settings
from tests.api_base import assert_problem
from tests.factories import World

AUDIENCE = "kiln-console"
KID = "test-key-1"


class Issuer:
    """A minimal OIDC issuer: discovery document and JWKS on loopback, and a key to sign with."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        self.jwks = {"keys": [{**jwk, "kid": KID, "use": "sig", "alg": "RS256"}]}
        self.requests = 0
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                issuer.requests += 1
                if self.path.endswith("/.well-known/openid-configuration"):
                    body = {"issuer": issuer.url, "jwks_uri": f"{issuer.url}/protocol/openid-connect/certs"}
                elif self.path.endswith("/certs"):
                    body = issuer.jwks
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/realms/kiln"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def token(self, key: Any = None, headers: dict[str, Any] | None = None, **overrides: Any) -> str:
        """A signed JWT with sensible claims, overridable."""
        now = int(time.time())
        claims = {
            "iss": self.url,
            "aud": AUDIENCE,
            "sub": "f5b6c7d8",
            "exp": now + 300,
            "iat": now,
            "preferred_username": "dana",
            "realm_access": {"roles": ["offline_access", "tenant-member"]},
            "groups": ["/tenant-a"],
        }
        claims.update(overrides)
        return jwt.encode(claims, key or self.key, algorithm="RS256", headers={"kid": KID, **(headers or {})})


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    issuer = Issuer()
    yield issuer
    issuer.server.shutdown()


@pytest.fixture
def oidc_client(settings: Settings, engine, issuer: Issuer) -> Iterator[TestClient]:
    configured = settings.model_copy(update={"oidc_issuer": issuer.url, "oidc_audience": AUDIENCE})
    with TestClient(create_app(configured, engine=engine)) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_valid_token_maps_role_and_tenants(oidc_client: TestClient, world: World, issuer: Issuer) -> None:
    listed = oidc_client.get("/api/v1/tenants", headers=bearer(issuer.token())).json()
    assert [t["slug"] for t in listed] == ["tenant-a"]
    assert_problem(oidc_client.get(f"/api/v1/tenants/{world.b.id}", headers=bearer(issuer.token())), 404)
    admin = issuer.token(realm_access={"roles": ["infra-admin"]}, groups=[])
    assert len(oidc_client.get("/api/v1/tenants", headers=bearer(admin)).json()) == 2
    created = oidc_client.post("/api/v1/tenants", json={"slug": "via-oidc"}, headers=bearer(admin))
    assert created.status_code == 201
    events = oidc_client.get("/api/v1/audit-events", headers=bearer(admin)).json()
    assert events[0]["actor"] == "oidc:dana"


@pytest.mark.parametrize(
    ("make_token", "reason"),
    [
        (lambda i: i.token(exp=int(time.time()) - 120), "expired"),
        (lambda i: i.token(aud="someone-else"), "audience"),
        (lambda i: i.token(iss="https://evil.example/realms/kiln"), "issuer"),
        (lambda i: i.token(key=rsa.generate_private_key(public_exponent=65537, key_size=2048)), "signature"),
        (lambda i: i.token(headers={"kid": "rotated-away"}), "does not publish"),
        (lambda i: jwt.encode({"sub": "x", "aud": AUDIENCE, "iss": i.url, "exp": 2**31}, "k" * 32, algorithm="HS256"), "algorithm"),
        (lambda i: i.token(realm_access={"roles": ["offline_access"]}), "no Kiln role"),
        (lambda i: "not-a-jwt-at-all", "well-formed"),
    ],
    ids=["expired", "wrong-audience", "wrong-issuer", "bad-signature", "unknown-kid", "hs256", "no-role", "garbage"],
)
def test_bad_tokens_are_401_with_the_reason(oidc_client: TestClient, world: World, issuer: Issuer, make_token, reason: str) -> None:
    body = assert_problem(oidc_client.get("/api/v1/tenants", headers=bearer(make_token(issuer))), 401)
    assert reason in body["detail"]


def test_role_prefix_and_custom_claims(settings: Settings, engine, world: World, issuer: Issuer) -> None:
    configured = settings.model_copy(
        update={
            "oidc_issuer": issuer.url,
            "oidc_audience": AUDIENCE,
            "oidc_roles_claim": "resource_access.kiln.roles",
            "oidc_role_prefix": "kiln-",
            "oidc_tenants_claim": "tenants",
        }
    )
    token = issuer.token(resource_access={"kiln": {"roles": ["kiln-tenant-admin"]}}, tenants=["tenant-b"])
    with TestClient(create_app(configured, engine=engine)) as client:
        listed = client.get("/api/v1/tenants", headers=bearer(token)).json()
    assert [t["slug"] for t in listed] == ["tenant-b"]


def test_jwt_rejected_when_oidc_is_not_configured(client: TestClient, world: World, issuer: Issuer) -> None:
    body = assert_problem(client.get("/api/v1/tenants", headers=bearer(issuer.token())), 401)
    assert "OIDC" in body["detail"]
