"""Kiln's Kubernetes usage beside OpenCost's, per namespace, with the difference.

Kiln owns the numbers it bills (`usage_record`, source `k8s`, as the last bills run summed them
per namespace and day: `metering.usage_days`); OpenCost's own figures, imported
by the `opencost` collector (`opencost_allocation`), are shown next to them so a difference is
visible and explainable (OpenCost samples usage; Kiln integrates request intervals exactly).
Tenants see their namespaces only; OpenCost's `__idle__` / `__unallocated__` rows and
namespaces without a tenant are for global roles.
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

from pydantic import BaseModel
from sqlalchemy import func
from sqlmodel import Session, col, select

from collectors.models import K8sAllocation, OpenCostAllocation
from kiln.auth import Principal
from kiln.models import Tenant
from metering import skus
from kiln.types import exact_sum
from metering.models import UsageDay
from metering.periods import period_bounds
from metering.usage import BYTES_PER_GIB, summed

MEASURES = {skus.GPU_HOUR: "gpu-hours", skus.CPU_CORE_HOUR: "cpu-core-hours", skus.RAM_GIB_HOUR: "ram-gib-hours"}
ZERO = Decimal(0)


class ReconciliationRow(BaseModel):
    """One namespace and measure: Kiln's figure, OpenCost's, and Kiln − OpenCost."""

    namespace: str
    tenant: str | None
    measure: str
    kiln: Decimal
    opencost: Decimal | None
    difference: Decimal | None


def reconcile(session: Session, principal: Principal, period: str) -> list[ReconciliationRow]:
    """Per namespace and measure over the period: Kiln's request-hours vs OpenCost's (None when it has no row)."""
    start, end = period_bounds(period)
    tenants = dict(session.exec(select(Tenant.slug, Tenant.id)).all())
    owners = {ns: slug for ns, slug in session.exec(select(K8sAllocation.namespace, K8sAllocation.tenant_slug).distinct()).all()
              if slug in tenants}
    kiln: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    statement = (
        select(UsageDay.namespace, UsageDay.sku, exact_sum(UsageDay.quantity_parts))
        .where(UsageDay.period == period, UsageDay.namespace != "")
        .group_by(UsageDay.namespace, UsageDay.sku)
    )
    for namespace, sku, parts in session.exec(principal.scope(statement, UsageDay.tenant_id)).all():
        measure = MEASURES.get(skus.family(sku))
        if measure:
            kiln[(namespace, measure)] += summed(parts)
    opencost: dict[tuple[str, str], Decimal] = {}
    oc = session.exec(
        select(OpenCostAllocation.namespace, func.sum(OpenCostAllocation.gpu_hours), func.sum(OpenCostAllocation.cpu_core_hours),
               func.sum(OpenCostAllocation.ram_byte_hours))
        .where(col(OpenCostAllocation.window_start) >= start, col(OpenCostAllocation.window_end) <= end)
        .group_by(OpenCostAllocation.namespace)
    ).all()
    for namespace, gpu, cpu, ram in oc:
        owner = owners.get(namespace)
        if not principal.sees_all_tenants and (owner is None or tenants[owner] not in principal.tenant_ids):
            continue
        # a sum is NULL where OpenCost reported nothing for the measure (null: NaN on its side)
        for measure, value in (("gpu-hours", gpu), ("cpu-core-hours", cpu), ("ram-gib-hours", ram)):
            if value is not None:
                value = Decimal(value)
                opencost[(namespace, measure)] = (value / BYTES_PER_GIB).quantize(Decimal("0.000001")) \
                    if measure == "ram-gib-hours" else value
    rows = []
    for namespace, measure in sorted(set(kiln) | set(opencost)):
        ours, theirs = kiln.get((namespace, measure), ZERO), opencost.get((namespace, measure))
        rows.append(ReconciliationRow(namespace=namespace, tenant=owners.get(namespace), measure=measure, kiln=ours.normalize() + 0,
                                      opencost=theirs, difference=None if theirs is None else ours - theirs))
    return rows
