"""Per-cost-centre chargeback CSV: what each cost centre owes, by tenant and SKU, with subtotals.

A tenant's cost centre is its `cost_centre` (kiln.models.Tenant) or, when that is unset, its slug;
charges without a tenant (idle capacity the platform absorbs) go to the cost centre
`(unallocated)`. Rows are folded into one line per (billing period, cost centre, tenant, service,
SKU, charge category, charge class, pricing unit) as they stream in, so memory grows with the
number of lines, never with the number of charges.

Money follows metering.money's one rounding rule: each FOCUS row's ListCost (the exact product
FOCUS requires) is rounded half-even to the currency's minor unit, as its bill line is; BilledCost
is already in minor units. Each line's sum is rounded again (a no-op for Kiln's rows), a subtotal
is the sum of its rounded lines and the grand total the sum of the subtotals, so everything adds
up to the cent, as a bill's lines add up to its list total and total. One grand total per
currency.

CSV columns: line_type (line | subtotal | total), billing_period, cost_centre, tenant,
tenant_name, service_name, sku_id, charge_category, charge_class, pricing_unit,
pricing_quantity, currency, list_cost, billed_cost. Text that a spreadsheet would run as a
formula (starting with = + - @) is prefixed with a single quote.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import BinaryIO

from kiln.spreadsheet import spreadsheet_text as _text
from metering.focus import FocusRow, format_decimal
from metering.money import round_amount

UNALLOCATED = "(unallocated)"
HEADER = (
    "line_type", "billing_period", "cost_centre", "tenant", "tenant_name", "service_name", "sku_id",
    "charge_category", "charge_class", "pricing_unit", "pricing_quantity", "currency", "list_cost", "billed_cost",
)


@dataclass(frozen=True)
class ChargebackSummary:
    """What `write_chargeback` wrote: charges read, CSV data lines (all types), grand totals per currency."""

    rows_read: int
    lines_written: int
    totals: dict[str, Decimal] = field(default_factory=dict)


@dataclass
class _Line:
    quantity: Decimal | None = None
    list_cost: Decimal = Decimal(0)
    billed_cost: Decimal = Decimal(0)


def cost_centres_of(tenants: Iterable[object]) -> dict[str, str]:
    """Tenant slug → cost centre for tenants (anything with `slug` and `cost_centre`), slug when unset."""
    return {t.slug: (getattr(t, "cost_centre", None) or t.slug) for t in tenants}  # type: ignore[attr-defined]


def write_chargeback(
    rows: Iterable[FocusRow], out: BinaryIO | Path | str, *, cost_centres: Mapping[str, str] | None = None
) -> ChargebackSummary:
    """Write the chargeback CSV for `rows` to `out` (a path, or a binary stream left open).

    `cost_centres` maps tenant slugs to cost centres (see `cost_centres_of`); a tenant missing
    from it is its own cost centre.
    """
    cost_centres = cost_centres or {}
    lines: dict[tuple[str, ...], _Line] = {}
    rows_read = 0
    for row in rows:
        rows_read += 1
        slug = row.tenant_slug
        centre = UNALLOCATED if slug is None else cost_centres.get(slug) or slug
        key = (row.currency, centre, row.billing_period_start.strftime("%Y-%m"), slug or "", row.tenant_name or "",
               row.service_name, row.sku_id or "", row.charge_category, row.charge_class or "", row.pricing_unit or "")
        line = lines.get(key)
        if line is None:
            line = lines[key] = _Line()
        if row.pricing_quantity is not None:
            line.quantity = (line.quantity or Decimal(0)) + row.pricing_quantity
        line.list_cost += round_amount(row.list_cost, row.currency)  # a FOCUS row is a bill line
        line.billed_cost += row.billed_cost
    if isinstance(out, str | Path):
        with Path(out).open("wb") as stream:
            return _write(lines, stream, rows_read)
    return _write(lines, out, rows_read)


def _write(lines: dict[tuple[str, ...], _Line], stream: BinaryIO, rows_read: int) -> ChargebackSummary:
    text = io.TextIOWrapper(stream, encoding="utf-8", newline="")
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(HEADER)
    written, totals = 0, {}
    keys = sorted(lines)
    for currency in sorted({key[0] for key in keys}):
        in_currency = [key for key in keys if key[0] == currency]
        billed = [round_amount(lines[k].billed_cost, currency) for k in in_currency]
        listed = [round_amount(lines[k].list_cost, currency) for k in in_currency]
        subtotal_billed = subtotal_list = Decimal(0)
        for i, key in enumerate(in_currency):
            _, centre, period, slug, name, service, sku, category, charge_class, unit = key
            quantity = lines[key].quantity
            writer.writerow(["line", period, *map(_text, (centre, slug, name, service, sku)), category, charge_class,
                             unit, "" if quantity is None else format_decimal(quantity), currency,
                             listed[i], billed[i]])
            subtotal_billed += billed[i]
            subtotal_list += listed[i]
            written += 1
            if i + 1 == len(in_currency) or in_currency[i + 1][1] != centre:
                writer.writerow(["subtotal", "", _text(centre), *[""] * 8, currency, subtotal_list, subtotal_billed])
                totals[currency] = totals.get(currency, Decimal(0)) + subtotal_billed
                subtotal_billed = subtotal_list = Decimal(0)
                written += 1
        writer.writerow(["total", *[""] * 10, currency, sum(listed, Decimal(0)), totals[currency]])
        written += 1
    text.flush()
    text.detach()  # leave the caller's stream open
    return ChargebackSummary(rows_read=rows_read, lines_written=written, totals=totals)
