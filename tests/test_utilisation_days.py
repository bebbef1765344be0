"""GPU utilisation kept per lease and day (`collectors.utilisation_days`): the kept sums answer
exactly what the samples say, whatever range asks, on SQLite and PostgreSQL; the job extends them
as buckets seal; late samples and back-dated leases make them be summed again; and the one-series
walk (`metering.efficiency.sample_micros`) weighs samples as the SQL does."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlmodel import Session, col, delete, select

from collectors.base import Sample
from collectors.models import LeaseUtilisationDay, Rollup5m, UtilisationSealed
from collectors.redfish_store import sync_gpus
from collectors.store import add_rollups
from collectors.utilisation_days import (
    DaySums, forget_since, lease_day_sums, live_sums, midnight, seal,
)
from fleet.leases import update_lease
from fleet.models import Gpu
from fleet.nodes import update_node
from fleet.schemas import GpuSpec, NodeUpdate
from fleet.tenancy_models import Lease
from fleet.tenancy_schemas import LeaseUpdate
from kiln.auth import principal_for_user
from metering.efficiency import sample_micros
from tests.factories import World
from tests.fleet_helpers import make_node_row

DAY0 = datetime(2026, 3, 1, tzinfo=UTC)
NOW = DAY0 + timedelta(days=3, hours=7, minutes=31)  # sealed: buckets before 07:20 of day 3
US = timedelta(microseconds=1)


def _fleet(world: World) -> list[Lease]:
    """Two nodes of two GPUs; node 0 leased to a then (from 13:02:07 of day 1) to b, node 1 to a
    from 20:00 of day 0, open; samples every 5 minutes with a 3-hour gap on day 1, hourly ones
    on day 2, and some before any lease."""
    rng = random.Random(7)
    nodes = [make_node_row(world, name=f"u{k}", gpus=0) for k in range(2)]
    for k, node in enumerate(nodes):
        for index in range(2):
            world.session.add(Gpu(node_id=node.id, index=index, model="NVIDIA H100 80GB HBM3", uuid=f"GPU-U{k}{index}"))
    switch = DAY0 + timedelta(days=1, hours=13, minutes=2, seconds=7)
    leases = [Lease(tenant_id=world.a.id, node_id=nodes[0].id, starts_at=DAY0 + timedelta(hours=2), ends_at=switch, created_by="t"),
              Lease(tenant_id=world.b.id, node_id=nodes[0].id, starts_at=switch, ends_at=None, created_by="t"),
              Lease(tenant_id=world.a.id, node_id=nodes[1].id, starts_at=DAY0 + timedelta(hours=20), ends_at=None, created_by="t")]
    world.session.add_all(leases)
    buckets = [DAY0 + timedelta(minutes=5 * i) for i in range(2 * 288)]
    buckets = [b for b in buckets if not DAY0 + timedelta(days=1, hours=4) <= b < DAY0 + timedelta(days=1, hours=7)]
    buckets += [DAY0 + timedelta(days=2, hours=h) for h in range(0, 24)] + [NOW - timedelta(minutes=1)]
    for k in range(2):
        for index in range(2):
            for bucket in buckets:
                mean = round(rng.uniform(0, 100), 3)
                world.session.add(Rollup5m(entity=f"GPU-U{k}{index}", metric="gpu_util_percent", bucket=bucket, count=2,
                                           sum=mean * 2, min=mean, max=mean))
    world.session.commit()
    return leases


def _ranges() -> list[tuple[datetime, datetime]]:
    return [(DAY0, NOW), (DAY0 + timedelta(hours=5, minutes=3), NOW), (DAY0 + timedelta(days=1), DAY0 + timedelta(days=2)),
            (DAY0, DAY0 + timedelta(days=1, hours=13, minutes=7)), (DAY0 + timedelta(days=2), NOW + timedelta(days=1)),
            (DAY0, DAY0 + timedelta(days=3))]


def _kept(session: Session) -> dict:
    return {(row.lease_id, row.day): (row.measured_micros, row.used_micro_percent)
            for row in session.exec(select(LeaseUtilisationDay)).all()}


SUMMED = NOW.replace(hour=7, minute=20)  # the last day's kept sums reach this far once sealed at NOW


def _answer(session: Session, start: datetime, stop: datetime) -> DaySums:
    """What the kept sums must answer for [start, stop): the samples' sums, but for the 11 minutes
    after SUMMED, not counted yet when the range ends in them."""
    return (live_sums(session, start, SUMMED if SUMMED < stop <= NOW else stop))


def test_kept_sums_answer_every_range_as_the_samples_do_and_outlive_the_samples(world: World) -> None:
    _fleet(world)
    expected = {r: _answer(world.session, *r) for r in _ranges()}
    assert seal(world.session, NOW, max_days=2) == [date(2026, 3, 4), date(2026, 3, 3)]  # today first
    assert seal(world.session, NOW, max_days=9) == [date(2026, 3, 2), date(2026, 3, 1)]
    assert seal(world.session, NOW) == []  # up to date
    world.session.commit()
    marks = dict(world.session.exec(select(UtilisationSealed.day, UtilisationSealed.through)).all())
    assert marks[date(2026, 3, 4)] == SUMMED and marks[date(2026, 3, 2)] == midnight(date(2026, 3, 3))
    for r, want in expected.items():
        assert (lease_day_sums(world.session, *r)) == want, r
    assert sum(len(days) for days in expected[(DAY0, NOW)].values()) >= 6
    # the sample at 07:30 is not counted yet; were the job 25 minutes behind, it would be, from the samples
    assert expected[(DAY0, NOW)] != (live_sums(world.session, DAY0, NOW))
    later = NOW + timedelta(minutes=15)
    assert (lease_day_sums(world.session, DAY0, later)) == (live_sums(world.session, DAY0, later))
    # the sealed days' samples gone (retention): their kept sums still answer
    world.session.exec(delete(Rollup5m).where(col(Rollup5m.bucket) < DAY0 + timedelta(days=3)))
    world.session.commit()
    assert (lease_day_sums(world.session, DAY0, DAY0 + timedelta(days=3))) == expected[(DAY0, DAY0 + timedelta(days=3))]
    assert live_sums(world.session, DAY0, DAY0 + timedelta(days=3)) == {}
    # nor are they forgotten (they could not be summed again), nor the first day left: a lease
    # back-dated to day 0 leaves them as they are
    forget_since(world.session, DAY0, now=NOW)
    world.session.commit()
    assert len(world.session.exec(select(UtilisationSealed)).all()) == 4
    assert (lease_day_sums(world.session, DAY0, DAY0 + timedelta(days=3))) == expected[(DAY0, DAY0 + timedelta(days=3))]


def test_sums_extended_as_buckets_seal_equal_one_pass(world: World) -> None:
    _fleet(world)
    seal(world.session, NOW - timedelta(hours=3, minutes=2), max_days=9)
    seal(world.session, NOW, max_days=9)  # today's sums extended from 04:15 to 07:20
    world.session.commit()
    stepped = _kept(world.session)
    world.session.exec(delete(LeaseUtilisationDay))
    world.session.exec(delete(UtilisationSealed))
    seal(world.session, NOW, max_days=9)
    world.session.commit()
    assert stepped == _kept(world.session) and len(stepped) >= 6


def test_a_late_sample_and_a_back_dated_lease_end_make_the_days_be_summed_again(world: World) -> None:
    leases = _fleet(world)
    seal(world.session, NOW, max_days=9)
    world.session.commit()
    late = DAY0 + timedelta(days=1, hours=23, minutes=30)  # 30 minutes before midnight: this day and the next
    add_rollups(world.session, [Sample("dcgm", "GPU-U10", "gpu_util", 100.0, "percent", {}, late + timedelta(seconds=9))])
    world.session.commit()
    assert set(world.session.exec(select(UtilisationSealed.day)).all()) == {date(2026, 3, 1), date(2026, 3, 4)}
    assert (lease_day_sums(world.session, DAY0, NOW)) == _answer(world.session, DAY0, NOW)
    seal(world.session, NOW, max_days=9)
    world.session.commit()
    assert len(world.session.exec(select(UtilisationSealed)).all()) == 4
    assert (lease_day_sums(world.session, DAY0, NOW)) == _answer(world.session, DAY0, NOW)
    # node 1's open lease ended back at noon of day 2: every day from then is summed again
    admin = principal_for_user(world.session, world.callers["admin"].user)
    update_lease(world.session, admin, leases[2].id, LeaseUpdate(ends_at=DAY0 + timedelta(days=2, hours=12)))
    world.session.commit()
    assert set(world.session.exec(select(UtilisationSealed.day)).all()) == {date(2026, 3, 1), date(2026, 3, 2)}
    after = lease_day_sums(world.session, DAY0, NOW)  # the days not kept from the samples, up to now
    assert (after) == (live_sums(world.session, DAY0, NOW))
    assert max(after[leases[2].id]) == date(2026, 3, 3)
    forget_since(world.session, NOW)  # not sealed yet: nothing to forget
    world.session.commit()
    assert len(world.session.exec(select(UtilisationSealed)).all()) == 2


@pytest.mark.parametrize("seed", range(3))
def test_the_one_series_walk_weighs_samples_as_the_sql_does(world: World, seed: int) -> None:
    rng = random.Random(seed)
    node = make_node_row(world, name=f"w{seed}", gpus=0)
    world.session.add(Gpu(node_id=node.id, index=0, model="NVIDIA H100 80GB HBM3", uuid=f"GPU-W{seed}"))
    start, end = DAY0 + timedelta(hours=1), DAY0 + timedelta(days=2, hours=3, minutes=1, microseconds=5)
    lease = Lease(tenant_id=world.a.id, node_id=node.id, starts_at=start, ends_at=end, created_by="t")
    world.session.add(lease)
    bucket, points = DAY0, []
    while bucket < end + timedelta(hours=2):
        mean = round(rng.uniform(0, 100), 2)
        world.session.add(Rollup5m(entity=f"GPU-W{seed}", metric="gpu_util_percent", bucket=bucket, count=1, sum=mean,
                                   min=mean, max=mean))
        points.append(((bucket - DAY0) // US, mean))
        bucket += timedelta(minutes=rng.choice([5, 5, 10, 60, 65, 180]))
    world.session.commit()
    got = live_sums(world.session, start, end + timedelta(hours=2), lease_ids=[lease.id])[lease.id]
    walked: dict[date, list] = {}
    weights = sample_micros([at for at, _ in points], (end - DAY0) // US)  # the whole series, clipped at the lease end
    for (at, mean), micros in zip(points, weights, strict=True):
        if (start - DAY0) // US <= at < (end - DAY0) // US:
            day = walked.setdefault(DAY0.date() + timedelta(days=at // 86_400_000_000), [0, 0.0, 0])
            day[0] += micros
            day[1] += micros * mean
            day[2] += 1
    assert sorted(got) == sorted(walked) and len(walked) == 3
    for day, (measured, used) in got.items():
        # used: rounded to whole µs·% per sample in SQL
        assert measured == walked[day][0] and abs(used - walked[day][1]) <= walked[day][2] / 2


def test_kiln_doctor_warns_while_the_samples_are_not_summed(world: World, settings, monkeypatch) -> None:
    import collectors.utilisation_days as days_module
    from kiln.doctor import STATUS_OK, STATUS_UNCONFIGURED, STATUS_WARNING, check_utilisation_sums

    assert check_utilisation_sums(settings).status == STATUS_UNCONFIGURED  # no samples at all
    _fleet(world)
    check = check_utilisation_sums(settings)
    assert check.status == STATUS_WARNING and "2026-03-04 07:30 UTC, that day not summed per lease" in check.detail
    seal(world.session, NOW - timedelta(minutes=40), max_days=9)  # the job stopped 40 minutes ago
    world.session.commit()
    check = check_utilisation_sums(settings)
    assert check.status == STATUS_WARNING and "summed per lease only up to 06:40 UTC" in check.detail
    assert "utilisation-days job" in check.detail
    seal(world.session, NOW, max_days=9)
    world.session.commit()
    check = check_utilisation_sums(settings)
    assert (check.status, check.detail) == (STATUS_OK, "summed up to 2026-03-04 07:20 UTC")
    monkeypatch.setattr(days_module, "NOT_YET_SUMMED", timedelta(minutes=5))  # the newest sample is 10 minutes past
    assert check_utilisation_sums(settings).status == STATUS_WARNING


@pytest.mark.parametrize("learned_from", ["redfish", "node update"])
def test_a_gpu_learned_after_its_samples_were_summed_has_its_days_summed_again(world: World, learned_from: str) -> None:
    """A GPU whose UUID Kiln learns late (read from the BMC, or given to the node by an admin)
    counts in the days the job had summed without it, once they are summed again."""
    leases = _fleet(world)
    expected = _answer(world.session, DAY0, NOW)  # every GPU known
    node = world.session.exec(select(Gpu).where(Gpu.uuid == "GPU-U10")).one().node_id
    for gpu in world.session.exec(select(Gpu).where(Gpu.node_id == node)).all():
        gpu.uuid = None  # node u1's GPUs: not known when the job summed the days
    world.session.commit()
    seal(world.session, NOW, max_days=9)
    world.session.commit()
    assert lease_day_sums(world.session, DAY0, NOW) != expected  # lease 3 (node u1) measured nothing
    if learned_from == "redfish":
        labels = [{"id": f"GPU_{i}", "uuid": f"GPU-U1{i}", "model": "NVIDIA H100 80GB HBM3"} for i in range(2)]
        sync_gpus(world.session, node, [Sample("redfish", "u1", "redfish_gpu_info", 1.0, "info", l, NOW) for l in labels])
    else:
        admin = principal_for_user(world.session, world.callers["admin"].user)
        update_node(world.session, admin, node, NodeUpdate(gpus=[
            GpuSpec(index=i, model="NVIDIA H100 80GB HBM3", uuid=f"GPU-U1{i}") for i in range(2)]))
    world.session.commit()
    assert len(world.session.exec(select(UtilisationSealed)).all()) == 1  # the first sample day is never forgotten
    seal(world.session, NOW, max_days=9)
    world.session.commit()
    # every day but the first day with samples (retention may have cut into it: it is never summed again)
    first = DAY0.date()
    later = {lease: {day: sums for day, sums in days.items() if day > first} for lease, days in expected.items()}
    assert {lease: {day: sums for day, sums in days.items() if day > first}
            for lease, days in lease_day_sums(world.session, DAY0, NOW).items()} == later
    assert len(later[leases[2].id]) == 2  # node u1's lease: days 2 and 3 measured again
