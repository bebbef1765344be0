"""A real period's bills (usage, discount, idle shares, a correction) exported as FOCUS 1.2 and checked
by the official focus-validator, plus the values the validator cannot see."""

from __future__ import annotations

import csv
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from metering.bills import finalise_period
from metering.exports import export_chargeback, export_focus
from tests.factories import World
from tests.metering_helpers import GPU_SKU, NODE_SKU, SYSTEM, at, card, discount, lease, node, run
from tests.test_focus_export import broken_rules, run_validator

D = Decimal


def _period_with_everything(world: World) -> None:
    n1, n2, n3 = node(world, gpus=8), node(world, gpus=8), node(world, gpus=8)
    lease(world, n1, "a", "2026-09-03T07:45", "2026-09-20T00:00")
    lease(world, n2, "b", "2026-09-10T00:00", "2026-09-10T05:10")
    card(world, NODE_SKU, "4.10", start="2026-01-01T00:00")
    card(world, GPU_SKU, "2.35", start="2026-01-01T00:00", end="2026-09-15T00:00")
    card(world, GPU_SKU, "2.15", start="2026-09-15T00:00")
    discount(world, "a", "7.5")
    world.session.commit()
    run(world, period="2026-09", now="2026-11-05T00:00", policy="share")
    finalise_period(world.session, SYSTEM, "2026-09", policy="share", now=at("2026-11-05T00:00"))
    world.session.commit()
    lease(world, n3, "a", "2026-09-25T00:00", "2026-09-25T03:00")  # late usage → corrections in October
    run(world, period="2026-09", now="2026-11-05T00:00", policy="share")
    lease(world, n1, "a", "2026-10-01T00:00", "2026-10-02T12:00")
    run(world, period="2026-10", now="2026-11-05T00:00", policy="share")


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_the_official_validator_accepts_a_real_periods_export(world: World, fmt: str, tmp_path: Path) -> None:
    _period_with_everything(world)
    data = tmp_path / f"focus.{fmt}"
    written = export_focus(world.session, SYSTEM, "2026-10", fmt, data, "Acme AI Factory")
    table = pq.read_table(data).to_pylist() if fmt == "parquet" else list(csv.DictReader(data.open()))
    assert written == len(table) >= 6
    assert {r["ChargeClass"] for r in table} >= {"Correction"}
    results, model = run_validator(data, tmp_path / "validator")
    assert broken_rules(results, model) == []
    assert sum(outcome == "passed" for outcome in results.values()) > 200


def test_export_values_match_the_bills(world: World, tmp_path: Path) -> None:
    _period_with_everything(world)
    september, october = tmp_path / "sep.csv", tmp_path / "oct.csv"
    export_focus(world.session, SYSTEM, "2026-09", "csv", september, "Acme AI Factory")
    export_focus(world.session, SYSTEM, "2026-10", "csv", october, "Acme AI Factory")
    sep, oct_ = list(csv.DictReader(september.open())), list(csv.DictReader(october.open()))
    from tests.metering_helpers import bill_of
    for rows, period in ((sep, "2026-09"), (oct_, "2026-10")):
        for tenant in ("a", "b"):
            bill = bill_of(world, tenant, period)
            mine = [r for r in rows if r["SubAccountId"] == world.tenant(tenant).slug]
            assert sum(D(r["BilledCost"]) for r in mine) == D(bill.total)
            # ListCost is the exact product (FOCUS); each rounds half-even to the line's cents on the bill
            cents = [D(r["ListCost"]).quantize(D("0.01"), rounding=ROUND_HALF_EVEN) for r in mine]
            assert sum(cents) == D(bill.list_total)
            assert abs(sum(D(r["ListCost"]) for r in mine) - D(bill.list_total)) <= D("0.005") * len(mine)
    assert {r["InvoiceId"] for r in sep} == {f"kiln-2026-09-{bill_of(world, t, '2026-09').id}" for t in "ab"}
    assert {r["InvoiceId"] for r in oct_} == {""}  # drafts are not invoiced yet
    corrections = [r for r in oct_ if r["ChargeClass"] == "Correction"]
    assert corrections and {r["x_CorrectsPeriod"] for r in corrections} == {"2026-09"}
    assert all(r["ChargePeriodStart"] < "2026-10-01" and r["BillingPeriodStart"] == "2026-10-01T00:00:00Z" for r in corrections)
    discounted = next(r for r in sep if r["SubAccountId"] == "tenant-a" and r["SkuId"] == NODE_SKU)
    assert (D(discounted["ListUnitPrice"]), D(discounted["ContractedUnitPrice"])) == (D("4.1"), D("3.7925"))
    assert D(discounted["ContractedCost"]) < D(discounted["ListCost"])
    shares = [r for r in sep if r["x_ChargeKind"] == "idle-share"]
    assert {r["SubAccountId"] for r in shares} == {"tenant-a", "tenant-b"}
    chargeback = tmp_path / "chargeback.csv"
    export_chargeback(world.session, SYSTEM, "2026-09", chargeback, "Acme AI Factory")
    total = [r for r in csv.DictReader(chargeback.open()) if r["line_type"] == "total"]
    assert [D(r["billed_cost"]) for r in total] == [D(bill_of(world, "a", "2026-09").total) + D(bill_of(world, "b", "2026-09").total)]
