"""Data for the usage and VDC pages: GPU-hours from leases (whole nodes, and GPU instances by their
compute fraction), quotas, running nodes and instances (efficiency is `metering.efficiency`).

Leases are read through `Principal.scope` (a tenant sees only its own), VDCs through
`fleet.vdcs.list_vdcs`/`to_public` (grants of other tenants are left out for tenant roles),
and quota use is `fleet.vdcs.quota_use`, the figure quotas are enforced against.
GPU-hours are exact Decimals: GPUs × leased seconds / 3600, split at UTC midnights.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, NamedTuple

from sqlmodel import Session, col, select

from collectors.models import K8sAllocation
from collectors.mig_profiles import compute_fraction
from fleet import leases as lease_service
from fleet.instance_leases import list_instance_leases
from fleet.instance_leases import to_public as instance_public
from fleet.models import Gpu, Node
from fleet.tenancy_models import GpuInstanceLease, Lease, Vdc
from fleet.tenancy_schemas import VdcPublic
from fleet.daily_hours import DayMicros, daily_lease_micros, days_between
from fleet.usage import HOURS_QUANTUM, MICROS_PER_HOUR, overlapping
from fleet.vdcs import list_vdcs, to_public
from kiln.auth import Principal
from kiln.db import among, utcnow
from kiln.models import Tenant

GPU_RESOURCES = ("nvidia.com/gpu", "amd.com/gpu")


class UsageSlice(NamedTuple):  # a tuple, not a frozen dataclass: 30,000 a week for all tenants at 10,000 nodes
    """GPU-hours a tenant held on one day, through one VDC, on one GPU model."""

    day: date
    tenant: str
    vdc: str
    gpu_model: str
    gpu_hours: Decimal


def visible_tenants(session: Session, principal: Principal) -> list[Tenant]:
    """The tenants the caller may see, by slug."""
    return list(session.exec(principal.scope(select(Tenant).order_by(Tenant.slug), Tenant.id)).all())


def _leases(session: Session, principal: Principal, start: datetime, end: datetime, tenant_id: int | None,
            model: type[Lease] | type[GpuInstanceLease] = Lease) -> list:
    statement = principal.scope(select(model).where(overlapping(start, end, model)), model.tenant_id)
    if tenant_id is not None:
        statement = statement.where(model.tenant_id == tenant_id)
    return list(session.exec(statement.order_by(model.id)).all())


def _instance_weight(model: str, profile: str) -> dict[str, Decimal]:
    fraction = compute_fraction(model, profile)
    return {model: Decimal(fraction.numerator) / fraction.denominator}


def _day_segments(start: datetime, end: datetime) -> list[tuple[date, Decimal]]:
    """(day, hours) pieces of [start, end) split at UTC midnights."""
    return [(a.date(), Decimal((b - a) // timedelta(microseconds=1)) / Decimal(3_600_000_000))
            for a, b in days_between(start, end)]


def gpu_hours(
    session: Session, principal: Principal, start: datetime, end: datetime, tenant_id: int | None = None,
    now: datetime | None = None, held: list[DayMicros] | None = None,
) -> list[UsageSlice]:
    """GPU-hours allocated by lease over [start, end) (open leases count up to now), per day/VDC/model
    (`held`: `daily_lease_micros` of the same window, when already read)."""
    stop = min(end, now or utcnow())
    slugs = dict(session.exec(select(Tenant.id, Tenant.slug)).all())
    vdcs = dict(session.exec(select(Vdc.id, Vdc.name)).all())
    totals: dict[tuple[date, str, str, str], Decimal] = defaultdict(Decimal)
    for row in held if held is not None else daily_lease_micros(session, principal, start, stop, tenant_id):
        if row.gpu_micros:
            key = (row.day, slugs.get(row.tenant_id, "?"), vdcs.get(row.vdc_id, "no VDC"), row.gpu_model)
            totals[key] += Decimal(row.gpu_micros) / MICROS_PER_HOUR
    # a GPU instance lease: its GPU's model (as the lease recorded it), weighted by the profile's compute fraction
    for i in _leases(session, principal, start, stop, tenant_id, GpuInstanceLease):
        for day, hours in _day_segments(max(i.starts_at, start), min(i.ends_at or stop, stop)):
            for model, weight in _instance_weight(i.gpu_model or "?", i.profile).items():
                totals[(day, slugs.get(i.tenant_id, "?"), vdcs.get(i.vdc_id, "no VDC"), model)] += hours * weight
    return [UsageSlice(*key, value.quantize(HOURS_QUANTUM)) for key, value in sorted(totals.items()) if value > 0]


def total_by(slices: list[UsageSlice], attribute: str) -> dict[Any, Decimal]:
    """GPU-hours summed by one attribute of the slices (day, tenant, vdc or gpu_model)."""
    out: dict[Any, Decimal] = defaultdict(Decimal)
    for s in slices:
        out[getattr(s, attribute)] += s.gpu_hours
    return dict(sorted(out.items()))


def stacked_by_day(slices: list[UsageSlice], attribute: str) -> dict[str, dict[str, Decimal]]:
    """`{value of attribute: {ISO day: GPU-hours}}` for a stacked daily chart."""
    out: dict[str, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for s in slices:
        out[str(getattr(s, attribute))][s.day.isoformat()] += s.gpu_hours
    return {k: dict(v) for k, v in out.items()}


def running_instances(session: Session, principal: Principal, tenant_id: int | None = None, node_id: int | None = None
                      ) -> list[dict[str, Any]]:
    """GPU instance leases in force now (the caller's tenants only; of one node with `node_id`), with
    node, GPU index, model, profile (and the part of the GPU it is), VDC and start; newest first."""
    instances = list_instance_leases(session, principal, tenant_id=tenant_id, node_id=node_id, active=True)
    return [{"node": p.node, "tenant": p.tenant, "vdc": p.vdc or "—", "since": p.starts_at, "gpu_index": p.gpu_index,
             "profile": p.profile, "gpus": f"GPU {p.gpu_index} · {p.profile} ({p.compute_fraction} of a {p.gpu_model})"}
            for p in instance_public(session, instances)]


def running_nodes(session: Session, principal: Principal, tenant_id: int | None = None) -> list[dict[str, Any]]:
    """Leases in force now (the caller's tenants only), with node, GPUs, VDC and start."""
    leases = lease_service.list_leases(session, principal, tenant_id=tenant_id, active=True)
    public = lease_service.to_public(session, leases)
    node_ids = [l.node_id for l in leases]
    gpus: dict[int, Counter[str]] = defaultdict(Counter)
    for node_id, model in session.exec(select(Gpu.node_id, Gpu.model).where(among(Gpu.node_id, node_ids))):
        gpus[node_id][model] += 1
    states = dict(session.exec(select(Node.id, Node.provision_state).where(among(Node.id, node_ids))).all())
    return [
        {"node": p.node, "tenant": p.tenant, "vdc": p.vdc or "—", "since": p.starts_at, "state": states.get(lease.node_id),
         "gpus": ", ".join(f"{n} × {m}" for m, n in sorted(gpus[lease.node_id].items())) or "none"}
        for lease, p in zip(leases, public, strict=True)
    ]


def running_namespaces(session: Session, principal: Principal, tenant_id: int | None = None) -> list[dict[str, Any]]:
    """Kubernetes namespaces of the caller's tenants with GPU requests running now."""
    tenants = visible_tenants(session, principal)
    slugs = [t.slug for t in tenants if tenant_id is None or t.id == tenant_id]
    rows = session.exec(
        select(K8sAllocation).where(col(K8sAllocation.tenant_slug).in_(slugs), col(K8sAllocation.ends_at).is_(None),
                                    col(K8sAllocation.resource).in_(GPU_RESOURCES))
    ).all()
    totals: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    pods: dict[tuple[str, str], int] = Counter()
    for row in rows:
        totals[(row.tenant_slug, row.namespace)] += row.quantity
        pods[(row.tenant_slug, row.namespace)] += 1
    return [{"tenant": t, "namespace": ns, "gpus": totals[(t, ns)], "pods": pods[(t, ns)]} for t, ns in sorted(totals)]


def quota_rows(session: Session, principal: Principal, vdcs: list[VdcPublic] | None = None) -> list[dict[str, Any]]:
    """One row per (VDC, tenant grant) the caller may see, with limits and use this period
    (`vdcs`: the caller's VDCs when already loaded)."""
    rows = []
    for vdc in vdcs if vdcs is not None else visible_vdcs(session, principal):
        for grant in vdc.tenants:
            rows.append({
                "vdc": vdc.name, "tenant": grant.tenant,
                "nodes": grant.used.nodes, "max_nodes": grant.max_nodes,
                "gpus": grant.used.gpus, "max_gpus": grant.max_gpus,
                "gpu_hours": grant.used.gpu_hours, "max_gpu_hours": grant.max_gpu_hours,
            })
    return rows


def visible_vdcs(session: Session, principal: Principal) -> list[VdcPublic]:
    """The caller's VDCs with grants and quota use (what the VDC API returns)."""
    return to_public(session, principal, list_vdcs(session, principal))


def vdc_summaries(session: Session, principal: Principal, vdcs: list[VdcPublic] | None = None) -> list[dict[str, Any]]:
    """One row per visible VDC: members, selectors, grants, limits and use across its tenants."""
    return [
        {"name": v.name, "description": v.description, "member_nodes": v.member_nodes,
         "selectors": [f"{s.kind}={s.value}" for s in v.selectors], "tenants": [g.tenant for g in v.tenants],
         "nodes": v.used.nodes, "max_nodes": v.max_nodes, "gpus": v.used.gpus, "max_gpus": v.max_gpus,
         "gpu_hours": v.used.gpu_hours, "max_gpu_hours": v.max_gpu_hours}
        for v in (vdcs if vdcs is not None else visible_vdcs(session, principal))
    ]
