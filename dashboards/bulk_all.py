"""Acting on every node the node table matches, not only the rows ticked ("apply to all N matching nodes").

The grid holds only the pages it has seen (AG Grid's infinite row model), so it has no select-all box.
Each block of rows it is sent leaves the query that chose them (the search words and column filters)
and how many rows match in `node-grid-query`, and the switch beside the Run button names that count.
It is a button with the switch role drawn as a checkbox (Dash 4 has no html.Input, and its Checklist,
a listbox of options wrapping inputs, fails axe's nested-interactive); each press flips it and
`bulk-all-on` keeps whether it is on (dashboards/assets/node_table.js). On, a bulk action is for the
nodes that query matches, resolved on the server when the action starts by
`dashboards.node_grid.matching_names` (the code that answers the grid, so the same set as the table's
pages) among the nodes the caller may see. From `CONFIRM_FROM` nodes it first asks the operator to
confirm the action and the count, and starts only if the count is still the one confirmed.
"""

from __future__ import annotations

from typing import Any

from dash import dcc, html
from sqlmodel import Session

from dashboards.node_grid import matching_names
from fleet.models import Node
from fleet.nodes import list_nodes
from kiln.auth import Principal

CONFIRM_FROM = 25  # nodes: fewer start at once, as ticked rows do
NAMES_PER_QUERY = 1000  # bound names per `list_nodes` query: 10,000 at once cost seconds to compile and send


def control() -> html.Div:
    """The "apply to all matching nodes" box, its confirmation dialog, and the grid's query it acts on."""
    return html.Div([
        html.Button(label(None), id="bulk-all", n_clicks=0, role="switch", className="switch",
                    **{"aria-checked": "false"}),
        dcc.Store(id="bulk-all-on", data=False),
        dcc.ConfirmDialog(id="bulk-confirm"),
        dcc.Store(id="node-grid-query"),
        dcc.Store(id="bulk-pending"),
    ], className="bulk-all")


def label(query: dict[str, Any] | None) -> str:
    """The box's words: how many nodes the table's current search and filters match."""
    if not query:
        return "Apply to all matching nodes"
    count, narrowed = query["count"], bool(query.get("search") or query.get("filterModel"))
    return f"Apply to all {count:,} {'matching ' if narrowed else ''}node{'' if count == 1 else 's'}"


def query_of(request: dict[str, Any], search: str | None, count: int) -> tuple[dict[str, Any], str]:
    """The query of a block the grid asked for (`getRowsRequest` and the search words) with its count of
    matching rows, for `node-grid-query`, and the box's label naming that count."""
    query = {"search": search or "", "filterModel": request.get("filterModel") or {}, "count": count}
    return query, label(query)


def stale(query: dict[str, Any] | None, search: str | None) -> bool:
    """Whether the search box says other words than the grid's last block was sent for (its rows are on their way)."""
    return query is None or (search or "").strip() != (query.get("search") or "").strip()


def target_nodes(session: Session, principal: Principal, selected: list[dict] | None, every: bool | None,
                 query: dict[str, Any] | None) -> list[Node]:
    """The nodes a bulk action is for, among those the caller may see, in name order: every node the grid's
    query matches when the box is ticked, the ticked rows otherwise."""
    if every:
        names = matching_names(session, principal, query.get("search"), query.get("filterModel")) if query else []
    else:
        names = sorted(row["name"] for row in selected or [])
    nodes: list[Node] = []
    for at in range(0, len(names), NAMES_PER_QUERY):
        nodes += list_nodes(session, principal, names=names[at:at + NAMES_PER_QUERY])
    return nodes


def confirmation(every: bool | None, count: int, action: str, verb: str, confirmed: bool,
                 pending: dict[str, Any] | None) -> str | None:
    """The question to ask before `verb` (the action's words) runs on all `count` matching nodes, or None
    when it may start: fewer than CONFIRM_FROM nodes, rows ticked one by one, or the operator has just
    confirmed this action on this count."""
    if not every or count < CONFIRM_FROM:
        return None
    if confirmed and pending == {"action": action, "count": count}:
        return None
    again = "The matching nodes changed since you confirmed. " if confirmed and pending else ""
    return f"{again}{verb} on all {count:,} nodes matching the table's search and filters?"


def cancelled(_: int | None) -> str:
    """The message once the operator declines the confirmation."""
    return "Cancelled: nothing was started."
