"""Fleet overview (infra admins): states and health, power now and over time, hottest nodes,
unreachable BMCs, GPUs with XID errors, and the node table with bulk actions. The stats, the
hottest nodes and the power chart refresh on demand (`dashboards.time_controls`: presets or
custom dates, "last updated", auto-refresh)."""

from __future__ import annotations

import dash
from dash import Output, dcc, html

from dashboards import bulk, time_controls
from dashboards.components import allowed, forbidden, section, stat, table, when
from dashboards.context import current_principal, db_session
from dashboards.figures import Figure, bars, time_series
from dashboards.fleet_data import fleet_power, fleet_summary, gpus_with_xid, unreachable_bmcs
from kiln.auth import Principal
from kiln.roles import Role

PATH = "/fleet"
ROLES = (Role.INFRA_ADMIN,)
DEFAULT_RANGE = "24h"
HEALTH_COLORS = {"ok": "#6a994e", "warning": "#e09f3e", "critical": "#9e2a2b", "unknown": "#999999"}


def _fleet_now(principal: Principal) -> tuple[dict, list, list]:
    """The nodes' summary (dashboards.fleet_data.fleet_summary), unreachable BMCs and GPUs with XID errors, as of now."""
    with db_session() as session:
        return fleet_summary(session, principal), unreachable_bmcs(session, principal), gpus_with_xid(session, principal)


def layout(**_: str) -> html.Div:
    """The page, filled for the signed-in infra admin (a 403 panel for anyone else)."""
    principal = current_principal()
    if not allowed(principal, ROLES):
        return forbidden(principal, "The fleet overview")
    summary, bmcs, xids = _fleet_now(principal)
    states, health = summary["states"], summary["health"]
    return html.Div([
        html.Div([html.H1("Fleet overview"), time_controls.time_controls("fleet", DEFAULT_RANGE)], className="page-head"),
        html.Div(fleet_stats(summary, bmcs, xids), id="fleet-stats", className="stats"),
        html.Div([
            dcc.Graph(id="fleet-states", figure=bars(
                "Nodes by provision state", "provision state", "nodes", list(states), list(states.values()),
                empty_reason="No nodes are enrolled yet: import some with `kiln nodes import`.")),
            dcc.Graph(id="fleet-health", figure=bars(
                "Nodes by sensor health", "worst sensor state", "nodes", list(health), list(health.values()),
                colors=[HEALTH_COLORS.get(h, "#999") for h in health],
                empty_reason="No nodes are enrolled yet.")),
        ], className="grid-2"),
        html.Div([
            dcc.Graph(id="fleet-power", figure=power_figure(DEFAULT_RANGE)),
            dcc.Graph(id="fleet-hottest", figure=hottest_figure(summary["hottest"])),
        ], className="grid-2"),
        html.Div([
            section("BMCs unreachable", table(
                ("target", "failures in a row", "last success", "last error"),
                [(b.target, b.consecutive_failures, when(b.last_success_at), b.last_error or "") for b in bmcs],
                empty="Every polled BMC answered its last poll.", element_id="bmc-table")),
            section("GPUs with XID errors", table(
                ("node", "GPU", "model", "last XID", "seen"),
                [(x["node"], x["gpu"] if x["index"] is None else f"#{x['index']} {x['gpu']}", x["model"], x["xid"],
                  when(x["observed_at"])) for x in xids],
                empty="No GPU has reported an XID error.", element_id="xid-table")),
        ], className="grid-2"),
        section("Nodes", html.P("Select nodes (or apply to all the search and filters match), choose an action, run it: "
                                "each node's result appears below.",
                                className="hint"), bulk.node_grid(), bulk.action_panel(), element_id="nodes"),
    ])


def fleet_stats(summary: dict, bmcs: list, xids: list) -> list[html.Div]:
    """Nodes, active nodes, power now, unreachable BMCs, GPUs with XID errors."""
    watts = summary["watts"]
    return [
        stat("nodes", summary["nodes"], "stat-nodes"),
        stat("active", summary["states"].get("active", 0), "stat-active"),
        stat("power now", f"{watts / 1000:,.1f} kW" if watts is not None else "no reading", "stat-power"),
        stat("BMCs unreachable", len(bmcs), "stat-bmcs", "bad" if bmcs else ""),
        stat("GPUs with XID errors", len(xids), "stat-xid", "bad" if xids else ""),
    ]


def hottest_figure(hot: list[dict]) -> Figure:
    """The hottest nodes as horizontal bars: nodes down the y axis, °C along the x axis."""
    return bars("Hottest nodes", "node", "hottest sensor (°C)", [r["name"] for r in hot], [r["max_temp_c"] for r in hot],
                horizontal=True, empty_reason="No temperature readings: the IPMI collector has not polled any BMC yet.")


def power_figure(choice: str | None, start_date: str | None = None, end_date: str | None = None) -> Figure:
    """Fleet power over the chosen range (a preset or custom dates), from the 5-minute rollups."""
    principal = current_principal()
    start, end = time_controls.bounds(choice, start_date, end_date)
    with db_session() as session:
        points = fleet_power(session, principal, start, end) if allowed(principal, ROLES) else []
    return time_series(
        "Fleet power draw", "power (W)", {"all nodes": [(p.at, p.value) for p in points]},
        empty_reason="No DCMI power readings in this range: is the IPMI collector running (kiln worker)?",
    )


def refresh(choice: str | None, start_date: str | None, end_date: str | None, _ticks: int | None) -> tuple:
    """The live parts again (range changed, or a tick of auto-refresh): power, hottest nodes, stats, when."""
    principal = current_principal()
    if not allowed(principal, ROLES):  # anyone else gets empty parts: nothing of the fleet
        return power_figure(choice, start_date, end_date), hottest_figure([]), [], time_controls.updated()
    summary, bmcs, xids = _fleet_now(principal)
    return (power_figure(choice, start_date, end_date), hottest_figure(summary["hottest"]), fleet_stats(summary, bmcs, xids),
            time_controls.updated())


def register(app: dash.Dash) -> None:
    """Register the page and its callbacks on the console app."""
    dash.register_page(__name__, path=PATH, name="Fleet", title="Fleet — Kiln", layout=layout, order=1)
    app.callback(Output("fleet-power", "figure"), Output("fleet-hottest", "figure"), Output("fleet-stats", "children"),
                 Output("fleet-updated", "children"), *time_controls.inputs("fleet"), prevent_initial_call=True)(refresh)
    time_controls.register(app, "fleet")
    bulk.register(app)
