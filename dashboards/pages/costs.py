"""Costs and bills: spend to date and forecast, by SKU and by day, budgets with their thresholds
and forecasts, and the bill list; each bill has a page of its own (`dashboards.pages.bill`).
Tenants see their own tenants only; finance and infra admins all of them."""

from __future__ import annotations


import dash
from dash import Input, Output, dcc, html
from sqlmodel import Session, select

from dashboards import cost_tables, server_grid
from dashboards.components import prefilled, section, stat
from dashboards.context import console_context, current_principal, db_session
from dashboards.cost_data import (
    alert_count,
    bill_periods,
    budget_rows,
    emissions_summary,
    spend_by_day,
    spend_by_sku,
    spend_summary,
)
from dashboards.figures import SHARE_BARS_SHOWN, Figure, bars, empty_figure, share_bars, stacked_bars
from dashboards.hints import for_role
from dashboards.numbers import money, percent, quantity
from dashboards.cost_tables import (
    ALERT_COLUMNS,
    ALERTS,
    BILLS,
    BUDGET_COLUMNS,
    BUDGETS,
    amount,
    bill_cells,
    bill_columns,
    budget_cells,
    list_key,
)
from dashboards.pages.bill import bill_url
from dashboards.tenant_picker import ALL, register_search, tenant_picker
from kiln.auth import Principal
from kiln.db import utcnow
from kiln.models import Tenant
from metering.budgets import CarbonContext
from metering.periods import period_of
from metering.sku_labels import label

PATH = "/costs"
KWH, KG = "kWh", "kg CO2e"
OUTPUTS = (
    Output("costs-stats", "children"), Output("costs-by-sku", "figure"), Output("costs-by-day", "figure"),
    Output("costs-budgets", "figure"), Output("costs-budget-table", "children"), Output("costs-alerts", "children"),
    Output("costs-bills", "children"),
    Output("costs-emissions-stats", "children"), Output("costs-emissions-by-day", "figure"),
)


def _period_options(periods: list[str]) -> list[dict[str, str]]:
    current = period_of(utcnow())
    return [{"label": f"{p} (running)" if p == current else p, "value": p} for p in sorted({current, *periods}, reverse=True)]


def layout(bill: str | None = None, **_: str) -> html.Div:
    """Filters (tenant, period) and the overview (all the caller's tenants, the running period); a
    link to the bill's own page for old `?bill=ID` links."""
    principal = current_principal()
    with db_session() as session:
        periods = bill_periods(session, principal)
    moved = html.P(["Bills have a page of their own: ", dcc.Link(f"bill {bill}", href=bill_url(bill), id="bill-moved")],
                   className="hint") if bill else html.Div()
    period = period_of(utcnow())
    page = html.Div([
        moved,
        html.Div([
            html.H1("Costs and bills"),
            tenant_picker("costs-tenant"),
            dcc.Dropdown(id="costs-period", options=_period_options(periods), value=period, clearable=False,
                         className="range-picker"),
        ], className="page-head"),
        html.Div(id="costs-stats", className="stats"),
        html.Div([dcc.Graph(id="costs-by-sku"), dcc.Graph(id="costs-by-day")], className="grid-2"),
        dcc.Graph(id="costs-budgets"),
        html.Div(id="costs-budget-table"),
        section("Energy and emissions", html.Div(id="costs-emissions-stats", className="stats"),
                dcc.Graph(id="costs-emissions-by-day"), element_id="emissions"),
        section("Budget alerts", html.Div(id="costs-alerts")),
        section("Bills", html.Div(id="costs-bills"), element_id="bills"),
    ])
    return prefilled(page, OUTPUTS, update(ALL, period))


def budget_figure(rows: list[dict]) -> Figure:
    """Each budget's spend as a share of its amount, with a line at every threshold."""
    if not rows:
        return empty_figure("Budgets", "No budget is set for these tenants: `POST /api/v1/budgets` or ask finance.")
    shown = sorted(rows, key=lambda r: -r["percent"])[:SHARE_BARS_SHOWN]  # only the drawn bars' labels are formatted
    labels = [f"{r['tenant']} · {r['name']}" for r in shown]
    text = [f"{amount(r['spent'], r['currency'])} of {amount(r['amount'], r['currency'])} ({percent(r['percent'])})"
            for r in shown]
    return share_bars("Budgets: spend this period (% of budget)", "spent (% of budget)", labels,
                      [float(r["percent"]) for r in shown], text, [t for r in rows for t in r["thresholds"]],
                      warn_at=[min(r["thresholds"]) for r in shown], of=len(rows))


def chosen_tenant(session: Session, principal: Principal, tenant_slug: str | None) -> int | None:
    """The id of the tenant picked (None: all the caller's); -1, which matches nothing, for a tenant
    that is not one of the caller's: show nothing rather than everything."""
    if tenant_slug in (None, ALL):
        return None
    tenant_id = session.exec(select(Tenant.id).where(Tenant.slug == tenant_slug)).first()
    return tenant_id if tenant_id is not None and principal.can_see(tenant_id) else -1


def update(tenant_slug: str | None, period: str | None) -> tuple:
    """Stats, charts, alerts and the bill list for the chosen tenant (within the caller's) and period."""
    principal = current_principal()
    period = period or period_of(utcnow())
    with db_session() as session:
        tenant_id = chosen_tenant(session, principal, tenant_slug)
        summary = spend_summary(session, principal, period, tenant_id)
        by_sku = spend_by_sku(session, principal, period, tenant_id)
        by_day = spend_by_day(session, principal, period, tenant_id)
        carbon = CarbonContext.of(console_context().settings)
        budgets = budget_rows(session, principal, period, tenant_id, carbon)
        alerts = alert_count(session, principal, period, tenant_id)
        energy = emissions_summary(session, principal, period, tenant_id, carbon)
    currency = summary.currency
    stats = [stat("spent to date", money(summary.to_date, currency), "stat-spent"),
             stat("forecast at period end", money(summary.forecast, currency), "stat-forecast"),
             stat("at list prices", money(summary.list_total, currency), "stat-list"),
             stat("bills", len(summary.bills), "stat-bills")]
    why = for_role(principal, f"No bill in {period} for these tenants: bills are drafted hourly as usage is rated.",
                   "The worker (`kiln worker`) runs them.")
    sku_figure = bars(f"Spend by SKU, {period}", "SKU", f"billed ({currency})", [label(s) for s in by_sku], list(by_sku.values()),
                      empty_reason=why, horizontal=True)
    by_month_day = {label(sku): {day[5:]: amount for day, amount in days.items()} for sku, days in by_day.items()}  # MM-DD
    day_figure = stacked_bars(f"Usage spend per day, {period}", "day (MM-DD, UTC)", f"rated ({currency})", by_month_day,
                              empty_reason=f"No usage in {period} for these tenants.")
    # the grids ask for their rows a block at a time (dashboards.cost_tables): the budgets and bills read
    # here are kept, their cells built when a grid first asks
    bills = summary.bills
    server_grid.keep(list_key(BILLS, principal, tenant_slug, period), lambda: bill_cells(bills))
    server_grid.keep(list_key(BUDGETS, principal, tenant_slug, period), lambda: budget_cells(budgets))
    alert_table = server_grid.paged_grid(ALERTS, ALERT_COLUMNS, alerts, empty=f"No budget or quota threshold crossed in {period}.",
                                         max_height=300)
    bill_table = server_grid.paged_grid(BILLS, bill_columns(currency), len(bills), empty=why)
    budget_table = server_grid.paged_grid(BUDGETS, BUDGET_COLUMNS, len(budgets), empty="No budget is set for these tenants.",
                                          max_height=300)
    return (stats, sku_figure, day_figure, budget_figure(budgets), budget_table, alert_table, bill_table,
            *emissions_parts(energy, period))


def emissions_parts(energy: dict, period: str) -> tuple[list[html.Div], Figure]:
    """Stats (kWh, kg CO2e, embodied, kWh without intensity; idle for global roles) and kg CO2e per day."""
    parts = [stat("energy", quantity(energy["kwh"], KWH), "stat-kwh"),
             stat("emissions", quantity(energy["kg_co2e"], KG), "stat-kg-co2e"),
             stat("embodied emissions", quantity(energy["embodied_kg_co2e"], KG), "stat-embodied")]
    if energy["kwh_without_intensity"]:
        parts.append(stat("energy without grid intensity", quantity(energy["kwh_without_intensity"], KWH), "stat-kwh-unpriced",
                          tone="warning"))
    if energy["idle_kwh"] is not None:
        parts += [stat("idle energy", quantity(energy["idle_kwh"], KWH), "stat-idle-kwh"),
                  stat("idle emissions", quantity(energy["idle_kg_co2e"], KG), "stat-idle-kg-co2e")]
    days = energy["per_day"]
    figure = bars(f"Emissions per day, {period}", "day (MM-DD, UTC)", "kg CO2e", [day[5:] for day in days],
                  [kg for _, kg in days.values()],
                  empty_reason=f"No metered energy in {period} for these tenants (DCMI power readings of leased nodes).")
    return parts, figure


def register(app: dash.Dash) -> None:
    """Register the page and its callbacks on the console app."""
    dash.register_page(__name__, path=PATH, name="Costs", title="Costs — Kiln", layout=layout, order=4)
    register_search(app, "costs-tenant")
    app.callback(*OUTPUTS, Input("costs-tenant", "value"), Input("costs-period", "value"), prevent_initial_call=True)(update)
    cost_tables.register(app)
