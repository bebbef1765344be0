"""Idle capacity: node-hours and GPU-hours the fleet had but nobody used, priced at list.

Capacity counts every enrolled node from its enrolment (`node.created_at`) up to now:
one node-hour per hour (`node-hour:<resource_class>`) and one GPU-hour per GPU
(`gpu-hour:<model>`). Idle = capacity − leased node/GPU-hours − Kubernetes GPU request-hours
(never below zero). Setting `idle_cost_policy` decides who pays it:

- `platform` (default): the operator absorbs it; it is shown on its own (`/api/v1/bills/idle`,
  `kiln bills idle`) and never on tenants' bills;
- `share`: it is spread over tenants in proportion to their usage cost (Kubecost's shareIdle),
  as one `idle-share` line per tenant — and still shown on its own.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import func
from sqlmodel import Session, col, select

from fleet.models import Gpu, Node
from metering import skus
from metering.models import UsageRecord
from metering.money import round_quantity
from metering.rating import UsageTotal
from metering.usage import SOURCE_K8S, SOURCE_LEASE

POLICIES = ("platform", "share")
MICROS_PER_HOUR = Decimal(3_600_000_000)
_MICROSECOND = timedelta(microseconds=1)


def capacity(session: Session, start: datetime, stop: datetime) -> dict[str, Decimal]:
    """Node-hours per `node-hour:` SKU and GPU-hours per `gpu-hour:` SKU the fleet had over [start, stop)."""
    totals: dict[str, Decimal] = defaultdict(Decimal)
    if stop <= start:
        return totals
    gpu_counts: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for node_id, model, count in session.exec(select(Gpu.node_id, Gpu.model, func.count()).group_by(Gpu.node_id, Gpu.model)).all():
        gpu_counts[node_id].append((model, count))
    for node in session.exec(select(Node)).all():
        present_from = max(start, node.created_at)
        if present_from >= stop:
            continue
        hours = Decimal((stop - present_from) // _MICROSECOND) / MICROS_PER_HOUR
        totals[skus.node_hour(node.resource_class)] += hours
        for model, count in gpu_counts.get(node.id, []):
            totals[skus.gpu_hour(model)] += hours * count
    return totals


def used(session: Session, start: datetime, end: datetime) -> dict[str, Decimal]:
    """Leased node/GPU-hours and Kubernetes GPU-hours per SKU over usage hours in [start, end)."""
    statement = (
        select(UsageRecord.sku, func.sum(UsageRecord.quantity))
        .where(col(UsageRecord.hour) >= start, col(UsageRecord.hour) < end)
        .where(col(UsageRecord.source).in_([SOURCE_LEASE, SOURCE_K8S]))
        .group_by(UsageRecord.sku)
    )
    return {sku: Decimal(quantity) for sku, quantity in session.exec(statement).all()
            if skus.family(sku) in (skus.NODE_HOUR, skus.GPU_HOUR)}


def idle_usage(
    session: Session, window_segments: list[tuple[datetime, datetime]], stop: datetime
) -> list[UsageTotal]:
    """Idle quantities per SKU and segment (tenant None), ready for `metering.rating.rate`."""
    idle = []
    for start, end in window_segments:
        have = capacity(session, start, min(end, stop))
        taken = used(session, start, end)
        for sku in sorted(have):
            quantity = round_quantity(max(have[sku] - taken.get(sku, Decimal(0)), Decimal(0)))
            if quantity > 0:
                idle.append(UsageTotal(None, sku, skus.unit_of(sku), start, end, quantity))
    return idle
