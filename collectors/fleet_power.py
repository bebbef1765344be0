"""The whole fleet's power per 5-minute bucket, kept so the fleet chart need not sum every node.

The admin's fleet chart is, per bucket, the sum over every enrolled node of its mean DCMI watts
(`rollup_5m`: sum / count). At 10,000 nodes a day of it is 2.9 M rollup rows to read on every
load. `fleet_power_5m` keeps that sum per *sealed* bucket instead, one row each:

- A bucket is sealed `SEAL_AFTER` after it ends (collectors write a bucket while it is open and
  for the length of one cycle after; a cycle of 10,000 BMCs takes well under a minute).
- Readers keep it (`fleet_totals`): stored rows for the sealed buckets of the range, and any
  sealed bucket of the range without a row is computed from `rollup_5m` by the same query as the
  live series and stored (an empty bucket too, `nodes` 0, so it is not computed again); the
  still-open buckets (the last 15 minutes) are always computed live. The migration that adds
  the table fills it for the retained rollups; retention expires it with `rollup_5m`.
- Writers keep it right: a rollup write into a bucket that may be sealed (a collector catching
  up, a late replica) deletes that bucket's stored sum (`rollups_written`), and so does enrolling
  or deleting a node that has power rollups (`forget_entity`): the sum is over enrolled nodes.
  The next reader computes them again. On PostgreSQL both sides take one transaction-scoped
  advisory lock first, so a reader never stores a sum computed before a writer's rows committed.

A tenant's series (the nodes they lease) stays a live, scoped query: it is a few rows per bucket.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Float, cast, delete, text
from sqlmodel import Session, col, func, select

from collectors.models import FleetPower5m, Rollup5m
from fleet.models import Node
from kiln.db import upsert

BUCKET = timedelta(minutes=5)  # the rollups' bucket (collectors.store writes rollup_5m by bucket_start)
SEAL_AFTER = timedelta(minutes=10)
POWER_METRIC = "ipmi_dcmi_power_consumption_watts"  # collectors.store.POWER_METRIC (it imports this module)
LOCK_KEY = 0x6B696C6E66707735  # 'kilnfpw5': pg_advisory_xact_lock key of fleet_power_5m


def bucket_start(ts: datetime) -> datetime:
    """Start of the 5-minute bucket holding `ts` (UTC)."""
    ts = ts.astimezone(UTC)
    return ts.replace(minute=ts.minute - ts.minute % 5, second=0, microsecond=0)


def sealed_before(now: datetime) -> datetime:
    """The first bucket start that is not sealed at `now`: every earlier bucket ended `SEAL_AFTER` ago."""
    return bucket_start(now - BUCKET - SEAL_AFTER) + BUCKET


def live_totals(session: Session, start: datetime, end: datetime, entities: Any = None) -> dict[datetime, tuple[float, int]]:
    """Per bucket in [start, end): the sum of each node's mean watts and how many node series it sums.
    `entities` (node names: a list or a subquery) narrows the nodes; all enrolled nodes by default."""
    entities = select(Node.name) if entities is None else entities
    rows = session.exec(
        select(Rollup5m.bucket, func.sum(Rollup5m.sum / cast(Rollup5m.count, Float)), func.count())  # not NUMERIC: millions of rows
        .where(Rollup5m.metric == POWER_METRIC, col(Rollup5m.entity).in_(entities),
               Rollup5m.bucket >= start, Rollup5m.bucket < end, Rollup5m.count > 0)
        .group_by(Rollup5m.bucket)
    ).all()
    return {bucket.astimezone(UTC): (float(watts), nodes) for bucket, watts, nodes in rows}


def fleet_totals(session: Session, start: datetime, end: datetime, now: datetime | None = None) -> list[tuple[datetime, float]]:
    """The whole fleet's watts per bucket in [start, end), oldest first: stored sums for sealed
    buckets (computed and stored where missing), live sums for open ones. Equal to `live_totals`."""
    now = now or datetime.now(UTC)
    stored_end = max(start, min(end, sealed_before(now)))
    totals = {row.bucket.astimezone(UTC): (row.watts, row.nodes) for row in session.exec(
        select(FleetPower5m).where(FleetPower5m.bucket >= start, FleetPower5m.bucket < stored_end))}
    first = bucket_start(start) + (BUCKET if bucket_start(start) < start else timedelta(0))
    missing = [b for b in _starts(first, stored_end) if b not in totals]
    if missing:
        _lock(session)
        low, high = missing[0], missing[-1] + BUCKET
        computed = {b: total for b, total in live_totals(session, low, high).items() if b not in totals}
        computed.update({b: (0.0, 0) for b in missing if b not in computed})  # empty: not computed again
        upsert(session, FleetPower5m, [{"bucket": b, "watts": w, "nodes": n} for b, (w, n) in computed.items()],
               ("bucket",), None)
        totals.update(computed)
    if stored_end < end:
        totals.update(live_totals(session, stored_end, end))
    return [(bucket, watts) for bucket, (watts, nodes) in sorted(totals.items()) if nodes]


def rollups_written(session: Session, rows: Sequence[Mapping[str, Any]], now: datetime | None = None) -> None:
    """After `rollup_5m` rows were written: forget the stored sums of the power buckets among them
    that a reader may already have sealed (older than half the sealing delay, for clock skew)."""
    horizon = sealed_before((now or datetime.now(UTC)) + SEAL_AFTER / 2)
    late = sorted({row["bucket"] for row in rows if row["metric"] == POWER_METRIC and row["bucket"] < horizon})
    if late:
        invalidate(session, late)


def forget_entity(session: Session, entity: str) -> None:
    """Forget the stored sums of every bucket in which `entity` (a node being enrolled or deleted)
    has power rollups: they are sums over the enrolled nodes."""
    buckets = select(Rollup5m.bucket).where(Rollup5m.entity == entity, Rollup5m.metric == POWER_METRIC)
    if session.exec(buckets.limit(1)).first() is not None:
        _lock(session)
        session.exec(delete(FleetPower5m).where(col(FleetPower5m.bucket).in_(buckets)))


def invalidate(session: Session, buckets: Iterable[datetime]) -> None:
    """Delete the stored sums of `buckets` (the next reader computes them again)."""
    _lock(session)
    session.exec(delete(FleetPower5m).where(col(FleetPower5m.bucket).in_(list(buckets))))


def _lock(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.exec(text("SELECT pg_advisory_xact_lock(:key)").bindparams(key=LOCK_KEY))


def _starts(first: datetime, end: datetime) -> list[datetime]:
    count = max(0, -(-(end - first) // BUCKET))
    return [first + i * BUCKET for i in range(count)]
