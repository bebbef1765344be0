"""Which Kubernetes namespaces held each physical GPU, hour by hour, from dcgm-exporter's pod labels.

A pod's GPU request says how many GPUs it holds, not which: the device plugin picks them. The
exporters say which: with their Kubernetes pod mapping on, dcgm-exporter (and AMD's exporter)
label each GPU's — or MIG instance's — series with the `namespace` and `pod` using it, and the
store keeps that GPU's utilisation per namespace per 5-minute bucket
(`collectors.store.NAMESPACE_GPU_UTIL_ROLLUP`, entity `namespace|UUID[/instance][|profile]`).

A namespace seen on a GPU in a bucket held, for those 5 minutes, the whole GPU (weight: the GPU
model's compute slices, 7 on an H100) or its MIG instance (the profile's slices). A GPU-hour is
12 buckets × the GPU's slices (`GpuHolders.capacity`). `metering.energy_shares` gives each GPU's
own measured energy to the namespaces on it by these weights, so a busy GPU's kWh go to the
tenant who ran on it, not to every tenant of the node alike (dcgm-exporter#582, #587).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from itertools import groupby
from typing import Any

from sqlalchemy import String, func
from sqlmodel import Session, col, select

from collectors import mig_profiles
from collectors.models import Rollup5m
from fleet.models import Gpu
from metering.energy_shares import GPU, GpuHeld, NodeHourClaims
from metering.usage_io import STREAM_ROWS

BUCKETS_PER_HOUR = 12


@dataclass(frozen=True)
class GpuHolders:
    """The namespaces that held one GPU in one hour: namespace → weight (slice-buckets), out of
    `capacity` slice-buckets per GPU-hour."""

    weights: dict[str, int]
    capacity: int


class KeyCursor:
    """Values of a stream ordered by an increasing key (node id), read forward one key at a time
    (`at`), so the whole stream is never held at once."""

    def __init__(self, stream: Iterator[tuple[Any, dict]]) -> None:
        self._stream = stream
        self._key: Any = None
        self._value: dict = {}
        self._done = False

    def at(self, key: Any) -> dict:
        """The stream's value for `key` ({} if none); keys must be asked in increasing order."""
        while not self._done and (self._key is None or self._key < key):
            next_item = next(self._stream, None)
            if next_item is None:
                self._done = True
            else:
                self._key, self._value = next_item
        return self._value if self._key == key and not self._done else {}

    def drain(self) -> None:
        """Read the rest of the stream (a generator with work to finish)."""
        for _ in self._stream:
            pass
        self._done = True


def _gpu_of_entity(entity: Any, dialect: str) -> Any:
    """SQL: the GPU UUID of a `namespace|UUID[/instance][|profile]` entity."""
    if dialect == "postgresql":
        return func.split_part(func.split_part(entity, "|", 2), "/", 1)
    after = func.substr(entity, func.instr(entity, "|") + 1, type_=String)
    return func.substr(after, 1, func.min(func.instr(after.concat("|"), "|"), func.instr(after.concat("/"), "/")) - 1)


def gpu_holders(session: Session, start: datetime, end: datetime
                ) -> Iterator[tuple[int, dict[datetime, dict[str, GpuHolders]]]]:
    """(node id, hour → GPU UUID → its holders) for every node on whose GPUs the exporters saw a
    namespace in [start, end), in node id order (one node's month at a time). A MIG instance's
    namespace holds its profile's slices of the parent GPU."""
    from collectors.store import NAMESPACE_GPU_UTIL_ROLLUP, split_namespace_entity  # the store pulls in HTTP clients: not for `kiln bills list`

    uuid = _gpu_of_entity(Rollup5m.entity, session.connection().dialect.name)
    statement = select(Gpu.node_id, Gpu.model, Rollup5m.entity, Rollup5m.bucket).join(Gpu, col(Gpu.uuid) == uuid).where(
        Rollup5m.metric == NAMESPACE_GPU_UTIL_ROLLUP, col(Rollup5m.bucket) >= start, col(Rollup5m.bucket) < end
    ).order_by(Gpu.node_id, Rollup5m.bucket)
    rows = session.connection().execute(statement.execution_options(yield_per=STREAM_ROWS))
    for node_id, node_rows in groupby(rows, key=lambda row: row[0]):
        hours: dict[datetime, dict[str, GpuHolders]] = {}
        for hour, hour_rows in groupby(node_rows, key=lambda row: row[3].replace(minute=0, second=0, microsecond=0)):
            weights: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
            slices: dict[str, int] = {}
            for _, model, entity, _ in hour_rows:
                namespace, gpu, profile = split_namespace_entity(entity)
                if profile and not mig_profiles.PROFILE_PATTERN.match(profile):
                    continue  # not a profile NVIDIA names: how much of the GPU it held is unknown
                gpu_uuid = gpu.partition("/")[0]
                total = slices.setdefault(gpu_uuid, mig_profiles.total_slices(model or ""))
                weights[gpu_uuid][namespace] += min(mig_profiles.profile_slices(profile), total) if profile else total
            hours[hour] = {gpu_uuid: GpuHolders(dict(held), slices[gpu_uuid] * BUCKETS_PER_HOUR)
                           for gpu_uuid, held in weights.items()}
        yield node_id, hours


def placed_gpus(per_gpu: Mapping[str, int], holders: Mapping[str, GpuHolders], claims: NodeHourClaims,
                key: Callable[[int, str], Hashable]) -> list[GpuHeld]:
    """A node-hour's GPUs (UUID → parts of kWh) with their holders as `key(tenant_id, namespace)` —
    when no lease (whole node or GPU instance) holds it this hour and the exporters saw every
    namespace that requested its GPUs on one of them; else [] (the GPUs' energy then goes by
    GPU-time shares). `claims.requests` are keyed (tenant id, namespace or None, VDC id)."""
    gpu_requests = claims.requests.get(GPU, {})
    if claims.leased or not gpu_requests:
        return []
    tenant_of: dict[str, int] = {}
    for weights in claims.requests.values():
        for tenant_id, namespace, _ in weights:
            if namespace is None:
                return []  # a GPU instance lease: no exporter labels it, its pool share weighs
            if tenant_of.setdefault(namespace, tenant_id) != tenant_id:
                return []  # the namespace changed hands within the hour
    seen = {namespace for uuid in per_gpu if uuid in holders for namespace in holders[uuid].weights}
    if any(namespace not in seen for _, namespace, _ in gpu_requests):
        return []
    placed = []
    for uuid, parts in per_gpu.items():
        on_gpu = holders.get(uuid, GpuHolders({}, 1))  # nobody on it: its energy is idle
        placed.append(GpuHeld(parts, {key(tenant_of[ns], ns): weight
                                      for ns, weight in on_gpu.weights.items() if ns in tenant_of},
                              on_gpu.capacity, sum(w for ns, w in on_gpu.weights.items() if ns not in tenant_of)))
    return placed
