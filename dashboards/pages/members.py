"""Members and budgets (tenant admins, and infra admins for any tenant): who belongs to a tenant,
adding a member, deactivating or reactivating one, and the tenant's budgets (`dashboards.budget_forms`).

Everything goes through the services behind the API with the signed-in caller: `kiln.users`
(`list_users`, `create_user`, `update_user`) and `metering.budgets`. A tenant admin picks among
their own tenants only; a request naming another tenant, or another tenant's user or budget, is
answered "not found" as the API answers it, and changes nothing. Other roles get the 403 panel
(HTTP 403 on a page load).
"""

from __future__ import annotations

import dash
from dash import ALL, Input, Output, State, callback_context, dcc, html, no_update
from dash.exceptions import PreventUpdate
from sqlmodel import Session

from dashboards import budget_forms
from dashboards.components import allowed, empty_state, forbid_page_load, forbidden, table
from dashboards.context import current_principal, db_session
from dashboards.forms import attempt, blank_to_none, done, field, message, refused, text_input
from kiln.auth import Principal
from kiln.errors import KilnError
from kiln.roles import Role
from kiln.tenants import list_tenants, visible_tenant
from kiln.users import UserCreate, UserPublic, UserUpdate, create_user, get_user, list_users, to_public, update_user
from kiln.validation import parse_model

PATH = "/members"
ROLES = (Role.INFRA_ADMIN, Role.TENANT_ADMIN)
MEMBER_ROLES = [{"label": "tenant member", "value": Role.TENANT_MEMBER.value},
                {"label": "tenant admin", "value": Role.TENANT_ADMIN.value}]
NEW_MEMBER_FIELDS = ("member-username", "member-full-name", "member-email", "member-password", "member-role")
CLEARED_ON_ADD = NEW_MEMBER_FIELDS[:4]  # emptied once the member is added (the password above all)
TOGGLE = "member-active"


def tenant_members(session: Session, principal: Principal, slug: str) -> list[UserPublic]:
    """The users of tenant `slug`, if the caller may see it (NotFound otherwise, as the API says)."""
    visible_tenant(session, principal, slug)
    return [u for u in to_public(session, principal, list_users(session, principal)) if slug in u.tenants]


def member_table(members: list[UserPublic], principal: Principal) -> html.Div:
    """Members with their role and status, and a button to deactivate (or reactivate) each other one."""
    def button(user: UserPublic) -> html.Button | str:
        if user.id == principal.user_id:
            return "you"
        label = "Deactivate" if user.is_active else "Reactivate"
        return html.Button(f"{label} {user.username}", id={"type": TOGGLE, "user": user.id}, n_clicks=0,
                           className="button secondary")
    return table(("user", "name", "e-mail", "role", "status", ""),
                 [(u.username, u.full_name or "—", u.email or "—", u.role.value,
                   "active" if u.is_active else "deactivated", button(u)) for u in members],
                 empty="No members yet: add one below.", element_id="members-list")


def body(slug: str | None) -> list:
    """The members and budgets blocks for tenant `slug`."""
    principal = current_principal()
    if not slug:
        return [empty_state("You administer no tenant yet.", id="members-none")]
    try:
        with db_session() as session:
            members = tenant_members(session, principal, slug)
            budgets = budget_forms.section(session, principal, slug)
    except KilnError as error:  # another tenant's slug, in a crafted request: "not found"
        return [refused(error)]
    adder = html.Div([
        field("Username", text_input("member-username", "e.g. dana"), "member-username"),
        field("Full name", text_input("member-full-name"), "member-full-name"),
        field("E-mail", text_input("member-email", "dana@example.com"), "member-email"),
        field("Password", dcc.Input(id="member-password", type="password", autoComplete="new-password"),
              "member-password", "leave empty for sign-in through your identity provider"),
        field("Role", dcc.Dropdown(id="member-role", options=MEMBER_ROLES, value=Role.TENANT_MEMBER.value,
                                   clearable=False), "member-role"),
    ], className="form-row")
    return [
        html.Section([html.H2(f"Members of {slug}"), html.Div(member_table(members, principal), id="members-table"),
                      html.H3("Add a member"), adder,
                      html.Div(html.Button("Add member", id="member-add", n_clicks=0, className="button"),
                               className="form-actions"),
                      message("members-message")], className="card", id="members"),
        budgets,
    ]


def layout(tenant: str | None = None, **_: str) -> html.Div:
    """The page for tenant admins and infra admins (a 403 panel for anyone else)."""
    principal = current_principal()
    if not allowed(principal, ROLES):
        return forbidden(principal, "The members and budgets page", who="tenant admins and infra admins")
    with db_session() as session:
        slugs = [t.slug for t in list_tenants(session, principal)]
    chosen = tenant if tenant in slugs else (slugs[0] if slugs else None)
    return html.Div([
        html.Div([html.H1("Members and budgets"),
                  dcc.Dropdown(id="members-tenant", options=slugs, value=chosen, clearable=False, className="tenant-picker")],
                 className="page-head"),
        html.Div(body(chosen), id="members-body"),
    ])


def show(slug: str | None) -> list:
    """Redraw the page for another tenant."""
    if not allowed(current_principal(), ROLES):
        raise PreventUpdate
    return body(slug)


def add_member(n_clicks: int, slug: str | None, username: str | None, full_name: str | None, email: str | None,
               password: str | None, role: str | None) -> tuple:
    """Create a user in the tenant with the chosen tenant role (`kiln.users.create_user`); the form is
    emptied once they are added."""
    if not n_clicks or not slug:
        raise PreventUpdate
    principal = current_principal()
    values = {"username": (username or "").strip(), "role": role, "tenants": [slug], "password": password or None,
              "full_name": (full_name or "").strip(), "email": blank_to_none(email)}
    _, error = attempt(lambda session: create_user(session, principal, parse_model(UserCreate, values)))
    if error:  # what was typed stays, to be corrected
        return refused(error), no_update, *([no_update] * len(CLEARED_ON_ADD))
    return done(f"{values['username']} added to {slug}."), _members(slug), *([""] * len(CLEARED_ON_ADD))


def toggle_member(clicks: list[int | None], slug: str | None) -> tuple:
    """Deactivate an active member (ends their sessions, revokes their tokens) or reactivate one."""
    trigger = callback_context.triggered[0] if callback_context.triggered else {}
    if not trigger.get("value") or not slug or not isinstance(callback_context.triggered_id, dict):
        raise PreventUpdate  # buttons drawn anew, not pressed
    principal = current_principal()
    user_id = callback_context.triggered_id["user"]

    def change(session: Session) -> str:
        user = get_user(session, principal, user_id)
        update_user(session, principal, user_id, UserUpdate(is_active=not user.is_active))
        return f"{user.username} {'reactivated' if user.is_active else 'deactivated'}."

    outcome, error = attempt(change)
    if error:
        return refused(error), no_update
    return done(outcome), _members(slug)


def _members(slug: str) -> html.Div:
    principal = current_principal()
    with db_session() as session:
        return member_table(tenant_members(session, principal, slug), principal)


def register(app: dash.Dash) -> None:
    """Register the page, its callbacks and the budget editor's."""
    dash.register_page(__name__, path=PATH, name="Members", title="Members and budgets — Kiln", layout=layout, order=6)
    app.callback(Output("members-body", "children"), Input("members-tenant", "value"), prevent_initial_call=True)(show)
    outputs = (Output("members-message", "children"), Output("members-table", "children"))
    app.callback(*outputs, *[Output(i, "value") for i in CLEARED_ON_ADD], Input("member-add", "n_clicks"),
                 State("members-tenant", "value"),
                 *[State(i, "value") for i in NEW_MEMBER_FIELDS], prevent_initial_call=True)(add_member)
    app.callback(*[Output(o.component_id, o.component_property, allow_duplicate=True) for o in outputs],
                 Input({"type": TOGGLE, "user": ALL}, "n_clicks"), State("members-tenant", "value"),
                 prevent_initial_call=True)(toggle_member)
    app.server.after_request(forbid_page_load(PATH, ROLES))
    budget_forms.register(app)
