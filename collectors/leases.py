"""Keeping a running cycle's target leases: renewal while it polls, a re-check as it stores.

A lease lasts a little more than one interval (collectors/sharding.py), but a cycle can run
longer (a survivor's cold poll of a dead replica's 5,000 BMCs on a busy machine). Without
renewal the other replicas would claim its targets mid-cycle and poll them too: two polls of a
BMC in one cycle, its snapshots and energy stored twice. So a worker's scheduler calls `renew`
every `renew_every(lease)` (a third of the lease: two renewals may fail before one lapses);
while a cycle is in flight it extends that cycle's leases and heartbeat. A target whose lease
was lost all the same (no renewal for a whole lease: the database unreachable, the process
stalled) is not polled from then on (`holds`) and its results are not stored (`settle`, in the
cycle's storing transaction, which renews the rest once more and keeps their rows until it
commits). Between cycles nothing is renewed: a worker whose cycles stop running lets its
targets go when their leases lapse.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from sqlalchemy import Engine
from sqlmodel import Session

from collectors.sharding import renew_leases
from kiln.db import utcnow

log = logging.getLogger("kiln.collectors")


def renew_every(lease: timedelta) -> int:
    """Seconds between two renewals of a cycle's leases: a third of the lease (at least 1)."""
    return max(1, int(lease.total_seconds() // 3))


class LeaseKeeper:
    """The leases of one replica's cycles of one collector (one cycle in flight at a time)."""

    def __init__(self, engine: Engine, collector: str, owner: str, lease: timedelta,
                 clock: Callable[[], datetime] = utcnow) -> None:
        """`clock` gives the time leases are renewed from (tests pass a fake one)."""
        self.engine, self.collector, self.owner, self.lease, self.clock = engine, collector, owner, lease, clock
        self._lock = threading.Lock()  # one renewal at a time, and none once the cycle stores
        self._held: frozenset[str] = frozenset()
        self._lost: set[str] = set()

    def begin(self, targets: Iterable[str]) -> None:
        """A cycle starts polling `targets`, just claimed: keep their leases until `settle`."""
        with self._lock:
            self._held, self._lost = frozenset(targets), set()

    def renew(self) -> None:
        """Extend the in-flight cycle's leases (the scheduler's job; nothing between cycles)."""
        with self._lock:
            if not self._held:
                return
            with Session(self.engine) as session, session.begin():
                kept = renew_leases(session, self.collector, self._held, self.owner, lease=self.lease,
                                    now=self.clock())
            self._keep(kept)

    def holds(self, target: str) -> bool:
        """Whether the in-flight cycle still holds `target`'s lease (poll it) or lost it (skip)."""
        return target in self._held

    def lost(self) -> set[str]:
        """The targets of the last cycle whose leases another replica took mid-cycle."""
        return set(self._lost)

    def settle(self, session: Session) -> set[str]:
        """In the cycle's storing transaction: renew the leases once more and end the cycle;
        returns the targets whose results may be stored (those still held)."""
        with self._lock:
            if self._held:
                self._keep(renew_leases(session, self.collector, self._held, self.owner, lease=self.lease,
                                        now=self.clock()))
            kept, self._held = self._held, frozenset()
            return set(kept)

    def abandon(self) -> None:
        """The cycle is over, stored or failed before storing: stop renewing (after a failure
        its leases lapse, or the next cycle's claim keeps them)."""
        with self._lock:
            self._held = frozenset()

    def _keep(self, kept: set[str]) -> None:
        lost = self._held - kept
        if lost:
            self._lost |= lost
            self._held = frozenset(kept)
            log.warning("%s: lost the leases of %d target(s) mid-cycle (lapsed and taken by another worker, "
                        "or released at shutdown: %s): not polling or storing them here", self.collector, len(lost),
                        ", ".join(sorted(lost)[:5]) + (" …" if len(lost) > 5 else ""))
