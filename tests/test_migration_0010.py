"""Migration 0010 converts stored rows: usage quantities gain their exact parts, VDC budgets
become exact on SQLite; and a downgrade gives the old columns their values back. On a database
of its own, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import Engine, Float, Numeric, text

from kiln.db import create_db_engine
from kiln.schema import migrate_to, target_metadata
from kiln.types import ExactNumeric
from tests.conftest import new_postgres_database

USAGE = [("r1", "0.283333"), ("r2", "25913.200000"), ("r3", "0.000001")]  # (resource, quantity as stored)
BUDGETS = {"training": "1234.567891", "inference": "0.1"}


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An engine on an empty database of this test's own."""
    if request.param == "sqlite":
        engine = create_db_engine(f"sqlite:///{tmp_path / 'm0010.db'}")
        yield engine
        engine.dispose()
        return
    with new_postgres_database(request.getfixturevalue("postgres_server")) as url:
        engine = create_db_engine(url)
        yield engine
        engine.dispose()


def _seed_at_0009(engine: Engine) -> None:
    """Rows as Kiln 0009 wrote them: on SQLite usage quantities in micro-units, budgets as floats."""
    sqlite = engine.dialect.name == "sqlite"
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO tenant (id, slug, name, cost_centre, description, created_at) "
                                "VALUES (1, 'acme', 'Acme', NULL, '', '2026-11-01 00:00:00+00:00')"))
        for i, (vdc, budget) in enumerate(BUDGETS.items(), start=1):
            connection.execute(text("INSERT INTO vdc (id, name, description, budget, created_at) "
                                    "VALUES (:id, :name, '', :budget, '2026-11-01 00:00:00+00:00')"),
                               {"id": i, "name": vdc, "budget": float(budget) if sqlite else Decimal(budget)})
        connection.execute(text("INSERT INTO vdc_tenant (vdc_id, tenant_id, budget) VALUES (1, 1, :budget)"),
                           {"budget": 99.99 if sqlite else Decimal("99.99")})
        for resource, quantity in USAGE:
            stored = int(Decimal(quantity) * 10**6) if sqlite else Decimal(quantity)
            connection.execute(text(
                "INSERT INTO usage_record (tenant_id, resource_id, sku, quantity, unit, source, hour) "
                "VALUES (1, :resource, 'node-hour:gpu.h100', :quantity, 'Hours', 'lease', '2026-11-06 10:00:00+00:00')"),
                {"resource": resource, "quantity": stored})


def test_upgrade_converts_and_downgrade_restores(fresh_engine: Engine) -> None:
    engine = fresh_engine
    sqlite = engine.dialect.name == "sqlite"
    assert migrate_to(engine, "0009") == "0009"
    _seed_at_0009(engine)
    assert migrate_to(engine, "0010") == "0010"
    with engine.connect() as connection:
        parts = dict(connection.execute(text("SELECT resource_id, quantity_parts FROM usage_record")).all())
        budgets = dict(connection.execute(text("SELECT name, budget FROM vdc")).all())
        granted = connection.execute(text("SELECT budget FROM vdc_tenant")).scalar_one()
        index = connection.execute(text(
            "SELECT sql FROM sqlite_master WHERE name = 'ix_usage_record_hour_source'" if sqlite else
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_usage_record_hour_source'")).scalar_one()
    # quantity × 3,600,000,000, exactly (283333 micro-units × 3600 parts each)
    assert parts == {"r1": 1_019_998_800, "r2": 93_287_520_000_000, "r3": 3600}
    if sqlite:  # micro-units, integers: exact
        assert budgets == {"training": 1_234_567_891, "inference": 100_000} and granted == 99_990_000
    else:
        assert budgets == {"training": Decimal("1234.567891"), "inference": Decimal("0.100000")}
        assert granted == Decimal("99.990000")
    assert "quantity_parts" in index
    assert migrate_to(engine, "0009") == "0009"
    with engine.connect() as connection:
        columns = connection.execute(text("SELECT * FROM usage_record")).keys()
        quantities = dict(connection.execute(text("SELECT resource_id, quantity FROM usage_record")).all())
        budgets = dict(connection.execute(text("SELECT name, budget FROM vdc")).all())
        granted = connection.execute(text("SELECT budget FROM vdc_tenant")).scalar_one()  # no cascade lost it
    assert "quantity_parts" not in columns
    assert granted == (99.99 if sqlite else Decimal("99.990000"))
    if sqlite:
        assert quantities == {r: int(Decimal(q) * 10**6) for r, q in USAGE}
        assert {name: round(value, 6) for name, value in budgets.items()} == {k: float(v) for k, v in BUDGETS.items()}
    else:
        assert quantities == {r: Decimal(q) for r, q in USAGE}
        assert budgets == {"training": Decimal("1234.567891"), "inference": Decimal("0.100000")}
    assert migrate_to(engine, "head") is not None


# Measurements, not billing amounts: sensor values, metric roll-ups and OpenCost's efficiency ratio.
FLOAT_MEASUREMENTS = {("health_snapshot", "value"), ("rollup_5m", "min"), ("rollup_5m", "max"), ("rollup_5m", "sum"),
                      ("opencost_allocation", "total_efficiency"),
                      ("fleet_power_5m", "watts")}  # the chart's sum of rollup means; energy is billed from node_energy_hour


def test_every_fractional_column_but_the_measurements_is_exact() -> None:
    """No billing input or amount (usage, rated charges, bill lines, discounts, price cards, budgets,
    VDC budgets, Kubernetes and OpenCost figures, kWh) can be stored as a float on SQLite."""
    fractional = {(table.name, column.name): column.type for table in target_metadata().sorted_tables
                  for column in table.columns if isinstance(column.type, (Numeric, Float, ExactNumeric))}
    floats = {key for key, kind in fractional.items() if not isinstance(kind, ExactNumeric)}
    assert floats == FLOAT_MEASUREMENTS
    assert {("vdc", "budget"), ("vdc_tenant", "budget"), ("usage_record", "quantity"), ("bill_line", "list_cost"),
            ("price_card", "unit_price"), ("budget", "amount"), ("tenant_discount", "percent")} <= set(fractional)
