"""The metering scripting contract: `kiln price-cards`, `kiln bills`, `kiln export` as scripts run them."""

from __future__ import annotations

import csv
import json
from decimal import Decimal
from pathlib import Path

from sqlmodel import Session, select

from metering.models import Bill, PriceCard
from tests.cli_helpers import base_env, run
from tests.factories import World
from tests.metering_helpers import GPU_SKU, NODE_SKU, lease, node

D = Decimal


def _env(engine, tmp_path: Path) -> dict[str, str]:
    return base_env(tmp_path, KILN_DATABASE_URL=engine.url.render_as_string(hide_password=False), KILN_SECRET_KEY="k" * 40,
                    KILN_BILLING_ACCOUNT_NAME="Acme AI Factory")


def test_price_cards_bills_and_exports_from_the_command_line(engine, world: World, tmp_path: Path) -> None:
    env = _env(engine, tmp_path)
    lease(world, node(world, gpus=4), "a", "2026-10-01T06:20", "2026-10-01T08:00")  # 1 h 40 min
    cards = tmp_path / "cards.csv"
    cards.write_text(f"sku,unit,unit_price,currency,effective_from\n{NODE_SKU},Hours,3.00,EUR,2026-01-01\n"
                     f"{GPU_SKU},GPU-Hours,2.40,EUR,2026-01-01\n")
    imported = run(env, "price-cards", "import", str(cards))
    assert imported.returncode == 0 and imported.stdout.strip() == "imported 2 price card(s)", imported.stderr
    listed = json.loads(run(env, "price-cards", "list", "--output", "json").stdout)
    assert [(c["sku"], D(c["unit_price"])) for c in listed] == [(GPU_SKU, D("2.4")), (NODE_SKU, D(3))]
    ran = run(env, "bills", "run", "--period", "2026-10")
    assert ran.returncode == 0 and "1 draft bill(s)" in ran.stdout, ran.stderr
    bills = json.loads(run(env, "bills", "list", "--period", "2026-10", "--output", "json").stdout)
    # 1.666667 h × 3.00 = 5.00; 6.666667 GPU-h × 2.40 = 16.00
    assert [(b["tenant"], D(b["total"]), b["currency"], b["status"]) for b in bills] == [("tenant-a", D("21.00"), "EUR", "draft")]
    out = tmp_path / "focus.csv"
    exported = run(env, "export", "focus", "--period", "2026-10", "--format", "csv", "--out", str(out))
    assert exported.returncode == 0 and exported.stdout.strip() == f"wrote 2 FOCUS row(s) to {out}", exported.stderr
    rows = list(csv.DictReader(out.open()))
    assert {r["BillingAccountName"] for r in rows} == {"Acme AI Factory"} and sum(D(r["BilledCost"]) for r in rows) == D("21.00")
    parquet = tmp_path / "focus.parquet"
    assert run(env, "export", "focus", "--period", "2026-10", "--format", "parquet", "--out", str(parquet)).returncode == 0
    assert parquet.read_bytes()[:4] == b"PAR1"
    chargeback = tmp_path / "chargeback.csv"
    assert run(env, "export", "chargeback", "--period", "2026-10", "--out", str(chargeback)).returncode == 0
    assert "tenant-a" in chargeback.read_text()
    done = run(env, "bills", "finalize", "--period", "2026-10", "--tenant", "tenant-a")
    assert done.returncode == 0 and done.stdout.strip() == "finalised tenant-a 2026-10: 21.00 EUR"
    twice = run(env, "bills", "finalize", "--period", "2026-10", "--tenant", "tenant-a")
    assert (twice.returncode, twice.stdout) == (1, "")
    assert twice.stderr == "kiln: error: the bill of tenant 'tenant-a' for period 2026-10 is already finalised\n"


def test_bad_input_is_one_error_line_and_changes_nothing(engine, world: World, tmp_path: Path) -> None:
    env = _env(engine, tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text(f"sku,unit,unit_price,currency,effective_from\n{NODE_SKU},Hours,-1,EUR,2026-01-01\n"
                   f"{GPU_SKU},GPU-Hours,2.40,EUR,2026-01-01\n")
    refused = run(env, "price-cards", "import", str(bad))
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert refused.stderr.startswith("kiln: error: nothing imported: row 2: unit_price '-1' must not be negative")
    future = run(env, "bills", "run", "--period", "2999-01")
    assert future.returncode == 1 and "period: 2999-01 is in the future" in future.stderr
    malformed = run(env, "bills", "list", "--period", "Oct", "--output", "json")
    assert malformed.returncode == 1 and "YYYY-MM" in malformed.stderr
    out = tmp_path / "none.csv"
    unknown = run(env, "export", "focus", "--period", "2026-05", "--format", "csv", "--out", str(out))
    assert unknown.returncode == 1 and unknown.stderr.startswith("kiln: error: no bills for period 2026-05")
    assert not out.exists() and not out.with_name("none.csv.partial").exists()
    wrong_format = run(env, "export", "focus", "--period", "2026-05", "--format", "xlsx", "--out", str(out))
    assert wrong_format.returncode == 2 and wrong_format.stderr.startswith("kiln: error:")
    with Session(engine) as session:
        assert session.exec(select(PriceCard)).all() == [] and session.exec(select(Bill)).all() == []
