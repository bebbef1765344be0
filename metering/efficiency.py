"""GPU efficiency per tenant: GPU-hours used ÷ GPU-hours allocated, from DCGM/ROCm utilisation.

For each lease in the period, the leased node's GPUs' 5-minute utilisation rollups
(`rollup_5m`, metric `gpu_util_percent`, entity = GPU UUID) inside the lease give the GPU-hours
*used* (mean utilisation × 5 min per bucket) over the GPU-hours *measured* (buckets with data).
`allocated_gpu_hours` is what the tenant is billed for (lease usage records). Utilisation is a
measurement, not money: it is reported to 4 decimal places.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel
from sqlalchemy import func
from sqlmodel import Session, col, or_, select

from collectors.models import Rollup5m
from fleet.models import Gpu
from fleet.tenancy_models import Lease
from kiln.auth import Principal
from kiln.db import utcnow
from kiln.models import Tenant
from metering import skus
from metering.models import UsageRecord
from metering.periods import period_bounds
from metering.usage import SOURCE_LEASE

UTIL_METRIC = "gpu_util_percent"
BUCKET_HOURS = Decimal(5) / 60
PLACES = Decimal("0.0001")


class EfficiencyRow(BaseModel):
    """A tenant's leased GPU-hours, how many had utilisation data, how many were used, and the ratio."""

    tenant: str
    allocated_gpu_hours: Decimal
    measured_gpu_hours: Decimal
    used_gpu_hours: Decimal
    efficiency: Decimal | None  # used ÷ measured; None without measurements


def efficiency(session: Session, principal: Principal, period: str, now: datetime | None = None) -> list[EfficiencyRow]:
    """Per tenant the caller may see: allocated, measured and used GPU-hours of leased nodes in the period."""
    start, end = period_bounds(period)
    stop = min(end, now or utcnow())
    measured: dict[int, Decimal] = defaultdict(Decimal)
    used: dict[int, Decimal] = defaultdict(Decimal)
    leases = session.exec(principal.scope(select(Lease).where(
        col(Lease.starts_at) < stop, or_(col(Lease.ends_at).is_(None), col(Lease.ends_at) > start)), Lease.tenant_id)).all()
    for lease in leases:
        uuids = [u for u in session.exec(select(Gpu.uuid).where(Gpu.node_id == lease.node_id)).all() if u]
        if not uuids:
            continue
        lo, hi = max(lease.starts_at, start), min(lease.ends_at or stop, stop)
        count, mean_sum = session.exec(
            select(func.count(), func.coalesce(func.sum(Rollup5m.sum / Rollup5m.count), 0))
            .where(Rollup5m.metric == UTIL_METRIC, col(Rollup5m.entity).in_(uuids), Rollup5m.count > 0)
            .where(col(Rollup5m.bucket) >= lo, col(Rollup5m.bucket) < hi)
        ).one()
        measured[lease.tenant_id] += count * BUCKET_HOURS
        used[lease.tenant_id] += Decimal(str(mean_sum)) / 100 * BUCKET_HOURS
    allocated = dict(session.exec(principal.scope(
        select(UsageRecord.tenant_id, func.sum(UsageRecord.quantity))
        .where(UsageRecord.source == SOURCE_LEASE, col(UsageRecord.sku).startswith(skus.GPU_HOUR + ":"))
        .where(col(UsageRecord.hour) >= start, col(UsageRecord.hour) < end).group_by(UsageRecord.tenant_id),
        UsageRecord.tenant_id)).all())
    slugs = dict(session.exec(select(Tenant.id, Tenant.slug)).all())
    rows = []
    for tenant_id in sorted(set(allocated) | set(measured), key=lambda t: slugs.get(t, "")):
        have, took = measured.get(tenant_id, Decimal(0)), used.get(tenant_id, Decimal(0))
        rows.append(EfficiencyRow(
            tenant=slugs.get(tenant_id, "?"), allocated_gpu_hours=Decimal(allocated.get(tenant_id, 0)).normalize() + 0,
            measured_gpu_hours=have.quantize(PLACES), used_gpu_hours=took.quantize(PLACES),
            efficiency=(took / have).quantize(PLACES) if have else None))
    return rows
