"""Kiln's checks of the ChargeClass-conditional FOCUS rules (metering/focus_rules.py): right on
the FinOps Foundation's own sample data (tests/data/upstream/focus/, cited there), and catching
what the official validator skips on rows whose ChargeClass is NULL."""

from __future__ import annotations

import csv
import io
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

import pytest

from metering.focus import write_focus
from metering.focus_rules import RULES, check_csv, check_records
from tests.test_focus_export import broken_rules, day_of_charges, run_validator

SAMPLES = Path(__file__).parent / "data" / "upstream" / "focus"
# Where the upstream samples themselves break a rule (README.md beside them says why): file → {(row, rule)}.
SAMPLE_VIOLATIONS = {
    "scenario_1_partial_reallocation_original.csv": {(1, "ChargeClass-C-005-C")},
    "aws_savings_plan_partial_upfront_100pct.csv": {(1, "CommitmentDiscountQuantity-C-005-C"),
                                                    (2, "CommitmentDiscountQuantity-C-005-C")},
}
VALIDATOR_SKIPPED = ("ListCost-C-009-C", "ContractedCost-C-009-C")


def rows_of(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as stream:
        return list(csv.DictReader(stream))


@pytest.mark.parametrize("name", sorted(p.name for p in SAMPLES.glob("*.csv")))
def test_the_rules_hold_on_the_foundations_samples_but_where_the_sample_itself_is_wrong(name: str) -> None:
    found = {(v.row, v.rule) for v in check_csv(SAMPLES / name)}
    assert found == SAMPLE_VIOLATIONS.get(name, set())


def test_the_samples_exercise_the_product_rules_on_null_and_correction_rows() -> None:
    """Not vacuous: the product rules apply to NULL-ChargeClass rows of the samples (and hold there
    exactly), and correction rows whose costs are not the products are exempt, as FOCUS says."""
    aws = rows_of(SAMPLES / "aws_savings_plan_partial_upfront_100pct.csv")
    usage = [r for r in aws if r["ChargeClass"] == "" and r["ChargeCategory"] == "Usage"]
    assert len(usage) == 3
    for row in usage:
        assert Decimal(row["ContractedCost"]) == Decimal(row["ContractedUnitPrice"]) * Decimal(row["PricingQuantity"])
    cost_only = rows_of(SAMPLES / "scenario_3_itemized_cost_only_ledger.csv")
    assert {r["ChargeClass"] for r in cost_only} == {"Correction"} and cost_only[0]["PricingQuantity"] == ""
    # the same rows without ChargeClass "Correction" break the rules the correction exempts them from
    uncorrected = [{**row, "ChargeClass": "", "ChargeCategory": "Usage"} for row in cost_only]
    broken = {(v.row, v.rule) for v in check_records(uncorrected)}
    assert {(1, "PricingQuantity-C-005-C"), (1, "ConsumedQuantity-C-006-C"), (2, "PricingQuantity-C-005-C")} <= broken
    ledger = rows_of(SAMPLES / "scenario_1_partial_reallocation_ledger.csv")
    skewed = [{**row, "ListCost": "1999"} for row in ledger]
    assert check_records(skewed) == []  # corrections may differ from the products
    assert {v.rule for v in check_records([{**row, "ChargeClass": ""} for row in skewed])} == {"ListCost-C-009-C"}


def test_a_rounded_cost_on_a_null_charge_class_row_is_caught() -> None:
    """The defect the validator cannot see: ContractedCost rounded to cents on an ordinary row."""
    rows = [row.to_record() for row in day_of_charges()]
    assert check_records(rows) == []
    ordinary = next(i for i, r in enumerate(rows) if r["ChargeClass"] is None and r["PricingQuantity"] is not None
                    and r["ContractedCost"] != r["ContractedCost"].quantize(Decimal("0.01")))
    rows[ordinary] = {**rows[ordinary], "ContractedCost": rows[ordinary]["ContractedCost"].quantize(
        Decimal("0.01"), rounding=ROUND_HALF_EVEN)}
    (violation,) = check_records(rows)
    assert (violation.row, violation.rule) == (ordinary + 1, "ContractedCost-C-009-C")
    assert "is not ContractedUnitPrice × PricingQuantity" in violation.problem


def test_the_rule_table_names_the_rules_the_validator_skips() -> None:
    ids = {rule.id for rule in RULES}
    assert set(VALIDATOR_SKIPPED) <= ids
    assert {"ListUnitPrice-C-005-C", "ContractedUnitPrice-C-006-C", "PricingQuantity-C-005-C", "SkuId-C-005-C",
            "SkuPriceId-C-005-C", "PricingCategory-C-004-C", "ConsumedQuantity-C-006-C"} <= ids


def test_the_official_validator_misses_what_kiln_catches(tmp_path: Path) -> None:
    """focus-validator 2.2.1 evaluates `ChargeClass <> 'Correction'`, NULL on ordinary rows, so it
    passes a file whose ContractedCost is not the product; Kiln's check names the row. (If a
    later validator catches it, this test says so and Kiln's own check can be retired.)"""
    data = tmp_path / "focus.csv"
    write_focus(day_of_charges(), "csv", data)
    table = list(csv.reader(data.open(newline="")))
    column = table[0].index("ContractedCost")
    row = next(i for i, r in enumerate(table[1:], start=1)
               if r[table[0].index("ChargeClass")] == "" and "." in r[column] and len(r[column].split(".")[1]) > 2)
    table[row][column] = str(Decimal(table[row][column]).quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN))
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(table)
    data.write_text(out.getvalue())
    assert [(v.row, v.rule) for v in check_csv(data)] == [(row, "ContractedCost-C-009-C")]
    results, model = run_validator(data, tmp_path / "validator")
    assert broken_rules(results, model) == []  # the validator sees nothing wrong
    assert results["ContractedUnitPrice-C-011-C"] != "failed"  # the rule with a check, skipped on NULL
