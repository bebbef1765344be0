"""Single sign-on for the console: OIDC authorisation-code flow with PKCE (Keycloak and compatible).

`GET /oidc/login` sends the browser to the issuer's authorisation endpoint with a fresh
`state`, `nonce` and PKCE challenge, kept in a short-lived encrypted cookie (SameSite=Lax,
so it comes back with the issuer's redirect). `GET /oidc/callback` checks `state`,
exchanges the code at the token endpoint (with the PKCE verifier, and the client secret
when one is set), validates the ID token with `kiln.oidc.OIDCVerifier` (signature against
the issuer's JWKS, `iss`, `aud` = client id, `exp`) and its `nonce`, and starts a console
session with the role and tenants the token's claims grant (the same mapping as bearer
tokens). The client is `KILN_OIDC_AUDIENCE`; roles and groups must be in the ID token.

Signing out of an OIDC session also ends the provider's session (RP-initiated logout): after
Kiln revokes its own session, the browser goes to the issuer's `end_session_endpoint` with
`id_token_hint`, `client_id` and `post_logout_redirect_uri` = this console's
`/signin?reason=signedout` (register that URI at the provider), so the next single sign-on
asks for the password again. A provider without that endpoint leaves its own session alone.
An ID token too large for the session cookie is not kept; sign-out then sends `client_id` alone.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from dataclasses import replace
from typing import Any
from urllib.parse import urlencode

import flask
import httpx
from sqlmodel import Session

from dashboards.context import console_context
from dashboards.session import ConsoleSession
from dashboards.signin import render_form, safe_next, set_cookie, start_session
from kiln import audit
from kiln.errors import Unauthorized
from kiln.oidc import (
    OIDCVerifier,
    principal_from_claims,
    role_from_claims,
    tenant_slugs_from_claims,
)
from kiln.settings import Settings

FLOW_COOKIE = "kiln_oidc"
FLOW_SECONDS = 600
SIGNED_OUT = "/signin?reason=signedout"  # post_logout_redirect_uri, below the console's URL
MAX_COOKIE_BYTES = 3800  # a session cookie's value, leaving room for its attributes within 4096


class OIDCSignIn:
    """The console's OIDC client: discovery, the two routes, and the code exchange."""

    def __init__(self, settings: Settings, verifier: OIDCVerifier | None = None, http: httpx.Client | None = None):
        self.settings = settings
        self.issuer = (settings.oidc_issuer or "").rstrip("/")
        self.client_id = settings.oidc_audience or ""
        self.verifier = verifier or OIDCVerifier(settings)
        self.http = http or httpx.Client(timeout=10.0)
        self._endpoints: dict[str, str] | None = None

    def endpoints(self) -> dict[str, str]:
        """The issuer's authorisation, token and (optional, else "") end-session endpoints, from its
        discovery document (cached)."""
        if self._endpoints is None:
            response = self.http.get(f"{self.issuer}/.well-known/openid-configuration")
            response.raise_for_status()
            document = response.json()
            self._endpoints = {"authorize": document["authorization_endpoint"], "token": document["token_endpoint"],
                               "end_session": document.get("end_session_endpoint") or ""}
        return self._endpoints

    def login(self) -> flask.Response:
        """GET /oidc/login: redirect to the issuer with state, nonce and a PKCE challenge."""
        context = console_context()
        try:
            authorize = self.endpoints()["authorize"]
        except (httpx.HTTPError, KeyError, ValueError):
            return render_form(502, notice="The single sign-on provider cannot be reached. Sign in with a password.",
                               tone="error")
        verifier = secrets.token_urlsafe(48)
        flow = {"state": secrets.token_urlsafe(24), "nonce": secrets.token_urlsafe(24), "verifier": verifier,
                "next": safe_next(flask.request.args.get("next")), "until": time.time() + FLOW_SECONDS}
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        query = urlencode({
            "response_type": "code", "client_id": self.client_id, "redirect_uri": self.redirect_uri(),
            "scope": "openid profile", "state": flow["state"], "nonce": flow["nonce"],
            "code_challenge": challenge, "code_challenge_method": "S256",
        })
        response = flask.redirect(f"{authorize}?{query}", code=302)
        set_cookie(response, FLOW_COOKIE, context.codec.seal_data(flow), max_age=FLOW_SECONDS, http_only=True, same_site="Lax")
        return response

    def redirect_uri(self) -> str:
        """This console's callback URL, as the browser reaches it."""
        return flask.request.host_url.rstrip("/") + "/oidc/callback"

    def callback(self) -> flask.Response:
        """GET /oidc/callback: check state, exchange the code, validate the ID token, start a session."""
        context = console_context()
        flow = context.codec.open_data(flask.request.cookies.get(FLOW_COOKIE))
        args = flask.request.args
        if not flow or flow.get("until", 0) < time.time():
            return self._failed("the sign-on took too long or did not start here; try again")
        if not secrets.compare_digest(str(args.get("state", "")), flow["state"]):
            return self._failed("the provider's answer does not match this sign-on (state)")
        if args.get("error") or not args.get("code"):
            return self._failed(f"the provider refused: {args.get('error_description') or args.get('error') or 'no code'}")
        try:
            claims, id_token = self._exchange(args["code"], flow)
            role_from_claims(claims, self.settings)
        except Unauthorized as exc:
            return self._failed(exc.detail)
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            return self._failed(f"the code exchange with the provider failed ({type(exc).__name__})")
        with Session(context.engine) as session:
            principal = principal_from_claims(session, claims, self.settings, source=flask.request.remote_addr or "")
            audit.record(session, principal, "sign-in", "user", claims["sub"], detail={"via": "console-oidc"})
            session.commit()
        console_session = context.codec.new_session(
            "oidc", principal.username, role=principal.role.value, tenants=tuple(tenant_slugs_from_claims(claims, self.settings)),
            id_token=id_token,
        )
        if len(context.codec.seal(console_session)) > MAX_COOKIE_BYTES:  # browsers drop larger cookies
            console_session = replace(console_session, id_token=None)  # sign-out then sends client_id alone
        response = start_session(flask.redirect(flow["next"], code=303), context, console_session)
        response.delete_cookie(FLOW_COOKIE, path="/")
        return response

    def logout_url(self, console_session: ConsoleSession) -> str | None:
        """Where the browser goes after Kiln's own sign-out of an OIDC session: the issuer's
        end-session endpoint (RP-initiated logout), or None when it has none or cannot be reached."""
        try:
            end_session = self.endpoints()["end_session"]
        except (httpx.HTTPError, KeyError, ValueError):
            return None
        if not end_session:
            return None
        query = {"client_id": self.client_id, "post_logout_redirect_uri": flask.request.host_url.rstrip("/") + SIGNED_OUT}
        if console_session.id_token:
            query["id_token_hint"] = console_session.id_token
        return f"{end_session}{'&' if '?' in end_session else '?'}{urlencode(query)}"

    def _exchange(self, code: str, flow: dict[str, Any]) -> tuple[dict[str, Any], str]:
        data = {"grant_type": "authorization_code", "code": code, "redirect_uri": self.redirect_uri(),
                "client_id": self.client_id, "code_verifier": flow["verifier"]}
        secret = self.settings.oidc_client_secret
        auth = (self.client_id, secret.get_secret_value()) if secret else None
        response = self.http.post(self.endpoints()["token"], data=data, auth=auth)
        if response.status_code != 200:
            raise Unauthorized(f"the provider did not accept the code (HTTP {response.status_code})")
        id_token = response.json().get("id_token")
        if not id_token:
            raise Unauthorized("the provider sent no ID token (is the `openid` scope allowed for this client?)")
        claims = self.verifier.verify(id_token)
        if not secrets.compare_digest(str(claims.get("nonce", "")), flow["nonce"]):
            raise Unauthorized("the ID token was not issued for this sign-on (nonce)")
        return claims, id_token

    def _failed(self, why: str) -> flask.Response:
        response = render_form(401, notice=f"Single sign-on failed: {why}.", tone="error")
        response.delete_cookie(FLOW_COOKIE, path="/")
        return response

    def install(self, server: flask.Flask) -> None:
        """Add the two routes to the console's Flask server."""
        server.add_url_rule("/oidc/login", "oidc_login", self.login, methods=["GET"])
        server.add_url_rule("/oidc/callback", "oidc_callback", self.callback, methods=["GET"])

