"""The usage per tenant and day the bills run keeps (`metering.usage_days`): it adds up to the bills'
usage lines to the cent, a re-run replaces it, a finalised period keeps it, the migration's fill
gives the same rows, and a tenant sees only its own — on SQLite and PostgreSQL."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

from sqlalchemy import delete
from sqlmodel import col, select

from collectors.models import K8sAllocation, NodeEnergyHour
from dashboards.cost_data import emissions_summary, spend_by_day, spend_by_sku
from dashboards.finance_data import reconciliation
from kiln.auth import Principal, principal_for_user
from metering.bills import finalise_period
from metering.budgets import CarbonContext
from metering.models import Bill, BillLine, CarbonIntensity, UsageDay
from metering.rating import KIND_USAGE
from metering.usage_days import backfill, metered_tenants
from tests.factories import World
from tests.metering_helpers import GPU_SKU, NODE_SKU, SYSTEM, at, card, discount, lease, node, run

PERIOD = "2026-10"
CENT = Decimal("0.01")


def principal(world: World, name: str) -> Principal:
    """The Principal of one of the world's callers."""
    return principal_for_user(world.session, world.callers[name].user)


def awkward_month(world: World) -> None:
    """Prices and leases whose per-day amounts do not round to the line's: leases starting and ending
    mid-hour, a GPU price change at 13:00 on Oct 10, B 7.333333 % off, a namespace requesting 0.7 GPU."""
    card(world, GPU_SKU, "2.35", end="2026-10-10T13:00")
    card(world, GPU_SKU, "2.47", start="2026-10-10T13:00")
    card(world, NODE_SKU, "1.10")
    discount(world, "b", "7.333333")
    lease(world, node(world, gpus=3, name="node-a"), "a", "2026-10-01T00:20", "2026-10-12T05:40")
    lease(world, node(world, gpus=1, name="node-b"), "b", "2026-10-09T17:10", None)
    node(world, gpus=2, name="node-c")
    world.session.add(K8sAllocation(namespace="ns-a", tenant_slug="tenant-a", pod="train-0", pod_uid="uid-1", node_name="node-c",
                                    resource="nvidia.com/gpu", quantity=Decimal("0.7"), starts_at=at("2026-10-03T07:13"),
                                    ends_at=at("2026-10-11T19:52")))
    world.session.commit()
    run(world, PERIOD, now="2026-11-05T00:00")


def rows_of(world: World, period: str = PERIOD) -> list[tuple]:
    """The period's rows by key, with their id."""
    world.session.expire_all()
    return [(r.id, r.tenant_id, r.day, r.sku, r.namespace, r.quantity_parts, r.list_cost, r.contracted_cost)
            for r in world.session.exec(select(UsageDay).where(UsageDay.period == period).order_by(
                UsageDay.tenant_id, UsageDay.day, UsageDay.sku, UsageDay.namespace)).all()]


def usage_lines(world: World, period: str = PERIOD) -> dict[tuple[int, str], tuple[Decimal, Decimal]]:
    """(list, contracted) of each tenant's usage lines per SKU."""
    sums: dict[tuple[int, str], list[Decimal]] = defaultdict(lambda: [Decimal(0), Decimal(0)])
    for tenant_id, sku, listed, cost in world.session.exec(
            select(Bill.tenant_id, BillLine.sku, BillLine.list_cost, BillLine.contracted_cost)
            .join(Bill, col(Bill.id) == BillLine.bill_id).where(Bill.period == period, BillLine.kind == KIND_USAGE)).all():
        sums[(tenant_id, sku)][0] += Decimal(listed)
        sums[(tenant_id, sku)][1] += Decimal(cost)
    return {key: (listed, cost) for key, (listed, cost) in sums.items()}


def test_days_add_up_to_the_usage_lines_to_the_cent(world: World) -> None:
    awkward_month(world)
    days: dict[tuple[int, str], list[Decimal]] = defaultdict(lambda: [Decimal(0), Decimal(0)])
    for _, tenant_id, _, sku, _, _, listed, cost in rows_of(world):
        assert Decimal(cost) == Decimal(cost).quantize(CENT)  # whole cents, never a fraction of one
        days[(tenant_id, sku)][0] += Decimal(listed)
        days[(tenant_id, sku)][1] += Decimal(cost)
    lines = usage_lines(world)
    assert {key: tuple(value) for key, value in days.items()} == lines
    assert (world.b.id, GPU_SKU) in lines and lines[(world.b.id, GPU_SKU)][0] != lines[(world.b.id, GPU_SKU)][1]
    # the page's figure: every day of every SKU adds up to what the bills charged for usage
    admin = principal(world, "admin")
    per_sku = {sku: sum(by_day.values(), Decimal(0)) for sku, by_day in spend_by_day(world.session, admin, PERIOD).items()}
    assert per_sku == spend_by_sku(world.session, admin, PERIOD)  # no idle shares under the platform policy
    assert len(spend_by_day(world.session, admin, PERIOD)[GPU_SKU]) == 31  # B's open lease runs to the month's end


def test_a_tenant_sees_only_its_own_days_and_namespaces(world: World) -> None:
    awkward_month(world)
    member_a, member_b = principal(world, "a_member"), principal(world, "b_member")
    mine = spend_by_day(world.session, member_b, PERIOD)
    assert set(mine) == {GPU_SKU, NODE_SKU} and min(mine[GPU_SKU]) == "2026-10-09"  # B's lease starts on Oct 9
    assert sum(mine[GPU_SKU].values(), Decimal(0)) == usage_lines(world)[(world.b.id, GPU_SKU)][1]
    assert spend_by_day(world.session, member_b, PERIOD, world.a.id) == {}  # a filter never widens the scope
    assert min(spend_by_day(world.session, member_a, PERIOD)[GPU_SKU]) == "2026-10-01"
    assert [r.namespace for r in reconciliation(world.session, principal(world, "finance"), PERIOD)[0]] == ["ns-a"]
    assert reconciliation(world.session, member_b, PERIOD)[0] == []
    (row,), _ = reconciliation(world.session, member_a, PERIOD)
    # 0.7 GPU × 204.65 h (Oct 3 07:13 to Oct 11 19:52) = 143.255 GPU-hours; its share of A's GPU lines
    assert (row.kiln_gpu_hours, row.kiln_cost) == (Decimal("143.255"), sum(
        (Decimal(r[7]) for r in rows_of(world) if r[4] == "ns-a"), Decimal(0)))


def test_a_rerun_replaces_the_days_and_a_finalised_period_keeps_them(world: World) -> None:
    awkward_month(world)
    first = rows_of(world)
    run(world, PERIOD, now="2026-11-05T00:00")
    again = rows_of(world)
    assert [r[1:] for r in again] == [r[1:] for r in first]  # the same days once, not twice
    extra = lease(world, node(world, gpus=1, name="node-d"), "a", "2026-10-20T00:00", "2026-10-21T00:00")
    run(world, PERIOD, now="2026-11-05T00:00")
    assert spend_by_day(world.session, principal(world, "a_member"), PERIOD)[GPU_SKU]["2026-10-20"] == Decimal("59.28")  # 24 h at 2.47
    world.session.delete(extra)
    world.session.commit()
    finalise_period(world.session, SYSTEM, PERIOD, policy="platform", now=at("2026-11-05T00:00"))
    world.session.commit()
    final = rows_of(world)
    assert [r[1:] for r in final] == [r[1:] for r in first]  # the lease removed before closing: its day is gone
    lease(world, node(world, gpus=1, name="node-e"), "b", "2026-10-20T00:00", "2026-10-21T00:00")
    run(world, PERIOD, now="2026-11-06T00:00")  # late usage of a closed month: corrections on November's bills
    assert rows_of(world) == final
    assert usage_lines(world, "2026-11") == {}  # the correction lines are not usage of a November day
    assert rows_of(world, "2026-11") == []


def test_the_migrations_fill_gives_the_bills_runs_rows(world: World) -> None:
    awkward_month(world)
    run(world, "2026-11", now="2026-11-05T00:00")
    written = {period: [r[1:] for r in rows_of(world, period)] for period in (PERIOD, "2026-11")}
    world.session.execute(delete(UsageDay))
    world.session.commit()
    assert backfill(world.session) == sum(map(len, written.values()))
    world.session.commit()
    assert {period: [r[1:] for r in rows_of(world, period)] for period in written} == written


def test_energy_is_read_for_the_tenants_the_bills_run_metered(world: World) -> None:
    leased = node(world, name="gpu-de-1", zone="DE")
    lease(world, leased, "a", "2026-11-02T22:00", "2026-11-03T01:00")
    lease(world, node(world, name="gpu-de-2", zone="DE"), "b", "2026-11-02T22:00", "2026-11-03T01:00")  # no energy readings
    for hour, kwh, g in (("2026-11-02T22:00", "2", "300"), ("2026-11-02T23:00", "2", "200"), ("2026-11-03T00:00", "1", "100"),
                         ("2026-11-03T01:00", "0.5", "100")):
        world.session.add(NodeEnergyHour(node_id=leased.id, hour=at(hour), kwh=Decimal(kwh), covered_seconds=3600))
        world.session.add(CarbonIntensity(zone="DE", hour=at(hour), g_co2e_per_kwh=Decimal(g)))
    world.session.commit()
    assert metered_tenants(world.session, "2026-11") is None  # no bills run yet: anyone may have energy
    run(world, "2026-11", now="2026-11-05T00:00")
    assert metered_tenants(world.session, "2026-11") == {world.a.id}
    assert metered_tenants(world.session, "2026-11", frozenset({world.b.id})) == frozenset()
    carbon = CarbonContext()
    mine = emissions_summary(world.session, principal(world, "a_member"), "2026-11", None, carbon)
    assert (mine["kwh"], mine["kg_co2e"], mine["idle_kwh"]) == (Decimal(5), Decimal("1.1"), None)
    assert mine["per_day"] == {"2026-11-02": (Decimal(4), Decimal("1.0")), "2026-11-03": (Decimal(1), Decimal("0.1"))}
    theirs = emissions_summary(world.session, principal(world, "b_member"), "2026-11", None, carbon)
    assert (theirs["kwh"], theirs["per_day"]) == (Decimal(0), {})
    everyone = emissions_summary(world.session, principal(world, "finance"), "2026-11", None, carbon)
    assert (everyone["kwh"], everyone["idle_kwh"], everyone["idle_kg_co2e"]) == (Decimal(5), Decimal("0.5"), Decimal("0.05"))
