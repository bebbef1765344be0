"""Sign-in and sign-out: a plain HTML form (works without scripts), local users and OIDC.

`GET /signin` shows the form with a CSRF token bound to a nonce cookie; `POST /signin`
checks the token, then the username and password with `kiln.throttle.sign_in` (argon2id,
same cost for unknown users; failures counted and throttled as the API's are), and sets the
session and CSRF cookies. `POST /signout`
(CSRF-checked by the gate like every other state-changing request) clears them.
"""

from __future__ import annotations

import html
import secrets
from datetime import UTC, datetime
from string import Template

import flask
from sqlmodel import Session

from dashboards.context import ConsoleContext, console_context
from dashboards.session import (
    CSRF_COOKIE,
    CSRF_FIELD,
    SESSION_COOKIE,
    SIGNIN_COOKIE,
    SIGNIN_NONCE_SECONDS,
    cookie_secure,
)
from kiln import audit, sessions
from kiln.auth import principal_for_user
from kiln.throttle import SigninThrottled, sign_in

MESSAGES = {
    "expired": "Your session has expired. Sign in again.",
    "signedout": "You have signed out.",
    "revoked": "Your account is no longer active or has changed. Sign in again.",
    "ended": "An administrator ended this session. Sign in again.",
    "required": "Sign in to use the Kiln console.",
    "oidc": "Single sign-on failed. Try again or sign in with a password.",
}

PAGE = Template("""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in — Kiln</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><meta name="color-scheme" content="light dark">
<link rel="stylesheet" href="/assets/console.css"></head>
<body class="signin-body"><main class="signin">
<h1>Kiln</h1><p class="subtitle">GPU fleet console</p>
$notice
<form method="post" action="/signin" novalidate>
<input type="hidden" name="csrf_token" value="$token"><input type="hidden" name="next" value="$next">
<label for="username">Username</label>
<input id="username" name="username" autocomplete="username" value="$username" autofocus>
$username_error
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password">
$password_error
<button type="submit" id="signin-button">Sign in</button>
</form>
$oidc
</main></body></html>""")


def safe_next(target: str | None) -> str:
    """A local path to return to after sign-in (never another site)."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


def set_cookie(response: flask.Response, name: str, value: str, *, max_age: int | None, http_only: bool, same_site: str) -> None:
    """Set one of the console's cookies with its security attributes (Secure unless dev over http)."""
    settings = console_context().settings
    response.set_cookie(
        name, value, max_age=max_age, path="/", httponly=http_only, samesite=same_site,
        secure=cookie_secure(settings.dev, flask.request.scheme),
    )


def render_form(
    status: int = 200, *, notice: str = "", tone: str = "info", username: str = "", errors: dict[str, str] | None = None,
    next_path: str = "/", retry_after: int | None = None,
) -> flask.Response:
    """The sign-in page with a fresh nonce cookie, an optional notice and per-field errors
    (and `Retry-After` when sign-in is throttled)."""
    context = console_context()
    # Reuse the browser's nonce: parallel requests (favicon, a second tab) must not invalidate an open form.
    nonce = flask.request.cookies.get(SIGNIN_COOKIE) or secrets.token_urlsafe(24)
    errors = errors or {}

    def field_error(name: str) -> str:
        text = errors.get(name)
        return f'<p class="field-error" id="{name}-error">{html.escape(text)}</p>' if text else ""

    oidc = ""
    if context.oidc is not None:
        oidc = f'<p class="or">or</p><a class="button secondary" id="oidc-signin" href="/oidc/login?next={html.escape(next_path)}">Sign in with single sign-on</a>'
    body = PAGE.substitute(
        notice=f'<p class="notice {tone}" id="signin-notice" role="alert">{html.escape(notice)}</p>' if notice else "",
        token=context.codec.signin_token(nonce),
        next=html.escape(next_path),
        username=html.escape(username),
        username_error=field_error("username"),
        password_error=field_error("password"),
        oidc=oidc,
    )
    response = flask.Response(body, status=status, mimetype="text/html")
    response.headers["Cache-Control"] = "no-store"
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    set_cookie(response, SIGNIN_COOKIE, nonce, max_age=SIGNIN_NONCE_SECONDS, http_only=True, same_site="Strict")
    return response


def show_signin() -> flask.Response:
    """GET /signin: the form, with a notice when the gate sent the caller here for a reason."""
    reason = flask.request.args.get("reason", "")
    tone = "info" if reason in {"signedout", "required"} else "warning"  # expired, revoked, ended, oidc
    return render_form(notice=MESSAGES.get(reason, ""), tone=tone, next_path=safe_next(flask.request.args.get("next")))


def start_session(response: flask.Response, context: ConsoleContext, console_session) -> flask.Response:
    """Record a new session (its user lists and ends it on their account page) and put it and
    its CSRF token into cookies on `response`."""
    with Session(context.engine) as session, session.begin():
        sessions.start(session, sid=console_session.sid, kind=console_session.kind, username=console_session.username,
                       user_id=console_session.user_id,
                       expires_at=datetime.fromtimestamp(console_session.expires_at, UTC),
                       address=flask.request.remote_addr or "", user_agent=flask.request.user_agent.string or "")
    max_age = int(context.codec.lifetime)
    set_cookie(response, SESSION_COOKIE, context.codec.seal(console_session), max_age=max_age, http_only=True, same_site="Lax")
    set_cookie(response, CSRF_COOKIE, context.codec.csrf_token(console_session), max_age=max_age, http_only=False,
               same_site="Strict")
    response.delete_cookie(SIGNIN_COOKIE, path="/")
    return response


def submit_signin() -> flask.Response:
    """POST /signin: check the form's CSRF token, then the credentials; start a session."""
    context = console_context()
    form = flask.request.form
    next_path = safe_next(form.get("next"))
    username = form.get("username", "").strip()
    nonce = flask.request.cookies.get(SIGNIN_COOKIE, "")
    if not nonce or not context.codec.valid_csrf(context.codec.signin_token(nonce), form.get(CSRF_FIELD)):
        return render_form(403, notice="This sign-in form has expired or did not come from this site. Try again.",
                           tone="error", username=username, next_path=next_path)
    errors = {}
    if not username:
        errors["username"] = "Enter your username."
    if not form.get("password"):
        errors["password"] = "Enter your password."
    if errors:
        return render_form(422, username=username, errors=errors, next_path=next_path)
    with Session(context.engine, expire_on_commit=False) as session:
        try:
            user = sign_in(session, context.settings, username, form["password"], flask.request.remote_addr or "")
        except SigninThrottled as exc:
            return render_form(429, notice=f"Too many failed sign-ins. {exc.detail.split(': ', 1)[1].capitalize()}.",
                               tone="error", username=username, next_path=next_path, retry_after=exc.retry_after)
        if user is None:
            return render_form(401, notice="Wrong username or password.", tone="error", username=username, next_path=next_path)
        principal = principal_for_user(session, user, source=flask.request.remote_addr or "")
        audit.record(session, principal, "sign-in", "user", user.id, detail={"via": "console"})
        session.commit()
    console_session = context.codec.new_session("local", user.username, user_id=user.id)
    return start_session(flask.redirect(next_path, code=303), context, console_session)


def submit_signout() -> flask.Response:
    """POST /signout (the gate has checked the session and CSRF token): end the session's
    record (so a copied cookie stops working too) and clear the cookies; an OIDC session then
    goes on to the provider's end-session endpoint (RP-initiated logout)."""
    console_session = flask.g.console_session
    with Session(console_context().engine) as session, session.begin():
        sessions.end_session(session, flask.g.principal, console_session.sid)
    oidc = console_context().oidc
    provider_logout = oidc.logout_url(console_session) if oidc is not None and console_session.kind == "oidc" else None
    response = flask.redirect(provider_logout or "/signin?reason=signedout", code=303)
    for name in (SESSION_COOKIE, CSRF_COOKIE):
        response.delete_cookie(name, path="/")
    return response


def install(server: flask.Flask) -> None:
    """Add the sign-in and sign-out routes to the console's Flask server."""
    server.add_url_rule("/signin", "signin_form", show_signin, methods=["GET"])
    server.add_url_rule("/signin", "signin_submit", submit_signin, methods=["POST"])
    server.add_url_rule("/signout", "signout", submit_signout, methods=["POST"])
