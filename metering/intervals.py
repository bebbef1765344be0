"""Exact hourly totals from time intervals, in time linear in the number of intervals.

`HourlyTotals` sums, per key (tenant, resource, SKU), `quantity × microseconds` for every hour
an interval touches. Whole hours inside an interval go into a difference array (two updates
per interval, whatever its length); only the partial first and last hours are added one by
one. `totals` walks each key's hours once. Integer quantities stay Python ints (exact and fast);
fractional ones are Decimals. An hour's total is kept as an integer number of parts
(`metering.money.PARTS_PER_UNIT`: quantity × microseconds, exact for leases and whole-unit
requests; a fractional one is rounded half-even to the nearest part, 1/3.6e9 of a unit) and is
never rounded to a displayed quantity before it is summed: see `metering.money`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

from metering.money import quantity_from_parts
from metering.periods import HOUR, floor_hour

MICROS_PER_HOUR = 3_600_000_000
MICROSECOND = timedelta(microseconds=1)

Key = tuple[int, str, str]  # tenant_id, resource_id, sku
Number = int | Decimal


def exact(quantity: Decimal | int) -> Number:
    """`quantity` as an int when it is whole (faster, still exact), else as a Decimal."""
    if isinstance(quantity, int):
        return quantity
    whole = quantity.to_integral_value()
    return int(whole) if whole == quantity else quantity


class HourlyTotals:
    """Per key and hour index (hours since `origin`): quantity × microseconds, exactly."""

    def __init__(self, origin: datetime):
        self.origin = floor_hour(origin)
        self.partial: dict[Key, dict[int, Number]] = defaultdict(lambda: defaultdict(int))
        self.steps: dict[Key, dict[int, Number]] = defaultdict(lambda: defaultdict(int))
        self.vdcs: dict[Key, int | None] = {}

    def _index(self, hour: datetime) -> int:
        return (hour - self.origin) // HOUR

    def add(self, key: Key, start: datetime, end: datetime, quantity: Number, vdc_id: int | None = None) -> None:
        """Count `quantity` over [start, end) (start >= origin)."""
        if end <= start or not quantity:
            return
        self.vdcs.setdefault(key, vdc_id)
        # in integer microseconds from the origin (an hour boundary): far cheaper than datetimes
        a, b = (start - self.origin) // MICROSECOND, (end - self.origin) // MICROSECOND
        first, last = a // MICROS_PER_HOUR, b // MICROS_PER_HOUR
        if first == last:
            self.partial[key][first] += (b - a) * quantity
            return
        if a > first * MICROS_PER_HOUR:
            self.partial[key][first] += ((first + 1) * MICROS_PER_HOUR - a) * quantity
            first += 1
        if first < last:
            steps = self.steps[key]
            steps[first] += quantity
            steps[last] -= quantity
        if b > last * MICROS_PER_HOUR:
            self.partial[key][last] += (b - last * MICROS_PER_HOUR) * quantity

    def add_weight(self, key: Key, hour: datetime, weight: Number, vdc_id: int | None = None) -> None:
        """Add an already weighted amount (quantity × microseconds) to one hour."""
        self.vdcs.setdefault(key, vdc_id)
        self.partial[key][self._index(hour)] += weight

    def totals(self) -> Iterator[tuple[Key, datetime, Decimal, int, int | None]]:
        """(key, hour, quantity to 6 places (shown), exact parts (summed), vdc) for every hour with a non-zero total."""
        hours: dict[int, datetime] = {}
        quantities: dict[int, Decimal] = {}  # many hours have the same parts (whole hours): one Decimal each
        for key in set(self.partial) | set(self.steps):
            partial, steps, vdc_id = self.partial.get(key, {}), self.steps.get(key, {}), self.vdcs.get(key)
            indices = [*partial, *steps]
            running: Number = 0
            for index in range(min(indices), max(indices) + 1):
                running += steps.get(index, 0)
                weight = running * MICROS_PER_HOUR + partial.get(index, 0)
                parts = weight if isinstance(weight, int) else int(Decimal(weight).to_integral_value(ROUND_HALF_EVEN))
                if parts:
                    hour = hours.get(index) or hours.setdefault(index, self.origin + index * HOUR)
                    quantity = quantities.get(parts) or quantities.setdefault(parts, quantity_from_parts(parts))
                    yield key, hour, quantity, parts, vdc_id
