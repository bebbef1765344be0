"""Node detail: hardware facts and GPUs, sensors with their states, power and temperature
history, per-GPU panels (utilisation, framebuffer memory, power, temperature, an XID timeline
with its table: Grafana's DCGM dashboard 12239), the node's events and the current lease.
Tenants see only nodes they lease."""

from __future__ import annotations

import dash
from dash import Output, State, dcc, html

from dashboards import time_controls
from dashboards.components import section, table, when
from dashboards.context import current_principal, db_session
from dashboards.figures import empty_figure, time_markers, time_series
from dashboards.node_data import history, node_detail
from fleet.nodes import get_node_by_name, to_public
from fleet.schemas import NodePublic
from kiln.errors import NotFound

PATH_TEMPLATE = "/nodes/<name>"
DEFAULT_RANGE = "24h"


def _value(value: float | None, unit: str) -> str:
    """A reading with its unit; bytes in binary units (4.0 GiB, not 4.29497e+09 bytes)."""
    if value is None:
        return "no reading"
    if unit == "bytes":
        for power, name in ((4, "TiB"), (3, "GiB"), (2, "MiB"), (1, "KiB")):
            if abs(value) >= 1024 ** power:
                return f"{value / 1024 ** power:.1f} {name}"
    return f"{value:g} {unit}"


def _facts(node: NodePublic, bmc: str) -> html.Div:
    facts = node.facts or {}
    rows = [
        ("provision state", node.provision_state), ("power", node.power_state or "unknown"),
        ("maintenance", f"yes — {node.maintenance_reason or 'no reason given'}" if node.maintenance else "no"),
        ("provisioner", node.provisioner), ("resource class", node.resource_class or "—"), ("rack", node.rack or "—"),
        ("tags", ", ".join(node.tags) or "—"), ("CPU", f"{facts.get('cpu_model', '—')} ({facts.get('cpu_cores', '?')} cores)"),
        ("memory", f"{facts['ram_mib'] / 1024:.0f} GiB" if facts.get("ram_mib") else "—"),
    ]
    if node.bmc_address:  # infra admins only (to_public blanks it for tenants)
        rows.append(("BMC", f"{node.bmc_address} as {node.bmc_username or '—'}"))
    if node.redfish_address:  # the second, collection-only address: same account
        rows.append(("BMC Redfish (collection only)", node.redfish_address))
    rows.append(("BMC polls", html.Span(bmc, id="node-bmc-polls")))
    if node.last_error:
        rows.append(("last backend error", node.last_error))
    return table(("fact", "value"), rows, empty="", element_id="node-facts")


def _events(events: list[dict], with_actor: bool) -> html.Div:
    columns = ("when", "kind", "message", "by") if with_actor else ("when", "kind", "message")
    rows = [(when(e["at"]), e["kind"], e["message"], e["actor"])[: len(columns)] for e in events]
    return table(columns, rows, empty="No events (tenants see those since their lease began).", element_id="node-events")


def layout(name: str | None = None, **_: str) -> html.Div:
    """The node's page, or a not-found panel when the caller may not see it."""
    principal = current_principal()
    try:
        with db_session() as session:
            detail = node_detail(session, principal, name or "")
    except NotFound:
        return html.Div([html.H1("Node not found", id="node-missing"),
                         html.P(f"There is no node called {name!r} that you can see."), html.A("Back", href="/")])
    node, lease = detail.node, detail.lease
    gpus = [(g.index, g.model, g.vendor, g.uuid or "—", f"{g.memory_mib / 1024:.0f} GiB" if g.memory_mib else "—")
            for g in node.gpus]
    lease_text = (f"Leased to {lease.tenant} through VDC {lease.vdc or '—'} since {when(lease.starts_at)}"
                  + (f" until {when(lease.ends_at)}" if lease.ends_at else " (open-ended)")) if lease else "Not leased now."
    power, temperature, util, memory, gpu_power, gpu_temperature, xid, xids, _ = history_figures(
        DEFAULT_RANGE, None, None, None, node.name)
    return html.Div([
        dcc.Store(id="node-name", data=node.name),
        html.Div([html.H1(node.name, id="node-title"), time_controls.time_controls("node", DEFAULT_RANGE)], className="page-head"),
        html.P(lease_text, id="node-lease", className="lead"),
        *([section("GPU instances leased", table(
            ("GPU", "profile", "tenant", "VDC", "since"),
            [(str(i["gpu_index"]), i["profile"], i["tenant"], i["vdc"], when(i["since"])) for i in detail.instances],
            empty="", element_id="node-instance-leases"))] if detail.instances else []),
        html.Div([
            section("Hardware", _facts(node, detail.bmc)),
            section("GPUs", table(("#", "model", "vendor", "UUID", "memory"), gpus, empty="This node has no GPUs recorded.",
                                  element_id="node-gpus")),
        ], className="grid-2"),
        html.Div([dcc.Graph(id="node-power", figure=power), dcc.Graph(id="node-temperature", figure=temperature)],
                 className="grid-2"),
        html.Div([dcc.Graph(id="node-gpu-util", figure=util), dcc.Graph(id="node-gpu-memory", figure=memory)],
                 className="grid-2"),
        html.Div([dcc.Graph(id="node-gpu-power", figure=gpu_power),
                  dcc.Graph(id="node-gpu-temperature", figure=gpu_temperature)], className="grid-2"),
        dcc.Graph(id="node-gpu-xid", figure=xid),
        section("XID errors", html.Div(xids, id="node-xid-table")),
        section("Sensors", table(
            ("entity", "sensor", "value", "state", "read at"),
            [(s["entity"], s["sensor"], _value(s["value"], s["unit"]), html.Span(s["state"], className=f"state-{s['state_code']}"),
              when(s["observed_at"])) for s in detail.sensors],
            empty="No sensor readings: the IPMI collector has not polled this node's BMC yet.", element_id="node-sensors")),
        section("Events", _events(detail.events, with_actor=principal.sees_all_tenants)),
    ])


def _lines(points_by_name: dict, scale: float = 1.0) -> dict:
    return {name: [(p.at, p.value / scale) for p in points] for name, points in points_by_name.items()}


def _xid_table(xids: list[dict]) -> html.Div:
    return table(("time (UTC)", "GPU", "XID", "meaning"),
                 [(when(x["at"]), x["gpu"], str(x["code"]), x["meaning"]) for x in xids],
                 empty="No XID errors in this range.", element_id="node-xids")


def history_figures(choice: str | None, start_date: str | None, end_date: str | None, _ticks: int | None,
                    name: str | None) -> tuple:
    """Power and hottest sensor of the node, its GPUs' utilisation, framebuffer memory, power and
    temperature (one line per GPU), its XID timeline and table over the chosen range (a preset or
    custom dates), and when they were read."""
    principal = current_principal()
    start, end = time_controls.bounds(choice, start_date, end_date)
    with db_session() as session:
        try:
            node = to_public(session, principal, [get_node_by_name(session, principal, name or "")])[0]
        except NotFound:
            missing = empty_figure("History", "This node is not visible to you.")
            return (missing,) * 7 + (_xid_table([]), time_controls.updated())
        data = history(session, principal, node, start, end)
    gpu_reason = "in this range (DCGM/ROCm exporter through Prometheus)."
    power = time_series("Power draw (DCMI)", "power (W)", _lines(data["power"]),
                        empty_reason="No DCMI power readings in this range.")
    temperature = time_series("Hottest sensor", "temperature (°C)", _lines(data["temperature"]),
                              empty_reason="No temperature readings in this range.")
    util = time_series("GPU utilisation", "utilisation (%)", _lines(data["gpu_util"]),
                       empty_reason=f"No GPU utilisation {gpu_reason}")
    memory = time_series("GPU framebuffer memory used", "memory used (GiB)", _lines(data["gpu_memory"], 2 ** 30),
                         empty_reason=f"No GPU memory readings {gpu_reason}")
    gpu_power = time_series("GPU power draw", "power (W)", _lines(data["gpu_power"]),
                            empty_reason=f"No GPU power readings {gpu_reason}")
    gpu_temperature = time_series("GPU temperature", "temperature (°C)", _lines(data["gpu_temperature"]),
                                  empty_reason=f"No GPU temperature readings {gpu_reason}")
    by_gpu: dict[str, list] = {}
    for x in data["xid"]:
        by_gpu.setdefault(x["gpu"], []).append((x["at"], x["code"], f"XID {x['code']}"))
    xid = time_markers("XID errors", "XID code", by_gpu, window=(start, end), empty_reason="No XID errors in this range.")
    return (power, temperature, util, memory, gpu_power, gpu_temperature, xid, _xid_table(data["xid"]),
            time_controls.updated())


def register(app: dash.Dash) -> None:
    """Register the page and its callbacks on the console app."""
    dash.register_page(__name__, path_template=PATH_TEMPLATE, name="Node", title="Node — Kiln", layout=layout)
    app.callback(
        Output("node-power", "figure"), Output("node-temperature", "figure"), Output("node-gpu-util", "figure"),
        Output("node-gpu-memory", "figure"), Output("node-gpu-power", "figure"), Output("node-gpu-temperature", "figure"),
        Output("node-gpu-xid", "figure"), Output("node-xid-table", "children"), Output("node-updated", "children"), *time_controls.inputs("node"), State("node-name", "data"),
        prevent_initial_call=True,
    )(history_figures)
    time_controls.register(app, "node")
