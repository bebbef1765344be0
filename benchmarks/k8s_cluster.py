"""The cluster of the k8s_ingest benchmark: GPU nodes, tenant namespaces and bound Running pods
created through the real kube-apiserver by parallel HTTP requests (aiohttp), the changes made
between the list and the watch phases, and the rows every pod must leave in `k8s_allocation`.

There is no kubelet or scheduler: pods are bound with `spec.nodeName` and their status is
written through the status subresource, as tests/test_kubernetes_collector.py does.
"""

from __future__ import annotations

import asyncio
import ssl
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

LABEL = "kiln.io/tenant"
T0 = datetime(2026, 1, 5, tzinfo=UTC)
GPU_COUNTS = (1, 2, 4, 8)


def log(message: str) -> None:
    """Progress on stderr."""
    print(f"[k8s_ingest] {message}", file=sys.stderr, flush=True)


def stamp(at: datetime) -> str:
    """RFC 3339 as Kubernetes writes it."""
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the cluster (set-up and changes, not timed) -------------------------------------------------


@dataclass
class PodPlan:
    """One pod as created and changed: what its intervals must be."""

    namespace: str
    name: str
    node: str
    gpus: int
    cpu: str
    memory: str
    started: datetime
    uid: str = ""
    finished: datetime | None = None
    deleted: tuple[datetime, datetime] | None = None  # (delete request sent, answered)

    def body(self) -> dict[str, Any]:
        """The pod as POSTed: one container, bound to its node."""
        limits = {"nvidia.com/gpu": str(self.gpus)} if self.gpus else {}
        return {"metadata": {"name": self.name, "namespace": self.namespace},
                "spec": {"nodeName": self.node, "restartPolicy": "Never", "containers": [{
                    "name": "main", "image": "registry.example/train:1",
                    "resources": {"requests": {"cpu": self.cpu, "memory": self.memory}, "limits": limits}}]}}

    def status(self) -> dict[str, Any]:
        """The status a kubelet would write: Running since `started`, or Succeeded at `finished`."""
        if self.finished is None:
            return {"status": {"phase": "Running", "startTime": stamp(self.started)}}
        return {"status": {"phase": "Succeeded", "startTime": stamp(self.started), "containerStatuses": [{
            "name": "main", "ready": False, "restartCount": 0, "image": "registry.example/train:1", "imageID": "",
            "state": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": stamp(self.started),
                                     "finishedAt": stamp(self.finished)}}}]}}

    def expected(self, tenant_of: dict[str, str]) -> dict[str, tuple]:
        """resource -> (namespace, tenant, pod, node, quantity, starts_at, ends_at) of its rows."""
        quantities = {"cpu": Decimal(self.cpu.removesuffix("m")) / (1000 if self.cpu.endswith("m") else 1),
                      "memory": Decimal(int(self.memory.removesuffix("Gi")) * 2**30)}
        if self.gpus:
            quantities["nvidia.com/gpu"] = Decimal(self.gpus)
        return {r: (self.namespace, tenant_of[self.namespace], self.name, self.node, q, self.started, self.finished)
                for r, q in quantities.items()}


@dataclass
class Cluster:
    """The API server and what the set-up put in it."""

    url: str
    token: str
    ca: str | None
    tenant_of: dict[str, str] = field(default_factory=dict)
    pods: list[PodPlan] = field(default_factory=list)


def plan_pod(index: int, namespaces: list[str], nodes: list[str], prefix: str = "job") -> PodPlan:
    """The index-th pod: spread over namespaces and nodes, every other one with GPUs."""
    return PodPlan(namespaces[index % len(namespaces)], f"{prefix}-{index:06d}", nodes[index % len(nodes)],
                   GPU_COUNTS[index // 2 % 4] if index % 2 == 0 else 0, f"{250 * (1 + index % 8)}m",
                   f"{1 + index % 16}Gi", T0 + timedelta(seconds=index))


class Api:
    """Parallel raw HTTP requests to the API server (aiohttp), at most `concurrency` at once."""

    def __init__(self, cluster: Cluster, concurrency: int) -> None:
        import aiohttp

        context = ssl.create_default_context(cafile=cluster.ca) if cluster.ca else False
        self.base, self.limit = cluster.url, asyncio.Semaphore(concurrency)
        self.session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {cluster.token}"},
            connector=aiohttp.TCPConnector(limit=concurrency, ssl=context))

    async def call(self, method: str, path: str, body: Any = None, patch: bool = False) -> dict[str, Any]:
        """One request; the decoded answer (raises on an error status, after 3 tries on 429/5xx)."""
        headers = {"Content-Type": "application/merge-patch+json"} if patch else {}
        async with self.limit:
            for attempt in range(3):
                async with self.session.request(method, self.base + path, json=body, headers=headers) as resp:
                    data = await resp.json(content_type=None)
                    if resp.status < 300:
                        return data
                    if resp.status not in (429, 500, 503) or attempt == 2:
                        raise RuntimeError(f"{method} {path}: HTTP {resp.status}: {data}")
                await asyncio.sleep(0.5)
        raise AssertionError("unreachable")

    async def create_pod(self, pod: PodPlan) -> str:
        """POST the pod, write its status; its uid and the status write's resourceVersion."""
        created = await self.call("POST", f"/api/v1/namespaces/{pod.namespace}/pods", pod.body())
        pod.uid = created["metadata"]["uid"]
        written = await self.call("PATCH", f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}/status",
                                  pod.status(), patch=True)
        return written["metadata"]["resourceVersion"]

    async def complete_pod(self, pod: PodPlan) -> str:
        """The pod's container exits 0 an hour after start: status Succeeded."""
        pod.finished = pod.started + timedelta(hours=1, seconds=7)
        written = await self.call("PATCH", f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}/status",
                                  pod.status(), patch=True)
        return written["metadata"]["resourceVersion"]

    async def delete_pod(self, pod: PodPlan) -> str:
        """Delete the pod at once (no kubelet to wait for)."""
        sent = datetime.now(UTC)
        gone = await self.call("DELETE", f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}",
                               {"gracePeriodSeconds": 0})
        pod.deleted = (sent, datetime.now(UTC))
        return gone["metadata"]["resourceVersion"]

    async def close(self) -> None:
        """Close the connections."""
        await self.session.close()


async def populate(cluster: Cluster, nodes: int, namespaces: int, pods: int, concurrency: int) -> None:
    """GPU nodes, tenant-labelled namespaces and bound Running pods."""
    api = Api(cluster, concurrency)
    try:
        node_names = [f"gpu-node-{i:04d}" for i in range(nodes)]
        for name in node_names:
            await api.call("POST", "/api/v1/nodes", {"metadata": {"name": name}})
        await asyncio.gather(*(api.call("PATCH", f"/api/v1/nodes/{name}/status", {"status": {
            "capacity": {"nvidia.com/gpu": "8", "cpu": "128", "memory": "1056Gi", "pods": "250"},
            "allocatable": {"nvidia.com/gpu": "8", "cpu": "126", "memory": "1048Gi", "pods": "250"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "lastHeartbeatTime": stamp(T0), "lastTransitionTime": stamp(T0)}]}}, patch=True)
            for name in node_names))
        ns_names = [f"tenant-{i:04d}" for i in range(namespaces)]
        cluster.tenant_of = {ns: f"t{i % 500:03d}" for i, ns in enumerate(ns_names)}
        await asyncio.gather(*(api.call("POST", "/api/v1/namespaces", {"metadata": {
            "name": ns, "labels": {LABEL: cluster.tenant_of[ns]}}}) for ns in ns_names))
        cluster.pods = [plan_pod(i, ns_names, node_names) for i in range(pods)]
        began, step = time.monotonic(), 5000
        for start in range(0, pods, step):
            await asyncio.gather(*(api.create_pod(p) for p in cluster.pods[start:start + step]))
            done = min(start + step, pods)
            log(f"  {done:,} pods ({done / (time.monotonic() - began):.0f}/s)")
    finally:
        await api.close()


async def change(cluster: Cluster, changes: int, concurrency: int) -> str:
    """Completions, deletions and new pods (40/30/30 %); the resourceVersion of the last one."""
    api = Api(cluster, concurrency)
    try:
        completions, deletions = changes * 4 // 10, changes * 3 // 10
        additions = changes - completions - deletions
        old = cluster.pods
        namespaces, nodes = sorted(cluster.tenant_of), sorted({p.node for p in old})
        new = [plan_pod(len(old) + i, namespaces, nodes, prefix="new") for i in range(additions)]
        # distinct old pods: every 3rd completes, the ones after them are deleted
        done, gone = old[0:3 * completions:3], old[1:3 * deletions:3]
        versions = await asyncio.gather(*(api.complete_pod(p) for p in done), *(api.delete_pod(p) for p in gone),
                                        *(api.create_pod(p) for p in new))
        cluster.pods.extend(new)
        return max(versions, key=int)
    finally:
        await api.close()


def expected_rows(cluster: Cluster) -> dict[tuple[str, str], tuple]:
    """(pod_uid, resource) -> the row every pod must have left."""
    return {(p.uid, r): row for p in cluster.pods for r, row in p.expected(cluster.tenant_of).items()}


def check_rows(cluster: Cluster, got: dict[tuple[str, str], tuple], watch_end: datetime) -> list[str]:
    """Differences between stored rows and the expected ones (a deleted pod's end: within its window)."""
    want, problems = expected_rows(cluster), []
    deleted = {p.uid: p.deleted for p in cluster.pods if p.deleted}
    for key in sorted(want.keys() - got.keys())[:5]:
        problems.append(f"missing {key}")
    for key in sorted(got.keys() - want.keys())[:5]:
        problems.append(f"unexpected {key}")
    for key in sorted(want.keys() & got.keys()):
        expect, row = want[key], got[key]
        window = deleted.get(key[0])
        if window:
            ok = row[:6] == expect[:6] and row[6] is not None and window[0] <= row[6] <= watch_end
        else:
            ok = row == expect
        if not ok and len(problems) < 20:
            problems.append(f"{key}: stored {row}, expected {expect} (deleted {window})")
    return problems
