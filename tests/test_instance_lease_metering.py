"""GPU instance leases in usage, bills, idle capacity and energy: claims on the node's GPU pool
like MIG pods, adding up with them and with idle to the GPU, to the part and to the cent; a
tenant never sees another's instance usage. On SQLite and PostgreSQL."""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta
from decimal import Decimal
from fractions import Fraction

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete
from sqlmodel import select

from collectors import mig_profiles
from collectors.models import K8sAllocation, NodeEnergyHour
from fleet.instance_leases import create_instance_lease
from fleet.tenancy_models import GpuInstanceLease
from fleet.tenancy_schemas import GpuInstanceLeaseCreate
from kiln.auth import Principal
from kiln.errors import Conflict
from kiln.roles import Role
from metering.carbon import emissions
from metering.idle import capacity, used
from metering.intervals import MICROS_PER_HOUR
from metering.models import Bill, BillLine, IdleCharge, UsageRecord
from metering.usage import build_usage, list_usage
from tests.factories import World
from tests.fleet_helpers import make_vdc
from tests.metering_helpers import GPU_SKU, SYSTEM, at, bill_of, card, lines_of, money, node, run

D = Decimal
HOUR = timedelta(hours=1)


def _instance(world: World, node_name: str, tenant: str, profile: str, start: str, end: str, gpu: int = 0) -> GpuInstanceLease:
    data = GpuInstanceLeaseCreate(node=node_name, tenant=f"tenant-{tenant}", gpu_index=gpu, profile=profile,
                                  starts_at=at(start), ends_at=at(end))
    row = create_instance_lease(world.session, SYSTEM, data)
    world.session.commit()
    return row


def _mig_node(world: World, gpus: int = 1, **fields):
    row = node(world, gpus=gpus, **fields)
    make_vdc(world, f"vdc-{row.name}", [row.name], {"a": {}, "b": {}})
    return row


def test_hand_computed_instance_leases_bill_and_idle_to_the_cent(world: World) -> None:
    gpu_node = _mig_node(world, created_at=at("2026-10-01T10:00"))
    _instance(world, gpu_node.name, "a", "3g.40gb", "2026-10-01T10:00", "2026-10-01T12:00")
    _instance(world, gpu_node.name, "b", "1g.10gb", "2026-10-01T10:00", "2026-10-01T11:00")
    card(world, GPU_SKU, "2.80")
    run(world, now="2026-10-01T12:00")
    rows = world.session.exec(select(UsageRecord).where(UsageRecord.source == "lease")).all()
    assert {(r.tenant_id, r.resource_id, r.sku) for r in rows} == {
        (world.a.id, gpu_node.name, f"{GPU_SKU}:3g.40gb"), (world.b.id, gpu_node.name, f"{GPU_SKU}:1g.10gb")}
    assert all(r.vdc_id is not None for r in rows), "usage keeps the lease's VDC"
    # A: 3/7 x 2 h = 6/7 GPU-h x 2.80 = 2.40; B: 1/7 x 1 h = 1/7 GPU-h x 2.80 = 0.40 (each rounded once, half-even)
    assert money(lines_of(world, bill_of(world, "a"))) == [(f"{GPU_SKU}:3g.40gb", D("0.857143"), D("2.8"), D("2.40"))]
    assert money(lines_of(world, bill_of(world, "b"))) == [(f"{GPU_SKU}:1g.10gb", D("0.142857"), D("2.8"), D("0.40"))]
    window = (at("2026-10-01T10:00"), at("2026-10-01T12:00"))
    assert capacity(world.session, *window)[GPU_SKU] == 2 * MICROS_PER_HOUR
    assert abs(used(world.session, *window)[GPU_SKU] - MICROS_PER_HOUR) <= 1  # 6/7 + 1/7, each within a part
    idle = world.session.exec(select(IdleCharge).where(IdleCharge.sku == GPU_SKU)).one()
    assert (D(idle.quantity), D(idle.cost)) == (D("1.000000"), D("2.80"))  # 2 - 6/7 - 1/7 GPU-hours nobody held
    assert D("2.40") + D("0.40") + D(idle.cost) == D("5.60")  # the GPU's two hours, to the cent


def test_instance_leases_share_the_pool_with_mig_pods(world: World) -> None:
    gpu_node = _mig_node(world, created_at=at("2026-10-01T10:00"))
    _instance(world, gpu_node.name, "a", "4g.40gb", "2026-10-01T10:00", "2026-10-01T11:00")
    world.session.add(K8sAllocation(namespace="ns-b", tenant_slug="tenant-b", pod="p", pod_uid="uid-p", node_name=gpu_node.name,
                                    resource="nvidia.com/mig-3g.40gb", quantity=D(1), starts_at=at("2026-10-01T10:00"),
                                    ends_at=at("2026-10-01T11:00")))
    world.session.commit()
    card(world, GPU_SKU, "3.50")
    run(world, now="2026-10-01T11:00")
    assert money(lines_of(world, bill_of(world, "a"))) == [(f"{GPU_SKU}:4g.40gb", D("0.571429"), D("3.5"), D("2.00"))]
    assert money(lines_of(world, bill_of(world, "b"))) == [(f"{GPU_SKU}:3g.40gb", D("0.428571"), D("3.5"), D("1.50"))]
    assert world.session.exec(select(IdleCharge).where(IdleCharge.sku == GPU_SKU)).first() is None  # 4 + 3 = all 7 slices


def test_a_profile_card_prices_an_instance_lease_as_it_does_a_mig_pod(world: World) -> None:
    gpu_node = _mig_node(world, created_at=at("2026-10-01T10:00"))
    _instance(world, gpu_node.name, "b", "1g.10gb", "2026-10-01T10:00", "2026-10-01T11:00")
    card(world, GPU_SKU, "2.80")
    card(world, f"{GPU_SKU}:1g.10gb", "3.50")
    run(world, now="2026-10-01T11:00")
    assert money(lines_of(world, bill_of(world, "b"))) == [(f"{GPU_SKU}:1g.10gb", D("0.142857"), D("3.5"), D("0.50"))]


def test_instance_leases_take_their_gpus_energy_by_compute_fraction(world: World) -> None:
    gpu_node = _mig_node(world, created_at=at("2026-10-01T10:00"))
    _instance(world, gpu_node.name, "a", "3g.40gb", "2026-10-01T10:00", "2026-10-01T12:00")
    _instance(world, gpu_node.name, "b", "1g.10gb", "2026-10-01T10:00", "2026-10-01T11:00")
    for hour, kwh in (("2026-10-01T10:00", "1.400000"), ("2026-10-01T11:00", "0.700000")):
        world.session.add(NodeEnergyHour(node_id=gpu_node.id, hour=at(hour), kwh=D(kwh), covered_seconds=3600))
    world.session.commit()
    build_usage(world.session, at("2026-10-01T00:00"), at("2026-10-02T00:00"), now=at("2026-10-01T12:00"))
    kwh: dict[tuple[int, str], Decimal] = defaultdict(Decimal)
    for row in world.session.exec(select(UsageRecord).where(UsageRecord.sku == "kwh")).all():
        assert row.resource_id == gpu_node.name
        kwh[(row.tenant_id, row.hour.isoformat()[:13])] += D(row.quantity)
    # 10:00 1.4 kWh: A 3/7 = 0.6, B 1/7 = 0.2, idle 0.6; 11:00 0.7 kWh: A 3/7 = 0.3, idle 0.4
    assert dict(kwh) == {(world.a.id, "2026-10-01T10"): D("0.6"), (world.b.id, "2026-10-01T10"): D("0.2"),
                         (world.a.id, "2026-10-01T11"): D("0.3")}
    assert sum(kwh.values()) + D("0.6") + D("0.4") == D("2.1")  # tenants' kWh + idle kWh = the node's


def test_a_tenant_never_sees_another_tenants_instance_usage(world: World) -> None:
    gpu_node = _mig_node(world, created_at=at("2026-10-01T10:00"))
    _instance(world, gpu_node.name, "a", "3g.40gb", "2026-10-01T10:00", "2026-10-01T11:00")
    _instance(world, gpu_node.name, "b", "1g.10gb", "2026-10-01T10:00", "2026-10-01T11:00")
    run(world, now="2026-10-01T11:00")
    window = (at("2026-10-01T00:00"), at("2026-10-02T00:00"))
    for tenant, profile in ((world.a, "3g.40gb"), (world.b, "1g.10gb")):
        member = Principal(username="m", role=Role.TENANT_MEMBER, tenant_ids=frozenset({tenant.id}))
        assert {(r.tenant_id, r.sku) for r in list_usage(world.session, member, *window)} == {(tenant.id, f"{GPU_SKU}:{profile}")}


PROFILES = ["1g.10gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"]
_leases = st.lists(st.tuples(st.sampled_from("ab"), st.integers(0, 1), st.sampled_from(PROFILES), st.integers(0, 170),
                             st.integers(1, 180)), max_size=8)
_pods = st.lists(st.tuples(st.sampled_from("ab"), st.sampled_from(PROFILES), st.integers(0, 170), st.integers(1, 180)),
                 max_size=4)
WINDOW = (at("2026-10-01T10:00"), at("2026-10-01T13:00"))
NODE_KWH = D("2.100000")


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(leases=_leases, pods=_pods)
def test_instance_leases_pods_and_idle_add_up_to_the_gpus_and_their_energy(world: World, leases, pods) -> None:
    session = world.session
    for table in (BillLine, Bill, IdleCharge, UsageRecord, K8sAllocation, GpuInstanceLease):
        session.execute(delete(table))
    session.commit()
    if not getattr(world, "_mig_node", None):
        world._mig_node = _mig_node(world, gpus=2, created_at=WINDOW[0])
        card(world, GPU_SKU, "2.35")
        for i in range(3):
            session.add(NodeEnergyHour(node_id=world._mig_node.id, hour=WINDOW[0] + i * HOUR, kwh=NODE_KWH, covered_seconds=3600))
        session.commit()
    name = world._mig_node.name
    placed = []
    for tenant, gpu, profile, start, length in leases:
        a = WINDOW[0] + timedelta(minutes=start)
        try:
            placed.append((_instance(world, name, tenant, profile, a.isoformat()[:16],
                                     min(a + timedelta(minutes=length), WINDOW[1]).isoformat()[:16], gpu=gpu), profile))
        except Conflict:
            session.rollback()  # does not fit beside the others: the service refused it, as it should
    for index, (tenant, profile, start, length) in enumerate(pods):
        a = WINDOW[0] + timedelta(minutes=start)
        session.add(K8sAllocation(namespace=f"ns-{tenant}", tenant_slug=f"tenant-{tenant}", pod=f"p{index}", pod_uid=f"u{index}",
                                  node_name=name, resource=f"nvidia.com/mig-{profile}", quantity=D(1), starts_at=a,
                                  ends_at=min(a + timedelta(minutes=length), WINDOW[1])))
    session.commit()
    run(world, now="2026-10-01T13:00")
    session.expire_all()
    pods_fit = all(sum(mig_profiles.profile_slices(p) for _, p, s, n in pods if s <= m < s + n) +
                   sum(mig_profiles.profile_slices(p) for lease, p in placed
                       if lease.starts_at <= WINDOW[0] + timedelta(minutes=m) < lease.ends_at) <= 14 for m in range(180))
    for hour_start in (WINDOW[0] + i * HOUR for i in range(3)):
        have = capacity(session, hour_start, hour_start + HOUR)[GPU_SKU]
        taken = used(session, hour_start, hour_start + HOUR).get(GPU_SKU, 0)
        assert 0 <= taken <= have == 2 * MICROS_PER_HOUR  # claims + idle = the node's GPU-hours, never more
        rows = session.exec(select(UsageRecord).where(UsageRecord.hour == hour_start, UsageRecord.source == "lease")).all()
        kwh = [r.quantity_parts for r in session.exec(select(UsageRecord).where(UsageRecord.hour == hour_start,
                                                                                UsageRecord.sku == "kwh")).all()]
        node_parts = int(NODE_KWH * MICROS_PER_HOUR)
        assert 0 <= node_parts - sum(kwh)  # tenants' kWh + idle kWh = the node's, idle never negative
        # the GPUs' energy (all of it: no GPU counter, no CPU facts) goes by share of the pool's GPU-time
        assert abs(sum(kwh) - Fraction(node_parts * taken, 2 * MICROS_PER_HOUR)) <= len(kwh)
        if pods_fit:  # within capacity, every instance lease holds exactly its compute fraction (within one part)
            exact: dict[tuple[int, str], Fraction] = defaultdict(Fraction)
            for lease, profile in placed:
                a, b = max(lease.starts_at, hour_start), min(lease.ends_at, hour_start + HOUR)
                if b > a:
                    exact[(lease.tenant_id, f"{GPU_SKU}:{profile}")] += Fraction((b - a) // timedelta(microseconds=1) *
                                                                                 mig_profiles.profile_slices(profile), 7)
            got = {(r.tenant_id, r.sku): r.quantity_parts for r in rows}
            assert got.keys() == exact.keys()
            assert all(abs(got[key] - value) < len(placed) + 1 for key, value in exact.items())
    idle = session.exec(select(IdleCharge).where(IdleCharge.sku == GPU_SKU)).all()
    lines = session.exec(select(BillLine).where(BillLine.sku.startswith(GPU_SKU))).all()
    billed = sum(D(l.list_cost) for l in lines) + sum(D(i.cost) for i in idle)
    # the GPUs' 6 hours at 2.35 = 14.10: each line is rounded once to the cent (half-even), so the
    # parts add up to the whole within half a cent per line
    assert abs(billed - D("14.10")) <= D("0.005") * (len(lines) + len(idle))
    exact_quantity = sum(D(l.quantity) for l in lines) + sum(D(i.quantity) for i in idle)
    assert abs(exact_quantity - 6) <= D("0.000001") * (len(lines) + len(idle))


def test_an_instance_lease_carries_its_part_of_the_nodes_embodied_emissions(world: World) -> None:
    gpu_node = _mig_node(world, gpus=2, created_at=at("2026-10-01T10:00"))
    _instance(world, gpu_node.name, "a", "3g.40gb", "2026-10-01T10:00", "2026-10-01T12:00")
    world.session.add(NodeEnergyHour(node_id=gpu_node.id, hour=at("2026-10-01T10:00"), kwh=D("1.0"), covered_seconds=3600))
    world.session.commit()
    run(world, now="2026-10-01T12:00")
    report = emissions(world.session, SYSTEM, "2026-10", None, embodied={"gpu.h100": D("1.25")})
    (row,) = [r for r in report.tenants if r.tenant == "tenant-a"]
    # 3/7 of a GPU for 2 h = 6/7 GPU-h of a 2-GPU node = 3/7 node-hour × 1.25 kg = 0.535714… → 0.536 kg
    assert row.embodied_kg_co2e == D("0.536")
