"""Plotly figures for the console: titled axes with units, one look, and explicit empty states."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

import plotly.graph_objects as go

TEMPLATE = "plotly_white"
HEIGHT = 320
PALETTE = ("#b4441c", "#2a6f97", "#6a994e", "#7b2cbf", "#e09f3e", "#335c67", "#9e2a2b", "#588157")


def _base(title: str, x_title: str, y_title: str) -> go.Figure:
    figure = go.Figure()
    figure.update_layout(
        template=TEMPLATE,
        title={"text": title, "x": 0.01, "font": {"size": 15}},
        height=HEIGHT,
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
        legend={"orientation": "h", "y": -0.25},
        colorway=PALETTE,
    )
    figure.update_xaxes(title_text=x_title)
    figure.update_yaxes(title_text=y_title, rangemode="tozero")
    return figure


def empty_figure(title: str, reason: str) -> go.Figure:
    """A chart frame that says why there is nothing to draw (instead of blank axes)."""
    figure = go.Figure()
    figure.update_layout(
        template=TEMPLATE,
        title={"text": title, "x": 0.01, "font": {"size": 15}},
        height=HEIGHT,
        margin={"l": 20, "r": 20, "t": 50, "b": 20},
        xaxis={"visible": False},
        yaxis={"visible": False},
        annotations=[
            {"text": reason, "showarrow": False, "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5,
             "font": {"size": 13, "color": "#555"}}
        ],
    )
    return figure


def time_series(
    title: str, y_title: str, series: dict[str, Sequence[tuple[datetime, float]]], *, empty_reason: str
) -> go.Figure:
    """Lines over time, one per named series of (time, value) points; the empty state when none has points."""
    if not any(series.values()):
        return empty_figure(title, empty_reason)
    figure = _base(title, "time (UTC)", y_title)
    for name, points in series.items():
        if points:
            xs, ys = zip(*points, strict=True)
            figure.add_trace(go.Scatter(x=list(xs), y=list(ys), mode="lines", name=name))
    figure.update_layout(showlegend=len(series) > 1, hovermode="x unified")
    return figure


def bars(
    title: str, x_title: str, y_title: str, categories: Sequence[str], values: Sequence[float | int | Decimal],
    *, empty_reason: str, horizontal: bool = False, colors: Sequence[str] | None = None,
) -> go.Figure:
    """One bar per category; the empty state when there are none."""
    if not categories:
        return empty_figure(title, empty_reason)
    numbers = [float(v) for v in values]
    figure = _base(title, y_title if horizontal else x_title, x_title if horizontal else y_title)
    marker = {"color": list(colors)} if colors else None
    if horizontal:
        figure.add_trace(go.Bar(y=list(categories), x=numbers, orientation="h", marker=marker, text=numbers))
        figure.update_yaxes(autorange="reversed", rangemode=None)
    else:
        figure.add_trace(go.Bar(x=list(categories), y=numbers, marker=marker, text=numbers))
    figure.update_traces(texttemplate="%{text:.3~f}", textposition="auto")
    figure.update_layout(showlegend=False)
    return figure


def stacked_bars(
    title: str, x_title: str, y_title: str, stacks: dict[str, dict[str, float | Decimal]], *, empty_reason: str
) -> go.Figure:
    """Stacked bars: `stacks[series][category] = value`; the empty state when there is nothing."""
    if not any(stacks.values()):
        return empty_figure(title, empty_reason)
    figure = _base(title, x_title, y_title)
    categories = sorted({c for values in stacks.values() for c in values})
    for name, values in sorted(stacks.items()):
        figure.add_trace(go.Bar(x=categories, y=[float(values.get(c, 0)) for c in categories], name=name))
    figure.update_layout(barmode="stack", showlegend=True)
    figure.update_xaxes(type="category")  # one bar per day or name, not a continuous time axis
    return figure
