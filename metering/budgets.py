"""Budgets per tenant (or tenant within a VDC) per period, and alerts sent once per threshold.

`check_alerts` compares each budget's spend in a period (the tenant's bill total; for a VDC
budget, the tenant's usage in that VDC rated like the bill; for an emissions budget, unit
`kg-co2e`, the tenant's kg CO2e as `metering.carbon` reports them, energy and embodied) with
its thresholds (e.g. 50, 80, 100 %), and each VDC GPU-hours quota (`max_gpu_hours` of a VDC or of a tenant's grant) with
`QUOTA_THRESHOLDS`. A crossed threshold becomes one `budget_alert` row — unique per subject,
period and threshold, so it is raised once — and is POSTed as JSON to `budget_webhook_url`.
A budget's *forecast* (`forecast`: its spend at period end at the rate seen up to the tenant's
last bills run) crossing a threshold its spend has not crossed yet is raised too, once, as
kind `budget-forecast` (subject `forecast:budget:ID`), so the warning comes before the money is gone.
An alert whose delivery failed is retried on the next check until the webhook answers 2xx.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlmodel import Session, col, select

from fleet.tenancy_models import Vdc, VdcTenant
from kiln import audit
from kiln.auth import Principal
from kiln.db import utcnow
from kiln.errors import NotFound
from kiln.models import Tenant
from kiln.roles import Role
from kiln.settings import Settings
from kiln.tenants import Slug, get_tenant_owned, visible_tenant
from metering import skus
from metering.bills import DRAFT, billing_currency, card_views, current_discounts, usage_by_segment
from metering.carbon import emissions
from metering.models import Bill, BillLine, Budget, BudgetAlert, UsageRecord
from metering.money import check_currency, parse_decimal, plain
from metering.periods import parse_period, period_bounds
from metering.price_cards import cards_overlapping
from metering.rating import rate, segments
from metering.usage import parts_sum, summed
from metering.views import extrapolate, forecast_total, usage_through

if TYPE_CHECKING:
    import httpx

WRITE_ROLES = (Role.INFRA_ADMIN, Role.FINANCE, Role.TENANT_ADMIN)
DEFAULT_THRESHOLDS = [50, 80, 100]
QUOTA_THRESHOLDS = (80, 100)
KIND_BUDGET, KIND_FORECAST, KIND_QUOTA = "budget", "budget-forecast", "gpu-hours"


def _thresholds(value: list[int]) -> list[int]:
    if not value:
        raise ValueError("give at least one threshold, e.g. [50, 80, 100]")
    if any(t < 1 or t > 1000 for t in value):
        raise ValueError("thresholds are percentages between 1 and 1000")
    if len(set(value)) != len(value):
        raise ValueError("thresholds must not repeat")
    return sorted(value)


class BudgetCreate(BaseModel):
    """A budget: an amount per period for a tenant (or the tenant's use of one VDC)."""

    model_config = ConfigDict(extra="forbid")

    tenant: Slug
    vdc: str | None = Field(default=None, description="Limit the budget to the tenant's usage in this VDC.")
    name: str = Field(min_length=1, max_length=100)
    amount: Decimal = Field(description="Per period (calendar month): spend in `currency`, or kg CO2e.")
    unit: Literal["money", "kg-co2e"] = Field(default="money", description="`kg-co2e`: a budget of emissions.")
    currency: str | None = Field(default=None, description="The spend's currency (money budgets only).")
    thresholds: list[int] = Field(default_factory=lambda: list(DEFAULT_THRESHOLDS), description="Percent of the amount.")

    _amount = field_validator("amount", mode="before")(lambda cls, v: _positive(v))
    _currency = field_validator("currency")(lambda cls, v: None if v is None else check_currency(v))
    _levels = field_validator("thresholds")(lambda cls, v: _thresholds(v))

    @model_validator(mode="after")
    def _unit_fits(self) -> BudgetCreate:
        if self.unit == "money" and self.currency is None:
            raise ValueError("currency: a money budget needs its currency, e.g. USD")
        if self.unit == "kg-co2e" and self.currency is not None:
            raise ValueError("currency: an emissions budget (kg-co2e) has no currency; leave it out")
        if self.unit == "kg-co2e" and self.vdc is not None:
            raise ValueError("vdc: emissions budgets are tenant-wide; leave the VDC out")
        return self


class BudgetUpdate(BaseModel):
    """A budget's name, amount or thresholds."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=100)
    amount: Decimal | None = None
    thresholds: list[int] | None = None

    _amount = field_validator("amount", mode="before")(lambda cls, v: None if v is None else _positive(v))
    _levels = field_validator("thresholds")(lambda cls, v: None if v is None else _thresholds(v))


def _positive(value: Any) -> Decimal:
    amount = parse_decimal(value, "amount", places=6)
    if amount <= 0:
        raise ValueError("amount must be more than 0")
    return amount


class BudgetPublic(BaseModel):
    """A budget as the API returns it."""

    id: int
    tenant: str
    vdc: str | None
    name: str
    amount: Decimal
    unit: str
    currency: str | None
    thresholds: list[int]


class AlertPublic(BaseModel):
    """A raised alert and whether the webhook has it."""

    id: int
    kind: str
    subject: str
    tenant: str | None
    period: str
    threshold: int
    value: Decimal
    limit_value: Decimal
    message: str
    created_at: datetime
    delivered_at: datetime | None
    attempts: int
    last_error: str | None


def to_public(session: Session, budgets: list[Budget]) -> list[BudgetPublic]:
    """Budgets with tenant slugs and VDC names."""
    slugs = dict(session.exec(select(Tenant.id, Tenant.slug)).all())
    vdcs = dict(session.exec(select(Vdc.id, Vdc.name)).all())
    return [BudgetPublic(id=b.id, tenant=slugs.get(b.tenant_id, "?"), vdc=vdcs.get(b.vdc_id), name=b.name,
                         amount=plain(b.amount), unit=b.unit, currency=b.currency or None, thresholds=b.thresholds)
            for b in budgets]


def alerts_public(session: Session, alerts: list[BudgetAlert]) -> list[AlertPublic]:
    """Alerts with tenant slugs."""
    slugs = dict(session.exec(select(Tenant.id, Tenant.slug)).all())
    return [AlertPublic(**a.model_dump(exclude={"tenant_id", "budget_id", "vdc_id", "payload"}),
                        tenant=slugs.get(a.tenant_id)) for a in alerts]


def list_budgets(session: Session, principal: Principal) -> list[Budget]:
    """Budgets of the caller's tenants."""
    return list(session.exec(principal.scope(select(Budget).order_by(Budget.id), Budget.tenant_id)).all())


def get_budget(session: Session, principal: Principal, budget_id: int) -> Budget:
    """One budget of the caller's tenants; NotFound otherwise."""
    return get_tenant_owned(session, principal, Budget, budget_id, "budget")


def create_budget(session: Session, principal: Principal, data: BudgetCreate) -> Budget:
    """Create a budget (infra-admin, finance, or a tenant admin for their tenant)."""
    tenant = visible_tenant(session, principal, data.tenant)
    principal.require_role(*WRITE_ROLES, action="set budgets")
    vdc_id = None
    if data.vdc:
        vdc_id = session.exec(select(Vdc.id).join(VdcTenant, col(VdcTenant.vdc_id) == Vdc.id)
                              .where(Vdc.name == data.vdc, VdcTenant.tenant_id == tenant.id)).first()
        if vdc_id is None:
            raise NotFound(f"VDC '{data.vdc}' is not granted to tenant '{tenant.slug}'")
    budget = Budget(tenant_id=tenant.id, vdc_id=vdc_id, **data.model_dump(exclude={"tenant", "vdc", "currency"}),
                    currency=data.currency or "")
    session.add(budget)
    session.flush()
    audit.record(session, principal, "create", "budget", budget.id, tenant_id=tenant.id, detail={"amount": str(data.amount)})
    return budget


def update_budget(session: Session, principal: Principal, budget_id: int, data: BudgetUpdate) -> Budget:
    """Change a budget's name, amount or thresholds."""
    budget = get_budget(session, principal, budget_id)
    principal.require_role(*WRITE_ROLES, action="set budgets")
    budget.sqlmodel_update({k: v for k, v in data.model_dump(exclude_unset=True).items() if v is not None})
    session.add(budget)
    session.flush()
    audit.record(session, principal, "update", "budget", budget.id, tenant_id=budget.tenant_id)
    return budget


def delete_budget(session: Session, principal: Principal, budget_id: int) -> None:
    """Delete a budget and its alerts."""
    budget = get_budget(session, principal, budget_id)
    principal.require_role(*WRITE_ROLES, action="set budgets")
    audit.record(session, principal, "delete", "budget", budget.id, tenant_id=budget.tenant_id)
    session.delete(budget)
    session.flush()


def list_alerts(session: Session, principal: Principal, period: str | None = None) -> list[BudgetAlert]:
    """Alerts of the caller's tenants (VDC-wide quota alerts to global roles only), newest first."""
    statement = principal.scope(select(BudgetAlert), BudgetAlert.tenant_id).order_by(col(BudgetAlert.id).desc())
    if period:
        statement = statement.where(BudgetAlert.period == period)
    return list(session.exec(statement).all())


@dataclass(frozen=True)
class CarbonContext:
    """What emissions budgets need from the settings: KILN_CARBON_ZONE, KILN_EMBODIED_EMISSIONS."""

    default_zone: str | None = None
    embodied: dict[str, Decimal] = field(default_factory=dict)

    @classmethod
    def of(cls, settings: Settings) -> CarbonContext:
        """The carbon settings of `settings`."""
        return cls(settings.carbon_zone, settings.embodied_kg_per_node_hour)


def period_bills(session: Session, period: str) -> tuple[dict[int, Bill], dict[int, list[BillLine]]]:
    """The period's bills by tenant id and their lines by bill id, read once for many budgets
    (`spend` and `forecast` read them budget by budget otherwise: three queries each)."""
    # plain rows, not Bill objects: what `spend` and `forecast` read of them, for 2,000 tenants
    statement = select(Bill.__table__).where(Bill.period == period).order_by(Bill.id)
    bills = {bill.tenant_id: bill for bill in session.connection().execute(statement).all()}
    lines: dict[int, list[BillLine]] = {bill.id: [] for bill in bills.values()}
    # the columns `forecast_total` reads, not whole lines: thousands of ORM objects at 2,000 tenants
    for line in session.exec(select(BillLine.bill_id, BillLine.kind, BillLine.contracted_cost)
                             .join(Bill, col(Bill.id) == BillLine.bill_id).where(Bill.period == period)
                             .order_by(BillLine.id)).all():
        lines.setdefault(line.bill_id, []).append(line)
    return bills, lines


def _bill_of(session: Session, budget: Budget, period: str, known: tuple[dict, dict] | None) -> Bill | None:
    if known is not None:
        return known[0].get(budget.tenant_id)
    return session.exec(select(Bill).where(Bill.tenant_id == budget.tenant_id, Bill.period == period)).first()


def spend(session: Session, budget: Budget, period: str, carbon: CarbonContext | None = None,
          bills: tuple[dict, dict] | None = None) -> Decimal:
    """What the budget's tenant spent in the period: the bill total, or its rated usage in the VDC;
    for an emissions budget, its kg CO2e (metered energy and embodied). `bills`: `period_bills`
    of the period, when already read."""
    if budget.unit == "kg-co2e":
        carbon = carbon or CarbonContext()
        # as the tenant sees it: its own rows only, no idle energy
        tenant = Principal(username="budgets", role=Role.TENANT_MEMBER, tenant_ids=frozenset({budget.tenant_id}))
        report = emissions(session, tenant, period, carbon.default_zone, carbon.embodied)
        return sum((r.kg_co2e + r.embodied_kg_co2e for r in report.tenants), Decimal(0))
    if budget.vdc_id is None:
        bill = _bill_of(session, budget, period, bills)
        return Decimal(bill.total if bill is not None and bill.total else 0)
    start, end = period_bounds(period)
    cards = card_views(cards_overlapping(session, start, end))
    usage = usage_by_segment(session, segments(cards, start, end), tenant_id=budget.tenant_id, vdc_id=budget.vdc_id)
    charges = rate(usage, cards, current_discounts(session), billing_currency(session, cards))
    return sum((c.contracted_cost for c in charges), Decimal(0))


def forecast(session: Session, budget: Budget, period: str, spent: Decimal, bills: tuple[dict, dict] | None = None) -> Decimal:
    """What the budget will have spent at the period's end if its tenant goes on at the rate seen up
    to the last bills run (`metering.views`): the bill's own forecast for a tenant-wide money
    budget, `spent` extrapolated from the same instant otherwise; `spent` without a draft bill.
    `bills` as for `spend`."""
    bill = _bill_of(session, budget, period, bills)
    if bill is None or bill.status != DRAFT:
        return spent
    if budget.unit == "money" and budget.vdc_id is None:
        lines = bills[1].get(bill.id, []) if bills is not None else list(
            session.exec(select(BillLine).where(BillLine.bill_id == bill.id)).all())
        return forecast_total(bill, lines)
    return extrapolate(spent, period, usage_through(bill)).quantize(Decimal("0.001"))


def _gpu_hours(session: Session, period: str, vdc_id: int, tenant_id: int | None) -> Decimal:
    start, end = period_bounds(period)
    statement = select(parts_sum()).where(
        UsageRecord.vdc_id == vdc_id, col(UsageRecord.hour) >= start, col(UsageRecord.hour) < end,
        col(UsageRecord.sku).startswith(skus.GPU_HOUR + ":"))
    if tenant_id is not None:
        statement = statement.where(UsageRecord.tenant_id == tenant_id)
    return summed(session.exec(statement).one())


def _percent(value: Decimal, limit: Decimal) -> Decimal:
    # A limit of 0 (a quota of no GPU-hours) is crossed at every threshold by any use at all.
    return value * 100 / limit if limit else (Decimal("Infinity") if value > 0 else Decimal(0))


def _raise(session: Session, period: str, subject: str, kind: str, thresholds: list[int] | tuple[int, ...],
           value: Decimal, limit: Decimal, describe: str, *, what: str = "used in", skip_below: Decimal | None = None,
           **ids: Any) -> list[BudgetAlert]:
    """Alerts for the thresholds `value` has crossed (of `limit`), each once per subject and period;
    thresholds `skip_below` (a percent) has crossed already are left to their own alerts."""
    raised = []
    percent = _percent(value, limit)
    share = f"{percent:.1f} %" if percent.is_finite() else "over a limit of 0"
    for threshold in thresholds:
        if percent < threshold or (skip_below is not None and skip_below >= threshold):
            continue
        if session.exec(select(BudgetAlert.id).where(BudgetAlert.subject == subject, BudgetAlert.period == period,
                                                     BudgetAlert.threshold == threshold)).first():
            continue
        message = f"{describe}: {plain(value)} of {plain(limit)} {what} {period} ({share}, threshold {threshold} %)"
        alert = BudgetAlert(subject=subject, kind=kind, period=period, threshold=threshold, value=value, limit_value=limit,
                            message=message, **ids)
        session.add(alert)
        raised.append(alert)
    return raised


def _payload(session: Session, alert: BudgetAlert) -> dict[str, Any]:
    tenant = session.get(Tenant, alert.tenant_id) if alert.tenant_id else None
    vdc = session.get(Vdc, alert.vdc_id) if alert.vdc_id else None
    return {"kind": alert.kind, "period": alert.period, "threshold_percent": alert.threshold,
            "tenant": tenant.slug if tenant else None, "vdc": vdc.name if vdc else None,
            "value": str(plain(alert.value)), "limit": str(plain(alert.limit_value)), "message": alert.message,
            "alert_id": alert.id}


def check_alerts(session: Session, principal: Principal, period: str, *, now: datetime | None = None,
                 carbon: CarbonContext | None = None) -> list[BudgetAlert]:
    """Raise every newly crossed budget and GPU-hours quota threshold of `period`; returns the new alerts."""
    principal.require_role(Role.INFRA_ADMIN, Role.FINANCE, action="check budgets")
    parse_period(period, now=now)
    raised = []
    for budget in session.exec(select(Budget).order_by(Budget.id)).all():
        where = f" in VDC {budget.vdc_id}" if budget.vdc_id else ""
        measure = "kg CO2e" if budget.unit == "kg-co2e" else budget.currency
        spent, describe = spend(session, budget, period, carbon), f"budget '{budget.name}'{where} ({measure})"
        ids = {"tenant_id": budget.tenant_id, "budget_id": budget.id, "vdc_id": budget.vdc_id}
        raised += _raise(session, period, f"budget:{budget.id}", KIND_BUDGET, budget.thresholds, spent, Decimal(budget.amount),
                         describe, **ids)
        raised += _raise(session, period, f"forecast:budget:{budget.id}", KIND_FORECAST, budget.thresholds,
                         forecast(session, budget, period, spent), Decimal(budget.amount), describe,
                         what="forecast by the end of", skip_below=_percent(spent, Decimal(budget.amount)), **ids)
    for vdc in session.exec(select(Vdc).where(col(Vdc.max_gpu_hours).is_not(None))).all():
        raised += _raise(session, period, f"quota:{vdc.id}", KIND_QUOTA, QUOTA_THRESHOLDS, _gpu_hours(session, period, vdc.id, None),
                         Decimal(vdc.max_gpu_hours), f"GPU-hours quota of VDC '{vdc.name}'", vdc_id=vdc.id)
    for grant in session.exec(select(VdcTenant).where(col(VdcTenant.max_gpu_hours).is_not(None))).all():
        vdc = session.get(Vdc, grant.vdc_id)
        raised += _raise(session, period, f"quota:{grant.vdc_id}:{grant.tenant_id}", KIND_QUOTA, QUOTA_THRESHOLDS,
                         _gpu_hours(session, period, grant.vdc_id, grant.tenant_id), Decimal(grant.max_gpu_hours),
                         f"GPU-hours quota of the tenant in VDC '{vdc.name}'", vdc_id=grant.vdc_id, tenant_id=grant.tenant_id)
    session.flush()
    for alert in raised:
        alert.payload = _payload(session, alert)
        audit.record(session, principal, "raise", "budget_alert", alert.id, tenant_id=alert.tenant_id,
                     detail={"subject": alert.subject, "threshold": alert.threshold})
    return raised


def deliver_alerts(session: Session, url: str | None, timeout: float, *, client: httpx.Client | None = None) -> int:
    """POST every undelivered alert to the webhook; returns how many it accepted (2xx)."""
    if not url:
        return 0
    import httpx  # here: list commands that import this module need no HTTP client

    delivered = 0
    pending = session.exec(select(BudgetAlert).where(col(BudgetAlert.delivered_at).is_(None)).order_by(BudgetAlert.id)).all()
    with client or httpx.Client(timeout=timeout) as http:
        for alert in pending:
            alert.attempts += 1
            try:
                response = http.post(url, json=alert.payload)
                ok = 200 <= response.status_code < 300
                alert.last_error = None if ok else f"webhook answered HTTP {response.status_code}"
            except httpx.HTTPError as exc:  # never log the URL: it may carry a token
                ok, alert.last_error = False, f"webhook unreachable: {type(exc).__name__}"
            if ok:
                alert.delivered_at = utcnow()
                delivered += 1
            session.add(alert)
    session.flush()
    return delivered
