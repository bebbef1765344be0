"""MIG instances and time-sliced GPUs: usage in GPU-hours that adds up, priced to the cent.

Hand-computed cases through `build_usage` and bills (SQLite and PostgreSQL), and hypothesis
properties of the per-node-hour split: for every node and hour, the claims' GPU-hours + the idle
GPU-hours = the node's GPU-hours exactly (in parts), and no claim is more than one part off.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import select

from collectors import mig_profiles
from collectors.models import K8sAllocation
from metering import skus
from metering.gpu_shares import Pool, split_pool_hour
from metering.idle import capacity, used
from metering.intervals import MICROS_PER_HOUR
from metering.models import IdleCharge, UsageRecord
from tests.factories import World
from kiln.auth import Principal
from kiln.roles import Role
from tests.metering_helpers import GPU_SKU, H100, SYSTEM, at, bill_of, card, lines_of, money, node, run

D = Decimal
MIG_3G, MIG_1G = f"{GPU_SKU}:3g.40gb", f"{GPU_SKU}:1g.10gb"
HOUR = timedelta(hours=1)


def _pod(world: World, pod: str, tenant: str, node_name: str, resource: str, count: int, start: str, end: str) -> None:
    world.session.add(K8sAllocation(namespace=f"ns-{tenant}", tenant_slug=f"tenant-{tenant}", pod=pod, pod_uid=f"uid-{pod}",
                                    node_name=node_name, resource=resource, quantity=D(count), starts_at=at(start),
                                    ends_at=at(end)))
    world.session.commit()


def _rows(world: World) -> dict[tuple[int, str], int]:
    world.session.expire_all()
    out: dict[tuple[int, str], int] = {}
    for row in world.session.exec(select(UsageRecord).where(UsageRecord.source == "k8s")).all():
        out[(row.tenant_id, row.sku)] = out.get((row.tenant_id, row.sku), 0) + row.quantity_parts
    return out


def test_mig_instances_are_gpu_hours_by_compute_fraction_and_idle_slices_are_idle(world: World) -> None:
    gpu_node = node(world, gpus=1, created_at=at("2026-10-01T10:00"))
    _pod(world, "big", "a", gpu_node.name, "nvidia.com/mig-3g.40gb", 1, "2026-10-01T10:00", "2026-10-01T11:00")
    _pod(world, "small", "b", gpu_node.name, "nvidia.com/mig-1g.10gb", 2, "2026-10-01T10:00", "2026-10-01T10:30")
    card(world, GPU_SKU, "2.80")
    run(world, now="2026-10-01T11:00")
    parts = _rows(world)
    a, b = world.a.id, world.b.id
    # 3/7 of the hour's GPU-microseconds, and 2 × 1/7 × half an hour = 1/7, each within a part
    assert abs(parts[(a, MIG_3G)] - Fraction(3 * MICROS_PER_HOUR, 7)) < 1
    assert abs(parts[(b, MIG_1G)] - Fraction(MICROS_PER_HOUR, 7)) < 1
    window = (at("2026-10-01T10:00"), at("2026-10-01T11:00"))
    taken = used(world.session, *window)[GPU_SKU]
    assert taken == parts[(a, MIG_3G)] + parts[(b, MIG_1G)]  # MIG SKUs take from their GPU's capacity
    assert capacity(world.session, *window)[GPU_SKU] == MICROS_PER_HOUR
    # priced by the H100 card (no card of their own): 0.428571 × 2.80 = 1.20, 0.142857 × 2.80 = 0.40
    assert money(lines_of(world, bill_of(world, "a"))) == [(MIG_3G, D("0.428571"), D("2.8"), D("1.20"))]
    assert money(lines_of(world, bill_of(world, "b"))) == [(MIG_1G, D("0.142857"), D("2.8"), D("0.40"))]
    idle = world.session.exec(select(IdleCharge).where(IdleCharge.sku == GPU_SKU)).one()
    assert (D(idle.quantity), D(idle.cost)) == (D("0.428571"), D("1.20"))  # the 3 slices nobody held
    assert D("1.20") + D("0.40") + D(idle.cost) == D("2.80")  # the GPU's hour, to the cent


def test_a_mig_profile_card_overrides_the_gpu_card(world: World) -> None:
    gpu_node = node(world, gpus=1, created_at=at("2026-10-01T10:00"))
    _pod(world, "small", "b", gpu_node.name, "nvidia.com/mig-1g.10gb", 1, "2026-10-01T10:00", "2026-10-01T11:00")
    card(world, GPU_SKU, "2.80")
    card(world, MIG_1G, "3.50")  # a premium for the smallest slice: per GPU-hour of it
    run(world, now="2026-10-01T11:00")
    [line] = lines_of(world, bill_of(world, "b"))
    assert (line.sku, D(line.quantity), D(line.list_unit_price), D(line.list_cost)) == (MIG_1G, D("0.142857"), D("3.5"), D("0.50"))


def test_pods_time_slicing_one_gpu_share_it_equally_at_every_instant(world: World) -> None:
    gpu_node = node(world, gpus=1, created_at=at("2026-10-01T10:00"))
    _pod(world, "p1", "a", gpu_node.name, "nvidia.com/gpu", 1, "2026-10-01T10:00", "2026-10-01T11:00")
    _pod(world, "p2", "a", gpu_node.name, "nvidia.com/gpu", 1, "2026-10-01T10:00", "2026-10-01T10:30")
    _pod(world, "p3", "b", gpu_node.name, "nvidia.com/gpu", 1, "2026-10-01T10:00", "2026-10-01T10:30")
    card(world, GPU_SKU, "3.00")
    run(world, now="2026-10-01T11:00")
    parts = _rows(world)
    # 10:00–10:30 three pods on one GPU (1/3 each of half an hour), 10:30–11:00 p1 alone:
    # a = 2 × 1/6 + 1/2 = 5/6, b = 1/6; together exactly the GPU's hour, nothing idle
    assert parts[(world.a.id, GPU_SKU)] == MICROS_PER_HOUR * 5 // 6
    assert parts[(world.b.id, GPU_SKU)] == MICROS_PER_HOUR // 6
    assert world.session.exec(select(IdleCharge).where(IdleCharge.sku == GPU_SKU)).first() is None
    costs = [D(line.list_cost) for t in "ab" for line in lines_of(world, bill_of(world, t))]
    assert costs == [D("2.50"), D("0.50")] and sum(costs) == D("3.00")


def test_gpus_not_shared_keep_whole_gpu_hours(world: World) -> None:
    gpu_node = node(world, gpus=2, created_at=at("2026-10-01T10:00"))
    _pod(world, "p1", "a", gpu_node.name, "nvidia.com/gpu", 1, "2026-10-01T10:00", "2026-10-01T11:00")
    _pod(world, "p2", "b", gpu_node.name, "nvidia.com/gpu", 1, "2026-10-01T10:15", "2026-10-01T11:00")
    run(world, now="2026-10-01T11:00")
    assert _rows(world) == {(world.a.id, GPU_SKU): MICROS_PER_HOUR, (world.b.id, GPU_SKU): MICROS_PER_HOUR * 3 // 4}


def test_mig_profiles_follow_nvidias_table() -> None:
    assert mig_profiles.compute_fraction("NVIDIA A100-SXM4-80GB", "3g.40gb") == Fraction(3, 7)
    assert mig_profiles.compute_fraction("NVIDIA A100-SXM4-40GB", "1g.10gb") == Fraction(1, 7)  # 1g.10gb: more memory, 1 slice
    assert mig_profiles.compute_fraction("NVIDIA A30", "2g.12gb") == Fraction(2, 4)
    assert mig_profiles.compute_fraction(H100, "4g.40gb") == Fraction(4, 7)
    assert mig_profiles.known_profile("NVIDIA H200", "3g.71gb") and not mig_profiles.known_profile("NVIDIA H200", "3g.40gb")
    assert mig_profiles.known_profile("NVIDIA H100 NVL", "7g.94gb")
    assert mig_profiles.is_mig_resource("nvidia.com/mig-1g.10gb+me") and not mig_profiles.is_mig_resource("nvidia.com/gpu")
    assert skus.whole_gpu_sku(MIG_3G) == GPU_SKU and skus.whole_gpu_sku(GPU_SKU) == GPU_SKU
    with pytest.raises(ValueError, match="not a MIG profile"):
        mig_profiles.profile_slices("big")


DEVICE_PLUGIN_README = Path(__file__).parent / "data/upstream/k8s-device-plugin/readme-time-sliceable-resources.txt"


def test_the_device_plugins_own_resource_names_are_read_as_nvidia_documents_them() -> None:
    """NVIDIA/k8s-device-plugin's README (tests/data/upstream/k8s-device-plugin/): the resources a
    T4, an A100 40GB and an A100 80GB advertise, read by Kiln's MIG table."""
    blocks = re.findall(r"on an? (.+?) card[^`]*```\n(.*?)```", DEVICE_PLUGIN_README.read_text(), re.S)
    names = {board: block.split() for board, block in blocks}
    assert list(names) == ["T4", "A100 40GB", "A100 80GB"]
    assert names["T4"] == ["nvidia.com/gpu"] and not mig_profiles.is_mig_resource("nvidia.com/gpu")
    for board, model in (("A100 40GB", "NVIDIA A100-SXM4-40GB"), ("A100 80GB", "NVIDIA A100-SXM4-80GB")):
        mig = [name for name in names[board] if name != "nvidia.com/gpu"]
        assert all(mig_profiles.is_mig_resource(name) for name in mig)
        profiles = [mig_profiles.profile_of(name) for name in mig]
        assert all(mig_profiles.known_profile(model, profile) for profile in profiles), (board, profiles)
        assert [mig_profiles.compute_fraction(model, p) for p in profiles] == [Fraction(n, 7) for n in (1, 2, 3, 7)]
        assert skus.gpu_hour(model, profiles[-1]) == f"gpu-hour:{model}:{profiles[-1]}"


T0 = datetime(2026, 10, 1, 10, tzinfo=UTC)
_claims = st.lists(st.tuples(st.integers(0, 4), st.integers(0, 59), st.integers(1, 60), st.sampled_from([1, 2, 3, 4, 7]),
                             st.integers(1, 3)), min_size=1, max_size=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(claims=_claims, gpus=st.integers(1, 4))
def test_every_node_hour_adds_up_exactly(claims, gpus) -> None:
    pool = Pool(gpus, 7)
    segments = []
    for key, start, length, slices, count in claims:
        a = T0 + timedelta(minutes=start)
        segments.append((key, a, min(a + timedelta(minutes=length), T0 + HOUR), slices * count))
    parts = split_pool_hour(pool, segments)
    capacity_parts = gpus * MICROS_PER_HOUR
    idle = capacity_parts - sum(parts.values())
    assert idle >= 0 and sum(parts.values()) + idle == capacity_parts
    # each claim within one part of its exact share, computed independently minute by minute
    exact: dict[int, Fraction] = {}
    for minute in range(60):
        t = T0 + timedelta(minutes=minute)
        active = [(k, s) for k, a, b, s in segments if a <= t < b]
        demand = sum(s for _, s in active)
        for key, slices in active:
            share = Fraction(slices, 7) if demand <= gpus * 7 else Fraction(slices * gpus, demand)
            exact[key] = exact.get(key, Fraction(0)) + share * 60_000_000
    for key, value in exact.items():
        assert abs(parts.get(key, 0) - value) < 1


def test_the_usage_page_shows_gpu_hours_by_mig_profile_to_their_tenant_only(world: World) -> None:
    from dashboards.pages.usage import gpu_hours_by_sku

    gpu_node = node(world, gpus=1, created_at=at("2026-10-01T10:00"))
    _pod(world, "big", "a", gpu_node.name, "nvidia.com/mig-3g.40gb", 1, "2026-10-01T10:00", "2026-10-01T11:00")
    _pod(world, "small", "b", gpu_node.name, "nvidia.com/mig-1g.10gb", 2, "2026-10-01T10:00", "2026-10-01T10:30")
    run(world, now="2026-10-01T11:00")
    window = (at("2026-10-01T00:00"), at("2026-10-02T00:00"))
    member = Principal(username="a-member", role=Role.TENANT_MEMBER, tenant_ids=frozenset({world.a.id}))
    mine = gpu_hours_by_sku(world.session, member, *window, None)
    assert mine == {f"GPU-hour · {H100} · 3g.40gb": D("0.428571")}  # never B's 1g.10gb
    everyone = gpu_hours_by_sku(world.session, SYSTEM, *window, None)
    assert everyone[f"GPU-hour · {H100} · 1g.10gb"] == D("0.142857") and len(everyone) == 2
