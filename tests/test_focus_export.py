"""FOCUS 1.2 export: the official focus-validator accepts Kiln's CSV and Parquet, and the values,
NULLs, timestamps, sums and memory use are checked directly (where the validator is lax)."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import re
import subprocess
import tracemalloc
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from metering.focus import FocusRow, FocusRowError, focus_header, write_focus
from metering.focus_columns import APPLICABILITY_CRITERIA, FOCUS_COLUMN_NAMES
from metering.money import round_amount
from tests.peers.harness import missing_peer

FOCUS_SH = Path(__file__).parent / "peers" / "focus.sh"
OCTOBER = (datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC))
EXTRAS = ["x_TenantVdc", "x_GpuModel", "x_Source"]
# FOCUS 1.2 columns whose Feature level is Mandatory (specification/columns/*.md at tag v1.2).
MANDATORY = """BilledCost BillingAccountId BillingAccountName BillingCurrency BillingPeriodEnd BillingPeriodStart
    ChargeCategory ChargeClass ChargeDescription ChargePeriodEnd ChargePeriodStart ContractedCost EffectiveCost
    InvoiceIssuerName ListCost PricingQuantity PricingUnit ProviderName PublisherName ServiceCategory
    ServiceName""".split()
H100_LIST = Decimal("2.345678901")  # per GPU-hour, 9 decimal places
# A charge for no SKU and no resource (a credit, an adjustment): every pricing column NULL.
UNPRICED = dict.fromkeys(("resource_id", "resource_name", "resource_type", "sku_id", "sku_price_id", "sku_meter",
                          "pricing_unit", "pricing_quantity", "consumed_unit", "consumed_quantity", "list_unit_price",
                          "contracted_unit_price", "pricing_category", "sku_price_details", "tags"))


def focus_row(**overrides: object) -> FocusRow:
    """One GPU-hour of an H100 leased by tenant acme on 2026-10-05, exactly priced, with `overrides`.

    `quantity`, `list_price` and `discount` (fraction) are shortcuts that also set the costs.
    """
    quantity = overrides.pop("quantity", Decimal("1.000000"))
    list_price = overrides.pop("list_price", H100_LIST)
    discount = overrides.pop("discount", Decimal(0))
    contracted_price = list_price * (1 - discount)
    start = overrides.pop("start", datetime(2026, 10, 5, 0, tzinfo=UTC))
    fields: dict[str, object] = dict(
        billing_period_start=OCTOBER[0], billing_period_end=OCTOBER[1],
        charge_period_start=start, charge_period_end=start + timedelta(hours=1),
        billing_account_id="kiln:operator:example-gpu-cloud", billing_account_name="Example GPU Cloud",
        provider_name="Example GPU Cloud", tenant_slug="acme", tenant_name="Acme Research",
        charge_category="Usage", charge_description="GPU-hours of NVIDIA H100 80GB HBM3 on leased nodes",
        service_name="Kiln Bare Metal", resource_id="node/5f0c2a9e/gpu/0", resource_name="gpu-a01 GPU 0",
        resource_type="GPU", sku_id="gpu-hour:NVIDIA H100 80GB HBM3", sku_price_id="price-card/7",
        sku_meter="GPU Hours", pricing_unit="GPU-Hours", pricing_quantity=quantity,
        consumed_unit="GPU-Hours", consumed_quantity=quantity,
        list_unit_price=list_price, contracted_unit_price=contracted_price,
        list_cost=list_price * quantity, contracted_cost=contracted_price * quantity,
        effective_cost=contracted_price * quantity, billed_cost=contracted_price * quantity, currency="EUR",
        region_id="fra-1", region_name="Frankfurt site 1, rack B07",
        sku_price_details={"GpuCount": 1, "x_GpuModel": "NVIDIA H100 80GB HBM3", "x_ListUnitPrice": list_price},
        tags={"team": "vision", "kiln/vdc": "acme-prod"}, invoice_id="bill/2026-10/acme",
        extra={"x_TenantVdc": "acme-prod", "x_GpuModel": "NVIDIA H100 80GB HBM3", "x_Source": "lease"},
    )
    fields.update(overrides)
    return FocusRow(**fields)  # type: ignore[arg-type]


def day_of_charges() -> list[FocusRow]:
    """A day at a small GPU cloud: three tenants, discounts, energy, idle capacity, a credit, a correction."""
    rows = []
    tenants = [("acme", "Acme Research", Decimal(0), "fra-1"), ("globex", "Globex AI", Decimal("0.15"), None),
               ("initech", "Initech", Decimal("0.075"), "fra-1")]
    kwh, price = Decimal("5.123457"), Decimal("0.287000000")
    exact, rounded = price * kwh, round_amount(price * kwh, "EUR")  # billed: rounded the way bills round it
    for slug, name, discount, region in tenants:
        for hour in range(24):
            who = {"tenant_slug": slug, "tenant_name": name, "start": datetime(2026, 10, 5, hour, tzinfo=UTC),
                   "invoice_id": f"bill/2026-10/{slug}", "region_id": region,
                   "region_name": "Frankfurt site 1" if region else None}
            gpu_hours = Decimal("3.333333") if hour == 0 else Decimal("8.000000")  # the lease starts at :35
            rows.append(focus_row(**who, quantity=gpu_hours, discount=discount, extra={
                "x_TenantVdc": f"{slug}-prod", "x_GpuModel": "NVIDIA H100 80GB HBM3", "x_Source": "lease"}))
            rows.append(focus_row(
                **who, charge_description="Metered energy (BMC power)", resource_id=f"node/{slug}-a01",
                resource_name=f"{slug}-a01", resource_type="Bare Metal Node", sku_id="kwh", sku_price_id="price-card/9",
                sku_meter="Energy", pricing_unit="kWh", consumed_unit="kWh", quantity=kwh, list_price=price,
                list_cost=exact, contracted_cost=exact, effective_cost=rounded, billed_cost=rounded,
                sku_price_details=None, tags=None, extra={"x_TenantVdc": f"{slug}-prod", "x_Source": "energy"},
            ))
    idle = Decimal("0.500000")
    rows.append(focus_row(
        tenant_slug=None, tenant_name=None, quantity=idle, resource_id="node/spare-b02", resource_name="spare-b02",
        resource_type="Bare Metal Node", sku_id="node-hour:gpu-large", sku_price_id="price-card/3",
        sku_meter="Node Hours", invoice_id=None, pricing_unit="Hours", consumed_unit="Hours",
        charge_description="Idle capacity absorbed by the platform", sku_price_details=None, tags=None,
        extra={"x_Source": "idle"},
    ))
    credit = Decimal("-50.00")
    rows.append(focus_row(
        **UNPRICED, tenant_slug="globex", tenant_name="Globex AI", charge_category="Adjustment",
        charge_frequency="One-Time", charge_description="Goodwill credit for the 2026-10-02 outage",
        list_cost=credit, contracted_cost=credit, effective_cost=credit, billed_cost=credit, region_id=None,
        region_name=None, invoice_id="bill/2026-10/globex", extra={"x_Source": "adjustment"},
    ))
    # September was finalised; two GPU-hours found later are billed in October as a correction.
    rows.append(focus_row(
        charge_class="Correction", start=datetime(2026, 9, 30, 22, tzinfo=UTC), quantity=Decimal("2.000000"),
        charge_description="Correction of 2026-09: GPU-hours missed by a stalled collector",
        list_unit_price=None, contracted_unit_price=None, sku_price_details=None, extra={"x_Source": "correction"},
    ))
    return rows


# --- the official validator ------------------------------------------------------------------


def run_validator(data: Path, out_dir: Path) -> tuple[dict[str, str], dict[str, dict]]:
    """Run the real focus-validator on `data`: (rule id → passed/failed/errored/skipped, rule model)."""
    env = {**os.environ, "FOCUS_APPLICABILITY_CRITERIA": ",".join(APPLICABILITY_CRITERIA)}
    try:
        done = subprocess.run(["bash", str(FOCUS_SH), "run", str(data), str(out_dir)], capture_output=True, text=True,
                              timeout=600, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        missing_peer("focus-validator", str(exc))
    if done.returncode == 3:
        missing_peer("focus-validator", done.stderr.strip())
    assert done.returncode == 0, done.stderr
    results = {}
    for case in ET.parse(out_dir / "report.xml").iter("testcase"):
        rule = case.get("name", "").split(" :: ")[0]
        outcome = next((tag for tag in ("failure", "error", "skipped") if case.find(tag) is not None), "passed")
        results[rule] = {"failure": "failed", "error": "errored"}.get(outcome, outcome)
    return results, json.loads((out_dir / "model.json").read_text())["ModelRules"]


# focus-validator 2.2.1's 1.2 model drops the (prose) condition of InvoiceId-C-004-C and -C-005-C: one
# demands InvoiceId null on every row, the other non-null, so any InvoiceId column fails one (Kiln fills it
# for charges on a bill, NULL otherwise). They and their composites are excused; the type and format rules
# (InvoiceId-C-001-M, -C-002-M) must pass.
VALIDATOR_MODEL_DEFECTS = {"InvoiceId-C-000-O", "InvoiceId-C-003-C", "InvoiceId-C-004-C", "InvoiceId-C-005-C"}


def broken_rules(results: dict[str, str], model: dict[str, dict]) -> list[str]:
    """Failed or errored rules (but the validator's known model defects) with keyword and text."""
    criteria = {rule: model[rule]["ValidationCriteria"] for rule in results}
    return [f"{rule} [{criteria[rule]['Keyword']}] {criteria[rule]['MustSatisfy']}"
            for rule, outcome in sorted(results.items())
            if outcome in ("failed", "errored") and rule not in VALIDATOR_MODEL_DEFECTS]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_the_official_validator_accepts_the_export(fmt: str, tmp_path: Path) -> None:
    data = tmp_path / f"focus.{fmt}"
    assert write_focus(day_of_charges(), fmt, data) == 3 * 24 * 2 + 3  # type: ignore[arg-type]
    results, model = run_validator(data, tmp_path / "validator")
    assert broken_rules(results, model) == []
    # Not vacuous: every mandatory presence rule passed, each mandatory column's own rules (type,
    # format, nullability, …) ran and passed, and so did many more.
    presence = [rule for rule in results if rule.endswith("-M") and model[rule]["Function"] == "Presence"]
    assert len(presence) >= 20 and all(results[rule] == "passed" for rule in presence)
    for column in MANDATORY:
        passed = [rule for rule, outcome in results.items() if rule.startswith(f"{column}-C-") and outcome == "passed"]
        assert len(passed) >= 3, (column, passed)
    assert results["InvoiceId-C-001-M"] == results["InvoiceId-C-002-M"] == "passed"
    assert sum(outcome == "passed" for outcome in results.values()) > 200


def test_the_validator_run_reports_a_broken_file(tmp_path: Path) -> None:
    """The harness reads per-rule results: whole-number costs are not of type Decimal and must fail."""
    data = tmp_path / "focus.csv"
    write_focus(day_of_charges(), "csv", data)
    table = list(csv.reader(data.open(newline="")))
    billed = table[0].index("BilledCost")
    for line in table[1:]:
        line[billed] = str(int(Decimal(line[billed])))
    with data.open("w", newline="") as stream:
        csv.writer(stream, lineterminator="\n").writerows(table)
    results, model = run_validator(data, tmp_path / "validator")
    assert results["BilledCost-C-001-M"] == "failed"
    assert any(rule.startswith("BilledCost-C-001-M [MUST]") for rule in broken_rules(results, model))


# --- direct checks ----------------------------------------------------------------------------


def read_csv(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))


def test_columns_are_focus_then_custom_in_spec_order() -> None:
    header = focus_header(EXTRAS)
    assert list(FOCUS_COLUMN_NAMES) == sorted(FOCUS_COLUMN_NAMES)  # FOCUS presents columns alphabetically
    assert header == [*FOCUS_COLUMN_NAMES, *EXTRAS]
    assert set(MANDATORY) <= set(FOCUS_COLUMN_NAMES)
    assert [name for name in header if not name[0].isupper()] == EXTRAS
    write_focus([focus_row()], "csv", out := io.BytesIO())
    assert out.getvalue().decode().splitlines()[0].split(",") == header
    assert list(pq.read_schema(_parquet_bytes([focus_row()])).names) == header


def _parquet_bytes(rows: list[FocusRow], **kwargs: object) -> pa.BufferReader:
    write_focus(rows, "parquet", out := io.BytesIO(), **kwargs)  # type: ignore[arg-type]
    return pa.BufferReader(out.getvalue())


def test_csv_writes_nulls_as_empty_fields_timestamps_in_utc_z_and_exact_decimals() -> None:
    rows = day_of_charges()
    write_focus(rows, "csv", out := io.BytesIO())
    written = read_csv(out.getvalue())
    assert len(written) == len(rows)
    for row, line in zip(rows, written):
        for column in ("BillingPeriodStart", "BillingPeriodEnd", "ChargePeriodStart", "ChargePeriodEnd"):
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", line[column]), line[column]
        assert line["CapacityReservationId"] == line["CommitmentDiscountId"] == ""
        assert line["RegionId"] == (row.region_id or "")
        assert line["SubAccountId"] == (row.tenant_slug or "")
        assert line["SubAccountType"] == ("Tenant" if row.tenant_slug else "")
        for column in ("BilledCost", "ListCost", "ContractedCost", "EffectiveCost"):
            assert "." in line[column] and "E" not in line[column].upper()
        assert Decimal(line["BilledCost"]) == row.billed_cost  # every digit kept
    correction = written[-1]
    assert correction["ChargeClass"] == "Correction" and correction["ListUnitPrice"] == ""
    assert correction["ChargePeriodStart"] == "2026-09-30T22:00:00Z"
    assert correction["BillingPeriodStart"] == "2026-10-01T00:00:00Z"
    assert written[0]["PricingQuantity"] == "3.333333"
    assert written[0]["BilledCost"] == "7.818928888107033"  # 2.345678901 × 3.333333, 15 decimal places
    assert json.loads(written[0]["Tags"]) == {"team": "vision", "kiln/vdc": "acme-prod"}
    assert json.loads(written[0]["SkuPriceDetails"])["x_ListUnitPrice"] == 2.345678901
    assert '"x_ListUnitPrice":2.345678901' in written[0]["SkuPriceDetails"]  # a JSON number, never via float


def test_parquet_has_typed_columns_real_nulls_and_exact_values() -> None:
    rows = day_of_charges()
    schema = (table := pq.read_table(_parquet_bytes(rows))).schema
    assert schema.field("BilledCost").type == pa.decimal128(38, 18)
    assert schema.field("ChargePeriodStart").type == pa.timestamp("us", tz="UTC")
    assert schema.field("Tags").type == pa.string() and schema.field("x_Source").type == pa.string()
    records = table.to_pylist()
    assert len(records) == len(rows)
    for row, record in zip(rows, records):
        assert record["BilledCost"] == row.billed_cost and record["ListCost"] == row.list_cost
        assert record["ChargePeriodStart"] == row.charge_period_start
        assert record["CapacityReservationId"] is None and record["CommitmentDiscountQuantity"] is None
        assert record["RegionId"] == row.region_id and record["SubAccountId"] == row.tenant_slug
    assert records[-1]["ChargeClass"] == "Correction" and records[-1]["ListUnitPrice"] is None
    assert records[-2]["SkuId"] is None and records[-2]["PricingQuantity"] is None  # the credit
    assert records[-3]["SubAccountName"] is None and records[-3]["x_TenantVdc"] is None  # idle capacity
    assert table.column("RegionId").null_count == 24 * 2 + 1  # globex rows and the credit


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_billed_cost_sums_to_the_input_exactly(fmt: str) -> None:
    rows = day_of_charges()
    expected = sum((row.billed_cost for row in rows), Decimal(0))
    assert expected.as_tuple().exponent <= -15  # the fixture really carries sub-cent digits
    write_focus(rows, fmt, out := io.BytesIO())  # type: ignore[arg-type]
    if fmt == "csv":
        written = [Decimal(line["BilledCost"]) for line in read_csv(out.getvalue())]
    else:
        written = pq.read_table(pa.BufferReader(out.getvalue())).column("BilledCost").to_pylist()
    assert sum(written, Decimal(0)) == expected


BAD_ROWS = [
    ({"billed_cost": 2.5}, "billed_cost must be a Decimal"),
    ({"start": datetime(2026, 10, 5)}, "charge_period_start must be a timezone-aware datetime"),
    ({"start": datetime(2026, 10, 5, 0, 0, 0, 500, tzinfo=UTC)}, "whole seconds"),
    ({"charge_category": "usage"}, "charge_category 'usage' is not one of"),
    ({"charge_class": "Regular"}, "charge_class 'Regular'"),
    ({"service_subcategory": "Containers", "service_category": "Storage"}, "not a subcategory of 'Storage'"),
    ({"list_cost": Decimal("2.35")}, "list_cost 2.35 is not list_unit_price × pricing_quantity = 2.345678901000000"),
    ({"contracted_cost": Decimal("2.3456789")}, "contracted_cost 2.3456789 is not contracted_unit_price"),  # 1e-9 off
    ({"quantity": Decimal("0.583333"), "list_cost": Decimal("1.37")}, "list_cost 1.37 is not"),  # rounded: refused
    ({"sku_meter": None}, "sku_meter must be set exactly when sku_id is set"),
    ({"tenant_name": None}, "tenant_name must be set exactly when tenant_slug is set"),
    ({"region_name": None}, "region_name must be set exactly when region_id is set"),
    ({"consumed_quantity": None, "consumed_unit": None}, "consumed_quantity must be set for a Usage charge"),
    ({"charge_category": "Tax"}, "must be None for a Tax charge"),
    ({"currency": "eur"}, "currency 'eur' is not an upper-case ISO 4217 code"),
    ({"resource_type": ""}, "resource_type must not be empty"),
    ({"tags": {"team": 1.5}}, "value of 'team' must be a string"),
    ({"sku_price_details": {"Gpus": 8}}, "key 'Gpus' is neither a FOCUS SKU price property"),
    ({"extra": {"TenantVdc": "x"}}, "custom column 'TenantVdc' must be 'x_'"),
    ({"list_unit_price": Decimal("-1"), "list_cost": Decimal("-1")}, "list_unit_price must not be negative"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_ROWS, ids=[message for _, message in BAD_ROWS])
def test_rows_keep_the_spec_rules_the_validator_does_not_check(overrides: dict, message: str) -> None:
    """Bad charges are refused when built, with the field named; nothing is half-written."""
    with pytest.raises(FocusRowError, match=re.escape(message)):
        focus_row(**overrides)


def test_billed_and_effective_costs_may_be_rounded_and_other_zones_become_utc() -> None:
    """FOCUS ties ListCost/ContractedCost to unit price × quantity exactly; BilledCost (the invoiced
    amount) and EffectiveCost have no such rule, so they hold the line's amount in cents."""
    quantity = Decimal("0.583333")
    exact, cents = H100_LIST * quantity, round_amount(H100_LIST * quantity, "EUR")
    assert cents != exact
    row = focus_row(quantity=quantity, list_cost=exact, contracted_cost=exact, effective_cost=cents, billed_cost=cents,
                    start=datetime(2026, 10, 5, 2, tzinfo=timezone(timedelta(hours=2))))
    assert (row.list_cost, row.billed_cost) == (Decimal("1.368311910357033"), Decimal("1.37"))
    assert row.charge_period_start == datetime(2026, 10, 5, 0, tzinfo=UTC)
    assert row.to_record()["ChargePeriodStart"].tzinfo is UTC
    assert focus_row(resource_name="node/5f0c2a9e/gpu/0").resource_name is None  # a name that is the id is none


def test_export_refuses_unknown_custom_columns_and_values_parquet_cannot_hold() -> None:
    rows = [focus_row(), focus_row(extra={"x_Rack": "b07"})]
    with pytest.raises(FocusRowError, match=r"custom columns \['x_Rack'\] are not among"):
        write_focus(rows, "csv", io.BytesIO())
    assert write_focus(rows, "csv", io.BytesIO(), extra_columns=[*EXTRAS, "x_Rack"]) == 2
    fine = Decimal("0.0000000000000000001")  # 19 decimal places: CSV keeps it, decimal(38, 18) cannot
    row = focus_row(list_unit_price=fine, contracted_unit_price=fine, quantity=Decimal(1), list_cost=fine,
                    contracted_cost=fine, effective_cost=fine, billed_cost=fine)
    write_focus([row], "csv", out := io.BytesIO())
    assert read_csv(out.getvalue())[0]["BilledCost"] == "0.0000000000000000001"
    with pytest.raises(FocusRowError, match="FOCUS column BilledCost cannot be written as decimal128"):
        write_focus([row], "parquet", io.BytesIO())
    with pytest.raises(ValueError, match="unknown FOCUS export format 'json'"):
        write_focus(rows, "json", io.BytesIO())  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_failed_export_leaves_the_file_as_it_was(fmt: str, tmp_path: Path) -> None:
    path = tmp_path / f"focus.{fmt}"
    path.write_bytes(b"last month's export")
    rows = [focus_row(), focus_row(sku_id="kwh", sku_meter="Energy")]  # one SkuPriceId, two SkuIds
    with pytest.raises(FocusRowError, match="SkuPriceId 'price-card/7' belongs to SkuId 'gpu-hour:NVIDIA H100"):
        write_focus(rows, fmt, path)  # type: ignore[arg-type]
    assert path.read_bytes() == b"last month's export"
    assert list(tmp_path.iterdir()) == [path]


def test_no_rows_still_give_a_valid_header_and_schema_and_streams_stay_open(tmp_path: Path) -> None:
    out = io.BytesIO()
    assert write_focus([], "csv", out, extra_columns=EXTRAS) == 0
    assert not out.closed and out.getvalue().decode() == ",".join(focus_header(EXTRAS)) + "\n"
    assert pq.read_table(_parquet_bytes([], extra_columns=EXTRAS)).num_rows == 0
    assert write_focus(iter([]), "parquet", path := tmp_path / "empty.parquet") == 0
    assert pq.read_schema(path).names == list(FOCUS_COLUMN_NAMES)


# --- streaming --------------------------------------------------------------------------------

MANY = 200_000


def many_rows(count: int, trace_from: int | None = None) -> Iterator[FocusRow]:
    """`count` GPU-hour rows over a month for 200 tenants and 8,000 GPUs, each a new object with its
    own values, filled from one checked row (so the test measures the writer, not 200k row checks).
    From row `trace_from` on, tracemalloc runs."""
    template = focus_row()
    state = {f.name: getattr(template, f.name) for f in dataclasses.fields(FocusRow)}
    hours = [OCTOBER[0] + timedelta(hours=h) for h in range(24 * 31 + 1)]
    for i in range(count):
        if i == trace_from:
            tracemalloc.start()
        quantity, hour, tenant, gpu = 1 + (i % 997) * Decimal("0.000001"), i % (24 * 31), i % 200, i % 8000
        cost = H100_LIST * quantity
        state.update(charge_period_start=hours[hour], charge_period_end=hours[hour + 1],
                     tenant_slug=f"tenant-{tenant}", tenant_name=f"Tenant {tenant}",
                     resource_id=f"node/{gpu // 8}/gpu/{gpu % 8}", resource_name=f"gpu-{gpu // 8:04d} GPU {gpu % 8}",
                     pricing_quantity=quantity, consumed_quantity=quantity, list_cost=cost, contracted_cost=cost,
                     effective_cost=cost, billed_cost=cost)
        row = FocusRow.__new__(FocusRow)
        for name, value in state.items():
            object.__setattr__(row, name, value)
        yield row


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_generator_of_many_rows_streams_with_bounded_memory(fmt: str, tmp_path: Path) -> None:
    """200k rows stream through; tracemalloc watches the last 25k (tracing costs ~6× the time).

    A writer holding rows (all of them, or 50k-row batches) would grow by ~25k rows' worth in
    that window; a streaming one stays at one row (CSV) or one 2k-row chunk (Parquet)."""
    sample, window = 5_000, 25_000
    tracemalloc.start()
    held = list(many_rows(sample))
    per_row = tracemalloc.get_traced_memory()[0] / len(held)
    tracemalloc.stop()
    del held
    try:
        rows = many_rows(MANY, trace_from=MANY - window)
        written = write_focus(rows, fmt, tmp_path / f"many.{fmt}")  # type: ignore[arg-type]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert written == MANY
    assert per_row * MANY > 100_000_000  # holding all 200k rows would take well over 100 MB
    assert peak < per_row * window / (25 if fmt == "csv" else 3), (peak, per_row)
