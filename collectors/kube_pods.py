"""A pod's resource requests as intervals: what the Kubernetes collector keeps of each pod and
the `kiln_k8s_pod_allocation` samples it reports (see `collectors.kubernetes`).

A pod's request of a resource is Kubernetes' effective request: max(sum over app containers
and sidecars, largest init container) + pod overhead (a missing request defaults to the
limit). `TrackedPod` keeps only what intervals need, never the raw pod object, and
`IntervalLabels` writes a sample's labels out only when they are read: both are what keeps
100,000 pods within a few hundred MB.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

from kubernetes.utils.quantity import parse_quantity

from collectors import mig_profiles
from collectors.base import Sample

SOURCE = "kubernetes"
GPU_RESOURCES = ("nvidia.com/gpu", "amd.com/gpu")
# resource -> (kube-state-metrics unit label, Sample unit)
RESOURCES: dict[str, tuple[str, str]] = {"nvidia.com/gpu": ("integer", "count"), "amd.com/gpu": ("integer", "count"),
                                         "cpu": ("core", "cores"), "memory": ("byte", "bytes")}
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
ALLOCATION_METRIC = "kiln_k8s_pod_allocation"
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class PodInterval:
    """One pod's request of one resource over [starts_at, ends_at); ends_at None while it runs."""

    namespace: str
    pod: str
    pod_uid: str
    node: str | None
    resource: str
    quantity: Decimal
    limit: Decimal | None
    starts_at: datetime
    ends_at: datetime | None
    tenant: str | None = None


@dataclass(slots=True)
class TrackedPod:
    """What Kiln keeps of a pod as last seen: only what its intervals need, never the raw object
    (100,000 raw pods would hold gigabytes), and when Kiln saw it finish or go."""

    namespace: str
    pod: str
    uid: str
    node: str | None
    started: datetime | None
    finished: datetime | None  # the latest container finishedAt, once the phase is terminal
    terminal: bool
    amounts: tuple[tuple[str, Decimal, Decimal | None], ...]  # (resource, request, limit)
    terminal_seen_at: datetime | None = None
    deleted_at: datetime | None = None

    @classmethod
    def of(cls, pod: Mapping[str, Any]) -> TrackedPod:
        """The summary of a raw pod object (namespace, node and resource names interned: shared)."""
        meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
        terminal = (pod.get("status") or {}).get("phase") in TERMINAL_PHASES
        limits = effective_resources(spec, "limits")
        node = spec.get("nodeName")
        amounts = tuple(_shared((sys.intern(r), _shared(q), _shared(limits.get(r))))
                        for r, q in effective_resources(spec, "requests").items())
        return cls(sys.intern(meta.get("namespace", "")), meta.get("name", ""), meta.get("uid", ""),
                   sys.intern(node) if node else None, pod_started_at(pod), pod_finished_at(pod) if terminal else None,
                   terminal, _shared(amounts))

    def intervals(self, *, ended_at: datetime | None = None, tenant: str | None = None) -> list[PodInterval]:
        """The pod's intervals once bound, one per requested resource; `ended_at`: when Kiln saw it end."""
        start = self.started
        if not self.node or start is None:
            return []  # not holding anything yet
        end = self.finished or ended_at
        end = None if end is None else max(end, start)
        return [PodInterval(self.namespace, self.pod, self.uid, self.node, resource, quantity, limit, start, end, tenant)
                for resource, quantity, limit in self.amounts]


_SHARED: dict[Any, Any] = {}
SHARED_LIMIT = 100_000


def _shared(value: T) -> T:
    """One object for equal quantities and resource tuples: pods made from one template ask for
    the same amounts, and 100,000 copies of three Decimals and their tuples would cost ~50 MB.
    (Equal Decimals are interchangeable here: labels and rows use their normalised value.)"""
    if len(_SHARED) > SHARED_LIMIT:  # requests that keep changing (a vertical autoscaler): start over
        _SHARED.clear()
    return _SHARED.setdefault(value, value)


def parse_time(value: str | None) -> datetime | None:
    """A Kubernetes RFC 3339 timestamp as an aware datetime (None for none)."""
    return datetime.fromisoformat(value) if value else None


def _container_amount(container: Mapping[str, Any], key: str, resource: str) -> Decimal:
    resources = container.get("resources") or {}
    value = (resources.get(key) or {}).get(resource)
    if value is None and key == "requests":  # a request left out defaults to the limit
        value = (resources.get("limits") or {}).get(resource)
    return Decimal(0) if value is None else parse_quantity(value)


def tracked_resources(spec: Mapping[str, Any]) -> list[str]:
    """The resources Kiln meters that this pod spec names: GPUs, CPU, memory and any MIG profile
    (`nvidia.com/mig-<profile>`, the device plugin's mixed strategy)."""
    containers = [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]
    named = {name for c in containers for key in ("requests", "limits")
             for name in ((c.get("resources") or {}).get(key) or {})}
    return [*RESOURCES, *sorted(name for name in named if mig_profiles.is_mig_resource(name))]


def resource_unit(resource: str) -> tuple[str, str]:
    """(kube-state-metrics unit label, Sample unit) of a metered resource; MIG instances are counted."""
    return RESOURCES.get(resource, ("integer", "count"))


def effective_resources(spec: Mapping[str, Any], key: str) -> dict[str, Decimal]:
    """The pod's effective `requests` or `limits` per tracked resource, as the scheduler counts them."""
    inits = spec.get("initContainers") or []
    running = [*(spec.get("containers") or []), *(c for c in inits if c.get("restartPolicy") == "Always")]
    one_shot = [c for c in inits if c.get("restartPolicy") != "Always"]
    out: dict[str, Decimal] = {}
    for resource in tracked_resources(spec):
        app = sum((_container_amount(c, key, resource) for c in running), Decimal(0))
        init = max((_container_amount(c, key, resource) for c in one_shot), default=Decimal(0))
        overhead = (spec.get("overhead") or {}).get(resource)
        total = max(app, init) + (parse_quantity(overhead) if overhead is not None else Decimal(0))
        if total > 0:
            out[resource] = total
    return out


def pod_started_at(pod: Mapping[str, Any]) -> datetime | None:
    """When the pod began to hold its node's resources: startTime, else its PodScheduled time."""
    status = pod.get("status") or {}
    if status.get("startTime"):
        return parse_time(status["startTime"])
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "True":
            return parse_time(condition.get("lastTransitionTime"))
    return None


def pod_finished_at(pod: Mapping[str, Any]) -> datetime | None:
    """The latest container `terminated.finishedAt` of a pod (None if none terminated)."""
    status = pod.get("status") or {}
    ends = [parse_time(((s.get("state") or {}).get("terminated") or {}).get("finishedAt"))
            for s in status.get("containerStatuses") or []]
    return max((e for e in ends if e is not None), default=None)


def interval_labels(interval: PodInterval) -> dict[str, str]:
    """The labels of the sample carrying one interval (exact values as strings)."""
    return {
        "namespace": interval.namespace, "tenant": interval.tenant or "", "pod": interval.pod,
        "pod_uid": interval.pod_uid, "node": interval.node or "", "resource": interval.resource,
        "quantity": format(interval.quantity.normalize(), "f"),
        "limit": "" if interval.limit is None else format(interval.limit.normalize(), "f"),
        "starts_at": interval.starts_at.isoformat(), "ends_at": interval.ends_at.isoformat() if interval.ends_at else "",
    }


LABEL_KEYS = ("namespace", "tenant", "pod", "pod_uid", "node", "resource", "quantity", "limit", "starts_at", "ends_at")


class IntervalLabels(Mapping[str, str]):
    """An allocation sample's labels, written out from its interval only when read: a cycle of
    100,000 pods carries ~250,000 intervals, and ten label strings each would cost ~250 MB.
    `collectors.cluster_store` takes the interval itself (`.interval`) instead of parsing them."""

    __slots__ = ("interval",)

    def __init__(self, interval: PodInterval) -> None:
        self.interval = interval

    def __getitem__(self, key: str) -> str:
        return interval_labels(self.interval)[key]

    def __iter__(self) -> Iterator[str]:
        return iter(LABEL_KEYS)

    def __len__(self) -> int:
        return len(LABEL_KEYS)

    def __repr__(self) -> str:
        return repr(interval_labels(self.interval))


def interval_sample(interval: PodInterval, ts: datetime) -> Sample:
    """The `kiln_k8s_pod_allocation` sample carrying one interval (exact values in labels)."""
    return Sample(SOURCE, interval.namespace, ALLOCATION_METRIC, float(interval.quantity),
                  resource_unit(interval.resource)[1], IntervalLabels(interval), ts)
