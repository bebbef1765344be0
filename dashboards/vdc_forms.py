"""The VDC editor on the VDC page (infra admins): create a VDC, change it, delete it.

A VDC is picked ("New VDC" or an existing one) and its fields are filled from what the VDC API
returns (`fleet.vdcs.to_public`); saving builds `VdcCreate` / `VdcUpdate` from the fields and
calls `fleet.vdcs.create_vdc` / `update_vdc`, deleting calls `delete_vdc` — the functions and
validation behind `POST/PATCH/DELETE /api/v1/vdcs`. A refusal (bad input, a name taken, leases
in force, a caller who is not an infra admin) is shown next to the form as its problem detail
and nothing is stored. Grants: a row of quotas per tenant the VDC is granted to; "Grant to" adds a
tenant's row (rows only for the grants, not for every tenant: with thousands of tenants a row each
made the page take seconds to draw), and a row set to "not granted" is dropped on save.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from decimal import Decimal
from typing import Any

import dash
from dash import ALL, Input, Output, Patch, State, dcc, html, no_update
from dash.exceptions import PreventUpdate
from sqlmodel import Session

from dashboards.components import allowed, empty_state
from dashboards.context import current_principal, db_session
from dashboards.forms import (
    NEW, attempt, blank_to_none, count_input, done, field, message, refused, save_and_delete, split_list, text_input,
)
from dashboards.tenant_picker import register_slug_search, slug_options
from fleet import vdcs as vdc_service
from fleet.tenancy_schemas import VdcCreate, VdcPublic, VdcUpdate
from kiln.roles import Role
from kiln.validation import parse_model
from metering.money import plain

ROLES = (Role.INFRA_ADMIN,)
SELECTOR_FIELDS = (  # (selector kind, label, placeholder): comma-separated values, each one selector
    ("rack", "Racks", "r1, r2"), ("tag", "Tags", "train"), ("resource_class", "Resource classes", "gpu.h100"),
    ("gpu_model", "GPU models", "NVIDIA H100 80GB HBM3"),
)
QUOTAS = (("max_nodes", "Max nodes"), ("max_gpus", "Max GPUs"), ("max_gpu_hours", "Max GPU-hours / month"),
          ("budget", "Budget / month"))
GRANT_ON, GRANTED, NOT_GRANTED = "vdc-grant-on", "granted", "not granted"
GRANT_CHOICES = [GRANTED, NOT_GRANTED]


def _quota_input(element_id: Any, quota: str, **props: Any) -> dcc.Input:
    if quota == "budget":  # money: an exact decimal string, never a float
        return dcc.Input(id=element_id, type="text", inputMode="decimal", placeholder="no budget", **props)
    return count_input(element_id, **props)


def dom_id(component_id: dict[str, str]) -> str:
    """The element id Dash gives a pattern-matching component (for a `<label for>`)."""
    return json.dumps(component_id, sort_keys=True, separators=(",", ":"))


def grant_row(slug: str, grant: Any = None) -> html.Tr:
    """The tenant's row: granted or not, and its quotas inside the VDC (those of `grant`, a stored
    grant, when given; a new row is granted with no quotas yet)."""
    choice = {"type": GRANT_ON, "tenant": slug}
    cells = [html.Td(slug), html.Td([
        html.Label(f"Grant to {slug}", htmlFor=dom_id(choice), className="visually-hidden"),
        dcc.Dropdown(id=choice, options=GRANT_CHOICES, value=GRANTED, clearable=False, searchable=False),
    ], className="grant-on")]
    for quota, label in QUOTAS:  # each box labelled by its column and tenant for screen readers
        box = _quota_input({"type": f"vdc-grant-{quota}", "tenant": slug}, quota,
                           value=_shown(getattr(grant, quota)) if grant is not None else None)
        cells.append(html.Td(html.Label([html.Span(f"{label} for {slug}", className="visually-hidden"), box])))
    return html.Tr(cells, id={"type": "vdc-grant-row", "tenant": slug})


def editor(vdcs: list[VdcPublic]) -> html.Section:
    """The form: VDC picker, name, description, selectors, explicit nodes, quotas, grants, save/delete."""
    tenants = slug_options(None)  # the first few; typing searches the rest on the server (2,000 tenants: 96 KiB)
    selectors = [field(label, text_input(f"vdc-{kind}", placeholder), f"vdc-{kind}", "comma-separated")
                 for kind, label, placeholder in SELECTOR_FIELDS]
    quotas = [field(label, _quota_input(f"vdc-{quota}", quota), f"vdc-{quota}") for quota, label in QUOTAS]
    grants = html.Div([
        field("Grant to", dcc.Dropdown(id="vdc-grant-add", options=tenants, placeholder="add a tenant…"), "vdc-grant-add",
              "its row of quotas appears below"),
        *([] if tenants else [empty_state("No tenants yet: create one with `kiln tenants create`.")]),
        html.Table([
            html.Thead(html.Tr([html.Th("Tenant"), html.Th("Grant"), *[html.Th(label) for _, label in QUOTAS]])),
            html.Tbody([], id="vdc-grant-rows"),
        ], className="table grants"),
    ])
    return html.Section([
        html.H2("Create or change a VDC"),
        html.Div([
            field("VDC", dcc.Dropdown(id="vdc-pick", options=pick_options(vdcs), value=NEW, clearable=False), "vdc-pick"),
            field("Name", text_input("vdc-name", "e.g. train-h100"), "vdc-name", "lower-case letters, digits, hyphens"),
            field("Description", text_input("vdc-description", "what the slice is for"), "vdc-description"),
        ], className="form-row"),
        html.H3("Members: explicit nodes and selectors"),
        html.Div([field("Nodes", text_input("vdc-nodes", "gpu-a01, gpu-a02"), "vdc-nodes", "comma-separated names"),
                  *selectors], className="form-row"),
        html.H3("Quotas of the whole VDC"),
        html.Div(quotas, className="form-row"),
        html.H3("Tenants and their quotas"),
        grants,
        save_and_delete("vdc", "VDC", "Delete this VDC? Its past leases keep their history."),
        message("vdc-form-message"),
    ], className="card", id="vdc-editor")


def pick_options(vdcs: list[VdcPublic]) -> list[dict[str, str]]:
    """The picker's choices: a new VDC, then every VDC by name."""
    return [{"label": "New VDC", "value": NEW}, *({"label": v.name, "value": v.name} for v in vdcs)]


FORM_FIELDS = ("vdc-name", "vdc-description", *(f"vdc-{kind}" for kind, *_ in SELECTOR_FIELDS), "vdc-nodes",
               *(f"vdc-{quota}" for quota, _ in QUOTAS))
GRANT_IDS = (GRANT_ON, *(f"vdc-grant-{quota}" for quota, _ in QUOTAS))


def load(pick: str | None) -> tuple:
    """Fill the form with the picked VDC (empty for a new one), a row per grant; the name is
    permanent once created."""
    principal = current_principal()
    if not allowed(principal, ROLES):
        raise PreventUpdate
    vdc = None
    if pick and pick != NEW:
        with db_session() as session:
            vdc = vdc_service.to_public(session, principal, [vdc_service.get_vdc_by_name(session, principal, pick)])[0]
    if vdc is None:
        fields = ["", "", *([""] * len(SELECTOR_FIELDS)), "", *([None] * len(QUOTAS))]
        rows: list[html.Tr] = []
    else:
        chosen = {kind: ", ".join(s.value for s in vdc.selectors if s.kind == kind) for kind, *_ in SELECTOR_FIELDS}
        fields = [vdc.name, vdc.description, *chosen.values(), ", ".join(vdc.nodes),
                  *(_shown(getattr(vdc, q)) for q, _ in QUOTAS)]
        rows = [grant_row(g.tenant, g) for g in vdc.tenants]
    return (*fields, vdc is not None, vdc is None, rows)


def add_grant(slug: str | None, rows: list[dict[str, str]] | None) -> tuple:
    """Add the chosen tenant's row (granted, no quotas yet) unless it has one (`rows`: the ids of
    the rows shown); clear the picker."""
    principal = current_principal()
    if not slug or not allowed(principal, ROLES):
        raise PreventUpdate
    if any(row["tenant"] == slug for row in rows or []):
        return no_update, None
    patched = Patch()
    patched.append(grant_row(slug))
    return patched, None


def enable_grants(choices: list[str]) -> tuple:
    """Quota boxes usable for the tenants granted, greyed out for the others."""
    return tuple([choice != GRANTED for choice in choices] for _ in QUOTAS)


def _shown(value: Any) -> Any:
    """A stored limit as its box shows it: counts as numbers, a budget as its plain decimal."""
    return str(plain(value)) if isinstance(value, Decimal) else value


def _request(form: dict[str, Any], columns: list[list[Any]], tenants: list[str]) -> dict[str, Any]:
    """The body of `POST/PATCH /api/v1/vdcs` (less the name) from the form's values."""
    choices, *quotas = columns
    grants = [{"tenant": slug, **{quota: blank_to_none(column[i]) for (quota, _), column in zip(QUOTAS, quotas, strict=True)}}
              for i, slug in enumerate(tenants) if choices[i] == GRANTED]
    selectors = [{"kind": kind, "value": value} for kind, *_ in SELECTOR_FIELDS for value in split_list(form[f"vdc-{kind}"])]
    return {"description": (form["vdc-description"] or "").strip(), "nodes": split_list(form["vdc-nodes"]),
            "selectors": selectors, "tenants": grants, **{quota: blank_to_none(form[f"vdc-{quota}"]) for quota, _ in QUOTAS}}


def save(overview: Callable[[], Any], n_clicks: int, pick: str | None, *values: Any) -> tuple:
    """Create the VDC (picker on "New VDC") or change the picked one; say what happened or why not
    (`values`: the FORM_FIELDS, the GRANT_IDS columns, the grant rows' ids; `overview()`: the page's
    tables, redrawn after a change)."""
    if not n_clicks:
        raise PreventUpdate
    form = dict(zip(FORM_FIELDS, values[:len(FORM_FIELDS)], strict=True))
    columns, ids = list(values[len(FORM_FIELDS):-1]), values[-1]
    body = _request(form, columns, [i["tenant"] for i in ids])
    principal = current_principal()

    def change(session: Session) -> str:
        if not pick or pick == NEW:
            data = parse_model(VdcCreate, {"name": (form["vdc-name"] or "").strip(), **body})
            vdc = vdc_service.create_vdc(session, principal, data)
        else:
            vdc_id = vdc_service.get_vdc_by_name(session, principal, pick).id
            vdc = vdc_service.update_vdc(session, principal, vdc_id, parse_model(VdcUpdate, body, keep_none=True))
        return vdc.name

    saved, error = attempt(change)
    if error:
        return refused(error), no_update, no_update, no_update
    verb = "created" if not pick or pick == NEW else "saved"
    return done(f"VDC {saved} {verb}."), *_refreshed(overview, saved)


def delete(overview: Callable[[], Any], submitted: int | None, pick: str | None) -> tuple:
    """Delete the picked VDC once confirmed (refused while it has leases in force)."""
    if not submitted or not pick or pick == NEW:
        raise PreventUpdate
    principal = current_principal()
    _, error = attempt(lambda session: vdc_service.delete_vdc(
        session, principal, vdc_service.get_vdc_by_name(session, principal, pick).id))
    if error:
        return refused(error), no_update, no_update, no_update
    return done(f"VDC {pick} deleted."), *_refreshed(overview, NEW)


def _refreshed(overview: Callable[[], Any], picked: str) -> tuple:
    principal = current_principal()
    with db_session() as session:
        vdcs = vdc_service.to_public(session, principal, vdc_service.list_vdcs(session, principal))
    return overview(), pick_options(vdcs), picked


def register(app: dash.Dash, overview: Callable[[], Any]) -> None:
    """Register the editor's callbacks; `overview()` redraws the page's tables after a change."""
    app.callback(
        *[Output(i, "value") for i in FORM_FIELDS], Output("vdc-name", "disabled"), Output("vdc-delete", "disabled"),
        Output("vdc-grant-rows", "children"), Input("vdc-pick", "value"), prevent_initial_call=True,
    )(load)
    register_slug_search(app, "vdc-grant-add")
    app.callback(Output("vdc-grant-rows", "children", allow_duplicate=True), Output("vdc-grant-add", "value"),
                 Input("vdc-grant-add", "value"), State({"type": "vdc-grant-row", "tenant": ALL}, "id"),
                 prevent_initial_call=True)(add_grant)
    app.callback(*[Output({"type": kind, "tenant": ALL}, "disabled") for kind in GRANT_IDS[1:]],
                 Input({"type": GRANT_ON, "tenant": ALL}, "value"), prevent_initial_call=True)(enable_grants)
    changed = (Output("vdc-form-message", "children"), Output("vdc-overview", "children"),
               Output("vdc-pick", "options"), Output("vdc-pick", "value"))
    app.callback(
        *changed, Input("vdc-save", "n_clicks"), State("vdc-pick", "value"), *[State(i, "value") for i in FORM_FIELDS],
        *[State({"type": kind, "tenant": ALL}, "value") for kind in GRANT_IDS],
        State({"type": GRANT_IDS[0], "tenant": ALL}, "id"), prevent_initial_call=True,
    )(partial(save, overview))
    app.callback(
        *[Output(o.component_id, o.component_property, allow_duplicate=True) for o in changed],
        Input("vdc-delete-confirm", "submit_n_clicks"), State("vdc-pick", "value"), prevent_initial_call=True,
    )(partial(delete, overview))
