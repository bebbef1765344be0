"""Migration 0021: node-hours metered before it become their one BMC collector's figures (its
bmc_driver), so polls after the upgrade add to an hour instead of replacing it; a downgrade
drops the second address and the per-collector figures. On SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import Engine, column, inspect, table, text
from sqlmodel import Session, select

from collectors.base import Sample, TargetResult
from collectors.models import NodeEnergyHour, NodeEnergySourceHour
from collectors.store import persist_results
from kiln.db import UTCDateTime
from kiln.schema import head_revision, migrate_to
from kiln.types import ExactNumeric
from tests.test_migration_0010 import fresh_engine  # noqa: F401 (a fixture)

HOUR = datetime(2026, 11, 2, 10, tzinfo=UTC)
ENERGY_AT_0020 = table("node_energy_hour", column("node_id"), column("hour", UTCDateTime()),
                       column("kwh", ExactNumeric(18, 6)), column("covered_seconds"), column("method"))


def _seed_at_0020(engine: Engine) -> None:
    with engine.begin() as connection:
        for node_id, driver, address, kwh, method in ((1, "ipmi", "ipmi://10.0.0.1", "0.5", "watts"),
                                                      (2, "redfish", "redfish://10.0.0.2", "0.75", "counter")):
            connection.execute(text(
                "INSERT INTO node (id, name, provisioner, hardware_type, bmc_driver, bmc_address, facts, "
                "provision_state, maintenance, created_at, updated_at) VALUES (:id, :name, 'fake', :driver, "
                ":driver, :address, '{}', 'active', false, '2026-11-01 00:00:00+00:00', '2026-11-01 00:00:00+00:00')"),
                {"id": node_id, "name": f"node-{node_id}", "driver": driver, "address": address})
            connection.execute(ENERGY_AT_0020.insert().values(node_id=node_id, hour=HOUR, kwh=Decimal(kwh),
                                                              covered_seconds=1800, method=method))


def test_metered_hours_become_their_collectors_and_polls_add_to_them(fresh_engine: Engine) -> None:  # noqa: F811
    engine = fresh_engine
    assert migrate_to(engine, "0020") == "0020"
    _seed_at_0020(engine)
    assert migrate_to(engine, head_revision()) == head_revision()
    with Session(engine) as session:
        assert {(r.node_id, r.source, r.kwh, r.method) for r in session.exec(select(NodeEnergyHour))} == {
            (1, "ipmi", Decimal("0.5"), "watts"), (2, "redfish", Decimal("0.75"), "counter")}
        assert {(r.node_id, r.source, r.kwh, r.covered_seconds) for r in session.exec(select(NodeEnergySourceHour))} == {
            (1, "ipmi", Decimal("0.5"), 1800), (2, "redfish", Decimal("0.75"), 1800)}
        for minute in (30, 40):  # 600 W for 10 minutes: 0.1 kWh more in the same hour
            watts = Sample("ipmi", "node-1", "ipmi_dcmi_power_consumption_watts", 600.0, "watts", {},
                           HOUR + timedelta(minutes=minute))
            persist_results(session, "ipmi", [TargetResult("node-1", ok=True, samples=[watts])])
        session.commit()
        row = session.exec(select(NodeEnergyHour).where(NodeEnergyHour.node_id == 1)).one()
        assert (row.kwh, row.covered_seconds, row.source) == (Decimal("0.6"), 2400, "ipmi")

    assert migrate_to(engine, "0020") == "0020"
    tables = inspect(engine)
    assert "node_energy_source_hour" not in tables.get_table_names()
    assert "redfish_address" not in {c["name"] for c in tables.get_columns("node")}
    assert "source" not in {c["name"] for c in tables.get_columns("node_energy_hour")}
