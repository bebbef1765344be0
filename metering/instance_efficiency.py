"""The utilisation series of GPU instance leases, for `metering.efficiency`.

A MIG instance's utilisation is the store's rollup of entity `UUID/GPU_I_ID` (`collectors.dcgm`:
dcgm-exporter's `DCGM_FI_PROF_GR_ENGINE_ACTIVE` per instance, kept as `gpu_util`). An instance
lease names its node, GPU index and profile, not the instance's `GPU_I_ID` (the driver picks it
when the instance is created). The lease's GPU gives the UUID (the one the lease recorded, else
its GPU row's by node and index); the instances of the lease's profile the exporters reported on
that GPU (the collectors' latest series of it, `health_snapshot` with its `GPU_I_PROFILE` label,
seen since the window began) give the id: one such instance is the lease's; several cannot be
told apart, and none was seen, so the lease is not measured (coverage 0) rather than given a guess.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

from sqlmodel import Session, col, or_, select

from collectors.models import HealthSnapshot, Rollup5m
from collectors.store import GPU_UTIL_ROLLUP
from collectors.utilisation_days import MAX_SAMPLE_INTERVAL
from fleet.models import Gpu
from fleet.tenancy_models import GpuInstanceLease

PROFILE_LABEL = "GPU_I_PROFILE"


def reported_instances(session: Session, uuids: set[str], since: datetime) -> dict[tuple[str, str], set[str]]:
    """(GPU UUID, MIG profile) → the instance entities (`UUID/GPU_I_ID`) of that profile the
    exporters reported on those GPUs, last seen at or after `since`."""
    out: dict[tuple[str, str], set[str]] = defaultdict(set)
    if not uuids:
        return out
    statement = select(HealthSnapshot.entity, HealthSnapshot.labels).where(
        or_(*[col(HealthSnapshot.entity).startswith(f"{uuid}/", autoescape=True) for uuid in sorted(uuids)]),
        col(HealthSnapshot.observed_at) >= since)
    for entity, labels in session.exec(statement).all():
        profile = (labels or {}).get(PROFILE_LABEL)
        if profile:
            out[(entity.split("/", 1)[0], profile)].add(entity)
    return out


def instance_entities(session: Session, instances: list[GpuInstanceLease], since: datetime) -> dict[int, str]:
    """Instance lease id → its MIG instance's entity, for the leases whose GPU reported exactly
    one instance of their profile (`reported_instances`); the others are left out."""
    keys = {(i.node_id, i.gpu_index) for i in instances if not i.gpu_uuid}
    rows = {(node_id, index): uuid for node_id, index, uuid in session.exec(
        select(Gpu.node_id, Gpu.index, Gpu.uuid).where(col(Gpu.node_id).in_({k[0] for k in keys}),
                                                      col(Gpu.uuid).is_not(None))).all() if (node_id, index) in keys}
    uuids = {i.id: i.gpu_uuid or rows.get((i.node_id, i.gpu_index), "") for i in instances}
    reported = reported_instances(session, set(uuids.values()) - {""}, since)
    out: dict[int, str] = {}
    for instance in instances:
        seen = reported.get((uuids[instance.id], instance.profile), set())
        if len(seen) == 1:
            out[instance.id] = next(iter(seen))
    return out


def instance_series(session: Session, instances: list[GpuInstanceLease], start: datetime, stop: datetime
                    ) -> dict[int, list[tuple[datetime, float]]]:
    """Instance lease id → its instance's (bucket, mean utilisation %) before `stop` and the lease's
    end, ascending, from `MAX_SAMPLE_INTERVAL` before `start` (the samples before the lease's start
    and `start` are only the previous sample of the first inside: `metering.efficiency.add_samples`'
    `counted_from`); leases whose instance is not known (`instance_entities`) are absent."""
    entities = instance_entities(session, instances, start)
    if not entities:
        return {}
    rows = session.exec(
        select(Rollup5m.entity, Rollup5m.bucket, Rollup5m.sum / Rollup5m.count)
        .where(Rollup5m.metric == GPU_UTIL_ROLLUP, Rollup5m.count > 0, col(Rollup5m.entity).in_(set(entities.values())),
               col(Rollup5m.bucket) >= start - MAX_SAMPLE_INTERVAL, col(Rollup5m.bucket) < stop)
        .order_by(Rollup5m.entity, Rollup5m.bucket)).all()
    by_entity: dict[str, list[tuple[datetime, float]]] = defaultdict(list)
    for entity, bucket, mean in rows:
        by_entity[entity].append((bucket, mean))
    return {instance.id: [(b, m) for b, m in by_entity[entities[instance.id]]
                          if instance.ends_at is None or b < instance.ends_at]
            for instance in instances if instance.id in entities}
