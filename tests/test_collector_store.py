"""Persistence of collector results: target states, snapshots, rollups, energy, facts, leases."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import Engine, create_engine, update
from sqlmodel import Session, select

from collectors.base import Sample, TargetResult
from collectors.models import (
    CollectorTargetState,
    HealthSnapshot,
    NodeEnergyHour,
    Rollup5m,
)
from collectors.sharding import claim_targets, retire_worker
from collectors import store
from collectors.energy import energy_by_hour
from collectors.health_events import SENSOR_EVENT_KIND
from collectors.store import persist_results
from fleet.models import Gpu, Node, NodeEvent
from tests.factories import World
from tests.fleet_helpers import make_node_row

T0 = datetime(2026, 10, 1, 9, 58, 0, tzinfo=UTC)


def ipmi(node: str, metric: str, value: float, ts: datetime, unit: str = "watts", **labels: str) -> Sample:
    return Sample("ipmi", node, metric, value, unit, labels, ts)


def power(node: str, watts: float, ts: datetime) -> TargetResult:
    return TargetResult(node, ok=True, samples=[ipmi(node, "ipmi_dcmi_power_consumption_watts", watts, ts)])


def test_energy_of_a_linear_draw_is_split_exactly_at_the_hour() -> None:
    # 1,000 W at 09:58 rising to 1,240 W at 10:02: 120 s at avg 1,060 W, then 120 s at avg 1,180 W
    parts = energy_by_hour(T0, 1000.0, T0 + timedelta(minutes=4), 1240.0, timedelta(minutes=10))
    assert parts == [
        (datetime(2026, 10, 1, 9, tzinfo=UTC), Decimal("0.035333"), 120),  # 1060 W x 120 s = 127,200 J
        (datetime(2026, 10, 1, 10, tzinfo=UTC), Decimal("0.039333"), 120),  # 1180 W x 120 s = 141,600 J
    ]
    assert energy_by_hour(T0, 1000.0, T0 + timedelta(minutes=11), 1000.0, timedelta(minutes=10)) == []
    assert energy_by_hour(T0, 1000.0, T0 - timedelta(seconds=1), 1000.0, timedelta(minutes=10)) == []


def test_power_polls_add_up_to_kwh_per_node_hour(engine: Engine, world: World) -> None:
    node = make_node_row(world, gpus=0, name="gpu-001")
    with Session(engine) as session, session.begin():
        for minute, watts in ((0, 3600.0), (1, 3600.0), (2, 3600.0), (3, 3600.0), (64, 3600.0)):
            persist_results(session, "ipmi", [power("gpu-001", watts, T0 + timedelta(minutes=minute))])
    with Session(engine) as session:
        rows = {r.hour.hour: r for r in session.exec(select(NodeEnergyHour).where(NodeEnergyHour.node_id == node.id))}
    # 3,600 W for 2 minutes in hour 9 (09:58-10:00) = 0.12 kWh; 10:00-10:01 = 0.06 kWh; the 61-minute gap
    # to 11:01 is longer than max_gap and is not guessed
    assert {h: (r.kwh, r.covered_seconds) for h, r in rows.items()} == {
        9: (Decimal("0.120000"), 120), 10: (Decimal("0.060000"), 60)}


def test_several_readings_of_a_node_in_one_call_count_each_from_the_one_before(engine: Engine, world: World) -> None:
    """What the demo's backfill does with a day of hourly readings: the same kWh as one call per reading."""
    readings = [(0, 1000.0), (30, 2000.0), (75, 2000.0), (140, 500.0), (150, 800.0)]  # 75 -> 140: a gap too long
    kwh: dict[str, dict] = {}
    for name, together in (("gpu-one-call", True), ("gpu-per-call", False)):
        node = make_node_row(world, gpus=0, name=name)
        samples = [ipmi(name, store.POWER_METRIC, watts, T0 + timedelta(minutes=m)) for m, watts in readings]
        with Session(engine) as session, session.begin():
            previous = {name: (T0 - timedelta(minutes=10), 1000.0)}
            for batch in ([samples] if together else [[s] for s in samples]):
                store.integrate_energy(session, batch, {name: node.id}, timedelta(minutes=50), previous)
                previous = {name: (batch[-1].ts, batch[-1].value)}
        with Session(engine) as session:
            kwh[name] = {r.hour: (r.kwh, r.covered_seconds) for r in session.exec(
                select(NodeEnergyHour).where(NodeEnergyHour.node_id == node.id))}
    assert kwh["gpu-one-call"] == kwh["gpu-per-call"]
    # 09:48-09:58 at 1,000 W, 09:58-10:28 rising to 2,000 W, 10:28-11:13 at 2,000 W; 11:13 -> 12:18 not guessed
    assert sum(k for k, _ in kwh["gpu-one-call"].values()) == Decimal("0.166667") + Decimal("0.75") + Decimal("1.5") + \
        Decimal("0.108333")


def test_snapshots_keep_the_newest_value_with_sensor_state(engine: Engine, world: World) -> None:
    make_node_row(world, gpus=0, name="gpu-002")
    temp = {"id": "3", "name": "GPU2 Temp"}
    first = TargetResult("gpu-002", ok=True, samples=[
        ipmi("gpu-002", "ipmi_temperature_celsius", 61.0, T0, "celsius", **temp),
        ipmi("gpu-002", "ipmi_temperature_state", 0.0, T0, "state", **temp),
        ipmi("gpu-002", "ipmi_fru_info", 1.0, T0, "info", product_serial="KSN000002"),
    ])
    later = T0 + timedelta(minutes=1)
    second = TargetResult("gpu-002", ok=True, samples=[
        ipmi("gpu-002", "ipmi_temperature_celsius", 93.0, later, "celsius", **temp),
        ipmi("gpu-002", "ipmi_temperature_state", 2.0, later, "state", **temp),
        ipmi("gpu-002", "ipmi_sensor_value", math.nan, later, "volts", id="9", name="VBAT", type="Battery"),
    ])
    for result in (first, second):
        with Session(engine) as session, session.begin():
            persist_results(session, "ipmi", [result])
    with Session(engine) as session:
        rows = {(r.metric, r.labels.get("name")): r for r in session.exec(select(HealthSnapshot))}
        node = session.exec(select(Node).where(Node.name == "gpu-002")).one()
    hot = rows[("ipmi_temperature_celsius", "GPU2 Temp")]
    assert (hot.value, hot.state, hot.observed_at, hot.node_id) == (93.0, 2, later, node.id)
    assert rows[("ipmi_sensor_value", "VBAT")].value is None  # NaN is stored as NULL
    assert node.facts["fru"] == {"product_serial": "KSN000002"}


def test_snapshots_go_in_batches_of_whole_nodes(engine: Engine, world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of 2, 2 and 1 nodes: each sensor's state still lands on its value's row and
    changes once into a node event, as in one statement."""
    monkeypatch.setattr(store, "SNAPSHOT_BATCH", 4)
    batches: list[int] = []

    def upsert(session: Session, model: object, rows: list[dict], *args: object) -> None:
        if model is HealthSnapshot:
            batches.append(len({r["entity"] for r in rows}))
        real_upsert(session, model, rows, *args)

    real_upsert = store.upsert
    monkeypatch.setattr(store, "upsert", upsert)
    nodes = [make_node_row(world, gpus=0, name=f"gpu-1{i:02d}") for i in range(5)]
    temp = {"id": "3", "name": "GPU2 Temp"}

    def cycle(at: datetime, state: float) -> list[TargetResult]:
        return [TargetResult(n.name, ok=True, samples=[
            ipmi(n.name, "ipmi_dcmi_power_consumption_watts", 900.0 + i, at),
            ipmi(n.name, "ipmi_temperature_celsius", 60.0 + i, at, "celsius", **temp),
            ipmi(n.name, "ipmi_temperature_state", state, at, "state", **temp)]) for i, n in enumerate(nodes)]

    later = T0 + timedelta(minutes=1)
    for at, state in ((T0, 0.0), (later, 2.0)):
        with Session(engine) as session, session.begin():
            persist_results(session, "ipmi", cycle(at, state))
    with Session(engine) as session:
        rows = {(r.entity, r.metric): r for r in session.exec(select(HealthSnapshot))}
        events = session.exec(select(NodeEvent.node_id, NodeEvent.message).where(NodeEvent.kind == SENSOR_EVENT_KIND)).all()
    assert batches == [2, 2, 1, 2, 2, 1] and len(rows) == 15
    for i, node in enumerate(nodes):
        hot = rows[(node.name, "ipmi_temperature_celsius")]
        assert (hot.value, hot.state, hot.observed_at) == (60.0 + i, 2, later)
        assert rows[(node.name, "ipmi_dcmi_power_consumption_watts")].value == 900.0 + i
    assert sorted(node_id for node_id, _ in events) == sorted(n.id for n in nodes)
    assert all("GPU2 Temp went from" in message for _, message in events), events


def test_target_state_reports_failing_and_recovered_once(engine: Engine) -> None:
    def cycle(ok: bool) -> list:
        result = TargetResult("gpu-009", ok=ok, error=None if ok else "no response within 2.0 s", timed_out=not ok)
        with Session(engine) as session, session.begin():
            return persist_results(session, "ipmi", [result])

    assert cycle(True) == []
    failing = cycle(False)
    assert [(t.target, t.up, t.error) for t in failing] == [("gpu-009", False, "no response within 2.0 s")]
    assert cycle(False) == []  # still failing: nothing new to say
    with Session(engine) as session:
        state = session.exec(select(CollectorTargetState)).one()
        assert (state.up, state.consecutive_failures, state.last_error) == (False, 2, "no response within 2.0 s")
    assert [t.up for t in cycle(True)] == [True]
    with Session(engine) as session:
        state = session.exec(select(CollectorTargetState)).one()
        assert (state.up, state.consecutive_failures, state.last_error) == (True, 0, None)


def test_rollups_fold_into_five_minute_buckets(engine: Engine, world: World) -> None:
    make_node_row(world, gpus=0, name="gpu-003")
    gpu = next(iter(world.session.exec(select(Gpu)).all()), None)
    assert gpu is None  # gpus=0: the GPU below is known by its host label only
    at = datetime(2026, 10, 1, 10, 1, tzinfo=UTC)
    batches = [
        [power("gpu-003", 1000.0, at).samples[0],
         ipmi("gpu-003", "ipmi_temperature_celsius", 50.0, at, "celsius", id="1", name="CPU1 Temp"),
         ipmi("gpu-003", "ipmi_temperature_celsius", 70.0, at, "celsius", id="2", name="GPU1 Temp"),
         Sample("dcgm", "GPU-aaaa", "gpu_util", 40.0, "percent", {"host": "gpu-003"}, at)],
        [power("gpu-003", 2000.0, at + timedelta(minutes=2)).samples[0],
         ipmi("gpu-003", "ipmi_temperature_celsius", 80.0, at + timedelta(minutes=2), "celsius", id="1",
              name="CPU1 Temp"),
         Sample("dcgm", "GPU-aaaa", "gpu_util", 100.0, "percent", {"host": "gpu-003"}, at + timedelta(minutes=2))],
        [power("gpu-003", 500.0, at + timedelta(minutes=4)).samples[0]],  # 10:05: the next bucket
    ]
    for samples in batches:
        with Session(engine) as session, session.begin():
            persist_results(session, samples[0].source, [TargetResult("t", ok=True, samples=samples)])
    with Session(engine) as session:
        rollups = {(r.entity, r.metric, r.bucket.minute): (r.count, r.sum, r.min, r.max)
                   for r in session.exec(select(Rollup5m))}
        gpu_snapshot = session.exec(select(HealthSnapshot).where(HealthSnapshot.entity == "GPU-aaaa")).one()
        node_id = session.exec(select(Node.id).where(Node.name == "gpu-003")).one()
    assert rollups == {
        ("gpu-003", "ipmi_dcmi_power_consumption_watts", 0): (2, 3000.0, 1000.0, 2000.0),
        ("gpu-003", "ipmi_dcmi_power_consumption_watts", 5): (1, 500.0, 500.0, 500.0),
        ("gpu-003", "ipmi_temperature_celsius_max", 0): (2, 150.0, 70.0, 80.0),
        ("GPU-aaaa", "gpu_util_percent", 0): (2, 140.0, 40.0, 100.0),
    }
    assert gpu_snapshot.node_id == node_id  # attributed through the exporter's host label


def test_replicas_split_targets_and_take_over_a_dead_ones(engine: Engine) -> None:
    targets = [f"gpu-{i:03d}" for i in range(10)]
    lease = timedelta(seconds=75)
    now = datetime(2026, 11, 1, 12, tzinfo=UTC)
    first = claim_targets(engine, "ipmi", targets, "worker-a", lease=lease, now=now)
    assert first == targets  # alone: everything
    # worker-b arrives: it gets nothing until worker-a gives up its surplus on its next cycle
    assert claim_targets(engine, "ipmi", targets, "worker-b", lease=lease, now=now + timedelta(seconds=1)) == []
    a = claim_targets(engine, "ipmi", targets, "worker-a", lease=lease, now=now + timedelta(seconds=60))
    b = claim_targets(engine, "ipmi", targets, "worker-b", lease=lease, now=now + timedelta(seconds=61))
    assert len(a) == 5 and len(b) == 5 and sorted(a + b) == targets
    # worker-a dies (no more heartbeats): once its leases lapse, worker-b takes all of them
    later = now + timedelta(seconds=60 + 76)
    assert claim_targets(engine, "ipmi", targets, "worker-b", lease=lease, now=later) == targets
    retire_worker(engine, "worker-b")
    with Session(engine) as session:
        assert {r.lease_owner for r in session.exec(select(CollectorTargetState))} == {None}


@pytest.mark.postgresql_only  # row locks of concurrent transactions
def test_a_claim_does_not_wait_for_another_replicas_open_cycle(engine: Engine) -> None:
    """A replica storing its cycle holds its target states' rows until it commits; another
    replica claiming meanwhile must not wait for that (its cycle would start late)."""
    targets = [f"gpu-{i:03d}" for i in range(10)]
    lease, now = timedelta(seconds=75), datetime(2026, 11, 1, 12, tzinfo=UTC)
    assert claim_targets(engine, "ipmi", targets, "worker-a", lease=lease, now=now) == targets
    # a lock wait fails this claim after 2 s instead of hanging until worker-a commits
    impatient = create_engine(engine.url, connect_args={"options": "-c lock_timeout=2000"})
    try:
        with Session(engine) as cycle, cycle.begin():  # worker-a's cycle: its target states, not committed
            cycle.execute(update(CollectorTargetState).where(CollectorTargetState.lease_owner == "worker-a")
                          .values(last_attempt_at=now, up=True))
            later = now + timedelta(seconds=60)
            assert claim_targets(impatient, "ipmi", targets, "worker-b", lease=lease, now=later) == []
            assert claim_targets(impatient, "ipmi", [*targets, "gpu-new"], "worker-b", lease=lease,
                                 now=later) == ["gpu-new"]
    finally:
        impatient.dispose()


def test_gpu_series_without_a_node_name_are_placed_by_gpu_target_or_kubernetes_ip(engine: Engine, world: World) -> None:
    """dcgm-exporter's host label may hold a container id (Datadog's recorded output,
    tests/data/upstream/dcgm-exporter/) or a pod name: the GPU's UUID, the scrape target's host
    name, or the InternalIP Kubernetes reports for a node place it instead."""
    by_ip = make_node_row(world, gpus=0, name="gpu-007")
    by_name = make_node_row(world, gpus=0, name="gpu-008")
    by_uuid = make_node_row(world, gpus=0, name="gpu-009")
    world.session.add(Gpu(node_id=by_uuid.id, index=0, uuid="GPU-known", model="NVIDIA H100 80GB HBM3"))
    world.session.commit()
    info = Sample("kubernetes", "gpu-007", "kube_node_info", 1.0, "info", {"internal_ip": "10.1.2.3"}, T0)

    def gpu(uuid: str, instance: str, **labels: str) -> Sample:
        return Sample("dcgm-exporter", uuid, "gpu_util", 50.0, "percent",
                      {"host": "424773df46e0", "instance": instance, **labels}, T0)

    with Session(engine) as session, session.begin():
        persist_results(session, "kubernetes", [TargetResult("k8s", ok=True, samples=[info])])
        persist_results(session, "dcgm-exporter", [TargetResult("x", ok=True, samples=[
            gpu("GPU-a", "10.1.2.3:9400"), gpu("GPU-b", "gpu-008:9400"), gpu("GPU-known/3", "10.9.9.9:9400",
                                                                          parent_gpu="GPU-known"),
            gpu("GPU-c", "[fd00::7]:9400")])])
    with Session(engine) as session:
        placed = {row.entity: row.node_id for row in session.exec(
            select(HealthSnapshot).where(HealthSnapshot.metric == "gpu_util"))}
    assert placed == {"GPU-a": by_ip.id, "GPU-b": by_name.id, "GPU-known/3": by_uuid.id, "GPU-c": None}
