"""Small layout pieces shared by the pages: 403 panel, empty states, stat cards, tables, range picker."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import dash_ag_grid as dag
import flask
from dash import Input, Output, dcc, html
from dash.development.base_component import Component

from collectors.utilisation_days import midnight
from kiln.auth import Principal
from kiln.db import utcnow
from kiln.roles import Role

RANGES = {"6h": timedelta(hours=6), "24h": timedelta(hours=24), "7d": timedelta(days=7), "30d": timedelta(days=30)}
# Columns share the grid's width by flex (AG Grid's own layout): dash-ag-grid's
# columnSize="responsiveSizeToFit" re-measures the grid on every resize, ~1 s of layout work
# for a page with two grids on a small machine.
GRID_COLUMN_DEFAULTS = {"sortable": True, "filter": True, "resizable": True, "minWidth": 80, "flex": 1}
RANGE_LABELS = {"6h": "Last 6 hours", "24h": "Last 24 hours", "7d": "Last 7 days", "30d": "Last 30 days"}
# Ranges of whole UTC days up to now (days back from today's midnight), for views summed per day
# (GPU utilisation is kept per lease and day: a range from a ragged hour would read its first
# day's samples, 23 M of them a day at 80,000 GPUs)
DAY_RANGES = {"today": 0, "7d": 7, "30d": 30}
DAY_RANGE_LABELS = {"today": "Today (UTC)", "7d": "Last 7 days", "30d": "Last 30 days"}


def forbidden(principal: Principal, what: str, who: str = "infra admins") -> html.Div:
    """The 403 panel a caller sees on a page their role may not open (`who` may open it)."""
    return html.Div(
        [
            html.H1("403 — Forbidden", id="forbidden-title"),
            html.P(f"{what} is for {who}; you are signed in as {principal.username} ({principal.role.value})."),
            html.A("Back to your overview", href="/"),
        ],
        className="forbidden",
        id="forbidden",
    )


def allowed(principal: Principal, roles: Iterable[Role]) -> bool:
    """Whether the caller's role is one of `roles`."""
    return principal.role in set(roles)


def forbid_page_load(path: str, roles: Iterable[Role]) -> Callable[[flask.Response], flask.Response]:
    """A Flask `after_request` hook: HTTP 403 (the page still shows its 403 panel) when a caller whose
    role is not one of `roles` loads the page at `path`."""
    permitted = frozenset(roles)

    def forbid(response: flask.Response) -> flask.Response:
        principal = getattr(flask.g, "principal", None)
        if (flask.request.method == "GET" and flask.request.path == path and principal is not None
                and principal.role not in permitted and response.status_code == 200):
            response.status_code = 403
        return response

    return forbid


def empty_state(message: str, **attrs: Any) -> html.P:
    """A sentence saying why a list or table has nothing in it."""
    return html.P(message, className="empty-state", **attrs)


def stat(label: str, value: Any, element_id: str | None = None, tone: str = "") -> html.Div:
    """A labelled number."""
    attrs = {"id": element_id} if element_id else {}
    return html.Div([html.Div(str(value), className="stat-value", **attrs), html.Div(label, className="stat-label")],
                    className=f"stat {tone}".strip())


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]], *, empty: str, element_id: str | None = None) -> html.Div:
    """A plain HTML table, or the empty-state sentence when there are no rows."""
    attrs = {"id": element_id} if element_id else {}
    if not rows:
        return html.Div(empty_state(empty), **attrs)
    head = html.Thead(html.Tr([html.Th(c) for c in columns]))
    body = html.Tbody([html.Tr([html.Td(cell) for cell in row]) for row in rows])
    return html.Div(html.Table([head, body], className="table"), **attrs)


def grid_column_defs(columns: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """AG Grid column definitions of `columns`: one with `"numeric": True` holds decimal strings,
    sorted and filtered as numbers and shown as the exact string."""
    defs = []
    for column in columns:
        numeric = column.get("numeric", False)
        spec = {k: v for k, v in column.items() if k != "numeric"}
        if numeric:  # sorted and filtered by the number, shown as the exact decimal string
            field = column["field"]
            spec.update(type="numericColumn", filter="agNumberColumnFilter",
                        valueGetter={"function": f"!params.data || params.data['{field}'] === '' ? null : Number(params.data['{field}'])"},
                        valueFormatter={"function": f"params.data ? params.data['{field}'] : ''"})
        defs.append(spec)
    return defs


def data_grid(element_id: str, columns: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]], *, empty: str,
              max_height: int = 440) -> html.Div:
    """A long list as a sortable, filterable, virtualised table (AG Grid: the browser draws only the
    visible rows, so hundreds of rows stay fast); the empty-state sentence when there are no rows.
    A column with `"numeric": True` holds decimal strings, sorted and filtered as numbers."""
    if not rows:
        return html.Div(empty_state(empty), id=element_id)
    defs = grid_column_defs(columns)
    grid = dag.AgGrid(
        id=f"{element_id}-grid", rowData=list(rows), columnDefs=defs,
        defaultColDef=GRID_COLUMN_DEFAULTS,
        dashGridOptions={"animateRows": False, "pagination": len(rows) > 100, "paginationPageSize": 100},
        style={"height": f"{min(max_height, 60 + 42 * len(rows))}px"}, className="ag-theme-quartz",
    )
    return html.Div(grid, id=element_id, className="grid-wrap")


def toggle_button(element_id: str, text: str) -> html.Button:
    """An on/off switch as a button with `aria-pressed` (Dash's Checklist nests its input in a
    label, which axe reports as nested-interactive); read its state with `pressed`."""
    return html.Button(text, id=element_id, n_clicks=0, className="toggle", **{"aria-pressed": "false"})


def pressed(clicks: int | None) -> bool:
    """Whether a `toggle_button` pressed `clicks` times is on (an odd number of presses)."""
    return bool((clicks or 0) % 2)


def tab_bar(element_id: str, tabs: dict[str, str], selected: str, label: str) -> html.Div:
    """Buttons that pick which panel of a page shows (`tabs`: value → label), as an ARIA tablist
    (each a button: keyboard reachable); `element_id`-panel holds the selected tab's content, filled
    by the page (`tab_outputs`, `chosen_tab`), so only that tab's data is read and drawn."""
    buttons = [html.Button(text, id=f"{element_id}-{value}", n_clicks=0, role="tab", className="tab",
                           **{"aria-selected": "true" if value == selected else "false", "aria-controls": f"{element_id}-panel"})
               for value, text in tabs.items()]
    return html.Div([html.Div(buttons, role="tablist", className="tabs", **{"aria-label": label}),
                     dcc.Store(id=f"{element_id}-chosen", data=selected),
                     html.Div(id=f"{element_id}-panel", role="tabpanel", className="tab-panel")])


def tab_outputs(element_id: str, tabs: dict[str, str]) -> tuple[Output, ...]:
    """The outputs a `tab_bar`'s callback fills: the panel, the chosen tab, each button's `aria-selected`."""
    return (Output(f"{element_id}-panel", "children"), Output(f"{element_id}-chosen", "data"),
            *(Output(f"{element_id}-{value}", "aria-selected") for value in tabs))


def tab_inputs(element_id: str, tabs: dict[str, str]) -> tuple[Input, ...]:
    """A `tab_bar`'s buttons as callback inputs (then a `State` of the chosen tab goes last)."""
    return tuple(Input(f"{element_id}-{value}", "n_clicks") for value in tabs)


def chosen_tab(element_id: str, tabs: dict[str, str], chosen: str | None, triggered: Any = None) -> tuple[str, list[str]]:
    """The tab a `tab_bar` shows (the button that `triggered` a callback, `dash.ctx.triggered_id`;
    else the one `chosen` before; else the first) and each button's `aria-selected`."""
    prefix = f"{element_id}-"
    if isinstance(triggered, str) and triggered.startswith(prefix) and triggered[len(prefix):] in tabs:
        chosen = triggered[len(prefix):]
    chosen = chosen if chosen in tabs else next(iter(tabs))
    return chosen, ["true" if value == chosen else "false" for value in tabs]


def range_picker(element_id: str, default: str = "24h", labels: dict[str, str] = RANGE_LABELS) -> dcc.Dropdown:
    """The time range picker: presets ending now (`labels`: RANGE_LABELS, or DAY_RANGE_LABELS)."""
    return dcc.Dropdown(
        id=element_id,
        options=[{"label": label, "value": k} for k, label in labels.items()],
        value=default,
        clearable=False,
        className="range-picker",
    )


def range_bounds(choice: str | None, now: datetime | None = None) -> tuple[datetime, datetime]:
    """[start, end) of a preset range ending now (24 hours for an unknown choice)."""
    end = now or utcnow()
    return end - RANGES.get(choice or "", RANGES["24h"]), end


def day_range_bounds(choice: str | None, now: datetime | None = None) -> tuple[datetime, datetime]:
    """[start, end) of a DAY_RANGES preset: from the UTC midnight that many days before today's,
    to now (7 days for an unknown choice)."""
    end = now or utcnow()
    return midnight(end.astimezone(UTC).date() - timedelta(days=DAY_RANGES.get(choice or "", DAY_RANGES["7d"]))), end


def when(at: datetime | None) -> str:
    """A timestamp as `YYYY-MM-DD HH:MM UTC`, or a dash."""
    return f"{at:%Y-%m-%d %H:%M} UTC" if at else "—"


def section(title: str, *children: Any, element_id: str | None = None) -> html.Section:
    """A titled block of a page."""
    attrs = {"id": element_id} if element_id else {}
    return html.Section([html.H2(title), *children], className="card", **attrs)


def prefilled(page: Component, outputs: Sequence[Output], values: Sequence[Any]) -> Component:
    """`page` with each output's property already set to its value, so the page arrives drawn in
    the response that brings its layout (one round trip, not two). The callback that fills those
    outputs is registered with `prevent_initial_call=True` and runs when a filter changes."""
    wanted: dict[str, list[tuple[str, Any]]] = {}
    for output, value in zip(outputs, values, strict=True):
        wanted.setdefault(output.component_id, []).append((output.component_property, value))
    for component in [page, *page._traverse()]:  # listed before any property changes
        component_id = getattr(component, "id", None)
        if isinstance(component_id, str):
            for prop, value in wanted.pop(component_id, []):
                setattr(component, prop, value)
    if wanted:
        raise ValueError(f"the page has no component with id {sorted(wanted)}")
    return page
