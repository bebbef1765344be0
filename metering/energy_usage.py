"""Energy usage rows: each metered node-hour's kWh to who held the node, node by node.

A node's kWh per hour (`node_energy_hour`) goes to the tenant leasing it, pro rata to the part
of the hour leased (resource id = node name); on a shared Kubernetes node the rest goes by each
namespace's share of the node's GPUs (their own energy, where GPU counters measure it, to the
namespaces the exporters saw on each GPU) and of its CPUs and memory (`metering.energy_shares`;
resource id = `<node>/k8s:<namespace>`). What nobody held stays unattributed (idle).

Everything is read and split node by node, in node id order — the node's metered hours, its
GPUs' energy, who the exporters saw on its GPUs, and what the tenants requested of it
(`metering.usage.k8s_usage`) — and the rows are written every `FLUSH_NODES` nodes, so memory
holds a few nodes' month, never the fleet's (720,000 metered node-hours at 1,000 MIG and
time-sliced nodes took 3.6 GB when the claims were kept for the whole month).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from itertools import groupby
from typing import Protocol

from sqlmodel import Session, col, select

from collectors.models import GpuEnergyHour, NodeEnergyHour
from fleet.models import Node
from metering import skus
from metering.energy_shares import NodeCapacity, NodeHourClaims, split_node_energy
from metering.gpu_placement import KeyCursor, gpu_holders, placed_gpus
from metering.intervals import HourlyTotals
from metering.money import PARTS_PER_UNIT
from metering.periods import HOUR, split_by_hour
from metering.usage_io import STREAM_ROWS

FLUSH_NODES = 64  # nodes' energy rows held before they are written


class HeldSpan(Protocol):
    """A whole-node lease clipped to the period (`metering.usage`'s lease spans)."""

    tenant_id: int
    vdc_id: int | None
    start: datetime
    end: datetime


def energy_resource_id(node: str, namespace: str | None = None) -> str:
    """An energy row's resource: the node, or for a Kubernetes namespace's share `<node>/k8s:<namespace>`."""
    return f"{node}/k8s:{namespace}" if namespace else node


def energy_place(resource_id: str) -> tuple[str, str | None]:
    """(node, namespace or None) of an energy row's resource (`energy_resource_id` reversed)."""
    node, _, namespace = resource_id.partition("/k8s:")
    return node, namespace or None


def _streamed(session: Session, statement) -> Iterator:
    return session.connection().execute(statement.execution_options(yield_per=STREAM_ROWS))


def _node_energy(session: Session, start: datetime, end: datetime) -> Iterator[tuple[int, list[tuple[datetime, int]]]]:
    """(node id, [(hour, parts of kWh)] in hour order) for every metered node, in node id order."""
    statement = select(NodeEnergyHour.node_id, NodeEnergyHour.hour, NodeEnergyHour.kwh).where(
        col(NodeEnergyHour.hour) >= start, col(NodeEnergyHour.hour) < end).order_by(NodeEnergyHour.node_id, NodeEnergyHour.hour)
    for node_id, rows in groupby(_streamed(session, statement), key=lambda row: row[0]):
        yield node_id, [(hour, int(Decimal(kwh) * PARTS_PER_UNIT)) for _, hour, kwh in rows]


def _gpu_energy(session: Session, start: datetime, end: datetime) -> Iterator[tuple[int, dict[datetime, dict[str, int]]]]:
    """(node id, hour → GPU → parts of kWh its own energy counter measured), in node id order."""
    statement = select(GpuEnergyHour.node_id, GpuEnergyHour.hour, GpuEnergyHour.entity, GpuEnergyHour.kwh).where(
        col(GpuEnergyHour.node_id).is_not(None), col(GpuEnergyHour.hour) >= start, col(GpuEnergyHour.hour) < end
    ).order_by(GpuEnergyHour.node_id, GpuEnergyHour.hour)
    for node_id, rows in groupby(_streamed(session, statement), key=lambda row: row[0]):
        hours: dict[datetime, dict[str, int]] = {}
        for _, hour, entity, kwh in rows:
            hours.setdefault(hour, {})[entity] = int(Decimal(kwh) * PARTS_PER_UNIT)
        yield node_id, hours


def _capacities(session: Session, gpus: Mapping[int, Mapping[str, int]]) -> dict[int, NodeCapacity]:
    """Each node's GPUs, and its CPU cores and memory where its facts say (`cpu_cores`, `ram_mib`)."""
    out = {}
    for node_id, facts in session.exec(select(Node.id, Node.facts)).all():
        cores, ram_mib = (facts or {}).get("cpu_cores"), (facts or {}).get("ram_mib")
        out[node_id] = NodeCapacity(sum(gpus.get(node_id, {}).values()),
                                    int(cores) if isinstance(cores, int | float) and cores > 0 else None,
                                    int(ram_mib) * 2**20 if isinstance(ram_mib, int | float) and ram_mib > 0 else None)
    return out


def _node_hour(name: str, hour: datetime, parts: int, claims: NodeHourClaims, leases: Sequence[HeldSpan],
               per_gpu: Mapping[str, int] | None, holders: Mapping, capacity: NodeCapacity) -> dict:
    """One node-hour's parts per (tenant id, resource id, VDC id)."""
    for h in leases:
        for _, micros in split_by_hour(max(h.start, hour), min(h.end, hour + HOUR)):
            claims.leased[(h.tenant_id, name, h.vdc_id)] += micros
    placed = placed_gpus(per_gpu, holders, claims,
                         lambda tenant_id, ns: (tenant_id, energy_resource_id(name, ns), None)) if per_gpu else []
    requests = {kind: {(tenant_id, energy_resource_id(name, namespace), vdc_id): w
                       for (tenant_id, namespace, vdc_id), w in weights.items()}
                for kind, weights in claims.requests.items()}
    return split_node_energy(parts, sum(per_gpu.values()) if per_gpu else None,
                             NodeHourClaims(claims.leased, requests), capacity, placed)


def energy_usage(
    session: Session, start: datetime, end: datetime, held: Mapping[int, Sequence[HeldSpan]],
    nodes: Mapping[int, tuple[str, str | None]], gpus: Mapping[int, Mapping[str, int]],
    claims: Iterator[tuple[int, dict[datetime, NodeHourClaims]]], write: Callable[[HourlyTotals], int],
) -> int:
    """kWh per node-hour to the lease holders (pro rata), else to Kubernetes tenants by their GPU,
    CPU and memory shares, exactly: the rest is idle energy. `claims`: what tenants requested of
    each metered node per hour, in node id order (read to its end here); `write` stores a batch of
    rows and says how many. Returns the rows written."""
    capacities = _capacities(session, gpus)
    node_claims, gpu_kwh, holders = KeyCursor(claims), KeyCursor(_gpu_energy(session, start, end)), \
        KeyCursor(gpu_holders(session, start, end))
    totals, pending, written = HourlyTotals(start), 0, 0
    for node_id, hours in _node_energy(session, start, end):
        name, hour_claims, per_gpu, on_gpus = nodes[node_id][0], node_claims.at(node_id), gpu_kwh.at(node_id), holders.at(node_id)
        for hour, parts in hours:
            split = _node_hour(name, hour, parts, hour_claims.get(hour) or NodeHourClaims(), held.get(node_id, ()),
                               per_gpu.get(hour), on_gpus.get(hour, {}), capacities[node_id])
            for (tenant_id, resource_id, vdc_id), share in split.items():
                if share:
                    totals.add_weight((tenant_id, resource_id, skus.KWH), hour, share, vdc_id)
        pending += 1
        if pending >= FLUSH_NODES:
            written, totals, pending = written + write(totals), HourlyTotals(start), 0
    node_claims.drain()
    return written + write(totals)
