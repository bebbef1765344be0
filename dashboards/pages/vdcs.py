"""VDCs and quotas (infra admins): the slices of the fleet, who they are granted to, quota use, and
the editor that creates, changes and deletes VDCs (`dashboards.vdc_forms`)."""

from __future__ import annotations

from decimal import Decimal

import dash
from dash import Input, Output, dcc, html, no_update

from dashboards import server_grid, vdc_forms
from dashboards.components import allowed, data_grid, forbidden, section
from dashboards.context import current_principal, db_session
from dashboards.figures import Figure, empty_figure, share_bars
from dashboards.tenancy_data import quota_rows, vdc_summaries, visible_vdcs
from fleet.tenancy_schemas import VdcPublic
from kiln.roles import Role

PATH = "/vdcs"
QUOTA_WARNING_PERCENT = 80
# a grid, not a table: one row per VDC (200 at 10,000 nodes), and a table's cells were ~1,600 components to draw
VDC_COLUMNS = (
    {"field": "vdc", "headerName": "VDC"}, {"field": "members", "headerName": "Members", "type": "numericColumn"},
    {"field": "selectors", "headerName": "Selectors"}, {"field": "tenants", "headerName": "Tenants"},
    {"field": "nodes", "headerName": "Nodes leased"}, {"field": "gpus", "headerName": "GPUs leased"},
    {"field": "gpu_hours", "headerName": "GPU-hours this month"},
)
GRANTS = "grant-table"
GRANT_COLUMNS = (  # paged on the server (`dashboards.server_grid`): one row per (VDC, tenant) grant, 2,000 at fleet scale
    {"field": "vdc", "headerName": "VDC"}, {"field": "tenant", "headerName": "Tenant"},
    {"field": "nodes", "headerName": "Nodes leased"}, {"field": "gpus", "headerName": "GPUs leased"},
    {"field": "gpu_hours", "headerName": "GPU-hours this month"},
)
ROLES = (Role.INFRA_ADMIN,)


def _limit(used: int | Decimal, limit: int | None) -> str:
    shown = f"{used:,.1f}" if isinstance(used, Decimal) else f"{used:,}"
    return f"{shown} of {limit:,}" if limit is not None else f"{shown} (no limit)"


def quota_figure(rows: list[dict]) -> Figure:
    """Per-grant use as a share of each limit (GPUs, nodes, GPU-hours), bars with thresholds."""
    limited = [(r, kind) for r in rows for kind in ("gpus", "nodes", "gpu_hours") if r[f"max_{kind}"]]
    if not limited:
        return empty_figure("Quota use", "No grant has a quota set: `kiln vdcs grant VDC TENANT --max-gpus N`.")
    labels = [f"{r['vdc']} / {r['tenant']} · {kind.replace('_', '-')}" for r, kind in limited]
    shares = [round(float(r[kind]) / float(r[f"max_{kind}"]) * 100, 1) for r, kind in limited]
    return share_bars("Quota use (share of limit)", "used (% of limit)", labels, shares, [f"{s}%" for s in shares],
                      (QUOTA_WARNING_PERCENT, 100), warn_at=[QUOTA_WARNING_PERCENT] * len(shares))


def overview(loaded: list[VdcPublic] | None = None) -> html.Div:
    """The slices of the fleet, quota use and grants, as the caller may see them (`loaded`: the
    caller's VDCs when already read); the editor redraws it after a change. The grants grid asks
    for its rows a block at a time (`grant_block`): sent whole, 2,000 grants were most of the
    page's 300 KB."""
    principal = current_principal()
    with db_session() as session:
        loaded = loaded if loaded is not None else visible_vdcs(session, principal)
        vdcs = vdc_summaries(session, principal, loaded)
        grants = quota_rows(session, principal, loaded)
    server_grid.keep(_grants_key(), lambda: grant_cells(grants))
    return html.Div([
        section("Slices of the fleet", data_grid("vdc-table", VDC_COLUMNS, [
            {"vdc": v["name"], "members": len(v["member_nodes"]), "selectors": ", ".join(v["selectors"]) or "—",
             "tenants": ", ".join(v["tenants"]) or "—", "nodes": _limit(v["nodes"], v["max_nodes"]),
             "gpus": _limit(v["gpus"], v["max_gpus"]), "gpu_hours": _limit(v["gpu_hours"], v["max_gpu_hours"])}
            for v in vdcs], empty="No VDCs yet: create one below (or `kiln vdcs create NAME --selector rack=r1`).")),
        dcc.Graph(id="vdc-quota-use", figure=quota_figure(grants)),
        section("Grants", server_grid.paged_grid(GRANTS, GRANT_COLUMNS, len(grants),
                                                 empty="No VDC is granted to a tenant yet: grant one in the form below.")),
    ], id="vdc-overview")


def grant_cells(grants: list[dict]) -> list[dict[str, str]]:
    """The grants grid's rows: VDC, tenant, and each use against its limit."""
    return [{"vdc": g["vdc"], "tenant": g["tenant"], "nodes": _limit(g["nodes"], g["max_nodes"]),
             "gpus": _limit(g["gpus"], g["max_gpus"]), "gpu_hours": _limit(g["gpu_hours"], g["max_gpu_hours"])}
            for g in grants]


def _grants_key() -> tuple:
    return GRANTS, server_grid.caller_key(current_principal())


def grant_block(request: dict | None) -> dict:
    """One block of the grants grid that `request` (AG Grid's getRowsRequest) asks for, and how many
    rows match; nothing for a caller who may not see the page."""
    if not request:
        return no_update
    principal = current_principal()
    if not allowed(principal, ROLES):
        return no_update

    def build() -> list[dict[str, str]]:
        with db_session() as session:
            return grant_cells(quota_rows(session, principal, visible_vdcs(session, principal)))
    return server_grid.block(server_grid.kept(_grants_key(), build), request)


def layout(**_: str) -> html.Div:
    """The VDC page for infra admins: the overview and the VDC editor (a 403 panel for anyone else)."""
    principal = current_principal()
    if not allowed(principal, ROLES):
        return forbidden(principal, "The VDC and quota page")
    with db_session() as session:
        loaded = visible_vdcs(session, principal)
    form = vdc_forms.editor(loaded)
    return html.Div([html.Div(html.H1("VDCs and quotas"), className="page-head"), overview(loaded), form])


def register(app: dash.Dash) -> None:
    """Register the page and its editor's callbacks on the console app."""
    dash.register_page(__name__, path=PATH, name="VDCs", title="VDCs — Kiln", layout=layout, order=2)
    vdc_forms.register(app, overview)
    app.callback(Output(f"{GRANTS}-grid", "getRowsResponse"), Input(f"{GRANTS}-grid", "getRowsRequest"),
                 prevent_initial_call=True)(grant_block)
