"""The FOCUS 1.2 columns Kiln exports (in the specification's alphabetical order), their allowed values,
and the per-row rules a `metering.focus.FocusRow` is checked against.

Source: FinOps FOCUS 1.2 (`specification/columns/*.md` of FinOps-Open-Cost-and-Usage-Spec/FOCUS_Spec
at tag v1.2) and the rule model shipped with the official `focus-validator`.

Kiln declares these provider features (the validator's applicability criteria): usage measurement,
unit pricing, negotiated pricing (per-tenant contract discounts), sub accounts (tenants), billing
based on provisioned resources with resource types, regions (site/rack), tags and billing-account
names. Every Mandatory column and every Conditional column those features require is exported.
The commitment-discount and capacity-reservation columns are exported and always NULL (Kiln sells
neither). Not exported, because Kiln prices and bills in one currency and has no availability
zones or several billing-account types: AvailabilityZone, BillingAccountType and the four
PricingCurrency* columns (when present, FOCUS requires them to be non-null). InvoiceId
(Recommended) is exported: the bill a charge is on (draft bills are provisional invoices).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import MAX_PREC, Context, Decimal, Inexact, localcontext
from types import MappingProxyType
from typing import TYPE_CHECKING

from metering.money import MINOR_UNITS

if TYPE_CHECKING:
    from metering.focus import FocusRow

DECIMAL_PRECISION = 38
DECIMAL_SCALE = 18  # Parquet decimal128(38, 18): 20 integer digits, 18 decimal places
CUSTOM_COLUMN = re.compile(r"^x_[A-Za-z0-9_]{1,60}$")

JsonScalar = str | int | bool | Decimal | None

STRING = "String"
DECIMAL = "Decimal"
DATETIME = "Date/Time"
JSON = "JSON"

# (column id, FOCUS data type), in the order the columns are written.
FOCUS_COLUMNS: tuple[tuple[str, str], ...] = (
    ("BilledCost", DECIMAL),
    ("BillingAccountId", STRING),
    ("BillingAccountName", STRING),
    ("BillingCurrency", STRING),
    ("BillingPeriodEnd", DATETIME),
    ("BillingPeriodStart", DATETIME),
    ("CapacityReservationId", STRING),
    ("CapacityReservationStatus", STRING),
    ("ChargeCategory", STRING),
    ("ChargeClass", STRING),
    ("ChargeDescription", STRING),
    ("ChargeFrequency", STRING),
    ("ChargePeriodEnd", DATETIME),
    ("ChargePeriodStart", DATETIME),
    ("CommitmentDiscountCategory", STRING),
    ("CommitmentDiscountId", STRING),
    ("CommitmentDiscountName", STRING),
    ("CommitmentDiscountQuantity", DECIMAL),
    ("CommitmentDiscountStatus", STRING),
    ("CommitmentDiscountType", STRING),
    ("CommitmentDiscountUnit", STRING),
    ("ConsumedQuantity", DECIMAL),
    ("ConsumedUnit", STRING),
    ("ContractedCost", DECIMAL),
    ("ContractedUnitPrice", DECIMAL),
    ("EffectiveCost", DECIMAL),
    ("InvoiceId", STRING),
    ("InvoiceIssuerName", STRING),
    ("ListCost", DECIMAL),
    ("ListUnitPrice", DECIMAL),
    ("PricingCategory", STRING),
    ("PricingQuantity", DECIMAL),
    ("PricingUnit", STRING),
    ("ProviderName", STRING),
    ("PublisherName", STRING),
    ("RegionId", STRING),
    ("RegionName", STRING),
    ("ResourceId", STRING),
    ("ResourceName", STRING),
    ("ResourceType", STRING),
    ("ServiceCategory", STRING),
    ("ServiceName", STRING),
    ("ServiceSubcategory", STRING),
    ("SkuId", STRING),
    ("SkuMeter", STRING),
    ("SkuPriceDetails", JSON),
    ("SkuPriceId", STRING),
    ("SubAccountId", STRING),
    ("SubAccountName", STRING),
    ("SubAccountType", STRING),
    ("Tags", JSON),
)
FOCUS_COLUMN_NAMES: tuple[str, ...] = tuple(name for name, _ in FOCUS_COLUMNS)

# The validator's applicability criteria matching the features above (see the module docstring).
APPLICABILITY_CRITERIA: tuple[str, ...] = (
    "ACCOUNT_NAMING_SUPPORTED",
    "BILLING_BASED_ON_PROVISIONED_RESOURCES_SUPPORTED",
    "NEGOTIATED_PRICING_SUPPORTED",
    "REGION_SUPPORTED",
    "RESOURCE_TYPE_ASSIGNMENT_SUPPORTED",
    "SUB_ACCOUNT_SUPPORTED",
    "TAGGING_SUPPORTED",
    "UNIT_PRICING_SUPPORTED",
    "USAGE_MEASUREMENT_SUPPORTED",
)

CHARGE_CATEGORIES = frozenset({"Usage", "Purchase", "Tax", "Credit", "Adjustment"})
CHARGE_CLASSES = frozenset({"Correction"})
CHARGE_FREQUENCIES = frozenset({"One-Time", "Recurring", "Usage-Based"})
PRICING_CATEGORIES = frozenset({"Standard", "Dynamic", "Committed", "Other"})
SUB_ACCOUNT_TYPE = "Tenant"

# FOCUS-defined SkuPriceDetails properties; any other key must start with `x_`.
SKU_PRICE_PROPERTIES = frozenset({
    "CoreCount", "DiskMaxIops", "DiskSpace", "DiskType", "GpuCount", "InstanceType", "InstanceSeries",
    "MemorySize", "NetworkMaxIops", "NetworkMaxThroughput", "OperatingSystem", "Redundancy", "StorageClass",
})

_SUBCATEGORIES = {
    "AI and Machine Learning": "AI Platforms|Bots|Generative AI|Machine Learning|Natural Language Processing",
    "Analytics": "Analytics Platforms|Business Intelligence|Data Processing|Search|Streaming Analytics",
    "Business Applications": "Productivity and Collaboration",
    "Compute": "Containers|End User Computing|Quantum Compute|Serverless Compute|Virtual Machines",
    "Databases": "Caching|Data Warehouses|Ledger Databases|NoSQL Databases|Relational Databases|"
    "Time Series Databases",
    "Developer Tools": "Developer Platforms|Continuous Integration and Deployment|Development Environments|"
    "Source Code Management|Quality Assurance",
    "Identity": "Identity and Access Management",
    "Integration": "API Management|Messaging|Workflow Orchestration",
    "Internet of Things": "IoT Analytics|IoT Platforms",
    "Management and Governance": "Architecture|Compliance|Cost Management|Data Governance|Disaster Recovery|"
    "Endpoint Management|Observability|Support",
    "Media": "Content Creation|Gaming|Media Streaming|Mixed Reality",
    "Migration": "Data Migration|Resource Migration",
    "Mobile": "",
    "Multicloud": "Multicloud Integration",
    "Networking": "Application Networking|Content Delivery|Network Connectivity|Network Infrastructure|"
    "Network Routing|Network Security",
    "Security": "Secret Management|Security Posture Management|Threat Detection and Response",
    "Storage": "Backup Storage|Block Storage|File Storage|Object Storage|Storage Platforms",
    "Web": "Application Platforms",
    "Other": "",
}
# ServiceCategory → its allowed ServiceSubcategory values (each category also has "Other (<category>)").
SERVICE_SUBCATEGORIES: dict[str, frozenset[str]] = {
    category: frozenset([*filter(None, names.split("|")), f"Other ({category})"])
    for category, names in _SUBCATEGORIES.items()
}
SERVICE_CATEGORIES = frozenset(SERVICE_SUBCATEGORIES)


class FocusRowError(ValueError):
    """A charge that cannot be written as a valid FOCUS 1.2 row; the message says which field and why."""


# --- per-row rules ---------------------------------------------------------------------------


def check_custom_columns(names: Sequence[str]) -> list[str]:
    """`names` as a list if each is a distinct `x_` custom column name; FocusRowError otherwise."""
    names = list(names)
    for name in names:
        if not isinstance(name, str) or not CUSTOM_COLUMN.match(name):
            raise FocusRowError(f"custom column {name!r} must be 'x_' followed by letters, digits or '_'")
    if len(set(names)) != len(names):
        raise FocusRowError(f"custom columns {names} repeat a name")
    return names


def _fail(field_name: str, problem: str) -> None:
    raise FocusRowError(f"FOCUS row: {field_name} {problem}")


def check_row(r: FocusRow) -> None:
    """Check a new row and normalise it; FocusRowError naming the field otherwise.

    Normalised: datetimes to UTC, mappings to read-only copies, and a resource_name equal to the
    resource_id to None (FOCUS: ResourceName MUST NOT duplicate a system-generated ResourceId).
    """
    for name in _DATETIMES:
        value = getattr(r, name)
        if type(value) is not datetime or value.tzinfo is not UTC or value.microsecond:
            object.__setattr__(r, name, _utc(name, value))
    if r.billing_period_end <= r.billing_period_start:
        _fail("billing_period_end", "must be after billing_period_start")
    if r.charge_period_end <= r.charge_period_start:
        _fail("charge_period_end", "must be after charge_period_start")
    for name in _REQUIRED_TEXT:
        value = getattr(r, name)
        if type(value) is not str or not value or value.isspace():
            _check_text(name, value, required=True)
    for name in _OPTIONAL_TEXT:
        value = getattr(r, name)
        if value is not None and (type(value) is not str or not value or value.isspace()):
            _check_text(name, value, required=False)
    for name in _REQUIRED_DECIMALS:
        value = getattr(r, name)
        if type(value) is not Decimal or not value.is_finite():
            _check_decimal(name, value, required=True)
    for name in _OPTIONAL_DECIMALS:
        value = getattr(r, name)
        if value is not None and (type(value) is not Decimal or not value.is_finite()):
            _check_decimal(name, value, required=False)
    if r.currency not in MINOR_UNITS:
        _fail("currency", f"{r.currency!r} is not an upper-case ISO 4217 code such as EUR or USD")
    if r.resource_name is not None and r.resource_name == r.resource_id:
        object.__setattr__(r, "resource_name", None)
    _check_allowed_values(r)
    _check_nullability(r)
    _check_costs(r)
    object.__setattr__(r, "tags", _check_json("tags", r.tags, any_key=True))
    object.__setattr__(r, "sku_price_details", _check_json("sku_price_details", r.sku_price_details, any_key=False))
    if type(r.extra) is not dict and not isinstance(r.extra, Mapping):
        _fail("extra", f"must be a mapping of x_ column names to strings, not {type(r.extra).__name__}")
    extra = dict(r.extra)
    for name, value in extra.items():
        if type(name) is not str or not CUSTOM_COLUMN.match(name):
            check_custom_columns([name])
        if value is not None and (type(value) is not str or not value or value.isspace()):
            _check_text(f"extra[{name!r}]", value, required=False)
    object.__setattr__(r, "extra", MappingProxyType(extra))


_DATETIMES = ("billing_period_start", "billing_period_end", "charge_period_start", "charge_period_end")

_REQUIRED_TEXT = ("billing_account_id", "billing_account_name", "provider_name", "charge_category",
                  "service_name", "charge_frequency", "service_category", "service_subcategory")
_OPTIONAL_TEXT = ("tenant_slug", "tenant_name", "charge_description", "resource_id", "resource_name",
                  "resource_type", "sku_id", "sku_price_id", "pricing_unit", "consumed_unit", "charge_class",
                  "pricing_category", "region_id", "region_name", "sku_meter", "invoice_id")
_REQUIRED_DECIMALS = ("list_cost", "contracted_cost", "effective_cost", "billed_cost")
_OPTIONAL_DECIMALS = ("pricing_quantity", "consumed_quantity", "list_unit_price", "contracted_unit_price")


def _utc(name: str, value: object) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        _fail(name, f"must be a timezone-aware datetime, not {value!r}")
    if value.microsecond:  # type: ignore[union-attr]
        _fail(name, f"must be whole seconds (FOCUS writes YYYY-MM-DDTHH:mm:ssZ), not {value!r}")
    return value.astimezone(UTC)  # type: ignore[union-attr]


def _check_text(name: str, value: object, *, required: bool) -> None:
    if value is None:
        if required:
            _fail(name, "must not be None")
        return
    if not isinstance(value, str):
        _fail(name, f"must be a string, not {type(value).__name__}")
    if not value.strip():  # type: ignore[union-attr]
        _fail(name, "must not be empty or blank (use None for NULL)")


def _check_decimal(name: str, value: object, *, required: bool) -> None:
    if value is None:
        if required:
            _fail(name, "must not be None")
        return
    if not isinstance(value, Decimal):
        _fail(name, f"must be a Decimal (money is never float), not {type(value).__name__}")
    if not value.is_finite():  # type: ignore[union-attr]
        _fail(name, f"must be finite, not {value}")


def _check_allowed_values(r: FocusRow) -> None:
    allowed = (("charge_category", CHARGE_CATEGORIES), ("charge_class", CHARGE_CLASSES),
               ("charge_frequency", CHARGE_FREQUENCIES), ("pricing_category", PRICING_CATEGORIES),
               ("service_category", SERVICE_SUBCATEGORIES))
    for name, values in allowed:
        value = getattr(r, name)
        if value is not None and value not in values:
            _fail(name, f"{value!r} is not one of {sorted(values)}")
    if r.service_subcategory not in SERVICE_SUBCATEGORIES[r.service_category]:
        _fail("service_subcategory", f"{r.service_subcategory!r} is not a subcategory of {r.service_category!r}")
    if r.charge_category == "Purchase" and r.charge_frequency == "Usage-Based":
        _fail("charge_frequency", "must not be 'Usage-Based' for a Purchase")


def _check_nullability(r: FocusRow) -> None:
    pairs = (("pricing_unit", "pricing_quantity"), ("consumed_unit", "consumed_quantity"),
             ("tenant_name", "tenant_slug"), ("resource_type", "resource_id"), ("region_name", "region_id"))
    for dependent, key in pairs:
        if (getattr(r, dependent) is None) != (getattr(r, key) is None):
            _fail(dependent, f"must be set exactly when {key} is set")
    for dependent, key in (("resource_name", "resource_id"), ("sku_price_details", "sku_price_id")):
        if getattr(r, dependent) is not None and getattr(r, key) is None:
            _fail(dependent, f"must be None when {key} is None")
    if (r.sku_meter is None) != (r.sku_id is None):
        _fail("sku_meter", "must be set exactly when sku_id is set (what the SKU meters, e.g. 'GPU Hours')")
    priced = ("sku_id", "sku_price_id", "pricing_quantity", "list_unit_price", "contracted_unit_price",
              "pricing_category")
    if r.charge_category == "Tax":
        for name in priced:
            if getattr(r, name) is not None:
                _fail(name, "must be None for a Tax charge")
    elif r.charge_category in ("Usage", "Purchase") and r.charge_class is None:
        for name in priced:
            if getattr(r, name) is None:
                _fail(name, f"must be set for a {r.charge_category} charge that is not a correction")
    if r.charge_category != "Usage" and r.consumed_quantity is not None:
        _fail("consumed_quantity", f"must be None for a {r.charge_category} charge")
    if r.charge_category == "Usage" and r.charge_class is None and r.consumed_quantity is None:
        _fail("consumed_quantity", "must be set for a Usage charge that is not a correction")


def _check_costs(r: FocusRow) -> None:
    for name in ("list_unit_price", "contracted_unit_price"):
        price = getattr(r, name)
        if price is not None and price < 0:
            _fail(name, f"must not be negative, not {price}")
    if r.charge_class is not None or r.pricing_quantity is None:
        return  # FOCUS allows corrections to differ from unit price × quantity
    for price_name, cost_name in (("list_unit_price", "list_cost"), ("contracted_unit_price", "contracted_cost")):
        price, cost = getattr(r, price_name), getattr(r, cost_name)
        if price is None:
            continue
        # FOCUS 1.2 ListCost-C-009-C / ContractedCost-C-009-C: the product, exactly (no rounding
        # tolerance: the invoiced, rounded amount belongs in BilledCost).
        exact = exact_product(price, r.pricing_quantity)
        if exact != cost:
            _fail(cost_name, f"{cost} is not {price_name} × pricing_quantity = {exact} exactly")


def exact_product(a: Decimal, b: Decimal) -> Decimal:
    """`a × b` with every digit (Decimal's default context keeps only 28 significant digits)."""
    with localcontext(_EXACT):
        return a * b


_EXACT = Context(prec=MAX_PREC, traps=[Inexact])


def _check_json(name: str, mapping: object, *, any_key: bool) -> Mapping[str, JsonScalar] | None:
    if mapping is None:
        return None
    if type(mapping) is not dict and not isinstance(mapping, Mapping):
        _fail(name, f"must be a mapping, not {type(mapping).__name__}")
    for key, value in mapping.items():  # type: ignore[union-attr]
        if type(key) is not str or not key:
            _fail(name, f"keys must be non-empty strings, not {key!r}")
        if not any_key and key not in SKU_PRICE_PROPERTIES and not key.startswith("x_"):
            _fail(name, f"key {key!r} is neither a FOCUS SKU price property nor 'x_'-prefixed")
        if type(value) not in _JSON_SCALARS:
            _fail(name, f"value of {key!r} must be a string, integer, Decimal, boolean or None")
        if type(value) is Decimal and not value.is_finite():  # type: ignore[union-attr]
            _fail(name, f"value of {key!r} must be finite")
    return MappingProxyType(dict(mapping))  # type: ignore[arg-type]


_JSON_SCALARS = frozenset({str, int, bool, Decimal, type(None)})
