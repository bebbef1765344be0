"""Data for the costs page: spend to date and forecast, by SKU and by day, budgets, bills and the
usage behind a bill line.

Everything goes through metering's own functions, scoped to the caller (`Principal.scope`,
`metering.bills.get_bill_for`): bills and forecasts (`metering.views`), budgets and what they
have spent (`metering.budgets.spend`), and the daily figures are the days the bills run keeps beside the
bills (`metering.usage_days`). Heavy sums run in SQL, never per usage record in Python. Money
stays Decimal.
"""

from __future__ import annotations

import csv
import io
import threading
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import func
from sqlmodel import Session, col, select

from kiln.auth import Principal
from kiln.db import MANY_IDS
from kiln.models import Tenant
from metering import budgets as budget_service
from metering import views
from metering.bills import billing_currency, get_bill_for
from metering.carbon import EnergyLedger, emissions
from metering.models import Bill, BillLine, Budget, BudgetAlert, UsageDay, UsageRecord
from metering.money import plain, round_amount
from metering.periods import floor_hour, next_period, period_bounds, period_of
from metering.rating import KIND_IDLE_SHARE
from metering.usage import parts_sum, summed
from metering.usage_days import metered_tenants

ZERO = Decimal(0)
USAGE_PREVIEW_ROWS = 48
CACHE_ENTRIES = 64
_CACHE: OrderedDict[tuple, Any] = OrderedDict()
_CACHE_LOCK = threading.Lock()
T = TypeVar("T")


@dataclass
class SpendSummary:
    """The bills of one period the caller chose: what was spent, the forecast, and the bills themselves."""

    period: str
    currency: str
    to_date: Decimal = ZERO
    list_total: Decimal = ZERO
    forecast: Decimal = ZERO
    bills: list[views.BillPublic] = field(default_factory=list)


def bill_periods(session: Session, principal: Principal) -> list[str]:
    """Periods in which the caller's tenants have bills, newest first."""
    statement = principal.scope(select(Bill.period).distinct(), Bill.tenant_id)
    return sorted(session.exec(statement).all(), reverse=True)


def _bills(session: Session, principal: Principal, period: str, tenant_id: int | None) -> list[Any]:
    """`views.list_bills` of the period as plain rows, not Bill objects (2,000 of them cost a tenth of a second)."""
    statement = principal.scope(select(Bill.__table__).where(Bill.period == period), Bill.tenant_id)
    if tenant_id is not None:
        statement = statement.where(Bill.tenant_id == tenant_id)
    return list(session.connection().execute(statement.order_by(Bill.tenant_id)).all())


def spend_summary(session: Session, principal: Principal, period: str, tenant_id: int | None = None) -> SpendSummary:
    """The period's bills of the caller's tenants (or one of them) with totals and forecasts.

    Lines are read in one query for all bills and handed to `metering.views.forecast_total`."""
    bills = _bills(session, principal, period, tenant_id)
    lines: dict[int, list[BillLine]] = defaultdict(list)
    if bills:
        # what `forecast_total` reads, of the same bills (a join, not a list of 2,000 bill ids)
        statement = (select(BillLine.bill_id, BillLine.kind, BillLine.contracted_cost)
                     .join(Bill, col(Bill.id) == BillLine.bill_id).where(Bill.period == period))
        if tenant_id is not None:
            statement = statement.where(Bill.tenant_id == tenant_id)
        for line in session.exec(principal.scope(statement, Bill.tenant_id)).all():
            lines[line.bill_id].append(line)
    slugs = views.tenant_slugs(session, {b.tenant_id for b in bills})
    summary = SpendSummary(period=period, currency=bills[0].currency if bills else billing_currency(session, []))
    for bill in bills:
        forecast = round_amount(views.forecast_total(bill, lines[bill.id]), bill.currency)
        fields = {k: v for k, v in bill._asdict().items() if k not in ("tenant_id", "list_total", "total", "discount_percent")}
        public = views.BillPublic(**fields, tenant=slugs.get(bill.tenant_id, "?"), forecast_total=forecast,
                                  list_total=round_amount(Decimal(bill.list_total), bill.currency),
                                  total=round_amount(Decimal(bill.total), bill.currency),
                                  discount_percent=plain(bill.discount_percent))
        summary.bills.append(public)
        summary.to_date += Decimal(bill.total)
        summary.list_total += Decimal(bill.list_total)
        summary.forecast += forecast
    return summary


def spend_by_sku(session: Session, principal: Principal, period: str, tenant_id: int | None = None) -> dict[str, Decimal]:
    """Billed amount (after discounts) per SKU on the period's bills, summed in SQL, largest first."""
    statement = (
        select(BillLine.sku, func.sum(BillLine.contracted_cost))
        .join(Bill, col(Bill.id) == BillLine.bill_id)
        .where(Bill.period == period)
        .group_by(BillLine.sku)
    )
    statement = principal.scope(statement, Bill.tenant_id)
    if tenant_id is not None:
        statement = statement.where(Bill.tenant_id == tenant_id)
    totals = {sku: Decimal(amount) for sku, amount in session.exec(statement).all()}
    return dict(sorted(totals.items(), key=lambda item: (-item[1], item[0])))


def bill_discounts(session: Session, period: str) -> dict[int, Decimal]:
    """Each tenant's discount as its bill of the period has it (frozen once finalised)."""
    statement = select(Bill.tenant_id, Bill.discount_percent).where(Bill.period == period)
    return {tenant_id: Decimal(percent) for tenant_id, percent in session.exec(statement).all()}


def _bills_version(session: Session, period: str) -> tuple:
    """Changes whenever a bills run rewrites the period's usage: it touches (or adds, or drops) one of
    the period's draft bills. A run for another period (the hourly one, for the running month)
    leaves it as it was: usage is rebuilt a period at a time."""
    return tuple(session.exec(select(func.count(), func.max(Bill.updated_at)).where(Bill.period == period)).one())


def caller_scope(principal: Principal) -> Any:
    """What a caller may see, as a cache key part: all tenants, or their tenant ids."""
    return "all" if principal.sees_all_tenants else tuple(sorted(principal.tenant_ids))


def remembered(session: Session, name: str, period: str, parts: tuple, compute: Callable[[], T]) -> T:
    """`compute()`, or its result from an earlier call with the same parts and unchanged bills.

    For sums over a period's hourly usage records (a million rows a month for 1,000 nodes): the
    key holds the database, `name`, the period, the caller's `parts` (scope, filters, price
    cards...) and the period's bills' version, which every bills run that rewrites the period's
    usage changes."""
    key = (str(session.get_bind().url), name, period, parts, _bills_version(session, period))
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    result = compute()
    with _CACHE_LOCK:
        _CACHE[key] = result
        while len(_CACHE) > CACHE_ENTRIES:
            _CACHE.popitem(last=False)
    return result


def remembered_between(session: Session, name: str, start: datetime, end: datetime, parts: tuple,
                       compute: Callable[[], T]) -> T:
    """`remembered` for a sum over the hourly usage records of [start, end), which may span periods:
    the key holds the range's whole hours (records are stamped at whole hours, so a range ending
    now holds the same records all hour long) and the bills version of every period it touches."""
    first, last = _next_hour(start), _next_hour(end)
    periods = [period_of(first)]
    while last > first and period_bounds(periods[-1])[1] < last:
        periods.append(next_period(periods[-1]))
    versions = tuple(_bills_version(session, period) for period in periods[:-1])
    return remembered(session, name, periods[-1], (*parts, first, last, versions), compute)


def _next_hour(at: datetime) -> datetime:
    """The first whole hour at or after `at`."""
    hour = floor_hour(at)
    return hour if hour == at else hour + timedelta(hours=1)


def spend_by_day(
    session: Session, principal: Principal, period: str, tenant_id: int | None = None
) -> dict[str, dict[str, Decimal]]:
    """`{SKU: {YYYY-MM-DD: amount}}`: the period's usage lines (after discounts) per UTC day.

    Read from the days the last bills run kept (`metering.usage_days`: each day's share of the
    line that charged it, so the days add up to the bills' usage lines to the cent), summed in
    SQL per SKU and day: a few thousand rows a month, never the hourly usage. Idle shares and
    corrections are not usage of a day, so they are left out."""
    day = col(UsageDay.day)
    statement = (select(UsageDay.sku, day, func.sum(UsageDay.contracted_cost))
                 .where(UsageDay.period == period).group_by(UsageDay.sku, day).order_by(UsageDay.sku, day))
    statement = principal.scope(statement, UsageDay.tenant_id)
    if tenant_id is not None:
        statement = statement.where(UsageDay.tenant_id == tenant_id)
    out: dict[str, dict[str, Decimal]] = defaultdict(dict)
    for sku, on, amount in session.exec(statement).all():
        out[sku][on.isoformat()] = Decimal(amount)
    return dict(out)


def budget_rows(session: Session, principal: Principal, period: str, tenant_id: int | None = None,
                carbon: budget_service.CarbonContext | None = None) -> list[dict[str, Any]]:
    """The caller's budgets with what each has spent in the period (`metering.budgets.spend`; kg
    CO2e for emissions budgets, with `carbon`), its forecast at period end (`metering.budgets.forecast`)
    and its thresholds."""
    # `list_budgets`'s rows as plain rows, not objects (2,000 Budget objects were a tenth of a second)
    statement = principal.scope(select(Budget.__table__).order_by(Budget.id), Budget.tenant_id)
    if tenant_id is not None:
        statement = statement.where(Budget.tenant_id == tenant_id)
    budgets = list(session.connection().execute(statement).all())
    rows = []
    bills = budget_service.period_bills(session, period) if len(budgets) > 1 else None
    for budget, public in zip(budgets, budget_service.to_public(session, budgets), strict=True):
        spent = budget_service.spend(session, budget, period, carbon, bills)
        forecast = budget_service.forecast(session, budget, period, spent, bills)
        amount = Decimal(budget.amount)
        rows.append({"name": public.name, "tenant": public.tenant, "vdc": public.vdc,
                     "currency": public.currency or "kg CO2e",
                     "amount": public.amount, "spent": spent, "percent": (spent * 100 / amount).quantize(Decimal("0.1")),
                     "forecast": forecast, "forecast_percent": (forecast * 100 / amount).quantize(Decimal("0.1")),
                     "thresholds": list(public.thresholds)})
    return rows


def budget_alerts(
    session: Session, principal: Principal, period: str, tenant_id: int | None = None
) -> list[budget_service.AlertPublic]:
    """Budget and quota alerts of the caller's tenants raised in the period, newest first."""
    alerts = [a for a in budget_service.list_alerts(session, principal, period) if tenant_id is None or a.tenant_id == tenant_id]
    return budget_service.alerts_public(session, alerts)


def _alerts_of(statement: Any, principal: Principal, period: str, tenant_id: int | None) -> Any:
    """`statement` over the period's alerts of the caller's tenants (VDC-wide ones to global roles only)."""
    statement = principal.scope(statement.where(BudgetAlert.period == period), BudgetAlert.tenant_id)
    return statement if tenant_id is None else statement.where(BudgetAlert.tenant_id == tenant_id)


def alert_count(session: Session, principal: Principal, period: str, tenant_id: int | None = None) -> int:
    """How many alerts `budget_alerts` lists."""
    return session.exec(_alerts_of(select(func.count()).select_from(BudgetAlert), principal, period, tenant_id)).one()


def alert_rows(session: Session, principal: Principal, period: str, tenant_id: int | None, offset: int,
               limit: int) -> list[Any]:
    """`limit` of the alerts `budget_alerts` lists, from `offset`, in its order (newest first): when,
    tenant slug, threshold and message only, read in SQL."""
    statement = (select(BudgetAlert.created_at, Tenant.slug.label("tenant"), BudgetAlert.threshold, BudgetAlert.message)
                 .outerjoin(Tenant, col(Tenant.id) == BudgetAlert.tenant_id))
    statement = _alerts_of(statement, principal, period, tenant_id).order_by(col(BudgetAlert.id).desc())
    return list(session.exec(statement.offset(offset).limit(limit)).all())


def bill_detail(session: Session, principal: Principal, bill_id: int) -> views.BillDetail:
    """One bill of the caller's tenants with its lines; NotFound otherwise."""
    bill = get_bill_for(session, principal, bill_id)
    return views.bill_public(session, [bill], with_lines=True)[0]


LINES_PER_PAGE = 25
HUNDRED = Decimal(100)


def line_discount(line: views.BillLinePublic) -> Decimal | None:
    """The line's discount in percent off its list unit price (None where there is no list price)."""
    listed = Decimal(line.list_unit_price)
    if not listed:
        return None
    return ((listed - Decimal(line.contracted_unit_price)) * HUNDRED / listed).quantize(Decimal("0.01"))


def pages_of(count: int, per_page: int) -> int:
    """How many pages `count` rows take (at least one)."""
    return max(1, -(-count // per_page))


def lines_page(detail: views.BillDetail, page: int) -> tuple[list[views.BillLinePublic], int]:
    """One page (from 0; clamped) of the bill's lines, and the page it is."""
    page = min(max(page, 0), pages_of(len(detail.lines), LINES_PER_PAGE) - 1)
    return detail.lines[page * LINES_PER_PAGE:(page + 1) * LINES_PER_PAGE], page


@dataclass
class LineUsage:
    """What a bill line was rated from: totals per resource and one page of its hourly records."""

    line: views.BillLinePublic
    by_resource: list[tuple[str, str, Decimal]]  # (resource id, source, quantity)
    hours: list[views.UsagePublic]
    hour_count: int
    page: int = 0


def line_usage(session: Session, principal: Principal, bill_id: int, line_id: int, page: int = 0) -> LineUsage:
    """Drill-down from a bill line (NotFound unless the bill is the caller's tenants'): the usage
    behind it, its hourly records `USAGE_PREVIEW_ROWS` a page (`page` from 0, clamped)."""
    bill, line = views.get_line(session, principal, bill_id, line_id)
    by_resource: list[tuple[str, str, Decimal]] = []
    count = 0
    if line.kind != KIND_IDLE_SHARE:
        where = (UsageRecord.tenant_id == bill.tenant_id, UsageRecord.sku == line.sku,
                 col(UsageRecord.hour) >= line.window_start, col(UsageRecord.hour) < line.window_end)
        statement = (select(UsageRecord.resource_id, UsageRecord.source, parts_sum(), func.count())
                     .where(*where).group_by(UsageRecord.resource_id, UsageRecord.source).order_by(UsageRecord.resource_id))
        for resource_id, source, parts, hours in session.exec(statement).all():
            by_resource.append((resource_id, source, summed(parts)))
            count += hours
    page = min(max(page, 0), pages_of(count, USAGE_PREVIEW_ROWS) - 1)
    rows = views.line_usage(session, principal, bill_id, line_id, limit=USAGE_PREVIEW_ROWS, offset=page * USAGE_PREVIEW_ROWS)
    return LineUsage(views.line_public(line), by_resource, views.usage_public(session, rows), count, page)


BILL_CSV_HEADER = ("bill_id", "tenant", "period", "status", "line_id", "kind", "sku", "description", "quantity", "unit",
                   "list_unit_price", "list_cost", "contracted_unit_price", "contracted_cost", "currency",
                   "window_start", "window_end")


def bill_csv(detail: views.BillDetail) -> bytes:
    """A bill as CSV: one row per line, then a `total` row with the bill's list total and total."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(BILL_CSV_HEADER)
    head = (detail.id, detail.tenant, detail.period, detail.status)
    for line in detail.lines:
        writer.writerow((*head, line.id, line.kind, line.sku, line.description, line.quantity, line.unit,
                         line.list_unit_price, line.list_cost, line.contracted_unit_price, line.contracted_cost,
                         line.currency, f"{line.window_start:%Y-%m-%dT%H:%M:%SZ}", f"{line.window_end:%Y-%m-%dT%H:%M:%SZ}"))
    writer.writerow((*head, "", "total", "", "", "", "", "", detail.list_total, "", detail.total, detail.currency, "", ""))
    return out.getvalue().encode()


def emissions_summary(session: Session, principal: Principal, period: str, tenant_id: int | None,
                      carbon: budget_service.CarbonContext) -> dict[str, Any]:
    """The caller's (or one tenant's) kWh and kg CO2e of the period, per day too; idle energy for
    global roles looking at all tenants (`metering.carbon`, as the API reports it).

    The energy rows are read for the caller's tenants that have any (`metering.usage_days.metered_tenants`):
    without that, the period's whole index of usage was scanned for them, even for one tenant's member."""
    scope = None if principal.sees_all_tenants else frozenset(principal.tenant_ids)
    metered = metered_tenants(session, period, scope)
    wanted = metered if metered is not None and len(metered) <= MANY_IDS else scope
    ledger = EnergyLedger(session, *period_bounds(period), carbon.default_zone, wanted)
    report = emissions(session, principal, period, carbon.default_zone, carbon.embodied, ledger=ledger)
    slugs = dict(session.exec(select(Tenant.id, Tenant.slug)).all())
    rows = [r for r in report.tenants if tenant_id is None or r.tenant == slugs.get(tenant_id)]
    shown = {t for t, slug in slugs.items() if any(r.tenant == slug for r in rows)}
    return {
        "kwh": sum((r.kwh for r in rows), Decimal(0)), "kg_co2e": sum((r.kg_co2e for r in rows), Decimal(0)),
        "embodied_kg_co2e": sum((r.embodied_kg_co2e for r in rows), Decimal(0)),
        "kwh_without_intensity": sum((r.kwh_without_intensity for r in rows), Decimal(0)),
        "idle_kwh": report.idle_kwh if tenant_id is None else None,
        "idle_kg_co2e": report.idle_kg_co2e if tenant_id is None else None,
        "per_day": ledger.per_day(shown),
    }
