"""The tenant picker of the usage and costs pages ("all the caller's tenants" or one) and the VDC
editor's tenant to grant, searched on the server as the user types.

A dropdown holding every tenant sent them all with the page (2,000 tenants were 124 KB of the
usage page's 155 KB); this one holds "all", the chosen tenant and the first `TENANT_CHOICES`
of the caller's tenants whose name or slug holds the typed text (case-insensitive), never a
tenant the caller may not see.
"""

from __future__ import annotations

import dash
from dash import Input, Output, State, dcc
from sqlmodel import col, or_, select

from dashboards.context import current_principal, db_session
from kiln.models import Tenant

ALL = "all"  # the value meaning every tenant the caller may see
TENANT_CHOICES = 50  # tenants listed at a time; typing searches all the caller's tenants


def matching_tenants(search: str | None, chosen: str | None = None) -> list[tuple[str, str]]:
    """(name, slug) of the first `TENANT_CHOICES` of the caller's tenants (by slug) whose name or
    slug holds `search` (case-insensitive; all when empty), and of `chosen` when it is one of the
    caller's and not among them."""
    principal = current_principal()
    statement = principal.scope(select(Tenant.name, Tenant.slug), Tenant.id)
    if search:
        statement = statement.where(or_(col(Tenant.name).icontains(search, autoescape=True),
                                        col(Tenant.slug).icontains(search, autoescape=True)))
    with db_session() as session:  # names and slugs, not Tenant objects
        found = list(session.exec(statement.order_by(Tenant.slug).limit(TENANT_CHOICES)).all())
        if chosen not in (None, ALL) and all(slug != chosen for _, slug in found):
            found += session.exec(principal.scope(select(Tenant.name, Tenant.slug).where(Tenant.slug == chosen),
                                                  Tenant.id)).all()
    return found


def tenant_options(search: str | None, chosen: str | None) -> list[dict[str, str]]:
    """The picker's choices: "all", then `matching_tenants` as "name (slug)"."""
    everyone = "All tenants" if current_principal().sees_all_tenants else "All my tenants"
    return [{"label": everyone, "value": ALL}] + [{"label": f"{name} ({slug})", "value": slug}
                                                  for name, slug in matching_tenants(search, chosen)]


def slug_options(search: str | None) -> list[dict[str, str]]:
    """`matching_tenants` as slugs, for a dropdown that adds a tenant (the VDC editor's grants)."""
    return [{"label": slug, "value": slug} for _, slug in matching_tenants(search)]


def tenant_picker(element_id: str) -> dcc.Dropdown:
    """The picker, set to all the caller's tenants (its search wired by `register_search`)."""
    return dcc.Dropdown(id=element_id, options=tenant_options(None, ALL), value=ALL, clearable=False,
                        placeholder="Type to find a tenant", className="tenant-picker")


def register_search(app: dash.Dash, element_id: str) -> None:
    """Answer the picker's typing with `tenant_options`."""
    app.callback(Output(element_id, "options"), Input(element_id, "search_value"), State(element_id, "value"),
                 prevent_initial_call=True)(tenant_options)


def register_slug_search(app: dash.Dash, element_id: str) -> None:
    """Answer a tenant-adding dropdown's typing with `slug_options`."""
    app.callback(Output(element_id, "options"), Input(element_id, "search_value"), prevent_initial_call=True)(slug_options)
