"""One collection cycle of one source: choose targets, collect, persist, log transitions.

The worker runs a cycle per source on its interval with target leases (several replicas share
the targets; its `LeaseKeeper` renews them while the cycle runs and drops the results of any it
lost before storing); `kiln collect once` runs one without leases, optionally on named targets only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Engine
from sqlmodel import Session

from collectors.base import Progress, TargetResult
from collectors.leases import LeaseKeeper
from collectors.sharding import claim_targets
from collectors.sources import Source
from collectors.store import Transition, persist_results
from kiln.logs import log_context
from kiln.telemetry import span

log = logging.getLogger("kiln.collectors")


class UnknownTargets(ValueError):
    """Targets asked for by name that the source does not poll."""


@dataclass(frozen=True)
class CycleReport:
    """What one cycle did: results per target and which targets changed between up and down."""

    collector: str
    results: list[TargetResult]
    transitions: list[Transition]
    total_targets: int
    lost: tuple[str, ...] = ()  # targets whose leases another replica took mid-cycle: not stored

    def counts(self) -> dict[str, int]:
        """ok / failed / timed out target counts."""
        timed_out = sum(1 for r in self.results if not r.ok and r.timed_out)
        failed = sum(1 for r in self.results if not r.ok) - timed_out
        return {"ok": sum(1 for r in self.results if r.ok), "failed": failed, "timed_out": timed_out}


def pick_targets(engine: Engine, source: Source, only: Sequence[str] | None) -> list[str]:
    """The source's targets, or the named subset of them (UnknownTargets names the others)."""
    with Session(engine) as session:
        targets = source.targets(session)
    if not only:
        return targets
    unknown = sorted(set(only) - set(targets))
    if unknown:
        raise UnknownTargets(f"{source.name} does not poll {', '.join(unknown)} "
                             f"(it polls {len(targets)} target{'s' * (len(targets) != 1)})")
    return list(dict.fromkeys(only))


def run_cycle(engine: Engine, source: Source, *, owner: str | None = None, lease: timedelta | None = None,
              only: Sequence[str] | None = None, progress: Progress | None = None,
              keeper: LeaseKeeper | None = None) -> CycleReport:
    """Collect from the source's targets (the ones this `owner` claims, when sharing) and
    persist the results in one transaction (a `kiln.collector.cycle` span when tracing is on).
    When sharing, `keeper` (the worker's, which its scheduler renews; else one for this cycle)
    keeps the claimed leases, and results of targets whose lease was lost are not stored."""
    if owner is not None and keeper is None:
        keeper = LeaseKeeper(engine, source.name, owner, lease or timedelta(seconds=source.interval))
    worker = keeper.owner if keeper is not None else None
    with span("kiln.collector.cycle", {"kiln.collector": source.name, "kiln.worker": worker}) as current:
        targets = pick_targets(engine, source, only)
        chosen = targets
        if keeper is not None:
            chosen = claim_targets(engine, source.name, targets, keeper.owner, lease=keeper.lease, now=keeper.clock())
            keeper.begin(chosen)
        try:
            results = source.collect(chosen, progress, keeper.holds if keeper else None) if chosen else []
            with Session(engine) as session, session.begin():
                if keeper is not None:
                    kept = keeper.settle(session)
                    results = [r for r in results if r.target in kept]
                transitions = persist_results(session, source.name, results)
                if source.extra_persist is not None:
                    source.extra_persist(session, results)
        finally:
            if keeper is not None:
                keeper.abandon()
        source.persisted()
        lost = tuple(sorted(keeper.lost())) if keeper is not None else ()
        report = CycleReport(source.name, results, transitions, len(targets), lost)
        current.set_attributes({"kiln.targets": len(targets), "kiln.targets.polled": len(chosen),
                                **{f"kiln.targets.{outcome}": count for outcome, count in report.counts().items()}})
    for change in transitions:
        with log_context(node=change.target):
            if change.up:
                log.info("%s: %s answers again", source.name, change.target)
            else:
                log.warning("%s: %s failing: %s", source.name, change.target, change.error)
    return report
