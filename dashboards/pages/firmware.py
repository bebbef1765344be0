"""Firmware compliance (infra admins): each node's firmware against its baseline, per component,
with a "behind only" filter and the same rows as a CSV download (fleet/firmware_compliance.py)."""

from __future__ import annotations

import dash
from dash import Input, Output, html

from dashboards.components import allowed, data_grid, forbidden, pressed, section, stat, toggle_button
from dashboards.context import current_principal, db_session
from dashboards.downloads import firmware_compliance_url
from fleet.firmware_compliance import AHEAD, BEHIND, DIFFERENT, MISSING, UNKNOWN, ComplianceRow, compliance
from kiln.roles import Role

PATH = "/firmware"
ROLES = (Role.INFRA_ADMIN,)
COLUMNS = (
    {"field": "node", "headerName": "Node"}, {"field": "baseline", "headerName": "Baseline"},
    {"field": "component", "headerName": "Component"}, {"field": "firmware_id", "headerName": "Redfish Id"},
    {"field": "expected", "headerName": "Expected"}, {"field": "actual", "headerName": "Actual"},
    {"field": "status", "headerName": "Status"},
    {"field": "read_at", "headerName": "Read at", "cellDataType": "text", "minWidth": 200},  # text: "never" is no date
)
EMPTY = {
    False: "No baseline applies to any node yet: import one with `kiln firmware baseline import FILE` "
           "(CSV resource_class,component,version).",
    True: "No node is behind its firmware baseline.",
}


def compliance_grid(rows: list[ComplianceRow], behind_only: bool) -> html.Div:
    """The compliance rows as a sortable, filterable grid."""
    return data_grid("firmware-table", COLUMNS, [
        {**row.model_dump(), "firmware_id": row.firmware_id or "—", "actual": row.actual or "—", "read_at": read_time(row.read_at)}
        for row in rows], empty=EMPTY[behind_only])


def read_time(read_at: str | None) -> str:
    """`2026-11-03T08:15:00Z` as `2026-11-03 08:15 UTC`; `never` when the firmware was never read."""
    return f"{read_at.replace('T', ' ')[:16]} UTC" if read_at else "never"


def filtered(clicks: int | None) -> tuple[html.Div, str, str]:
    """The grid, the download link and the toggle's `aria-pressed` for the "behind only" filter."""
    behind_only = pressed(clicks)
    principal = current_principal()
    with db_session() as session:
        rows = compliance(session, principal, statuses=[BEHIND] if behind_only else []) if allowed(principal, ROLES) else []
    return (compliance_grid(rows, behind_only), firmware_compliance_url([BEHIND] if behind_only else []),
            "true" if behind_only else "false")


def layout(**_: str) -> html.Div:
    """The page, filled for the signed-in infra admin (a 403 panel for anyone else)."""
    principal = current_principal()
    if not allowed(principal, ROLES):
        return forbidden(principal, "The firmware compliance page")
    with db_session() as session:
        rows = compliance(session, principal)
    count = {status: sum(1 for r in rows if r.status == status) for status in (BEHIND, AHEAD, DIFFERENT, MISSING, UNKNOWN)}
    return html.Div([
        html.Div(html.H1("Firmware compliance"), className="page-head"),
        html.Div([
            stat("nodes checked", len({r.node for r in rows}), "stat-firmware-nodes"),
            stat("nodes behind", len({r.node for r in rows if r.status == BEHIND}), "stat-firmware-behind",
                 "bad" if count[BEHIND] else ""),
            stat("components behind", count[BEHIND], "stat-components-behind", "bad" if count[BEHIND] else ""),
            stat("different / missing / unknown", f"{count[DIFFERENT]} / {count[MISSING]} / {count[UNKNOWN]}",
                 "stat-firmware-other"),
        ], className="stats"),
        section("Components against their baseline",
                html.Div([
                    toggle_button("firmware-behind-only", "behind only"),
                    html.A("Download CSV", id="firmware-download", href=firmware_compliance_url([]),
                           className="button secondary", download="kiln-firmware-compliance.csv"),
                ], className="filters"),
                html.P("Versions are compared number by number when both are dotted numbers (ahead / behind), "
                       "else as text (different). Missing: the node's inventory has no such component; "
                       "unknown: its firmware was never read over Redfish.", className="hint"),
                html.Div(compliance_grid(rows, False), id="firmware-grid"), element_id="firmware"),
    ])


def register(app: dash.Dash) -> None:
    """Register the page and its filter callback on the console app."""
    dash.register_page(__name__, path=PATH, name="Firmware", title="Firmware — Kiln", layout=layout, order=2)
    app.callback(Output("firmware-grid", "children"), Output("firmware-download", "href"),
                 Output("firmware-behind-only", "aria-pressed"),
                 Input("firmware-behind-only", "n_clicks"), prevent_initial_call=True)(filtered)
