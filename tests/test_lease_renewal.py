"""A worker's cycle keeps its target leases while it runs, however long it runs; a target whose
lease it lost all the same is neither polled nor stored by it; a dead worker's targets are taken
once its last renewal lapses. SQLite and PostgreSQL, on a fake clock."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, create_engine, update
from sqlmodel import Session, select

from collectors.base import LEASE_LOST, Held, Progress, Sample, TargetResult, not_held
from collectors.cycle import run_cycle
from collectors.ipmi import IpmiCollector, IpmiTarget
from collectors.leases import LeaseKeeper, renew_every
from collectors.models import CollectorTargetState, HealthSnapshot
from collectors.sharding import claim_targets, lease_length
from collectors.sources import Source
from kiln.metrics import WorkerMetrics
from kiln.worker import collector_jobs

T0 = datetime(2026, 11, 1, 12, tzinfo=UTC)
LEASE = lease_length(60)  # 75 s
TARGETS = [f"gpu-{i:03d}" for i in range(10)]


class Clock:
    """A fake clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def answered(target: str) -> TargetResult:
    return TargetResult(target, ok=True, samples=[Sample("ipmi", target, "ipmi_up", 1.0, "state",
                                                         {"collector": "chassis"}, datetime.now(UTC))])


def source(collect: Callable[[Sequence[str], Progress | None, Held | None], list[TargetResult]]) -> Source:
    return Source("ipmi", 60, lambda _session: list(TARGETS), collect)


def states(engine: Engine) -> dict[str, CollectorTargetState]:
    with Session(engine) as session:
        return {r.target: r for r in session.exec(select(CollectorTargetState)
                                                  .where(CollectorTargetState.collector == "ipmi"))}


def snapshot_entities(engine: Engine) -> set[str]:
    with Session(engine) as session:
        return set(session.exec(select(HealthSnapshot.entity)))


def test_renewal_is_every_third_of_a_lease() -> None:
    assert renew_every(LEASE) == 25
    assert renew_every(lease_length(5)) == 2  # 7 s
    assert renew_every(timedelta(seconds=2)) == 1


def test_a_cycle_longer_than_its_lease_keeps_its_targets(engine: Engine) -> None:
    """worker-a's cold cycle takes 110 s against a 75 s lease; renewed every 25 s, no target
    is free for worker-b meanwhile, though b is alive and claiming, and a stores all of them."""
    clock = Clock()
    keeper = LeaseKeeper(engine, "ipmi", "worker-a", LEASE, clock)
    polled: dict[str, list[str]] = {"worker-a": [], "worker-b": []}

    def long_cycle(names: Sequence[str], _progress: Progress | None, held: Held | None) -> list[TargetResult]:
        results = []
        for name in names:
            for _second in range(11):  # 110 s in all
                clock.advance(1)
                elapsed = (clock.now - T0).total_seconds()
                if elapsed % renew_every(LEASE) == 0:
                    keeper.renew()  # the worker's renew-leases job
                if elapsed in (77, 99):  # worker-b, alive, claims (its own cycles) after a's first lease ran out
                    polled["worker-b"] += claim_targets(engine, "ipmi", TARGETS, "worker-b", lease=LEASE,
                                                        now=clock.now)
            assert held is not None and held(name)
            polled["worker-a"].append(name)
            results.append(answered(name))
        return results

    report = run_cycle(engine, source(long_cycle), keeper=keeper)
    assert polled == {"worker-a": TARGETS, "worker-b": []}
    assert [r.target for r in report.results] == TARGETS and report.lost == ()
    stored = states(engine)
    assert all(stored[t].last_attempt_at is not None and stored[t].lease_owner == "worker-a" for t in TARGETS)
    # the storing transaction renewed them once more: a lease from the end of the cycle
    assert {stored[t].lease_expires_at for t in TARGETS} == {T0 + timedelta(seconds=110) + LEASE}
    assert snapshot_entities(engine) == set(TARGETS)
    # between cycles nothing is renewed; a's next claim gives b its share as before
    clock.advance(120 - 110)
    keeper.renew()
    assert states(engine)["gpu-000"].lease_expires_at == T0 + timedelta(seconds=110) + LEASE
    assert claim_targets(engine, "ipmi", TARGETS, "worker-a", lease=LEASE, now=clock.now) == TARGETS[:5]
    assert claim_targets(engine, "ipmi", TARGETS, "worker-b", lease=LEASE, now=clock.now) == TARGETS[5:]


def test_a_dead_workers_targets_are_taken_once_its_last_renewal_lapses(engine: Engine) -> None:
    clock = Clock()
    keeper = LeaseKeeper(engine, "ipmi", "worker-a", LEASE, clock)
    keeper.begin(claim_targets(engine, "ipmi", TARGETS, "worker-a", lease=LEASE, now=clock.now))
    clock.advance(25)
    keeper.renew()  # its last renewal: then it dies mid-cycle (no clean shutdown)
    clock.advance(74)
    assert claim_targets(engine, "ipmi", TARGETS, "worker-b", lease=LEASE, now=clock.now) == []
    clock.advance(2)  # 25 + 76 s: the lease from its last renewal has lapsed
    assert claim_targets(engine, "ipmi", TARGETS, "worker-b", lease=LEASE, now=clock.now) == TARGETS
    assert {s.lease_owner for s in states(engine).values()} == {"worker-b"}


def test_a_lease_lost_mid_cycle_is_not_polled_nor_stored(engine: Engine, caplog) -> None:
    """worker-a stalls past its lease (no renewal for 85 s) and worker-b claims half its
    targets: a's next renewal finds them lost, a polls only the rest and stores only those."""
    clock = Clock()
    keeper = LeaseKeeper(engine, "ipmi", "worker-a", LEASE, clock)
    polled: list[str] = []

    def stalling(names: Sequence[str], _progress: Progress | None, held: Held | None) -> list[TargetResult]:
        results = []
        for i, name in enumerate(names):
            if i == 3:
                clock.advance(85)  # stalled: no renewal since the claim
                assert claim_targets(engine, "ipmi", TARGETS[5:], "worker-b", lease=LEASE,
                                     now=clock.now) == TARGETS[5:]
                keeper.renew()
            if held is not None and not held(name):
                results.append(not_held(name))
                continue
            polled.append(name)
            results.append(answered(name))
        return results

    report = run_cycle(engine, source(stalling), keeper=keeper)
    assert polled == TARGETS[:5]
    assert report.lost == tuple(TARGETS[5:]) and [r.target for r in report.results] == TARGETS[:5]
    stored = states(engine)
    assert {t for t, s in stored.items() if s.last_attempt_at is not None} == set(TARGETS[:5])
    assert {t: s.lease_owner for t, s in stored.items()} == {
        **{t: "worker-a" for t in TARGETS[:5]}, **{t: "worker-b" for t in TARGETS[5:]}}
    assert snapshot_entities(engine) == set(TARGETS[:5])
    assert "lost the leases of 5 target(s) mid-cycle" in caplog.text


def test_results_of_a_lease_lost_after_the_last_renewal_are_not_stored(engine: Engine) -> None:
    """A source that polls all its targets in one call cannot skip: the re-check in the storing
    transaction drops what another worker took."""
    clock = Clock()
    keeper = LeaseKeeper(engine, "ipmi", "worker-a", LEASE, clock)

    def one_call(names: Sequence[str], _progress: Progress | None, _held: Held | None) -> list[TargetResult]:
        clock.advance(80)
        claim_targets(engine, "ipmi", TARGETS[:2], "worker-b", lease=LEASE, now=clock.now)
        return [answered(name) for name in names]

    report = run_cycle(engine, source(one_call), keeper=keeper)
    assert report.lost == tuple(TARGETS[:2])
    assert snapshot_entities(engine) == set(TARGETS[2:])
    assert {t for t, s in states(engine).items() if s.last_attempt_at is not None} == set(TARGETS[2:])


def test_the_workers_renewal_job_renews_the_running_cycle(engine: Engine) -> None:
    """`kiln worker`'s two jobs per collector share one keeper: the renew job, run while a
    cycle is in flight, extends that cycle's leases; run between cycles, it does nothing."""
    started, finish = threading.Event(), threading.Event()

    def waiting(names: Sequence[str], _progress: Progress | None, _held: Held | None) -> list[TargetResult]:
        started.set()
        assert finish.wait(10)
        return [answered(name) for name in names]

    collect, renew = collector_jobs(engine, source(waiting), "worker-a", WorkerMetrics(CollectorRegistry()))
    assert (collect.name, collect.seconds, renew.name, renew.seconds) == ("collect-ipmi", 60, "renew-leases-ipmi", 25)
    cycle = threading.Thread(target=collect.run)
    cycle.start()
    try:
        assert started.wait(10)
        claimed = {t: s.lease_expires_at for t, s in states(engine).items()}
        renew.run()
        renewed = {t: s.lease_expires_at for t, s in states(engine).items()}
        assert all(renewed[t] > claimed[t] for t in TARGETS)
    finally:
        finish.set()
        cycle.join(10)
    stored = states(engine)
    assert all(s.last_attempt_at is not None for s in stored.values())
    renew.run()
    assert {t: s.lease_expires_at for t, s in states(engine).items()} == {t: s.lease_expires_at for t, s in stored.items()}


def test_the_ipmi_collector_does_not_poll_a_target_it_no_longer_holds() -> None:
    targets = [IpmiTarget("gpu-001", "127.0.0.1", 9), IpmiTarget("gpu-002", "127.0.0.1", 9)]
    with IpmiCollector(targets, timeout=0.2, retries=0) as collector:
        lost, polled = collector.collect(held=lambda node: node == "gpu-002")
        assert (lost.polled, lost.ok, lost.error) == (False, False, LEASE_LOST)
        assert polled.polled and not polled.ok  # nothing listens there: it was tried
        assert collector._conns["gpu-001"].packets_sent == 0 < collector._conns["gpu-002"].packets_sent


@pytest.mark.postgresql_only  # row locks of concurrent transactions
def test_a_renewal_does_not_wait_for_another_replicas_storing_transaction(engine: Engine) -> None:
    """worker-b storing its cycle holds its target states' rows until it commits; worker-a's
    renewal meanwhile touches only its own rows and must not wait (its lease would lapse)."""
    clock = Clock()
    claim_targets(engine, "ipmi", TARGETS[:5], "worker-b", lease=LEASE, now=clock.now)
    impatient = create_engine(engine.url, connect_args={"options": "-c lock_timeout=2000"})
    keeper = LeaseKeeper(impatient, "ipmi", "worker-a", LEASE, clock)
    keeper.begin(claim_targets(impatient, "ipmi", TARGETS, "worker-a", lease=LEASE, now=clock.now))
    try:
        with Session(engine) as cycle, cycle.begin():  # worker-b's storing transaction, open
            cycle.execute(update(CollectorTargetState).where(CollectorTargetState.lease_owner == "worker-b")
                          .values(last_attempt_at=clock.now, up=True))
            clock.advance(25)
            keeper.renew()
            assert keeper.lost() == set() and all(keeper.holds(t) for t in TARGETS[5:])
    finally:
        impatient.dispose()
    assert {t: s.lease_expires_at for t, s in states(engine).items() if s.lease_owner == "worker-a"} == {
        t: T0 + timedelta(seconds=25) + LEASE for t in TARGETS[5:]}
