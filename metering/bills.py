"""Bills per tenant per period: draft (rebuilt as usage arrives) → finalised (immutable).

`run_period` rebuilds the period's usage, rates it (`metering.rating`) and writes each
tenant's draft bill and its usage per day (`metering.usage_days`); it never touches a finalised
bill. When a finalised period is run again
and its charges have changed (late usage, a corrected lease), the differences become
`correction` lines (FOCUS ChargeClass "Correction") on the tenant's next open bill, with the
corrected period and window; repeating the run changes nothing more. A finalised bill keeps
the discount it was rated with, and price cards may not change over a finalised period
(`metering.price_cards`), so only usage changes ever produce corrections.

A bill's total is the sum of its lines' rounded amounts (see `metering.money`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from sqlalchemy import delete, func, insert
from sqlmodel import Session, col, select

from kiln import audit
from kiln.auth import Principal
from kiln.db import utcnow
from kiln.errors import Conflict, NotFound
from kiln.roles import Role
from kiln.telemetry import span
from kiln.tenants import get_tenant_owned, tenants_by_slug
from metering.idle import idle_usage
from metering.models import DRAFT, FINALISED, Bill, BillLine, IdleCharge, PriceCard, TenantDiscount, UsageRecord
from metering.periods import has_ended, next_period, parse_period, period_bounds
from metering.price_cards import cards_overlapping
from metering.rating import KIND_CORRECTION, CardView, Charge, UsageTotal, rate, segments, share_idle
from metering.usage import build_usage, parts_of, parts_sum
from metering.usage_days import billed_charges, day_pieces, segment_totals, write_days

WRITE_ROLES = (Role.INFRA_ADMIN, Role.FINANCE)
DEFAULT_CURRENCY = "EUR"
CORRECTION_CLASS = "Correction"
ZERO = Decimal(0)


@dataclass
class PeriodRating:
    """Everything rating produced for one period."""

    period: str
    currency: str
    charges: list[Charge]  # tenants' usage and idle shares
    idle: list[Charge]  # idle capacity (tenant None), whoever pays it


@dataclass
class RunSummary:
    """What `run_period` did."""

    period: str
    usage_rows: dict[str, int]
    drafts: list[Bill] = field(default_factory=list)
    corrections: int = 0
    idle_cost: Decimal = ZERO


def card_views(cards: list[PriceCard]) -> list[CardView]:
    """Price card rows as rating's plain values."""
    return [CardView(c.id, c.sku, c.unit, Decimal(c.unit_price), c.currency, c.effective_from, c.effective_to) for c in cards]


def usage_by_segment(
    session: Session, window_segments: list[tuple[datetime, datetime]], *, tenant_id: int | None = None, vdc_id: int | None = None
) -> list[UsageTotal]:
    """Usage totals per (tenant, SKU) for each segment, summed exactly (integer parts) in SQL."""
    totals = []
    for start, end in window_segments:
        statement = (
            select(UsageRecord.tenant_id, UsageRecord.sku, UsageRecord.unit, parts_sum())
            .where(col(UsageRecord.hour) >= start, col(UsageRecord.hour) < end)
            .group_by(UsageRecord.tenant_id, UsageRecord.sku, UsageRecord.unit)
        )
        if tenant_id is not None:
            statement = statement.where(UsageRecord.tenant_id == tenant_id)
        if vdc_id is not None:
            statement = statement.where(UsageRecord.vdc_id == vdc_id)
        totals += [UsageTotal(t, s, u, start, end, parts_of(parts)) for t, s, u, parts in session.exec(statement).all()]
    return totals


def billing_currency(session: Session, cards: list[CardView]) -> str:
    """The currency of the price cards (all share one); EUR before any card exists."""
    if cards:
        return cards[0].currency
    return session.exec(select(PriceCard.currency)).first() or DEFAULT_CURRENCY


def current_discounts(session: Session) -> dict[int, Decimal]:
    """Each tenant's contract discount in percent."""
    return {t: Decimal(p) for t, p in session.exec(select(TenantDiscount.tenant_id, TenantDiscount.percent)).all()}


def rate_period(
    session: Session, period: str, *, policy: str, now: datetime, frozen: dict[int, Decimal] | None = None,
    usage: list[UsageTotal] | None = None,
) -> PeriodRating:
    """Rate a period's stored usage (or its `usage` totals per segment, already summed): tenants'
    charges, idle capacity, and idle shares under `policy`."""
    start, end = period_bounds(period)
    cards = card_views(cards_overlapping(session, start, end))
    currency = billing_currency(session, cards)
    window_segments = segments(cards, start, end)
    discounts = {**current_discounts(session), **(frozen or {})}
    usage = usage_by_segment(session, window_segments) if usage is None else usage
    charges = rate(usage, cards, discounts, currency)
    idle = rate(idle_usage(session, window_segments, min(end, now)), cards, {}, currency)
    if policy == "share":
        charges += share_idle(idle, charges, currency, (start, end))
    return PeriodRating(period, currency, charges, idle)


def _line(bill: Bill, charge: Charge, **overrides) -> BillLine:
    values = dict(
        bill_id=bill.id, kind=charge.kind, sku=charge.sku, unit=charge.unit, description=charge.description,
        quantity=charge.quantity, list_unit_price=charge.list_unit_price, list_cost=charge.list_cost,
        contracted_unit_price=charge.contracted_unit_price, contracted_cost=charge.contracted_cost,
        currency=charge.currency, window_start=charge.window_start, window_end=charge.window_end,
        price_card_id=charge.price_card_id,
    )
    return BillLine(**{**values, **overrides})


def retotal(session: Session, bill: Bill) -> Bill:
    """Set a bill's totals to the sums of its lines' rounded amounts."""
    list_total, total = session.exec(
        select(func.coalesce(func.sum(BillLine.list_cost), 0), func.coalesce(func.sum(BillLine.contracted_cost), 0))
        .where(BillLine.bill_id == bill.id)
    ).one()
    bill.list_total, bill.total, bill.updated_at = Decimal(list_total), Decimal(total), utcnow()
    session.add(bill)
    return bill


def _line_count(session: Session, bill: Bill) -> int:
    return session.exec(select(func.count()).select_from(BillLine).where(BillLine.bill_id == bill.id)).one()


def _new_bill(session: Session, tenant_id: int, period: str, currency: str, discount: Decimal) -> Bill:
    bill = Bill(tenant_id=tenant_id, period=period, status=DRAFT, currency=currency, list_total=ZERO, total=ZERO,
                discount_percent=discount)
    session.add(bill)
    session.flush()
    return bill


def _write_drafts(session: Session, period: str, drafts: list[tuple[int, list[Charge], Bill | None]], currency: str,
                  discounts: dict[int, Decimal], usage_through: datetime) -> list[Bill]:
    """Rewrite the usage lines of these draft bills (creating missing ones) in a few statements; keep
    their correction lines; drop bills left with no line; note the instant usage was counted up to.
    Returns the bills that remain."""
    existing = [bill.id for _, _, bill in drafts if bill is not None]
    kept: dict[int, tuple[int, Decimal, Decimal]] = {}
    if existing:
        session.execute(delete(BillLine).where(col(BillLine.bill_id).in_(existing), BillLine.kind != KIND_CORRECTION))
        kept = {bill_id: (count, Decimal(listed), Decimal(billed)) for bill_id, count, listed, billed in session.exec(
            select(BillLine.bill_id, func.count(), func.sum(BillLine.list_cost), func.sum(BillLine.contracted_cost))
            .where(col(BillLine.bill_id).in_(existing)).group_by(BillLine.bill_id)).all()}
    bills = []
    for tenant_id, charges, bill in drafts:
        if bill is None and charges:
            bill = Bill(tenant_id=tenant_id, period=period, status=DRAFT, currency=currency, list_total=ZERO, total=ZERO)
            session.add(bill)
        if bill is not None:
            bills.append((bill, charges))
    session.flush()
    rows, remaining = [], []
    for bill, charges in bills:
        count, listed, billed = kept.get(bill.id, (0, ZERO, ZERO))
        if not charges and not count:
            session.delete(bill)
            continue
        rows += [_line(bill, charge).model_dump(exclude={"id"}) for charge in charges]
        bill.list_total = listed + sum((c.list_cost for c in charges), ZERO)
        bill.total = billed + sum((c.contracted_cost for c in charges), ZERO)
        bill.currency, bill.discount_percent, bill.updated_at = currency, discounts.get(bill.tenant_id, ZERO), utcnow()
        bill.usage_through = usage_through
        session.add(bill)
        remaining.append(bill)
    if rows:
        session.connection().execute(insert(BillLine.__table__), rows)
    session.flush()
    return remaining


def _key(line: BillLine | Charge) -> tuple:
    return (line.sku, line.window_start, line.window_end, Decimal(line.list_unit_price), Decimal(line.contracted_unit_price))


def _next_open_bill(session: Session, tenant_id: int, period: str, currency: str, discount: Decimal) -> Bill:
    target = next_period(period)
    while True:
        bill = session.exec(select(Bill).where(Bill.tenant_id == tenant_id, Bill.period == target)).first()
        if bill is None:
            return _new_bill(session, tenant_id, target, currency, discount)
        if bill.status == DRAFT:
            return bill
        target = next_period(target)


def _correct(session: Session, bill: Bill, charges: list[Charge], currency: str, discount: Decimal) -> int:
    """Write the difference between new charges and what was billed for a finalised period; returns lines."""
    billed = list(session.exec(select(BillLine).where(BillLine.bill_id == bill.id, BillLine.kind != KIND_CORRECTION)).all())
    billed += session.exec(
        select(BillLine).join(Bill, col(Bill.id) == BillLine.bill_id)
        .where(Bill.tenant_id == bill.tenant_id, Bill.status == FINALISED, BillLine.corrects_period == bill.period)
    ).all()
    delta: dict[tuple, list[Decimal]] = defaultdict(lambda: [ZERO, ZERO, ZERO])
    template: dict[tuple, BillLine | Charge] = {}
    for sign, items in ((-1, billed), (1, charges)):
        for item in items:
            key = _key(item)
            template.setdefault(key, item)
            for i, amount in enumerate((item.quantity, item.list_cost, item.contracted_cost)):
                delta[key][i] += sign * Decimal(amount)
    changes = {k: v for k, v in delta.items() if any(v)}
    open_bill = None
    existing = session.exec(select(BillLine).join(Bill, col(Bill.id) == BillLine.bill_id).where(
        Bill.tenant_id == bill.tenant_id, Bill.status == DRAFT, BillLine.corrects_period == bill.period)).all()
    for line in existing:
        open_bill = session.get(Bill, line.bill_id)
        session.delete(line)
    if changes and open_bill is None:
        open_bill = _next_open_bill(session, bill.tenant_id, bill.period, currency, discount)
    for key in sorted(changes, key=lambda k: (k[0], k[1])):
        source = template[key]
        quantity, list_cost, contracted_cost = changes[key]
        session.add(BillLine(
            bill_id=open_bill.id, kind=KIND_CORRECTION, sku=source.sku, unit=source.unit,
            description=f"correction of {bill.period}: {source.description}", quantity=quantity,
            list_unit_price=source.list_unit_price, list_cost=list_cost, contracted_unit_price=source.contracted_unit_price,
            contracted_cost=contracted_cost, currency=source.currency, charge_class=CORRECTION_CLASS,
            window_start=source.window_start, window_end=source.window_end, price_card_id=source.price_card_id,
            corrects_period=bill.period,
        ))
    if open_bill is not None:
        session.flush()
        if _line_count(session, open_bill) == 0:
            session.delete(open_bill)
        else:
            retotal(session, open_bill)
    return len(changes)


def run_period(session: Session, principal: Principal, period: str, *, policy: str, now: datetime | None = None) -> RunSummary:
    """Rebuild a period's usage, re-rate it, rewrite draft bills and correct finalised ones
    (a `kiln.bills.run` span when tracing is on)."""
    with span("kiln.bills.run", {"kiln.period": period, "kiln.idle_cost_policy": policy}) as current:
        summary = _run_period(session, principal, period, policy=policy, now=now)
        current.set_attributes({"kiln.bills.drafts": len(summary.drafts), "kiln.bills.corrections": summary.corrections})
    return summary


def _run_period(session: Session, principal: Principal, period: str, *, policy: str, now: datetime | None) -> RunSummary:
    principal.require_role(*WRITE_ROLES, action="run bills")
    now = now or utcnow()
    parse_period(period, now=now)
    start, end = period_bounds(period)
    summary = RunSummary(period, build_usage(session, start, end, now))
    existing = {b.tenant_id: b for b in session.exec(select(Bill).where(Bill.period == period)).all()}
    frozen = {t: Decimal(b.discount_percent) for t, b in existing.items() if b.status == FINALISED}
    cards = card_views(cards_overlapping(session, start, end))
    pieces = day_pieces(session, segments(cards, start, end))  # one pass over the usage: the bills and the days
    rating = rate_period(session, period, policy=policy, now=now, frozen=frozen, usage=segment_totals(pieces))
    discounts = current_discounts(session)
    by_tenant: dict[int, list[Charge]] = defaultdict(list)
    for charge in rating.charges:
        by_tenant[charge.tenant_id].append(charge)
    drafts = []
    for tenant_id in sorted(set(by_tenant) | set(existing)):
        bill = existing.get(tenant_id)
        if bill is not None and bill.status == FINALISED:
            discount = discounts.get(tenant_id, ZERO)
            summary.corrections += _correct(session, bill, by_tenant.get(tenant_id, []), rating.currency, discount)
        else:
            drafts.append((tenant_id, by_tenant.get(tenant_id, []), bill))
    summary.drafts = _write_drafts(session, period, drafts, rating.currency, discounts, min(now, end))
    write_days(session, period, pieces, billed_charges(rating.charges), cards, keep=frozen)
    session.execute(delete(IdleCharge).where(IdleCharge.period == period))
    session.add_all([
        IdleCharge(period=period, sku=c.sku, unit=c.unit, quantity=c.quantity, unit_price=c.list_unit_price, cost=c.list_cost,
                   currency=c.currency, window_start=c.window_start, window_end=c.window_end, policy=policy)
        for c in rating.idle
    ])
    session.flush()
    summary.idle_cost = sum((c.list_cost for c in rating.idle), ZERO)
    audit.record(session, principal, "run", "bills", period,
                 detail={"drafts": len(summary.drafts), "corrections": summary.corrections})
    return summary


def finalise_period(
    session: Session, principal: Principal, period: str, *, policy: str, tenant: str | None = None, now: datetime | None = None
) -> list[Bill]:
    """Bring a period's drafts up to date and freeze them (all tenants, or one); Conflict if already final."""
    principal.require_role(*WRITE_ROLES, action="finalise bills")
    now = now or utcnow()
    parse_period(period, now=now)
    if not has_ended(period, now):
        raise Conflict(f"period {period} has not ended yet: its bills can be finalised from {period_bounds(period)[1]:%Y-%m-%d} on")
    tenant_id = tenants_by_slug(session, [tenant])[0].id if tenant else None
    run_period(session, principal, period, policy=policy, now=now)
    statement = select(Bill).where(Bill.period == period).order_by(Bill.tenant_id)
    if tenant_id is not None:
        statement = statement.where(Bill.tenant_id == tenant_id)
    bills = list(session.exec(statement).all())
    if not bills:
        who = f" for tenant '{tenant}'" if tenant else ""
        raise NotFound(f"no bills{who} in period {period}: there was no usage to bill")
    drafts = [b for b in bills if b.status == DRAFT]
    if not drafts:
        what = f"the bill of tenant '{tenant}'" if tenant else "every bill"
        raise Conflict(f"{what} for period {period} is already finalised")
    for bill in drafts:
        bill.status, bill.finalised_at, bill.finalised_by = FINALISED, now, principal.username
        session.add(bill)
        audit.record(session, principal, "finalise", "bill", bill.id, tenant_id=bill.tenant_id,
                     detail={"period": period, "total": str(bill.total)})
    session.flush()
    return drafts


def get_bill_for(session: Session, principal: Principal, bill_id: int) -> Bill:
    """One bill of the caller's tenants; NotFound otherwise."""
    return get_tenant_owned(session, principal, Bill, bill_id, "bill")
