"""Property tests (hypothesis): sums reconcile, rating is idempotent, no usage hour is counted twice."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete
from sqlmodel import select

from fleet.tenancy_models import Lease
from metering.models import Bill, BillLine, IdleCharge, UsageRecord
from metering.money import allocate, round_amount
from metering.rating import CardView, UsageTotal, rate, segments, share_idle
from metering.usage import parts_of, parts_sum
from tests.factories import World
from tests.metering_helpers import GPU_SKU, NODE_SKU, card, node, run

D = Decimal
PARTS = 3_600_000_000  # stored usage parts per unit (unit-microseconds for per-hour units)
OCT = datetime(2026, 10, 1, tzinfo=UTC)
NOV = datetime(2026, 11, 1, tzinfo=UTC)
SKUS = ["node-hour:a", "gpu-hour:H100", "kwh"]

prices = st.decimals(min_value=0, max_value=50, places=4, allow_nan=False, allow_infinity=False)
quantities = st.decimals(min_value=D("0.000001"), max_value=5000, places=6, allow_nan=False, allow_infinity=False)


@st.composite
def price_books(draw):
    """Cards for each SKU with 0–2 price changes inside October."""
    cards, next_id = [], 1
    for sku in SKUS:
        cuts = sorted(set(draw(st.lists(st.integers(1, 30 * 24 - 1), max_size=2))))
        bounds = [datetime(2026, 1, 1, tzinfo=UTC), *(OCT + timedelta(hours=h, minutes=draw(st.sampled_from([0, 30]))) for h in cuts), None]
        for start, end in zip(bounds, bounds[1:]):
            cards.append(CardView(next_id, sku, "u", draw(prices), "EUR", start, end))
            next_id += 1
    return cards


@st.composite
def usages(draw, cards):
    """Usage totals of 1–3 tenants per segment of October."""
    window_segments = segments(cards, OCT, NOV)
    totals = []
    for start, end in window_segments:
        for tenant in draw(st.lists(st.integers(1, 3), max_size=3, unique=True)):
            for sku in draw(st.lists(st.sampled_from(SKUS), max_size=3, unique=True)):
                totals.append(UsageTotal(tenant, sku, "u", start, end, int(draw(quantities) * PARTS)))
    return totals


@settings(max_examples=150, deadline=None)
@given(data=st.data(), discount=st.decimals(min_value=0, max_value=100, places=2))
def test_rating_is_pure_and_reconciles_to_the_cent(data, discount) -> None:
    cards = data.draw(price_books())
    usage = data.draw(usages(cards))
    charges = rate(usage, cards, {1: discount}, "EUR")
    shuffled = list(usage)
    random.Random(len(usage)).shuffle(shuffled)
    assert rate(shuffled, cards, {1: discount}, "EUR") == charges  # order-independent and repeatable
    per_key: dict[tuple, Decimal] = defaultdict(Decimal)
    for total in usage:
        per_key[(total.tenant_id, total.sku)] += total.quantity
    charged: dict[tuple, Decimal] = defaultdict(Decimal)
    for charge in charges:
        charged[(charge.tenant_id, charge.sku)] += charge.quantity
        assert charge.list_cost == round_amount(charge.quantity * charge.list_unit_price, "EUR")
        assert charge.contracted_cost == round_amount(charge.quantity * charge.contracted_unit_price, "EUR")
        assert charge.contracted_cost <= charge.list_cost
    assert charged == per_key  # every quantity is charged exactly once
    exact = sum((c.quantity * c.list_unit_price for c in charges), D(0))
    assert abs(sum((c.list_cost for c in charges), D(0)) - exact) <= D("0.005") * len(charges)


@settings(max_examples=150, deadline=None)
@given(parts=st.lists(st.integers(min_value=PARTS // 1000, max_value=8 * PARTS), min_size=1, max_size=40))
def test_a_rated_quantity_is_the_exact_sum_rounded_once(parts) -> None:
    """Hours of any length (parts need not be whole 3.6 ms) add up exactly; only the line is rounded."""
    cards = [CardView(1, "gpu-hour:H100", "u", D("2.17875"), "EUR", OCT, None)]
    hours = [OCT + timedelta(hours=i) for i in range(len(parts))]
    (charge,) = rate([UsageTotal(1, "gpu-hour:H100", "u", h, h + timedelta(hours=1), p) for h, p in zip(hours, parts)],
                     cards, {}, "EUR")
    exact = Fraction(sum(parts), PARTS)
    assert charge.quantity == D(round(exact * 10**6)) / 10**6  # round() of a Fraction is half-even
    assert abs(charge.quantity - D(exact.numerator) / D(exact.denominator)) <= D("0.0000005")


@settings(max_examples=150, deadline=None)
@given(total=st.decimals(min_value=0, max_value=10**6, places=2),
       weights=st.lists(st.decimals(min_value=0, max_value=10**5, places=2), min_size=1, max_size=8))
def test_idle_allocation_sums_exactly(total, weights) -> None:
    parts = allocate(total, weights, "EUR")
    if sum(weights) > 0:
        assert sum(parts) == total and all(p >= 0 for p in parts)
        assert all(p == 0 for p, w in zip(parts, weights) if w == 0)
    else:
        assert all(p == 0 for p in parts)


def test_idle_shares_add_up_to_the_idle_cost() -> None:
    cards = [CardView(1, "node-hour:a", "hour", D("0.37"), "EUR", OCT, None)]
    idle = rate([UsageTotal(None, "node-hour:a", "hour", OCT, NOV, 333_333_333 * 3600)], cards, {}, "EUR")  # 333.333333 h
    usage = rate([UsageTotal(t, "node-hour:a", "hour", OCT, NOV, q * PARTS) for t, q in ((1, 1), (2, 2), (3, 4))], cards, {}, "EUR")
    shares = share_idle(idle, usage, "EUR", (OCT, NOV))
    assert sum(s.list_cost for s in shares) == idle[0].list_cost == D("123.33")
    assert [s.tenant_id for s in shares] == [1, 2, 3]


leases_strategy = st.lists(
    st.tuples(st.integers(0, 2), st.sampled_from("ab"), st.integers(0, 30 * 24 * 60 - 1), st.integers(1, 4 * 24 * 60)),
    max_size=8,
)


def _place(raw):
    """Non-overlapping [start, end) minute intervals per node from raw (node, tenant, start, length) tuples."""
    taken: dict[int, list[tuple[int, int]]] = defaultdict(list)
    placed = []
    for node_index, tenant, start, length in raw:
        end = min(start + length, 31 * 24 * 60)
        if all(end <= a or start >= b for a, b in taken[node_index]):
            taken[node_index].append((start, end))
            placed.append((node_index, tenant, start, end))
    return placed


def _lines(world: World) -> list[tuple]:
    world.session.expire_all()
    rows = world.session.exec(select(BillLine, Bill).join(Bill, Bill.id == BillLine.bill_id)).all()
    return sorted((b.tenant_id, l.kind, l.sku, l.window_start, D(l.quantity), D(l.list_unit_price), D(l.contracted_cost)) for l, b in rows)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=leases_strategy)
def test_bills_from_random_leases_never_count_an_hour_twice(world: World, raw) -> None:
    session = world.session
    for table in (BillLine, Bill, IdleCharge, UsageRecord, Lease):
        session.execute(delete(table))
    session.commit()
    if not getattr(world, "_nodes", None):
        world._nodes = [node(world, gpus=2) for _ in range(3)]
        card(world, NODE_SKU, "1.10")
        card(world, GPU_SKU, "2.35")
    placed = _place(raw)
    for node_index, tenant, start, end in placed:
        session.add(Lease(tenant_id=world.tenant(tenant).id, node_id=world._nodes[node_index].id, created_by="test",
                          starts_at=OCT + timedelta(minutes=start), ends_at=OCT + timedelta(minutes=end)))
    session.commit()
    run(world)
    first = _lines(world)
    run(world)
    assert _lines(world) == first  # re-running a period gives identical charges
    usage = session.exec(select(UsageRecord).where(UsageRecord.sku == NODE_SKU)).all()
    per_node_hour: dict[tuple, Decimal] = defaultdict(Decimal)
    for row in usage:
        per_node_hour[(row.resource_id, row.hour)] += D(row.quantity)
    assert all(q <= D(1) for q in per_node_hour.values())  # a node-hour is never counted twice
    for index, created in enumerate(world._nodes):
        leased_minutes = sum(end - start for n, _, start, end in placed if n == index)
        counted = sum(r.quantity_parts for r in usage if r.resource_id == created.name)
        assert counted == leased_minutes * 60 * 10**6  # node-microseconds: exact, whatever the minutes
    for bill in session.exec(select(Bill)).all():
        lines = session.exec(select(BillLine).where(BillLine.bill_id == bill.id)).all()
        assert D(bill.total) == sum(D(l.contracted_cost) for l in lines)
        rows = session.exec(select(UsageRecord).where(UsageRecord.tenant_id == bill.tenant_id)).all()
        for line in lines:  # one card per SKU: one line per SKU, its quantity the exact sum rounded once
            exact = Fraction(sum(r.quantity_parts for r in rows if r.sku == line.sku), PARTS)
            assert D(line.quantity) == D(round(exact * 10**6)) / 10**6  # every usage row is on the bill, once


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.decimals(min_value=0, max_value=10**9, places=6), min_size=1, max_size=30))
def test_stored_quantities_and_their_sql_sums_are_exact(world: World, values) -> None:
    from sqlalchemy import func, text

    session = world.session
    session.execute(delete(UsageRecord))
    for i, value in enumerate(values):
        session.add(UsageRecord(tenant_id=world.a.id, resource_id=f"r{i}", sku=NODE_SKU, quantity=value,
                                quantity_parts=int(value * PARTS), unit="Hours", source="lease", hour=OCT))
    session.commit()
    assert session.exec(select(func.sum(UsageRecord.quantity))).one() == sum(values)  # no float on any database
    # nor here, and with no overflow: 30 rows of 1e9 hours are 1.08e20 parts, beyond SQLite's 64-bit SUM
    assert parts_of(session.exec(select(parts_sum())).one()) == sum(values) * PARTS
    stored = session.exec(select(UsageRecord.quantity).order_by(UsageRecord.resource_id)).all()
    assert sorted(stored) == sorted(values)
    if session.get_bind().dialect.name == "sqlite":
        raw = session.execute(text("SELECT typeof(quantity) FROM usage_record")).scalars().all()
        assert set(raw) == {"integer"}  # micro-units, never REAL
