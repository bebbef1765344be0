"""The frame around every page: navigation for the caller's role, who is signed in, sign-out."""

from __future__ import annotations

import flask
from dash import dcc, html, page_container

from dashboards.context import current_csrf_token
from dashboards.session import CSRF_FIELD
from kiln.roles import Role

NAV = (  # (label, path, roles that see the link)
    ("Fleet", "/fleet", {Role.INFRA_ADMIN}),
    ("VDCs & quotas", "/vdcs", {Role.INFRA_ADMIN}),
    ("Firmware", "/firmware", {Role.INFRA_ADMIN}),
    ("Usage", "/usage", set(Role)),
    ("Costs", "/costs", set(Role)),
    ("Finance", "/finance", {Role.INFRA_ADMIN, Role.FINANCE}),
    ("Members & budgets", "/members", {Role.INFRA_ADMIN, Role.TENANT_ADMIN}),
    ("Account", "/account", set(Role)),
)


def layout() -> html.Div:
    """The console's frame for the signed-in caller (Dash calls this on every page load)."""
    principal = getattr(flask.g, "principal", None)
    if principal is None:  # Dash validates the layout once outside any signed-in request
        return html.Div([html.Header(id="topbar"), page_container])
    links = [dcc.Link(label, href=path, className="nav-link", id=f"nav-{path.strip('/')}")
             for label, path, roles in NAV if principal.role in roles]
    signout = html.Form(
        [dcc.Input(type="hidden", name=CSRF_FIELD, value=current_csrf_token(), id="signout-csrf"),
         html.Button("Sign out", type="submit", id="signout-button", className="button secondary")],
        action="/signout", method="POST", id="signout-form",
    )
    user = html.Span([html.Strong(principal.username, id="current-user"), f" · {principal.role.value}"], className="who")
    return html.Div([
        html.Header([html.A("Kiln", href="/", className="brand"), html.Nav(links), html.Div([user, signout], className="account")],
                    id="topbar"),
        html.Main(page_container, id="content"),
    ])
