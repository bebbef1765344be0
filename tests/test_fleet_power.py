"""The fleet's stored power sums (collectors.fleet_power): always equal to summing the rollups live,
through late writes, nodes enrolled and deleted, retention, and the migration's backfill; a tenant's
series stays their own. On SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, text
from sqlmodel import Session, select

from collectors.base import Sample
from collectors.fleet_power import BUCKET, POWER_METRIC, fleet_totals, live_totals, sealed_before
from collectors.models import FleetPower5m, Rollup5m
from collectors.store import add_rollups
from dashboards.fleet_data import fleet_power
from fleet.models import Node
from fleet.nodes import delete_node
from fleet.tenancy_models import Lease
from kiln.auth import Principal, principal_for_user
from kiln.retention import enforce_retention
from kiln.schema import head_revision, migrate_to
from kiln.settings import Settings
from tests.factories import World
from tests.fleet_helpers import make_node_row
from tests.test_migration_0010 import fresh_engine  # noqa: F401 (a fixture)

NOW = datetime.now(UTC).replace(second=30, microsecond=0)
START = NOW.replace(minute=0, second=0) - timedelta(hours=3)  # a bucket boundary, 3-4 hours ago


def _rollup(entity: str, bucket: datetime, watts: list[float]) -> Rollup5m:
    return Rollup5m(entity=entity, metric=POWER_METRIC, bucket=bucket, count=len(watts), sum=sum(watts),
                    min=min(watts, default=0.0), max=max(watts, default=0.0))


def _seed(world: World) -> list[Node]:
    """Three nodes with uneven readings in every bucket from START to now, one without readings for
    an hour, a series of no enrolled node (an unknown BMC) and an empty rollup row."""
    nodes = [make_node_row(world, name=f"pw-{i}", gpus=0) for i in range(3)]
    bucket = START
    while bucket <= NOW:
        step = int((bucket - START) / BUCKET)
        for i, node in enumerate(nodes):
            if i == 2 and 12 <= step < 24:
                continue
            world.session.add(_rollup(node.name, bucket, [700.0 + i * 101.3 + step * 0.7, 650.1 + (step % 7) * 13.9][:1 + (step + i) % 2]))
        world.session.add(_rollup("not-a-node", bucket, [123.0]))
        bucket += BUCKET
    world.session.add(Rollup5m(entity="pw-0", metric=POWER_METRIC, bucket=START - BUCKET, count=0, sum=0.0, min=0.0, max=0.0))
    world.session.commit()
    return nodes


def _live(session: Session, start: datetime, end: datetime) -> list[tuple[datetime, float]]:
    return sorted((bucket, watts) for bucket, (watts, _) in live_totals(session, start, end).items())


def _rounded(series: list[tuple[datetime, float]]) -> list[tuple[datetime, float]]:
    return [(bucket, round(watts, 6)) for bucket, watts in series]


def _stored(session: Session) -> list[datetime]:
    return [row.bucket.astimezone(UTC) for row in session.exec(select(FleetPower5m).order_by(FleetPower5m.bucket))]


def test_stored_sums_equal_the_live_sums_and_only_sealed_buckets_are_kept(world: World) -> None:
    _seed(world)
    session, start, end = world.session, START - timedelta(minutes=7), NOW + BUCKET
    live = _live(session, start, end)
    assert len(live) == int((NOW - START) / BUCKET) + 1 and live[0][0] == START
    assert _rounded(fleet_totals(session, start, end, now=NOW)) == _rounded(live)  # first read: computed and stored
    session.commit()
    stored = _stored(session)
    assert stored and stored[-1] < sealed_before(NOW) <= live[-1][0]  # the open buckets are never stored
    assert stored[0] == START - BUCKET  # every sealed bucket of the range, an empty one too ...
    assert [b for b, _ in fleet_totals(session, start, end, now=NOW)] == [b for b, _ in live]  # ... not shown
    session.execute(text("UPDATE rollup_5m SET sum = -1 WHERE entity = 'pw-1'"))  # a second read takes the stored sums
    assert _rounded(fleet_totals(session, start, end, now=NOW)[:len(stored) - 2]) == _rounded(live[:len(stored) - 2])
    session.rollback()
    later = NOW + timedelta(minutes=30)  # half an hour on, more buckets are sealed; the series is the same
    assert _rounded(fleet_totals(session, start, end, now=later)) == _rounded(live)
    assert _stored(session)[-1] >= live[-1][0]  # the whole range is sealed by then


def test_the_admin_chart_reads_the_stored_sums_a_tenant_only_their_nodes(world: World) -> None:
    nodes = _seed(world)
    world.session.add(Lease(tenant_id=world.a.id, node_id=nodes[1].id, starts_at=START, created_by="t"))
    world.session.commit()
    admin, member = (principal_for_user(world.session, world.callers[n].user) for n in ("admin", "a_member"))
    start, end = NOW - timedelta(hours=2), NOW
    assert [(p.at, p.value) for p in fleet_power(world.session, admin, start, end)] == [
        (b, round(w, 1)) for b, w in _live(world.session, start, end)]
    assert world.session.exec(select(FleetPower5m)).first() is not None
    mine = [(p.at, p.value) for p in fleet_power(world.session, member, start, end)]
    assert mine == [(b, round(w, 1)) for b, (w, _) in sorted(live_totals(world.session, start, end, ["pw-1"]).items())]
    assert len(mine) == 24 and all(value < 1000 for _, value in mine)  # pw-1 alone, never the fleet


def test_late_rollups_and_enrolment_changes_keep_the_sums_exact(world: World, settings: Settings) -> None:
    nodes = _seed(world)
    session, start, end = world.session, START, NOW + BUCKET
    late = START + 6 * BUCKET
    before = dict(fleet_totals(session, start, end, now=NOW))[late]
    session.commit()  # long sealed: a collector catching up writes into it
    add_rollups(session, [Sample("ipmi", "pw-0", POWER_METRIC, 5000.0, "W", {}, late + timedelta(seconds=20))])
    session.commit()
    assert late not in _stored(session)
    assert _rounded(fleet_totals(session, start, end, now=NOW)) == _rounded(_live(session, start, end))
    assert dict(fleet_totals(session, start, end, now=NOW))[late] > before + 1000  # pw-0's mean there went up
    session.commit()

    system = Principal.system("test")
    delete_node(session, system, nodes[2].id, drivers=None, box=None)  # no backend id: no driver involved
    session.commit()
    assert START + 3 * BUCKET not in _stored(session)
    after = fleet_totals(session, start, end, now=NOW)
    assert _rounded(after) == _rounded(_live(session, start, end))
    assert all(watts < 2000 for bucket, watts in after if bucket != late)  # two nodes' worth now
    session.commit()

    expiring = settings.model_copy(update={"rollup_retention_days": 1, "health_history_retention_days": 0})
    enforce_retention(session.get_bind(), expiring, NOW + timedelta(days=1, hours=1))
    assert _stored(session) == [] and _live(session, start, end) == []


def test_migration_fills_the_sealed_buckets_from_the_rollups(fresh_engine: Engine) -> None:  # noqa: F811
    engine = fresh_engine
    assert migrate_to(engine, "0024") == "0024"
    with engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO node (id, name, provisioner, hardware_type, bmc_driver, bmc_address, facts, provision_state, "
            "maintenance, created_at, updated_at) VALUES (1, 'm-1', 'fake', 'ipmi', 'ipmi', 'ipmi://10.0.0.1', '{}', "
            "'active', false, '2026-11-01 00:00:00+00:00', '2026-11-01 00:00:00+00:00')"))
    with Session(engine) as session:
        bucket = START
        while bucket <= NOW:
            session.add(_rollup("m-1", bucket, [400.0, 410.5]))
            session.add(_rollup("stranger", bucket, [1.0]))
            bucket += BUCKET
        session.commit()
    assert migrate_to(engine, head_revision()) == head_revision()
    with Session(engine) as session:
        stored = session.exec(select(FleetPower5m).order_by(FleetPower5m.bucket)).all()
        assert stored[0].bucket.astimezone(UTC) == START and stored[-1].bucket.astimezone(UTC) < sealed_before(datetime.now(UTC))
        assert {(row.watts, row.nodes) for row in stored} == {(405.25, 1)}
        assert _rounded(fleet_totals(session, START, NOW + BUCKET)) == _rounded(_live(session, START, NOW + BUCKET))
    assert migrate_to(engine, "0024") == "0024"
