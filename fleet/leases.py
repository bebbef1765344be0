"""Leases: the tenancy timeline metering bills from, with quotas checked on the way in.

A lease gives a tenant a node through a VDC granted to it, over [starts_at, ends_at).
Refusals say which quota and by how much. Two leases of one node never overlap: checked
here for a readable message and enforced by the database (exclusion constraint / trigger)
against concurrent requests; the grant row is locked while quotas are counted so two
requests cannot both squeeze under a limit.
"""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from fleet.models import Node
from fleet.nodes import add_event
from fleet.tenancy_models import Lease, Vdc, VdcTenant
from fleet.tenancy_schemas import LeaseCreate, LeasePublic, LeaseUpdate
from fleet.usage import gpu_hours_in_period, in_force, leases_in_force, overlapping, period_of, planned_gpu_hours
from fleet.vdcs import gpu_counts, vdcs_of_tenant_with_node
from kiln import audit
from kiln.auth import Principal
from kiln.db import utcnow
from kiln.errors import BadRequest, Conflict, NotFound, ValidationFailed
from kiln.models import Tenant
from kiln.roles import Role
from kiln.tenants import get_tenant_owned, visible_tenant

WRITE_ROLES = (Role.INFRA_ADMIN, Role.TENANT_ADMIN)


class QuotaExceeded(Conflict):
    """A lease would break a quota."""


def to_public(session: Session, leases: list[Lease]) -> list[LeasePublic]:
    """Leases with node, tenant and VDC names."""
    node_names = dict(session.exec(select(Node.id, Node.name).where(col(Node.id).in_({l.node_id for l in leases}))).all())
    tenant_slugs = dict(session.exec(select(Tenant.id, Tenant.slug).where(col(Tenant.id).in_({l.tenant_id for l in leases}))).all())
    vdc_names = dict(session.exec(select(Vdc.id, Vdc.name).where(col(Vdc.id).in_({l.vdc_id for l in leases if l.vdc_id}))).all())
    return [
        LeasePublic(
            **lease.model_dump(exclude={"tenant_id", "vdc_id"}),
            node=node_names.get(lease.node_id, "?"),
            tenant=tenant_slugs.get(lease.tenant_id, "?"),
            vdc=vdc_names.get(lease.vdc_id),
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


def get_lease(session: Session, principal: Principal, lease_id: int) -> Lease:
    """One lease of the caller's tenants; NotFound otherwise."""
    return get_tenant_owned(session, principal, Lease, lease_id, "lease")


def _check_limit(scope: str, what: str, limit: int | Decimal | None, used: int | Decimal, needed: int | Decimal) -> None:
    if limit is not None and used + needed > limit:
        raise QuotaExceeded(
            f"quota exceeded: {scope} allows {limit} {what}; {used} in use and this lease needs {needed} "
            f"(over by {used + needed - limit})"
        )


def _check_quotas(session: Session, vdc: Vdc, grant: VdcTenant, tenant: Tenant, node: Node, data: LeaseCreate) -> None:
    starts_at = data.starts_at
    gpus = gpu_counts(session, [node.id]).get(node.id, 0)
    _, period_end = period_of(starts_at)
    planned = planned_gpu_hours(gpus, starts_at, data.ends_at, period_end)
    scopes = (
        (f"tenant '{tenant.slug}' in VDC '{vdc.name}'", grant, tenant.id),
        (f"VDC '{vdc.name}'", vdc, None),
    )
    for scope, limits, tenant_id in scopes:
        held = leases_in_force(session, starts_at, vdc_id=vdc.id, tenant_id=tenant_id)
        held_gpus = gpu_counts(session, [lease.node_id for lease in held])
        _check_limit(scope, "node(s)", limits.max_nodes, len(held), 1)
        _check_limit(scope, "GPU(s)", limits.max_gpus, sum(held_gpus.get(l.node_id, 0) for l in held), gpus)
        if limits.max_gpu_hours is not None:
            used = gpu_hours_in_period(session, starts_at, vdc_id=vdc.id, tenant_id=tenant_id)
            if used >= limits.max_gpu_hours:
                raise QuotaExceeded(
                    f"quota exceeded: {scope} allows {limits.max_gpu_hours} GPU-hours this period and "
                    f"{used} are used (over by {used - limits.max_gpu_hours})"
                )
            _check_limit(scope, "GPU-hours this period", Decimal(limits.max_gpu_hours), used, planned)


def _holder_message(session: Session, node: Node, data: LeaseCreate) -> str | None:
    far_future = period_of(data.starts_at)[1].replace(year=9999)
    clash = session.exec(select(Lease).where(Lease.node_id == node.id, overlapping(data.starts_at, data.ends_at or far_future))).first()
    if clash is None:
        return None
    holder = session.get(Tenant, clash.tenant_id)
    until = f"until {clash.ends_at:%Y-%m-%d %H:%M}Z" if clash.ends_at else "with no end"
    return f"node '{node.name}' is already leased to tenant '{holder.slug}' from {clash.starts_at:%Y-%m-%d %H:%M}Z {until}"


def create_lease(session: Session, principal: Principal, data: LeaseCreate) -> Lease:
    """Lease a node to a tenant through a VDC granted to it, within every quota."""
    principal.require_role(*WRITE_ROLES, action="lease nodes")
    tenant = visible_tenant(session, principal, data.tenant)
    node = session.exec(select(Node).where(Node.name == data.node)).first()
    candidates = vdcs_of_tenant_with_node(session, tenant.id, node.id) if node else []
    if node is None or (not candidates and not principal.sees_all_tenants):
        raise NotFound(f"no such node: {data.node}")
    if data.vdc:
        candidates = [v for v in candidates if v.name == data.vdc]
    if not candidates:
        where = f"VDC '{data.vdc}'" if data.vdc else "any VDC granted to it"
        raise BadRequest(f"node '{node.name}' is not in {where} for tenant '{tenant.slug}': grant a VDC containing it first")
    if len(candidates) > 1:
        names = ", ".join(sorted(v.name for v in candidates))
        raise ValidationFailed("vdc", f"node '{node.name}' is in several of the tenant's VDCs ({names}): name one")
    vdc = candidates[0]
    data = data.model_copy(update={"starts_at": data.starts_at or utcnow()})
    if data.ends_at is not None and data.ends_at <= data.starts_at:
        raise ValidationFailed("ends_at", "must be after starts_at")
    # Lock the grant and the VDC so concurrent leases are counted one after another.
    grant = session.exec(select(VdcTenant).where(VdcTenant.vdc_id == vdc.id, VdcTenant.tenant_id == tenant.id).with_for_update()).one()
    session.exec(select(Vdc).where(Vdc.id == vdc.id).with_for_update()).one()
    clash = _holder_message(session, node, data)
    if clash:
        raise Conflict(clash)
    _check_quotas(session, vdc, grant, tenant, node, data)
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
    lease.ends_at = data.ends_at
    if data.note is not None:
        lease.note = data.note
    try:
        session.add(lease)
        session.flush()
    except IntegrityError:
        session.rollback()
        raise Conflict(f"lease {lease_id} cannot end then: the node is leased again before that") from None
    node = session.get(Node, lease.node_id)
    add_event(session, node, "lease", f"lease {lease.id} ends {data.ends_at:%Y-%m-%d %H:%M}Z", principal.username)
    audit.record(session, principal, "update", "lease", lease.id, tenant_id=lease.tenant_id, detail={"ends_at": str(data.ends_at)})
    return lease
