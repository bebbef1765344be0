"""Each GPU's own energy to the namespaces the exporter saw on it (metering.gpu_placement), hand-
computed, with the fallback to GPU-time shares, on SQLite and PostgreSQL; hypothesis invariant.

Placement comes in through the store as dcgm-exporter labels it: a GPU's series carries the
`namespace`, `pod` and `container` using it (label set of tests/data/upstream/dcgm-exporter/
readme-kubernetes-quickstart.txt, pod labels filled as in NVIDIA/dcgm-exporter#85), a MIG
instance's also `GPU_I_ID` and `GPU_I_PROFILE` (nvidia-docs-a100-mig-1g5gb.txt).
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st
from sqlmodel import select

from collectors.base import Sample, TargetResult
from collectors.models import GpuEnergyHour, K8sAllocation, NodeEnergyHour
from collectors.store import persist_results
from fleet.models import Gpu, Node
from metering.carbon import emissions
from metering.energy_shares import CPU, GPU, MEMORY, GpuHeld, NodeCapacity, NodeHourClaims, split_node_energy
from metering.intervals import MICROS_PER_HOUR
from metering.models import UsageRecord
from metering.usage import build_usage
from tests.factories import World
from tests.metering_helpers import SYSTEM, at, lease, node

D = Decimal
GIB = 2**30
HOUR = at("2026-10-01T10:00")


def _shared_node(world: World) -> Node:
    """Two H100s (GPU-1, GPU-2), 64 cores, 512 GiB; the hour metered at 2.0 kWh, GPU-1's counter
    0.7 kWh (busy), GPU-2's 0.1 kWh."""
    shared = node(world, gpus=2, facts={"cpu_cores": 64, "ram_mib": 512 * 1024})
    for row, uuid in zip(world.session.exec(select(Gpu).where(Gpu.node_id == shared.id).order_by(Gpu.index)).all(),
                         ("GPU-1", "GPU-2"), strict=True):
        row.uuid = uuid
    world.session.add(NodeEnergyHour(node_id=shared.id, hour=HOUR, kwh=D("2.0"), covered_seconds=3600))
    for uuid, kwh in (("GPU-1", "0.7"), ("GPU-2", "0.1")):
        world.session.add(GpuEnergyHour(entity=uuid, node_id=shared.id, hour=HOUR, kwh=D(kwh), covered_seconds=3600))
    world.session.commit()
    return shared


def _pod(world: World, tenant: str, node_name: str, gpu_resource: str, cores: int, gib: int) -> None:
    """Tenant `a`/`b`'s pod in namespace ns-<tenant> for 10:00–11:00: one GPU (or instance), CPU, memory."""
    for resource, quantity in ((gpu_resource, 1), ("cpu", cores), ("memory", gib * GIB)):
        world.session.add(K8sAllocation(namespace=f"ns-{tenant}", tenant_slug=f"tenant-{tenant}", pod=f"pod-{tenant}",
                                        pod_uid=f"uid-{tenant}-{resource}", node_name=node_name, resource=resource,
                                        quantity=D(quantity), starts_at=HOUR, ends_at=HOUR + timedelta(hours=1)))
    world.session.commit()


def _seen(world: World, entity: str, namespace: str, minutes: int, **labels: str) -> None:
    """dcgm-exporter's utilisation series of one GPU (or MIG instance) in use by `namespace`, every
    5 minutes from 10:00, through the store."""
    for k in range(minutes // 5):
        ts = HOUR + timedelta(minutes=5 * k)
        sample = Sample("dcgm", entity, "gpu_util", 90.0, "percent",
                        {"gpu": "0", "UUID": entity.partition("/")[0], "namespace": namespace, "pod": f"pod-{namespace}",
                         "container": "main", **labels}, ts)
        persist_results(world.session, "dcgm", [TargetResult("prometheus", ok=True, samples=[sample])], now=ts)
    world.session.commit()


def _kwh(world: World) -> dict[int, Decimal]:
    build_usage(world.session, at("2026-10-01T00:00"), at("2026-10-02T00:00"), now=at("2026-10-02T00:00"))
    world.session.commit()
    rows = world.session.exec(select(UsageRecord).where(UsageRecord.source == "energy")).all()
    return {row.tenant_id: D(row.quantity) for row in rows}


def _idle(world: World) -> Decimal:
    return emissions(world.session, SYSTEM, "2026-10", None).idle_kwh


def test_each_gpus_energy_goes_to_the_namespace_seen_on_it(world: World) -> None:
    shared = _shared_node(world)
    _pod(world, "a", shared.name, "nvidia.com/gpu", 16, 64)
    _pod(world, "b", shared.name, "nvidia.com/gpu", 48, 64)
    _seen(world, "GPU-1", "ns-a", 60)
    _seen(world, "GPU-2", "ns-b", 60)
    # a: GPU-1's 0.7; b: GPU-2's 0.1. The rest, 2.0 − 0.8 = 1.2, half by cores, half by memory:
    # a 1.2 × (16/64 + 64/512)/2 = 0.225, b 1.2 × (48/64 + 64/512)/2 = 0.525
    assert _kwh(world) == {world.a.id: D("0.925"), world.b.id: D("0.625")}
    assert _idle(world) == D("0.45")  # 2.0 − 0.925 − 0.625


def test_mig_instances_take_their_slices_of_their_gpus_energy(world: World) -> None:
    shared = _shared_node(world)
    _pod(world, "a", shared.name, "nvidia.com/mig-3g.40gb", 16, 64)
    _pod(world, "b", shared.name, "nvidia.com/mig-1g.10gb", 48, 64)
    _seen(world, "GPU-1/1", "ns-a", 60, GPU_I_ID="1", GPU_I_PROFILE="3g.40gb")
    _seen(world, "GPU-1/2", "ns-b", 30, GPU_I_ID="2", GPU_I_PROFILE="1g.10gb")  # seen for half the hour
    # GPU-1's 0.7 kWh over 7 slices × 12 buckets: a 3 × 12 = 36 → 0.3, b 1 × 6 = 6 → 0.05;
    # GPU-2 (0.1 kWh) held by nobody: idle. The rest as above: a 0.225, b 0.525
    assert _kwh(world) == {world.a.id: D("0.525"), world.b.id: D("0.575")}
    assert _idle(world) == D("0.9")  # 0.35 of GPU-1, GPU-2's 0.1, 0.45 of the rest


def test_a_namespace_the_exporter_did_not_see_keeps_the_gpu_time_rule(world: World) -> None:
    shared = _shared_node(world)
    _pod(world, "a", shared.name, "nvidia.com/gpu", 16, 64)
    _pod(world, "b", shared.name, "nvidia.com/gpu", 48, 64)
    _seen(world, "GPU-1", "ns-a", 60)  # b's GPU not seen: which GPU b used is unknown
    # GPUs' 0.8 kWh by GPU-time: 1/2 each → a 0.4 + 0.225, b 0.4 + 0.525
    assert _kwh(world) == {world.a.id: D("0.625"), world.b.id: D("0.925")}


def test_an_hour_with_a_lease_keeps_the_lease_rule(world: World) -> None:
    shared = _shared_node(world)
    lease(world, shared, "b", "2026-10-01T10:00", "2026-10-01T10:30")
    _pod(world, "a", shared.name, "nvidia.com/gpu", 16, 64)
    _seen(world, "GPU-1", "ns-a", 60)
    kwh = _kwh(world)
    assert kwh[world.b.id] == D("1.0")  # half the hour's 2.0 kWh to the lessee, as before
    # a's pod counts outside the lease only: GPU-time of the free half hour, not GPU-1's whole 0.7
    assert kwh[world.a.id] == D("0.2") + D("0.225") / 2  # (0.8 / 2) × 1/2 GPUs + the rest's free half


_holders = st.dictionaries(st.sampled_from(["a", "b", "c"]), st.integers(1, 84), max_size=3)


@settings(max_examples=300, deadline=None)
@given(total=st.integers(0, 10**12), gpu_parts=st.lists(st.integers(0, 10**11), min_size=1, max_size=4),
       holders=st.lists(_holders, min_size=4, max_size=4), unbilled=st.lists(st.integers(0, 84), min_size=4, max_size=4))
def test_tenants_and_idle_add_up_with_placed_gpus(total, gpu_parts, holders, unbilled) -> None:
    placed = [GpuHeld(parts, holders[i], 84, unbilled[i]) for i, parts in enumerate(gpu_parts)]
    claims = NodeHourClaims({}, {GPU: {"a": MICROS_PER_HOUR}, CPU: {"a": 1, "b": 2}, MEMORY: {"c": 5}})
    parts = split_node_energy(total, sum(gpu_parts), claims, NodeCapacity(4, 16, 64), placed)
    assert all(p >= 0 for p in parts.values()) and sum(parts.values()) <= total  # idle = the rest, never negative
    gpu_energy = min(sum(gpu_parts), total)
    for key in ("a", "b", "c"):  # a key's GPU part: its weight of each GPU's (capped) energy, to a part
        on_gpus = sum((Fraction(gpu_energy * g.parts * g.weights.get(key, 0),
                                (sum(gpu_parts) or 1) * max(84, sum(g.weights.values()) + g.unbilled)) for g in placed),
                      Fraction(0))
        assert parts.get(key, 0) >= on_gpus - 1
