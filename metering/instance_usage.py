"""GPU instance leases (`fleet.instance_leases`) as claims on their node's GPU pool.

An instance lease is metered exactly like a pod requesting `nvidia.com/mig-<profile>`: a claim of
its profile's compute slices on the node's pool (`metering.gpu_shares`) for the hours it holds,
split with the node's Kubernetes claims, so the instances' GPU-hours + the pods' + idle = the
node's GPU-hours. Its SKU is the MIG pod's, `gpu-hour:<model>:<profile>` (priced by the model's
card × the compute fraction unless the profile has a card; the model is the one the lease
recorded, so a GPU row removed or replaced since changes nothing), its rows are source `lease`
with the node as resource, and its share of the pool also weighs its share of the GPUs' energy
(`metering.energy_shares`), as a pod's does.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import NamedTuple

from sqlmodel import Session, col, or_, select

from collectors import mig_profiles
from fleet.models import Node
from fleet.tenancy_models import GpuInstanceLease
from metering import skus


class InstanceKey(NamedTuple):
    """A GPU instance lease's claim on a pool: whose usage row it becomes."""

    tenant_id: int
    resource_id: str
    sku: str
    vdc_id: int | None


class InstanceClaim(NamedTuple):
    """One instance lease clipped to the hours being built."""

    key: InstanceKey
    start: datetime
    end: datetime
    resource: str  # `nvidia.com/mig-<profile>`, as a pod would request it
    gpu_model: str  # as the lease recorded it: its GPU's row may since be gone or replaced


def instance_claims(session: Session, start: datetime, end: datetime) -> dict[int, list[InstanceClaim]]:
    """Node id → the GPU instance leases holding one of its GPUs within [start, end), clipped to it."""
    statement = (
        select(GpuInstanceLease.node_id, GpuInstanceLease.tenant_id, GpuInstanceLease.vdc_id, GpuInstanceLease.profile,
               GpuInstanceLease.starts_at, GpuInstanceLease.ends_at, Node.name, GpuInstanceLease.gpu_model)
        .join(Node, col(Node.id) == GpuInstanceLease.node_id)
        .where(col(GpuInstanceLease.starts_at) < end,
               or_(col(GpuInstanceLease.ends_at).is_(None), col(GpuInstanceLease.ends_at) > start))
    )
    claims: dict[int, list[InstanceClaim]] = defaultdict(list)
    for node_id, tenant_id, vdc_id, profile, starts_at, ends_at, node, model in session.exec(statement).all():
        a, b = max(starts_at, start), min(ends_at or end, end)
        if b > a:
            key = InstanceKey(tenant_id, node, skus.gpu_hour(model, profile), vdc_id)
            claims[node_id].append(InstanceClaim(key, a, b, f"{mig_profiles.RESOURCE_PREFIX}{profile}", model))
    return claims
