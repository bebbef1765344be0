"""Kiln's own check of the FOCUS 1.2 rules that depend on ChargeClass, over any FOCUS data.

Why: the official focus-validator (2.2.1, rule model 1.2.0.1) turns "ChargeClass is not
'Correction'" into the SQL `ChargeClass <> 'Correction'`, which is NULL — not true — when
ChargeClass is NULL, i.e. on every ordinary row. Every rule guarded that way is skipped
exactly where it matters, among them ListCost = ListUnitPrice × PricingQuantity and
ContractedCost = ContractedUnitPrice × PricingQuantity. Here NULL is "not a correction", as the
specification means, and the products are compared exactly (Decimal, no float tolerance).

`RULES` lists the rules (FOCUS 1.2 rule ids, as in the validator's model): each ChargeClass-
conditional rule of the rule model, plus ChargeClass-C-005-C (a non-null ChargeClass is
"Correction"). A rule about a column the data does not have is not applicable and not checked
(e.g. the PricingCurrency* columns Kiln does not export). `check_records` takes rows as
mappings of column name → value (CSV text with "" for NULL, or Decimal/None); `check_csv` reads
a FOCUS CSV file.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

Row = Mapping[str, object]
CORRECTION = "Correction"


@dataclass(frozen=True)
class Violation:
    """A rule a row breaks: its 1-based data row number, the FOCUS rule id and what is wrong."""

    row: int
    rule: str
    problem: str


@dataclass(frozen=True)
class Rule:
    """A FOCUS rule: when it applies to a row, the columns it needs, and its check (a problem or None)."""

    id: str
    text: str
    columns: tuple[str, ...]
    applies: Callable[[Row], bool]
    check: Callable[[Row], str | None]


def _value(row: Row, column: str) -> object:
    value = row.get(column)
    return None if value == "" else value


def _null(row: Row, column: str) -> bool:
    return _value(row, column) is None


def _decimal(row: Row, column: str) -> Decimal | None:
    value = _value(row, column)
    if value is None or isinstance(value, Decimal):
        return value
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


def _not_correction(row: Row) -> bool:
    return _value(row, "ChargeClass") != CORRECTION  # NULL is not a correction


def _usage_or_purchase(row: Row) -> bool:
    return _value(row, "ChargeCategory") in ("Usage", "Purchase") and _not_correction(row)


def _not_null(column: str) -> Callable[[Row], str | None]:
    return lambda row: f"{column} is null" if _null(row, column) else None


def _product(price: str, cost: str) -> Callable[[Row], str | None]:
    def check(row: Row) -> str | None:
        unit, quantity, amount = _decimal(row, price), _decimal(row, "PricingQuantity"), _decimal(row, cost)
        if unit is None or quantity is None or amount is None:
            return f"{price}, PricingQuantity or {cost} is not a decimal number"
        if unit * quantity != amount:
            return f"{cost} {amount} is not {price} × PricingQuantity = {unit} × {quantity} = {unit * quantity}"
        return None
    return check


def _priced(price: str) -> Callable[[Row], bool]:
    return lambda row: _not_correction(row) and not _null(row, price) and not _null(row, "PricingQuantity")


def _not_null_rule(rule_id: str, column: str) -> Rule:
    return Rule(rule_id, f'{column} MUST NOT be null when ChargeCategory is "Usage" or "Purchase" and ChargeClass '
                         f'is not "Correction".', (column,), _usage_or_purchase, _not_null(column))


RULES: tuple[Rule, ...] = (
    Rule("ChargeClass-C-005-C", 'ChargeClass MUST be "Correction" when ChargeClass is not null.', ("ChargeClass",),
         lambda row: not _null(row, "ChargeClass"),
         lambda row: None if _value(row, "ChargeClass") == CORRECTION else f"ChargeClass is {_value(row, 'ChargeClass')!r}"),
    _not_null_rule("ListUnitPrice-C-005-C", "ListUnitPrice"),
    _not_null_rule("ContractedUnitPrice-C-006-C", "ContractedUnitPrice"),
    _not_null_rule("PricingQuantity-C-005-C", "PricingQuantity"),
    _not_null_rule("PricingCategory-C-004-C", "PricingCategory"),
    _not_null_rule("SkuId-C-005-C", "SkuId"),
    _not_null_rule("SkuPriceId-C-005-C", "SkuPriceId"),
    _not_null_rule("PricingCurrencyListUnitPrice-C-005-C", "PricingCurrencyListUnitPrice"),
    _not_null_rule("PricingCurrencyContractedUnitPrice-C-005-C", "PricingCurrencyContractedUnitPrice"),
    Rule("ConsumedQuantity-C-006-C", 'ConsumedQuantity MUST NOT be null when ChargeCategory is "Usage", '
         'CommitmentDiscountStatus is not "Unused" and ChargeClass is not "Correction".', ("ConsumedQuantity",),
         lambda row: _value(row, "ChargeCategory") == "Usage" and _value(row, "CommitmentDiscountStatus") != "Unused"
         and _not_correction(row), _not_null("ConsumedQuantity")),
    Rule("CommitmentDiscountQuantity-C-005-C", 'CommitmentDiscountQuantity MUST NOT be null when ChargeCategory is '
         '"Usage" or "Purchase", CommitmentDiscountId is not null and ChargeClass is not "Correction".',
         ("CommitmentDiscountQuantity", "CommitmentDiscountId"),
         lambda row: _usage_or_purchase(row) and not _null(row, "CommitmentDiscountId"),
         _not_null("CommitmentDiscountQuantity")),
    Rule("ListCost-C-009-C", 'ListCost MUST be the product of ListUnitPrice and PricingQuantity when both are not '
         'null and ChargeClass is not "Correction" (also ListUnitPrice-C-010-C, PricingQuantity-C-009-C).',
         ("ListCost", "ListUnitPrice", "PricingQuantity"), _priced("ListUnitPrice"), _product("ListUnitPrice", "ListCost")),
    Rule("ContractedCost-C-009-C", 'ContractedCost MUST be the product of ContractedUnitPrice and PricingQuantity when '
         'both are not null and ChargeClass is not "Correction" (also ContractedUnitPrice-C-011-C, PricingQuantity-C-009-C).',
         ("ContractedCost", "ContractedUnitPrice", "PricingQuantity"), _priced("ContractedUnitPrice"),
         _product("ContractedUnitPrice", "ContractedCost")),
)


def check_records(records: Iterable[Row], columns: Iterable[str] | None = None) -> list[Violation]:
    """Every violation of `RULES` in `records`, in row order. `columns` (default: the first row's keys)
    decides which rules apply: one about a column that is absent is not checked."""
    violations: list[Violation] = []
    rules: list[Rule] | None = None if columns is None else _applicable(columns)
    for number, row in enumerate(records, start=1):
        if rules is None:
            rules = _applicable(row.keys())
        for rule in rules:
            if rule.applies(row):
                problem = rule.check(row)
                if problem is not None:
                    violations.append(Violation(number, rule.id, problem))
    return violations


def check_csv(source: Path | str | bytes) -> list[Violation]:
    """`check_records` over a FOCUS CSV file (a path, or its bytes); an empty field is NULL."""
    text = source.decode("utf-8") if isinstance(source, bytes) else Path(source).read_text(encoding="utf-8")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    return check_records(reader, reader.fieldnames or [])


def _applicable(columns: Iterable[str]) -> list[Rule]:
    present = set(columns)
    return [rule for rule in RULES if set(rule.columns) <= present]
