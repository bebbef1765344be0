"""GPU instance leases: one MIG instance of a node's GPU held by a tenant over [starts_at, ends_at).

Grants, intervals and ends work as for whole-node leases (`fleet.leases`). At every instant the
instances leased on one physical GPU fit its compute slices (`collectors.mig_profiles`: 3g + 3g +
1g fit an H100's 7, 4g + 4g do not), and no instance lease overlaps a whole-node lease of its
node. Both are checked with the grant, VDC and node rows locked (`fleet.leases.lock_for_lease`,
which whole-node leases take too; SQLite serialises writers), so two concurrent requests cannot
both squeeze in. Quotas count an instance as its compute fraction of a GPU (`max_gpus`,
`max_gpu_hours`). Metering bills it like a MIG pod (`metering.instance_usage`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import Session, col, or_, select

from collectors.mig_profiles import compute_fraction, family_of, profile_slices
from fleet import leases as lease_service
from fleet.leases import holder_name, span
from fleet.models import Gpu, Node
from fleet.nodes import add_event
from fleet.schemas import GpuSpec
from fleet.tenancy_models import GpuInstanceLease, Lease
from fleet.tenancy_schemas import GpuInstanceLeaseCreate, GpuInstanceLeasePublic, LeasePublic, LeaseUpdate
from fleet.usage import FAR_FUTURE, in_force, overlapping
from kiln import audit
from kiln.auth import Principal
from kiln.db import utcnow
from kiln.errors import Conflict, ValidationFailed
from kiln.tenants import get_tenant_owned, visible_tenant

NOUN = "GPU instance lease"


def to_public(session: Session, instances: list[GpuInstanceLease]) -> list[LeasePublic]:
    """GPU instance leases with node, tenant, VDC and GPU model names and compute fractions (the
    GPU's as the lease recorded it, whatever became of its row since)."""

    def extra(instance: GpuInstanceLease) -> dict[str, Any]:
        return {"compute_fraction": str(compute_fraction(instance.gpu_model, instance.profile))}

    return lease_service.to_public(session, instances, GpuInstanceLeasePublic, extra)


def list_instance_leases(
    session: Session, principal: Principal, *, node_id: int | None = None, tenant_id: int | None = None, active: bool = False
) -> list[GpuInstanceLease]:
    """GPU instance leases of the caller's tenants (all for global roles), newest first."""
    statement = principal.scope(select(GpuInstanceLease).order_by(
        col(GpuInstanceLease.starts_at).desc(), col(GpuInstanceLease.id).desc()), GpuInstanceLease.tenant_id)
    if node_id is not None:
        statement = statement.where(GpuInstanceLease.node_id == node_id)
    if tenant_id is not None:
        statement = statement.where(GpuInstanceLease.tenant_id == tenant_id)
    if active:
        statement = statement.where(in_force(utcnow(), GpuInstanceLease))
    return list(session.exec(statement).all())


def get_instance_lease(session: Session, principal: Principal, lease_id: int) -> GpuInstanceLease:
    """One GPU instance lease of the caller's tenants; NotFound otherwise."""
    return get_tenant_owned(session, principal, GpuInstanceLease, lease_id, NOUN)


def _gpu(session: Session, node: Node, gpu_index: int, profile: str) -> tuple[Gpu, int]:
    """The node's GPU `gpu_index` if `profile` is one of its MIG profiles, and the node's number of GPUs."""
    gpus = session.exec(select(Gpu).where(Gpu.node_id == node.id).order_by(Gpu.index)).all()
    gpu = next((g for g in gpus if g.index == gpu_index), None)
    if gpu is None:
        have = f"its GPUs are {gpus[0].index}-{gpus[-1].index}" if gpus else "it has no GPUs"
        raise ValidationFailed("gpu_index", f"node '{node.name}' has no GPU {gpu_index}: {have}")
    family = family_of(gpu.model)
    if family is None:
        raise ValidationFailed("profile", f"GPU {gpu_index} of node '{node.name}' ({gpu.model}) does not support MIG: "
                                          "lease the node whole instead")
    if profile not in family.profiles:
        raise ValidationFailed("profile", f"{profile} is not a MIG profile of the {family.name} (GPU {gpu_index} of node "
                                          f"'{node.name}'); its profiles: {', '.join(family.profiles)}")
    return gpu, len(gpus)


def _check_whole_node(session: Session, principal: Principal, node: Node, start: datetime, end: datetime | None) -> None:
    clash = session.exec(select(Lease).where(Lease.node_id == node.id, overlapping(start, end or FAR_FUTURE))
                         .order_by(Lease.starts_at)).first()
    if clash is not None:
        raise Conflict(f"node '{node.name}' is leased whole to {holder_name(session, principal, clash.tenant_id)} "
                       f"{span(clash.starts_at, clash.ends_at)}: its GPU instances cannot be leased then")


def _check_fit(session: Session, principal: Principal, node: Node, gpu: Gpu, profile: str, start: datetime,
               end: datetime | None, exclude: int | None = None) -> None:
    """Conflict unless a `profile` instance fits GPU `gpu` beside its other instance leases at every
    instant of [start, end), naming the leases it collides with."""
    end = end or FAR_FUTURE
    statement = select(GpuInstanceLease).where(
        GpuInstanceLease.node_id == node.id, GpuInstanceLease.gpu_index == gpu.index,
        overlapping(start, end, GpuInstanceLease), GpuInstanceLease.id != (exclude or 0))
    others = session.exec(statement.order_by(GpuInstanceLease.starts_at, GpuInstanceLease.id)).all()
    total, needed = family_of(gpu.model).total_slices, profile_slices(profile)
    collisions: dict[int, GpuInstanceLease] = {}
    # the set of instances held only grows where one starts: checking those instants covers the interval
    for instant in sorted({start} | {o.starts_at for o in others if o.starts_at > start}):
        held = [o for o in others if o.starts_at <= instant < (o.ends_at or FAR_FUTURE)]
        if sum(profile_slices(o.profile) for o in held) + needed > total:
            collisions.update((o.id, o) for o in held)
    if collisions:
        named = "; ".join(_named(session, principal, o) for o in collisions.values())
        raise Conflict(f"GPU {gpu.index} of node '{node.name}' has {total} compute slices and a {profile} instance "
                       f"({needed}) does not fit beside {named}")


def _named(session: Session, principal: Principal, instance: GpuInstanceLease) -> str:
    """An instance lease in a refusal: its id and holder only where the caller may see them."""
    if principal.can_see(instance.tenant_id):
        return (f"instance lease {instance.id} ({instance.profile}, {holder_name(session, principal, instance.tenant_id)}, "
                f"{span(instance.starts_at, instance.ends_at)})")
    return f"an instance lease of another tenant ({instance.profile}, {span(instance.starts_at, instance.ends_at)})"


def check_gpus_kept(session: Session, principal: Principal, node: Node, gpus: list[GpuSpec]) -> None:
    """Conflict if replacing the node's GPUs by `gpus` would take away (or turn into another MIG
    family) a GPU that an instance lease holds now or later, naming those leases: they must end
    first. Ended leases do not stand in the way: billing reads what they recorded, not the GPU row."""
    lease_service.lock_node(session, node.id)  # instance leases are made under it: none slips in meanwhile
    now = utcnow()
    families = {spec.index: family_of(spec.model) for spec in gpus}
    held = session.exec(select(GpuInstanceLease).where(
        GpuInstanceLease.node_id == node.id, or_(col(GpuInstanceLease.ends_at).is_(None), col(GpuInstanceLease.ends_at) > now))
        .order_by(GpuInstanceLease.gpu_index, GpuInstanceLease.id)).all()
    lost = [i for i in held if i.gpu_index not in families or families[i.gpu_index] != family_of(i.gpu_model)]
    if lost:
        named = "; ".join(f"GPU {i.gpu_index}: {_named(session, principal, i)}" for i in lost)
        raise Conflict(f"node '{node.name}': GPU instance leases hold GPUs this change removes or replaces ({named}): "
                       "end those leases first")


def create_instance_lease(session: Session, principal: Principal, data: GpuInstanceLeaseCreate) -> GpuInstanceLease:
    """Lease a MIG instance of a node's GPU to a tenant through a VDC granted to it, within every quota."""
    principal.require_role(*lease_service.WRITE_ROLES, action="lease GPU instances")
    tenant = visible_tenant(session, principal, data.tenant)
    node, vdc = lease_service.resolve_vdc(session, principal, tenant, data.node, data.vdc)
    gpu, node_gpus = _gpu(session, node, data.gpu_index, data.profile)
    starts_at = data.starts_at or utcnow()
    lease_service.check_interval(starts_at, data.ends_at)
    grant = lease_service.lock_for_lease(session, vdc, tenant, node)
    _check_whole_node(session, principal, node, starts_at, data.ends_at)
    _check_fit(session, principal, node, gpu, data.profile, starts_at, data.ends_at)
    fraction = compute_fraction(gpu.model, data.profile)
    lease_service.check_quotas(session, vdc, grant, tenant, starts_at, data.ends_at, fraction, 0)
    instance = GpuInstanceLease(
        tenant_id=tenant.id, node_id=node.id, vdc_id=vdc.id, gpu_index=gpu.index, profile=data.profile,
        gpu_model=gpu.model, gpu_uuid=gpu.uuid, node_gpus=node_gpus,  # what billing needs, whatever becomes of the row
        starts_at=starts_at, ends_at=data.ends_at, created_by=principal.username, note=data.note,
    )
    session.add(instance)
    session.flush()
    add_event(session, node, "lease", f"GPU {gpu.index} instance {data.profile} leased to {tenant.slug} via VDC {vdc.name}",
              principal.username)
    audit.record(session, principal, "create", "gpu_instance_lease", instance.id, tenant_id=tenant.id,
                 detail={"node": node.name, "tenant": tenant.slug, "vdc": vdc.name, "gpu_index": gpu.index,
                         "profile": data.profile})
    return instance


def update_instance_lease(session: Session, principal: Principal, lease_id: int, data: LeaseUpdate) -> GpuInstanceLease:
    """End a GPU instance lease at `ends_at` (or move its end); the GPU must stay free for it until then."""
    instance = get_instance_lease(session, principal, lease_id)
    principal.require_role(*lease_service.WRITE_ROLES, action="end GPU instance leases")
    if data.ends_at <= instance.starts_at:
        raise ValidationFailed("ends_at", f"must be after the lease's start ({instance.starts_at:%Y-%m-%dT%H:%M:%SZ})")
    lease_service.lock_node(session, instance.node_id)
    node = session.get(Node, instance.node_id)
    gpu = session.exec(select(Gpu).where(Gpu.node_id == node.id, Gpu.index == instance.gpu_index)).first()
    _check_whole_node(session, principal, node, instance.starts_at, data.ends_at)
    if gpu is not None and family_of(gpu.model) is not None:  # a GPU since removed or replaced holds nothing to fit
        _check_fit(session, principal, node, gpu, instance.profile, instance.starts_at, data.ends_at, exclude=instance.id)
    instance.ends_at = data.ends_at
    if data.note is not None:
        instance.note = data.note
    session.add(instance)
    session.flush()
    add_event(session, node, "lease", f"GPU instance lease {instance.id} ends {data.ends_at:%Y-%m-%d %H:%M}Z", principal.username)
    audit.record(session, principal, "update", "gpu_instance_lease", instance.id, tenant_id=instance.tenant_id,
                 detail={"ends_at": str(data.ends_at)})
    return instance
