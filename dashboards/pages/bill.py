"""One bill on a page of its own (`/costs/bills/ID`): totals, discount, forecast, its lines with list
and contracted unit prices and the discount of each, paged; drill-down to the usage behind a line
(paged too); CSV and FOCUS downloads (`dashboards.downloads`). A bill that is not one of the
caller's tenants' reads "not found", whoever else's it is."""

from __future__ import annotations

from typing import Any

import dash
from dash import ALL, Input, Output, State, ctx, dcc, html, no_update

from dashboards import downloads
from dashboards.components import empty_state, section, stat, table, when
from dashboards.context import current_principal, db_session
from dashboards.cost_data import (
    LINES_PER_PAGE,
    USAGE_PREVIEW_ROWS,
    bill_detail,
    line_discount,
    line_usage,
    lines_page,
    pages_of,
)
from dashboards.numbers import money, percent, quantity, unit_price
from kiln.errors import KilnError
from metering.rating import KIND_USAGE
from metering.sku_labels import label
from metering.views import BillDetail, BillLinePublic

PATH_TEMPLATE = "/costs/bills/<bill_id>"
LINE_COLUMNS = ("kind", "SKU", "quantity", "list unit price", "contracted unit price", "discount", "at list price", "billed",
                "window (UTC)", "")


def bill_url(bill_id: int) -> str:
    """The bill's own page."""
    return f"/costs/bills/{bill_id}"


def pager(prefix: str, page: int, pages: int) -> html.Div:
    """Previous / next buttons (disabled at the ends) around "page N of M", and the page in a store."""
    return html.Div([
        html.Button("‹ previous", id=f"{prefix}-prev", n_clicks=0, disabled=page <= 0, className="button secondary small"),
        html.Span(f"page {page + 1} of {pages}", id=f"{prefix}-status", className="pager-status"),
        html.Button("next ›", id=f"{prefix}-next", n_clicks=0, disabled=page >= pages - 1, className="button secondary small"),
        dcc.Store(id=f"{prefix}-page", data=page),
    ], className="pager")


def _turned(page: int | None) -> int:
    """The page after a click on a pager's previous or next button."""
    step = 1 if str(ctx.triggered_id).endswith("-next") else -1
    return (page or 0) + step


def line_row(line: BillLinePublic) -> tuple:
    """A bill line as the table shows it: human SKU, list and contracted unit prices, discount, amounts."""
    discount = line_discount(line)
    # a usage line's description repeats its columns; corrections, idle shares and unpriced SKUs explain themselves
    note = line.description if line.kind != KIND_USAGE or line.price_card_id is None else ""
    sku = html.Span([label(line.sku), html.Br(), html.Small(note, className="hint")] if note else label(line.sku), title=line.sku)
    return (line.kind, sku, quantity(line.quantity, line.unit),
            unit_price(line.list_unit_price, line.currency), unit_price(line.contracted_unit_price, line.currency),
            percent(discount, 2) if discount is not None else "—", money(line.list_cost, line.currency),
            money(line.contracted_cost, line.currency),
            f"{line.window_start:%m-%d %H:%M} → {line.window_end:%m-%d %H:%M}",
            html.Button("usage", id={"type": "bill-line", "line": line.id}, n_clicks=0, className="button secondary small"))


def lines_block(detail: BillDetail, page: int) -> list[Any]:
    """One page of the bill's lines with its pager."""
    lines, page = lines_page(detail, page)
    pages = pages_of(len(detail.lines), LINES_PER_PAGE)
    return [pager("bill-lines", page, pages),
            table(LINE_COLUMNS, [line_row(line) for line in lines], empty="This bill has no lines.", element_id="bill-lines")]


def _missing(bill_id: str | None) -> html.Div:
    return html.Div([html.H1("Bill"), empty_state(f"Bill {bill_id} not found among your tenants' bills.", id="bill-missing"),
                     dcc.Link("All bills", href="/costs#bills")])


def layout(bill_id: str | None = None, **_: str) -> html.Div:
    """The bill's page, or a not-found panel when it is not one of the caller's tenants' bills."""
    principal = current_principal()
    try:
        with db_session() as session:
            detail = bill_detail(session, principal, int(bill_id or ""))
    except (ValueError, KilnError):
        return _missing(bill_id)
    currency = detail.currency
    head = html.Div([
        stat("tenant", detail.tenant, "bill-tenant"), stat("status", detail.status, "bill-status"),
        stat("total", money(detail.total, currency), "bill-total"),
        stat("at list prices", money(detail.list_total, currency), "bill-list-total"),
        stat("contract discount", percent(detail.discount_percent, 2), "bill-discount"),
        stat("forecast at period end", money(detail.forecast_total, currency), "bill-forecast"),
        stat("usage counted up to", when(detail.usage_through), "bill-usage-through"),
    ], className="stats")
    links = html.P([
        html.A("Download CSV", href=downloads.bill_csv_url(detail.id), id="bill-download-csv", className="button", download=""),
        " ",
        html.A("Download FOCUS (CSV)", href=downloads.bill_focus_url(detail.id), id="bill-download-focus",
               className="button secondary", download=""),
    ])
    return html.Div([
        html.Div([html.H1(f"Bill {detail.id}: {detail.tenant}, {detail.period}", id="bill-title"),
                  dcc.Link("All bills", href="/costs#bills")], className="page-head"),
        head, links,
        section("Lines", html.Div(lines_block(detail, 0), id="bill-lines-block"), element_id="bill-detail"),
        dcc.Store(id="bill-id", data=detail.id),
        html.Div(id="bill-line-usage"),
    ])


def turn_lines_page(_prev: int, _next: int, page: int | None, bill_id: int | None) -> list[Any]:
    """The previous or next page of the bill's lines."""
    if not bill_id or not (_prev or _next):
        return no_update
    try:
        with db_session() as session:
            detail = bill_detail(session, current_principal(), bill_id)
    except KilnError as exc:
        return [empty_state(exc.detail)]
    return lines_block(detail, _turned(page))


def usage_block(bill_id: int, line_id: int, page: int) -> html.Div:
    """The usage behind one line: totals per resource and one page of its hourly records."""
    try:
        with db_session() as session:
            found = line_usage(session, current_principal(), bill_id, line_id, page)
    except KilnError as exc:
        return empty_state(exc.detail, id="line-usage-missing")
    line = found.line
    title = html.H3(f"Line {line.id}: {quantity(line.quantity, line.unit)} of {label(line.sku)}", id="line-usage-title")
    if not found.by_resource:
        return html.Div([title, empty_state("This line is not usage of a resource (an idle share or a correction without usage).")],
                        id="line-usage")
    per_resource = table(("resource", "source", "quantity"), [(r, s, quantity(q, line.unit)) for r, s, q in found.by_resource],
                         empty="", element_id="line-usage-resources")
    hours = table(("hour (UTC)", "resource", "source", "quantity"),
                  [(when(u.hour), u.resource_id, u.source, quantity(u.quantity, u.unit)) for u in found.hours],
                  empty="", element_id="line-usage-hours")
    return html.Div([
        title,
        html.P(f"{found.hour_count:,} hourly records from {when(line.window_start)} to {when(line.window_end)}, "
               f"{USAGE_PREVIEW_ROWS} a page."),
        per_resource, pager("line-usage", found.page, pages_of(found.hour_count, USAGE_PREVIEW_ROWS)), hours,
        dcc.Store(id="line-usage-line", data=line.id),
    ], id="line-usage")


def show_line_usage(clicks: list[int | None], bill_id: int | None) -> html.Div:
    """Drill-down: the usage records behind the clicked line (only of the caller's tenants' bills)."""
    trigger = ctx.triggered_id
    if not bill_id or not isinstance(trigger, dict) or not any(clicks or []):
        return no_update
    return usage_block(bill_id, trigger["line"], 0)


def turn_usage_page(_prev: int, _next: int, page: int | None, line_id: int | None, bill_id: int | None) -> html.Div:
    """The previous or next page of the drilled-down line's hourly records."""
    if not bill_id or not line_id or not (_prev or _next):
        return no_update
    return usage_block(bill_id, line_id, _turned(page))


def register(app: dash.Dash) -> None:
    """Register the page and its callbacks on the console app."""
    dash.register_page(__name__, path_template=PATH_TEMPLATE, name="Bill", title="Bill — Kiln", layout=layout)
    app.callback(Output("bill-lines-block", "children"), Input("bill-lines-prev", "n_clicks"),
                 Input("bill-lines-next", "n_clicks"), State("bill-lines-page", "data"), State("bill-id", "data"),
                 prevent_initial_call=True)(turn_lines_page)
    app.callback(Output("bill-line-usage", "children"), Input({"type": "bill-line", "line": ALL}, "n_clicks"),
                 State("bill-id", "data"), prevent_initial_call=True)(show_line_usage)
    app.callback(Output("bill-line-usage", "children", allow_duplicate=True), Input("line-usage-prev", "n_clicks"),
                 Input("line-usage-next", "n_clicks"), State("line-usage-page", "data"), State("line-usage-line", "data"),
                 State("bill-id", "data"), prevent_initial_call=True)(turn_usage_page)
