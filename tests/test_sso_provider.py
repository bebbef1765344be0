"""Single sign-on against an OpenID provider nobody here wrote: LemonLDAP::NG 2.16 (Debian).

The provider (tests/peers/lemonldap.sh) runs its own portal, login form, PKCE checks, JWT
access tokens, JWKS, key rotation (`rotateOidcKeys`) and end-session endpoint; its users get
roles from a macro and tenants from group rules (configure.py). Kiln maps them with
KILN_OIDC_ROLES_CLAIM=roles, KILN_OIDC_ROLE_PREFIX=kiln-, KILN_OIDC_TENANTS_CLAIM=groups.
The console is driven in Debian's Chromium; API calls use tokens obtained through the
provider's real login form by a small HTTP user agent (`provider_tokens`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import jwt
import pytest

from fleet.provisioning.fake import FakeDriver
from kiln.oidc import OIDCVerifier
from tests.api_base import assert_problem
from tests.browser import TENANT_A_NODES, TENANT_B_NODES, RunningConsole, fleet_seeded, free_port, running_console
from tests.peers.harness import PEERS_DIR, running_peer

CLIENT_ID = "kiln-console"
CLI_CLIENT_ID = "kiln-cli"  # the provider adds `kiln-console` to its tokens' audience; they live 8 s
OTHER_CLIENT_ID = "grafana"  # another application at the same provider
OTHER_REDIRECT = "http://127.0.0.1:9/callback"
TENANT_B_WORDS = ("tenant-b", "Tenant B", *TENANT_B_NODES)


@dataclass
class SSO:
    """Kiln's console and API (one running app) and the LemonLDAP::NG portal it trusts."""

    console: RunningConsole
    issuer: str
    state_dir: Path

    @property
    def base_url(self) -> str:
        return self.console.base_url


@pytest.fixture(scope="module")
def sso(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSO]:
    port = free_port()  # the provider must know Kiln's callback URL before Kiln starts
    state_dir = tmp_path_factory.mktemp("lemonldap")
    driver = FakeDriver()
    with running_peer("lemonldap", state_dir, f"http://127.0.0.1:{port}") as issuer, running_console(
        tmp_path_factory.mktemp("console"), driver, fleet_seeded(driver),
        port=port,
        # re-read the JWKS at most once a second on an unknown kid (default 60 s), and no clock leeway,
        # so rotation and expiry take seconds here; everything else is the production verifier
        oidc=lambda settings: OIDCVerifier(settings, refetch_interval=1, clock_skew=0),
        oidc_issuer=issuer, oidc_audience=CLIENT_ID, oidc_roles_claim="roles", oidc_role_prefix="kiln-",
        oidc_tenants_claim="groups",
    ) as console:
        yield SSO(console, issuer, state_dir)


class _Form(HTMLParser):
    """The first form's inputs (name -> value) of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: dict[str, str] = {}
        self.forms = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "form":
            self.forms += 1
        elif tag == "input" and self.forms == 1 and values.get("name"):
            self.inputs[values["name"] or ""] = values.get("value") or ""


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    return verifier, base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def authorize(issuer: str, client_id: str, redirect_uri: str, user: str, challenge: str | None) -> dict[str, str]:
    """Sign in at the provider's own login form as `user` (Demo users' password is their login); the
    parameters it sends back to `redirect_uri` (`code`, or `error`)."""
    query = {"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri, "scope": "openid profile",
             "state": secrets.token_urlsafe(8), "nonce": secrets.token_urlsafe(8)}
    if challenge:
        query |= {"code_challenge": challenge, "code_challenge_method": "S256"}
    url = f"{issuer}/oauth2/authorize?{urlencode(query)}"
    with httpx.Client(timeout=10) as agent:
        page = agent.get(url)
        form = _Form()
        form.feed(page.text)
        assert "password" in form.inputs, page.text[-2000:]  # the provider asks for the password
        answer = agent.post(url, data={**form.inputs, "user": user, "password": user})
    assert answer.status_code == 302, answer.text[-2000:]
    assert answer.headers["location"].startswith(redirect_uri + "?")
    back = {name: values[0] for name, values in parse_qs(urlsplit(answer.headers["location"]).query).items()}
    assert back["state"] == query["state"]
    return back


def provider_tokens(sso: SSO, user: str, client_id: str = CLIENT_ID) -> dict[str, Any]:
    """The provider's token response for `user` after an authorisation-code flow with PKCE."""
    redirect_uri = f"{sso.base_url}/oidc/callback" if client_id == CLIENT_ID else OTHER_REDIRECT
    verifier, challenge = pkce_pair()
    code = authorize(sso.issuer, client_id, redirect_uri, user, challenge)["code"]
    answer = httpx.post(f"{sso.issuer}/oauth2/token", data={"grant_type": "authorization_code", "code": code,
                        "redirect_uri": redirect_uri, "client_id": client_id, "code_verifier": verifier})
    assert answer.status_code == 200, answer.text
    return answer.json()


def api(sso: SSO, method: str, path: str, token: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, f"{sso.base_url}/api/v1{path}", headers={"Authorization": f"Bearer {token}"}, timeout=10,
                         **kwargs)


def claims_of(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


# --- (a) the console: authorisation code + PKCE in Chromium, through the provider's login form ---------

def sign_in_with_sso(sso: SSO, page: Any, user: str, path: str = "/usage") -> list[str]:
    """From Kiln's sign-in page through the provider's login form back to `path`; the authorize URLs seen."""
    authorize_urls: list[str] = []
    page.on("request", lambda request: "/oauth2/authorize" in request.url and authorize_urls.append(request.url))
    page.goto(f"{sso.base_url}/signin?next={path}")
    page.click("#oidc-signin")
    page.wait_for_url(f"{sso.issuer}/oauth2/authorize*")
    page.fill("input[name=user]", user)
    page.fill("input[name=password]", user)
    page.locator("form#lform button[type=submit]").first.click()
    page.wait_for_url(f"{sso.base_url}{path}")
    return authorize_urls


def test_console_sign_in_through_the_providers_form_with_pkce(sso: SSO) -> None:
    page = sso.console.browser.new_context().new_page()
    authorize_urls = sign_in_with_sso(sso, page, "rtyler")
    query = parse_qs(urlsplit(authorize_urls[0]).query)
    assert query["client_id"] == [CLIENT_ID] and query["code_challenge_method"] == ["S256"]
    assert len(query["code_challenge"][0]) == 43  # base64url(SHA-256(verifier)), no padding
    page.wait_for_selector("#usage-allocation-table .ag-cell", state="attached")  # the grid draws its rows once scrolled to
    assert page.inner_text("#current-user") == "oidc:rtyler" and "tenant-member" in page.inner_text("#topbar")
    text = page.inner_text("body")
    assert all(node in text for node in TENANT_A_NODES)
    assert [word for word in TENANT_B_WORDS if word in page.content()] == []
    assert page.goto(f"{sso.base_url}/fleet").status == 403  # tenant member, as the provider's roles claim says
    page.context.close()


def test_an_infra_admin_from_the_provider_opens_the_fleet(sso: SSO) -> None:
    page = sso.console.browser.new_context().new_page()
    sign_in_with_sso(sso, page, "dwho", "/fleet")
    page.wait_for_selector("#current-user")
    assert page.inner_text("#current-user") == "oidc:dwho" and "infra-admin" in page.inner_text("#topbar")
    page.context.close()


# --- (d) sign-out ends Kiln's session and the provider's (RP-initiated logout) ------------------------

def test_sign_out_ends_the_providers_session_too(sso: SSO) -> None:
    page = sso.console.browser.new_context().new_page()
    sign_in_with_sso(sso, page, "rtyler")
    ends: list[str] = []
    page.on("request", lambda request: "/oauth2/logout" in request.url and ends.append(request.url))
    page.click("#signout-button")
    page.wait_for_url(f"{sso.issuer}/oauth2/logout*")
    query = parse_qs(urlsplit(ends[0]).query)
    assert query["post_logout_redirect_uri"] == [f"{sso.base_url}/signin?reason=signedout"]
    assert claims_of(query["id_token_hint"][0])["sub"] == "rtyler"
    assert "Do you want to logout?" in page.inner_text("body")  # LL::NG's own confirmation page
    page.click("button.positive")
    page.wait_for_url(f"{sso.base_url}/signin?reason=signedout")
    assert "You have signed out." in page.inner_text("#signin-notice")
    assert page.goto(f"{sso.base_url}/usage").url.startswith(f"{sso.base_url}/signin")
    page.goto(f"{sso.base_url}/oidc/login?next=/usage")  # a new single sign-on: the provider asks again
    page.wait_for_url(f"{sso.issuer}/oauth2/authorize*")
    assert page.locator("input[name=password]").is_visible()
    page.context.close()


# --- (b) the API: the provider's JWT access tokens, verified against its JWKS --------------------------

def test_provider_access_tokens_map_to_roles_and_tenants(sso: SSO) -> None:
    member = provider_tokens(sso, "rtyler")["access_token"]
    assert claims_of(member)["aud"] == [CLIENT_ID] and claims_of(member)["roles"] == ["kiln-tenant-member"]
    assert [t["slug"] for t in api(sso, "GET", "/tenants", member).json()] == ["tenant-a"]
    assert_problem(api(sso, "POST", "/tenants", member, json={"slug": "nope"}), 403)
    tenant_admin = provider_tokens(sso, "msmith")["access_token"]
    assert [t["slug"] for t in api(sso, "GET", "/tenants", tenant_admin).json()] == ["tenant-b"]
    created = api(sso, "POST", "/users", tenant_admin,
                  json={"username": "b-newcomer", "role": "tenant-member", "tenants": ["tenant-b"], "password": "x" * 16})
    assert created.status_code == 201, created.text
    assert_problem(api(sso, "POST", "/users", tenant_admin, json={  # another tenant does not exist for them
        "username": "a-intruder", "role": "tenant-member", "tenants": ["tenant-a"], "password": "x" * 16}), 404)
    admin_tokens = provider_tokens(sso, "dwho")
    for token in (admin_tokens["access_token"], admin_tokens["id_token"]):  # either token works as a bearer
        assert {t["slug"] for t in api(sso, "GET", "/tenants", token).json()} >= {"tenant-a", "tenant-b"}
    actors = [e["actor"] for e in api(sso, "GET", "/audit-events", admin_tokens["access_token"]).json()]
    assert "oidc:msmith" in actors


def test_the_provider_enforces_pkce(sso: SSO) -> None:
    redirect_uri = f"{sso.base_url}/oidc/callback"
    refused = authorize(sso.issuer, CLIENT_ID, redirect_uri, "rtyler", None)  # no challenge: no code
    assert "code" not in refused and refused["error"] == "invalid_request", refused
    _, challenge = pkce_pair()
    code = authorize(sso.issuer, CLIENT_ID, redirect_uri, "rtyler", challenge)["code"]
    wrong = httpx.post(f"{sso.issuer}/oauth2/token", data={"grant_type": "authorization_code", "code": code,
                       "redirect_uri": redirect_uri, "client_id": CLIENT_ID, "code_verifier": pkce_pair()[0]})
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"


def tampered(token: str) -> str:
    """The token with its payload made infra-admin and its signature kept."""
    header, _, signature = token.split(".")
    payload = {**claims_of(token), "roles": ["kiln-infra-admin"]}
    body = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    return f"{header}.{body}.{signature}"


def test_tampered_other_audience_and_expired_tokens_are_401(sso: SSO) -> None:
    member = provider_tokens(sso, "rtyler")["access_token"]
    assert "signature" in assert_problem(api(sso, "GET", "/tenants", tampered(member)), 401)["detail"]
    other = provider_tokens(sso, "dwho", OTHER_CLIENT_ID)["access_token"]
    assert claims_of(other)["aud"] == [OTHER_CLIENT_ID]
    assert "audience" in assert_problem(api(sso, "GET", "/tenants", other), 401)["detail"]
    short = provider_tokens(sso, "rtyler", CLI_CLIENT_ID)["access_token"]
    assert claims_of(short)["aud"] == [CLI_CLIENT_ID, CLIENT_ID]
    assert api(sso, "GET", "/tenants", short).status_code == 200
    time.sleep(max(0.0, claims_of(short)["exp"] + 1.1 - time.time()))
    assert "expired" in assert_problem(api(sso, "GET", "/tenants", short), 401)["detail"]


# --- (c) key rotation at the provider, followed by the running Kiln -----------------------------------

def test_key_rotation_is_followed_without_restart(sso: SSO) -> None:
    before = provider_tokens(sso, "rtyler")["access_token"]
    old_kid = jwt.get_unverified_header(before)["kid"]
    assert api(sso, "GET", "/tenants", before).status_code == 200
    rotated = subprocess.run(["bash", str(PEERS_DIR / "lemonldap.sh"), "rotate-keys", str(sso.state_dir)],
                             capture_output=True, text=True, timeout=60)
    assert rotated.returncode == 0, rotated.stderr
    new_kid = rotated.stdout.strip().splitlines()[-1]
    deadline = time.monotonic() + 10
    while [k["kid"] for k in httpx.get(f"{sso.issuer}/oauth2/jwks").json()["keys"]] != [new_kid]:
        assert time.monotonic() < deadline, "the portal did not load its new key"
        time.sleep(0.2)
    time.sleep(1.1)  # the verifier's refetch interval (1 s here, 60 s by default)
    after = provider_tokens(sso, "rtyler")["access_token"]
    assert jwt.get_unverified_header(after)["kid"] == new_kid != old_kid
    assert [t["slug"] for t in api(sso, "GET", "/tenants", after).json()] == ["tenant-a"]
    # the old key left the provider's JWKS, so Kiln's refetch dropped it: tokens it signed stop working
    assert "does not publish" in assert_problem(api(sso, "GET", "/tenants", before), 401)["detail"]
    page = sso.console.browser.new_context().new_page()  # console sign-in checks ID tokens with the new key too
    sign_in_with_sso(sso, page, "rtyler")
    assert page.inner_text("#current-user") == "oidc:rtyler"
    page.context.close()
