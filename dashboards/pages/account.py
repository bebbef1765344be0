"""Your account: your console sessions and API tokens — created, last used, from where — and a
button to end any of them. Every role sees this page, for themselves only.

The buttons are plain forms (they work without scripts) posting to `/account/sessions/<sid>/end`
and `/account/tokens/<id>/revoke`; the gate checks their CSRF token like every other change,
and the same `kiln.sessions` / `kiln.tokens` functions as the API decide who may end what.
"""

from __future__ import annotations

import dash
import flask
from dash import dcc, html

from dashboards.components import section, table, when
from dashboards.context import current_csrf_token, current_principal, current_session, db_session
from dashboards.session import CSRF_COOKIE, CSRF_FIELD, SESSION_COOKIE
from kiln.errors import KilnError
from kiln.sessions import end_session, list_sessions
from kiln.tokens import list_tokens, revoke_token

PATH = "/account"
NOTICES = {"ended": "Session ended.", "revoked": "Token revoked.", "missing": "Nothing to end: it was already gone."}


def _button(label: str, action: str, element_id: str) -> html.Form:
    return html.Form([dcc.Input(type="hidden", name=CSRF_FIELD, value=current_csrf_token()),
                      html.Button(label, type="submit", className="button secondary", id=element_id)],
                     action=action, method="POST")


def layout(done: str | None = None, **_: str) -> html.Div:
    """The caller's sessions and tokens, with end/revoke buttons."""
    principal = current_principal()
    this_sid = current_session().sid
    with db_session() as session:
        sessions = list_sessions(session, principal)
        tokens = [t for t in list_tokens(session, principal) if t.username == principal.username and t.revoked_at is None]
    session_rows = [
        (when(s.created_at), s.created_from or "—", when(s.last_seen_at), s.last_seen_from or "—",
         s.user_agent[:60] or "—", "this browser" if s.sid == this_sid else "",
         _button("Sign out" if s.sid == this_sid else "End", f"/account/sessions/{s.sid}/end", f"end-session-{s.sid[:8]}"))
        for s in sessions]
    token_rows = [
        (t.name or "—", f"{t.prefix}…", t.scope, t.tenant or "all yours", when(t.created_at), when(t.expires_at),
         when(t.last_used_at) if t.last_used_at else "never", t.last_used_from or "—",
         _button("Revoke", f"/account/tokens/{t.id}/revoke", f"revoke-token-{t.id}"))
        for t in tokens]
    notice = NOTICES.get(done or "")
    return html.Div([
        html.Div(html.H1("Your account"), className="page-head"),
        html.P(notice, id="account-notice", className="notice info") if notice else None,
        section("Console sessions", table(
            ("signed in", "from", "last used", "from", "browser", "", ""), session_rows,
            empty="No console sessions.", element_id="account-sessions")),
        section("API tokens", table(
            ("name", "token", "scope", "tenant", "created", "expires", "last used", "from", ""), token_rows,
            empty="No API tokens. Create one with `kiln tokens create USER` or POST /api/v1/tokens.",
            element_id="account-tokens")),
    ])


def end_console_session(sid: str) -> flask.Response:
    """POST /account/sessions/<sid>/end: end one of your sessions (your own: sign out)."""
    own = sid == current_session().sid
    outcome = _act(lambda session: end_session(session, current_principal(), sid), "ended")
    if own:
        response = flask.redirect("/signin?reason=signedout", code=303)
        for name in (SESSION_COOKIE, CSRF_COOKIE):
            response.delete_cookie(name, path="/")
        return response
    return flask.redirect(f"{PATH}?done={outcome}", code=303)


def revoke_api_token(token_id: int) -> flask.Response:
    """POST /account/tokens/<id>/revoke: revoke one of your API tokens."""
    principal = current_principal()

    def revoke(session) -> None:
        if not any(t.id == token_id for t in list_tokens(session, principal) if t.username == principal.username):
            raise KeyError(token_id)
        revoke_token(session, principal, token_id)

    return flask.redirect(f"{PATH}?done={_act(revoke, 'revoked')}", code=303)


def _act(action, outcome: str) -> str:
    try:
        with db_session() as session:
            action(session)
    except (KilnError, KeyError):
        return "missing"
    return outcome


def register(app: dash.Dash) -> None:
    """Register the page and its two form actions."""
    dash.register_page(__name__, path=PATH, name="Account", title="Your account — Kiln", layout=layout)
    app.server.add_url_rule("/account/sessions/<sid>/end", "account_end_session", end_console_session, methods=["POST"])
    app.server.add_url_rule("/account/tokens/<int:token_id>/revoke", "account_revoke_token", revoke_api_token,
                            methods=["POST"])
