"""Hand-computed bills, asserted to the cent, on SQLite and PostgreSQL."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlmodel import select

from kiln.errors import Conflict, NotFound, ValidationFailed
from metering.bills import finalise_period
from metering.models import BillLine, IdleCharge, UsageRecord
from tests.factories import World
from tests.metering_helpers import (
    GPU_SKU, NODE_SKU, SYSTEM, at, bill_of, card, discount, lease, lines_of, money, node, run,
)

D = Decimal


def test_lease_starting_mid_hour_counts_the_exact_fraction(world: World) -> None:
    n1 = node(world, gpus=8)
    lease(world, n1, "a", "2026-10-01T10:30", "2026-10-01T13:00")
    card(world, NODE_SKU, "1.50")
    card(world, GPU_SKU, "2.25")
    run(world)
    rows = world.session.exec(select(UsageRecord).where(UsageRecord.sku == NODE_SKU).order_by(UsageRecord.hour)).all()
    assert [(r.hour, D(r.quantity)) for r in rows] == [
        (at("2026-10-01T10:00"), D("0.5")), (at("2026-10-01T11:00"), D(1)), (at("2026-10-01T12:00"), D(1))]
    gpu_first = world.session.exec(select(UsageRecord).where(UsageRecord.sku == GPU_SKU, UsageRecord.hour == at("2026-10-01T10:00"))).one()
    assert D(gpu_first.quantity) == D(4) and gpu_first.resource_id == n1.name and gpu_first.source == "lease"
    bill = bill_of(world, "a")
    # 2.5 node-hours × 1.50 = 3.75; 20 GPU-hours × 2.25 = 45.00
    assert money(lines_of(world, bill)) == [(GPU_SKU, D(20), D("2.25"), D("45.00")), (NODE_SKU, D("2.5"), D("1.5"), D("3.75"))]
    assert (bill.status, bill.currency, D(bill.total)) == ("draft", "EUR", D("48.75"))
    assert bill_of(world, "b") is None


def test_price_change_mid_period_gives_one_line_per_price(world: World) -> None:
    n1 = node(world, gpus=2)
    lease(world, n1, "a", "2026-10-01T00:00", "2026-11-01T00:00")
    card(world, NODE_SKU, "0.10")
    card(world, GPU_SKU, "2.00", end="2026-10-16T00:00")
    card(world, GPU_SKU, "2.50", start="2026-10-16T00:00")
    run(world)
    bill = bill_of(world, "a")
    lines = lines_of(world, bill)
    # 15 days × 24 h × 2 GPUs = 720 at 2.00; 16 days × 24 h × 2 GPUs = 768 at 2.50; 744 node-hours at 0.10
    assert money(lines) == [
        (GPU_SKU, D(720), D(2), D("1440.00")),
        (GPU_SKU, D(768), D("2.5"), D("1920.00")),
        (NODE_SKU, D(744), D("0.1"), D("74.40")),
    ]
    assert (lines[0].window_start, lines[0].window_end) == (at("2026-10-01T00:00"), at("2026-10-16T00:00"))
    assert (lines[1].window_start, lines[1].window_end) == (at("2026-10-16T00:00"), at("2026-11-01T00:00"))
    assert D(bill.total) == D("3434.40") == sum(D(l.contracted_cost) for l in lines)


def test_line_amounts_round_half_even_at_the_line(world: World) -> None:
    n1 = node(world, gpus=0)
    lease(world, n1, "a", "2026-10-03T00:30", "2026-10-03T01:00")
    lease(world, node(world, gpus=0), "b", "2026-10-03T00:00", "2026-10-03T01:30")
    card(world, NODE_SKU, "0.25")
    run(world)
    # 0.5 h × 0.25 = 0.125 → 0.12 (half-even; half-up would say 0.13); 1.5 h × 0.25 = 0.375 → 0.38
    assert D(bill_of(world, "a").total) == D("0.12")
    assert D(bill_of(world, "b").total) == D("0.38")


def test_contract_discount_lowers_contracted_cost_not_list_cost(world: World) -> None:
    n1 = node(world, gpus=1)
    lease(world, n1, "a", "2026-10-02T00:00", "2026-10-02T10:00")
    card(world, NODE_SKU, "1.00")
    card(world, GPU_SKU, "3.00")
    discount(world, "a", "15")
    run(world)
    bill = bill_of(world, "a")
    lines = lines_of(world, bill)
    assert [(l.sku, D(l.list_cost), D(l.contracted_unit_price).normalize(), D(l.contracted_cost)) for l in lines] == [
        (GPU_SKU, D("30.00"), D("2.55"), D("25.50")), (NODE_SKU, D("10.00"), D("0.85"), D("8.50"))]
    assert (D(bill.list_total), D(bill.total), D(bill.discount_percent)) == (D("40.00"), D("34.00"), D(15))


def _two_tenants_one_idle_node(world: World) -> None:
    n1, n2 = node(world, gpus=1), node(world, gpus=1)
    lease(world, n1, "a", "2026-10-01T00:00", None)
    lease(world, n2, "b", "2026-10-01T00:00", "2026-10-05T04:00")  # 100 hours
    card(world, NODE_SKU, "1.00")
    card(world, GPU_SKU, "2.00")


def test_idle_capacity_is_absorbed_by_the_platform_and_shown(world: World) -> None:
    _two_tenants_one_idle_node(world)
    summary = run(world, policy="platform")
    # A: 744 h × (1 + 2) = 2232.00; B: 100 h × 3 = 300.00; idle: 644 h of node 2 × 3 = 1932.00
    assert (D(bill_of(world, "a").total), D(bill_of(world, "b").total)) == (D("2232.00"), D("300.00"))
    idle = world.session.exec(select(IdleCharge).order_by(IdleCharge.sku)).all()
    assert [(i.sku, D(i.quantity), D(i.cost), i.policy) for i in idle] == [
        (GPU_SKU, D(644), D("1288.00"), "platform"), (NODE_SKU, D(644), D("644.00"), "platform")]
    assert summary.idle_cost == D("1932.00")
    assert not world.session.exec(select(BillLine).where(BillLine.kind == "idle-share")).all()


def test_idle_capacity_shared_in_proportion_to_usage_cost(world: World) -> None:
    _two_tenants_one_idle_node(world)
    run(world, policy="share")
    a, b = bill_of(world, "a"), bill_of(world, "b")
    share_a = [l for l in lines_of(world, a) if l.kind == "idle-share"]
    share_b = [l for l in lines_of(world, b) if l.kind == "idle-share"]
    # 1932.00 × 2232/2532 = 1703.0900…, × 300/2532 = 228.9099… → largest remainder gives B the last cent
    assert [D(l.contracted_cost) for l in share_a + share_b] == [D("1703.09"), D("228.91")]
    assert D(a.total) == D("2232.00") + D("1703.09") and D(b.total) == D("300.00") + D("228.91")
    assert sum(D(i.cost) for i in world.session.exec(select(IdleCharge)).all()) == D("1932.00")


def test_correction_after_finalise_lands_in_the_next_open_period(world: World) -> None:
    n1 = node(world, gpus=1)
    lease(world, n1, "a", "2026-10-01T00:00", "2026-10-02T00:00")
    card(world, NODE_SKU, "1.00")
    card(world, GPU_SKU, "2.00")
    run(world)
    finalised = finalise_period(world.session, SYSTEM, "2026-10", policy="platform", now=at("2026-11-05T00:00"))
    world.session.commit()
    assert [(b.status, D(b.total)) for b in finalised] == [("finalised", D("72.00"))]
    lease(world, n1, "a", "2026-10-10T00:00", "2026-10-10T06:00")  # usage found late
    for _ in range(2):  # running again changes nothing more
        summary = run(world, now="2026-11-05T00:00")
        assert summary.corrections == 2
        october, november = bill_of(world, "a"), bill_of(world, "a", "2026-11")
        assert (october.status, D(october.total)) == ("finalised", D("72.00"))
        corrections = lines_of(world, november)
        assert [(l.sku, D(l.quantity).normalize(), D(l.contracted_cost), l.charge_class, l.corrects_period) for l in corrections] == [
            (GPU_SKU, D(6), D("12.00"), "Correction", "2026-10"), (NODE_SKU, D(6), D("6.00"), "Correction", "2026-10")]
        assert (november.status, D(november.total)) == ("draft", D("18.00"))
        assert corrections[0].window_start == at("2026-10-01T00:00")
    run(world, period="2026-11", now="2026-11-05T00:00")  # the open period's own run keeps the corrections
    assert D(bill_of(world, "a", "2026-11").total) == D("18.00")
    with pytest.raises(Conflict, match="already finalised"):
        finalise_period(world.session, SYSTEM, "2026-10", policy="platform", tenant="tenant-a", now=at("2026-11-05T00:00"))
    world.session.rollback()
    assert D(bill_of(world, "a").total) == D("72.00")


def test_bad_periods_are_refused(world: World) -> None:
    with pytest.raises(ValidationFailed, match="in the future"):
        run(world, period="2026-12", now="2026-11-05T00:00")
    with pytest.raises(ValidationFailed, match="YYYY-MM"):
        run(world, period="2026-13")
    with pytest.raises(Conflict, match="has not ended"):
        finalise_period(world.session, SYSTEM, "2026-11", policy="platform", now=at("2026-11-05T00:00"))
    with pytest.raises(NotFound, match="no bills"):
        finalise_period(world.session, SYSTEM, "2026-09", policy="platform", now=at("2026-11-05T00:00"))


def test_forecast_extrapolates_from_the_last_run_but_not_corrections() -> None:
    from metering.models import Bill
    from metering.views import forecast_total

    bill = Bill(tenant_id=1, period="2026-10", status="draft", currency="EUR", list_total=D(105), total=D(105),
                usage_through=at("2026-10-11T00:00"), updated_at=at("2026-10-21T00:00"))
    lines = [BillLine(bill_id=1, kind="usage", contracted_cost=D(100)), BillLine(bill_id=1, kind="correction", contracted_cost=D(5))]
    # usage counted over 10 of October's 31 days: 100 × 31 / 10 + 5, whatever the clock says now
    assert forecast_total(bill, lines) == D("315.00")
    bill.usage_through = at("2026-11-01T00:00")  # a run after the period's end: the total stands
    assert forecast_total(bill, lines) == D(105)
    bill.usage_through = None  # bills from before usage_through was kept: their last update (20 days)
    assert forecast_total(bill, lines) == D("160.00")
    bill.status = "finalised"
    assert forecast_total(bill, lines) == D(105)


def test_the_forecast_does_not_drift_between_bills_runs(world: World) -> None:
    """Issue 18: spent stayed while the hours elapsed grew with the clock, so the forecast fell on
    every reload between runs. It now extrapolates from the instant the run counted usage up to."""
    from metering.views import bill_public

    n = node(world, gpus=1)
    card(world, GPU_SKU, "2.00")
    lease(world, n, "a", "2026-10-01T00:00", None)
    run(world, period="2026-10", now="2026-10-11T00:00")  # 240 GPU-hours over 10 days
    bill = bill_of(world, "a")
    assert bill.usage_through == at("2026-10-11T00:00")
    (public,) = bill_public(world.session, [bill])
    assert (public.total, public.forecast_total) == (D("480.00"), D("1488.00"))  # × 31 / 10, though the clock is past it
    run(world, period="2026-10", now="2026-10-21T00:00")
    world.session.refresh(bill)
    (public,) = bill_public(world.session, [bill])
    assert (public.total, public.forecast_total, public.usage_through) == (D("960.00"), D("1488.00"), at("2026-10-21T00:00"))


def test_a_list_of_bills_of_several_periods_has_each_bills_own_forecast(world: World) -> None:
    """The bill list reads the lines' costs a period at a time (not a query per bill): each bill's
    forecast is still its own lines', as its detail has it."""
    from metering.views import bill_public, list_bills

    card(world, GPU_SKU, "2.00")
    lease(world, node(world, gpus=1), "a", "2026-09-20T00:00", None)
    lease(world, node(world, gpus=2), "b", "2026-10-05T00:00", None)
    run(world, period="2026-09", now="2026-10-01T00:00")
    run(world, period="2026-10", now="2026-10-11T00:00")
    bills = list_bills(world.session, SYSTEM)
    assert len(bills) == 3
    listed = bill_public(world.session, bills)
    detailed = [bill_public(world.session, [bill], with_lines=True)[0] for bill in bills]
    assert [(b.id, b.forecast_total) for b in listed] == [(b.id, b.forecast_total) for b in detailed]
    assert {(b.tenant, b.period, b.forecast_total) for b in listed} == {
        ("tenant-a", "2026-10", D("1488.00")), ("tenant-b", "2026-10", D("1785.60")), ("tenant-a", "2026-09", D("528.00"))}


def test_the_worker_job_keeps_the_running_periods_draft_current(world: World, settings) -> None:
    from datetime import timedelta

    from kiln.db import utcnow
    from metering.jobs import draft_bills
    from metering.periods import period_of

    n1 = node(world, gpus=0)
    lease(world, n1, "a", (utcnow() - timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M"), None)
    card(world, NODE_SKU, "1.00")
    job = draft_bills(settings, world.session.get_bind())
    job()
    job()  # a second run replaces, never adds
    bill = bill_of(world, "a", period_of(utcnow()))
    assert bill.status == "draft" and D(0) < D(bill.total) <= D("3.02")  # 3 h (+ < 1 min) at 1.00
    assert len(lines_of(world, bill)) == 1


def test_price_cards_cannot_rewrite_finalised_history(world: World) -> None:
    from metering.models import PriceCard
    from metering.price_cards import PriceCardCreate, PriceCardUpdate, create_card, delete_card, update_card

    lease(world, node(world, gpus=0), "a", "2026-10-01T00:00", "2026-10-01T10:00")
    card(world, NODE_SKU, "1.00", end="2026-12-01T00:00")
    finalise_period(world.session, SYSTEM, "2026-10", policy="platform", now=at("2026-11-05T00:00"))
    world.session.commit()
    stored = world.session.exec(select(PriceCard)).one()
    with pytest.raises(Conflict, match="covers period 2026-10, which has finalised bills"):
        update_card(world.session, SYSTEM, stored.id, PriceCardUpdate(effective_to=at("2026-10-20T00:00")))
    with pytest.raises(Conflict, match="finalised bills"):
        delete_card(world.session, SYSTEM, stored.id)
    with pytest.raises(Conflict, match="cannot change billed history"):
        create_card(world.session, SYSTEM, PriceCardCreate(sku=GPU_SKU, unit_price="9", currency="EUR",
                                                           effective_from=at("2026-10-15T00:00")))
    world.session.rollback()
    # moving the end within open periods is fine: November is still a draft
    update_card(world.session, SYSTEM, stored.id, PriceCardUpdate(effective_to=at("2026-11-20T00:00")))
    create_card(world.session, SYSTEM, PriceCardCreate(sku=NODE_SKU, unit_price="1.25", currency="EUR",
                                                       effective_from=at("2026-11-20T00:00")))
    world.session.commit()
    run(world)  # re-running October changes nothing: its price is frozen
    assert D(bill_of(world, "a").total) == D("10.00")
    assert not world.session.exec(select(BillLine).where(BillLine.kind == "correction")).all()
