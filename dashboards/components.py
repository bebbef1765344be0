"""Small layout pieces shared by the pages: 403 panel, empty states, stat cards, tables, range picker."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from dash import dcc, html

from kiln.auth import Principal
from kiln.db import utcnow
from kiln.roles import Role

RANGES = {"6h": timedelta(hours=6), "24h": timedelta(hours=24), "7d": timedelta(days=7), "30d": timedelta(days=30)}
RANGE_LABELS = {"6h": "Last 6 hours", "24h": "Last 24 hours", "7d": "Last 7 days", "30d": "Last 30 days"}


def forbidden(principal: Principal, what: str) -> html.Div:
    """The 403 panel a caller sees on a page their role may not open."""
    return html.Div(
        [
            html.H1("403 — Forbidden", id="forbidden-title"),
            html.P(f"{what} is for infra admins; you are signed in as {principal.username} ({principal.role.value})."),
            html.A("Back to your overview", href="/"),
        ],
        className="forbidden",
        id="forbidden",
    )


def allowed(principal: Principal, roles: Iterable[Role]) -> bool:
    """Whether the caller's role is one of `roles`."""
    return principal.role in set(roles)


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


def range_picker(element_id: str, default: str = "24h") -> dcc.Dropdown:
    """The time range picker: presets ending now."""
    return dcc.Dropdown(
        id=element_id,
        options=[{"label": RANGE_LABELS[k], "value": k} for k in RANGES],
        value=default,
        clearable=False,
        className="range-picker",
    )


def range_bounds(choice: str | None, now: datetime | None = None) -> tuple[datetime, datetime]:
    """[start, end) of a preset range ending now (24 hours for an unknown choice)."""
    end = now or utcnow()
    return end - RANGES.get(choice or "", RANGES["24h"]), end


def when(at: datetime | None) -> str:
    """A timestamp as `YYYY-MM-DD HH:MM UTC`, or a dash."""
    return f"{at:%Y-%m-%d %H:%M} UTC" if at else "—"


def section(title: str, *children: Any, element_id: str | None = None) -> html.Section:
    """A titled block of a page."""
    attrs = {"id": element_id} if element_id else {}
    return html.Section([html.H2(title), *children], className="card", **attrs)
