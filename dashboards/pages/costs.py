"""Costs and bills: spend to date and forecast, by SKU and by day, budgets with their thresholds,
the bill list, and a bill's lines with drill-down to the usage behind each (`/costs?bill=ID`).
Tenants see their own tenants only; finance and infra admins all of them. Bills download as
CSV and FOCUS CSV through `dashboards.downloads`."""

from __future__ import annotations

from decimal import Decimal

import dash
from sqlmodel import Session
from dash import ALL, Input, Output, State, ctx, dcc, html, no_update

from dashboards import downloads
from dashboards.components import data_grid, empty_state, prefilled, section, stat, table, when
from dashboards.context import console_context, current_principal, db_session
from dashboards.cost_data import (
    bill_detail,
    bill_periods,
    budget_alerts,
    budget_rows,
    emissions_summary,
    line_usage,
    spend_by_day,
    spend_by_sku,
    spend_summary,
)
from dashboards.figures import Figure, bars, empty_figure, share_bars, stacked_bars
from dashboards.tenancy_data import visible_tenants
from kiln.auth import Principal
from kiln.db import utcnow
from kiln.errors import KilnError
from metering.budgets import CarbonContext
from metering.periods import period_of

PATH = "/costs"
ALL_TENANTS = "all"
OUTPUTS = (
    Output("costs-stats", "children"), Output("costs-by-sku", "figure"), Output("costs-by-day", "figure"),
    Output("costs-budgets", "figure"), Output("costs-alerts", "children"), Output("costs-bills", "children"),
    Output("costs-emissions-stats", "children"), Output("costs-emissions-by-day", "figure"),
)


def money(amount: Decimal | None, currency: str) -> str:
    """An amount with its currency, thousands separated."""
    return "—" if amount is None else f"{amount:,.2f} {currency}"


def quantity(value: Decimal | None) -> str:
    """A quantity without trailing zeros, thousands separated (`240`, `1,234.5`)."""
    return "—" if value is None else format(Decimal(value).normalize() + 0, ",f")


def _period_options(periods: list[str]) -> list[dict[str, str]]:
    current = period_of(utcnow())
    return [{"label": f"{p} (running)" if p == current else p, "value": p} for p in sorted({current, *periods}, reverse=True)]


def layout(bill: str | None = None, **_: str) -> html.Div:
    """Filters (tenant, period), the overview (all the caller's tenants, the running period or the
    bill's), and a bill's detail when `?bill=ID`."""
    principal = current_principal()
    with db_session() as session:
        tenants = visible_tenants(session, principal)
        periods = bill_periods(session, principal)
        detail = _bill_section(session, principal, bill) if bill else None
    options = [{"label": "All tenants" if principal.sees_all_tenants else "All my tenants", "value": ALL_TENANTS}]
    options += [{"label": f"{t.name} ({t.slug})", "value": t.slug} for t in tenants]
    period = detail[1] if detail else period_of(utcnow())
    page = html.Div([
        html.Div([
            html.H1("Costs and bills"),
            dcc.Dropdown(id="costs-tenant", options=options, value=ALL_TENANTS, clearable=False, className="tenant-picker"),
            dcc.Dropdown(id="costs-period", options=_period_options(periods), value=period, clearable=False,
                         className="range-picker"),
        ], className="page-head"),
        html.Div(id="costs-stats", className="stats"),
        html.Div([dcc.Graph(id="costs-by-sku"), dcc.Graph(id="costs-by-day")], className="grid-2"),
        dcc.Graph(id="costs-budgets"),
        section("Energy and emissions", html.Div(id="costs-emissions-stats", className="stats"),
                dcc.Graph(id="costs-emissions-by-day"), element_id="emissions"),
        section("Budget alerts", html.Div(id="costs-alerts")),
        section("Bills", html.Div(id="costs-bills"), element_id="bills"),
        detail[0] if detail else html.Div(id="bill-detail"),
    ])
    return prefilled(page, OUTPUTS, update(ALL_TENANTS, period))


def _bill_section(session: Session, principal: Principal, bill: str) -> tuple[html.Section, str]:
    try:
        detail = bill_detail(session, principal, int(bill))
    except (ValueError, KilnError):
        return section("Bill", empty_state(f"Bill {bill} not found among your tenants' bills.", id="bill-missing"),
                       element_id="bill-detail"), period_of(utcnow())
    lines = [(l.kind, l.sku, l.description, f"{quantity(l.quantity)} {l.unit}", f"{l.list_unit_price}",
              money(l.list_cost, l.currency), money(l.contracted_cost, l.currency),
              f"{l.window_start:%m-%d %H:%M} → {l.window_end:%m-%d %H:%M}",
              html.Button("usage", id={"type": "costs-line", "line": l.id}, n_clicks=0, className="button secondary small"))
             for l in detail.lines]
    head = html.Div([
        stat("tenant", detail.tenant, "bill-tenant"), stat("status", detail.status, "bill-status"),
        stat("total", money(detail.total, detail.currency), "bill-total"),
        stat("list total", money(detail.list_total, detail.currency), "bill-list-total"),
        stat("forecast at period end", money(detail.forecast_total, detail.currency), "bill-forecast"),
    ], className="stats")
    links = html.P([
        html.A("Download CSV", href=downloads.bill_csv_url(detail.id), id="bill-download-csv", className="button", download=""),
        " ",
        html.A("Download FOCUS (CSV)", href=downloads.bill_focus_url(detail.id), id="bill-download-focus",
               className="button secondary", download=""),
    ])
    return section(f"Bill {detail.id}: {detail.tenant}, {detail.period}", head, links,
                   table(("kind", "SKU", "description", "quantity", "unit price", "list", "billed", "window (UTC)", ""),
                         lines, empty="This bill has no lines.", element_id="bill-lines"),
                   dcc.Store(id="costs-bill-id", data=detail.id), html.Div(id="costs-line-usage"),
                   element_id="bill-detail"), detail.period


def budget_figure(rows: list[dict]) -> Figure:
    """Each budget's spend as a share of its amount, with a line at every threshold."""
    if not rows:
        return empty_figure("Budgets", "No budget is set for these tenants: `POST /api/v1/budgets` or ask finance.")
    labels = [f"{r['tenant']} · {r['name']}" for r in rows]
    text = [f"{r['spent']:,.2f} of {r['amount']:,.2f} {r['currency']} ({r['percent']} %)" for r in rows]
    return share_bars("Budgets: spend this period (% of budget)", "spent (% of budget)", labels,
                      [float(r["percent"]) for r in rows], text, [t for r in rows for t in r["thresholds"]],
                      warn_at=[min(r["thresholds"]) for r in rows])


ALERT_COLUMNS = (
    {"field": "when", "headerName": "When", "minWidth": 190, "maxWidth": 210}, {"field": "tenant", "headerName": "Tenant", "maxWidth": 160},
    {"field": "threshold", "headerName": "Threshold (%)", "maxWidth": 140, "numeric": True},
    {"field": "message", "headerName": "Message", "minWidth": 400, "tooltipField": "message"},
)


def bill_columns(currency: str) -> tuple[dict, ...]:
    """The bill list's columns: a link to each bill's detail, amounts sortable as numbers."""
    return ({"field": "bill", "headerName": "Bill", "cellRenderer": "markdown", "maxWidth": 110},
            {"field": "tenant", "headerName": "Tenant"}, {"field": "period", "headerName": "Period", "maxWidth": 120},
            {"field": "status", "headerName": "Status", "maxWidth": 130},
            {"field": "billed", "headerName": f"Billed ({currency})", "numeric": True},
            {"field": "forecast", "headerName": f"Forecast ({currency})", "numeric": True},
            {"field": "updated", "headerName": "Updated"})


def _tenant_id(tenant_slug: str | None, tenants: dict) -> int | None:
    if tenant_slug in (None, ALL_TENANTS):
        return None
    tenant = tenants.get(tenant_slug)
    return tenant.id if tenant else -1  # not one of the caller's tenants: show nothing rather than everything


def update(tenant_slug: str | None, period: str | None) -> tuple:
    """Stats, charts, alerts and the bill list for the chosen tenant (within the caller's) and period."""
    principal = current_principal()
    period = period or period_of(utcnow())
    with db_session() as session:
        tenant_id = _tenant_id(tenant_slug, {t.slug: t for t in visible_tenants(session, principal)})
        summary = spend_summary(session, principal, period, tenant_id)
        by_sku = spend_by_sku(session, principal, period, tenant_id)
        by_day = spend_by_day(session, principal, period, tenant_id)
        carbon = CarbonContext.of(console_context().settings)
        budgets = budget_rows(session, principal, period, tenant_id, carbon)
        alerts = budget_alerts(session, principal, period, tenant_id)
        energy = emissions_summary(session, principal, period, tenant_id, carbon)
    currency = summary.currency
    stats = [stat("spent to date", money(summary.to_date, currency), "stat-spent"),
             stat("forecast at period end", money(summary.forecast, currency), "stat-forecast"),
             stat("at list prices", money(summary.list_total, currency), "stat-list"),
             stat("bills", len(summary.bills), "stat-bills")]
    why = f"No bill in {period} for these tenants: bills are drafted as usage is rated (hourly by `kiln worker`)."
    sku_figure = bars(f"Spend by SKU, {period}", "SKU", f"billed ({currency})", list(by_sku), list(by_sku.values()),
                      empty_reason=why, horizontal=True)
    by_month_day = {sku: {day[5:]: amount for day, amount in days.items()} for sku, days in by_day.items()}  # MM-DD
    day_figure = stacked_bars(f"Usage spend per day, {period}", "day (MM-DD, UTC)", f"rated ({currency})", by_month_day,
                              empty_reason=f"No usage in {period} for these tenants.")
    alert_table = data_grid("costs-alert-table", ALERT_COLUMNS, [
        {"when": when(a.created_at), "tenant": a.tenant or "—", "threshold": a.threshold, "message": a.message} for a in alerts],
        empty=f"No budget or quota threshold crossed in {period}.", max_height=300)
    bill_table = data_grid("costs-bill-table", bill_columns(currency), [
        {"bill": f"[#{b.id}]({PATH}?bill={b.id})", "tenant": b.tenant, "period": b.period, "status": b.status,
         "billed": str(b.total), "forecast": str(b.forecast_total), "updated": when(b.updated_at)} for b in summary.bills],
        empty=why)
    return (stats, sku_figure, day_figure, budget_figure(budgets), alert_table, bill_table,
            *emissions_parts(energy, period))


def emissions_parts(energy: dict, period: str) -> tuple[list[html.Div], Figure]:
    """Stats (kWh, kg CO2e, embodied, kWh without intensity; idle for global roles) and kg CO2e per day."""
    parts = [stat("energy (kWh)", quantity(energy["kwh"]), "stat-kwh"),
             stat("emissions (kg CO2e)", quantity(energy["kg_co2e"]), "stat-kg-co2e"),
             stat("embodied (kg CO2e)", quantity(energy["embodied_kg_co2e"]), "stat-embodied")]
    if energy["kwh_without_intensity"]:
        parts.append(stat("kWh without grid intensity", quantity(energy["kwh_without_intensity"]), "stat-kwh-unpriced",
                          tone="warning"))
    if energy["idle_kwh"] is not None:
        parts += [stat("idle energy (kWh)", quantity(energy["idle_kwh"]), "stat-idle-kwh"),
                  stat("idle emissions (kg CO2e)", quantity(energy["idle_kg_co2e"]), "stat-idle-kg-co2e")]
    days = energy["per_day"]
    figure = bars(f"Emissions per day, {period}", "day (MM-DD, UTC)", "kg CO2e", [day[5:] for day in days],
                  [kg for _, kg in days.values()],
                  empty_reason=f"No metered energy in {period} for these tenants (DCMI power readings of leased nodes).")
    return parts, figure


def show_line_usage(clicks: list[int | None], bill_id: int | None) -> html.Div:
    """Drill-down: the usage records behind the clicked line (only of the caller's tenants' bills)."""
    trigger = ctx.triggered_id
    if not bill_id or not isinstance(trigger, dict) or not any(clicks or []):
        return no_update
    principal = current_principal()
    try:
        with db_session() as session:
            found = line_usage(session, principal, bill_id, trigger["line"])
    except KilnError as exc:
        return empty_state(exc.detail, id="line-usage-missing")
    line = found.line
    if not found.by_resource:
        return html.Div([html.H3(f"Line {line.id}: {line.sku}"),
                         empty_state("This line is not usage of a resource (an idle share or a correction without usage).")],
                        id="line-usage")
    per_resource = table(("resource", "source", f"quantity ({line.unit})"),
                         [(r, s, quantity(q)) for r, s, q in found.by_resource], empty="", element_id="line-usage-resources")
    hours = table(("hour (UTC)", "resource", "source", "quantity"),
                  [(when(u.hour), u.resource_id, u.source, quantity(u.quantity)) for u in found.hours],
                  empty="", element_id="line-usage-hours")
    return html.Div([
        html.H3(f"Line {line.id}: {quantity(line.quantity)} {line.unit} of {line.sku}", id="line-usage-title"),
        html.P(f"{found.hour_count:,} hourly records from {when(line.window_start)} to {when(line.window_end)}; "
               f"the first {len(found.hours)} are listed below."),
        per_resource, hours,
    ], id="line-usage")


def register(app: dash.Dash) -> None:
    """Register the page and its callbacks on the console app."""
    dash.register_page(__name__, path=PATH, name="Costs", title="Costs — Kiln", layout=layout, order=4)
    app.callback(*OUTPUTS, Input("costs-tenant", "value"), Input("costs-period", "value"), prevent_initial_call=True)(update)
    app.callback(
        Output("costs-line-usage", "children"),
        Input({"type": "costs-line", "line": ALL}, "n_clicks"), State("costs-bill-id", "data"),
        prevent_initial_call=True,
    )(show_line_usage)
