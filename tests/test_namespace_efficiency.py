"""GPU efficiency per Kubernetes namespace (metering.namespace_efficiency): hand-computed figures,
MIG weighting, the namespace series the store keeps from exporter labels (upstream AMD output),
tenant scoping through the function and the API, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlmodel import select

from collectors.base import Sample, TargetResult
from collectors.models import K8sAllocation, Rollup5m
from collectors.rocm import ROCM
from collectors.store import NAMESPACE_GPU_UTIL_ROLLUP, namespace_entity, persist_results, split_namespace_entity
from fleet.models import Gpu, Node
from kiln.auth import Principal, principal_for_user
from metering.namespace_efficiency import namespace_efficiency
from tests.factories import World
from tests.fleet_helpers import make_node_row
from tests.metering_helpers import GPU_SKU, card
from tests.test_upstream_amd import KAIWO, SPX_BUSY
from tests.test_upstream_corpus import scrape

T0 = datetime(2026, 10, 5, 10, tzinfo=UTC)
NOW = T0 + timedelta(hours=3)


def principal(world: World, name: str) -> Principal:
    """The Principal of one of the world's callers."""
    return principal_for_user(world.session, world.callers[name].user)


def gpus_of(world: World, node: Node, *uuids: str) -> None:
    """Give the node's GPUs (in index order) these UUIDs."""
    rows = world.session.exec(select(Gpu).where(Gpu.node_id == node.id).order_by(Gpu.index)).all()
    for row, uuid in zip(rows, uuids, strict=True):
        row.uuid = uuid
    world.session.commit()


def request(world: World, tenant: str | None, namespace: str, node: str, resource: str, quantity: int,
            start: datetime, end: datetime | None) -> None:
    """One pod's GPU request, as the Kubernetes collector records it."""
    world.session.add(K8sAllocation(namespace=namespace, tenant_slug=world.tenant(tenant).slug if tenant else None,
                                    pod=f"{namespace}-{resource[-6:]}-{start:%H%M}", pod_uid=f"uid-{namespace}-{resource}-{start:%H%M}",
                                    node_name=node, resource=resource, quantity=Decimal(quantity), starts_at=start, ends_at=end))
    world.session.commit()


def utilisation(world: World, entity: str, namespace: str, percent: float, minutes: int, step: int = 5,
                **labels: str) -> None:
    """DCGM utilisation samples every `step` minutes from T0 of one GPU (or MIG instance) held by
    `namespace`, through the store."""
    for k in range(minutes // step):
        ts = T0 + timedelta(minutes=step * k)
        sample = Sample("dcgm", entity, "gpu_util", percent, "percent", {"namespace": namespace, "pod": "p", **labels}, ts)
        persist_results(world.session, "dcgm", [TargetResult("prometheus", ok=True, samples=[sample])], now=ts)
    world.session.commit()


def fleet(world: World) -> None:
    """Tenant a's `train` on two H100s of n1 for an hour (one measured all hour at 50 %, one half an
    hour at 100 %); tenant b's `infer` on a 3g.40gb MIG instance of n2's H100 for an hour at 40 %;
    an H100 GPU-hour at 2.80."""
    n1, n2 = make_node_row(world, gpus=2, name="n1"), make_node_row(world, gpus=1, name="n2")
    gpus_of(world, n1, "GPU-1", "GPU-2")
    gpus_of(world, n2, "GPU-3")
    request(world, "a", "train", "n1", "nvidia.com/gpu", 2, T0, T0 + timedelta(hours=1))
    request(world, "b", "infer", "n2", "nvidia.com/mig-3g.40gb", 1, T0, T0 + timedelta(hours=1))
    utilisation(world, "GPU-1", "train", 50.0, 60)
    utilisation(world, "GPU-2", "train", 100.0, 30)
    utilisation(world, "GPU-3/1", "infer", 40.0, 60, GPU_I_PROFILE="3g.40gb", GPU_I_ID="1", parent_gpu="GPU-3")
    card(world, GPU_SKU, "2.80")


def test_hand_computed_namespace_figures_with_a_mig_instance_weighted_by_its_compute(world: World) -> None:
    fleet(world)
    rows = {r.namespace: r for r in namespace_efficiency(world.session, principal(world, "admin"), T0, NOW, now=NOW)}
    train, infer = rows["train"], rows["infer"]
    # train: 2 GPUs × 1 h allocated; measured 1 h (GPU-1) + 0.5 h (GPU-2); used 0.5 + 0.5
    assert (train.tenant, train.allocated_gpu_hours, train.measured_gpu_hours, train.used_gpu_hours) == (
        "tenant-a", Decimal("2.0000"), Decimal("1.5000"), Decimal("1.0000"))
    assert (train.efficiency, train.coverage, train.idle_gpu_hours, train.idle_cost) == (
        Decimal("0.6667"), Decimal("0.7500"), Decimal("0.5000"), Decimal("1.40"))
    assert not train.waste
    # infer: a 3g.40gb is 3/7 of an H100: allocated = measured = 3/7 GPU-hour, used 40 % of it
    assert (infer.tenant, infer.allocated_gpu_hours, infer.measured_gpu_hours, infer.used_gpu_hours) == (
        "tenant-b", Decimal("0.4286"), Decimal("0.4286"), Decimal("0.1714"))
    assert (infer.efficiency, infer.coverage) == (Decimal("0.4000"), Decimal("1.0000"))
    assert infer.idle_cost == Decimal("0.72") and infer.waste  # 3/7 × 0.6 × 2.80 = 0.72; under 50 % efficient
    assert [r.namespace for r in rows.values()] == ["train", "infer"]  # most idle cost first


def test_an_hourly_series_counts_the_same_however_the_window_is_cut(world: World) -> None:
    """A window's first sample stands for the time since the namespace's previous sample on that GPU,
    also when that one is before the window."""
    node = make_node_row(world, gpus=1, name="n1")
    gpus_of(world, node, "GPU-1")
    request(world, "a", "train", "n1", "nvidia.com/gpu", 1, T0, None)
    utilisation(world, "GPU-1", "train", 50.0, 180, step=60)  # 10:00, 11:00, 12:00

    def figures(start: datetime) -> tuple[Decimal, Decimal]:
        (row,) = namespace_efficiency(world.session, principal(world, "admin"), start, NOW, now=NOW)
        return row.measured_gpu_hours, row.used_gpu_hours

    # from 10:30: 11:00 and 12:00 each stand for the hour since the sample before (not the first for 5 minutes)
    assert figures(T0 + timedelta(minutes=30)) == (Decimal("2.0000"), Decimal("1.0000"))
    assert figures(T0) == (Decimal("2.0833"), Decimal("1.0417"))  # 10:00 has none before it: one 5-minute bucket


def test_a_tenant_sees_only_its_own_namespaces_and_none_unmapped(world: World) -> None:
    assert namespace_efficiency(world.session, principal(world, "admin"), T0, NOW, now=NOW) == []  # nothing requested yet
    fleet(world)
    request(world, None, "kube-system", "n1", "nvidia.com/gpu", 1, T0, T0 + timedelta(hours=1))
    mine = namespace_efficiency(world.session, principal(world, "a_member"), T0, NOW, now=NOW)
    assert [(r.tenant, r.namespace) for r in mine] == [("tenant-a", "train")]
    assert [r.namespace for r in namespace_efficiency(world.session, principal(world, "b_member"), T0, NOW, now=NOW)] == ["infer"]
    everyone = {r.namespace: r.tenant for r in namespace_efficiency(world.session, principal(world, "admin"), T0, NOW, now=NOW)}
    assert everyone == {"train": "tenant-a", "infer": "tenant-b", "kube-system": None}
    only_b = namespace_efficiency(world.session, principal(world, "admin"), T0, NOW, tenant_id=world.b.id, now=NOW)
    assert [r.namespace for r in only_b] == ["infer"]


def test_a_namespace_that_changed_hands_gives_its_measurements_to_one_tenant_only(world: World) -> None:
    fleet(world)
    # tenant b held `train` too, briefly: the measurements stay tenant a's, whoever asks
    request(world, "b", "train", "n1", "nvidia.com/gpu", 1, T0 + timedelta(hours=2), T0 + timedelta(hours=2, minutes=10))
    b_rows = {r.namespace: r for r in namespace_efficiency(world.session, principal(world, "b_member"), T0, NOW, now=NOW)}
    assert b_rows["train"].measured_gpu_hours == Decimal("0.0000") and b_rows["train"].efficiency is None
    a_rows = {r.namespace: r for r in namespace_efficiency(world.session, principal(world, "a_member"), T0, NOW, now=NOW)}
    assert a_rows["train"].measured_gpu_hours == Decimal("1.5000")


def test_the_store_keeps_upstream_exporter_output_per_namespace(world: World) -> None:
    """AMD device-metrics-exporter output recorded by the Kaiwo operator (tests/data/upstream/): the
    GPU its pod holds (`namespace="default"`) gets a namespace series; the idle GPU and the partition
    labelled with the exporter's own pod but no namespace do not."""
    result = scrape(KAIWO, ROCM)
    persist_results(world.session, "rocm", [TargetResult("prometheus", ok=True, samples=result.samples)], now=NOW)
    world.session.commit()
    rows = world.session.exec(select(Rollup5m).where(Rollup5m.metric == NAMESPACE_GPU_UTIL_ROLLUP)).all()
    assert [(split_namespace_entity(r.entity), r.count, r.sum) for r in rows] == [(("default", SPX_BUSY, None), 1, 100.0)]
    assert split_namespace_entity(namespace_entity("ns", "GPU-1/3", "1g.10gb")) == ("ns", "GPU-1/3", "1g.10gb")


def test_the_api_serves_the_callers_namespaces(world: World, client) -> None:
    fleet(world)
    url = "/api/v1/usage/efficiency/namespaces"
    for who, expected in (("a_member", {"train"}), ("b_member", {"infer"}), ("admin", {"train", "infer"})):
        response = client.get(url, params={"period": "2026-10"}, headers=world.headers(who))
        assert response.status_code == 200, response.text
        assert {r["namespace"] for r in response.json()} == expected
    bad = client.get(url, params={"period": "October"}, headers=world.headers("admin"))
    assert bad.status_code == 422 and bad.headers["content-type"].startswith("application/problem+json")
