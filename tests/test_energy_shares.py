"""A shared node's metered energy split by GPU, CPU and memory, hand-computed, exact per node-hour.

On SQLite and PostgreSQL through `build_usage` and the emissions report (tenants' kWh + idle kWh
= the node's metered kWh), and hypothesis properties of `split_node_energy`.
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlmodel import select

from collectors.models import GpuEnergyHour, K8sAllocation, NodeEnergyHour
from metering.models import CarbonIntensity
from metering.carbon import emissions
from metering.energy_shares import CPU, GPU, MEMORY, NodeCapacity, NodeHourClaims, split_node_energy
from metering.intervals import MICROS_PER_HOUR
from metering.models import UsageRecord
from metering.usage import build_usage
from tests.factories import World
from tests.metering_helpers import SYSTEM, at, lease, node

D = Decimal
GIB = 2**30


def _pod(world: World, pod: str, tenant: str, node_name: str, resource: str, quantity) -> None:
    world.session.add(K8sAllocation(namespace=f"ns-{tenant}", tenant_slug=f"tenant-{tenant}", pod=pod, pod_uid=f"uid-{pod}-{resource}",
                                    node_name=node_name, resource=resource, quantity=D(quantity),
                                    starts_at=at("2026-10-01T10:00"), ends_at=at("2026-10-01T11:00")))


def _kwh(world: World) -> dict[int, Decimal]:
    world.session.expire_all()
    rows = world.session.exec(select(UsageRecord).where(UsageRecord.source == "energy")).all()
    return {row.tenant_id: D(row.quantity) for row in rows}


def test_gpu_energy_goes_by_gpu_share_and_the_rest_by_cpu_and_memory(world: World) -> None:
    shared = node(world, gpus=4, facts={"cpu_cores": 64, "ram_mib": 512 * 1024})
    for pod, tenant, gpus, cores, gib in (("train", "a", 2, 16, 64), ("etl", "b", 1, 48, 64)):
        for resource, quantity in (("nvidia.com/gpu", gpus), ("cpu", cores), ("memory", gib * GIB)):
            _pod(world, pod, tenant, shared.name, resource, quantity)
    hour = at("2026-10-01T10:00")
    world.session.add(NodeEnergyHour(node_id=shared.id, hour=hour, kwh=D("2.0"), covered_seconds=3600))
    for index, kwh in enumerate(("0.4", "0.3", "0.3", "0.2")):  # the 4 GPUs' own counters: 1.2 kWh
        world.session.add(GpuEnergyHour(entity=f"GPU-{index}", node_id=shared.id, hour=hour, kwh=D(kwh), covered_seconds=3600))
    world.session.commit()
    build_usage(world.session, at("2026-10-01T00:00"), at("2026-10-02T00:00"), now=at("2026-10-02T00:00"))
    world.session.commit()
    # GPUs 1.2 kWh: a 2/4 → 0.6, b 1/4 → 0.3 (0.3 idle). The rest, 0.8 kWh, half by cores, half by
    # memory: a 0.8 × (16/64 + 64/512)/2 = 0.15, b 0.8 × (48/64 + 64/512)/2 = 0.35 (0.3 idle)
    assert _kwh(world) == {world.a.id: D("0.75"), world.b.id: D("0.65")}
    report = emissions(world.session, SYSTEM, "2026-10", None)
    assert sum((row.kwh for row in report.tenants), D(0)) + report.idle_kwh == D("2.0")
    assert report.idle_kwh == D("0.6")


def test_a_lease_takes_its_part_of_the_hour_first(world: World) -> None:
    shared = node(world, gpus=2, facts={"cpu_cores": 32, "ram_mib": 256 * 1024})
    lease(world, shared, "b", "2026-10-01T10:00", "2026-10-01T10:30")
    _pod(world, "late", "a", shared.name, "nvidia.com/gpu", 2)  # its first half hour is under b's lease
    world.session.add(NodeEnergyHour(node_id=shared.id, hour=at("2026-10-01T10:00"), kwh=D("1.0"), covered_seconds=3600))
    world.session.add(GpuEnergyHour(entity="GPU-x", node_id=shared.id, hour=at("2026-10-01T10:00"), kwh=D("0.6"), covered_seconds=3600))
    world.session.commit()
    build_usage(world.session, at("2026-10-01T00:00"), at("2026-10-02T00:00"), now=at("2026-10-02T00:00"))
    world.session.commit()
    # b: half the hour's 1.0 kWh; a: the GPUs' energy of the free half (0.3) — all of both GPUs; no
    # CPU or memory requests, so the remaining 0.2 is idle
    assert _kwh(world) == {world.b.id: D("0.5"), world.a.id: D("0.3")}


_weights = st.dictionaries(st.integers(0, 5), st.integers(0, 8 * MICROS_PER_HOUR), max_size=6)


@settings(max_examples=300, deadline=None)
@given(total=st.integers(0, 10**12), gpu=st.one_of(st.none(), st.integers(0, 10**12)),
       leased=st.dictionaries(st.sampled_from(["x", "y"]), st.integers(0, MICROS_PER_HOUR // 2), max_size=2),
       gpus=_weights, cpus=_weights, memory=_weights, capacity=st.integers(1, 8))
def test_tenants_and_idle_add_up_to_the_node_hour(total, gpu, leased, gpus, cpus, memory, capacity) -> None:
    claims = NodeHourClaims(dict(leased), {GPU: gpus, CPU: cpus, MEMORY: memory})
    parts = split_node_energy(total, gpu, claims, NodeCapacity(capacity, 4 * capacity, 16 * capacity))
    assert all(p >= 0 for p in parts.values()) and sum(parts.values()) <= total  # idle = the rest, never negative
    for key, micros in leased.items():  # a lessee gets exactly its time share, to a part
        assert abs(parts[key] - Fraction(total * micros, MICROS_PER_HOUR)) < 1


def test_emissions_per_namespace_and_node(world: World, client: TestClient) -> None:
    shared = node(world, gpus=2, facts={"cpu_cores": 32, "ram_mib": 256 * 1024}, zone="DE")
    for pod, tenant in (("train", "a"), ("infer", "b")):
        _pod(world, pod, tenant, shared.name, "nvidia.com/gpu", 1)
    world.session.add(NodeEnergyHour(node_id=shared.id, hour=at("2026-10-01T10:00"), kwh=D("1.0"), covered_seconds=3600))
    world.session.add(CarbonIntensity(zone="DE", hour=at("2026-10-01T10:00"), g_co2e_per_kwh=D("400"), source="import"))
    world.session.commit()
    build_usage(world.session, at("2026-10-01T00:00"), at("2026-10-02T00:00"), now=at("2026-10-02T00:00"))
    world.session.commit()
    by_namespace = emissions(world.session, SYSTEM, "2026-10", None, by="namespace")
    assert [(r.tenant, r.namespace, r.kwh, r.kg_co2e) for r in by_namespace.tenants] == [
        ("tenant-a", "ns-a", D("0.5"), D("0.2")), ("tenant-b", "ns-b", D("0.5"), D("0.2"))]  # 0.5 kWh × 400 g
    by_node = emissions(world.session, SYSTEM, "2026-10", None, by="node")
    assert {(r.tenant, r.node) for r in by_node.tenants} == {("tenant-a", shared.name), ("tenant-b", shared.name)}
    seen = client.get("/api/v1/usage/emissions", params={"period": "2026-10", "by": "namespace"},
                      headers=world.headers("b_member")).json()
    assert [(r["tenant"], r["namespace"]) for r in seen["tenants"]] == [("tenant-b", "ns-b")]  # never A's namespace
    assert seen["idle_kwh"] is None
