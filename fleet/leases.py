"""Leases: the tenancy timeline metering bills from, with quotas checked on the way in.

A lease gives a tenant a node through a VDC granted to it, over [starts_at, ends_at).
Refusals say which quota and by how much. Two leases of one node never overlap: checked
here for a readable message and enforced by the database (exclusion constraint / trigger)
against concurrent requests; the grant row is locked while quotas are counted so two
requests cannot both squeeze under a limit. A whole-node lease never overlaps a GPU instance
lease of the node (`fleet.instance_leases`): both paths lock the node row while they check.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, func, select

from collectors.utilisation_days import forget_since
from fleet.models import Node
from fleet.nodes import add_event
from fleet.tenancy_models import GpuInstanceLease, Lease, Vdc, VdcTenant
from fleet.tenancy_schemas import LeaseCreate, LeasePublic, LeaseUpdate
from fleet.usage import (
    FAR_FUTURE,
    gpu_hours_in_period,
    in_force,
    instance_fractions,
    leases_in_force,
    overlapping,
    period_of,
    planned_gpu_hours,
)
from fleet.vdcs import gpu_counts, vdcs_of_tenant_with_node
from kiln import audit
from kiln.auth import Principal
from kiln.db import among, utcnow
from kiln.errors import BadRequest, Conflict, NotFound, ValidationFailed
from kiln.models import Tenant
from kiln.roles import Role
from kiln.tenants import get_tenant_owned, visible_tenant

WRITE_ROLES = (Role.INFRA_ADMIN, Role.TENANT_ADMIN)


class QuotaExceeded(Conflict):
    """A lease would break a quota."""


def to_public(session: Session, leases: list[Lease], public: type[LeasePublic] = LeasePublic,
              extra: Callable[[Any], dict[str, Any]] = lambda lease: {}) -> list[LeasePublic]:
    """Leases with node, tenant and VDC names (as `public`, with `extra(lease)`'s fields: GPU instance leases)."""
    node_names = dict(session.exec(select(Node.id, Node.name).where(among(Node.id, {l.node_id for l in leases}))).all())
    tenant_slugs = dict(session.exec(select(Tenant.id, Tenant.slug).where(among(Tenant.id, {l.tenant_id for l in leases}))).all())
    vdc_names = dict(session.exec(select(Vdc.id, Vdc.name).where(col(Vdc.id).in_({l.vdc_id for l in leases if l.vdc_id}))).all())
    return [
        public(
            **lease.model_dump(exclude={"tenant_id", "vdc_id"}),
            node=node_names.get(lease.node_id, "?"),
            tenant=tenant_slugs.get(lease.tenant_id, "?"),
            vdc=vdc_names.get(lease.vdc_id),
            **extra(lease),
        )
        for lease in leases
    ]


def list_leases(
    session: Session, principal: Principal, *, node_id: int | None = None, tenant_id: int | None = None, active: bool = False
) -> list[Lease]:
    """Leases of the caller's tenants (all for global roles), newest first."""
    statement = principal.scope(select(Lease).order_by(col(Lease.starts_at).desc(), col(Lease.id).desc()), Lease.tenant_id)
    if node_id is not None:
        statement = statement.where(Lease.node_id == node_id)
    if tenant_id is not None:
        statement = statement.where(Lease.tenant_id == tenant_id)
    if active:
        statement = statement.where(in_force(utcnow()))
    return list(session.exec(statement).all())


def count_leases(session: Session, principal: Principal, *, tenant_id: int | None = None, active: bool = False) -> int:
    """How many leases `list_leases` would return (counted by the database, no rows loaded)."""
    statement = principal.scope(select(func.count()).select_from(Lease), Lease.tenant_id)
    if tenant_id is not None:
        statement = statement.where(Lease.tenant_id == tenant_id)
    if active:
        statement = statement.where(in_force(utcnow()))
    return session.exec(statement).one()


def get_lease(session: Session, principal: Principal, lease_id: int) -> Lease:
    """One lease of the caller's tenants; NotFound otherwise."""
    return get_tenant_owned(session, principal, Lease, lease_id, "lease")


def _show(value: int | Decimal | Fraction) -> str:
    """A count for a message: GPU instances make GPU counts fractions, shown mixed (`8 3/7`)."""
    if isinstance(value, Fraction) and value.denominator != 1:
        whole, part = divmod(value, 1)
        return f"{whole} {part}" if whole else str(part)
    return str(int(value) if isinstance(value, Fraction) else value)


def _check_limit(scope: str, what: str, limit: int | Decimal | None, used: int | Decimal | Fraction,
                 needed: int | Decimal | Fraction) -> None:
    if limit is not None and used + needed > limit:
        raise QuotaExceeded(
            f"quota exceeded: {scope} allows {limit} {what}; {_show(used)} in use and this lease needs {_show(needed)} "
            f"(over by {_show(used + needed - limit)})"
        )


def check_quotas(session: Session, vdc: Vdc, grant: VdcTenant, tenant: Tenant, starts_at: datetime,
                 ends_at: datetime | None, gpus: int | Fraction, nodes: int) -> None:
    """QuotaExceeded unless `nodes` more nodes and `gpus` more GPUs (a fraction for a GPU instance)
    from `starts_at` to `ends_at` fit the grant's and the VDC's quotas. GPU instances in force count
    by their compute fraction towards GPUs and GPU-hours, not towards nodes."""
    _, period_end = period_of(starts_at)
    planned = planned_gpu_hours(gpus, starts_at, ends_at, period_end)
    scopes = (
        (f"tenant '{tenant.slug}' in VDC '{vdc.name}'", grant, tenant.id),
        (f"VDC '{vdc.name}'", vdc, None),
    )
    for scope, limits, tenant_id in scopes:
        held = leases_in_force(session, starts_at, vdc_id=vdc.id, tenant_id=tenant_id)
        held_gpus = gpu_counts(session, [lease.node_id for lease in held])
        instances = instance_fractions(session, in_force(starts_at, GpuInstanceLease), vdc.id, tenant_id)
        if nodes:
            _check_limit(scope, "node(s)", limits.max_nodes, len(held), nodes)
        used_gpus = sum(held_gpus.get(l.node_id, 0) for l in held) + sum((f for _, f in instances), Fraction(0))
        _check_limit(scope, "GPU(s)", limits.max_gpus, used_gpus, gpus)
        if limits.max_gpu_hours is not None:
            used = gpu_hours_in_period(session, starts_at, vdc_id=vdc.id, tenant_id=tenant_id)
            if used >= limits.max_gpu_hours:
                raise QuotaExceeded(
                    f"quota exceeded: {scope} allows {limits.max_gpu_hours} GPU-hours this period and "
                    f"{used} are used (over by {used - limits.max_gpu_hours})"
                )
            _check_limit(scope, "GPU-hours this period", Decimal(limits.max_gpu_hours), used, planned)


def _holder_message(session: Session, principal: Principal, node: Node, data: LeaseCreate) -> str | None:
    far_future = period_of(data.starts_at)[1].replace(year=9999)
    clash = session.exec(select(Lease).where(Lease.node_id == node.id, overlapping(data.starts_at, data.ends_at or far_future))).first()
    if clash is None:
        return instance_holder_message(session, principal, node, data.starts_at, data.ends_at)
    holder = session.get(Tenant, clash.tenant_id)
    return f"node '{node.name}' is already leased to tenant '{holder.slug}' {span(clash.starts_at, clash.ends_at)}"


def span(start: datetime, end: datetime | None) -> str:
    """An interval for a message: `from 2026-10-01 10:00Z until …Z` (or `with no end`)."""
    return f"from {start:%Y-%m-%d %H:%M}Z " + (f"until {end:%Y-%m-%d %H:%M}Z" if end else "with no end")


def holder_name(session: Session, principal: Principal, tenant_id: int) -> str:
    """The tenant holding something, as a message to `principal` may name it: another tenant's slug stays hidden."""
    return f"tenant '{session.get(Tenant, tenant_id).slug}'" if principal.can_see(tenant_id) else "another tenant"


def instance_holder_message(session: Session, principal: Principal, node: Node, start: datetime,
                            end: datetime | None) -> str | None:
    """Why a whole-node lease of `node` over [start, end) clashes with a GPU instance lease of it, or None."""
    clash = session.exec(select(GpuInstanceLease).where(
        GpuInstanceLease.node_id == node.id, overlapping(start, end or FAR_FUTURE, GpuInstanceLease))
        .order_by(GpuInstanceLease.starts_at)).first()
    if clash is None:
        return None
    return (f"node '{node.name}' has a GPU instance leased to {holder_name(session, principal, clash.tenant_id)} "
            f"{span(clash.starts_at, clash.ends_at)}: it cannot be leased whole then")


def resolve_vdc(session: Session, principal: Principal, tenant: Tenant, node_name: str, vdc_name: str | None) -> tuple[Node, Vdc]:
    """The node and the one VDC granted to `tenant` it is leased through (NotFound / BadRequest /
    ValidationFailed('vdc') otherwise)."""
    node = session.exec(select(Node).where(Node.name == node_name)).first()
    candidates = vdcs_of_tenant_with_node(session, tenant.id, node.id) if node else []
    if node is None or (not candidates and not principal.sees_all_tenants):
        raise NotFound(f"no such node: {node_name}")
    if vdc_name:
        candidates = [v for v in candidates if v.name == vdc_name]
    if not candidates:
        where = f"VDC '{vdc_name}'" if vdc_name else "any VDC granted to it"
        raise BadRequest(f"node '{node.name}' is not in {where} for tenant '{tenant.slug}': grant a VDC containing it first")
    if len(candidates) > 1:
        names = ", ".join(sorted(v.name for v in candidates))
        raise ValidationFailed("vdc", f"node '{node.name}' is in several of the tenant's VDCs ({names}): name one")
    return node, candidates[0]


def lock_for_lease(session: Session, vdc: Vdc, tenant: Tenant, node: Node) -> VdcTenant:
    """Lock the grant, the VDC and the node (PostgreSQL; SQLite serialises writers) so concurrent
    leases — whole-node and GPU instance ones — are checked and counted one after another."""
    grant = session.exec(select(VdcTenant).where(VdcTenant.vdc_id == vdc.id, VdcTenant.tenant_id == tenant.id).with_for_update()).one()
    session.exec(select(Vdc.id).where(Vdc.id == vdc.id).with_for_update()).one()
    lock_node(session, node.id)
    return grant


def lock_node(session: Session, node_id: int) -> None:
    """SELECT … FOR UPDATE the node row: leases of one node, of either kind, are decided one at a time."""
    session.exec(select(Node.id).where(Node.id == node_id).with_for_update()).one()


def check_interval(starts_at: datetime, ends_at: datetime | None) -> None:
    """ValidationFailed('ends_at') unless the interval ends after it starts."""
    if ends_at is not None and ends_at <= starts_at:
        raise ValidationFailed("ends_at", "must be after starts_at")


def create_lease(session: Session, principal: Principal, data: LeaseCreate) -> Lease:
    """Lease a node to a tenant through a VDC granted to it, within every quota."""
    principal.require_role(*WRITE_ROLES, action="lease nodes")
    tenant = visible_tenant(session, principal, data.tenant)
    node, vdc = resolve_vdc(session, principal, tenant, data.node, data.vdc)
    data = data.model_copy(update={"starts_at": data.starts_at or utcnow()})
    check_interval(data.starts_at, data.ends_at)
    grant = lock_for_lease(session, vdc, tenant, node)
    clash = _holder_message(session, principal, node, data)
    if clash:
        raise Conflict(clash)
    check_quotas(session, vdc, grant, tenant, data.starts_at, data.ends_at, gpu_counts(session, [node.id]).get(node.id, 0), 1)
    lease = Lease(
        tenant_id=tenant.id, node_id=node.id, vdc_id=vdc.id, starts_at=data.starts_at, ends_at=data.ends_at,
        created_by=principal.username, note=data.note,
    )
    try:
        session.add(lease)
        session.flush()
    except IntegrityError:  # the database's overlap guard: a concurrent request won
        session.rollback()
        raise Conflict(f"node '{node.name}' was leased by a concurrent request for an overlapping interval") from None
    forget_since(session, lease.starts_at)  # a lease back-dated into utilisation already summed
    add_event(session, node, "lease", f"leased to {tenant.slug} via VDC {vdc.name}", principal.username)
    audit.record(session, principal, "create", "lease", lease.id, tenant_id=tenant.id,
                 detail={"node": node.name, "tenant": tenant.slug, "vdc": vdc.name})
    return lease


def update_lease(session: Session, principal: Principal, lease_id: int, data: LeaseUpdate) -> Lease:
    """End a lease at `ends_at` (or move its end); the interval must stay free of other leases."""
    lease = get_lease(session, principal, lease_id)
    principal.require_role(*WRITE_ROLES, action="end leases")
    if data.ends_at <= lease.starts_at:
        raise ValidationFailed("ends_at", f"must be after the lease's start ({lease.starts_at:%Y-%m-%dT%H:%M:%SZ})")
    lock_node(session, lease.node_id)
    node = session.get(Node, lease.node_id)
    if instance_holder_message(session, principal, node, lease.starts_at, data.ends_at):
        raise Conflict(f"lease {lease_id} cannot end then: a GPU instance of the node is leased before that")
    moved_from = min(lease.ends_at or data.ends_at, data.ends_at)
    lease.ends_at = data.ends_at
    if data.note is not None:
        lease.note = data.note
    try:
        session.add(lease)
        session.flush()
    except IntegrityError:
        session.rollback()
        raise Conflict(f"lease {lease_id} cannot end then: the node is leased again before that") from None
    forget_since(session, moved_from)  # utilisation already summed for the lease, or for none, from there
    add_event(session, node, "lease", f"lease {lease.id} ends {data.ends_at:%Y-%m-%d %H:%M}Z", principal.username)
    audit.record(session, principal, "update", "lease", lease.id, tenant_id=lease.tenant_id, detail={"ends_at": str(data.ends_at)})
    return lease
