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
from collectors.store import GPU_UTIL_ROLLUP
from fleet.models import Gpu
from fleet.tenancy_models import Lease
from kiln.auth import Principal
from kiln.db import utcnow
from kiln.models import Tenant
from metering import skus
from metering.models import UsageRecord
from metering.periods import period_bounds
from metering.usage import SOURCE_LEASE, parts_sum, summed

BUCKET_HOURS = Decimal(5) / 60
PLACES = Decimal("0.0001")
LEASES_PER_QUERY = 500


class EfficiencyRow(BaseModel):
    """A tenant's leased GPU-hours, how many had utilisation data, how many were used, and the ratio."""

    tenant: str
    allocated_gpu_hours: Decimal
    measured_gpu_hours: Decimal
    used_gpu_hours: Decimal
    efficiency: Decimal | None  # used ÷ measured; None without measurements


def lease_utilisation(
    session: Session, lease_ids: list[int], start: datetime, stop: datetime,
) -> dict[int, tuple[int, Decimal]]:
    """Per lease with data: how many 5-minute GPU-utilisation buckets of its node's GPUs fall
    inside both the lease and [start, stop), and the sum of their mean utilisation (percent)."""
    out: dict[int, tuple[int, Decimal]] = {}
    for chunk in range(0, len(lease_ids), LEASES_PER_QUERY):
        rows = session.exec(
            select(Lease.id, func.count(), func.sum(Rollup5m.sum / Rollup5m.count))
            .join(Gpu, col(Gpu.uuid) == Rollup5m.entity).join(Lease, col(Lease.node_id) == Gpu.node_id)
            .where(col(Lease.id).in_(lease_ids[chunk:chunk + LEASES_PER_QUERY]))
            .where(Rollup5m.metric == GPU_UTIL_ROLLUP, Rollup5m.count > 0)
            .where(col(Rollup5m.bucket) >= start, col(Rollup5m.bucket) < stop, col(Rollup5m.bucket) >= Lease.starts_at)
            .where(or_(col(Lease.ends_at).is_(None), col(Rollup5m.bucket) < Lease.ends_at))
            .group_by(Lease.id)
        ).all()
        out.update({lease_id: (buckets, Decimal(str(total))) for lease_id, buckets, total in rows})
    return out


def used_hours(percent_sum: Decimal) -> Decimal:
    """GPU-hours used from a sum of 5-minute mean utilisations in percent."""
    return percent_sum / 100 * BUCKET_HOURS


def efficiency(session: Session, principal: Principal, period: str, now: datetime | None = None) -> list[EfficiencyRow]:
    """Per tenant the caller may see: allocated, measured and used GPU-hours of leased nodes in the period."""
    start, end = period_bounds(period)
    stop = min(end, now or utcnow())
    measured: dict[int, Decimal] = defaultdict(Decimal)
    used: dict[int, Decimal] = defaultdict(Decimal)
    leases = session.exec(principal.scope(select(Lease.id, Lease.tenant_id).where(
        col(Lease.starts_at) < stop, or_(col(Lease.ends_at).is_(None), col(Lease.ends_at) > start)), Lease.tenant_id)).all()
    tenant_of = dict(leases)
    for lease_id, (buckets, percent_sum) in lease_utilisation(session, list(tenant_of), start, stop).items():
        measured[tenant_of[lease_id]] += buckets * BUCKET_HOURS
        used[tenant_of[lease_id]] += used_hours(percent_sum)
    allocated = dict(session.exec(principal.scope(
        select(UsageRecord.tenant_id, parts_sum())
        .where(UsageRecord.source == SOURCE_LEASE, col(UsageRecord.sku).startswith(skus.GPU_HOUR + ":"))
        .where(col(UsageRecord.hour) >= start, col(UsageRecord.hour) < end).group_by(UsageRecord.tenant_id),
        UsageRecord.tenant_id)).all())
    slugs = dict(session.exec(select(Tenant.id, Tenant.slug)).all())
    rows = []
    for tenant_id in sorted(set(allocated) | set(measured), key=lambda t: slugs.get(t, "")):
        have, took = measured.get(tenant_id, Decimal(0)), used.get(tenant_id, Decimal(0))
        rows.append(EfficiencyRow(
            tenant=slugs.get(tenant_id, "?"), allocated_gpu_hours=summed(allocated.get(tenant_id, 0)).normalize() + 0,
            measured_gpu_hours=have.quantize(PLACES), used_gpu_hours=took.quantize(PLACES),
            efficiency=(took / have).quantize(PLACES) if have else None))
    return rows
