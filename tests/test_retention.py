"""Retention of rollups and health history (kiln.retention), on SQLite and the real PostgreSQL:
the worker's job removes what outlived its retention (whole monthly partitions where the table
is partitioned, chunked deletes otherwise), keeps everything else, and `kiln doctor` warns while
older rows remain."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import Engine, text
from sqlmodel import Session, select

from collectors.models import GpuXidEvent, HealthSnapshot, Rollup5m
from fleet.models import NodeEvent
from fleet.runtime import FleetRuntime
from kiln.db import utcnow
from kiln.doctor import STATUS_OK, STATUS_UNCONFIGURED, STATUS_WARNING, check_retention
from kiln.partitions import ensure_partitions, month_start, partition_name
from kiln.retention import enforce_retention, retention_status
from kiln.settings import Settings
from kiln.worker import jobs_for
from tests.factories import World
from tests.fleet_helpers import make_node_row

ROLLUP_AGES = (500, 401, 399, 3)  # days; the retention default is 400
HEALTH_AGES = (120, 91, 30)  # days; the retention default is 90


@pytest.fixture
def aged(engine: Engine, world: World) -> datetime:
    """Rollups, BMC log entries, sensor events, other node events, XID errors and health readings of
    various ages; returns now."""
    now = utcnow().replace(microsecond=0)
    node = make_node_row(world, gpus=0)
    if engine.dialect.name == "postgresql":  # give the oldest month a partition of its own
        with engine.begin() as connection:
            ensure_partitions(connection, now, since=month_start(now - timedelta(days=500)), tables=("rollup_5m",))
    with Session(engine) as session:
        for days in ROLLUP_AGES:
            session.add(Rollup5m(entity="n1", metric="power", bucket=now - timedelta(days=days), count=1, sum=1.0))
        for days in HEALTH_AGES:
            session.add(NodeEvent(node_id=node.id, at=now - timedelta(days=days), kind="bmc_log", message=f"{days}"))
            session.add(NodeEvent(node_id=node.id, at=now - timedelta(days=days), kind="action", message=f"{days}"))
            session.add(NodeEvent(node_id=node.id, at=now - timedelta(days=days), kind="sensor", message=f"{days}"))
            session.add(GpuXidEvent(entity="GPU-1", node_id=node.id, at=now - timedelta(days=days), code=79))
            session.add(HealthSnapshot(entity=f"gpu-{days}", source="dcgm", metric="temp", labels_key="", labels={},
                                       value=40.0, unit="C", observed_at=now - timedelta(days=days)))
        session.commit()
    return now


def _ages(engine: Engine, now: datetime) -> dict[str, list[int]]:
    with Session(engine) as session:
        rollups = session.exec(select(Rollup5m.bucket)).all()
        events = session.exec(select(NodeEvent.kind, NodeEvent.at)).all()
        readings = session.exec(select(HealthSnapshot.observed_at)).all()
        xids = session.exec(select(GpuXidEvent.at)).all()
    return {"rollup_5m": sorted((now - at).days for at in rollups),
            "bmc_log": sorted((now - at).days for kind, at in events if kind == "bmc_log"),
            "action": sorted((now - at).days for kind, at in events if kind == "action"),
            "sensor": sorted((now - at).days for kind, at in events if kind == "sensor"),
            "gpu_xid_event": sorted((now - at).days for at in xids),
            "health_snapshot": sorted((now - at).days for at in readings)}


def test_retention_job_removes_only_expired_rows_and_doctor_warns_until_it_runs(
        engine: Engine, settings: Settings, aged: datetime) -> None:
    now = aged
    warnings = {c.target: c for c in check_retention(settings, now)}
    assert {t: c.status for t, c in warnings.items()} == {
        "rollup_5m": STATUS_WARNING, "node_event": STATUS_WARNING, "gpu_xid_event": STATUS_WARNING,
        "health_snapshot": STATUS_WARNING, "fleet_power_5m": STATUS_OK}  # no fleet sums kept here
    oldest = f"{now - timedelta(days=500):%Y-%m-%d}"
    assert warnings["rollup_5m"].detail == (f"holds rows from {oldest}, older than its 400-day retention "
                                            "(KILN_ROLLUP_RETENTION_DAYS): is `kiln worker` running its retention job?")

    removed = {r.table: r for r in enforce_retention(engine, settings, now, chunk=1)}  # chunk 1: every loop turn runs
    assert _ages(engine, now) == {"rollup_5m": [3, 399], "bmc_log": [30], "action": [30, 91, 120], "sensor": [30],
                                  "gpu_xid_event": [30], "health_snapshot": [30]}
    assert removed["node_event"].rows == 4 and removed["health_snapshot"].rows == 2
    assert removed["gpu_xid_event"].rows == 2
    if engine.dialect.name == "postgresql":  # the 500-day-old month went as a whole partition
        assert partition_name("rollup_5m", month_start(now - timedelta(days=500))) in removed["rollup_5m"].partitions
        with engine.connect() as connection:
            assert connection.execute(text("SELECT to_regclass(:p)"),
                                      {"p": partition_name("rollup_5m", month_start(now - timedelta(days=500)))}).scalar() is None
    else:
        assert removed["rollup_5m"].rows == 2 and removed["rollup_5m"].partitions == []
    assert {c.status for c in check_retention(settings, now)} == {STATUS_OK}
    assert enforce_retention(engine, settings, now)[1].rows == 0  # idempotent


def test_zero_keeps_forever(engine: Engine, settings: Settings, aged: datetime) -> None:
    forever = settings.model_copy(update={"rollup_retention_days": 0, "health_history_retention_days": 0})
    assert enforce_retention(engine, forever, aged) == []
    assert _ages(engine, aged)["rollup_5m"] == sorted(ROLLUP_AGES)
    assert {c.status for c in check_retention(forever, aged)} == {STATUS_UNCONFIGURED}
    assert not any(s.overdue for s in retention_status(engine, forever, aged))


def test_the_worker_schedules_retention_and_partitions_ahead(engine: Engine, settings: Settings) -> None:
    names = {job.name: job for job in jobs_for(settings, engine, FleetRuntime.build(settings, engine))}
    assert names["retention"].seconds == 86400
    assert ("partitions-ahead" in names) == (engine.dialect.name == "postgresql")
    if "partitions-ahead" in names:
        names["partitions-ahead"].run()  # idempotent: the current and next months exist already
        with engine.connect() as connection:
            assert connection.execute(text("SELECT to_regclass(:p)"),
                                      {"p": partition_name("usage_record", month_start(utcnow()))}).scalar()
