"""Rating: a pure function of usage totals + price cards (+ tenant discounts) → charges.

No database, no clock: the same inputs always give the same charges, in the same order, so
re-running a period is idempotent. `metering.bills` feeds it from SQL and stores its output.

- A usage hour is priced by the card of its SKU in force at the start of the hour; card
  boundaries are therefore rounded up to the next hour (`segments`).
- One charge per (tenant, SKU, price card): a price change mid-period gives two lines.
- Usage with no card in force is still shown, at price 0 and without a card.
- A line's quantity is the exact sum of its usage (integer parts, see `metering.money`)
  converted to the unit once, half-even to 6 decimal places: it is never a sum of rounded hours.
- Amounts follow `metering.money`'s rule: `list_cost = round(quantity × list price)`,
  `contracted_unit_price = list price × (1 − discount)` (to 9 decimal places, as stored),
  `contracted_cost = round(quantity × contracted_unit_price)`, half-even to the currency's
  minor unit at the line.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

from metering import skus
from metering.money import allocate, quantity_from_parts, round_amount

KIND_USAGE, KIND_IDLE_SHARE, KIND_CORRECTION = "usage", "idle-share", "correction"
ZERO = Decimal(0)
UNIT_PRICE_QUANTUM = Decimal("0.000000001")


@dataclass(frozen=True)
class CardView:
    """The part of a price card rating needs."""

    id: int
    sku: str
    unit: str
    unit_price: Decimal
    currency: str
    effective_from: datetime
    effective_to: datetime | None


@dataclass(frozen=True)
class UsageTotal:
    """Quantity of one SKU used by one tenant (None: idle capacity) over one segment of a period,
    exactly: `parts` is an integer count of 1/3,600,000,000 of the unit (`metering.money`)."""

    tenant_id: int | None
    sku: str
    unit: str
    window_start: datetime
    window_end: datetime
    parts: int

    @property
    def quantity(self) -> Decimal:
        """The quantity in the unit, half-even to 6 decimal places."""
        return quantity_from_parts(self.parts)


@dataclass(frozen=True)
class Charge:
    """One priced line (usage, an idle share, or idle capacity when tenant_id is None)."""

    tenant_id: int | None
    kind: str
    sku: str
    unit: str
    quantity: Decimal
    list_unit_price: Decimal
    list_cost: Decimal
    contracted_unit_price: Decimal
    contracted_cost: Decimal
    currency: str
    window_start: datetime
    window_end: datetime
    price_card_id: int | None
    description: str


def _ceil_hour(at: datetime) -> datetime:
    floor = at.replace(minute=0, second=0, microsecond=0)
    return floor if floor == at else floor + timedelta(hours=1)


def segments(cards: Sequence[CardView], start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """[start, end) cut at every card boundary (rounded up to the hour), so each SKU has one card per segment."""
    cuts = {start, end}
    for card in cards:
        for boundary in (card.effective_from, card.effective_to):
            if boundary is not None:
                hour = _ceil_hour(boundary)
                if start < hour < end:
                    cuts.add(hour)
    ordered = sorted(cuts)
    return list(zip(ordered, ordered[1:]))


def card_at(cards: Sequence[CardView], sku: str, at: datetime) -> CardView | None:
    """The card of `sku` pricing the hour starting at `at` (in force at the hour's start, boundaries
    rounded up); a MIG profile's SKU without a card of its own is priced by its GPU model's card."""
    for wanted in dict.fromkeys((sku, skus.whole_gpu_sku(sku))):
        for card in cards:
            if card.sku == wanted and _ceil_hour(card.effective_from) <= at and (
                card.effective_to is None or at < _ceil_hour(card.effective_to)
            ):
                return card
    return None


def discounted(unit_price: Decimal, percent: Decimal) -> Decimal:
    """The contracted unit price after a discount of `percent`, half-even to 9 decimal places (as stored)."""
    if not percent:
        return unit_price
    return (unit_price * (100 - percent) / 100).quantize(UNIT_PRICE_QUANTUM, rounding=ROUND_HALF_EVEN)


def price_line(
    tenant_id: int | None, kind: str, sku: str, unit: str, quantity: Decimal, unit_price: Decimal, percent: Decimal,
    currency: str, window: tuple[datetime, datetime], card_id: int | None, description: str,
) -> Charge:
    """A charge for `quantity` at `unit_price` less `percent`, amounts rounded at the line."""
    contracted_price = discounted(unit_price, percent)
    return Charge(
        tenant_id=tenant_id, kind=kind, sku=sku, unit=unit, quantity=quantity,
        list_unit_price=unit_price, list_cost=round_amount(quantity * unit_price, currency),
        contracted_unit_price=contracted_price, contracted_cost=round_amount(quantity * contracted_price, currency),
        currency=currency, window_start=window[0], window_end=window[1], price_card_id=card_id, description=description,
    )


def rate(
    usage: Iterable[UsageTotal], cards: Sequence[CardView], discounts: Mapping[int, Decimal], currency: str,
) -> list[Charge]:
    """Charges for usage totals: one per (tenant, SKU, card), discounts applied per tenant."""
    quantities: dict[tuple, int] = defaultdict(int)
    windows: dict[tuple, tuple[datetime, datetime]] = {}
    units: dict[tuple, str] = {}
    chosen: dict[tuple, CardView | None] = {}
    for total in usage:
        card = card_at(cards, total.sku, total.window_start)
        key = (total.tenant_id if total.tenant_id is not None else -1, total.sku, card.id if card else -1)
        quantities[key] += total.parts
        old = windows.get(key)
        window = (total.window_start, total.window_end)
        windows[key] = (min(old[0], window[0]), max(old[1], window[1])) if old else window
        units[key], chosen[key] = total.unit, card
    charges = []
    for key in sorted(quantities, key=lambda k: (k[0], k[1], windows[k][0])):
        tenant_id, sku, _ = key
        quantity, card = quantity_from_parts(quantities[key]), chosen[key]  # rounded once, here
        if quantity == 0:
            continue
        tenant = None if tenant_id == -1 else tenant_id
        percent = discounts.get(tenant, ZERO) if tenant is not None else ZERO
        price = card.unit_price if card else ZERO
        description = f"{sku} at {price} {currency}/{units[key]}" if card else f"{sku}: no price card in force, not charged"
        kind = KIND_USAGE if tenant is not None else "idle"
        charges.append(price_line(tenant, kind, sku, units[key], quantity, price, percent, currency, windows[key],
                                  card.id if card else None, description))
    return charges


def share_idle(
    idle: Sequence[Charge], usage: Sequence[Charge], currency: str, window: tuple[datetime, datetime],
) -> list[Charge]:
    """Idle cost spread over tenants in proportion to their list cost (like Kubecost's shareIdle).

    Shares are whole minor units and add up exactly to the idle total (largest remainder);
    tenants with no cost get none. One `idle-share` line per tenant, quantity 1.
    """
    total = sum((c.list_cost for c in idle), ZERO)
    weights: dict[int, Decimal] = defaultdict(Decimal)
    for charge in usage:
        if charge.tenant_id is not None and charge.kind == KIND_USAGE:
            weights[charge.tenant_id] += charge.list_cost
    tenants = sorted(t for t, w in weights.items() if w > 0)
    if total <= 0 or not tenants:
        return []
    parts = allocate(total, [weights[t] for t in tenants], currency)
    weight_sum = sum(weights[t] for t in tenants)
    return [
        price_line(t, KIND_IDLE_SHARE, skus.IDLE_SHARE, skus.UNITS[skus.IDLE_SHARE], Decimal(1), part, ZERO, currency, window,
                   None, f"share of idle capacity ({(weights[t] * 100 / weight_sum).quantize(Decimal('0.01'))} % of usage cost)")
        for t, part in zip(tenants, parts) if part != 0
    ]
