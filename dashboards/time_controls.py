"""Time controls of the live pages (fleet, node): the preset ranges with a custom date range beside
them (native date fields: Dash's DatePickerRange fails axe's ARIA rules), "last updated HH:MM:SS
UTC", and an auto-refresh toggle button (`aria-pressed`; a `dcc.Interval`, off until pressed).

A page puts `time_controls(prefix)` in its head, lists `inputs(prefix)` among its refreshing
callback's inputs (range, start date, end date, ticks), reads the window with `bounds` and writes
`updated()` into `{prefix}-updated`; `register(app, prefix)` wires the rest. Custom dates are
whole UTC days, the end day included, never past now.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import dash
from dash import Input, Output, dcc, html, no_update

from dashboards.components import pressed, range_bounds, range_picker, toggle_button
from kiln.db import utcnow

CUSTOM = "custom"
REFRESH_SECONDS = 30
AUTO = "auto"


def time_controls(prefix: str, default: str) -> html.Div:
    """The range presets plus "Custom dates", two labelled date fields (the browser's own date
    inputs: keyboard- and screen-reader-friendly), "last updated" and an auto-refresh toggle button."""
    picker = range_picker(f"{prefix}-range", default)
    picker.options = [*picker.options, {"label": "Custom dates", "value": CUSTOM}]
    today = utcnow().date().isoformat()
    return html.Div([
        picker,
        html.Div([html.Label("from", htmlFor=f"{prefix}-from"),
                  dcc.Input(id=f"{prefix}-from", type="date", max=today, className="date-field"),
                  html.Label("to", htmlFor=f"{prefix}-to"),
                  dcc.Input(id=f"{prefix}-to", type="date", max=today, className="date-field")],
                 id=f"{prefix}-dates", className="date-range", role="group", **{"aria-label": "custom dates (UTC)"}),
        html.Span(updated(), id=f"{prefix}-updated", role="status"),
        toggle_button(f"{prefix}-auto", f"auto-refresh every {REFRESH_SECONDS} s"),
        dcc.Interval(id=f"{prefix}-tick", interval=REFRESH_SECONDS * 1000, disabled=True),
    ], className="refresh-bar")


def inputs(prefix: str) -> list[Input]:
    """The inputs a refreshing callback takes, in order: preset, start date, end date, ticks."""
    return [Input(f"{prefix}-range", "value"), Input(f"{prefix}-from", "value"), Input(f"{prefix}-to", "value"),
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


def refresh_paused(clicks: int | None) -> tuple[bool, str]:
    """Auto-refresh is off until the toggle is pressed, on after an odd number of presses:
    (the interval's `disabled`, the button's `aria-pressed`)."""
    on = pressed(clicks)
    return not on, "true" if on else "false"


def register(app: dash.Dash, prefix: str) -> None:
    """Wire the page's custom dates to its range picker and its toggle to its interval."""
    app.callback(Output(f"{prefix}-range", "value"), Input(f"{prefix}-from", "value"),
                 Input(f"{prefix}-to", "value"), prevent_initial_call=True)(choose_custom)
    app.callback(Output(f"{prefix}-tick", "disabled"), Output(f"{prefix}-auto", "aria-pressed"),
                 Input(f"{prefix}-auto", "n_clicks"), prevent_initial_call=True)(refresh_paused)
