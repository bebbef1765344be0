"""Time controls of the live pages (fleet, node): the preset ranges with a custom date range beside
them, "last updated HH:MM:SS UTC", and an auto-refresh toggle (a `dcc.Interval`, off until asked).

A page puts `time_controls(prefix)` in its head, lists `inputs(prefix)` among its refreshing
callback's inputs (range, start date, end date, ticks), reads the window with `bounds` and writes
`updated()` into `{prefix}-updated`; `register(app, prefix)` wires the rest. Custom dates are
whole UTC days, the end day included, never past now.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import dash
from dash import Input, Output, dcc, html, no_update

from dashboards.components import range_bounds, range_picker
from kiln.db import utcnow

CUSTOM = "custom"
REFRESH_SECONDS = 30
AUTO = "auto"


def time_controls(prefix: str, default: str) -> html.Div:
    """The range presets plus "Custom dates", a date range picker, "last updated" and auto-refresh."""
    picker = range_picker(f"{prefix}-range", default)
    picker.options = [*picker.options, {"label": "Custom dates", "value": CUSTOM}]
    return html.Div([
        picker,
        dcc.DatePickerRange(id=f"{prefix}-dates", start_date_id=f"{prefix}-from", end_date_id=f"{prefix}-to",
                            display_format="YYYY-MM-DD", max_date_allowed=utcnow().date(), minimum_nights=0, clearable=True,
                            start_date_placeholder_text="from", end_date_placeholder_text="to"),
        html.Span(updated(), id=f"{prefix}-updated", role="status"),
        dcc.Checklist(id=f"{prefix}-auto", options=[{"label": f" auto-refresh every {REFRESH_SECONDS} s", "value": AUTO}],
                      value=[], inline=True),
        dcc.Interval(id=f"{prefix}-tick", interval=REFRESH_SECONDS * 1000, disabled=True),
    ], className="refresh-bar")


def inputs(prefix: str) -> list[Input]:
    """The inputs a refreshing callback takes, in order: preset, start date, end date, ticks."""
    return [Input(f"{prefix}-range", "value"), Input(f"{prefix}-dates", "start_date"), Input(f"{prefix}-dates", "end_date"),
            Input(f"{prefix}-tick", "n_intervals")]


def _day(value: str) -> datetime:
    return datetime.combine(date.fromisoformat(value[:10]), time(), tzinfo=UTC)


def bounds(choice: str | None, start_date: str | None, end_date: str | None,
           now: datetime | None = None) -> tuple[datetime, datetime]:
    """[start, end) of the chosen window: the custom days (end day included, never past now) when
    "Custom dates" is chosen with both dates, the preset ending now otherwise."""
    now = now or utcnow()
    if choice == CUSTOM and start_date and end_date:
        first, last = sorted((_day(start_date), _day(end_date)))
        return first, max(first, min(last + timedelta(days=1), now))
    return range_bounds(None if choice == CUSTOM else choice, now)


def updated(now: datetime | None = None) -> str:
    """"last updated HH:MM:SS UTC" for the moment the figures were read."""
    return f"last updated {(now or utcnow()):%H:%M:%S} UTC"


def choose_custom(start_date: str | None, end_date: str | None) -> str:
    """Picking both dates selects "Custom dates" in the range picker."""
    return CUSTOM if start_date and end_date else no_update


def refresh_paused(value: list[str] | None) -> bool:
    """The interval is disabled unless auto-refresh is ticked."""
    return AUTO not in (value or [])


def register(app: dash.Dash, prefix: str) -> None:
    """Wire the page's custom dates to its range picker and its toggle to its interval."""
    app.callback(Output(f"{prefix}-range", "value"), Input(f"{prefix}-dates", "start_date"),
                 Input(f"{prefix}-dates", "end_date"), prevent_initial_call=True)(choose_custom)
    app.callback(Output(f"{prefix}-tick", "disabled"), Input(f"{prefix}-auto", "value"),
                 prevent_initial_call=True)(refresh_paused)
