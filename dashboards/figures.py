"""Plotly figures for the console: titled axes with units, one look, and explicit empty states.

Figures are plain plotly.js JSON (`{"data": [...], "layout": {...}}`), which dcc.Graph takes
as is: building plotly graph-object figures validates every property against the schema
and deep-copies the template each time, ~50 ms a figure, most of a page's server time. Trace
types are limited to those of the plotly.js basic bundle the console loads (see `trace`).
Each chart's text alternative (a labelled figure with a visually hidden table) is built in the
browser from the figure as drawn (`dashboards/assets/a11y.js`), so it follows every redraw.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from functools import cache
from typing import Any

Figure = dict[str, Any]

HEIGHT = 320
PALETTE = ("#b4441c", "#2a6f97", "#6a994e", "#7b2cbf", "#e09f3e", "#335c67", "#9e2a2b", "#588157")
# The trace types of dashboards/assets/vendor/plotly-basic.min.js (scripts/vendor_plotly.py).
BASIC_TRACES = frozenset({"scatter", "bar", "pie"})
# Wide enough for plotly's own tick labels (SI-suffixed numbers, "150k") and the axes' titles, so
# that automargin has nothing to widen on a first draw (see fitted_frame).
MARGIN = {"l": 72, "r": 30, "t": 50, "b": 58}
DATE_AXIS_BOTTOM = 78  # a time axis's labels take two lines ("21:00" over "Dec 6, 2026")
DATE_AXIS_RIGHT = 48  # a day's label ("Dec 8, 2026") under a tick at the plot's right edge reaches half its width past it
DATE_TICKS = 6  # at most: seven or more rotate their labels in a half-width chart, and rotated labels need more room
MAX_LEFT = 340  # category labels longer than this leave the rest to automargin
MAX_SLANTED = 160  # the most room under a plot for slanted category labels (automargin takes longer ones)
CHAR_PX = 8  # a generous mean width of one character of 12-px axis or legend text in the browser's sans font
CHART_WIDTH = 640  # the width of a half-width chart (grid-2) at the console's usual window width
# A legend row's height, the legend's own padding and gap under the axis title, an entry's width besides its text
# (symbol, gaps), all in pixels as Chromium draws them.
LEGEND_ROW, LEGEND_PAD, LEGEND_SYMBOL = 20, 30, 46
# The page's surface shows through, light or dark (console.css recolours axis text and grid for dark mode).
TRANSPARENT = "rgba(0,0,0,0)"
WARNING_COLOR, LIMIT_COLOR, OK_COLOR = "#e09f3e", "#9e2a2b", "#6a994e"
SHARE_BARS_SHOWN = 25  # bars in a share chart; more would be a wall of bars in a page-high chart
STACKS_SHOWN = 8  # series in a stacked chart (the rest summed as one): a legend of 20 rows pushed the chart off its card
# Bars in a category chart with `most` (the rest summed as one): 200 VDCs drawn as 200 labelled bars were ~0.1 s of
# the usage page's drawing at 10,000 nodes, and unreadable.
BARS_SHOWN = 15


@cache
def template() -> dict[str, Any]:
    """Plotly's `plotly_white` template as JSON, trimmed to the trace types the console draws."""
    import plotly.io as pio

    full = pio.templates["plotly_white"].to_plotly_json()
    return {"layout": full["layout"], "data": {kind: full["data"][kind] for kind in BASIC_TRACES if kind in full["data"]}}


def trace(kind: str, **properties: Any) -> dict[str, Any]:
    """One trace of a type the console's plotly.js bundle can draw."""
    if kind not in BASIC_TRACES:
        raise ValueError(f"trace type {kind!r} is not in the console's plotly.js basic bundle ({sorted(BASIC_TRACES)})")
    return {"type": kind, **properties}


def chart(title: str, data: list[dict[str, Any]], *, x_title: str = "", y_title: str = "", xaxis: dict | None = None,
          yaxis: dict | None = None, **layout: Any) -> Figure:
    """A figure with the console's look: title, fixed plot height, palette, titled axes starting at
    zero, transparent backgrounds (readable in the console's light and dark schemes), and margins
    and a legend laid out for what it draws (`fitted_frame`) unless `margin` is given."""
    xaxis = {"title": {"text": x_title}, **(xaxis or {})}
    yaxis = {"title": {"text": y_title}, "rangemode": "tozero", **(yaxis or {})}
    frame = {} if "margin" in layout else fitted_frame(data, xaxis, yaxis, layout.get("showlegend", len(data) > 1),
                                                        layout.get("height", HEIGHT))
    return {"data": data, "layout": {
        "template": template(), "title": {"text": title, "x": 0.01, "font": {"size": 15}}, "height": HEIGHT,
        "paper_bgcolor": TRANSPARENT, "plot_bgcolor": TRANSPARENT,
        "margin": MARGIN, "colorway": list(PALETTE), "xaxis": xaxis, "yaxis": yaxis, **layout, **frame,
    }}


def fitted_frame(data: list[dict[str, Any]], xaxis: dict, yaxis: dict, legend: bool, height: int) -> dict[str, Any]:
    """Margins wide enough for the tick labels, axis titles and legend the chart draws, with the
    legend's rows added to the figure's height under the plot (a legend of eight GPUs had squeezed
    the plot to a third of its height and covered the axis title). Plotly's automargin (in the
    template) widens a margin that is too narrow only after a first full draw, then draws the chart
    again: with the old fixed margins every chart but the empty ones was drawn twice."""
    left = MARGIN["l"]
    categories = [str(label) for trace_ in data if trace_.get("orientation") == "h" for label in trace_.get("y", [])]
    if categories:  # horizontal bars: the category labels stand left of the plot
        left = min(max(left, text_px(categories) + (48 if yaxis["title"]["text"] else 20)), MAX_LEFT)
    visible = xaxis.get("visible", True)
    dated = visible and xaxis.get("type") == "date"
    bottom = DATE_AXIS_BOTTOM if dated else MARGIN["b"] if visible else 20
    right = DATE_AXIS_RIGHT if dated else MARGIN["r"]
    labels = {str(label) for trace_ in data if trace_.get("orientation") != "h" and trace_.get("type") == "bar"
              for label in trace_.get("x", [])}
    if labels and len(labels) * (text_px(labels) + 8) > 2 * CHART_WIDTH - left - right:
        # category labels too many to stand side by side even in a full-width chart: plotly slants or stands
        # them up; room for them upright (a half-width chart slanting fewer still widens on its first draw)
        bottom += min(text_px(labels), MAX_SLANTED)
    frame: dict[str, Any] = {"margin": {**MARGIN, "l": left, "r": right, "b": bottom}}
    names = [str(trace_["name"]) for trace_ in data if trace_.get("name") and trace_.get("showlegend", True)]
    if legend and names:
        rows = legend_rows(names, CHART_WIDTH - left - right)
        extra = rows * LEGEND_ROW + LEGEND_PAD
        frame["margin"]["b"] = bottom + extra
        frame["height"] = height + extra
        plot_height = height - MARGIN["t"] - bottom
        # the legend's top just under the x axis's title, in plot heights below the plot
        frame["legend"] = {"orientation": "h", "yanchor": "top", "y": -(bottom - 4) / plot_height, "x": 0}
    return frame


def text_px(labels: Iterable[str]) -> int:
    """The estimated width in pixels of the longest of these labels (`CHAR_PX` a character)."""
    return round(CHAR_PX * max(map(len, labels)))


def legend_rows(names: Sequence[str], width: int) -> int:
    """Rows a horizontal legend of these entries takes in `width` pixels, as plotly.js lays it out:
    one row when every entry fits side by side, else a grid whose columns are as wide as the widest
    entry (widths estimated generously from the names' lengths)."""
    entries = [LEGEND_SYMBOL + CHAR_PX * len(name) for name in names]
    if sum(entries) <= width:
        return 1
    per_row = max(1, int(width // max(entries)))
    return -(-len(entries) // per_row)


def empty_figure(title: str, reason: str) -> Figure:
    """A chart frame that says why there is nothing to draw (instead of blank axes)."""
    return chart(title, [], xaxis={"visible": False}, yaxis={"visible": False},
                 margin={"l": 20, "r": 20, "t": 50, "b": 20},
                 annotations=[{"text": reason, "showarrow": False, "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5,
                               "font": {"size": 13, "color": "#555"}}])


def time_series(
    title: str, y_title: str, series: dict[str, Sequence[tuple[datetime, float]]], *, empty_reason: str
) -> Figure:
    """Lines over time, one per named series of (time, value) points; the empty state when none has points."""
    if not any(series.values()):
        return empty_figure(title, empty_reason)
    lines = [trace("scatter", x=[x for x, _ in points], y=[float(y) for _, y in points], mode="lines", name=name)
             for name, points in series.items() if points]
    return chart(title, lines, x_title="time (UTC)", y_title=y_title, xaxis={"type": "date", "nticks": DATE_TICKS},
                 showlegend=len(series) > 1, hovermode="x unified")


def time_markers(
    title: str, y_title: str, series: dict[str, Sequence[tuple[datetime, float, str]]], *,
    window: tuple[datetime, datetime], empty_reason: str
) -> Figure:
    """Events as labelled markers over the time `window`, one trace per named series of (time, value,
    label) points (an XID timeline: the code at the poll that saw it); the empty state when none has points."""
    if not any(series.values()):
        return empty_figure(title, empty_reason)
    marks = [trace("scatter", x=[x for x, _, _ in points], y=[float(y) for _, y, _ in points],
                   text=[label for _, _, label in points], mode="markers+text", textposition="top left", cliponaxis=False,
                   marker={"size": 11, "symbol": "diamond"}, name=name)
             for name, points in series.items() if points]
    top = max(float(y) for points in series.values() for _, y, _ in points)
    return chart(title, marks, x_title="time (UTC)", y_title=y_title,
                 xaxis={"type": "date", "nticks": DATE_TICKS, "range": [t.isoformat() for t in window]},
                 yaxis={"range": [0, top * 1.25 + 1]},
                 showlegend=True, hovermode="closest")


def largest(totals: dict[str, Any], most: int) -> tuple[list[str], list[str]]:
    """The names of the `most - 1` largest totals, largest first (ties by name), and the rest's:
    what a chart of at most `most` bars or series draws, and what it sums as one "other"."""
    ranked = sorted(totals, key=lambda name: (-totals[name], name))
    return ranked[:most - 1], ranked[most - 1:]


def bars(
    title: str, x_title: str, y_title: str, categories: Sequence[str], values: Sequence[float | int | Decimal],
    *, empty_reason: str, horizontal: bool = False, colors: Sequence[str] | None = None, most: int | None = None,
) -> Figure:
    """One bar per category; the empty state when there are none. `x_title` names the categories'
    axis and `y_title` the values' axis, whichever way the bars lie (`horizontal`: categories down
    the y axis, values along the x axis). With `most`, more categories than that are drawn as the
    `most - 1` largest, largest first, and one "other N" bar summing the rest (the title says so):
    the bars' total stays exact."""
    if not categories:
        return empty_figure(title, empty_reason)
    if most is not None and len(categories) > most:
        if colors:
            raise ValueError("bars: `most` sums categories into one bar, which has no colour of its own")
        totals = dict(zip(categories, values, strict=True))
        kept, rest = largest(totals, most)
        title = f"{title}: the {most - 1} largest of {len(totals)}"
        categories = [*kept, f"other {len(rest)}"]
        values = [*(totals[name] for name in kept), sum(totals[name] for name in rest)]
    numbers = [float(v) for v in values]
    look = {"text": numbers, "texttemplate": "%{text:.3~f}", "textposition": "auto"}
    if colors:
        look["marker"] = {"color": list(colors)}
    if horizontal:
        return chart(title, [trace("bar", y=list(categories), x=numbers, orientation="h", **look)],
                     x_title=y_title, y_title=x_title,
                     yaxis={"type": "category", "autorange": "reversed", "rangemode": "normal"}, showlegend=False)
    # type=category: plotly would read day labels ("06-30") as dates and draw a time axis of one instant
    return chart(title, [trace("bar", x=list(categories), y=numbers, **look)], x_title=x_title, y_title=y_title,
                 xaxis={"type": "category"}, showlegend=False)


def stacked_bars(
    title: str, x_title: str, y_title: str, stacks: dict[str, dict[str, float | Decimal]], *, empty_reason: str,
    most: int | None = None,
) -> Figure:
    """Stacked bars: `stacks[series][category] = value`; the empty state when there is nothing.
    With `most`, more series than that are drawn as the `most - 1` largest and one "other" series
    summing the rest (the title says so): each stack's height stays exact, the legend readable."""
    if not any(stacks.values()):
        return empty_figure(title, empty_reason)
    if most is not None and len(stacks) > most:
        kept, others = largest({name: sum(values.values()) for name, values in stacks.items()}, most)
        rest: dict[str, float | Decimal] = {}
        for name in others:
            for category, value in stacks[name].items():
                rest[category] = rest.get(category, 0) + value
        title = f"{title}: the {most - 1} largest of {len(stacks)}"
        stacks = {**{name: stacks[name] for name in kept}, f"other {len(others)}": rest}
    categories = sorted({c for values in stacks.values() for c in values})
    data = [trace("bar", x=categories, y=[float(values.get(c, 0)) for c in categories], name=name)
            for name, values in sorted(stacks.items())]
    # type=category: one bar per day or name, not a continuous time axis
    return chart(title, data, x_title=x_title, y_title=y_title, xaxis={"type": "category"}, barmode="stack",
                 showlegend=True)


def grouped_bars(title: str, x_title: str, y_title: str, categories: Sequence[str],
                 groups: dict[str, Sequence[float | Decimal]]) -> Figure:
    """Side-by-side bars per category, one colour per named group."""
    data = [trace("bar", x=list(categories), y=[float(v) for v in values], name=name) for name, values in groups.items()]
    return chart(title, data, x_title=x_title, y_title=y_title, xaxis={"type": "category"}, barmode="group")


def share_bars(title: str, x_title: str, labels: Sequence[str], shares: Sequence[float], text: Sequence[str],
               thresholds: Sequence[float], *, warn_at: Sequence[float], limit: int = SHARE_BARS_SHOWN,
               of: int | None = None) -> Figure:
    """Horizontal bars of shares in percent (green, amber from each bar's `warn_at`, red from
    100 %), one dashed line per threshold: quota use, budget spend. Only the `limit` largest
    shares are drawn (the title says so): the full list is in the page's table. `of`: how many
    shares there are in all, when the caller passes only the largest."""
    bars_ = sorted(zip(shares, labels, text, warn_at, strict=True), key=lambda bar: -bar[0])
    total = max(len(bars_), of or 0)
    bars_ = bars_[:limit]
    if total > len(bars_):
        title = f"{title}: the {len(bars_)} highest of {total}"
    shares, labels, text, warn_at = (list(column) for column in zip(*bars_, strict=True))
    colors = [LIMIT_COLOR if s >= 100 else WARNING_COLOR if s >= w else OK_COLOR for s, w in zip(shares, warn_at, strict=True)]
    bar = trace("bar", y=labels, x=shares, orientation="h", marker={"color": colors}, text=text, textposition="auto")
    shapes, notes = [], []
    for at in sorted(set(thresholds)):
        color = LIMIT_COLOR if at >= 100 else WARNING_COLOR
        shapes.append({"type": "line", "xref": "x", "x0": at, "x1": at, "yref": "y domain", "y0": 0, "y1": 1,
                       "line": {"dash": "dash" if at >= 100 else "dot", "color": color}})
        notes.append({"text": f"{at:g} %", "x": at, "xref": "x", "y": 1, "yref": "y domain", "showarrow": False,
                      "xanchor": "left", "yanchor": "bottom", "font": {"color": color}})
    return chart(title, [bar], x_title=x_title, xaxis={"range": [0, max(110.0, *shares) * 1.05]},
                 yaxis={"type": "category", "autorange": "reversed", "rangemode": "normal"},
                 height=max(HEIGHT - 80, 40 * len(labels) + 110),
                 showlegend=False, shapes=shapes, annotations=notes)
