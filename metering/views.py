"""Reading bills, their lines and the usage behind them, as the API, the CLI and the console show them.

Every query is scoped to the caller's tenants (`Principal.scope`); another tenant's bill is
"not found". Money is returned as exact decimal strings in JSON.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from pydantic import BaseModel
from sqlmodel import Session, col, select

from kiln.auth import Principal
from kiln.db import among
from kiln.errors import NotFound
from kiln.models import Tenant
from metering.models import DRAFT, Bill, BillLine, IdleCharge, UsageRecord
from metering.money import plain, round_amount
from metering.periods import period_bounds
from metering.rating import KIND_CORRECTION, KIND_IDLE_SHARE


class BillPublic(BaseModel):
    """A bill as the API returns it; `forecast_total` extrapolates a running period to its end."""

    id: int
    tenant: str
    period: str
    status: str
    currency: str
    list_total: Decimal
    total: Decimal
    forecast_total: Decimal
    discount_percent: Decimal
    usage_through: datetime | None = None  # usage counted up to (the last bills run); the forecast's base
    created_at: datetime
    updated_at: datetime
    finalised_at: datetime | None
    finalised_by: str | None


class BillLinePublic(BaseModel):
    """One line of a bill."""

    id: int
    bill_id: int
    kind: str
    sku: str
    unit: str
    description: str
    quantity: Decimal
    list_unit_price: Decimal
    list_cost: Decimal
    contracted_unit_price: Decimal
    contracted_cost: Decimal
    currency: str
    charge_class: str | None
    window_start: datetime
    window_end: datetime
    price_card_id: int | None
    corrects_period: str | None


class BillDetail(BillPublic):
    """A bill with its lines."""

    lines: list[BillLinePublic]


class UsagePublic(BaseModel):
    """One hourly usage record."""

    id: int
    tenant: str
    vdc_id: int | None
    resource_id: str
    sku: str
    quantity: Decimal
    unit: str
    source: str
    hour: datetime


class IdleChargePublic(BaseModel):
    """Idle capacity of a period, priced at list."""

    period: str
    sku: str
    unit: str
    quantity: Decimal
    unit_price: Decimal
    cost: Decimal
    currency: str
    window_start: datetime
    window_end: datetime
    policy: str


def tenant_slugs(session: Session, ids: set[int]) -> dict[int, str]:
    """Tenant id → slug for these ids (2,000 ids are not bound one by one: `kiln.db.among`)."""
    if not ids:
        return {}
    rows = session.exec(select(Tenant.id, Tenant.slug).where(among(Tenant.id, list(ids)))).all()
    return {tenant_id: slug for tenant_id, slug in rows if tenant_id in ids}


def lines_of(session: Session, bill_id: int) -> list[BillLine]:
    """A bill's lines: usage by SKU and window, then idle shares, then corrections."""
    order = {"usage": 0, KIND_IDLE_SHARE: 1, KIND_CORRECTION: 2}
    lines = session.exec(select(BillLine).where(BillLine.bill_id == bill_id).order_by(BillLine.sku, BillLine.window_start, BillLine.id)).all()
    return sorted(lines, key=lambda line: order.get(line.kind, 3))


def extrapolate(running: Decimal, period: str, as_of: datetime | None) -> Decimal:
    """`running` (what accrued from the period's start up to `as_of`) at the period's end if it goes on
    at that rate; unchanged without `as_of` or when `as_of` is not inside the period."""
    start, end = period_bounds(period)
    if as_of is None or not start < as_of < end:
        return running
    micro = timedelta(microseconds=1)
    return running * Decimal((end - start) // micro) / Decimal((as_of - start) // micro)


def usage_through(bill: Bill) -> datetime:
    """The instant the bill's usage was counted up to: its last bills run's (bills written before
    `usage_through` was kept: when it was last updated)."""
    return bill.usage_through or bill.updated_at


def forecast_total(bill: Bill, lines: list[BillLine]) -> Decimal:
    """The bill's total at period end if usage goes on at the rate seen up to its last bills run
    (`usage_through`, not the clock: the forecast stays put between runs; corrections not extrapolated)."""
    if bill.status != DRAFT:
        return Decimal(bill.total)
    running = sum((Decimal(l.contracted_cost) for l in lines if l.kind != KIND_CORRECTION), Decimal(0))
    fixed = Decimal(bill.total) - running
    return round_amount(extrapolate(running, bill.period, usage_through(bill)) + fixed, bill.currency)


def line_public(line: BillLine) -> BillLinePublic:
    """A bill line with amounts at the currency's minor unit and prices without trailing zeros."""
    fields = line.model_dump()
    for name in ("list_cost", "contracted_cost"):
        fields[name] = round_amount(Decimal(fields[name]), line.currency)
    for name in ("quantity", "list_unit_price", "contracted_unit_price"):
        fields[name] = plain(fields[name])
    return BillLinePublic(**fields)


def bill_public(session: Session, bills: list[Bill], *, with_lines: bool = False) -> list[BillPublic]:
    """Bills as the API shows them, with tenant slugs and forecasts."""
    slugs = tenant_slugs(session, {b.tenant_id for b in bills})
    costs = {} if with_lines else line_costs(session, bills)
    result = []
    for bill in bills:
        lines = lines_of(session, bill.id) if with_lines else costs.get(bill.id, [])
        fields = bill.model_dump(exclude={"tenant_id"})
        money = {name: round_amount(Decimal(fields[name]), bill.currency) for name in ("list_total", "total")}
        public = dict(fields, **money, discount_percent=plain(bill.discount_percent), tenant=slugs.get(bill.tenant_id, "?"),
                      forecast_total=forecast_total(bill, lines))
        if with_lines:
            result.append(BillDetail(**public, lines=[line_public(l) for l in lines]))
        else:
            result.append(BillPublic(**public))
    return result


def line_costs(session: Session, bills: list[Bill]) -> dict[int, list[Any]]:
    """What `forecast_total` reads of the bills' lines (kind, contracted cost), per bill id: one query
    per period, not one per bill (2,000 bills were 2,000 queries)."""
    wanted: dict[str, set[int]] = {}
    for bill in bills:
        wanted.setdefault(bill.period, set()).add(bill.id)
    out: dict[int, list[Any]] = {}
    for period, ids in wanted.items():
        statement = (select(BillLine.bill_id, BillLine.kind, BillLine.contracted_cost)
                     .join(Bill, col(Bill.id) == BillLine.bill_id).where(Bill.period == period, among(BillLine.bill_id, list(ids))))
        for line in session.exec(statement).all():
            if line.bill_id in ids:
                out.setdefault(line.bill_id, []).append(line)
    return out


def list_bills(
    session: Session, principal: Principal, *, period: str | None = None, tenant_id: int | None = None, status: str | None = None
) -> list[Bill]:
    """Bills of the caller's tenants, newest period first, then by tenant."""
    statement = principal.scope(select(Bill), Bill.tenant_id)
    for column, value in ((Bill.period, period), (Bill.tenant_id, tenant_id), (Bill.status, status)):
        if value is not None:
            statement = statement.where(column == value)
    return list(session.exec(statement.order_by(col(Bill.period).desc(), Bill.tenant_id)).all())


def get_line(session: Session, principal: Principal, bill_id: int, line_id: int) -> tuple[Bill, BillLine]:
    """A bill line of the caller's tenants; NotFound otherwise."""
    from metering.bills import get_bill_for  # rating and usage code: `kiln bills list` does without it

    bill = get_bill_for(session, principal, bill_id)
    line = session.get(BillLine, line_id)
    if line is None or line.bill_id != bill.id:
        raise NotFound(f"line {line_id} of bill {bill_id} not found")
    return bill, line


def line_usage(
    session: Session, principal: Principal, bill_id: int, line_id: int, *, limit: int = 1000, offset: int = 0
) -> list[UsageRecord]:
    """Drill-down: the hourly usage records behind a usage or correction line (none for idle shares)."""
    bill, line = get_line(session, principal, bill_id, line_id)
    if line.kind == KIND_IDLE_SHARE:
        return []
    statement = (
        select(UsageRecord)
        .where(UsageRecord.tenant_id == bill.tenant_id, UsageRecord.sku == line.sku)
        .where(col(UsageRecord.hour) >= line.window_start, col(UsageRecord.hour) < line.window_end)
        .order_by(UsageRecord.hour, UsageRecord.resource_id, UsageRecord.source)
    )
    return list(session.exec(statement.offset(offset).limit(limit)).all())


def usage_public(session: Session, rows: list[UsageRecord]) -> list[UsagePublic]:
    """Usage rows with tenant slugs."""
    slugs = tenant_slugs(session, {r.tenant_id for r in rows})
    return [UsagePublic(**r.model_dump(exclude={"tenant_id"}), tenant=slugs.get(r.tenant_id, "?")) for r in rows]


def idle_charges(session: Session, period: str) -> list[IdleCharge]:
    """The idle capacity of a period (global roles only see it: it is the operator's figure)."""
    return list(session.exec(select(IdleCharge).where(IdleCharge.period == period).order_by(IdleCharge.sku, IdleCharge.window_start)).all())
