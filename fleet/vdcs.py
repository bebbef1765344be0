"""VDCs: named slices of the fleet granted to tenants with quotas (OpenNebula style).

A VDC's nodes are its explicit nodes plus every node matching one of its selectors (tag,
rack, resource class, GPU model), resolved when asked, so a node added to a rack joins the
VDC without anyone editing it. Tenants see the VDCs granted to them; infra admins manage.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from decimal import Decimal
from fractions import Fraction

from sqlalchemy import case, literal
from sqlmodel import Session, col, func, select

from fleet.daily_hours import micros_between

from fleet.models import Gpu, Node, NodeTag
from fleet.tenancy_models import GpuInstanceLease, Lease, Vdc, VdcNode, VdcSelector, VdcTenant
from fleet.tenancy_schemas import (
    GrantPublic,
    QuotaUse,
    Selector,
    VdcCreate,
    VdcPublic,
    VdcUpdate,
)
from fleet.usage import (
    HOURS_QUANTUM,
    MICROS_PER_HOUR,
    hours_of,
    in_force,
    instance_fractions,
    lease_gpu_micros,
    leases_in_force,
    overlapping,
    period_of,
)
from kiln import audit
from kiln.auth import Principal
from kiln.db import UTCDateTime, among, first_or_not_found, utcnow
from kiln.errors import Conflict, NotFound
from kiln.models import Tenant
from kiln.roles import Role
from kiln.tenants import tenants_by_slug

QUOTA_FIELDS = ("max_nodes", "max_gpus", "max_gpu_hours", "budget")
_SELECTOR_COLUMNS = {"rack": Node.rack, "resource_class": Node.resource_class}


def member_node_ids(session: Session, vdc_ids: list[int]) -> dict[int, set[int]]:
    """Every node of each VDC: explicit nodes and selector matches."""
    members: dict[int, set[int]] = defaultdict(set)
    for vdc_id, node_id in session.exec(select(VdcNode.vdc_id, VdcNode.node_id).where(col(VdcNode.vdc_id).in_(vdc_ids))):
        members[vdc_id].add(node_id)
    by_kind: dict[str, dict[str, set[int]]] = defaultdict(lambda: defaultdict(set))  # kind → value → VDC ids
    for selector in session.exec(select(VdcSelector).where(col(VdcSelector.vdc_id).in_(vdc_ids))).all():
        by_kind[selector.kind][selector.value].add(selector.vdc_id)
    for kind, vdcs_of in by_kind.items():  # one query per kind of selector, not per selector (200 racks: 200 queries)
        if kind == "tag":
            query = select(NodeTag.tag, NodeTag.node_id).where(col(NodeTag.tag).in_(vdcs_of))
        elif kind == "gpu_model":
            query = select(Gpu.model, Gpu.node_id).where(col(Gpu.model).in_(vdcs_of)).distinct()
        else:
            query = select(_SELECTOR_COLUMNS[kind], Node.id).where(col(_SELECTOR_COLUMNS[kind]).in_(vdcs_of))
        for value, node_id in session.exec(query).all():
            for vdc_id in vdcs_of[value]:
                members[vdc_id].add(node_id)
    return members


def gpu_counts(session: Session, node_ids: list[int]) -> dict[int, int]:
    """Number of GPUs per node (of those nodes; of every node when they are many)."""
    rows = session.exec(select(Gpu.node_id, func.count()).where(among(Gpu.node_id, node_ids)).group_by(Gpu.node_id))
    return dict(rows.all())


def quota_use(session: Session, vdc_id: int, tenant_id: int | None, at: datetime | None = None) -> QuotaUse:
    """Nodes and GPUs held at `at` and GPU-hours this period, in a VDC (for one tenant or all)."""
    return quota_uses(session, [vdc_id], at).get((vdc_id, tenant_id), QuotaUse(nodes=0, gpus=0, gpu_hours=Decimal(0)))


def quota_uses(session: Session, vdc_ids: list[int], at: datetime | None = None) -> dict[tuple[int, int | None], QuotaUse]:
    """`quota_use` of many VDCs at once (four queries): per (VDC, tenant) and per (VDC, None) for all
    tenants. GPU instance leases count by compute fraction (`instance_gpus`, and in `gpu_hours`)."""
    at = at or utcnow()
    start, _ = period_of(at)
    # summed by the database per (VDC, tenant): integer GPU-microseconds, exact (thousands of leases at fleet scale)
    node_gpus = select(Gpu.node_id, func.count().label("gpus")).group_by(Gpu.node_id).subquery("node_gpus")
    gpus = func.coalesce(node_gpus.c.gpus, 0)
    by_grant = (Lease.vdc_id, Lease.tenant_id)
    leased = select(*by_grant).select_from(Lease).join(node_gpus, node_gpus.c.node_id == Lease.node_id, isouter=True)
    held = session.exec(leased.add_columns(func.count(), func.sum(gpus))
                        .where(in_force(at), col(Lease.vdc_id).in_(vdc_ids)).group_by(*by_grant)).all()
    held_from = case((col(Lease.starts_at) > start, col(Lease.starts_at)), else_=literal(start, UTCDateTime))
    ends = func.coalesce(col(Lease.ends_at), literal(at, UTCDateTime))
    held_to = case((ends < at, ends), else_=literal(at, UTCDateTime))
    period = session.exec(leased.add_columns(func.sum(micros_between(session, held_from, held_to) * gpus))
                          .where(overlapping(start, at), col(Lease.vdc_id).in_(vdc_ids)).group_by(*by_grant)).all()
    nodes: dict[tuple[int, int | None], int] = defaultdict(int)
    gpus_held: dict[tuple[int, int | None], int] = defaultdict(int)
    instances_held: dict[tuple[int, int | None], Fraction] = defaultdict(Fraction)
    micros: dict[tuple[int, int | None], Fraction] = defaultdict(Fraction)  # with GPU instances: exact fractions
    for vdc_id, tenant_id, count, gpu_total in held:
        for key in ((vdc_id, tenant_id), (vdc_id, None)):
            nodes[key] += count
            gpus_held[key] += int(gpu_total)
    for vdc_id, tenant_id, used in period:
        for key in ((vdc_id, tenant_id), (vdc_id, None)):
            micros[key] += int(used)
    in_vdcs = col(GpuInstanceLease.vdc_id).in_(vdc_ids)
    for instance, fraction in instance_fractions(session, in_force(at, GpuInstanceLease) & in_vdcs):
        for key in ((instance.vdc_id, instance.tenant_id), (instance.vdc_id, None)):
            instances_held[key] += fraction
    for instance, fraction in instance_fractions(session, overlapping(start, at, GpuInstanceLease) & in_vdcs):
        for key in ((instance.vdc_id, instance.tenant_id), (instance.vdc_id, None)):
            micros[key] += lease_gpu_micros(instance, 1, start, at) * fraction
    return {key: QuotaUse(nodes=nodes[key], gpus=gpus_held[key], gpu_hours=hours_of(micros[key]),
                          instance_gpus=hours_of(instances_held[key] * MICROS_PER_HOUR))
            for key in set(nodes) | set(micros) | set(instances_held)}


def _visible(statement, principal: Principal):
    if principal.sees_all_tenants:
        return statement
    granted = principal.scope(select(VdcTenant.vdc_id), VdcTenant.tenant_id)
    return statement.where(col(Vdc.id).in_(granted))


def list_vdcs(session: Session, principal: Principal) -> list[Vdc]:
    """VDCs the caller may see, by name."""
    return list(session.exec(_visible(select(Vdc).order_by(Vdc.name), principal)).all())


def get_vdc(session: Session, principal: Principal, vdc_id: int) -> Vdc:
    """One VDC the caller may see; NotFound otherwise."""
    return first_or_not_found(session, _visible(select(Vdc).where(Vdc.id == vdc_id), principal), f"VDC {vdc_id} not found")


def get_vdc_by_name(session: Session, principal: Principal, name: str) -> Vdc:
    """The VDC called `name`, if the caller may see it."""
    return first_or_not_found(session, _visible(select(Vdc).where(Vdc.name == name), principal), f"no such VDC: {name}")


def to_public(session: Session, principal: Principal, vdcs: list[Vdc]) -> list[VdcPublic]:
    """VDCs with nodes, selectors, grants (only the caller's tenants for tenant roles) and use."""
    ids = [v.id for v in vdcs]
    members = member_node_ids(session, ids)
    every_node = sorted(set().union(*members.values())) if members else []
    names = dict(session.exec(select(Node.id, Node.name).where(among(Node.id, every_node))).all())
    explicit: dict[int, list[str]] = defaultdict(list)
    for vdc_id, node_id in session.exec(select(VdcNode.vdc_id, VdcNode.node_id).where(col(VdcNode.vdc_id).in_(ids))):
        explicit[vdc_id].append(names.get(node_id, "?"))
    selectors: dict[int, list[Selector]] = defaultdict(list)
    for s in session.exec(select(VdcSelector).where(col(VdcSelector.vdc_id).in_(ids)).order_by(VdcSelector.id)).all():
        selectors[s.vdc_id].append(Selector(kind=s.kind, value=s.value))
    grants: dict[int, list[GrantPublic]] = defaultdict(list)
    rows = session.exec(
        select(VdcTenant, Tenant.slug).join(Tenant, Tenant.id == VdcTenant.tenant_id).where(col(VdcTenant.vdc_id).in_(ids))
    ).all()
    uses = quota_uses(session, ids)
    nothing = QuotaUse(nodes=0, gpus=0, gpu_hours=Decimal(0).quantize(HOURS_QUANTUM))
    for grant, slug in sorted(rows, key=lambda r: r[1]):
        if principal.can_see(grant.tenant_id):
            quotas = {f: getattr(grant, f) for f in QUOTA_FIELDS}
            used = uses.get((grant.vdc_id, grant.tenant_id), nothing)
            grants[grant.vdc_id].append(GrantPublic(tenant=slug, **quotas, used=used))
    return [
        VdcPublic(
            **vdc.model_dump(),
            nodes=sorted(explicit[vdc.id]),
            selectors=selectors[vdc.id],
            tenants=grants[vdc.id],
            member_nodes=sorted(names[n] for n in members.get(vdc.id, set())),
            used=uses.get((vdc.id, None), nothing),
        )
        for vdc in vdcs
    ]


def _set_members(session: Session, vdc: Vdc, nodes: list[str] | None, selectors: list[Selector] | None) -> None:
    if nodes is not None:
        found = dict(session.exec(select(Node.name, Node.id).where(col(Node.name).in_(nodes))).all())
        missing = sorted(set(nodes) - set(found))
        if missing:
            raise NotFound(f"no such node: {', '.join(missing)}")
        for row in session.exec(select(VdcNode).where(VdcNode.vdc_id == vdc.id)).all():
            session.delete(row)
        session.flush()
        for name in dict.fromkeys(nodes):
            session.add(VdcNode(vdc_id=vdc.id, node_id=found[name]))
    if selectors is not None:
        for row in session.exec(select(VdcSelector).where(VdcSelector.vdc_id == vdc.id)).all():
            session.delete(row)
        session.flush()
        for selector in {(s.kind, s.value): s for s in selectors}.values():
            session.add(VdcSelector(vdc_id=vdc.id, kind=selector.kind, value=selector.value))


def _set_grants(session: Session, vdc: Vdc, data: VdcCreate | VdcUpdate) -> None:
    if data.tenants is None:
        return
    tenants = tenants_by_slug(session, [g.tenant for g in data.tenants])
    keep = {t.id for t in tenants}
    for grant in session.exec(select(VdcTenant).where(VdcTenant.vdc_id == vdc.id)).all():
        if grant.tenant_id not in keep:
            if leases_in_force(session, utcnow(), vdc_id=vdc.id, tenant_id=grant.tenant_id):
                raise Conflict(f"VDC '{vdc.name}': a tenant losing the grant still holds leased nodes; end them first")
            session.delete(grant)
    session.flush()
    for tenant, spec in zip(tenants, data.tenants, strict=True):
        grant = session.get(VdcTenant, (vdc.id, tenant.id)) or VdcTenant(vdc_id=vdc.id, tenant_id=tenant.id)
        grant.sqlmodel_update({f: getattr(spec, f) for f in QUOTA_FIELDS})
        session.add(grant)


def create_vdc(session: Session, principal: Principal, data: VdcCreate) -> Vdc:
    """Create a VDC (infra-admin only)."""
    principal.require_role(Role.INFRA_ADMIN, action="create VDCs")
    if session.exec(select(Vdc.id).where(Vdc.name == data.name)).first():
        raise Conflict(f"a VDC named '{data.name}' already exists")
    vdc = Vdc(name=data.name, description=data.description, **{f: getattr(data, f) for f in QUOTA_FIELDS})
    session.add(vdc)
    session.flush()
    _set_members(session, vdc, data.nodes, data.selectors)
    _set_grants(session, vdc, data)
    session.flush()
    audit.record(session, principal, "create", "vdc", vdc.id, detail={"name": vdc.name})
    return vdc


def update_vdc(session: Session, principal: Principal, vdc_id: int, data: VdcUpdate) -> Vdc:
    """Change a VDC's description, members, quotas or grants (infra-admin only)."""
    vdc = get_vdc(session, principal, vdc_id)
    principal.require_role(Role.INFRA_ADMIN, action="change VDCs")
    changes = data.model_dump(exclude_unset=True)
    vdc.sqlmodel_update({k: v for k, v in changes.items() if k in QUOTA_FIELDS or k == "description"})
    session.add(vdc)
    _set_members(session, vdc, data.nodes, data.selectors)
    _set_grants(session, vdc, data)
    session.flush()
    audit.record(session, principal, "update", "vdc", vdc.id, detail={"fields": sorted(changes)})
    return vdc


def delete_vdc(session: Session, principal: Principal, vdc_id: int) -> None:
    """Delete a VDC with no leases in force (its past leases keep their history)."""
    vdc = get_vdc(session, principal, vdc_id)
    principal.require_role(Role.INFRA_ADMIN, action="delete VDCs")
    if leases_in_force(session, utcnow(), vdc_id=vdc.id):
        raise Conflict(f"VDC '{vdc.name}' has leases in force: end them first")
    audit.record(session, principal, "delete", "vdc", vdc.id, detail={"name": vdc.name})
    session.delete(vdc)
    session.flush()


def vdcs_of_tenant_with_node(session: Session, tenant_id: int, node_id: int) -> list[Vdc]:
    """The VDCs granted to the tenant that contain the node."""
    granted = session.exec(select(Vdc).join(VdcTenant, VdcTenant.vdc_id == Vdc.id).where(VdcTenant.tenant_id == tenant_id)).all()
    members = member_node_ids(session, [v.id for v in granted])
    return [v for v in granted if node_id in members.get(v.id, set())]
