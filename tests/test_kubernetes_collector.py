"""The Kubernetes collector against a real kube-apiserver (+ etcd) with GPU nodes and pods.

There is no kubelet or scheduler: the tests play them, binding pods with `spec.nodeName` and
writing node and pod `status` through the status subresource.
"""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import urllib3
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from sqlalchemy import Engine
from sqlmodel import Session, select

from collectors.base import TargetResult
from collectors.cluster_store import gpu_hours_by_tenant, persist_kubernetes
from collectors.kube_pods import effective_resources
from collectors.cycle import run_cycle
from collectors.kubernetes import TRACKED_METRIC, KubernetesCollector, PodInterval, build
from collectors.models import K8sAllocation
from collectors.sources import single_target_source
from kiln.settings import ConfigError, Settings
from metering.intervals import MICROS_PER_HOUR
from metering.models import UsageRecord
from metering.usage import build_usage
from tests.factories import World
from tests.fleet_helpers import make_node_row
from tests.peers.harness import running_peer


T0 = datetime(2026, 1, 5, tzinfo=UTC)
LABEL = "kiln.io/tenant"


def stamp(at: datetime) -> str:
    """RFC 3339 as Kubernetes writes it."""
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture(scope="module")
def kubeconfig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A running kube-apiserver; its admin kubeconfig path."""
    state = tmp_path_factory.mktemp("kube")
    with running_peer("kube", state):
        yield str(state / "kubeconfig")


@pytest.fixture(scope="module")
def core(kubeconfig: str) -> Iterator[k8s.CoreV1Api]:
    """The tests' own client (playing kubelet and scheduler)."""
    api = k8s_config.new_client_from_config(config_file=kubeconfig)
    yield k8s.CoreV1Api(api)
    api.close()


def make_node(core: k8s.CoreV1Api, name: str, gpu: str, *, ready: str = "True", gpus: int = 8,
              address: str = "10.0.0.11") -> None:
    """A node with GPU capacity, conditions, addresses and system info, as a kubelet and device
    plugin would report them."""
    core.create_node({"metadata": {"name": name}})
    conditions = [{"type": t, "status": s, "reason": "Test", "lastHeartbeatTime": stamp(T0),
                   "lastTransitionTime": stamp(T0)}
                  for t, s in (("Ready", ready), ("MemoryPressure", "False"), ("DiskPressure", "False"),
                               ("PIDPressure", "False"))]
    core.patch_node_status(name, {"status": {
        "capacity": {gpu: str(gpus), "cpu": "128", "memory": "1056Gi", "pods": "110"},
        "allocatable": {gpu: str(gpus), "cpu": "126", "memory": "1048Gi", "pods": "110"},
        "addresses": [{"type": "Hostname", "address": name}, {"type": "InternalIP", "address": address}],
        "nodeInfo": {"machineID": "m", "systemUUID": f"uuid-{name}", "bootID": "b", "kernelVersion": "6.1.0-28-amd64",
                     "osImage": "Debian GNU/Linux 12 (bookworm)", "containerRuntimeVersion": "containerd://1.7.24",
                     "kubeletVersion": "v1.31.4", "kubeProxyVersion": "", "operatingSystem": "linux",
                     "architecture": "amd64"},
        "conditions": conditions}})


def make_namespace(core: k8s.CoreV1Api, name: str, tenant: str | None) -> None:
    """A namespace, labelled with its tenant (or not)."""
    labels = {LABEL: tenant} if tenant else {}
    core.create_namespace({"metadata": {"name": name, "labels": labels}})


def make_pod(core: k8s.CoreV1Api, namespace: str, name: str, *, node: str | None, limits: dict[str, str],
             requests: dict[str, str] | None = None, init_cpu: str | None = None,
             status: dict[str, Any] | None = None) -> k8s.V1Pod:
    """A pod bound to `node` (when given) with these resources; `status` written as a kubelet would."""
    container = {"name": "main", "image": "registry.example/train:1",
                 "resources": {"limits": limits, "requests": requests or {}}}
    spec: dict[str, Any] = {"containers": [container], "restartPolicy": "Never"}
    if init_cpu:
        spec["initContainers"] = [{"name": "fetch", "image": "registry.example/fetch:1",
                                   "resources": {"requests": {"cpu": init_cpu}}}]
    if node:
        spec["nodeName"] = node
    pod = core.create_namespaced_pod(namespace, {"metadata": {"name": name}, "spec": spec})
    if status:
        pod = core.patch_namespaced_pod_status(name, namespace, {"status": status})
    return pod


def terminated(finished: datetime, started: datetime) -> list[dict[str, Any]]:
    """containerStatuses of a container that ran and exited 0."""
    return [{"name": "main", "ready": False, "restartCount": 0, "image": "registry.example/train:1",
             "imageID": "", "state": {"terminated": {"exitCode": 0, "reason": "Completed",
                                                     "startedAt": stamp(started), "finishedAt": stamp(finished)}}}]


@pytest.fixture(scope="module")
def cluster(core: k8s.CoreV1Api) -> dict[str, str]:
    """Two GPU nodes, three namespaces (two tenants), and pods running, finished and pending."""
    make_node(core, "gpu-node-1", "nvidia.com/gpu")
    make_node(core, "gpu-node-2", "amd.com/gpu", ready="False")
    make_namespace(core, "team-a", "acme")
    make_namespace(core, "team-b", "globex")
    make_namespace(core, "team-c", None)
    train = make_pod(core, "team-a", "train", node="gpu-node-1", init_cpu="32",
                     limits={"nvidia.com/gpu": "4", "memory": "64Gi"}, requests={"cpu": "16", "memory": "64Gi"},
                     status={"phase": "Running", "startTime": stamp(T0)})
    done = make_pod(core, "team-a", "finetune", node="gpu-node-1", limits={"nvidia.com/gpu": "2"},
                    requests={"cpu": "500m"},
                    status={"phase": "Succeeded", "startTime": stamp(T0 + timedelta(hours=1)),
                            "containerStatuses": terminated(T0 + timedelta(hours=3, minutes=30, seconds=36),
                                                            T0 + timedelta(hours=1))})
    infer = make_pod(core, "team-b", "infer", node="gpu-node-2", limits={"amd.com/gpu": "1"},
                     status={"phase": "Running", "startTime": stamp(T0 + timedelta(hours=2))})
    make_pod(core, "team-c", "pending", node=None, limits={"nvidia.com/gpu": "1"})
    return {"train": train.metadata.uid, "finetune": done.metadata.uid, "infer": infer.metadata.uid}


@pytest.fixture
def scratch(core: k8s.CoreV1Api, cluster: dict[str, str]) -> str:
    """A fresh namespace of tenant `initech` for a test's own pods."""
    name = f"scratch-{uuid.uuid4().hex[:8]}"
    make_namespace(core, name, "initech")
    return name


def only(results: list[TargetResult]) -> TargetResult:
    """The one result of a collection."""
    assert len(results) == 1
    return results[0]


def by_pod(collector: KubernetesCollector) -> dict[tuple[str, str], PodInterval]:
    """The collector's intervals by (pod name, resource)."""
    return {(i.pod, i.resource): i for i in collector.intervals()}


def collector_for(core: k8s.CoreV1Api) -> KubernetesCollector:
    """A fresh collector on the admin client."""
    return KubernetesCollector(core, tenant_label=LABEL)


def test_first_collection_lists_nodes_namespaces_and_pod_intervals(core: k8s.CoreV1Api, cluster: dict[str, str]) -> None:
    collector = collector_for(core)
    result = only(collector.collect())
    assert result.ok, result.error
    assert result.target == core.api_client.configuration.host
    assert {kind: collector.calls[("list", kind)] for kind in ("nodes", "namespaces", "pods")} == {
        "nodes": 1, "namespaces": 1, "pods": 1}
    assert not any(kind == "watch" for kind, _ in collector.calls)

    def node_value(node: str, metric: str, **labels: str) -> float:
        found = [s.value for s in result.samples if s.entity == node and s.metric == metric
                 and all(s.labels.get(k) == v for k, v in labels.items())]
        assert len(found) == 1, (node, metric, labels)
        return found[0]

    assert node_value("gpu-node-1", "kube_node_status_capacity", resource="nvidia_com_gpu", unit="integer") == 8
    assert node_value("gpu-node-1", "kube_node_status_allocatable", resource="cpu", unit="core") == 126
    assert node_value("gpu-node-1", "kube_node_status_allocatable", resource="memory") == 1048 * 2**30
    assert node_value("gpu-node-2", "kube_node_status_capacity", resource="amd_com_gpu") == 8
    assert node_value("gpu-node-1", "kube_node_status_condition", condition="Ready", status="true") == 1
    assert node_value("gpu-node-2", "kube_node_status_condition", condition="Ready", status="true") == 0
    assert node_value("gpu-node-2", "kube_node_status_condition", condition="Ready", status="false") == 1
    assert node_value("gpu-node-1", "kube_node_status_condition", condition="MemoryPressure", status="false") == 1
    assert node_value("gpu-node-1", "kube_node_info", internal_ip="10.0.0.11", kubelet_version="v1.31.4",
                      system_uuid="uuid-gpu-node-1", container_runtime_version="containerd://1.7.24") == 1
    tenants = {s.entity: s.labels["tenant"] for s in result.samples if s.metric == "kiln_k8s_namespace_tenant"}
    assert {k: tenants[k] for k in ("team-a", "team-b", "team-c")} == {"team-a": "acme", "team-b": "globex",
                                                                        "team-c": ""}

    intervals = by_pod(collector)
    train = intervals[("train", "nvidia.com/gpu")]
    assert (train.namespace, train.tenant, train.node, train.quantity, train.limit) == (
        "team-a", "acme", "gpu-node-1", Decimal(4), Decimal(4))
    assert (train.starts_at, train.ends_at, train.pod_uid) == (T0, None, cluster["train"])
    assert intervals[("train", "cpu")].quantity == Decimal(32)  # the init container asks for more than the app
    assert intervals[("train", "memory")].quantity == 64 * 2**30
    finetune = intervals[("finetune", "nvidia.com/gpu")]
    assert (finetune.starts_at, finetune.ends_at) == (T0 + timedelta(hours=1),
                                                      T0 + timedelta(hours=3, minutes=30, seconds=36))
    assert intervals[("finetune", "cpu")].quantity == Decimal("0.5")
    infer = intervals[("infer", "amd.com/gpu")]
    assert (infer.tenant, infer.node, infer.quantity, infer.ends_at) == ("globex", "gpu-node-2", 1, None)
    assert not any(pod == "pending" for pod, _ in intervals)  # not bound: holds nothing yet
    samples = [s for s in result.samples if s.metric == "kiln_k8s_pod_allocation"
               and s.labels["pod_uid"] == cluster["train"] and s.labels["resource"] == "nvidia.com/gpu"]
    assert len(samples) == 1 and samples[0].labels["starts_at"] == T0.isoformat()
    assert samples[0].labels["ends_at"] == "" and samples[0].labels["quantity"] == "4"


def test_gpu_hours_per_tenant_are_exact(core: k8s.CoreV1Api, cluster: dict[str, str], engine: Engine) -> None:
    results = collector_for(core).collect()
    with Session(engine) as session:
        first = persist_kubernetes(session, results)
        session.commit()
    with Session(engine) as session:
        assert persist_kubernetes(session, results) == 0  # the same results again change nothing
        session.commit()
    with Session(engine) as session:
        rows = session.exec(select(K8sAllocation).where(K8sAllocation.pod_uid == cluster["finetune"])).all()
        assert first >= 6 and {r.resource for r in rows} == {"nvidia.com/gpu", "cpu"}
        gpu = next(r for r in rows if r.resource == "nvidia.com/gpu")
        assert (gpu.namespace, gpu.tenant_slug, gpu.node_name, gpu.quantity) == ("team-a", "acme", "gpu-node-1", 2)
        assert gpu.ends_at == T0 + timedelta(hours=3, minutes=30, seconds=36)
        # train 4 GPUs x 4 h (still running, clipped) + finetune 2 x 2.51 h; infer 1 AMD GPU x 2 h
        assert gpu_hours_by_tenant(session, T0, T0 + timedelta(hours=4)) == {
            "acme": Decimal("21.02"), "globex": Decimal(2)}
        assert gpu_hours_by_tenant(session, T0 + timedelta(hours=3), T0 + timedelta(hours=5)) == {
            "acme": Decimal("9.02"), "globex": Decimal(2)}
        assert gpu_hours_by_tenant(session, T0 - timedelta(days=1), T0) == {}


class RecordingCore(k8s.CoreV1Api):
    """The real API, remembering the arguments of every pods list or watch request."""

    def __init__(self, api_client: k8s.ApiClient) -> None:
        super().__init__(api_client)
        self.pod_requests: list[dict[str, Any]] = []

    def list_pod_for_all_namespaces(self, **kwargs: Any) -> Any:
        self.pod_requests.append(kwargs)
        return super().list_pod_for_all_namespaces(**kwargs)


def test_watch_picks_up_new_and_deleted_pods_without_listing_again(core: k8s.CoreV1Api, scratch: str) -> None:
    recording = RecordingCore(core.api_client)
    collector = KubernetesCollector(recording, tenant_label=LABEL)
    assert only(collector.collect()).ok
    listed_at = dict(collector.resource_versions)
    started = datetime.now(UTC).replace(microsecond=0)
    pod = make_pod(core, scratch, "new-job", node="gpu-node-1", limits={"nvidia.com/gpu": "1"},
                   status={"phase": "Running", "startTime": stamp(started)})

    assert only(collector.collect()).ok
    assert collector.calls[("list", "pods")] == 1 and collector.calls[("watch", "pods")] == 1
    assert collector.calls[("gone", "pods")] == 0
    assert int(collector.resource_versions["pods"]) >= int(pod.metadata.resource_version) > int(listed_at["pods"])
    listed, watched = recording.pod_requests
    assert not listed.get("watch") and listed.get("resource_version") is None
    assert watched["watch"] is True and watched["resource_version"] == listed_at["pods"]
    new = by_pod(collector)[("new-job", "nvidia.com/gpu")]
    assert (new.tenant, new.starts_at, new.ends_at) == ("initech", started, None)

    before = datetime.now(UTC)
    core.delete_namespaced_pod("new-job", scratch, grace_period_seconds=0)
    result = only(collector.collect())
    after = datetime.now(UTC)
    assert result.ok
    assert collector.calls[("list", "pods")] == 1 and collector.calls[("watch", "pods")] == 2
    gone = by_pod(collector)[("new-job", "nvidia.com/gpu")]
    assert gone.ends_at is not None and before <= gone.ends_at <= after
    ended = [s for s in result.samples if s.metric == "kiln_k8s_pod_allocation" and s.labels["pod"] == "new-job"]
    assert [s.labels["ends_at"] for s in ended] == [gone.ends_at.isoformat()]


def test_a_pod_failed_without_container_statuses_ends_when_seen_failed(core: k8s.CoreV1Api, scratch: str) -> None:
    make_pod(core, scratch, "crashed", node="gpu-node-1", limits={"nvidia.com/gpu": "1"},
             status={"phase": "Running", "startTime": stamp(datetime.now(UTC) - timedelta(minutes=5))})
    collector = collector_for(core)
    assert only(collector.collect()).ok
    before = datetime.now(UTC)
    core.patch_namespaced_pod_status("crashed", scratch, {"status": {"phase": "Failed", "reason": "Evicted"}})
    assert only(collector.collect()).ok
    ended = by_pod(collector)[("crashed", "nvidia.com/gpu")].ends_at
    assert ended is not None and before <= ended <= datetime.now(UTC)
    assert only(collector.collect()).ok  # the end stays where it was first seen
    assert by_pod(collector)[("crashed", "nvidia.com/gpu")].ends_at == ended


def test_effective_requests_count_init_containers_sidecars_and_overhead() -> None:
    def container(cpu: str, **extra: Any) -> dict[str, Any]:
        return {"name": "c", "resources": {"requests": {"cpu": cpu}, "limits": {"nvidia.com/gpu": "2"}}, **extra}

    spec = {"containers": [container("1"), container("2")],
            "initContainers": [container("5"), container("500m", restartPolicy="Always")],
            "overhead": {"cpu": "250m", "memory": "120Mi"}}
    # app containers + sidecar: 3.5 CPUs and 6 GPUs; the one-shot init container 5 CPUs: max + overhead
    assert effective_resources(spec, "requests") == {
        "nvidia.com/gpu": Decimal(6), "cpu": Decimal("5.25"), "memory": Decimal(120 * 2**20)}
    assert effective_resources(spec, "limits") == {"nvidia.com/gpu": Decimal(6), "cpu": Decimal("0.25"),
                                                   "memory": Decimal(120 * 2**20)}


EXPIRED_EVENT = (b'{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",'
                 b'"message":"too old resource version: 1 (4242)","reason":"Expired","code":410}}\n')


class ExpiringCore(k8s.CoreV1Api):
    """The real API, except that the next pods watch finds its resourceVersion expired.

    A fresh API server's watch cache grows with the event rate and keeps every version a
    test can make, so expiry (410 Gone) cannot be provoked here: it is injected in either
    form the API server uses: an HTTP 410 answer or a 410 ERROR event in the watch stream.
    """

    def __init__(self, api_client: k8s.ApiClient, form: str) -> None:
        super().__init__(api_client)
        self.form, self.expire_next_watch = form, False

    def list_pod_for_all_namespaces(self, **kwargs: Any) -> Any:
        if kwargs.get("watch") and self.expire_next_watch:
            self.expire_next_watch = False
            if self.form == "http-410":
                raise k8s.ApiException(status=410, reason="Gone")
            return urllib3.HTTPResponse(body=io.BytesIO(EXPIRED_EVENT), status=200, preload_content=False)
        return super().list_pod_for_all_namespaces(**kwargs)


@pytest.mark.parametrize("form", ["http-410", "error-event"])
def test_an_expired_resource_version_lists_again(core: k8s.CoreV1Api, scratch: str, form: str) -> None:
    make_pod(core, scratch, "short", node="gpu-node-1", limits={"nvidia.com/gpu": "1"},
             status={"phase": "Running", "startTime": stamp(datetime.now(UTC))})
    expiring = ExpiringCore(core.api_client, form)
    collector = KubernetesCollector(expiring, tenant_label=LABEL)
    assert only(collector.collect()).ok
    core.delete_namespaced_pod("short", scratch, grace_period_seconds=0)
    expiring.expire_next_watch = True
    before = datetime.now(UTC)
    assert only(collector.collect()).ok
    assert collector.calls[("gone", "pods")] == 1 and collector.calls[("list", "pods")] == 2
    assert collector.calls[("gone", "nodes")] == 0 and collector.calls[("list", "nodes")] == 1
    short = by_pod(collector)[("short", "nvidia.com/gpu")]
    assert short.ends_at is not None and short.ends_at >= before  # seen missing from the new list
    assert only(collector.collect()).ok  # and watches again from the new list's version
    assert collector.calls[("list", "pods")] == 2 and collector.calls[("watch", "pods")] == 2


def test_a_deleted_pod_ends_its_row(core: k8s.CoreV1Api, scratch: str, engine: Engine) -> None:
    started = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    uid = make_pod(core, scratch, "batch", node="gpu-node-1", limits={"nvidia.com/gpu": "2"},
                   status={"phase": "Running", "startTime": stamp(started)}).metadata.uid
    orphan_uid = make_pod(core, scratch, "orphan", node="gpu-node-1", limits={"nvidia.com/gpu": "1"},
                          status={"phase": "Running", "startTime": stamp(started)}).metadata.uid
    collector = collector_for(core)

    def persist(results: list[TargetResult]) -> None:
        with Session(engine) as session:
            persist_kubernetes(session, results)
            session.commit()

    def row(pod_uid: str) -> K8sAllocation:
        with Session(engine) as session:
            return session.exec(select(K8sAllocation).where(K8sAllocation.pod_uid == pod_uid,
                                                            K8sAllocation.resource == "nvidia.com/gpu")).one()

    persist(collector.collect())
    assert row(uid).ends_at is None and row(uid).starts_at == started
    core.delete_namespaced_pod("batch", scratch, grace_period_seconds=0)
    persist(collector.collect())
    ended = row(uid).ends_at
    assert ended is not None and started < ended <= datetime.now(UTC)
    assert row(orphan_uid).ends_at is None

    # a pod deleted while no worker watched: a new collector's complete view closes its row
    core.delete_namespaced_pod("orphan", scratch, grace_period_seconds=0)
    before = datetime.now(UTC)
    persist(collector_for(core).collect())
    assert row(orphan_uid).ends_at is not None and row(orphan_uid).ends_at >= before
    assert row(uid).ends_at == ended


def test_failed_results_never_touch_the_table(engine: Engine) -> None:
    with Session(engine) as session:
        assert persist_kubernetes(session, [TargetResult("https://k8s", ok=False, error="down")]) == 0


def bad_kubeconfig(kubeconfig: str, tmp_path: Path, **changes: str) -> str:
    """A copy of the admin kubeconfig with the token or server replaced."""
    config = yaml.safe_load(Path(kubeconfig).read_text())
    if "token" in changes:
        config["users"][0]["user"]["token"] = changes["token"]
    if "server" in changes:
        config["clusters"][0]["cluster"]["server"] = changes["server"]
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_a_bad_token_is_a_failed_result_with_a_readable_reason(kubeconfig: str, tmp_path: Path,
                                                              cluster: dict[str, str]) -> None:
    path = bad_kubeconfig(kubeconfig, tmp_path, token="expired-" + uuid.uuid4().hex)
    collector = build(Settings(data_dir=tmp_path, kubeconfig=path))
    assert collector is not None
    result = only(collector.collect())
    assert not result.ok and result.samples == []
    assert result.error == (f"Kubernetes API {collector.target} rejected the credentials (401 Unauthorized): "
                            "the token is invalid or expired")
    collector.close()


def test_an_unreachable_api_server_is_a_failed_result(kubeconfig: str, tmp_path: Path) -> None:
    path = bad_kubeconfig(kubeconfig, tmp_path, server="https://127.0.0.1:9")
    collector = build(Settings(data_dir=tmp_path, kubeconfig=path))
    assert collector is not None
    started = time.monotonic()
    result = only(collector.collect())
    assert not result.ok and time.monotonic() - started < 10
    assert result.error.startswith("cannot reach Kubernetes API https://127.0.0.1:9: ")
    assert "refused" in result.error.lower()
    collector.close()


def test_build_follows_the_settings(kubeconfig: str, tmp_path: Path, cluster: dict[str, str]) -> None:
    assert build(Settings(data_dir=tmp_path)) is None
    with pytest.raises(ConfigError, match="KILN_KUBECONFIG"):
        build(Settings(data_dir=tmp_path, kubeconfig=str(tmp_path / "missing")))
    collector = build(Settings(data_dir=tmp_path, kubeconfig=kubeconfig, kube_tenant_label="example.com/team"))
    assert collector is not None and collector.tenant_label == "example.com/team"
    assert only(collector.collect()).ok
    assert all(i.tenant is None for i in collector.intervals())  # nobody uses that label
    collector.close()


def test_mig_and_time_sliced_pods_become_gpu_hours_that_add_up(core: k8s.CoreV1Api, cluster: dict[str, str],
                                                                world: World) -> None:
    """A MIG node (mixed strategy: `nvidia.com/mig-<profile>` resources) and a time-sliced GPU
    (the device plugin advertising 3 replicas of one GPU) through the collector, the store and
    usage: instances are their compute fraction of a GPU-hour, time-sliced pods share the GPU."""
    tag = uuid.uuid4().hex[:6]
    mig_node, ts_node, ns_a, ns_b = f"mig-node-{tag}", f"ts-node-{tag}", f"mig-a-{tag}", f"mig-b-{tag}"
    make_node(core, mig_node, "nvidia.com/mig-3g.40gb", gpus=2)
    make_node(core, ts_node, "nvidia.com/gpu", gpus=3, address="10.0.0.12")
    make_namespace(core, ns_a, "tenant-a")
    make_namespace(core, ns_b, "tenant-b")
    try:
        two_hours = terminated(T0 + timedelta(hours=2), T0)
        make_pod(core, ns_a, "slice-a", node=mig_node, limits={"nvidia.com/mig-3g.40gb": "1"},
                 status={"phase": "Succeeded", "startTime": stamp(T0), "containerStatuses": two_hours})
        make_pod(core, ns_b, "slice-b", node=mig_node, limits={"nvidia.com/mig-3g.40gb": "1"},
                 status={"phase": "Succeeded", "startTime": stamp(T0 + timedelta(hours=1)), "containerStatuses": two_hours})
        for name, namespace in (("ts-1", ns_a), ("ts-2", ns_a), ("ts-3", ns_b)):
            make_pod(core, namespace, name, node=ts_node, limits={"nvidia.com/gpu": "1"},
                     status={"phase": "Succeeded", "startTime": stamp(T0),
                             "containerStatuses": terminated(T0 + timedelta(hours=1), T0)})
        result = only(collector_for(core).collect())
    finally:  # no namespace controller here: delete the pods themselves, so other tests never see them
        for name in (ns_a, ns_b):
            for pod in core.list_namespaced_pod(name).items:
                core.delete_namespaced_pod(pod.metadata.name, name, grace_period_seconds=0)
            core.delete_namespace(name)
        for name in (mig_node, ts_node):
            core.delete_node(name)
    assert result.ok
    capacity = {(s.entity, s.labels["resource"]): s.value for s in result.samples if s.metric == "kube_node_status_capacity"}
    assert capacity[(mig_node, "nvidia_com_mig_3g_40gb")] == 2  # kube-state-metrics' label spelling
    assert by_pod_intervals(result)[("slice-a", "nvidia.com/mig-3g.40gb")] == Decimal(1)

    persist_kubernetes(world.session, [result])
    make_node_row(world, gpus=1, name=mig_node)  # one H100 in MIG mode
    make_node_row(world, gpus=1, name=ts_node)   # one H100 shared by time-slicing
    build_usage(world.session, T0, T0 + timedelta(hours=3), now=T0 + timedelta(hours=3))
    world.session.commit()
    parts: dict[tuple[str, str], int] = {}
    for row in world.session.exec(select(UsageRecord).where(UsageRecord.source == "k8s")).all():
        parts[(row.resource_id, row.sku)] = parts.get((row.resource_id, row.sku), 0) + row.quantity_parts
    sku = "gpu-hour:NVIDIA H100 80GB HBM3"
    # slice-a 2 h × 3/7, slice-b 1 h (T0+1h..T0+2h) × 3/7, rounded to a part (1/3.6e9 GPU-hour) per hour;
    # on the time-sliced node ts-1 + ts-2 (tenant a) 2/3 and ts-3 (tenant b) 1/3 of the one GPU's hour
    assert abs(parts[(f"k8s:{ns_a}", f"{sku}:3g.40gb")] - 2 * 3 * MICROS_PER_HOUR / 7) <= 2
    assert abs(parts[(f"k8s:{ns_b}", f"{sku}:3g.40gb")] - 3 * MICROS_PER_HOUR / 7) <= 1
    assert parts[(f"k8s:{ns_a}", sku)] == MICROS_PER_HOUR * 2 // 3 and parts[(f"k8s:{ns_b}", sku)] == MICROS_PER_HOUR // 3


def by_pod_intervals(result: TargetResult) -> dict[tuple[str, str], Decimal]:
    """Requested quantity per (pod, resource) in a result's allocation samples."""
    return {(s.labels["pod"], s.labels["resource"]): Decimal(s.labels["quantity"])
            for s in result.samples if s.metric == "kiln_k8s_pod_allocation"}


def _sent(report: Any, namespace: str | None = None) -> tuple[set[str], bool]:
    """Pods (of `namespace`, or all) whose intervals a cycle's result carried, and whether the
    result was complete."""
    (result,) = report.results
    assert result.ok, result.error
    pods = {s.labels["pod"] for s in result.samples if s.metric == "kiln_k8s_pod_allocation"
            and namespace in (None, s.labels["namespace"])}
    return pods, any(s.metric == TRACKED_METRIC for s in result.samples)


def test_stored_results_let_later_cycles_send_and_compare_only_the_changed_pods(core: k8s.CoreV1Api, scratch: str,
                                                                                engine: Engine) -> None:
    collector = collector_for(core)
    source = single_target_source(collector, 60, persist_kubernetes)
    started = {"phase": "Running", "startTime": stamp(datetime.now(UTC) - timedelta(minutes=5))}

    def row(pod: str) -> K8sAllocation:
        with Session(engine) as session:
            return session.exec(select(K8sAllocation).where(K8sAllocation.pod == pod, K8sAllocation.namespace == scratch,
                                                            K8sAllocation.resource == "nvidia.com/gpu")).one()

    pods, complete = _sent(run_cycle(engine, source))
    assert complete and {"train", "finetune", "infer"} <= pods
    assert _sent(run_cycle(engine, source)) == (set(), False)  # nothing changed: nothing to compare

    make_pod(core, scratch, "late", node="gpu-node-1", limits={"nvidia.com/gpu": "1"}, status=started)
    assert _sent(run_cycle(engine, source)) == ({"late"}, False)
    assert row("late").ends_at is None and row("late").tenant_slug == "initech"

    make_pod(core, scratch, "later", node="gpu-node-1", limits={"nvidia.com/gpu": "1"}, status=started)
    assert {s.labels["pod"] for s in only(collector.collect()).samples if s.metric == "kiln_k8s_pod_allocation"} == {"later"}
    # ...but that result was never stored (no persisted()): the next one carries it again
    core.delete_namespaced_pod("late", scratch, grace_period_seconds=0)
    assert _sent(run_cycle(engine, source)) == ({"late", "later"}, False)
    assert row("late").ends_at is not None and row("later").ends_at is None

    core.patch_namespace(scratch, {"metadata": {"labels": {LABEL: "hooli"}}})  # every pod of it has a new tenant
    pods, complete = _sent(run_cycle(engine, source))
    assert complete and {"train", "later"} <= pods
    assert row("later").tenant_slug == "hooli"
    assert _sent(run_cycle(engine, source)) == (set(), False)


def test_a_complete_result_is_sent_again_every_full_every(core: k8s.CoreV1Api, cluster: dict[str, str],
                                                         engine: Engine) -> None:
    source = single_target_source(KubernetesCollector(core, tenant_label=LABEL, full_every=timedelta(0)), 60,
                                  persist_kubernetes)
    for _ in range(2):
        pods, complete = _sent(run_cycle(engine, source))
        assert complete and {"train", "finetune", "infer"} <= pods


def test_a_busy_watch_is_followed_by_another_in_the_same_cycle(core: k8s.CoreV1Api, scratch: str) -> None:
    collector = KubernetesCollector(core, tenant_label=LABEL, busy_events=2)
    assert only(collector.collect()).ok
    started = {"phase": "Running", "startTime": stamp(datetime.now(UTC) - timedelta(minutes=1))}
    for name in ("burst-1", "burst-2", "burst-3"):
        make_pod(core, scratch, name, node="gpu-node-1", limits={"nvidia.com/gpu": "1"}, status=started)
    watches = collector.calls[("watch", "pods")]
    assert only(collector.collect()).ok
    # the first watch brought the burst (2 events or more): another followed at once, and found it quiet
    assert collector.calls[("watch", "pods")] - watches >= 2
    assert {("burst-1", "nvidia.com/gpu"), ("burst-2", "nvidia.com/gpu"), ("burst-3", "nvidia.com/gpu")} <= set(by_pod(collector))
    quiet = collector.calls[("watch", "nodes")]
    assert only(collector.collect()).ok and collector.calls[("watch", "nodes")] == quiet + 1  # a quiet kind: one watch


def test_a_new_namespace_does_not_make_the_next_result_complete(core: k8s.CoreV1Api, cluster: dict[str, str],
                                                                 engine: Engine) -> None:
    source = single_target_source(KubernetesCollector(core, tenant_label=LABEL), 60, persist_kubernetes)
    assert _sent(run_cycle(engine, source))[1]
    make_namespace(core, f"fresh-{uuid.uuid4().hex[:8]}", "initech")  # no pods yet: nothing to re-send
    assert _sent(run_cycle(engine, source)) == (set(), False)
