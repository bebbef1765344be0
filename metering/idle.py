"""Idle capacity: node-hours and GPU-hours the fleet had but nobody used, priced at list.

Capacity counts every enrolled node from its enrolment (`node.created_at`) up to now:
one node-hour per hour (`node-hour:<resource_class>`) and one GPU-hour per GPU
(`gpu-hour:<model>`). Idle = capacity − leased node/GPU-hours (GPU instance leases too) −
Kubernetes GPU request-hours (MIG instances in their GPU's hours; never below zero): MIG slices nobody requested are idle. Setting `idle_cost_policy` decides who pays it:

- `platform` (default): the operator absorbs it; it is shown on its own (`/api/v1/bills/idle`,
  `kiln bills idle`) and never on tenants' bills;
- `share`: it is spread over tenants in proportion to their usage cost (Kubecost's shareIdle),
  as one `idle-share` line per tenant — and still shown on its own.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta

from sqlalchemy import func
from sqlmodel import Session, col, select

from fleet.models import Gpu, Node
from metering import skus
from metering.models import UsageRecord
from metering.rating import UsageTotal
from metering.usage import SOURCE_K8S, SOURCE_LEASE, parts_of, parts_sum

POLICIES = ("platform", "share")
_MICROSECOND = timedelta(microseconds=1)


def capacity(session: Session, start: datetime, stop: datetime) -> dict[str, int]:
    """Node-hours per `node-hour:` SKU and GPU-hours per `gpu-hour:` SKU the fleet had over [start, stop),
    exactly, in parts (node- and GPU-microseconds, see `metering.money`)."""
    totals: dict[str, int] = defaultdict(int)
    if stop <= start:
        return totals
    gpu_counts: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for node_id, model, count in session.exec(select(Gpu.node_id, Gpu.model, func.count()).group_by(Gpu.node_id, Gpu.model)).all():
        gpu_counts[node_id].append((model, count))
    for node in session.exec(select(Node)).all():
        present_from = max(start, node.created_at)
        if present_from >= stop:
            continue
        micros = (stop - present_from) // _MICROSECOND
        totals[skus.node_hour(node.resource_class)] += micros
        for model, count in gpu_counts.get(node.id, []):
            totals[skus.gpu_hour(model)] += micros * count
    return totals


def used(session: Session, start: datetime, end: datetime) -> dict[str, int]:
    """Leased node/GPU-hours and Kubernetes GPU-hours per SKU over usage hours in [start, end), in parts."""
    statement = (
        select(UsageRecord.sku, parts_sum())
        .where(col(UsageRecord.hour) >= start, col(UsageRecord.hour) < end)
        .where(col(UsageRecord.source).in_([SOURCE_LEASE, SOURCE_K8S]))
        .group_by(UsageRecord.sku)
    )
    taken: dict[str, int] = defaultdict(int)
    for sku, parts in session.exec(statement).all():
        if skus.family(sku) in (skus.NODE_HOUR, skus.GPU_HOUR):
            taken[skus.whole_gpu_sku(sku)] += parts_of(parts)  # MIG instances take from their GPU
    return taken


def idle_usage(
    session: Session, window_segments: list[tuple[datetime, datetime]], stop: datetime
) -> list[UsageTotal]:
    """Idle quantities per SKU and segment (tenant None), ready for `metering.rating.rate`."""
    idle = []
    for start, end in window_segments:
        have = capacity(session, start, min(end, stop))
        taken = used(session, start, end)
        for sku in sorted(have):
            parts = max(have[sku] - taken.get(sku, 0), 0)
            if parts > 0:
                idle.append(UsageTotal(None, sku, skus.unit_of(sku), start, end, parts))
    return idle
