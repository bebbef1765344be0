"""Metering tables: price cards, tenant discounts, hourly usage, bills and their lines, idle
cost, budgets and budget alerts.

Money and quantities are `ExactNumeric` (NUMERIC on PostgreSQL, integer micro-units on
SQLite; always `Decimal` in Python), never floats. A usage row's exact amount is an integer
(`quantity_parts`, see `metering.money`). Hours are the UTC
start of `[hour, hour + 1h)`; a billing period is a calendar month in UTC, written `YYYY-MM`.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, BigInteger, CheckConstraint, Column, Date, ForeignKey, Index, Integer, UniqueConstraint, text
from sqlmodel import Field, SQLModel

# Loads the tables this module's foreign keys name: a flush sorts tables by those keys.
import fleet.tenancy_models  # noqa: F401
import kiln.models  # noqa: F401
from kiln.db import UTCDateTime, utcnow
from kiln.types import ExactNumeric

QUANTITY = ExactNumeric(24, 6)  # hours, GiB-hours, kWh: 1e-6 resolution
UNIT_PRICE = ExactNumeric(24, 9)  # a price per unit may be a fraction of a minor unit
AMOUNT = ExactNumeric(20, 6)  # money; bill amounts are already rounded to the currency's minor unit
PERCENT = ExactNumeric(9, 6)


class PriceCard(SQLModel, table=True):
    """The list price of one SKU over [effective_from, effective_to); cards of one SKU never overlap."""

    __tablename__ = "price_card"
    __table_args__ = (
        CheckConstraint("unit_price >= 0", name="ck_price_card_price"),
        CheckConstraint("effective_to IS NULL OR effective_to > effective_from", name="ck_price_card_interval"),
    )

    id: int | None = Field(default=None, primary_key=True)
    sku: str = Field(max_length=128, index=True)
    unit: str = Field(max_length=32)
    unit_price: Decimal = Field(sa_column=Column(UNIT_PRICE, nullable=False))
    currency: str = Field(max_length=3)
    effective_from: datetime = Field(sa_type=UTCDateTime, nullable=False)
    effective_to: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_by: str = Field(default="", max_length=200)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


class TenantDiscount(SQLModel, table=True):
    """A tenant's contract discount in percent off list prices (FOCUS ListCost → ContractedCost)."""

    __tablename__ = "tenant_discount"
    # at most 100 is checked by the service: on SQLite the column holds micro-units
    __table_args__ = (CheckConstraint("percent >= 0", name="ck_tenant_discount_percent"),)

    id: int | None = Field(default=None, primary_key=True)
    tenant_id: int = Field(
        sa_column=Column(Integer, ForeignKey("tenant.id", ondelete="CASCADE"), nullable=False, unique=True)
    )
    percent: Decimal = Field(sa_column=Column(PERCENT, nullable=False))
    note: str = Field(default="", max_length=500)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


# Usage records other than whole-node leases' (whose GPU-hours the usage page sums from the leases
# themselves, `fleet.daily_hours`): Kubernetes pods', energy, and GPU instance leases' (a MIG profile's SKU).
NOT_WHOLE_NODE_GPUS = "(source <> 'lease' OR sku LIKE 'gpu-hour:%:%')"


class UsageRecord(SQLModel, table=True):
    """What one tenant used of one resource in one hour, by SKU; rebuilding an hour replaces its rows.

    On PostgreSQL the table is partitioned by month on `hour` (migration 0019, kiln.partitions):
    its primary key there is (id, hour), and nothing may refer to it by foreign key."""

    __tablename__ = "usage_record"
    __table_args__ = (
        UniqueConstraint("tenant_id", "resource_id", "sku", "hour", "source", name="uq_usage_record_key"),
        # Covering the period sums (hour range → tenant, SKU, unit, quantity): index-only scans of a month.
        Index("ix_usage_record_hour_source", "hour", "source", "tenant_id", "sku", "unit", "quantity_parts"),
        Index("ix_usage_record_tenant_hour", "tenant_id", "hour"),
        # and ix_usage_record_not_whole_node_gpus: declare_partial_indexes below
    )

    id: int | None = Field(default=None, primary_key=True)
    tenant_id: int = Field(sa_column=Column(Integer, ForeignKey("tenant.id", ondelete="RESTRICT"), nullable=False))
    vdc_id: int | None = Field(default=None, sa_column=Column(Integer, ForeignKey("vdc.id", ondelete="SET NULL")))
    resource_id: str = Field(max_length=128)
    sku: str = Field(max_length=128)
    quantity: Decimal = Field(sa_column=Column(QUANTITY, nullable=False))  # to 6 places, for display
    # The exact amount: quantity × 3,600,000,000 (GPU-microseconds for GPU-hours). Sums add these
    # and convert once (metering.money.quantity_from_parts); `quantity` is never summed.
    quantity_parts: int = Field(sa_column=Column(BigInteger, nullable=False))
    unit: str = Field(max_length=32)
    source: str = Field(max_length=16)  # lease | k8s | energy
    hour: datetime = Field(sa_type=UTCDateTime, nullable=False)


DRAFT, FINALISED = "draft", "finalised"  # the two values of Bill.status


def declare_partial_indexes() -> None:
    """Declare usage_record's partial index on its table (idempotent); kiln.schema.target_metadata calls it.

    The index holds the records other than whole-node leases' (pods', GPU instance leases', energy):
    a few % of the GPU-hour rows at 10,000 nodes, summed by the usage page beside the leases' own
    hours. Its `postgresql_where`/`sqlite_where` options make SQLAlchemy import both dialects
    (~0.1 s), so it is declared only where the schema is compared or created, not by every command
    that reads the table (`kiln bills list`)."""
    table = UsageRecord.__table__
    if any(index.name == "ix_usage_record_not_whole_node_gpus" for index in table.indexes):
        return
    where = text(NOT_WHOLE_NODE_GPUS)
    Index("ix_usage_record_not_whole_node_gpus", table.c.hour, table.c.tenant_id, table.c.sku, table.c.unit,
          table.c.source, table.c.quantity_parts, postgresql_where=where, sqlite_where=where)


class Bill(SQLModel, table=True):
    """A tenant's bill for one period: draft (rebuilt as usage arrives) until finalised (immutable)."""

    __tablename__ = "bill"
    __table_args__ = (UniqueConstraint("tenant_id", "period", name="uq_bill_tenant_period"),)

    id: int | None = Field(default=None, primary_key=True)
    tenant_id: int = Field(sa_column=Column(Integer, ForeignKey("tenant.id", ondelete="RESTRICT"), nullable=False))
    period: str = Field(max_length=7, index=True)
    status: str = Field(max_length=16)  # DRAFT | FINALISED
    currency: str = Field(max_length=3)
    list_total: Decimal = Field(sa_column=Column(AMOUNT, nullable=False))
    total: Decimal = Field(sa_column=Column(AMOUNT, nullable=False))
    discount_percent: Decimal = Field(default=Decimal(0), sa_column=Column(PERCENT, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    # The instant the last bills run counted usage up to (its `now`, at most the period end): the
    # forecast extrapolates from it, so it does not drift while no run adds usage.
    usage_through: datetime | None = Field(default=None, sa_type=UTCDateTime)
    finalised_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    finalised_by: str | None = Field(default=None, max_length=200)


class BillLine(SQLModel, table=True):
    """One charge on a bill: a SKU at one unit price over a window, an idle share, or a correction."""

    __tablename__ = "bill_line"

    id: int | None = Field(default=None, primary_key=True)
    bill_id: int = Field(sa_column=Column(Integer, ForeignKey("bill.id", ondelete="CASCADE"), nullable=False, index=True))
    kind: str = Field(max_length=16)  # usage | idle-share | correction
    sku: str = Field(max_length=128)
    unit: str = Field(max_length=32)
    description: str = Field(default="", max_length=500)
    quantity: Decimal = Field(sa_column=Column(QUANTITY, nullable=False))
    list_unit_price: Decimal = Field(sa_column=Column(UNIT_PRICE, nullable=False))
    list_cost: Decimal = Field(sa_column=Column(AMOUNT, nullable=False))
    contracted_unit_price: Decimal = Field(sa_column=Column(UNIT_PRICE, nullable=False))
    contracted_cost: Decimal = Field(sa_column=Column(AMOUNT, nullable=False))
    currency: str = Field(max_length=3)
    charge_class: str | None = Field(default=None, max_length=16)  # FOCUS ChargeClass: None or "Correction"
    window_start: datetime = Field(sa_type=UTCDateTime, nullable=False)
    window_end: datetime = Field(sa_type=UTCDateTime, nullable=False)
    price_card_id: int | None = Field(
        default=None, sa_column=Column(Integer, ForeignKey("price_card.id", ondelete="SET NULL"))
    )
    corrects_period: str | None = Field(default=None, max_length=7)


class IdleCharge(SQLModel, table=True):
    """Capacity nobody leased in a period, priced at list: absorbed by the platform or shared out."""

    __tablename__ = "idle_charge"

    id: int | None = Field(default=None, primary_key=True)
    period: str = Field(max_length=7, index=True)
    sku: str = Field(max_length=128)
    unit: str = Field(max_length=32)
    quantity: Decimal = Field(sa_column=Column(QUANTITY, nullable=False))
    unit_price: Decimal = Field(sa_column=Column(UNIT_PRICE, nullable=False))
    cost: Decimal = Field(sa_column=Column(AMOUNT, nullable=False))
    currency: str = Field(max_length=3)
    window_start: datetime = Field(sa_type=UTCDateTime, nullable=False)
    window_end: datetime = Field(sa_type=UTCDateTime, nullable=False)
    policy: str = Field(max_length=16)  # platform | share


class UsageDay(SQLModel, table=True):
    """One tenant's usage of one SKU on one UTC day (per Kubernetes namespace; '' for other usage),
    with its share of the bill line that charged it: written by the bills run beside the bills
    (`metering.usage_days`), so the console's and reconciliation's sums of a month read these rows
    instead of the month's hourly usage. A period's shares add up exactly to its usage lines."""

    __tablename__ = "usage_day"
    __table_args__ = (UniqueConstraint("period", "tenant_id", "day", "sku", "namespace", name="uq_usage_day_key"),)

    id: int | None = Field(default=None, primary_key=True)
    period: str = Field(max_length=7)
    tenant_id: int = Field(sa_column=Column(Integer, ForeignKey("tenant.id", ondelete="RESTRICT"), nullable=False))
    day: date = Field(sa_column=Column(Date, nullable=False))
    sku: str = Field(max_length=128)
    unit: str = Field(max_length=32)
    namespace: str = Field(default="", max_length=128)  # Kubernetes usage: the namespace; '' for leases, energy
    quantity_parts: int = Field(sa_column=Column(BigInteger, nullable=False))  # exact, as `UsageRecord.quantity_parts`
    list_cost: Decimal = Field(sa_column=Column(AMOUNT, nullable=False))
    contracted_cost: Decimal = Field(sa_column=Column(AMOUNT, nullable=False))


class Budget(SQLModel, table=True):
    """A budget per period for a tenant, or for a tenant within one VDC, with alert thresholds:
    of spend (`unit` money) or of emissions (`unit` kg-co2e, tenant-wide)."""

    __tablename__ = "budget"
    __table_args__ = (CheckConstraint("amount > 0", name="ck_budget_amount"),)

    id: int | None = Field(default=None, primary_key=True)
    tenant_id: int = Field(sa_column=Column(Integer, ForeignKey("tenant.id", ondelete="CASCADE"), nullable=False, index=True))
    vdc_id: int | None = Field(default=None, sa_column=Column(Integer, ForeignKey("vdc.id", ondelete="CASCADE")))
    name: str = Field(max_length=100)
    amount: Decimal = Field(sa_column=Column(AMOUNT, nullable=False))
    currency: str = Field(max_length=3)  # "" for an emissions budget
    unit: str = Field(default="money", max_length=16)  # money (the bill, in `currency`) | kg-co2e (emissions)
    thresholds: list[int] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


class BudgetAlert(SQLModel, table=True):
    """One crossed threshold (of a budget, or of a VDC GPU-hours quota) in one period; sent once."""

    __tablename__ = "budget_alert"
    __table_args__ = (UniqueConstraint("subject", "period", "threshold", name="uq_budget_alert_once"),)

    id: int | None = Field(default=None, primary_key=True)
    subject: str = Field(max_length=64)  # budget:ID | forecast:budget:ID | quota:VDC_ID[:TENANT_ID]
    kind: str = Field(max_length=16)  # budget | budget-forecast | gpu-hours
    tenant_id: int | None = Field(default=None, sa_column=Column(Integer, ForeignKey("tenant.id", ondelete="CASCADE"), index=True))
    budget_id: int | None = Field(default=None, sa_column=Column(Integer, ForeignKey("budget.id", ondelete="CASCADE")))
    vdc_id: int | None = Field(default=None, sa_column=Column(Integer, ForeignKey("vdc.id", ondelete="CASCADE")))
    period: str = Field(max_length=7)
    threshold: int
    value: Decimal = Field(sa_column=Column(AMOUNT, nullable=False))
    limit_value: Decimal = Field(sa_column=Column(AMOUNT, nullable=False))
    message: str = Field(max_length=500)
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    delivered_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    attempts: int = Field(default=0)
    last_error: str | None = Field(default=None, max_length=500)


class CarbonIntensity(SQLModel, table=True):
    """The grid's carbon intensity in one zone and hour (gCO2e per kWh), imported or fetched."""

    __tablename__ = "carbon_intensity"
    __table_args__ = (UniqueConstraint("zone", "hour"),)

    id: int | None = Field(default=None, primary_key=True)
    zone: str = Field(max_length=64)
    hour: datetime = Field(sa_type=UTCDateTime, nullable=False, index=True)
    g_co2e_per_kwh: Decimal = Field(sa_column=Column(ExactNumeric(12, 3), nullable=False))
    source: str = Field(default="import", max_length=16)  # import | fetch
