"""Long lists paged, sorted and filtered on the server, for AG Grid's infinite row model (as the
node table does, `dashboards.node_grid`): the browser receives one block of rows at a time instead
of every row of the list (2,000 bills, 2,000 budgets and 4,000 alerts were 1.6 MB of JSON to parse
and draw on the costs page).

- `paged_grid`: the grid, with no rows in it; its `getRowsRequest` asks the page's callback for a block.
- `block`: one block of a list built on the server, filtered and sorted as AG Grid would.
- `kept`: a list kept for `KEEP_S` per caller and query, so that the blocks the grid asks for
  right after the page's callback read the list (and the pages after them) are not read again. The
  callback keeps what builds the rows, not the rows: they are built when the grid first asks
  (formatting 2,000 budgets' and bills' cells was a tenth of a second of the callback).
- `matches`: AG Grid's text and number column filters (the node table's too).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

import dash_ag_grid as dag
from dash import html

from dashboards.components import GRID_COLUMN_DEFAULTS, empty_state, grid_column_defs
from kiln.auth import Principal

KEEP_S = 60.0
KEPT_LISTS = 32
PAGE_SIZE = 50
Rows = list[dict[str, Any]]
_kept: dict[tuple, tuple[float, Rows | Callable[[], Rows]]] = {}
_lock = threading.Lock()


def paged_grid(element_id: str, columns: Sequence[dict[str, Any]], count: int, *, empty: str,
               max_height: int = 440) -> html.Div:
    """A sortable, filterable table of `count` rows that asks for them a block at a time (the grid's
    id is `element_id`-grid); the empty-state sentence when there are none."""
    if not count:
        return html.Div(empty_state(empty), id=element_id)
    shown = min(count, PAGE_SIZE)
    grid = dag.AgGrid(
        id=f"{element_id}-grid", rowModelType="infinite", columnDefs=grid_column_defs(columns),
        defaultColDef=GRID_COLUMN_DEFAULTS,
        dashGridOptions={"animateRows": False, "pagination": count > PAGE_SIZE, "paginationPageSize": PAGE_SIZE,
                         "cacheBlockSize": PAGE_SIZE, "maxBlocksInCache": 10, "infiniteInitialRowCount": shown},
        style={"height": f"{min(max_height, 60 + 42 * shown + (48 if count > PAGE_SIZE else 0))}px"},
        className="ag-theme-quartz",
    )
    return html.Div(grid, id=element_id, className="grid-wrap")


def caller_key(principal: Principal) -> tuple:
    """Who asks, as a key part: a list built for one caller is never handed to another."""
    return principal.username, principal.role, tuple(sorted(principal.tenant_ids))


def keep(key: tuple, rows: Rows | Callable[[], Rows]) -> None:
    """Keep `rows` (a whole list for the caller and query in `key`, or what builds it when it is
    first asked for) for `KEEP_S`."""
    now = time.monotonic()
    with _lock:
        for stale in [k for k, (at, _) in _kept.items() if now - at >= KEEP_S]:
            del _kept[stale]
        while len(_kept) >= KEPT_LISTS:
            del _kept[next(iter(_kept))]  # the oldest
        _kept[key] = (now, rows)


def kept(key: tuple, build: Callable[[], Rows]) -> Rows:
    """The list kept under `key` (built now if what was kept builds it), or `build()` (then kept)."""
    with _lock:
        found = _kept.get(key)
    if found and time.monotonic() - found[0] < KEEP_S:
        if not callable(found[1]):
            return found[1]
        rows = found[1]()
        with _lock:
            if _kept.get(key) is found:  # still the same (neither replaced nor dropped meanwhile)
                _kept[key] = (found[0], rows)
        return rows
    rows = build()
    keep(key, rows)
    return rows


def forget() -> None:
    """Drop every kept list."""
    with _lock:
        _kept.clear()


def plain_request(request: dict[str, Any]) -> bool:
    """Whether the grid asks for rows in the list's own order, unfiltered (SQL can page those)."""
    return not request.get("sortModel") and not request.get("filterModel")


def bounds(request: dict[str, Any]) -> tuple[int, int]:
    """The first row and the row after the last that `request` asks for."""
    start = max(0, int(request.get("startRow") or 0))
    return start, max(start, int(request.get("endRow") or start + PAGE_SIZE))


def block(rows: list[dict[str, Any]], request: dict[str, Any], numeric: Iterable[str] = (),
          sort_fields: dict[str, str] | None = None) -> dict[str, Any]:
    """The rows `request` (AG Grid's getRowsRequest) asks for, filtered and sorted, and how many
    match. `numeric` columns hold decimal strings and sort as numbers; `sort_fields` maps a column
    to the field it sorts by (a link column by its id)."""
    start, end = bounds(request)
    filter_model = request.get("filterModel") or {}
    matching = [row for row in rows if matches(row, filter_model)] if filter_model else rows
    ordered = sort_rows(matching, request.get("sortModel") or [], set(numeric), sort_fields or {})
    return {"rowData": ordered[start:end], "rowCount": len(ordered)}


def sort_rows(rows: list[dict[str, Any]], sort_model: list[dict[str, Any]], numeric: set[str],
              sort_fields: dict[str, str]) -> list[dict[str, Any]]:
    """`rows` sorted as AG Grid's `sortModel` says (empty values first ascending, last descending)."""
    for item in reversed(sort_model):  # stable sorts, least significant first
        column = item.get("colId")
        field = sort_fields.get(column, column)
        key = _number if column in numeric or field in numeric else (lambda value: value)
        present = [r for r in rows if r.get(field) not in (None, "")]
        present.sort(key=lambda r: key(r[field]), reverse=item.get("sort") == "desc")
        missing = [r for r in rows if r.get(field) in (None, "")]
        rows = missing + present if item.get("sort") != "desc" else present + missing
    return rows


def _number(value: Any) -> Decimal:
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return Decimal(0)


def matches(row: dict[str, Any], filter_model: dict[str, Any], aliases: dict[str, str] | None = None) -> bool:
    """Whether `row` passes every column filter of AG Grid's `filterModel` (`aliases`: a column
    whose value is another field's)."""
    for column, model in filter_model.items():
        value = row.get((aliases or {}).get(column, column))
        if "conditions" in model:
            results = [condition(value, c) for c in model["conditions"]]
            if not (all(results) if model.get("operator", "AND") == "AND" else any(results)):
                return False
        elif not condition(value, model):
            return False
    return True


def condition(value: Any, spec: dict[str, Any]) -> bool:
    """One condition of AG Grid's text or number filter."""
    kind, wanted = spec.get("type", "contains"), spec.get("filter")
    blank = value is None or value == ""
    if kind in ("blank", "notBlank"):
        return blank == (kind == "blank")
    if spec.get("filterType") == "number":
        if blank or wanted is None:
            return False
        number, low, high = float(value), float(wanted), spec.get("filterTo")
        return {"equals": number == low, "notEqual": number != low, "greaterThan": number > low,
                "greaterThanOrEqual": number >= low, "lessThan": number < low, "lessThanOrEqual": number <= low,
                "inRange": high is not None and low <= number <= float(high)}.get(kind, True)
    text, wanted = ("" if value is None else str(value)).lower(), str(wanted or "").lower()
    return {"contains": wanted in text, "notContains": wanted not in text, "equals": text == wanted,
            "notEqual": text != wanted, "startsWith": text.startswith(wanted), "endsWith": text.endswith(wanted)}.get(kind, True)
