"""The node table's rows, one block at a time, for AG Grid's infinite row model (dashboards/bulk.py).

The grid asks for rows `startRow`..`endRow` with its sort and column filters (`getRowsRequest`),
plus the search box's words; the answer is those rows and how many match (`getRowsResponse`).
Every row comes from `dashboards.fleet_data.node_rows`, so a tenant's table holds only their
nodes, as before.

- The common case, by name with no filter (the page as it opens, and paging through it): SQL
  picks the block's node ids in name order and only those rows are built (milliseconds at
  10,000 nodes).
- Sorting by, filtering on or searching any other column: every visible row is built (about
  half a second at 10,000 nodes), filtered and sorted as AG Grid would (`dashboards.server_grid`), and
  kept there per caller and query so the next pages are instant; a finished bulk action forgets it.
"""

from __future__ import annotations

import json
from typing import Any

from sqlmodel import Session, func, select

from dashboards import server_grid
from dashboards.fleet_data import node_rows
from dashboards.server_grid import matches
from fleet.models import Node
from fleet.nodes import visible
from kiln.auth import Principal

LINK = {"link": "name"}  # the link column shows, filters and sorts by the node's name
SEARCHED = ("name", "provision_state", "power_state", "maintenance", "health", "power_watts", "max_temp_c", "gpus",
            "gpu_model", "rack", "vdc", "tenant", "last_error")


def rows_block(session: Session, principal: Principal, request: dict[str, Any], search: str | None = None) -> dict[str, Any]:
    """The rows `request` (AG Grid's getRowsRequest) asks for, and how many rows match in all."""
    start = max(0, int(request.get("startRow") or 0))
    end = max(start, int(request.get("endRow") or start + 50))
    sort_model, filter_model = request.get("sortModel") or [], request.get("filterModel") or {}
    words = (search or "").lower().split()
    if not words and not filter_model and all(s.get("colId") in ("link", "name") for s in sort_model):
        descending = bool(sort_model) and sort_model[0].get("sort") == "desc"
        order = Node.name.desc() if descending else Node.name  # type: ignore[attr-defined]
        names = list(session.exec(visible(select(Node.id, Node.name), principal).order_by(order).offset(start).limit(end - start)))
        built = {row["name"]: row for row in node_rows(session, principal, [i for i, _ in names])} if names else {}
        total = session.exec(visible(select(func.count()).select_from(Node), principal)).one()
        return {"rowData": [built[name] for _, name in names if name in built], "rowCount": total}
    rows = _matching(session, principal, words, filter_model, sort_model)
    return {"rowData": rows[start:end], "rowCount": len(rows)}


def matching_names(session: Session, principal: Principal, search: str | None, filter_model: dict | None) -> list[str]:
    """The names of every node the table shows for `search` and `filter_model` (all its pages, not one), in name
    order: what "apply to all matching nodes" acts on, matched by the code that answers the grid."""
    words, filter_model = (search or "").lower().split(), filter_model or {}
    if not words and not filter_model:  # rows_block's unfiltered case: every visible node
        return list(session.exec(visible(select(Node.name), principal).order_by(Node.name)))
    return sorted(row["name"] for row in _matching(session, principal, words, filter_model, []))


def forget() -> None:
    """Drop every kept query result (the nodes changed)."""
    server_grid.forget()


def _matching(session: Session, principal: Principal, words: list[str], filter_model: dict, sort_model: list) -> list[dict]:
    key = ("nodes", server_grid.caller_key(principal), tuple(words), json.dumps(filter_model, sort_keys=True),
           json.dumps(sort_model, sort_keys=True))

    def build() -> list[dict]:
        rows = [row for row in node_rows(session, principal) if _searched(row, words) and matches(row, filter_model, LINK)]
        return server_grid.sort_rows(rows, sort_model, set(), LINK)

    return server_grid.kept(key, build)


def _searched(row: dict[str, Any], words: list[str]) -> bool:
    """AG Grid's quick filter: every word is in some column's value (case-insensitive)."""
    if not words:
        return True
    text = " ".join("" if row.get(field) is None else str(row[field]) for field in SEARCHED).lower()
    return all(word in text for word in words)
