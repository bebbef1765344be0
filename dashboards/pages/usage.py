"""Tenant usage: GPU-hours allocated (from leases) vs used (utilisation), by day, VDC and GPU
model; the allocation tables (per lease and node, and per Kubernetes namespace: efficiency,
coverage, cost of idle GPU-hours, waste highlighted); quotas used; running nodes and namespaces. Tenants see their own tenants only."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from decimal import Decimal

import dash
from dash import Input, Output, State, dcc, html
from sqlmodel import Session, select

from dashboards.components import (
    chosen_tab,
    data_grid,
    DAY_RANGE_LABELS,
    day_range_bounds,
    prefilled,
    range_picker,
    stat,
    tab_bar,
    tab_inputs,
    tab_outputs,
    table,
    when,
)
from dashboards.context import current_principal, db_session
from dashboards.cost_data import caller_scope, remembered_between
from dashboards.figures import BARS_SHOWN, STACKS_SHOWN, Figure, bars, empty_figure, grouped_bars, stacked_bars
from dashboards.numbers import money
from dashboards.tenancy_data import (
    gpu_hours,
    quota_rows,
    running_namespaces,
    running_instances,
    running_nodes,
    stacked_by_day,
    total_by,
)
from dashboards.tenant_picker import ALL, register_search, tenant_picker
from fleet.daily_hours import DayMicros, daily_lease_micros
from fleet.leases import count_leases
from fleet.usage import HOURS_QUANTUM, MICROS_PER_HOUR
from kiln.auth import Principal
from kiln.db import utcnow
from kiln.models import Tenant
from metering import skus
from metering.allocation import AllocationRow, IdleFigures, allocation_rows, daily_gpu_hours
from metering.efficiency import EfficiencyRow, LeaseTotals, lease_count, lease_figures, lease_totals, totals_of
from metering.namespace_efficiency import NamespaceEfficiencyRow, namespace_efficiency
from metering.sku_labels import label
from metering.usage import usage_totals

PATH = "/usage"
DEFAULT_RANGE = "7d"
DEFAULT_TAB = "lease"
# More whole-node leases than this (all tenants of a large fleet): the per-lease grid is drawn when its tab is chosen, not
# with the page (a 1,000-row grid was ~0.5 s of a page over its 1.5 s target at 1,000 nodes).
LEASES_WITH_THE_PAGE = 200
COVERAGE_WARNING = Decimal("0.8")  # less of the allocation measured: the efficiency is a partial view
OUTPUTS = (
    Output("usage-stats", "children"), Output("usage-by-day", "figure"), Output("usage-by-vdc", "figure"),
    Output("usage-by-model", "figure"), Output("usage-alloc-vs-used", "figure"),
)
DETAILS = "usage-details"
# The detail tables, one drawn at a time (all four at once: ~1,000-row grids, a third of the page's time at 1,000 nodes).
DETAIL_TABS = {"lease": "Per lease", "namespace": "Per Kubernetes namespace", "quotas": "Quotas this month",
               "running": "Running now"}
DETAIL_OUTPUTS = tab_outputs(DETAILS, DETAIL_TABS)


def layout(**_: str) -> html.Div:
    """Filters (tenant, range) and every block, filled for all the caller's tenants over the default range."""
    page = html.Div([
        html.Div([
            html.H1("GPU usage"),
            tenant_picker("usage-tenant"),
            range_picker("usage-range", default=DEFAULT_RANGE, labels=DAY_RANGE_LABELS),
        ], className="page-head"),
        html.Div(id="usage-stats", className="stats"),
        dcc.Graph(id="usage-alloc-vs-used"),
        dcc.Graph(id="usage-by-day"),
        html.Div([dcc.Graph(id="usage-by-vdc"), dcc.Graph(id="usage-by-model")], className="grid-2"),
        html.Section([html.H2("Details", id="usage-details-title"),
                      tab_bar(DETAILS, DETAIL_TABS, DEFAULT_TAB, "Usage details")], className="card", id="details"),
    ])
    overview, details = first_paint(ALL, DEFAULT_RANGE)
    return prefilled(page, (*OUTPUTS, *DETAIL_OUTPUTS), (*overview, *details))


def _hours(value: Decimal | None) -> str:
    return "no data" if value is None else f"{value:,.1f}"


def _limit(used: int | Decimal, limit: int | None) -> str:
    shown = f"{used:,.1f}" if isinstance(used, Decimal) else f"{used:,}"
    return f"{shown} of {limit:,}" if limit is not None else shown


def _percent(ratio: Decimal | None) -> str:
    return "no data" if ratio is None else f"{ratio * 100:.0f} %"


def efficiency_stats(gpu_use: EfficiencyRow) -> list[html.Div]:
    """GPU-hours used, efficiency (used ÷ measured) and its coverage (measured ÷ allocated), as
    `metering.efficiency` defines them."""
    measured = gpu_use.measured_gpu_hours
    return [stat("GPU-hours used", _hours(gpu_use.used_gpu_hours if measured else None), "stat-used"),
            stat("efficiency (used / measured)", _percent(gpu_use.efficiency), "stat-efficiency"),
            stat("utilisation coverage (measured / allocated)", _percent(gpu_use.coverage), "stat-coverage",
                 "warning" if gpu_use.coverage is not None and gpu_use.coverage < COVERAGE_WARNING else "")]


def _scope(session: Session, principal: Principal, tenant_slug: str | None) -> tuple[int | None, str | None]:
    """The tenant id to filter by (None: all the caller's; -1: a slug not among the caller's, so
    nothing rather than everything) and its slug."""
    if tenant_slug in (None, ALL):
        return None, None
    tenant = session.exec(principal.scope(select(Tenant).where(Tenant.slug == tenant_slug), Tenant.id)).first()
    return (tenant.id, tenant.slug) if tenant is not None else (-1, None)


def first_paint(tenant_slug: str | None, choice: str | None) -> tuple[tuple, tuple]:
    """The overview and the default detail tab, sharing one read of the leases' utilisation."""
    principal = current_principal()
    start, end = day_range_bounds(choice)
    with db_session() as session:
        tenant_id, _ = _scope(session, principal, tenant_slug)
        now = utcnow()
        count = lease_count(session, principal, start, min(end, now), tenant_id=tenant_id)
        if count > LEASES_WITH_THE_PAGE:  # the overview's sums only: no row per lease
            held = daily_lease_micros(session, principal, start, min(end, now), tenant_id)
            totals = lease_totals(session, principal, start, end, tenant_id=tenant_id, now=now, held=held, count=count)
            return _overview(session, principal, start, end, tenant_id, totals, held), (
                on_demand(count + len(totals.instances)), None, *(["false"] * len(DETAIL_TABS)))
        figures = lease_figures(session, principal, start, end, tenant_id=tenant_id, now=now)
        overview = _overview(session, principal, start, end, tenant_id, totals_of(figures))
        panel = allocation_table(allocation_rows(session, principal, start, end, tenant_id=tenant_id, figures=figures))
    _, selected = chosen_tab(DETAILS, DETAIL_TABS, DEFAULT_TAB)
    return overview, (panel, DEFAULT_TAB, *selected)


def on_demand(leases: int) -> html.P:
    """What the details panel says when the per-lease table is too long to come with the page."""
    return html.P(f"{leases:,} leases in this range: choose a table above (each is read when chosen; the per-lease "
                  "table lists every lease with its efficiency and the cost of its idle GPU-hours).",
                  className="hint", id="usage-details-hint")


def update(tenant_slug: str | None, choice: str | None) -> tuple:
    """The stats and charts for the chosen tenant (within the caller's) and range."""
    principal = current_principal()
    start, end = day_range_bounds(choice)
    with db_session() as session:
        tenant_id, _ = _scope(session, principal, tenant_slug)
        now = utcnow()
        held = daily_lease_micros(session, principal, start, min(end, now), tenant_id)
        return _overview(session, principal, start, end, tenant_id,
                         lease_totals(session, principal, start, end, tenant_id=tenant_id, now=now, held=held), held)


def _overview(session: Session, principal: Principal, start: datetime, end: datetime, tenant_id: int | None,
              totals: LeaseTotals, held: list[DayMicros] | None = None) -> tuple:
    """The stats and charts: `totals` of the range's leases, `held` their `daily_lease_micros` when already read."""
    now = utcnow()
    if held is None:
        held = daily_lease_micros(session, principal, start, min(end, now), tenant_id)
    slices = gpu_hours(session, principal, start, end, tenant_id, now=now, held=held)
    gpu_use = totals.combined()
    per_day = daily_gpu_hours(session, principal, start, end, tenant_id=tenant_id, now=now, totals=totals, held=held)
    running = count_leases(session, principal, tenant_id=tenant_id, active=True) if tenant_id != -1 else 0
    sku_totals = gpu_hours_by_sku(session, principal, start, end, tenant_id, held)
    allocated = sum((s.gpu_hours for s in slices), Decimal(0))
    stats = [stat("GPU-hours allocated", _hours(allocated), "stat-allocated"), *efficiency_stats(gpu_use),
             stat("nodes running", running, "stat-running")]
    why = "No leases in this range: nothing was allocated to these tenants."
    by_day = stacked_bars("GPU-hours allocated per day, by VDC", "day (UTC)", "GPU-hours", stacked_by_day(slices, "vdc"),
                          empty_reason=why, most=STACKS_SHOWN)
    vdc_totals = total_by(slices, "vdc")
    by_vdc = bars("GPU-hours by VDC", "VDC", "GPU-hours", list(vdc_totals), list(vdc_totals.values()), empty_reason=why,
                  most=BARS_SHOWN)
    by_model = bars("GPU-hours by GPU model and MIG profile (leases and Kubernetes pods)", "GPU model · MIG profile",
                    "GPU-hours", list(sku_totals), list(sku_totals.values()),
                    empty_reason="No GPU-hours in this range: no lease, and no pod metered by the hourly bills run.",
                    horizontal=True)  # model and profile names are long: read across, not slanted under the bars
    return stats, by_day, by_vdc, by_model, allocated_vs_used(per_day)


def details(*args: object) -> tuple:
    """The chosen detail tab's table for the chosen tenant (within the caller's) and range: only
    that tab's data is read."""
    *_, tenant_slug, choice, chosen = args
    tab, selected = chosen_tab(DETAILS, DETAIL_TABS, chosen, dash.ctx.triggered_id)  # type: ignore[arg-type]
    principal = current_principal()
    start, end = day_range_bounds(choice)  # type: ignore[arg-type]
    with db_session() as session:
        tenant_id, slug = _scope(session, principal, tenant_slug)  # type: ignore[arg-type]
        if tab == "lease":
            panel = allocation_table(allocation_rows(session, principal, start, end, tenant_id=tenant_id))
        elif tab == "namespace":
            panel = namespace_allocation_table(namespace_efficiency(session, principal, start, end, tenant_id=tenant_id))
        elif tab == "quotas":
            panel = quota_table([q for q in quota_rows(session, principal) if tenant_id is None or q["tenant"] == slug])
        else:
            panel = running_tables(running_nodes(session, principal, tenant_id), running_instances(session, principal, tenant_id),
                                   running_namespaces(session, principal, tenant_id))
    return (panel, tab, *selected)


def quota_table(quotas: list[dict]) -> html.Div:
    """Each VDC grant's use this month against its limits."""
    return data_grid("quota-table", QUOTA_COLUMNS, [
        {"vdc": q["vdc"], "tenant": q["tenant"], "nodes": _limit(q["nodes"], q["max_nodes"]),
         "gpus": _limit(q["gpus"], q["max_gpus"]), "gpu_hours": _limit(q["gpu_hours"], q["max_gpu_hours"])} for q in quotas],
        empty="No VDC is granted to these tenants.")


def running_tables(nodes: list[dict], instances: list[dict], namespaces: list[dict]) -> html.Div:
    """The nodes and GPU instances leased now and the Kubernetes namespaces holding GPUs now."""
    node_table = data_grid("running-nodes", RUNNING_NODE_COLUMNS, [
        {"link": f"[{n['node']}](/nodes/{n['node']})", "tenant": n["tenant"], "vdc": n["vdc"], "gpus": n["gpus"],
         "state": n["state"], "since": when(n["since"])} for n in nodes] + [
        {"link": f"[{i['node']}](/nodes/{i['node']})", "tenant": i["tenant"], "vdc": i["vdc"], "gpus": i["gpus"],
         "state": "GPU instance", "since": when(i["since"])} for i in instances],
        empty="No node or GPU instance is leased to these tenants now.")
    namespace_table = table(("namespace", "tenant", "GPUs requested", "pods"),
                            [(n["namespace"], n["tenant"], f"{n['gpus'].normalize():f}", n["pods"]) for n in namespaces],
                            empty="No pod of these tenants requests GPUs now (or the Kubernetes collector is off).",
                            element_id="running-namespaces")
    return html.Div([html.Div([html.H3("Nodes"), node_table]), html.Div([html.H3("Kubernetes namespaces with GPUs"),
                                                                         namespace_table])], className="grid-2")


def gpu_hours_by_sku(session: Session, principal: Principal, start: datetime, end: datetime, tenant_id: int | None,
                     held: list[DayMicros] | None = None) -> dict[str, Decimal]:
    """GPU-hours of the caller's tenants — or of one — by SKU name, e.g. "GPU-hour · NVIDIA A100-SXM4-80GB
    · 3g.40gb": whole-node leases' from the leases (`held`: `daily_lease_micros` of the range, up to
    now, when already read), the rest metered (usage records: pods, GPU instance leases).

    The metered part is remembered until the hour or the range's bills change (`remembered_between`);
    the leases' part never depended on bills, and read from the records it was 1.5 M rows a week at
    10,000 nodes, summed again on the first load after every bills run."""
    out: dict[str, Decimal] = defaultdict(Decimal)
    leased: dict[str, int] = defaultdict(int)
    for row in held if held is not None else daily_lease_micros(session, principal, start, min(end, utcnow()), tenant_id):
        if row.gpu_model is not None and row.gpu_micros:
            leased[row.gpu_model] += row.gpu_micros
    for model, micros in leased.items():
        out[label(skus.gpu_hour(model))] += (Decimal(micros) / MICROS_PER_HOUR).quantize(HOURS_QUANTUM)

    def metered() -> dict[str, Decimal]:
        totals: dict[str, Decimal] = defaultdict(Decimal)
        for _, sku, _, _, total in usage_totals(session, principal, start, end, family=skus.GPU_HOUR, tenant_id=tenant_id,
                                                whole_node_leases=False):
            totals[label(sku)] += total
        return dict(totals)
    for name, total in remembered_between(session, "metered_gpu_hours_by_sku", start, end,
                                          (caller_scope(principal), tenant_id), metered).items():
        out[name] += total
    return dict(sorted(out.items()))


def allocated_vs_used(per_day: dict[str, tuple[Decimal, Decimal]]) -> Figure:
    """GPU-hours allocated beside GPU-hours used, per day."""
    title = "GPU-hours allocated vs used per day"
    if not per_day:
        return empty_figure(title, "No leases in this range: nothing was allocated to these tenants.")
    days = list(per_day)
    return grouped_bars(title, "day (UTC)", "GPU-hours", days, {"allocated": [a for a, _ in per_day.values()],
                                                                "used": [u for _, u in per_day.values()]})


QUOTA_COLUMNS = tuple({"field": f, "headerName": h} for f, h in (
    ("vdc", "VDC"), ("tenant", "Tenant"), ("nodes", "Nodes"), ("gpus", "GPUs"), ("gpu_hours", "GPU-hours")))
RUNNING_NODE_COLUMNS = (  # a grid, not a table: 1,000 rows of a table took a second to draw
    {"field": "link", "headerName": "Node", "cellRenderer": "markdown"}, {"field": "tenant", "headerName": "Tenant"},
    {"field": "vdc", "headerName": "VDC"}, {"field": "gpus", "headerName": "GPUs"}, {"field": "state", "headerName": "State"},
    {"field": "since", "headerName": "Since"},
)
EFFICIENCY_COLUMNS = (
    {"field": "allocated", "headerName": "Allocated GPU-h", "numeric": True},
    {"field": "used", "headerName": "Used GPU-h", "numeric": True},
    {"field": "efficiency", "headerName": "Efficiency (%)", "numeric": True,
     "cellClassRules": {"waste": "params.data.waste"}},
    {"field": "coverage", "headerName": "Coverage (%)", "numeric": True},
    {"field": "idle", "headerName": "Idle GPU-h", "numeric": True},
    {"field": "idle_cost", "headerName": "Cost of idle", "numeric": True, "sort": "desc",
     "cellClassRules": {"waste": "params.data.waste"}},
    {"field": "idle_cost_text", "headerName": "", "maxWidth": 130},
)
ALLOCATION_COLUMNS = (
    {"field": "tenant", "headerName": "Tenant", "maxWidth": 140}, {"field": "node", "headerName": "Node"},
    {"field": "gpu_model", "headerName": "GPU model"}, {"field": "gpus", "headerName": "GPUs", "maxWidth": 150},
    *EFFICIENCY_COLUMNS,
)
NAMESPACE_COLUMNS = (
    {"field": "tenant", "headerName": "Tenant", "maxWidth": 140}, {"field": "namespace", "headerName": "Namespace"},
    *EFFICIENCY_COLUMNS,
)


def _hundredths(value: Decimal) -> str:
    return str(value.quantize(Decimal("0.01")))


def _ratio(value: Decimal | None) -> str:
    return "" if value is None else str((value * 100).quantize(Decimal("0.1")))


def _efficiency_cells(r: IdleFigures) -> dict[str, object]:
    return {"allocated": _hundredths(r.allocated_gpu_hours), "used": _hundredths(r.used_gpu_hours),
            "efficiency": _ratio(r.efficiency), "coverage": _ratio(r.coverage), "idle": _hundredths(r.idle_gpu_hours),
            "idle_cost": "" if r.idle_cost is None else str(r.idle_cost),
            "idle_cost_text": "no price card" if r.idle_cost is None else money(r.idle_cost, r.currency), "waste": r.waste}


ALLOCATION_HINT = ("Efficiency is used ÷ measured GPU-hours; coverage is the share of the allocation with utilisation data. "
                   "Idle GPU-hours were measured but unused; their cost is at the tenant's contracted GPU-hour price. Rows "
                   "under 50 % efficient are highlighted as waste.")
NAMESPACE_HINT = ("Allocated: the namespace's pods' GPU requests (a MIG instance counts its share of the GPU's compute). "
                  "Measured and used: the utilisation of the GPUs its pods held, as the GPU exporter labels them.")


def allocation_table(rows: list[AllocationRow]) -> html.Div:
    """The allocation rows as a sortable grid (most idle cost first); waste rows highlighted."""
    return html.Div([html.P(ALLOCATION_HINT, className="hint"), data_grid("usage-allocation-table", ALLOCATION_COLUMNS, [
        {"tenant": r.tenant, "node": r.node, "gpu_model": r.gpu_model,
         "gpus": str(r.gpus) if r.profile is None else f"GPU {r.gpu_index} · {r.profile}", **_efficiency_cells(r)}
        for r in rows], empty="No leases in this range: nothing was allocated to these tenants.")], id="allocation")


def namespace_allocation_table(rows: list[NamespaceEfficiencyRow]) -> html.Div:
    """The per-namespace rows as a sortable grid (most idle cost first); waste rows highlighted."""
    return html.Div([html.P(NAMESPACE_HINT, className="hint"), data_grid("usage-namespace-table", NAMESPACE_COLUMNS, [
        {"tenant": r.tenant or "(no tenant)", "namespace": r.namespace, **_efficiency_cells(r)} for r in rows],
        empty="No pod of these tenants requested GPUs in this range (or the Kubernetes collector is off).")],
        id="namespace-allocation")


def register(app: dash.Dash) -> None:
    """Register the page and its callback on the console app."""
    dash.register_page(__name__, path=PATH, name="Usage", title="Usage — Kiln", layout=layout, order=3)
    register_search(app, "usage-tenant")
    app.callback(*OUTPUTS, Input("usage-tenant", "value"), Input("usage-range", "value"), prevent_initial_call=True)(update)
    app.callback(*DETAIL_OUTPUTS, *tab_inputs(DETAILS, DETAIL_TABS), Input("usage-tenant", "value"),
                 Input("usage-range", "value"), State(f"{DETAILS}-chosen", "data"), prevent_initial_call=True)(details)
