"""Each tenant's rated usage per UTC day, kept beside the bills (`usage_day`).

The console's month sums (spend per day, Kiln's cost and request-hours of each Kubernetes
namespace) used to be summed from the month's hourly usage records — 13 M rows a month at
10,000 nodes — whenever the period's bills changed, i.e. after every hourly bills run of the
running month. Now the bills run keeps them: it sums the period's usage once per tenant, SKU,
UTC day and namespace (`day_pieces`), rates the per-tenant totals of those pieces exactly as
before (`segment_totals`: the same integer sums, so the same bills), and writes each piece's
share of the bill line that charged it (`write_days`), in the bills run's transaction.

Shares are whole minor units split by largest remainder in proportion to the exact quantity
(`metering.money.allocate`), so a tenant's rows add up to its usage lines to the cent. Idle
shares and corrections are not usage of a day and have no rows. A finalised bill's rows are
left as they were when it was finalised; a re-run of a draft period replaces its rows.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal

from sqlalchemy import BigInteger, cast, delete, func, literal_column
from sqlmodel import Session, col, select

from kiln.db import upsert
from metering import skus
from metering.models import FINALISED, Bill, BillLine, UsageDay, UsageRecord
from metering.money import allocate
from metering.rating import KIND_USAGE, CardView, Charge, UsageTotal, card_at
from metering.usage import SOURCE_K8S, parts_of, parts_sum

K8S_PREFIX = "k8s:"
SECONDS_PER_DAY = 86_400
KEY = ("period", "tenant_id", "day", "sku", "namespace")


@dataclass(frozen=True)
class DayPiece:
    """A tenant's exact usage of one SKU on one UTC day within one price-card segment of the period
    (per Kubernetes namespace; '' for other usage)."""

    tenant_id: int
    sku: str
    unit: str
    namespace: str
    day: date
    segment: tuple[datetime, datetime]
    parts: int


@dataclass(frozen=True)
class Billed:
    """What one usage line charged a tenant for a SKU at one price card (None: no card in force)."""

    tenant_id: int
    sku: str
    card_id: int | None
    currency: str
    list_cost: Decimal
    contracted_cost: Decimal


EPOCH = date(1970, 1, 1)


def _utc_day(session: Session) -> object:
    """SQL for the UTC day of `usage_record.hour`: days since 1970-01-01 on PostgreSQL (an integer
    key the planner hash-aggregates; a date cast made it sort a month of rows on disk), ISO text on SQLite."""
    if session.get_bind().dialect.name == "postgresql":
        return cast(func.extract("epoch", UsageRecord.hour), BigInteger).op("/")(literal_column(str(SECONDS_PER_DAY)))
    return func.substr(UsageRecord.hour, 1, 10)  # SQLite keeps UTC timestamps as ISO text


def _day(value: int | str) -> date:
    return EPOCH + timedelta(days=value) if isinstance(value, int) else date.fromisoformat(value)


def day_pieces(session: Session, window_segments: Sequence[tuple[datetime, datetime]]) -> list[DayPiece]:
    """The period's usage summed exactly in SQL per tenant, SKU, UTC day and namespace, segment by segment.

    Two sums a segment: every source per tenant, SKU and day (Kubernetes rows then dropped), and,
    only where there are any, the Kubernetes rows per namespace too: grouping every row by its
    resource as well made PostgreSQL sort the month's rows instead of hashing them."""
    day = _utc_day(session)
    pieces = []
    for start, end in window_segments:
        hours = (col(UsageRecord.hour) >= start, col(UsageRecord.hour) < end)
        keys = (UsageRecord.tenant_id, UsageRecord.sku, UsageRecord.unit, UsageRecord.source, day)
        k8s = False
        for tenant_id, sku, unit, source, on, parts in session.exec(select(*keys, parts_sum()).where(*hours).group_by(*keys)).all():
            if source == SOURCE_K8S:
                k8s = True
            else:
                pieces.append(DayPiece(tenant_id, sku, unit, "", _day(on), (start, end), parts_of(parts)))
        if k8s:
            keys = (UsageRecord.tenant_id, UsageRecord.sku, UsageRecord.unit, UsageRecord.resource_id, day)
            statement = select(*keys, parts_sum()).where(*hours, UsageRecord.source == SOURCE_K8S).group_by(*keys)
            for tenant_id, sku, unit, resource, on, parts in session.exec(statement).all():
                pieces.append(DayPiece(tenant_id, sku, unit, resource.removeprefix(K8S_PREFIX), _day(on), (start, end),
                                       parts_of(parts)))
    return pieces


def segment_totals(pieces: Iterable[DayPiece]) -> list[UsageTotal]:
    """Per tenant, SKU and segment: the exact sum of the pieces, as rating takes it (`metering.bills.usage_by_segment`)."""
    totals: dict[tuple, int] = defaultdict(int)
    for piece in pieces:
        totals[(piece.tenant_id, piece.sku, piece.unit, piece.segment)] += piece.parts
    return [UsageTotal(tenant, sku, unit, *segment, parts) for (tenant, sku, unit, segment), parts in totals.items()]


def billed_charges(charges: Iterable[Charge]) -> list[Billed]:
    """The tenants' usage charges of a rating (idle capacity and idle shares left out)."""
    return [Billed(c.tenant_id, c.sku, c.price_card_id, c.currency, c.list_cost, c.contracted_cost)
            for c in charges if c.kind == KIND_USAGE and c.tenant_id is not None]


def day_rows(period: str, pieces: Sequence[DayPiece], billed: Iterable[Billed], cards: Sequence[CardView]) -> list[dict]:
    """`usage_day` rows: each piece's share of the line that charged it, summed per tenant, day, SKU and namespace."""
    by_line: dict[tuple, list[DayPiece]] = defaultdict(list)
    for piece in pieces:
        card = card_at(cards, piece.sku, piece.segment[0])  # as `metering.rating.rate` picks it
        by_line[(piece.tenant_id, piece.sku, card.id if card else None)].append(piece)
    rows: dict[tuple, dict] = {}
    for piece in pieces:
        key = (piece.tenant_id, piece.day, piece.sku, piece.namespace)
        if key not in rows:
            rows[key] = {"period": period, "tenant_id": piece.tenant_id, "day": piece.day, "sku": piece.sku,
                         "unit": piece.unit, "namespace": piece.namespace, "quantity_parts": 0,
                         "list_cost": Decimal(0), "contracted_cost": Decimal(0)}
        rows[key]["quantity_parts"] += piece.parts
    for line in billed:
        shares = by_line.get((line.tenant_id, line.sku, line.card_id), [])
        weights = [Decimal(p.parts) for p in shares]
        for name, total in (("list_cost", line.list_cost), ("contracted_cost", line.contracted_cost)):
            for piece, amount in zip(shares, allocate(Decimal(total), weights, line.currency), strict=True):
                rows[(piece.tenant_id, piece.day, piece.sku, piece.namespace)][name] += amount
    return list(rows.values())


def write_days(session: Session, period: str, pieces: Sequence[DayPiece], billed: Iterable[Billed],
               cards: Sequence[CardView], *, keep: Iterable[int] = ()) -> int:
    """Replace the period's `usage_day` rows but those of the tenants in `keep` (finalised bills); returns rows written."""
    kept = set(keep)
    statement = delete(UsageDay).where(UsageDay.period == period)
    if kept:
        finalised = select(Bill.tenant_id).where(Bill.period == period, Bill.status == FINALISED)
        statement = statement.where(col(UsageDay.tenant_id).not_in(finalised))
    session.execute(statement)
    rows = [row for row in day_rows(period, pieces, billed, cards) if row["tenant_id"] not in kept]
    upsert(session, UsageDay, rows, KEY, update=None)
    return len(rows)


def backfill(session: Session) -> int:
    """Fill `usage_day` for every period with bills from its usage records and its bills' usage lines
    (migration 0024); returns the rows written."""
    from metering.bills import card_views  # metering.bills writes through this module
    from metering.periods import period_bounds
    from metering.price_cards import cards_overlapping
    from metering.rating import segments

    written = 0
    for period in session.exec(select(Bill.period).distinct().order_by(Bill.period)).all():
        start, end = period_bounds(period)
        cards = card_views(cards_overlapping(session, start, end))
        lines = session.exec(
            select(Bill.tenant_id, BillLine.sku, BillLine.price_card_id, BillLine.currency, BillLine.list_cost,
                   BillLine.contracted_cost)
            .join(Bill, col(Bill.id) == BillLine.bill_id).where(Bill.period == period, BillLine.kind == KIND_USAGE)
        ).all()
        billed = [Billed(t, sku, card, currency, Decimal(listed), Decimal(cost)) for t, sku, card, currency, listed, cost in lines]
        rows = day_rows(period, day_pieces(session, segments(cards, start, end)), billed, cards)
        upsert(session, UsageDay, rows, KEY, update=None)
        written += len(rows)
    return written


def metered_tenants(session: Session, period: str, tenant_ids: frozenset[int] | None = None) -> frozenset[int] | None:
    """The tenants (of `tenant_ids`, or all) that may have metered energy (`kwh` usage) in the period:
    those the last bills run found some for, and those whose bill is finalised (their days are kept
    as they were, so later energy would not show here). None where no bills run kept the period's
    days (usage built outside one): then any tenant may have some.

    Only the bills run writes usage records (`metering.usage.build_usage`), in the transaction that
    writes these rows, so a tenant without a `kwh` row here has no energy row there."""
    if session.exec(select(UsageDay.id).where(UsageDay.period == period).limit(1)).first() is None:
        return tenant_ids
    statement = select(UsageDay.tenant_id).distinct().where(UsageDay.period == period, UsageDay.sku == skus.KWH)
    finalised = select(Bill.tenant_id).where(Bill.period == period, Bill.status == FINALISED)
    found = set(session.exec(statement).all()) | set(session.exec(finalised).all())
    return frozenset(found if tenant_ids is None else found & tenant_ids)
