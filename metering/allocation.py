"""The allocation view (as Kubecost shows it): per lease and node, GPU-hours allocated, measured and
used, efficiency, coverage, and what the idle GPU-hours cost.

Figures come from `metering.efficiency.lease_figures` (the one definition: used ÷ measured, samples
weighted by their real interval). *Idle* GPU-hours are measured but unused (measured − used):
time without utilisation data is not called idle, it lowers the coverage instead. Their cost is
priced like the bill prices GPU-hours: the node's GPU model's price card in force at the window's
last hour (`metering.rating.card_at`), less the tenant's contract discount (`discounted`), rounded
at the currency's minor unit; None without a card. A GPU instance lease's row is its GPU's model
and profile, priced as the bill prices the instance (the profile's card, else the GPU's). A row is *waste* when its efficiency is under
`WASTE_BELOW` with enough coverage to say so (`MIN_COVERAGE`).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

from pydantic import BaseModel
from sqlmodel import Session, select

from fleet.daily_hours import DayMicros, daily_lease_micros, days_between
from fleet.models import Gpu, Node
from fleet.usage import MICROS_PER_HOUR
from kiln.auth import Principal
from kiln.db import among, utcnow
from kiln.models import Tenant
from metering import skus
from metering.bills import billing_currency, card_views, current_discounts
from metering.efficiency import PLACES, ZERO, LeaseFigures, LeaseTotals, lease_figures
from metering.money import round_amount
from metering.price_cards import cards_overlapping
from metering.rating import CardView, card_at, discounted

WASTE_BELOW = Decimal("0.5")
MIN_COVERAGE = Decimal("0.5")


class IdleFigures(BaseModel):
    """GPU-hours allocated, measured and used, the ratios, and the cost of the idle GPU-hours."""

    allocated_gpu_hours: Decimal
    measured_gpu_hours: Decimal
    used_gpu_hours: Decimal
    idle_gpu_hours: Decimal  # measured − used
    efficiency: Decimal | None
    coverage: Decimal | None
    idle_cost: Decimal | None  # None: no price card for the GPU model
    currency: str
    waste: bool


class AllocationRow(IdleFigures):
    """One lease in the window: whose, which node (and for a GPU instance lease which GPU and
    profile), and its `IdleFigures`."""

    lease_id: int
    kind: str = "node"  # "node": a whole-node lease; "instance": a GPU instance lease (ids are per kind)
    tenant: str
    node: str
    gpu_model: str
    gpus: int
    gpu_index: int | None = None
    profile: str | None = None
    starts_at: datetime
    ends_at: datetime | None


def idle_cost(cards: list[CardView], model: str, at: datetime, idle: Decimal, percent: Decimal, currency: str,
              profile: str | None = None, fraction: Fraction = Fraction(1)) -> Decimal | None:
    """`idle` GPU-hours of `model` priced by its card in force at `at`'s hour, less `percent`
    discount, rounded at the currency's minor unit; None without a card. For a MIG `profile`
    (`fraction` of a GPU) its own card prices the idle instance-hours (idle ÷ fraction) where
    there is one, as the bill does (`metering.instance_usage`)."""
    hour = at.replace(minute=0, second=0, microsecond=0)
    card = card_at(cards, skus.gpu_hour(model, profile if fraction else None), hour)  # the profile's, else the GPU's
    if card is not None and card.sku != skus.gpu_hour(model):
        return round_amount(idle * fraction.denominator / fraction.numerator * discounted(card.unit_price, percent), currency)
    return None if card is None else round_amount(idle * discounted(card.unit_price, percent), currency)


def allocation_rows(
    session: Session, principal: Principal, start: datetime, end: datetime, *, tenant_id: int | None = None,
    now: datetime | None = None, figures: list[LeaseFigures] | None = None,
) -> list[AllocationRow]:
    """One row per lease of the caller's tenants (or only `tenant_id`) in [start, end) up to now,
    most idle cost first (then most idle GPU-hours); `figures`: those leases' `lease_figures`
    over the same window, when already computed."""
    now = now or utcnow()
    stop = min(end, now)
    if figures is None:
        figures = lease_figures(session, principal, start, end, tenant_id=tenant_id, now=now)
    node_ids = {f.lease.node_id for f in figures}
    names = dict(session.exec(select(Node.id, Node.name).where(among(Node.id, node_ids))).all())
    models: dict[int, Counter[str]] = defaultdict(Counter)
    for node_id, model in session.exec(select(Gpu.node_id, Gpu.model).where(among(Gpu.node_id, node_ids))).all():
        models[node_id][model] += 1
    slugs = dict(session.exec(select(Tenant.id, Tenant.slug)).all())
    cards = card_views(cards_overlapping(session, start, stop)) if stop > start else []
    currency, discounts = billing_currency(session, cards), current_discounts(session)
    rows = [_row(f, names, models, slugs, cards, currency, discounts.get(f.lease.tenant_id, ZERO), stop) for f in figures]
    return sorted(rows, key=lambda r: (-(r.idle_cost or ZERO), -r.idle_gpu_hours, r.tenant, r.node))


def daily_gpu_hours(
    session: Session, principal: Principal, start: datetime, end: datetime, *, tenant_id: int | None = None,
    now: datetime | None = None, figures: list[LeaseFigures] | None = None, held: list[DayMicros] | None = None,
    totals: LeaseTotals | None = None,
) -> dict[str, tuple[Decimal, Decimal]]:
    """`{YYYY-MM-DD: (allocated, used)}` GPU-hours per UTC day of [start, end) up to now (days
    some lease overlaps); `figures` as for `allocation_rows` (or their `totals`), `held` the whole-node
    leases' `daily_lease_micros` of the same window when already read. A sample's use counts on its day."""
    now = now or utcnow()
    stop = min(end, now)
    if totals is None:
        if figures is None:
            figures = lease_figures(session, principal, start, end, tenant_id=tenant_id, now=now)
        used: dict[date, Decimal] = {}
        for f in figures:
            for day, (_, day_used) in f.days.items():
                used[day] = used.get(day, ZERO) + day_used
        instances = [f for f in figures if f.instance is not None]
    else:
        used, instances = totals.used_by_day, totals.instances
    micros: dict[date, int] = {}
    for row in held if held is not None else daily_lease_micros(session, principal, start, stop, tenant_id):
        micros[row.day] = micros.get(row.day, 0) + row.gpu_micros
    allocated = {day: Decimal(total) / MICROS_PER_HOUR for day, total in micros.items()}
    for f in instances:  # GPU instance leases (few) by their compute fraction, as `allocated_between`
        for window in days_between(max(f.lease.starts_at, start), min(f.lease.ends_at or stop, stop)):
            allocated[window[0].date()] = allocated.get(window[0].date(), ZERO) + f.allocated_between(*window)
    return {day.isoformat(): (allocated[day].quantize(PLACES), used.get(day, ZERO).quantize(PLACES))
            for day in sorted(allocated)}


def _row(f: LeaseFigures, names: dict, models: dict, slugs: dict, cards: list[CardView],
         currency: str, percent: Decimal, stop: datetime) -> AllocationRow:
    instance = f.instance
    if instance is not None:
        model = instance.gpu_model or "none"  # as the lease recorded it
    else:
        model = models[f.lease.node_id].most_common(1)[0][0] if models[f.lease.node_id] else "none"
    idle = max(f.measured - f.used, ZERO)
    last_hour = min(f.lease.ends_at or stop, stop) - timedelta(microseconds=1)
    efficiency = (f.used / f.measured).quantize(PLACES) if f.measured else None
    coverage = (f.measured / f.allocated).quantize(PLACES) if f.allocated else None
    return AllocationRow(
        lease_id=f.lease.id, kind="node" if instance is None else "instance", tenant=slugs.get(f.lease.tenant_id, "?"),
        node=names.get(f.lease.node_id, "?"), gpu_model=model, gpus=f.gpus,
        gpu_index=None if instance is None else instance.gpu_index, profile=None if instance is None else instance.profile,
        starts_at=f.lease.starts_at, ends_at=f.lease.ends_at,
        allocated_gpu_hours=f.allocated.quantize(PLACES), measured_gpu_hours=f.measured.quantize(PLACES),
        used_gpu_hours=f.used.quantize(PLACES), idle_gpu_hours=idle.quantize(PLACES), efficiency=efficiency, coverage=coverage,
        idle_cost=idle_cost(cards, model, last_hour, idle, percent, currency, instance and instance.profile, f.fraction),
        currency=currency,
        waste=efficiency is not None and efficiency < WASTE_BELOW and coverage is not None and coverage >= MIN_COVERAGE)
