"""Console single sign-on: the OIDC authorisation-code flow with PKCE against a local issuer.

The issuer is a real HTTP server on loopback with discovery, JWKS, an authorisation endpoint
(which approves at once, like a provider with a signed-in user) and a token endpoint that
checks the code, redirect URI and PKCE verifier before signing an ID token with its RSA key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient
from sqlmodel import select

from dashboards.session import CSRF_COOKIE, SESSION_COOKIE
from kiln.app import create_app
from kiln.models import AuditEvent
from kiln.settings import Settings
from tests.factories import World

CLIENT_ID = "kiln-console"
KID = "console-key-1"


class CodeFlowIssuer:
    """A minimal OIDC provider for the authorisation-code flow."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        self.jwks = {"keys": [{**jwk, "kid": KID, "use": "sig", "alg": "RS256"}]}
        self.claims: dict[str, Any] = {}
        self.codes: dict[str, dict[str, Any]] = {}
        self.nonce_override: str | None = None
        self.end_session = False  # whether discovery names an end_session_endpoint
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path, query = urlsplit(self.path).path, parse_qs(urlsplit(self.path).query)
                if path.endswith("/.well-known/openid-configuration"):
                    document = {"issuer": issuer.url, "jwks_uri": f"{issuer.url}/certs",
                                "authorization_endpoint": f"{issuer.url}/auth", "token_endpoint": f"{issuer.url}/token"}
                    if issuer.end_session:
                        document["end_session_endpoint"] = f"{issuer.url}/logout"
                    self._json(200, document)
                elif path.endswith("/certs"):
                    self._json(200, issuer.jwks)
                elif path.endswith("/auth"):
                    self._authorize({k: v[0] for k, v in query.items()})
                else:
                    self._json(404, {"error": "not_found"})

            def do_POST(self) -> None:
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode()).items()}
                grant = issuer.codes.pop(form.get("code", ""), None)
                verifier = form.get("code_verifier", "")
                challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
                if (grant is None or form.get("grant_type") != "authorization_code" or form.get("client_id") != CLIENT_ID
                        or form.get("redirect_uri") != grant["redirect_uri"] or challenge != grant["challenge"]):
                    self._json(400, {"error": "invalid_grant"})
                    return
                self._json(200, {"access_token": "opaque", "token_type": "Bearer", "id_token": issuer.id_token(grant["nonce"])})

            def _authorize(self, query: dict[str, str]) -> None:
                if query.get("client_id") != CLIENT_ID or query.get("code_challenge_method") != "S256":
                    self._json(400, {"error": "invalid_request"})
                    return
                code = secrets.token_urlsafe(16)
                issuer.codes[code] = {"nonce": query["nonce"], "challenge": query["code_challenge"],
                                      "redirect_uri": query["redirect_uri"]}
                self.send_response(302)
                self.send_header("Location", f"{query['redirect_uri']}?{urlencode({'code': code, 'state': query['state']})}")
                self.end_headers()

            def _json(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/realms/kiln"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def id_token(self, nonce: str) -> str:
        """An ID token for the configured claims."""
        now = int(time.time())
        claims = {"iss": self.url, "aud": CLIENT_ID, "sub": "u-123", "exp": now + 300, "iat": now,
                  "nonce": self.nonce_override or nonce, "preferred_username": "dana",
                  "realm_access": {"roles": ["tenant-member"]}, "groups": ["/tenant-a"], **self.claims}
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": KID})


@pytest.fixture(scope="module")
def issuer() -> Iterator[CodeFlowIssuer]:
    issuer = CodeFlowIssuer()
    yield issuer
    issuer.server.shutdown()


@pytest.fixture
def sso_client(settings: Settings, engine, issuer: CodeFlowIssuer, world: World) -> Iterator[TestClient]:
    issuer.claims, issuer.nonce_override, issuer.end_session = {}, None, False
    configured = settings.model_copy(update={"oidc_issuer": issuer.url, "oidc_audience": CLIENT_ID})
    with TestClient(create_app(configured, engine=engine), base_url="https://testserver") as client:
        yield client


def single_sign_on(client: TestClient, next_path: str = "/usage") -> httpx.Response:
    """Start at the console, let the issuer approve, and return the console's answer to the callback."""
    start = client.get(f"/oidc/login?next={next_path}", follow_redirects=False)
    assert start.status_code == 302
    approved = httpx.get(start.headers["location"], follow_redirects=False)  # the browser at the issuer
    assert approved.status_code == 302, approved.text
    back = urlsplit(approved.headers["location"])
    assert f"{back.scheme}://{back.netloc}{back.path}" == "https://testserver/oidc/callback"
    return client.get(f"{back.path}?{back.query}", follow_redirects=False)


def test_single_sign_on_starts_a_tenant_session(sso_client: TestClient, world: World) -> None:
    form = sso_client.get("/signin")
    assert 'id="oidc-signin"' in form.text
    done = single_sign_on(sso_client)
    assert done.status_code == 303 and done.headers["location"] == "/usage"
    assert sso_client.get("/usage").status_code == 200
    assert sso_client.get("/fleet").status_code == 403  # a tenant member, as the token's roles say
    layout = sso_client.get("/_dash-layout").text
    assert "oidc:dana" in layout and "tenant-member" in layout
    events = world.session.exec(select(AuditEvent).where(AuditEvent.action == "sign-in")).all()
    assert [(e.actor, e.detail["via"]) for e in events] == [("oidc:dana", "console-oidc")]


def test_an_infra_admin_from_the_provider_gets_admin_pages(sso_client: TestClient, issuer: CodeFlowIssuer) -> None:
    issuer.claims = {"realm_access": {"roles": ["infra-admin"]}, "groups": []}
    assert single_sign_on(sso_client, "/fleet").headers["location"] == "/fleet"
    assert sso_client.get("/fleet").status_code == 200


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        ("nonce", "nonce"),
        ("state", "state"),
        ("no-role", "no Kiln role"),
        ("no-flow-cookie", "did not start here"),
    ],
)
def test_a_failed_sign_on_says_why_and_starts_no_session(sso_client: TestClient, issuer: CodeFlowIssuer, tamper: str,
                                                         reason: str) -> None:
    if tamper == "nonce":
        issuer.nonce_override = "someone-elses-nonce"
    if tamper == "no-role":
        issuer.claims = {"realm_access": {"roles": ["offline_access"]}}
    start = sso_client.get("/oidc/login", follow_redirects=False)
    approved = urlsplit(httpx.get(start.headers["location"], follow_redirects=False).headers["location"])
    query = parse_qs(approved.query)
    if tamper == "state":
        query["state"] = ["forged-state"]
    if tamper == "no-flow-cookie":
        sso_client.cookies.clear()
    answer = sso_client.get(f"{approved.path}?{urlencode({k: v[0] for k, v in query.items()})}", follow_redirects=False)
    assert answer.status_code == 401 and "Single sign-on failed" in answer.text and reason in answer.text
    assert SESSION_COOKIE not in sso_client.cookies
    assert sso_client.get("/usage", follow_redirects=False).status_code == 302


@pytest.mark.parametrize("end_session", [True, False], ids=["rp-initiated-logout", "no-end-session-endpoint"])
def test_sign_out_goes_on_to_the_providers_end_session_endpoint(sso_client: TestClient, issuer: CodeFlowIssuer,
                                                                end_session: bool) -> None:
    issuer.end_session = end_session
    single_sign_on(sso_client)
    out = sso_client.post("/signout", data={"csrf_token": sso_client.cookies[CSRF_COOKIE]}, follow_redirects=False)
    assert out.status_code == 303
    assert sso_client.get("/usage", follow_redirects=False).status_code == 302  # Kiln's own session is over either way
    if not end_session:
        assert out.headers["location"] == "/signin?reason=signedout"
        return
    target = urlsplit(out.headers["location"])
    query = {k: v[0] for k, v in parse_qs(target.query).items()}
    assert f"{target.scheme}://{target.netloc}{target.path}" == f"{issuer.url}/logout"
    assert query["post_logout_redirect_uri"] == "https://testserver/signin?reason=signedout"
    assert query["client_id"] == CLIENT_ID
    hint = jwt.decode(query["id_token_hint"], issuer.key.public_key(), algorithms=["RS256"], audience=CLIENT_ID)
    assert hint["sub"] == "u-123" and hint["iss"] == issuer.url  # the ID token this session signed in with


def test_an_id_token_too_large_for_the_cookie_is_not_kept(sso_client: TestClient, issuer: CodeFlowIssuer) -> None:
    issuer.end_session = True
    issuer.claims = {"groups": ["/tenant-a"] + [f"/department/team-{i}" for i in range(200)]}  # a big Keycloak user
    assert single_sign_on(sso_client).status_code == 303
    assert len(sso_client.cookies[SESSION_COOKIE]) <= 3800 and sso_client.get("/usage").status_code == 200
    out = sso_client.post("/signout", data={"csrf_token": sso_client.cookies[CSRF_COOKIE]}, follow_redirects=False)
    query = parse_qs(urlsplit(out.headers["location"]).query)
    assert "id_token_hint" not in query and query["client_id"] == [CLIENT_ID]


def test_without_oidc_there_is_no_sso_button_or_route(settings: Settings, engine, world: World) -> None:
    with TestClient(create_app(settings, engine=engine), base_url="https://testserver") as client:
        assert 'id="oidc-signin"' not in client.get("/signin").text
        assert client.get("/oidc/login", follow_redirects=False).status_code == 302  # to sign-in: not a public route
