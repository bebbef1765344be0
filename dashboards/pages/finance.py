"""Finance (finance and infra admins): every tenant's charges in a period, idle cost, reconciliation
with OpenCost, closing a period (with a confirmation; CSRF-checked like every callback), and the
FOCUS (CSV, Parquet) and chargeback exports."""

from __future__ import annotations

from decimal import Decimal

import dash
from dash import Input, Output, State, dcc, html, no_update

from dashboards import downloads, server_grid
from dashboards.components import allowed, empty_state, forbid_page_load, forbidden, prefilled, section, stat
from dashboards.context import console_context, current_principal, db_session
from dashboards.cost_data import bill_periods, spend_by_sku
from dashboards.figures import Figure, bars, empty_figure, grouped_bars
from dashboards.finance_data import (
    FINANCE_ROLES,
    closable,
    close_period,
    idle_by_sku,
    reconciliation,
    status_counts,
    tenant_charges,
)
from dashboards.numbers import money
from dashboards.pages.bill import bill_url
from dashboards.hints import for_role
from kiln.auth import Principal
from kiln.db import utcnow
from kiln.errors import KilnError
from metering.periods import next_period, period_of
from metering.sku_labels import label

PATH = "/finance"
TOP_TENANTS = 25
TOP_NAMESPACES = 20
TENANTS, RECONCILIATION = "finance-tenant-table", "finance-reconciliation-rows"  # each grid is ID-grid
NUMERIC = {TENANTS: ("list", "billed", "bill_id"),
           RECONCILIATION: ("kiln", "opencost", "difference", "kiln_gpu_hours", "opencost_gpu_hours")}

OUTPUTS = (
    Output("finance-stats", "children"), Output("finance-by-tenant", "figure"), Output("finance-by-sku", "figure"),
    Output("finance-idle", "figure"), Output("finance-reconciliation", "figure"), Output("finance-close-hint", "children"),
    Output("finance-close", "disabled"), Output("finance-exports", "children"), Output("finance-tenants", "children"),
    Output("finance-reconciliation-table", "children"), Output("finance-close-confirm", "message"),
)


def _periods() -> tuple[list[dict[str, str]], str]:
    principal = current_principal()
    with db_session() as session:
        periods = bill_periods(session, principal)
    current = period_of(utcnow())
    choices = sorted({current, *periods}, reverse=True)
    previous = next((p for p in choices if next_period(p) == current), None)
    default = previous if previous in periods else current  # the month to close is usually the last one
    return [{"label": f"{p} (running)" if p == current else p, "value": p} for p in choices], default


def layout(**_: str) -> html.Div:
    """The finance page (a 403 panel for tenant roles)."""
    principal = current_principal()
    if not allowed(principal, FINANCE_ROLES):
        return forbidden(principal, "The finance page", who="finance and infra admins")
    options, default = _periods()
    page = html.Div([
        html.Div([html.H1("Finance"),
                  dcc.Dropdown(id="finance-period", options=options, value=default, clearable=False, className="range-picker")],
                 className="page-head"),
        html.Div(id="finance-stats", className="stats"),
        html.Div([dcc.Graph(id="finance-by-tenant"), dcc.Graph(id="finance-by-sku")], className="grid-2"),
        html.Div([dcc.Graph(id="finance-idle"), dcc.Graph(id="finance-reconciliation")], className="grid-2"),
        section("Close the period", html.P(id="finance-close-hint", className="hint"),
                html.Button("Close period", id="finance-close", n_clicks=0, className="button"),
                dcc.ConfirmDialog(id="finance-close-confirm"),
                html.Div(id="finance-close-message", className="message", role="status"), element_id="close"),
        section("Exports", html.Div(id="finance-exports")),
        section("Charges by tenant", html.Div(id="finance-tenants")),
        section("Reconciliation with OpenCost", html.Div(id="finance-reconciliation-table")),
    ])
    return prefilled(page, OUTPUTS, update(default))


def opencost_notice(principal: Principal, connected: bool) -> str:
    """Why there is nothing to reconcile: OpenCost not connected, or no allocation this period."""
    if not connected:
        return for_role(principal, "OpenCost is not connected, so there is nothing to reconcile with.",
                        "Set KILN_OPENCOST_URL to the OpenCost API and run `kiln worker` to import its allocations.")
    return for_role(principal, "OpenCost reported no allocation in this period.",
                    "Check the worker's OpenCost import (kiln_collector_up{collector=\"opencost\"} on /metrics).")


def _reconciliation_figure(rows: list, currency: str, notice: str) -> Figure:
    compared = sorted((r for r in rows if r.opencost_cost is not None), key=lambda r: -abs(r.difference))[:TOP_NAMESPACES]
    if not compared:
        return empty_figure("Kiln vs OpenCost by namespace", notice)
    return grouped_bars("Kiln vs OpenCost by namespace (largest differences)", "namespace", f"cost ({currency})",
                        [r.namespace for r in compared],
                        {"Kiln": [r.kiln_cost for r in compared], "OpenCost": [r.opencost_cost for r in compared]})


def update(period: str | None) -> tuple:
    """Everything on the page for the chosen period."""
    principal = current_principal()
    if not allowed(principal, FINANCE_ROLES):
        return (no_update,) * 11
    period = period or period_of(utcnow())
    with db_session() as session:
        charges = tenant_charges(session, principal, period)
        by_sku = spend_by_sku(session, principal, period)
        idle = idle_by_sku(session, principal, period)
        recon, currency = reconciliation(session, principal, period)
        can_close, hint = closable(session, period)
    currency = charges[0].currency if charges else currency
    counts = status_counts(charges)
    billed, idle_total = sum(c.total for c in charges), sum(idle.values())
    stats = [stat("billed to tenants", money(billed, currency), "finance-billed"),
             stat("at list prices", money(sum(c.list_total for c in charges), currency), "finance-list"),
             stat("idle capacity (list)", money(idle_total, currency), "finance-idle-total"),
             stat("bills draft / finalised", f"{counts['draft']} / {counts['finalised']}", "finance-status")]
    why = for_role(principal, f"No bills in {period} yet: bills are drafted hourly as usage is rated.",
                   f"Run `kiln bills run --period {period}` to draft them now.")
    notice = opencost_notice(principal, console_context().settings.opencost_url is not None)
    top = charges[:TOP_TENANTS]
    by_tenant = bars(f"Charges by tenant, {period}" + (f" (top {TOP_TENANTS})" if len(charges) > TOP_TENANTS else ""),
                     "tenant", f"billed ({currency})", [c.tenant for c in top], [c.total for c in top],
                     empty_reason=why, horizontal=True)
    sku_figure = bars(f"Charges by SKU, {period}", "SKU", f"billed ({currency})", [label(k) for k in by_sku],
                      list(by_sku.values()),
                      empty_reason=why, horizontal=True)
    idle_figure = bars(f"Idle capacity by SKU, {period}", "SKU", f"list cost ({currency})", [label(k) for k in idle],
                       list(idle.values()),
                       empty_reason="No idle capacity priced in this period (every node was leased, or bills were not run).",
                       horizontal=True)
    exports = html.P([
        html.A("FOCUS CSV", href=downloads.export_url("focus", period), id="export-focus-csv", className="button", download=""),
        " ", html.A("FOCUS Parquet", href=downloads.export_url("focus", period, "parquet"), id="export-focus-parquet",
                    className="button secondary", download=""),
        " ", html.A("Chargeback CSV", href=downloads.export_url("chargeback", period), id="export-chargeback",
                    className="button secondary", download=""),
    ]) if charges else empty_state(why)
    # the two long lists (a row per tenant and per namespace) come a block at a time (dashboards.server_grid)
    server_grid.keep(_list_key(TENANTS, principal, period), lambda: tenant_cells(charges))
    server_grid.keep(_list_key(RECONCILIATION, principal, period), lambda: reconciliation_cells(recon))
    tenants = server_grid.paged_grid(TENANTS, tenant_columns(currency), len(charges), empty=why)
    recon_table = server_grid.paged_grid(RECONCILIATION, reconciliation_columns(currency), len(recon),
                                         empty=f"No Kubernetes usage in this period. {notice}")
    return (stats, by_tenant, sku_figure, idle_figure, _reconciliation_figure(recon, currency, notice), hint, not can_close,
            exports, tenants, recon_table, f"Finalise every draft bill of {period}? Finalised bills never change.")


def tenant_columns(currency: str) -> tuple[dict, ...]:
    """The charges-by-tenant grid's columns, largest bill first."""
    return ({"field": "tenant", "headerName": "Tenant"}, {"field": "name", "headerName": "Name"},
            {"field": "cost_centre", "headerName": "Cost centre"}, {"field": "status", "headerName": "Status", "maxWidth": 130},
            {"field": "list", "headerName": f"List ({currency})", "numeric": True},
            {"field": "billed", "headerName": f"Billed ({currency})", "numeric": True, "sort": "desc"},
            {"field": "bill", "headerName": "Bill", "cellRenderer": "markdown", "maxWidth": 110})


def tenant_cells(charges: list) -> list[dict]:
    """A row per tenant's bill (`finance_data.TenantCharge`s), with a link to the bill."""
    return [{"tenant": c.tenant, "name": c.tenant_name, "cost_centre": c.cost_centre, "status": c.status,
             "list": str(c.list_total), "billed": str(c.total), "bill": f"[#{c.bill_id}]({bill_url(c.bill_id)})",
             "bill_id": c.bill_id} for c in charges]


def reconciliation_columns(currency: str) -> tuple[dict, ...]:
    """The reconciliation grid's columns: Kiln's and OpenCost's cost and GPU-hours per namespace."""
    return ({"field": "namespace", "headerName": "Namespace"}, {"field": "tenant", "headerName": "Tenant"},
            {"field": "kiln", "headerName": f"Kiln ({currency})", "numeric": True},
            {"field": "opencost", "headerName": "OpenCost", "numeric": True},
            {"field": "difference", "headerName": "Difference", "numeric": True},
            {"field": "kiln_gpu_hours", "headerName": "GPU-hours Kiln", "numeric": True},
            {"field": "opencost_gpu_hours", "headerName": "GPU-hours OpenCost", "numeric": True})


def reconciliation_cells(recon: list) -> list[dict]:
    """A row per namespace compared (`finance_data.reconciliation`)."""
    return [{"namespace": r.namespace, "tenant": r.tenant or "—", "kiln": str(r.kiln_cost), "opencost": _plain(r.opencost_cost),
             "difference": _plain(r.difference), "kiln_gpu_hours": _plain(r.kiln_gpu_hours, quantity=True),
             "opencost_gpu_hours": _plain(r.opencost_gpu_hours, quantity=True)} for r in recon]


def _list_key(table: str, principal: Principal, period: str) -> tuple:
    """Where a grid's rows are kept: per table, caller and period."""
    return table, server_grid.caller_key(principal), period


def rows_block(table: str, request: dict | None, period: str | None) -> dict:
    """One block of `table`'s rows that `request` (AG Grid's getRowsRequest) asks for, in `period`,
    and how many rows match (nothing for tenant roles)."""
    principal = current_principal()
    if not request or not period or not allowed(principal, FINANCE_ROLES):
        return no_update

    def build() -> list[dict]:
        with db_session() as session:
            if table == TENANTS:
                return tenant_cells(tenant_charges(session, principal, period))
            return reconciliation_cells(reconciliation(session, principal, period)[0])

    rows = server_grid.kept(_list_key(table, principal, period), build)
    return server_grid.block(rows, request, NUMERIC[table], {"bill": "bill_id"})


def _plain(value: Decimal | None, quantity: bool = False) -> str:
    """A decimal as the grid's numeric columns take it (no separators); quantities without trailing zeros."""
    if value is None:
        return ""
    return format(value.normalize() + 0, "f") if quantity else str(value)


def ask_to_close(n_clicks: int) -> bool:
    """Show the confirmation dialog when the close button is pressed."""
    return bool(n_clicks)


def confirm_close(submitted: int | None, period: str | None) -> tuple:
    """Finalise the period once confirmed; say what happened (or why not)."""
    if not submitted or not period:
        return no_update, no_update
    principal = current_principal()
    policy = console_context().settings.idle_cost_policy
    try:
        with db_session() as session:
            done = close_period(session, principal, period, policy)
            message = f"{period} closed: {len(done)} bill(s) finalised."
    except KilnError as exc:
        return exc.detail, no_update
    return message, period


def register(app: dash.Dash) -> None:
    """Register the page and its callbacks on the console app, and its 403 status for tenant roles."""
    dash.register_page(__name__, path=PATH, name="Finance", title="Finance — Kiln", layout=layout, order=5)
    app.callback(*OUTPUTS, Input("finance-period", "value"), prevent_initial_call=True)(update)
    app.callback(Output("finance-close-confirm", "displayed"), Input("finance-close", "n_clicks"),
                 prevent_initial_call=True)(ask_to_close)
    app.callback(Output("finance-close-message", "children"), Output("finance-period", "value"),
                 Input("finance-close-confirm", "submit_n_clicks"), State("finance-period", "value"),
                 prevent_initial_call=True)(confirm_close)
    for table in (TENANTS, RECONCILIATION):
        def answer(request: dict | None, period: str | None, table: str = table) -> dict:
            return rows_block(table, request, period)
        answer.__doc__ = f"One block of the {table} grid's rows."
        app.callback(Output(f"{table}-grid", "getRowsResponse"), Input(f"{table}-grid", "getRowsRequest"),
                     State("finance-period", "value"), prevent_initial_call=True)(answer)
    app.server.after_request(forbid_page_load(PATH, FINANCE_ROLES))

