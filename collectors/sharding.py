"""Worker replicas share a collector's targets through leases in the database.

Each cycle a replica (1) records a heartbeat, (2) counts the live replicas (seen within one
lease), (3) keeps up to its fair share (ceil(targets / replicas)) of the leases it holds and
releases the rest, and (4) claims free or expired targets up to that share. Rows are taken with
`SELECT ... FOR UPDATE SKIP LOCKED` on PostgreSQL, so two replicas claiming at once never get
the same target, and no replica's claim waits for another's cycle to commit; a lease lasts a
little more than one interval, so a killed replica's targets are free again by the others'
next cycle. On SQLite (one machine) the database lock
serialises the claims instead. A cycle that runs longer than that keeps its leases by renewing
them while it runs (`renew_leases`, driven by collectors/leases.py), so no other replica takes
its targets while it is alive.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, or_, update
from sqlmodel import Session, select

from collectors.models import CollectorTargetState, CollectorWorker
from kiln.db import upsert


def default_worker_name() -> str:
    """HOSTNAME-PID: unique per replica, readable in `collector_target_state.lease_owner`."""
    return f"{socket.gethostname()}-{os.getpid()}"[:128]


def lease_length(interval: float) -> timedelta:
    """How long a claim lasts: one interval plus slack for a slow cycle."""
    return timedelta(seconds=interval + max(2.0, interval * 0.25))


def claim_targets(engine: Engine, collector: str, targets: Sequence[str], owner: str, *,
                  lease: timedelta, now: datetime | None = None) -> list[str]:
    """The targets of `collector` this replica polls this cycle (see the module docstring)."""
    now = now or datetime.now(UTC)
    wanted = sorted(set(targets))
    with Session(engine) as session, session.begin():
        upsert(session, CollectorWorker, [{"owner": owner, "started_at": now, "last_seen_at": now}], ("owner",),
               ("last_seen_at",))
        # only the targets without a row: an upsert of every target would wait for another
        # replica's open cycle transaction on each row it updates (its target states)
        known = set(session.exec(select(CollectorTargetState.target).where(CollectorTargetState.collector == collector)))
        upsert(session, CollectorTargetState,
               [{"collector": collector, "target": t, "up": False, "consecutive_failures": 0}
                for t in wanted if t not in known], ("collector", "target"), None)
        live = session.exec(select(CollectorWorker.owner).where(CollectorWorker.last_seen_at > now - lease)).all()
        share = math.ceil(len(wanted) / max(1, len(live)))
        rows = select(CollectorTargetState).where(CollectorTargetState.collector == collector,
                                                  CollectorTargetState.target.in_(wanted))
        held = session.exec(rows.where(CollectorTargetState.lease_owner == owner,
                                       CollectorTargetState.lease_expires_at > now)
                            .order_by(CollectorTargetState.target).with_for_update(skip_locked=True)).all()
        keep, release = held[:share], held[share:]
        free = session.exec(rows.where(or_(CollectorTargetState.lease_owner.is_(None),
                                           CollectorTargetState.lease_expires_at.is_(None),
                                           CollectorTargetState.lease_expires_at <= now))
                            .order_by(CollectorTargetState.target).limit(max(0, share - len(keep)))
                            .with_for_update(skip_locked=True)).all()
        claimed = [row.target for row in (*keep, *free)]
        if claimed:
            session.execute(update(CollectorTargetState)
                            .where(CollectorTargetState.collector == collector,
                                   CollectorTargetState.target.in_(claimed))
                            .values(lease_owner=owner, lease_expires_at=now + lease))
        if release:
            session.execute(update(CollectorTargetState)
                            .where(CollectorTargetState.collector == collector,
                                   CollectorTargetState.target.in_([row.target for row in release]))
                            .values(lease_owner=None, lease_expires_at=None))
    return sorted(claimed)


def renew_leases(session: Session, collector: str, targets: Collection[str], owner: str, *,
                 lease: timedelta, now: datetime) -> set[str]:
    """Extend this replica's leases of `targets` to `now + lease` and record its heartbeat, in
    the caller's transaction; returns the targets it still holds (the others were claimed by
    another replica after a lease of this one lapsed)."""
    if not targets:
        return set()
    upsert(session, CollectorWorker, [{"owner": owner, "started_at": now, "last_seen_at": now}], ("owner",),
           ("last_seen_at",))
    # only rows this owner still holds, expired or not: one another replica claimed has its owner
    # (PostgreSQL re-checks the owner of a row another claim had locked once that claim commits)
    renewed = session.execute(update(CollectorTargetState)
                              .where(CollectorTargetState.collector == collector,
                                     CollectorTargetState.lease_owner == owner,
                                     CollectorTargetState.target.in_(list(targets)))
                              .values(lease_expires_at=now + lease)
                              .returning(CollectorTargetState.target))
    return set(renewed.scalars())


def retire_worker(engine: Engine, owner: str) -> None:
    """A replica stopping cleanly: release its leases and its heartbeat at once."""
    with Session(engine) as session, session.begin():
        session.execute(update(CollectorTargetState).where(CollectorTargetState.lease_owner == owner)
                        .values(lease_owner=None, lease_expires_at=None))
        worker = session.get(CollectorWorker, owner)
        if worker is not None:
            session.delete(worker)
