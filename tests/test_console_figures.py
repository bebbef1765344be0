"""The console's figures and the vendored plotly.js basic bundle that draws them (same version as
the plotly package, and enough for every chart)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from plotly.offline import get_plotlyjs_version

from dashboards.figures import (BASIC_TRACES, LEGEND_PAD, LEGEND_ROW, MAX_LEFT, bars, legend_rows, share_bars, stacked_bars,
                                 time_markers, time_series, trace)

DASHBOARDS = Path(__file__).parents[1] / "dashboards"
BUNDLE = DASHBOARDS / "assets" / "vendor" / "plotly-basic.min.js"


def test_the_vendored_bundle_is_the_basic_build_of_the_installed_plotly_js() -> None:
    header = BUNDLE.read_text(encoding="utf-8")[:200]
    match = re.search(r"plotly\.js \(basic - minified\) v(\S+)", header)
    assert match, f"{BUNDLE} is not plotly.js's basic bundle: run `python scripts/vendor_plotly.py`"
    assert match.group(1) == get_plotlyjs_version(), "plotly was upgraded: run `python scripts/vendor_plotly.py`"
    assert (BUNDLE.parent / "plotly-basic.LICENSE.txt").read_text().startswith("MIT License")


def test_figures_are_limited_to_the_basic_bundles_trace_types() -> None:
    assert BASIC_TRACES == {"scatter", "bar", "pie"}  # what plotly.js-basic-dist contains
    assert bars("t", "x", "y", ["a"], [Decimal("1.5")], empty_reason="none")["data"][0]["type"] == "bar"
    with pytest.raises(ValueError, match="not in the console's plotly.js basic bundle"):
        trace("heatmap", z=[[1]])


def test_console_code_builds_traces_only_through_the_checked_helper() -> None:
    sources = {module.relative_to(DASHBOARDS): module.read_text() for module in DASHBOARDS.rglob("*.py")}
    assert [name for name, text in sources.items() if re.search(r"plotly\.graph_objects|\bgo\.[A-Z]", text)] == []
    kinds = {kind for text in sources.values() for kind in re.findall(r"\btrace\(\"(\w+)\"", text)}
    assert kinds and kinds <= BASIC_TRACES


def test_share_bars_draw_the_largest_shares_coloured_by_threshold() -> None:
    shares = [float(share) for share in range(0, 300, 10)]  # 30 bars: 0 % ... 290 %
    labels = [f"grant {share:g}" for share in shares]
    figure = share_bars("Quota use", "used (%)", labels, shares, labels, (80, 100), warn_at=[80] * 30, limit=25)
    bar = figure["data"][0]
    assert figure["layout"]["title"]["text"] == "Quota use: the 25 highest of 30"
    assert bar["x"] == shares[::-1][:25] and bar["y"][0] == "grant 290"
    colours = dict(zip(bar["x"], bar["marker"]["color"], strict=True))
    assert (colours[290.0], colours[90.0], colours[50.0]) == ("#9e2a2b", "#e09f3e", "#6a994e")
    assert [shape["x0"] for shape in figure["layout"]["shapes"]] == [80, 100]
    few = share_bars("Budgets", "spent (%)", ["a", "b"], [10.0, 20.0], ["a", "b"], (50,), warn_at=[50, 50])
    assert few["layout"]["title"]["text"] == "Budgets" and few["data"][0]["y"] == ["b", "a"]


def test_stacked_bars_fold_the_smallest_series_into_one_keeping_each_stack_exact() -> None:
    stacks = {f"vdc-{n:02}": {"12-01": Decimal(n), "12-02": Decimal(2 * n)} for n in range(1, 11)}
    figure = stacked_bars("GPU-hours per day", "day", "GPU-hours", stacks, empty_reason="none", most=4)
    names = [t["name"] for t in figure["data"]]
    assert names == ["other 7", "vdc-08", "vdc-09", "vdc-10"]  # the 3 largest, the other 7 summed
    assert figure["data"][0]["y"] == [28.0, 56.0]  # 1 + ... + 7 and twice that
    assert [sum(t["y"][day] for t in figure["data"]) for day in (0, 1)] == [55.0, 110.0]  # every stack as tall as before
    assert figure["layout"]["title"]["text"] == "GPU-hours per day: the 3 largest of 10"
    few = stacked_bars("GPU-hours per day", "day", "GPU-hours", dict(list(stacks.items())[:4]), empty_reason="none", most=4)
    assert [t["name"] for t in few["data"]] == ["vdc-01", "vdc-02", "vdc-03", "vdc-04"]


def test_bars_draw_the_largest_categories_and_one_bar_summing_the_rest() -> None:
    names = [f"vdc-{n:03}" for n in range(1, 201)]  # 200 VDCs, as at 10,000 nodes
    values = [Decimal(n) / 4 for n in range(1, 201)]
    figure = bars("GPU-hours by VDC", "VDC", "GPU-hours", names, values, empty_reason="none", most=15)
    bar = figure["data"][0]
    assert figure["layout"]["title"]["text"] == "GPU-hours by VDC: the 14 largest of 200"
    assert bar["x"] == [f"vdc-{n:03}" for n in range(200, 186, -1)] + ["other 186"]  # largest first, the rest last
    assert bar["y"][-1] == float(sum(values[:186])) and sum(bar["y"]) == float(sum(values))  # the total stays exact
    tied = bars("t", "x", "y", ["b", "a", "c"], [1, 1, 1], empty_reason="none", most=2)
    assert tied["data"][0]["x"] == ["a", "other 2"]  # ties by name
    few = bars("GPU-hours by VDC", "VDC", "GPU-hours", names[:15], values[:15], empty_reason="none", most=15)
    assert few["data"][0]["x"] == names[:15] and few["layout"]["title"]["text"] == "GPU-hours by VDC"


def test_hottest_nodes_put_nodes_on_the_y_axis_and_degrees_on_the_x_axis() -> None:
    """Issue 18: the axis titles were swapped (°C named the node axis)."""
    from dashboards.pages.fleet import hottest_figure

    figure = hottest_figure([{"name": "gpu-a01", "max_temp_c": 81.0}, {"name": "gpu-a02", "max_temp_c": 64.5}])
    (bar,) = figure["data"]
    assert (bar["orientation"], bar["y"], bar["x"]) == ("h", ["gpu-a01", "gpu-a02"], [81.0, 64.5])
    layout = figure["layout"]
    assert (layout["yaxis"]["title"]["text"], layout["xaxis"]["title"]["text"]) == ("node", "hottest sensor (°C)")


def test_time_markers_span_the_window_with_one_labelled_trace_per_series() -> None:
    start = datetime(2026, 12, 6, tzinfo=UTC)
    window = (start, start + timedelta(days=1))
    figure = time_markers("XID errors", "XID code", {"GPU 0": [(start + timedelta(hours=3), 79, "XID 79")], "GPU 1": []},
                          window=window, empty_reason="none")
    [marks] = figure["data"]  # a GPU without XIDs draws nothing
    assert (marks["name"], marks["y"], marks["text"], marks["mode"]) == ("GPU 0", [79.0], ["XID 79"], "markers+text")
    # the whole window, not a millisecond around a lone marker; room above the highest code for its label
    assert figure["layout"]["xaxis"]["range"] == ["2026-12-06T00:00:00+00:00", "2026-12-07T00:00:00+00:00"]
    assert figure["layout"]["yaxis"]["range"][1] > 79 * 1.2
    empty = time_markers("XID errors", "XID code", {"GPU 0": []}, window=window, empty_reason="No XID errors.")
    assert empty["data"] == [] and empty["layout"]["annotations"][0]["text"] == "No XID errors."


def test_a_legend_fits_on_one_row_or_takes_a_grid_of_the_widest_entrys_columns() -> None:
    assert legend_rows(["allocated", "used"], 540) == 1
    # entries of 46 + 8 px a character: 302 px wide each, one per row in 540 px; three short ones beside one long
    assert legend_rows([f"GPU {n} · NVIDIA H100 80GB HBM3 · …" for n in range(8)], 540) == 8
    assert legend_rows(["a" * 10, "b" * 10, "c" * 10, "d" * 40], 540) == 4
    assert legend_rows(["a" * 10] * 7, 540) == 2  # 126 px: all seven do not fit in 540, four columns do


def test_the_legend_adds_its_rows_under_the_plot_and_the_plot_keeps_its_height() -> None:
    start = datetime(2026, 12, 6, tzinfo=UTC)
    one = time_series("GPU utilisation", "%", {"GPU 0": [(start, 1.0)]}, empty_reason="none")["layout"]
    eight = time_series("GPU utilisation", "%", {f"GPU {n} · NVIDIA H100 80GB HBM3 · …-n01-{n}": [(start, 1.0)]
                                                 for n in range(8)}, empty_reason="none")["layout"]
    assert "legend" not in one and one["showlegend"] is False and one["xaxis"]["type"] == "date"
    plot = one["height"] - one["margin"]["t"] - one["margin"]["b"]
    assert eight["height"] - eight["margin"]["t"] - eight["margin"]["b"] == plot
    assert eight["height"] == one["height"] + 8 * LEGEND_ROW + LEGEND_PAD
    assert eight["legend"]["yanchor"] == "top" and eight["legend"]["y"] < 0


def test_horizontal_bars_leave_room_for_their_labels_up_to_a_limit() -> None:
    short = bars("t", "node", "°C", ["gpu-a01"], [1], empty_reason="none", horizontal=True)["layout"]["margin"]["l"]
    long = bars("t", "SKU", "EUR", ["GPU-hour · NVIDIA A100-SXM4-80GB"], [1], empty_reason="none",
                horizontal=True)["layout"]["margin"]["l"]
    huge = bars("t", "SKU", "EUR", ["x" * 200], [1], empty_reason="none", horizontal=True)["layout"]["margin"]["l"]
    assert short < long < huge == MAX_LEFT
    assert long >= 32 * 7  # 32 characters at no less than 7 px each


def test_a_month_of_day_bars_leaves_room_under_the_plot_for_slanted_labels() -> None:
    days = [f"12-{d:02}" for d in range(1, 32)]
    week = bars("Emissions per day", "day", "kg", days[:7], [1] * 7, empty_reason="none")["layout"]["margin"]["b"]
    month = bars("Emissions per day", "day", "kg", days, [1] * 31, empty_reason="none")["layout"]["margin"]["b"]
    assert month - week == 5 * 8  # five characters upright


def test_bar_categories_stay_categories_even_when_they_read_like_dates() -> None:
    one_day = bars("Emissions per day", "day (MM-DD, UTC)", "kg CO2e", ["06-30"], [1.5], empty_reason="none")["layout"]
    assert one_day["xaxis"]["type"] == "category"  # not a time axis around one instant in 2012
    across = bars("t", "day", "kg", ["06-30"], [1.5], empty_reason="none", horizontal=True)["layout"]
    assert across["yaxis"]["type"] == "category"
