"""Migration 0027 (PostgreSQL): the tables every collector cycle rewrites keep room on each page, so a
cycle's new version of a snapshot row stays on the row's page (a heap-only update: no index touched);
a downgrade takes the room away again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, text
from sqlmodel import Session

from collectors.base import Sample
from collectors.store import write_snapshots
from kiln.schema import head_revision, migrate_to
from tests.test_partitions import pg_engine  # noqa: F401 (a fixture)

T0 = datetime(2026, 12, 7, 7, tzinfo=UTC)
ENTITIES, SENSORS = 100, 30  # 3,000 rows: dozens of pages


def _cycle(engine: Engine, at: datetime) -> dict[int, int]:
    """One cycle's snapshots of every series; then each row's page (block of its ctid) by id."""
    samples = [Sample("ipmi", f"node-{e:03d}", f"ipmi_sensor_{s:02d}_celsius", 40.0 + s, "celsius",
                      {"id": str(s), "name": f"Sensor {s} with a name as long as BMCs give them"}, at)
               for e in range(ENTITIES) for s in range(SENSORS)]
    with Session(engine) as session:
        write_snapshots(session, samples, {})
        session.commit()
    with engine.connect() as connection:
        return {row_id: int(ctid.strip("()").split(",")[0])
                for row_id, ctid in connection.execute(text("SELECT id, ctid::text FROM health_snapshot"))}


def _fillfactors(engine: Engine) -> dict[str, list[str] | None]:
    with engine.connect() as connection:
        return dict(connection.execute(text(
            "SELECT relname, reloptions FROM pg_class WHERE relname IN ('health_snapshot', 'collector_target_state')")).all())


def test_a_cycle_rewrites_snapshot_rows_on_their_own_pages_and_a_downgrade_undoes_it(pg_engine: Engine) -> None:  # noqa: F811
    assert migrate_to(pg_engine, head_revision()) == head_revision()
    assert _fillfactors(pg_engine) == {"health_snapshot": ["fillfactor=50"], "collector_target_state": ["fillfactor=50"]}
    first = _cycle(pg_engine, T0)
    assert len(first) == ENTITIES * SENSORS and len(set(first.values())) > 10
    second = _cycle(pg_engine, T0 + timedelta(minutes=1))
    assert second == first  # the same rows, each still on its page

    assert migrate_to(pg_engine, "0026") == "0026"
    assert _fillfactors(pg_engine) == {"health_snapshot": None, "collector_target_state": None}
    with pg_engine.begin() as connection:
        connection.execute(text("TRUNCATE health_snapshot"))  # new, empty pages, filled to the brim again
    full = _cycle(pg_engine, T0 + timedelta(minutes=2))
    moved = _cycle(pg_engine, T0 + timedelta(minutes=3))
    assert sum(moved[i] != full[i] for i in full) > len(full) // 2  # full pages: most new versions went elsewhere
