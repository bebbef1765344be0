"""Usage records from Kubernetes allocations and metered energy, hand-computed, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

import pytest
from sqlalchemy import text
from sqlmodel import select

from collectors.models import K8sAllocation, NodeEnergyHour
from kiln.partitions import ensure_partitions
from metering.models import UsageRecord
from metering.usage import build_usage, parts_of, parts_sum, summed
from tests.factories import World
from tests.metering_helpers import GPU_SKU, at, bill_of, card, lease, lines_of, money, node, run

D = Decimal
GIB = 2**30


def _alloc(world: World, pod: str, namespace: str, tenant: str | None, node_name: str, resource: str, quantity,
           start: str, end: str | None) -> None:
    world.session.add(K8sAllocation(namespace=namespace, tenant_slug=tenant, pod=pod, pod_uid=f"uid-{pod}", node_name=node_name,
                                    resource=resource, quantity=D(quantity), starts_at=at(start), ends_at=at(end) if end else None))


def _usage(world: World) -> dict[tuple, Decimal]:
    world.session.expire_all()
    totals: dict[tuple, Decimal] = defaultdict(Decimal)
    for row in world.session.exec(select(UsageRecord)).all():
        totals[(row.tenant_id, row.source, row.resource_id, row.sku)] += D(row.quantity)
    return {k: v.normalize() for k, v in totals.items()}


def _fleet(world: World):
    shared, leased, metal = node(world, gpus=4), node(world, gpus=2), node(world, gpus=2)
    a, b = world.a.id, world.b.id
    for resource, quantity in (("nvidia.com/gpu", 2), ("cpu", 8), ("memory", 64 * GIB)):
        _alloc(world, "train-1", "team-a", "tenant-a", shared.name, resource, quantity, "2026-10-01T10:15", "2026-10-01T12:15")
    _alloc(world, "infer-1", "team-b", "tenant-b", leased.name, "nvidia.com/gpu", 1, "2026-10-01T10:00", "2026-10-01T12:00")
    _alloc(world, "stray", "kube-system", None, shared.name, "cpu", 4, "2026-10-01T10:00", "2026-10-01T12:00")
    _alloc(world, "ghost", "team-x", "no-such-tenant", shared.name, "cpu", 4, "2026-10-01T10:00", "2026-10-01T12:00")
    lease(world, leased, "b", "2026-10-01T10:00", "2026-10-01T11:00")  # B leases the node its pod runs on, for an hour
    lease(world, metal, "a", "2026-10-01T10:20", "2026-10-01T12:00")
    for node_row, hour, kwh in ((metal, "10:00", "1.2"), (metal, "11:00", "1.5"), (shared, "10:00", "2.0"), (leased, "10:00", "0.9")):
        world.session.add(NodeEnergyHour(node_id=node_row.id, hour=at(f"2026-10-01T{hour}"), kwh=D(kwh), covered_seconds=3600))
    world.session.commit()
    return shared, leased, metal, a, b


def test_kubernetes_requests_and_energy_become_hourly_usage(world: World) -> None:
    shared, leased, metal, a, b = _fleet(world)
    written = build_usage(world.session, at("2026-10-01T00:00"), at("2026-11-01T00:00"), now=at("2026-11-05T00:00"))
    world.session.commit()
    usage = _usage(world)
    k8s_a, k8s_b = "k8s:team-a", "k8s:team-b"
    assert usage[(a, "k8s", k8s_a, GPU_SKU)] == D(4)  # 2 GPUs × 2 h
    assert usage[(a, "k8s", k8s_a, "cpu-core-hour")] == D(16)
    assert usage[(a, "k8s", k8s_a, "ram-gib-hour")] == D(128)
    assert usage[(b, "k8s", k8s_b, GPU_SKU)] == D(1)  # the hour its node was leased whole is not counted again
    assert usage[(b, "lease", leased.name, GPU_SKU)] == D(2)
    assert not any(key[2] in ("k8s:kube-system", "k8s:team-x") for key in usage)  # no tenant: not attributed
    assert usage[(a, "energy", metal.name, "kwh")] == D("2.3")  # 1.2 × 40/60 + 1.5
    assert usage[(b, "energy", leased.name, "kwh")] == D("0.9")
    assert usage[(a, "energy", f"{shared.name}/k8s:team-a", "kwh")] == D("0.75")  # 2.0 kWh × 1.5 of 4 GPU-hours, to the namespace
    hour_10 = world.session.exec(select(UsageRecord).where(UsageRecord.resource_id == k8s_a, UsageRecord.sku == GPU_SKU,
                                                           UsageRecord.hour == at("2026-10-01T10:00"))).one()
    assert D(hour_10.quantity) == D("1.5")
    again = build_usage(world.session, at("2026-10-01T00:00"), at("2026-11-01T00:00"), now=at("2026-11-05T00:00"))
    world.session.commit()
    assert again == written and _usage(world) == usage  # rebuilding replaces, never duplicates


def test_kubernetes_and_energy_usage_is_billed(world: World) -> None:
    _fleet(world)
    for sku, price in ((GPU_SKU, "2.00"), ("cpu-core-hour", "0.05"), ("ram-gib-hour", "0.01"), ("kwh", "0.30"),
                       ("node-hour:gpu.h100", "1.00")):
        card(world, sku, price)
    run(world)
    bill = bill_of(world, "a")
    # GPU: 4 (k8s) + 1.333333 (10:20–11:00 × 2) + 2 = 7.333333 × 2.00 = 14.67; node 0.666667 + 1 h = 1.67;
    # CPU 16 × 0.05 = 0.80; RAM 128 × 0.01 = 1.28; energy (2.3 + 0.75) × 0.30 = 0.915 → 0.92 (half-even)
    assert money(lines_of(world, bill)) == [
        ("cpu-core-hour", D(16), D("0.05"), D("0.80")), (GPU_SKU, D("7.333333"), D(2), D("14.67")),
        ("kwh", D("3.05"), D("0.3"), D("0.92")), ("node-hour:gpu.h100", D("1.666667"), D(1), D("1.67")),
        ("ram-gib-hour", D(128), D("0.01"), D("1.28")),
    ]
    assert D(bill.total) == D("19.34")


def test_opencost_figures_are_shown_beside_kilns_with_the_difference(client, world: World) -> None:
    from collectors.models import OpenCostAllocation

    _fleet(world)
    for hour, gpu, cpu in (("10:00", "1.4", "6"), ("11:00", "2", "8"), ("12:00", "0.5", "2")):
        world.session.add(OpenCostAllocation(namespace="team-a", window_start=at(f"2026-10-01T{hour}"),
                                             window_end=at(f"2026-10-01T{hour}") + (at("2026-10-01T01:00") - at("2026-10-01T00:00")),
                                             gpu_hours=D(gpu), cpu_core_hours=D(cpu), ram_byte_hours=D(64 * GIB)))
    world.session.add(OpenCostAllocation(namespace="__idle__", window_start=at("2026-10-01T10:00"), window_end=at("2026-10-01T11:00"),
                                         gpu_hours=D(3)))
    world.session.commit()
    run(world)
    rows = client.get("/api/v1/usage/reconciliation?period=2026-10", headers=world.headers("finance")).json()
    by_key = {(r["namespace"], r["measure"]): r for r in rows}
    gpu = by_key[("team-a", "gpu-hours")]
    assert (D(gpu["kiln"]), D(gpu["opencost"]), D(gpu["difference"]), gpu["tenant"]) == (D(4), D("3.9"), D("0.1"), "tenant-a")
    assert D(by_key[("team-a", "ram-gib-hours")]["opencost"]) == D(192) and by_key[("team-b", "gpu-hours")]["opencost"] is None
    assert ("__idle__", "gpu-hours") in by_key
    mine = client.get("/api/v1/usage/reconciliation?period=2026-10", headers=world.headers("b_member")).json()
    assert {r["namespace"] for r in mine} == {"team-b"}


def test_gpu_efficiency_is_used_over_measured_gpu_hours(client, world: World) -> None:
    from datetime import timedelta

    from collectors.models import Rollup5m
    from fleet.models import Gpu

    n1 = node(world, gpus=2)
    lease(world, n1, "a", "2026-10-01T00:00", "2026-10-01T01:00")
    for gpu in world.session.exec(select(Gpu).where(Gpu.node_id == n1.id)).all():
        gpu.uuid = f"GPU-{n1.id}-{gpu.index}"
        world.session.add(gpu)
    for k in range(12):  # GPU 0 at 50 % all hour, GPU 1 at 100 % for the first half hour only (no data after)
        bucket = at("2026-10-01T00:00") + timedelta(minutes=5 * k)
        world.session.add(Rollup5m(entity=f"GPU-{n1.id}-0", metric="gpu_util_percent", bucket=bucket, count=2, sum=100.0, min=50, max=50))
        if k < 6:
            world.session.add(Rollup5m(entity=f"GPU-{n1.id}-1", metric="gpu_util_percent", bucket=bucket, count=1, sum=100.0, min=100, max=100))
    world.session.add(Rollup5m(entity=f"GPU-{n1.id}-0", metric="gpu_util_percent", bucket=at("2026-10-01T01:00"), count=1, sum=100.0))
    world.session.commit()
    run(world)
    (row,) = client.get("/api/v1/usage/efficiency?period=2026-10", headers=world.headers("a_member")).json()
    # measured 1.5 GPU-hours; used 0.5 + 0.5; allocated 2 GPU-hours; the bucket after the lease does not count
    assert (row["tenant"], D(row["allocated_gpu_hours"]), D(row["measured_gpu_hours"]), D(row["used_gpu_hours"])) == (
        "tenant-a", D(2), D("1.5"), D(1))
    assert D(row["efficiency"]) == D("0.6667")
    assert client.get("/api/v1/usage/efficiency?period=2026-10", headers=world.headers("b_member")).json() == []


def test_sums_of_exact_parts_never_overflow_and_round_once(world: World) -> None:
    """Two rows near 2^63 parts and one negative: SQLite's own SUM would fail with 'integer overflow'."""
    big = 2**63 - 1_000_000
    for i, parts in enumerate((big, big, -5)):
        world.session.add(UsageRecord(tenant_id=world.a.id, resource_id=f"r{i}", sku="kwh", quantity=Decimal(0),
                                      quantity_parts=parts, unit="kWh", source="energy", hour=at("2026-10-01T00:00")))
    world.session.commit()
    total = world.session.exec(select(parts_sum())).one()
    assert parts_of(total) == 2 * big - 5 == 18446744073707551611
    # 18446744073707551611 / 3.6e9 = 5124095576.029875447… → 5124095576.029875
    assert summed(total) == Decimal("5124095576.029875")
    assert parts_of(world.session.exec(select(parts_sum()).where(UsageRecord.sku == "none")).one()) == 0


def _partition_rows(session, name: str) -> tuple[list[tuple], list[str], list[str], int]:
    """Rows (without ids) of `name`, its index definitions, its constraints, and its table's oid."""
    rows = session.execute(text(f"SELECT tenant_id, resource_id, sku, quantity, quantity_parts, unit, source, hour, "
                                f"tableoid::regclass::text FROM usage_record WHERE tableoid = '{name}'::regclass "
                                "ORDER BY resource_id, sku, hour")).all()
    indexes = session.execute(text("SELECT indexdef FROM pg_indexes WHERE tablename = :t ORDER BY 1"), {"t": name}).scalars().all()
    constraints = session.execute(text("SELECT conname FROM pg_constraint WHERE conrelid = to_regclass(:t) ORDER BY 1"),
                                  {"t": name}).scalars().all()
    return [tuple(r) for r in rows], indexes, constraints, session.execute(text("SELECT to_regclass(:t)::oid"), {"t": name}).scalar()


@pytest.mark.postgresql_only
def test_a_month_with_its_own_partition_is_rebuilt_into_a_fresh_one(world: World) -> None:
    """On PostgreSQL a whole month whose partition is attached is written into a new table that takes
    the partition's place (kiln.partitions.stage_month/swap_month): the same rows, the partition's own
    indexes and constraints, other months untouched, and a rolled-back run leaves the old partition."""
    session, march, april, may = world.session, at("2025-03-01T00:00"), at("2025-04-01T00:00"), at("2025-05-01T00:00")
    engine = session.get_bind()
    with engine.begin() as connection:
        ensure_partitions(connection, at("2025-03-15T00:00"), since=march, ahead=0)
    try:
        metal = node(world, gpus=2, created_at=at("2025-01-01T00:00"))
        lease(world, metal, "a", "2025-03-01T10:20", "2025-03-01T12:00")
        lease(world, metal, "b", "2025-04-01T10:00", "2025-04-01T11:00")  # April has no partition: the default one
        _alloc(world, "train-1", "team-a", "tenant-a", metal.name, "nvidia.com/gpu", 1, "2025-03-01T09:30", "2025-03-01T10:50")
        session.commit()
        _, indexes, constraints, _ = _partition_rows(session, "usage_record_2025_03")  # as PARTITION OF made them
        session.commit()
        assert build_usage(session, april, may, now=may)["lease"] == 2  # delete and insert into the default partition
        session.execute(text("SET LOCAL TimeZone = 'Europe/Paris'"))  # a session's zone does not change the rows
        written = build_usage(session, march, april, now=may)
        assert session.execute(text("SHOW TimeZone")).scalar() == "Europe/Paris"  # allocations are read in UTC, then it is put back
        session.commit()
        assert (written["lease"], written["k8s"]) == (4, 2)  # node- and GPU-hour at 10:00 (40 min) and 11:00; the pod till 10:20
        rows, indexes_after, constraints_after, oid = _partition_rows(session, "usage_record_2025_03")
        assert len(rows) == 6 and {r[-1] for r in rows} == {"usage_record_2025_03"}
        assert {(r[1], r[7]): r[3] for r in rows if r[2] == GPU_SKU} == {
            (metal.name, at("2025-03-01T10:00")): D("1.333333"), (metal.name, at("2025-03-01T11:00")): D(2),
            ("k8s:team-a", at("2025-03-01T09:00")): D("0.5"), ("k8s:team-a", at("2025-03-01T10:00")): D("0.333333")}
        assert indexes_after == indexes and len(indexes) == 5 and constraints_after == constraints  # a partial one too
        april_rows = _partition_rows(session, "usage_record_default")[0]
        assert len(april_rows) == 2
        session.commit()
        assert build_usage(session, march, april, now=may) == written
        session.commit()
        again = _partition_rows(session, "usage_record_2025_03")
        assert again[:3] == (rows, indexes, constraints) and again[3] != oid  # a new table, the same rows
        assert _partition_rows(session, "usage_record_default")[0] == april_rows
        session.commit()
        lease(world, metal, "b", "2025-03-02T00:00", "2025-03-02T01:00")
        build_usage(session, march, april, now=may)
        session.rollback()
        assert _partition_rows(session, "usage_record_2025_03") == again
    finally:
        session.rollback()
        with engine.begin() as connection:
            connection.execute(text("DROP TABLE IF EXISTS usage_record_2025_03"))
