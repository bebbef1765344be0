"""Monthly partitions on the real PostgreSQL (migration 0019, kiln.partitions, `kiln db partitions`):
rows land in their month's partition, upgrade and downgrade keep every row, partitions are
created ahead and detached for archiving; SQLite keeps plain tables and says so."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlmodel import Session

from collectors.models import Rollup5m
from kiln.db import create_db_engine, upsert, utcnow
from kiln.partitions import (PartitionError, add_months, detach_month, ensure_partitions, list_partitions,
                             month_start, partition_name)
from kiln.schema import head_revision, migrate_to
from metering.models import UsageRecord
from tests.cli_helpers import base_env, run
from tests.conftest import new_postgres_database

USAGE_HOURS = ["2025-11-30 23:00:00+00", "2025-12-01 00:00:00+00", "2026-03-15 12:00:00+00"]


@pytest.fixture
def pg_engine(postgres_server: str) -> Iterator[Engine]:
    """An engine on an empty PostgreSQL database of this test's own."""
    with new_postgres_database(postgres_server) as url:
        engine = create_db_engine(url)
        yield engine
        engine.dispose()


def _seed_at_0018(engine: Engine) -> None:
    """Usage and rollup rows as Kiln 0018 wrote them (plain tables), across three months."""
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO tenant (id, slug, name, description, created_at) "
                                "VALUES (1, 'acme', 'Acme', '', '2025-11-01 00:00:00+00')"))
        for i, hour in enumerate(USAGE_HOURS, start=1):
            connection.execute(text(
                "INSERT INTO usage_record (tenant_id, resource_id, sku, quantity, quantity_parts, unit, source, hour) "
                "VALUES (1, :r, 'node-hour:gpu.h100', 1, 3600000000, 'Hours', 'lease', :hour)"), {"r": f"r{i}", "hour": hour})
            connection.execute(text("INSERT INTO rollup_5m (entity, metric, bucket, count, sum, min, max) "
                                    "VALUES ('n1', 'power', :hour, 1, 250, 250, 250)"), {"hour": hour})


def _where(connection, table: str) -> dict[str, str]:
    key = {"usage_record": "hour", "rollup_5m": "bucket"}[table]
    rows = connection.execute(text(f"SELECT id, {key}, tableoid::regclass::text FROM {table}")).all()
    return {f"{moment:%Y-%m-%d %H}": partition for _, moment, partition in rows}


def _relkind(connection, table: str) -> str:
    return connection.execute(text("SELECT relkind FROM pg_class WHERE oid = to_regclass(:t)"), {"t": table}).scalar()


def test_upgrade_partitions_by_month_and_downgrade_keeps_every_row(pg_engine: Engine) -> None:
    engine = pg_engine
    migrate_to(engine, "0018")
    _seed_at_0018(engine)
    with engine.connect() as connection:
        ids_before = connection.execute(text("SELECT id, resource_id FROM usage_record ORDER BY id")).all()
    assert migrate_to(engine, "head") == head_revision()
    with engine.connect() as connection:
        assert [_relkind(connection, t) for t in ("usage_record", "rollup_5m")] == ["p", "p"]
        expected = {"2025-11-30 23": "usage_record_2025_11", "2025-12-01 00": "usage_record_2025_12",
                    "2026-03-15 12": "usage_record_2026_03"}
        assert _where(connection, "usage_record") == expected
        assert _where(connection, "rollup_5m") == {k: v.replace("usage_record", "rollup_5m") for k, v in expected.items()}
        assert connection.execute(text("SELECT id, resource_id FROM usage_record ORDER BY id")).all() == ids_before
        primary_key = connection.execute(text(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'usage_record'::regclass AND contype = 'p'")).scalar()
        assert primary_key == "PRIMARY KEY (id, hour)"
        names = {p.name for p in list_partitions(connection)}
    this_month = month_start(utcnow())
    ahead = {partition_name("usage_record", add_months(this_month, n)) for n in range(4)}
    assert ahead | {"usage_record_2025_11", "usage_record_default", "rollup_5m_default"} <= names

    # The app keeps writing: ids continue from the same sequence, upserts fold into the month's row.
    with Session(engine) as session:
        record = UsageRecord(tenant_id=1, resource_id="r9", sku="node-hour:gpu.h100", quantity=Decimal(1),
                             quantity_parts=3_600_000_000, unit="Hours", source="lease", hour=this_month)
        session.add(record)
        row = {"entity": "n1", "metric": "power", "bucket": datetime(2025, 12, 1, tzinfo=UTC), "count": 1, "sum": 50.0,
               "min": 50.0, "max": 50.0}
        upsert(session, Rollup5m, [row], ("entity", "metric", "bucket"), ("sum",))
        session.commit()
        assert record.id == max(i for i, _ in ids_before) + 1
    with engine.connect() as connection:
        assert connection.execute(text("SELECT tableoid::regclass::text FROM usage_record WHERE id = :id"),
                                  {"id": record.id}).scalar() == partition_name("usage_record", this_month)
        assert connection.execute(text("SELECT count(*), sum(sum) FROM rollup_5m WHERE bucket = '2025-12-01 00:00+00'")).one() == (1, 50.0)

    assert migrate_to(engine, "0018") == "0018"
    with engine.connect() as connection:
        assert [_relkind(connection, t) for t in ("usage_record", "rollup_5m")] == ["r", "r"]
        assert connection.execute(text("SELECT count(*) FROM usage_record")).scalar() == 4
        assert connection.execute(text("SELECT count(*) FROM rollup_5m")).scalar() == 3
        assert not [p for p in list_partitions(connection)]
        indexes = set(connection.execute(text("SELECT indexname FROM pg_indexes WHERE tablename = 'usage_record'")).scalars())
    assert {"usage_record_pkey", "uq_usage_record_key", "ix_usage_record_hour_source", "ix_usage_record_tenant_hour"} <= indexes
    assert migrate_to(engine, "head") == head_revision()


def test_partitions_ahead_are_idempotent_and_months_leave_the_default(pg_engine: Engine) -> None:
    engine = pg_engine
    migrate_to(engine, "head")
    far = add_months(month_start(utcnow()), 9)
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO rollup_5m (entity, metric, bucket, count, sum, min, max) "
                                "VALUES ('n1', 'power', :at, 1, 1, 1, 1)"), {"at": far})
        assert _where(connection, "rollup_5m") == {f"{far:%Y-%m-%d %H}": "rollup_5m_default"}
        created = ensure_partitions(connection, utcnow())  # everything ahead exists already: only the row's month
        assert created == [partition_name("rollup_5m", far)]
        assert _where(connection, "rollup_5m") == {f"{far:%Y-%m-%d %H}": partition_name("rollup_5m", far)}
        assert ensure_partitions(connection, utcnow()) == []
        created = ensure_partitions(connection, add_months(far, -3))
        assert partition_name("usage_record", far) in created and partition_name("rollup_5m", far) not in created


def test_detach_a_past_month_for_archiving(pg_engine: Engine, tmp_path: Path) -> None:
    engine = pg_engine
    migrate_to(engine, "0018")
    _seed_at_0018(engine)
    migrate_to(engine, "head")
    now = utcnow()
    with engine.begin() as connection:
        with pytest.raises(PartitionError, match="not over yet"):
            detach_month(connection, f"{now:%Y-%m}", now)
        with pytest.raises(PartitionError, match="YYYY-MM"):
            detach_month(connection, "2025-13", now)
        with pytest.raises(PartitionError, match="no attached partition for 2020-01"):
            detach_month(connection, "2020-01", now)
    env = base_env(tmp_path, KILN_DATABASE_URL=engine.url.render_as_string(hide_password=False))
    result = run(env, "db", "partitions", "detach", "2025-11")
    assert result.returncode == 0, result.stderr
    assert "detached usage_record_2025_11" in result.stdout and "pg_dump --table=rollup_5m_2025_11" in result.stdout
    with engine.connect() as connection:
        assert connection.execute(text("SELECT min(hour) FROM usage_record")).scalar() == datetime(2025, 12, 1, tzinfo=UTC)
        assert connection.execute(text("SELECT resource_id FROM usage_record_2025_11")).scalars().all() == ["r1"]
    listing = run(env, "db", "partitions", "--output", "json")
    assert listing.returncode == 0, listing.stderr
    assert '"partition": "usage_record_2025_11",\n    "month": "2025-11",\n    "attached": false' in listing.stdout
    again = run(env, "db", "partitions", "detach", "2025-11")
    assert again.returncode == 1 and again.stderr == "kiln: error: no attached partition for 2025-11 (see `kiln db partitions`)\n"


def test_sqlite_has_no_partitions_and_says_so(tmp_path: Path) -> None:
    env = base_env(tmp_path, KILN_DATABASE_URL=f"sqlite:///{tmp_path / 'kiln.db'}")
    assert run(env, "migrate").returncode == 0
    for args in (("db", "partitions"), ("db", "partitions", "detach", "2025-11")):
        result = run(env, *args)
        assert result.returncode == 1
        assert result.stderr.startswith("kiln: error: partitions exist only on PostgreSQL") and result.stderr.count("\n") == 1
