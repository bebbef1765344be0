"""Per-cost-centre chargeback CSV: lines add up to subtotals, subtotals to the grand total, to the cent."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from kiln.models import Tenant
from metering.chargeback import HEADER, UNALLOCATED, cost_centres_of, write_chargeback
from metering.focus import FocusRow
from metering.money import round_amount
from tests.test_focus_export import UNPRICED, day_of_charges, focus_row


def read(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))


def chargeback(rows: list[FocusRow], **kwargs: object) -> tuple[list[dict[str, str]], object]:
    out = io.BytesIO()
    summary = write_chargeback(rows, out, **kwargs)  # type: ignore[arg-type]
    return read(out.getvalue()), summary


def assert_reconciles(lines: list[dict[str, str]], rows: list[FocusRow]) -> None:
    """Per currency: lines → subtotals → total exactly, each line the half-even rounding of its exact sum."""
    by_centre: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    subtotals: dict[tuple[str, str], Decimal] = {}
    totals: dict[str, Decimal] = {}
    for line in lines:
        key, amount = (line["currency"], line["cost_centre"]), Decimal(line["billed_cost"])
        assert amount == round_amount(amount, line["currency"]), line  # whole minor units
        if line["line_type"] == "line":
            by_centre[key] += amount
        elif line["line_type"] == "subtotal":
            subtotals[key] = amount
        else:
            totals[line["currency"]] = amount
    assert subtotals == dict(by_centre)
    for currency, total in totals.items():
        assert sum(v for (c, _), v in subtotals.items() if c == currency) == total
    assert set(totals) == {row.currency for row in rows}


def test_a_day_of_charges_reconciles_per_cost_centre_to_the_cent() -> None:
    rows = day_of_charges()
    tenants = [Tenant(slug="acme", name="Acme Research", cost_centre="CC-4711"),
               Tenant(slug="globex", name="Globex AI"), Tenant(slug="initech", name="Initech", cost_centre="CC-4711")]
    lines, summary = chargeback(rows, cost_centres=cost_centres_of(tenants))
    assert list(lines[0]) == list(HEADER)
    assert_reconciles(lines, rows)
    centres = [line["cost_centre"] for line in lines if line["line_type"] == "subtotal"]
    assert centres == [UNALLOCATED, "CC-4711", "globex"]  # acme and initech share a cost centre
    acme_gpu = next(line for line in lines if line["tenant"] == "acme" and line["sku_id"].startswith("gpu-hour")
                    and line["charge_class"] == "")
    # 23 full hours of 8 GPUs + 3.333333 GPU-hours at 2.345678901 EUR: 187.333333 × 2.345678901
    assert acme_gpu["pricing_quantity"] == "187.333333"
    assert acme_gpu["billed_cost"] == "439.42"  # 439.423846672107033 rounded half-even
    correction = next(line for line in lines if line["charge_class"] == "Correction")
    assert (correction["billing_period"], correction["pricing_quantity"]) == ("2026-10", "2.000000")
    assert summary.rows_read == len(rows)  # type: ignore[attr-defined]
    assert summary.lines_written == len(lines)  # type: ignore[attr-defined]
    assert summary.totals == {"EUR": Decimal(lines[-1]["billed_cost"])}  # type: ignore[attr-defined]


def test_lines_are_rounded_once_and_totals_are_sums_of_rounded_lines() -> None:
    """metering.money's rule: round half-even at the line, add up rounded lines. Three tenants owe
    1.005 EUR each (from two charges of 0.5025): three lines of 1.00, total 3.00, like their bills."""
    rows = [focus_row(tenant_slug=slug, tenant_name=slug.title(), quantity=Decimal("0.500000"),
                      list_price=Decimal("1.005"), start=datetime(2026, 10, 5, hour, tzinfo=UTC))
            for slug in ("a", "b", "c") for hour in (1, 2)]
    lines, summary = chargeback(rows, cost_centres={"a": "CC-1", "b": "CC-1", "c": "CC-2"})
    assert [(line["line_type"], line["cost_centre"], line["billed_cost"]) for line in lines] == [
        ("line", "CC-1", "1.00"), ("line", "CC-1", "1.00"), ("subtotal", "CC-1", "2.00"),
        ("line", "CC-2", "1.00"), ("subtotal", "CC-2", "1.00"), ("total", "", "3.00"),
    ]
    assert [line["pricing_quantity"] for line in lines if line["line_type"] == "line"] == ["1.000000"] * 3
    assert summary.totals == {"EUR": Decimal("3.00")}  # type: ignore[attr-defined]
    assert_reconciles(lines, rows)


def test_currencies_get_their_own_totals_and_formula_text_is_neutralised(tmp_path: Path) -> None:
    rows = [focus_row(), focus_row(tenant_slug="yen", tenant_name="=HYPERLINK(\"http://x\")", currency="JPY",
                                   list_price=Decimal("333"), quantity=Decimal("1.500000"), invoice_id=None)]
    path = tmp_path / "chargeback.csv"
    summary = write_chargeback(rows, path)
    lines = read(path.read_bytes())
    assert [line["currency"] for line in lines if line["line_type"] == "total"] == ["EUR", "JPY"]
    assert summary.totals == {"EUR": Decimal("2.35"), "JPY": Decimal("500")}
    assert next(line["tenant_name"] for line in lines if line["tenant"] == "yen") == "'=HYPERLINK(\"http://x\")"
    assert_reconciles(lines, rows)


amounts = st.decimals(min_value=Decimal("-500"), max_value=Decimal("5000"), places=6, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["acme", "globex", "initech", None]), amounts), min_size=1, max_size=40))
def test_any_charges_reconcile_to_the_cent(charges: list[tuple[str | None, Decimal]]) -> None:
    rows = [
        focus_row(**UNPRICED, tenant_slug=slug, tenant_name=slug and slug.title(), charge_category="Adjustment",
                  charge_frequency="One-Time", list_cost=amount, contracted_cost=amount, effective_cost=amount,
                  billed_cost=amount)
        for slug, amount in charges
    ]
    lines, _ = chargeback(rows, cost_centres={"initech": "acme"})
    assert_reconciles(lines, rows)
    exact: dict[str, Decimal] = defaultdict(Decimal)
    for slug, amount in charges:
        exact[slug or ""] += amount
    for line in lines:
        if line["line_type"] == "line":
            assert Decimal(line["billed_cost"]) == round_amount(exact[line["tenant"]], "EUR")
    centres = {line["cost_centre"] for line in lines if line["line_type"] == "subtotal"}
    assert centres == {"acme" if slug == "initech" else slug or UNALLOCATED for slug, _ in charges}
