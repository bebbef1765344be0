"""The console's front door: every request passes here before Dash sees it.

- Static files (Dash's component bundles, `/assets/`) and the sign-in routes are public.
- Everything else needs a valid, unexpired session. Page loads without one are redirected
  to `/signin?reason=...&next=...`; Dash's own requests (`/_dash-*`) get 401 JSON, which
  the console's script turns into the same redirect (so an expired session mid-page lands
  on the sign-in form with a message).
- Every state-changing request (POST/PUT/PATCH/DELETE: Dash callbacks, sign-out) must
  carry the session's CSRF token (header `X-Kiln-CSRF` or form field `csrf_token`) and,
  when the browser sends `Origin`, come from this host. A cross-site page can neither read
  the token nor set the header without a CORS preflight that Kiln never grants.
- The caller's Principal is resolved once per request into `flask.g` (see
  `dashboards.context`); a tenant opening an admin page gets HTTP 403 and a 403 panel.
"""

from __future__ import annotations

from urllib.parse import quote, urlsplit

import flask
from sqlmodel import Session, col, select

from dashboards.context import ConsoleContext, console_context
from dashboards.session import CSRF_FIELD, CSRF_HEADER, SESSION_COOKIE, ConsoleSession
from kiln import sessions
from kiln.auth import Principal, principal_for_user
from kiln.logs import bind_caller
from kiln.models import Tenant, User
from kiln.roles import Role

STATIC_PREFIXES = ("/_dash-component-suites/", "/assets/", "/_favicon.ico", "/favicon.ico")
PUBLIC_PATHS = frozenset({"/signin", "/oidc/login", "/oidc/callback"})
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
DASH_API_PREFIX = "/_dash-"


def home_path(principal: Principal) -> str:
    """Where `/` leads: the fleet overview for infra admins, usage for everyone else."""
    return "/fleet" if principal.role == Role.INFRA_ADMIN else "/usage"


def resolve_principal(session: Session, console_session: ConsoleSession, source: str) -> Principal | None:
    """The caller a session stands for now, or None when its user is gone, inactive or renamed."""
    if console_session.kind == "local":
        user = session.get(User, console_session.user_id) if console_session.user_id else None
        if user is None or not user.is_active or user.username != console_session.username:
            return None
        return principal_for_user(session, user, source=source)
    try:
        role = Role(console_session.role or "")
    except ValueError:
        return None
    slugs = list(console_session.tenants)
    tenant_ids = session.exec(select(Tenant.id).where(col(Tenant.slug).in_(slugs))).all() if slugs else []
    return Principal(username=console_session.username, role=role, tenant_ids=frozenset(tenant_ids), source=source)


def _refuse(reason: str) -> flask.Response:
    request = flask.request
    if request.path.startswith(DASH_API_PREFIX):
        response = flask.jsonify({"error": "not signed in", "reason": reason})
        response.status_code = 401
        return response
    target = request.full_path.rstrip("?") if request.method == "GET" else "/"
    return flask.redirect(f"/signin?reason={reason}&next={quote(target, safe='')}", code=302)


def _forbidden(message: str) -> flask.Response:
    response = flask.jsonify({"error": "forbidden", "detail": message})
    response.status_code = 403
    return response


def same_origin(request: flask.Request) -> bool:
    """False when the browser says the request comes from another origin (host and port)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return origin != "null" and urlsplit(origin).netloc == request.host


def check_request() -> flask.Response | None:
    """Flask `before_request`: authenticate, check CSRF, and remember the caller in `flask.g`."""
    request = flask.request
    context: ConsoleContext = console_context()
    if request.path.startswith(STATIC_PREFIXES) or request.path == "/signin":
        return None
    if request.path in PUBLIC_PATHS and context.oidc is not None:
        return None
    raw = request.cookies.get(SESSION_COOKIE)
    console_session = context.codec.open(raw)
    if console_session is None:
        return _refuse("expired" if raw else "required")
    if console_session.expired:
        return _refuse("expired")
    with Session(context.engine) as session:
        principal = resolve_principal(session, console_session, request.remote_addr or "")
        if principal is None:
            return _refuse("revoked")
        ended = sessions.check(session, console_session.sid, request.remote_addr or "")
        if ended:
            return _refuse(ended)  # signed out, ended by an admin, or unknown
        session.commit()  # when and from where the session was last used
    if request.method in UNSAFE_METHODS:
        presented = request.headers.get(CSRF_HEADER) or request.form.get(CSRF_FIELD)
        if not same_origin(request):
            return _forbidden("cross-origin request refused")
        if not context.codec.valid_csrf(context.codec.csrf_token(console_session), presented):
            return _forbidden("missing or wrong CSRF token: reload the page")
    flask.g.principal, flask.g.console_session = principal, console_session
    bind_caller(principal.username, principal.tenant_ids)
    if request.method == "GET" and request.path == "/":
        return flask.redirect(home_path(principal), code=302)
    if request.method == "GET" and principal.role != Role.INFRA_ADMIN and request.path.startswith(context.admin_paths):
        flask.g.http_status = 403  # Dash still serves its page, whose layout shows the 403 panel
    return None


def finish_response(response: flask.Response) -> flask.Response:
    """Flask `after_request`: the 403 status of refused pages and security headers."""
    status = getattr(flask.g, "http_status", None)
    if status and response.status_code == 200:
        response.status_code = status
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Content-Security-Policy", "frame-ancestors 'none'")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if not flask.request.path.startswith(STATIC_PREFIXES):
        response.headers["Cache-Control"] = "no-store"
    return response


def install(server: flask.Flask) -> None:
    """Run the gate before every request of the console's Flask server."""
    server.before_request(check_request)
    server.after_request(finish_response)
