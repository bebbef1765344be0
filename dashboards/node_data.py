"""Data for a node's page: facts and GPUs, sensors with their states, history, events, lease.

The node is looked up with `fleet.nodes.get_node_by_name` (visible nodes only) and shaped
with `fleet.nodes.to_public`, so tenants get exactly what the API gives them (no BMC
address, user, backend id or backend errors). Tenants see the node's events from the start
of their current lease only (its start, or when it was recorded if later), without actors:
earlier lines belong to earlier holders. The XID errors under the GPU panels follow the same window.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from collectors.health_events import gpu_label, xid_meaning
from collectors.models import GpuXidEvent, HealthSnapshot, Rollup5m
from collectors.store import (
    GPU_MEMORY_ROLLUP,
    GPU_POWER_ROLLUP,
    GPU_TEMPERATURE_ROLLUP,
    GPU_UTIL_ROLLUP,
    POWER_METRIC,
    TEMPERATURE_MAX_ROLLUP,
)
from dashboards.fleet_data import Point
from dashboards.tenancy_data import running_instances
from fleet.health import bmc_status
from fleet.node_history import current_lease, history_window, visible_events
from fleet.nodes import get_node_by_name, to_public
from fleet.schemas import NodePublic
from fleet.tenancy_schemas import LeasePublic
from kiln.auth import Principal

STATE_NAMES = {None: "no thresholds", 0: "ok", 1: "warning", 2: "critical"}
SENSOR_SOURCES = ("ipmi", "redfish", "dcgm", "rocm")
# the node page's per-GPU panels (Grafana's DCGM dashboard 12239): history key -> rollup series
GPU_PANELS = {"gpu_util": GPU_UTIL_ROLLUP, "gpu_memory": GPU_MEMORY_ROLLUP, "gpu_power": GPU_POWER_ROLLUP,
              "gpu_temperature": GPU_TEMPERATURE_ROLLUP}


@dataclass
class NodeDetail:
    """Everything the node page shows."""

    node: NodePublic
    lease: LeasePublic | None
    sensors: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    bmc: str = "not polled yet"  # how the IPMI collector's polls of the BMC go (`bmc_text`)
    instances: list[dict[str, Any]] = field(default_factory=list)  # GPU instance leases in force (the caller's)


def node_detail(session: Session, principal: Principal, name: str, event_limit: int = 50) -> NodeDetail:
    """The node called `name` as the caller may see it; NotFound when it may not."""
    node = get_node_by_name(session, principal, name)
    public = to_public(session, principal, [node])[0]
    lease = current_lease(session, principal, node.id)
    return NodeDetail(public, lease, sensors(session, node.id, public), events(session, principal, node.id, lease, event_limit),
                      bmc_text(*bmc_status(session, principal, node.name, node.bmc_driver)),
                      running_instances(session, principal, node_id=node.id))


def bmc_text(up: bool | None, last_success: datetime | None, error: str | None) -> str:
    """One line on the node page for the BMC's polls: answering, answering with a part that
    failed (which, and why: infra admins only), or not answering."""
    if up is None:
        return "not polled yet"
    if up:
        return f"answering; {error}" if error else "answering"
    since = f" (last answered {last_success:%Y-%m-%d %H:%M} UTC)" if last_success else ""
    return f"not answering: {error}{since}" if error else f"not answering{since}"


def sensors(session: Session, node_id: int, node: NodePublic) -> list[dict[str, Any]]:
    """The node's and its GPUs' latest readings, worst state first, with units and states."""
    uuids = [g.uuid for g in node.gpus if g.uuid]
    statement = select(HealthSnapshot).where(
        (HealthSnapshot.node_id == node_id) | col(HealthSnapshot.entity).in_(uuids),
        col(HealthSnapshot.unit).not_in(["info", "state"]),
    )
    rows = session.exec(statement).all()
    out = [
        {
            "entity": "node" if s.entity == node.name else s.entity,
            "sensor": s.labels.get("name") or s.metric,
            "metric": s.metric,
            "value": s.value,
            "unit": s.unit,
            "state": STATE_NAMES.get(s.state, str(s.state)),
            "state_code": s.state,
            "observed_at": s.observed_at,
        }
        for s in rows
    ]
    return sorted(out, key=lambda r: (-(r["state_code"] if r["state_code"] is not None else -1), r["entity"], r["sensor"]))


def events(
    session: Session, principal: Principal, node_id: int, lease: LeasePublic | None, limit: int
) -> list[dict[str, Any]]:
    """The node's history as the caller may see it (`fleet.node_history.visible_events`), newest first."""
    return [{"at": e.at, "kind": e.kind, "message": e.message, "actor": e.actor}
            for e in visible_events(session, principal, node_id, limit, lease)]


def series(session: Session, entities: list[str], metric: str, start: datetime, end: datetime,
           *, peak: bool = False) -> dict[str, list[Point]]:
    """Per-entity 5-minute series of a rolled-up metric: bucket mean, or bucket maximum with `peak`."""
    rows = session.exec(
        select(Rollup5m)
        .where(Rollup5m.metric == metric, col(Rollup5m.entity).in_(entities), Rollup5m.bucket >= start,
               Rollup5m.bucket < end, Rollup5m.count > 0)
        .order_by(Rollup5m.entity, Rollup5m.bucket)
    ).all()
    out: dict[str, list[Point]] = {e: [] for e in entities}
    for r in rows:
        out[r.entity].append(Point(r.bucket, round(r.max if peak else r.sum / r.count, 2)))
    return out


def gpu_labels(node: NodePublic) -> dict[str, str]:
    """The node's GPUs Kiln knows by UUID, in index order: UUID -> legend label (index, model, UUID tail)."""
    return {g.uuid: gpu_label(g.index, g.model, g.uuid) for g in sorted(node.gpus, key=lambda g: g.index) if g.uuid}


def xid_errors(session: Session, labels: dict[str, str], start: datetime, end: datetime) -> list[dict[str, Any]]:
    """The XID errors of the GPUs in `labels` (UUID -> label) over [start, end), oldest first:
    time, GPU label, code and NVIDIA's meaning."""
    if not labels:
        return []
    rows = session.exec(select(GpuXidEvent).where(col(GpuXidEvent.entity).in_(list(labels)), GpuXidEvent.at >= start,
                                                   GpuXidEvent.at < end).order_by(col(GpuXidEvent.at), col(GpuXidEvent.id)))
    return [{"at": x.at, "gpu": labels[x.entity], "code": x.code, "meaning": xid_meaning(x.code)} for x in rows]


def history(session: Session, principal: Principal, node: NodePublic, start: datetime, end: datetime) -> dict[str, Any]:
    """Power (W) and hottest sensor (°C) of a node, its GPUs' series (`GPU_PANELS`, by GPU label)
    over [start, end), and its XID errors (`xid_errors`) there from the caller's `history_window` on."""
    since = history_window(principal, current_lease(session, principal, node.id))
    labels = gpu_labels(node)
    gpus = {key: {labels[uuid]: points for uuid, points in series(session, list(labels), metric, start, end).items()}
            if labels else {} for key, metric in GPU_PANELS.items()}
    return {
        "power": series(session, [node.name], POWER_METRIC, start, end),
        "temperature": series(session, [node.name], TEMPERATURE_MAX_ROLLUP, start, end, peak=True),
        **gpus,
        "xid": xid_errors(session, labels, max(start, since) if since else start, end),
    }
