"""Exports for finance: FOCUS 1.2 (CSV or Parquet) and the per-cost-centre chargeback CSV.

Both read the bills of one period (drafts and finalised, the status is a column) line by
line from the database (`yield_per`), so a large period streams instead of loading at once.
Each bill line is one FOCUS row: BillingAccount = the operator (`billing_account_name`),
SubAccount = the tenant, ServiceCategory "Compute", SkuId = Kiln's SKU, SkuPriceId = the
price card; corrections of a finalised period carry ChargeClass "Correction" and the corrected
window as ChargePeriod.

**Costs and the rounding rule.** FOCUS 1.2 requires ListCost = ListUnitPrice × PricingQuantity and
ContractedCost = ContractedUnitPrice × PricingQuantity *exactly* on every row whose ChargeClass is
not "Correction" (ListCost-C-009-C, ContractedCost-C-009-C, PricingQuantity-C-009-C), while the
sum of BilledCost per InvoiceId must be the invoice's payable amount (BilledCost-C-007-M). So:

- PricingQuantity = ConsumedQuantity = the bill line's quantity (its exact usage, rounded once to
  6 decimal places, see `metering.money`); the unit prices are the line's;
- ListCost and ContractedCost are the unrounded products of those (at most 15 decimal places);
- BilledCost and EffectiveCost are the bill line's contracted cost, rounded half-even to the
  currency's minor unit at the line (`metering.money`'s rule): the amount invoiced. Σ BilledCost
  of a bill's rows is therefore the bill's total to the cent. EffectiveCost equals BilledCost:
  Kiln has no commitment discounts to amortise, and FOCUS requires no product for it;
- a correction row (ChargeClass "Correction", which FOCUS exempts from the products) carries the
  correction line's own amounts: the differences of rounded amounts, as billed.

ContractedCost and BilledCost of one row differ by less than half a minor unit.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import BinaryIO, Literal

from sqlmodel import Session, col, select

from kiln.auth import Principal
from kiln.errors import NotFound
from kiln.models import Tenant
from metering import skus
from metering.carbon import EnergyLedger
from metering.focus import FocusRow, format_decimal, write_focus
from metering.focus_columns import exact_product
from metering.bills import FINALISED
from metering.chargeback import cost_centres_of, write_chargeback
from metering.models import Bill, BillLine
from metering.money import round_amount
from metering.periods import parse_period, period_bounds
from metering.rating import KIND_CORRECTION

# x_EnergyConsumedKwh and x_CarbonEmissionsKgCO2e are named after FOCUS' sustainability proposal
# (FOCUS-spec#972): on energy rows, the kWh and their emissions (kWh × the hour's grid intensity in
# the node's zone, to the gram; empty when some of the kWh has no intensity figure)
EXTRA_COLUMNS = ["x_BillId", "x_BillLineId", "x_BillStatus", "x_ChargeKind", "x_CostCentre", "x_CorrectsPeriod",
                 "x_EnergyConsumedKwh", "x_CarbonEmissionsKgCO2e"]
SKU_METERS = {
    skus.NODE_HOUR: ("Node Hours", "Other (Compute)", "Bare-metal nodes"),
    skus.GPU_HOUR: ("GPU Hours", "Other (Compute)", "GPU compute"),
    skus.CPU_CORE_HOUR: ("CPU Core Hours", "Containers", "Kubernetes"),
    skus.RAM_GIB_HOUR: ("RAM GiB Hours", "Containers", "Kubernetes"),
    skus.KWH: ("Energy", "Other (Compute)", "Metered energy"),
    skus.STORAGE_GIB_MONTH: ("Storage GiB Months", "Other (Compute)", "Storage"),
    skus.IDLE_SHARE: ("Idle Capacity Share", "Other (Compute)", "Idle capacity"),
}
YIELD_ROWS = 2000


def _bills_query(session: Session, principal: Principal, period: str):
    statement = (
        select(BillLine, Bill, Tenant)
        .join(Bill, col(Bill.id) == BillLine.bill_id)
        .join(Tenant, col(Tenant.id) == Bill.tenant_id)
        .where(Bill.period == period)
        .order_by(Tenant.slug, BillLine.id)
    )
    return principal.scope(statement, Bill.tenant_id).execution_options(yield_per=YIELD_ROWS)


def check_exportable(session: Session, principal: Principal, period: str) -> None:
    """NotFound unless the period is valid and has bills the caller may see."""
    parse_period(period)
    if session.exec(principal.scope(select(Bill.id).where(Bill.period == period), Bill.tenant_id).limit(1)).first() is None:
        raise NotFound(f"no bills for period {period}: run `kiln bills run --period {period}` first")


def _account_id(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "kiln"


def _whole_seconds(at: datetime) -> datetime:
    return at.replace(microsecond=0)


def focus_row(line: BillLine, bill: Bill, tenant: Tenant, account_name: str, ledger: EnergyLedger | None = None) -> FocusRow:
    """One bill line as a FOCUS 1.2 row (with energy and emissions on energy rows when `ledger` is given)."""
    meter, subcategory, service = SKU_METERS[skus.family(line.sku)]
    start, end = period_bounds(bill.period)
    quantity = Decimal(line.quantity).normalize() + 0  # `+ 0` turns -0 into 0
    card_id = f"price-card-{line.price_card_id}" if line.price_card_id else None
    if card_id and skus.whole_gpu_sku(line.sku) != line.sku:  # a MIG profile: its own SkuPriceId, even on its GPU's card
        card_id += line.sku[len(skus.whole_gpu_sku(line.sku)):]
    price_id = card_id if card_id or line.kind == KIND_CORRECTION else f"{line.sku}:unpriced"
    list_price = Decimal(line.list_unit_price).normalize() + 0
    contracted_price = Decimal(line.contracted_unit_price).normalize() + 0
    billed = round_amount(Decimal(line.contracted_cost), line.currency)  # the invoiced amount
    if line.charge_class is None:  # FOCUS: cost = unit price × pricing quantity, exactly
        list_cost, contracted_cost = exact_product(list_price, quantity), exact_product(contracted_price, quantity)
    else:  # a correction keeps the billed differences (FOCUS allows discrepancies there)
        list_cost, contracted_cost = round_amount(Decimal(line.list_cost), line.currency), billed
    return FocusRow(
        billing_period_start=start, billing_period_end=end,
        charge_period_start=_whole_seconds(line.window_start), charge_period_end=_whole_seconds(line.window_end),
        billing_account_id=_account_id(account_name), billing_account_name=account_name, provider_name=account_name,
        tenant_slug=tenant.slug, tenant_name=tenant.name, charge_category="Usage",
        charge_description=line.description or None, service_name=service, resource_id=None, resource_name=None,
        resource_type=None, sku_id=line.sku, sku_price_id=price_id, pricing_unit=line.unit, pricing_quantity=quantity,
        consumed_unit=line.unit, consumed_quantity=quantity,
        list_unit_price=list_price, contracted_unit_price=contracted_price,
        list_cost=list_cost, contracted_cost=contracted_cost, effective_cost=billed, billed_cost=billed,
        currency=line.currency, charge_class=line.charge_class, service_subcategory=subcategory, sku_meter=meter,
        invoice_id=f"kiln-{bill.period}-{bill.id}" if bill.status == FINALISED else None,
        extra={"x_BillId": str(bill.id), "x_BillLineId": str(line.id), "x_BillStatus": bill.status,
               "x_ChargeKind": line.kind, "x_CostCentre": tenant.cost_centre or None, "x_CorrectsPeriod": line.corrects_period,
               **_energy_columns(line, tenant, quantity, ledger)},
    )


def _energy_columns(line: BillLine, tenant: Tenant, quantity: Decimal, ledger: EnergyLedger | None) -> dict[str, str | None]:
    if ledger is None or skus.family(line.sku) != skus.KWH or line.charge_class is not None:
        return {"x_EnergyConsumedKwh": None, "x_CarbonEmissionsKgCO2e": None}
    _, kg = ledger.window(tenant.id, line.window_start, line.window_end)
    return {"x_EnergyConsumedKwh": format_decimal(quantity), "x_CarbonEmissionsKgCO2e": None if kg is None else format_decimal(kg)}


def focus_rows(session: Session, principal: Principal, period: str, account_name: str,
               default_zone: str | None = None) -> Iterator[FocusRow]:
    """The period's bill lines as FOCUS rows, streamed from the database; `default_zone`:
    KILN_CARBON_ZONE, for the emissions of energy rows."""
    ledger: EnergyLedger | None = None  # read once, at the first energy row (a chargeback or a bill may have none)
    for line, bill, tenant in session.exec(_bills_query(session, principal, period)):
        if ledger is None and skus.family(line.sku) == skus.KWH:
            ledger = EnergyLedger(session, *period_bounds(parse_period(period, allow_future=True)), default_zone)
        yield focus_row(line, bill, tenant, account_name, ledger)


def export_focus(
    session: Session, principal: Principal, period: str, fmt: Literal["csv", "parquet"], out: BinaryIO | Path, account_name: str,
    default_zone: str | None = None,
) -> int:
    """Write the period's FOCUS export to `out`; NotFound for a period without bills. Returns rows written."""
    check_exportable(session, principal, period)
    return write_focus(focus_rows(session, principal, period, account_name, default_zone), fmt, out,
                       extra_columns=EXTRA_COLUMNS)


def export_chargeback(session: Session, principal: Principal, period: str, out: BinaryIO | Path, account_name: str) -> int:
    """Write the period's per-cost-centre chargeback CSV (`metering.chargeback`) to `out`; returns rows read."""
    check_exportable(session, principal, period)
    centres = cost_centres_of(session.exec(principal.scope(select(Tenant), Tenant.id)).all())
    return write_chargeback(focus_rows(session, principal, period, account_name), out, cost_centres=centres).rows_read
