"""The costs page's three long lists (budgets, budget alerts, bills) as server-paged grids
(`dashboards.server_grid`): at 2,000 tenants they were 2,000 budgets, 4,000 alerts and 2,000 bills
sent whole to the browser (1.6 MB of JSON, then drawn). The page's callback builds the budgets and
bills it needs for its stats and charts anyway and keeps their rows for the blocks the grids ask
for; alerts are read a block at a time in SQL in their own order (newest first), and built whole
only to sort or filter them by another column.

Every row is built for the caller (`current_principal`) and the tenant they picked among theirs."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from dash import Input, Output, State, no_update

from dashboards import server_grid
from dashboards.components import when
from dashboards.context import console_context, current_principal, db_session
from dashboards.cost_data import alert_count, alert_rows, budget_alerts, budget_rows, spend_summary
from dashboards.numbers import money, quantity
from dashboards.pages.bill import bill_url
from kiln.auth import Principal
from metering.budgets import CarbonContext

KG = "kg CO2e"
BUDGETS, ALERTS, BILLS = "budget-table", "costs-alert-table", "costs-bill-table"  # each grid is ID-grid

BUDGET_COLUMNS = (
    {"field": "tenant", "headerName": "Tenant", "maxWidth": 160}, {"field": "budget", "headerName": "Budget"},
    {"field": "amount", "headerName": "Amount"}, {"field": "spent", "headerName": "Spent"},
    {"field": "forecast", "headerName": "Forecast at period end"},
    {"field": "forecast_percent", "headerName": "Forecast (% of budget)", "numeric": True},
    {"field": "state", "headerName": "State", "cellClassRules": {"warning": "params.data && params.data.state !== 'on track'"}},
)
ALERT_COLUMNS = (
    {"field": "when", "headerName": "When", "minWidth": 190, "maxWidth": 210}, {"field": "tenant", "headerName": "Tenant", "maxWidth": 160},
    {"field": "threshold", "headerName": "Threshold (%)", "maxWidth": 140, "numeric": True},
    {"field": "message", "headerName": "Message", "minWidth": 400, "tooltipField": "message"},
)
NUMERIC = {BUDGETS: ("forecast_percent", "spent_value", "amount_value", "forecast_value"), ALERTS: ("threshold",),
           BILLS: ("billed", "forecast", "id")}
SORTED_BY = {BUDGETS: {"amount": "amount_value", "spent": "spent_value", "forecast": "forecast_value"},
             ALERTS: {"when": "at"}, BILLS: {"bill": "id", "updated": "at"}}


def amount(value: Decimal, currency: str) -> str:
    """Money for a money budget, kg CO2e for an emissions budget (its "currency")."""
    return quantity(value, KG) if currency == KG else money(value, currency)


def budget_state(spent_percent: Decimal, forecast_percent: Decimal, thresholds: list[int]) -> str:
    """Over budget; the highest threshold the forecast will cross that the spend has not; the
    highest the spend has crossed; or on track."""
    if spent_percent >= 100:
        return "over budget"
    ahead = [t for t in thresholds if spent_percent < t <= forecast_percent]
    if ahead:
        return f"forecast to cross {max(ahead)} %"
    passed = [t for t in thresholds if t <= spent_percent]
    return f"spent past {max(passed)} %" if passed else "on track"


def budget_cells(rows: list[dict]) -> list[dict[str, Any]]:
    """The budget grid's rows: each budget's spend and forecast against its amount; a forecast that
    will cross the first threshold is flagged before the spend does. Amounts sort by their value."""
    return [{"tenant": r["tenant"], "budget": r["name"], "amount": amount(r["amount"], r["currency"]),
             "spent": amount(r["spent"], r["currency"]), "forecast": amount(r["forecast"], r["currency"]),
             "forecast_percent": str(r["forecast_percent"]),
             "state": budget_state(r["percent"], r["forecast_percent"], r["thresholds"]),
             "amount_value": str(r["amount"]), "spent_value": str(r["spent"]), "forecast_value": str(r["forecast"])}
            for r in rows]


def bill_columns(currency: str) -> tuple[dict, ...]:
    """The bill list's columns: a link to each bill's detail, amounts sortable as numbers."""
    return ({"field": "bill", "headerName": "Bill", "cellRenderer": "markdown", "maxWidth": 110},
            {"field": "tenant", "headerName": "Tenant"}, {"field": "period", "headerName": "Period", "maxWidth": 120},
            {"field": "status", "headerName": "Status", "maxWidth": 130},
            {"field": "billed", "headerName": f"Billed ({currency})", "numeric": True},
            {"field": "forecast", "headerName": f"Forecast ({currency})", "numeric": True},
            {"field": "updated", "headerName": "Updated"})


def bill_cells(bills: list) -> list[dict[str, Any]]:
    """The bill grid's rows (`views.BillPublic`s), newest bill first as the bill list has them."""
    return [{"bill": f"[#{b.id}]({bill_url(b.id)})", "id": b.id, "tenant": b.tenant, "period": b.period, "status": b.status,
             "billed": str(b.total), "forecast": str(b.forecast_total), "updated": when(b.updated_at),
             "at": b.updated_at.isoformat() if b.updated_at else None} for b in bills]


def alert_cells(alerts: list) -> list[dict[str, Any]]:
    """The alert grid's rows (objects with created_at, tenant, threshold and message)."""
    return [{"when": when(a.created_at), "at": a.created_at.isoformat(), "tenant": a.tenant or "—",
             "threshold": a.threshold, "message": a.message} for a in alerts]


def list_key(table: str, principal: Principal, tenant_slug: str | None, period: str) -> tuple:
    """Where a table's rows are kept: per table, caller, tenant choice and period."""
    return table, server_grid.caller_key(principal), tenant_slug, period


def rows_block(table: str, request: dict | None, tenant_slug: str | None, period: str | None) -> dict:
    """One block of `table`'s rows that `request` (AG Grid's getRowsRequest) asks for, for the
    caller's `tenant_slug` choice and `period`, and how many rows match."""
    if not request or not period:
        return no_update
    from dashboards.pages.costs import chosen_tenant  # noqa: PLC0415 - the page imports this module

    principal = current_principal()
    with db_session() as session:
        tenant_id = chosen_tenant(session, principal, tenant_slug)
        if table == ALERTS and server_grid.plain_request(request):
            start, end = server_grid.bounds(request)
            rows = alert_cells(alert_rows(session, principal, period, tenant_id, start, end - start))
            return {"rowData": rows, "rowCount": alert_count(session, principal, period, tenant_id)}

        def build() -> list[dict[str, Any]]:
            if table == ALERTS:
                return alert_cells(budget_alerts(session, principal, period, tenant_id))
            if table == BILLS:
                return bill_cells(spend_summary(session, principal, period, tenant_id).bills)
            carbon = CarbonContext.of(console_context().settings)
            return budget_cells(budget_rows(session, principal, period, tenant_id, carbon))

        rows = server_grid.kept(list_key(table, principal, tenant_slug, period), build)
    return server_grid.block(rows, request, NUMERIC[table], SORTED_BY[table])


def register(app: Any) -> None:
    """The grids' block callbacks (`getRowsRequest` → `getRowsResponse`), with the page's tenant and period."""
    for table in (BUDGETS, ALERTS, BILLS):
        def answer(request: dict | None, tenant_slug: str | None, period: str | None, table: str = table) -> dict:
            return rows_block(table, request, tenant_slug, period)
        answer.__doc__ = f"One block of the {table} grid's rows."
        app.callback(Output(f"{table}-grid", "getRowsResponse"), Input(f"{table}-grid", "getRowsRequest"),
                     State("costs-tenant", "value"), State("costs-period", "value"), prevent_initial_call=True)(answer)
