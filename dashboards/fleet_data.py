"""Data for the fleet overview: node rows, counts, power, heat, unreachable BMCs, XID errors.

Every query over nodes goes through `fleet.nodes.visible()` (tenants see only the nodes
they lease), so these functions are safe for any caller; the page itself is infra-admin.
Health comes from the collectors' tables: `health_snapshot` (latest reading per series),
`rollup_5m` (5-minute aggregates for charts; the whole fleet's power from the sums kept of them,
collectors.fleet_power) and `collector_target_state` (BMC reachability). The page's counts,
power now and hottest nodes are aggregates (`fleet_summary`); the node table asks for its rows
a page at a time (`node_rows` with `only`, dashboards.node_grid).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select
from sqlmodel import Session, col, func, select

from collectors.fleet_power import fleet_totals, live_totals
from collectors.models import CollectorTargetState, HealthSnapshot
from collectors.store import POWER_METRIC, TEMPERATURE_METRIC
from fleet.models import Gpu, Node
from fleet.nodes import visible
from fleet.tenancy_models import GpuInstanceLease, Lease, Vdc
from fleet.usage import in_force
from fleet.vdcs import member_node_ids
from kiln.auth import Principal
from kiln.db import MANY_IDS, utcnow
from kiln.models import Tenant

XID_METRIC = "gpu_last_xid"
BMC_COLLECTORS = ("ipmi", "redfish")
HEALTH_NAMES = {None: "unknown", 0: "ok", 1: "warning", 2: "critical"}


@dataclass(frozen=True)
class Point:
    """One value of a chart series at a bucket's start."""

    at: datetime
    value: float


def node_rows(session: Session, principal: Principal, only: list[int] | None = None) -> list[dict[str, Any]]:
    """One row per visible node for the node table: state, power, health, GPUs, lease holder;
    `only` narrows them to those node ids (one page of the table)."""
    statement = select(  # the table's columns only: 10,000 whole Node objects (facts JSON) cost seconds
        Node.id, Node.name, Node.provision_state, Node.power_state, Node.maintenance, Node.rack, Node.resource_class,
        Node.last_error).order_by(Node.name)
    # the visible nodes as a subquery, not a list: 10,000 bound ids cost seconds per query to
    # compile and send, where PostgreSQL joins the subquery in milliseconds
    ids: Any = visible(select(Node.id), principal)
    if only is not None:
        statement, ids = statement.where(col(Node.id).in_(only)), ids.where(col(Node.id).in_(only))
    nodes = session.exec(visible(statement, principal)).all()
    gpus: dict[int, list[str]] = defaultdict(list)
    for node_id, model, count in session.exec(  # grouped: 80,000 GPU rows cost a third of a second to fetch
            select(Gpu.node_id, Gpu.model, func.count()).where(col(Gpu.node_id).in_(ids)).group_by(Gpu.node_id, Gpu.model)):
        gpus[node_id].extend([model] * count)
    watts = latest_values(session, ids, POWER_METRIC)
    hottest = hottest_by_node(session, ids)
    health = worst_state_by_node(session, ids)
    holders = dict(session.exec(
        select(Lease.node_id, Tenant.slug).join(Tenant, Tenant.id == Lease.tenant_id)
        .where(in_force(utcnow()), col(Lease.node_id).in_(ids))
    ).all())
    if principal.sees_all_tenants:  # the column is admins' only: a GPU instance lease names its GPU and profile
        for node_id, slug, index, profile in session.exec(
                select(GpuInstanceLease.node_id, Tenant.slug, GpuInstanceLease.gpu_index, GpuInstanceLease.profile)
                .join(Tenant, Tenant.id == GpuInstanceLease.tenant_id)
                .where(in_force(utcnow(), GpuInstanceLease), col(GpuInstanceLease.node_id).in_(ids))
                .order_by(GpuInstanceLease.gpu_index, Tenant.slug)).all():
            held = f"{slug} (GPU {index} · {profile})"
            holders[node_id] = f"{holders[node_id]}, {held}" if node_id in holders else held
    vdcs = vdc_names_by_node(session, only) if principal.sees_all_tenants else {}
    return [
        {
            "name": n.name,
            "provision_state": n.provision_state,
            "power_state": n.power_state or "unknown",
            "maintenance": "yes" if n.maintenance else "no",
            "health": HEALTH_NAMES.get(health.get(n.id)),
            "power_watts": watts.get(n.id),
            "max_temp_c": hottest.get(n.id),
            "gpus": len(gpus[n.id]),
            "gpu_model": ", ".join(sorted(set(gpus[n.id]))) or "—",
            "rack": n.rack or "—",
            "resource_class": n.resource_class or "—",
            "vdc": (", ".join(vdcs.get(n.id, [])) or "—") if principal.sees_all_tenants else "",
            "tenant": holders.get(n.id, "—") if principal.sees_all_tenants else "",
            "last_error": (n.last_error or "") if principal.sees_all_tenants else "",
        }
        for n in nodes
    ]


def fleet_summary(session: Session, principal: Principal, hottest: int = 10) -> dict[str, Any]:
    """What the page shows above the table, by aggregates over the visible nodes (not their rows):
    how many, by provision state and by worst sensor state (most common first), the sum of their
    latest DCMI watts (None without a reading) and the `hottest` nodes by hottest sensor."""
    ids = visible(select(Node.id), principal)
    states = session.exec(visible(select(Node.provision_state, func.count()).group_by(Node.provision_state), principal)).all()
    nodes = sum(count for _, count in states)
    worst = Counter(HEALTH_NAMES.get(state) for state in worst_state_by_node(session, ids).values())
    worst["unknown"] += nodes - sum(worst.values())
    watts, readings = session.exec(select(func.sum(HealthSnapshot.value), func.count(HealthSnapshot.value)).where(
        HealthSnapshot.metric == POWER_METRIC, HealthSnapshot.labels_key == "", col(HealthSnapshot.node_id).in_(ids))).one()
    hot = session.exec(
        select(Node.name, func.max(HealthSnapshot.value).label("hottest")).join(Node, col(Node.id) == HealthSnapshot.node_id)
        .where(HealthSnapshot.metric == TEMPERATURE_METRIC, col(HealthSnapshot.node_id).in_(ids),
               col(HealthSnapshot.value).is_not(None))
        .group_by(Node.name).order_by(func.max(HealthSnapshot.value).desc(), Node.name).limit(hottest)).all()
    return {
        "nodes": nodes,
        "states": dict(sorted(((state, count) for state, count in states), key=lambda item: (-item[1], item[0]))),
        "health": {name: count for name, count in worst.most_common() if count},
        "watts": float(watts) if readings else None,
        "hottest": [{"name": name, "max_temp_c": value} for name, value in hot],
    }


def vdc_names_by_node(session: Session, only: list[int] | None = None) -> dict[int, list[str]]:
    """The names of the VDCs each node (or each of `only`) belongs to (explicit members and selector matches), sorted."""
    names = dict(session.exec(select(Vdc.id, Vdc.name)).all())
    by_node: dict[int, list[str]] = defaultdict(list)
    wanted = None if only is None else set(only)
    for vdc_id, node_ids in member_node_ids(session, list(names)).items():
        for node_id in node_ids if wanted is None else wanted.intersection(node_ids):
            by_node[node_id].append(names[vdc_id])
    return {node_id: sorted(vdc_names) for node_id, vdc_names in by_node.items()}


def latest_values(session: Session, node_ids: Select | list[int], metric: str) -> dict[int, float]:
    """The newest value of an unlabelled node metric (e.g. DCMI watts) per node."""
    rows = session.exec(
        select(HealthSnapshot.node_id, HealthSnapshot.value)
        .where(HealthSnapshot.metric == metric, HealthSnapshot.labels_key == "", col(HealthSnapshot.node_id).in_(node_ids))
    ).all()
    return {node_id: value for node_id, value in rows if value is not None}


def hottest_by_node(session: Session, node_ids: Select | list[int]) -> dict[int, float]:
    """The hottest temperature sensor reading per node (°C)."""
    rows = session.exec(
        select(HealthSnapshot.node_id, func.max(HealthSnapshot.value))
        .where(HealthSnapshot.metric == TEMPERATURE_METRIC, col(HealthSnapshot.node_id).in_(node_ids))
        .group_by(HealthSnapshot.node_id)
    ).all()
    return {node_id: value for node_id, value in rows if value is not None}


def worst_state_by_node(session: Session, node_ids: Select | list[int]) -> dict[int, int]:
    """The worst sensor state per node (0 ok, 1 warning, 2 critical); nodes without readings are absent."""
    rows = session.exec(
        select(HealthSnapshot.node_id, func.max(HealthSnapshot.state))
        .where(col(HealthSnapshot.node_id).in_(node_ids), col(HealthSnapshot.state).is_not(None))
        .group_by(HealthSnapshot.node_id)
    ).all()
    return {node_id: state for node_id, state in rows if state is not None}


def fleet_power(session: Session, principal: Principal, start: datetime, end: datetime) -> list[Point]:
    """Total DCMI power of the visible nodes per 5-minute bucket (sum of each node's bucket mean):
    the whole fleet's from the stored sums (collectors.fleet_power), a tenant's live over its nodes."""
    if principal.sees_all_tenants:
        totals = fleet_totals(session, start, end)
    else:  # a short list of names is read by the (entity, metric, bucket) key; a subquery plans a scan of all
        names: Any = list(session.exec(visible(select(Node.name), principal)).all())
        names = names if len(names) <= MANY_IDS else visible(select(Node.name), principal)
        totals = sorted((bucket, watts) for bucket, (watts, _) in live_totals(session, start, end, names).items())
    return [Point(bucket, round(watts, 1)) for bucket, watts in totals]


def unreachable_bmcs(session: Session, principal: Principal) -> list[CollectorTargetState]:
    """IPMI and Redfish targets whose last poll failed (infra admins only: BMCs are not tenant data)."""
    if not principal.sees_all_tenants:
        return []
    statement = (
        select(CollectorTargetState)
        .where(col(CollectorTargetState.collector).in_(BMC_COLLECTORS), col(CollectorTargetState.up).is_(False))
        .order_by(col(CollectorTargetState.consecutive_failures).desc(), CollectorTargetState.target)
    )
    return list(session.exec(statement).all())


def gpus_with_xid(session: Session, principal: Principal) -> list[dict[str, Any]]:
    """GPUs of visible nodes whose last XID error code is non-zero, newest first."""
    node_names = dict(session.exec(visible(select(Node.id, Node.name), principal)).all())
    rows = session.exec(
        select(HealthSnapshot, Gpu.index, Gpu.model)
        .join(Gpu, Gpu.uuid == HealthSnapshot.entity, isouter=True)
        .where(HealthSnapshot.metric == XID_METRIC, HealthSnapshot.value > 0,
               col(HealthSnapshot.node_id).in_(visible(select(Node.id), principal)))
        .order_by(col(HealthSnapshot.observed_at).desc())
    ).all()
    return [
        {"node": node_names[s.node_id], "gpu": s.entity, "index": index, "model": model or "—",
         "xid": int(s.value), "observed_at": s.observed_at}
        for s, index, model in rows
    ]
