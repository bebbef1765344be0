"""One collection cycle of one source: choose targets, collect, persist, log transitions.

The worker runs a cycle per source on its interval with target leases (several replicas share
the targets); `kiln collect once` runs one without leases, optionally on named targets only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Engine
from sqlmodel import Session

from collectors.base import Progress, TargetResult
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
              only: Sequence[str] | None = None, progress: Progress | None = None) -> CycleReport:
    """Collect from the source's targets (the ones this `owner` claims, when sharing) and
    persist the results in one transaction (a `kiln.collector.cycle` span when tracing is on)."""
    with span("kiln.collector.cycle", {"kiln.collector": source.name, "kiln.worker": owner}) as current:
        targets = pick_targets(engine, source, only)
        chosen = targets
        if owner is not None:
            chosen = claim_targets(engine, source.name, targets, owner, lease=lease or timedelta(seconds=source.interval))
        results = source.collect(chosen, progress) if chosen else []
        with Session(engine) as session, session.begin():
            transitions = persist_results(session, source.name, results)
            if source.extra_persist is not None:
                source.extra_persist(session, results)
        source.persisted()
        report = CycleReport(source.name, results, transitions, len(targets))
        current.set_attributes({"kiln.targets": len(targets), "kiln.targets.polled": len(chosen),
                                **{f"kiln.targets.{outcome}": count for outcome, count in report.counts().items()}})
    for change in transitions:
        with log_context(node=change.target):
            if change.up:
                log.info("%s: %s answers again", source.name, change.target)
            else:
                log.warning("%s: %s failing: %s", source.name, change.target, change.error)
    return report
