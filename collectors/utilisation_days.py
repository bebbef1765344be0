"""GPU utilisation per whole-node lease and UTC day: the rule that weighs each sample, as one SQL
query, and the sums kept so the usage views need not read every sample of a large fleet.

The rule (`metering.efficiency` reports it as GPU-hours measured and used): a GPU's utilisation
sample (`rollup_5m`, metric `gpu_util_percent`, entity = the GPU's UUID, the bucket's mean) stands
for the GPU's sampling interval from its bucket's start: the time since the GPU's previous sample,
or one bucket (5 minutes) when there is none within `MAX_SAMPLE_INTERVAL` (a longer gap is missing
data, not a long sample); never past the end of its UTC day or of the lease. It counts on the day
its bucket starts, for the lease that held the GPU's node then. A sample's weight depends on
itself and the sample before it only, so once a bucket is sealed (`collectors.fleet_power.
sealed_before`: the collectors are done writing it) its sums do not change, and a day's sums are
the same whatever range asks for them.

Kept: `lease_utilisation_day` holds per lease and day the microseconds the samples stand for and
those × mean % (used), over the samples before the day's `utilisation_sealed.through`. The worker's
`utilisation-days` job extends the days up to the sealed buckets (`seal`), today first, a few days a
run. Readers (`lease_day_sums`) take the kept sums of each day the range covers from its midnight,
and compute the rest (a range's partial first day, days not kept) from `rollup_5m` by the same
query. The samples a kept day's sums do not reach yet are not counted while they are under
`NOT_YET_SUMMED` (25 minutes) old: utilisation figures reach up to the last bucket the job summed,
10-25 minutes before now, while allocated hours reach now. Writers keep them right: a rollup written into a bucket
that may be sealed (a collector catching up, a backfill) forgets that day and the next
(`utilisation_written`); a lease created or ended back in sealed time forgets every day from there
(`forget_since`); the job sums them again. Days whose samples retention removed (and the first day
left, which may have lost its early hours) are never forgotten: they could not be summed again.
On PostgreSQL both sides take one advisory lock first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import BigInteger, Engine, Float, case, cast, delete, literal, literal_column, or_, text
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, func, select

from collectors.fleet_power import BUCKET, SEAL_AFTER, sealed_before
from collectors.models import LeaseUtilisationDay, Rollup5m, UtilisationSealed
from fleet.daily_hours import days_between, micros_between
from fleet.models import Gpu
from fleet.tenancy_models import Lease
from kiln.db import UTCDateTime, among, least, upsert

GPU_UTIL_ROLLUP = "gpu_util_percent"  # collectors.store.GPU_UTIL_ROLLUP (it imports this module)
MAX_SAMPLE_INTERVAL = timedelta(hours=1)
MICROSECOND = timedelta(microseconds=1)
MAX_SAMPLE_MICROS = MAX_SAMPLE_INTERVAL // MICROSECOND
BUCKET_MICROS = BUCKET // MICROSECOND
DAY = timedelta(days=1)
DAY_MICROS = DAY // MICROSECOND
NEVER_MICROS = 10**18  # an open lease's end, as microseconds from any origin
DAYS_PER_RUN = 4
LOCK_KEY = 0x6B696C6E75746C64  # 'kilnutld': pg_advisory_xact_lock key of the kept sums

SEAL_EVERY = 300  # seconds: the job's interval, one bucket
# Samples after a day's kept sums are not counted while they are this recent: the job sums them
# within SEAL_EVERY of the bucket's sealing (SEAL_AFTER after it ends). Computing them on every read
# was 1-2.5 s for 80,000 GPUs; a longer stretch (the job stopped) is computed from the samples.
NOT_YET_SUMMED = SEAL_AFTER + BUCKET + timedelta(seconds=SEAL_EVERY) + BUCKET

log = logging.getLogger("kiln.utilisation")

# lease id → UTC day → [microseconds measured, microseconds × mean % used (whole numbers)]
DaySums = dict[int, dict[date, list[int]]]


def midnight(day: date) -> datetime:
    """The UTC midnight that starts `day`."""
    return datetime.combine(day, time(), tzinfo=UTC)


def live_sums(session: Session, start: datetime, stop: datetime, *, lease_ids: Sequence[int] | None = None,
              entities: Sequence[str] | None = None, out: DaySums | None = None) -> DaySums:
    """Add to `out` (returned), per whole-node lease and UTC day, the weighed sums of its GPUs'
    samples with buckets in [start, stop), read from `rollup_5m` (each sample's previous one from
    up to an hour before `start`). `lease_ids` narrows the leases; `entities` (their GPUs'
    UUIDs) narrows the samples read, for a few leases."""
    out = {} if out is None else out
    if stop <= start:
        return out
    origin = midnight((start - MAX_SAMPLE_INTERVAL).astimezone(UTC).date())
    at = micros_between(session, literal(origin, UTCDateTime), Rollup5m.bucket)
    # One bucket before `start` as well: buckets are 5 minutes apart, so a GPU with a sample there
    # has its previous one for the window's first (the usual case); for the others, the latest
    # sample within the hour before is looked up alone. Reading that whole hour for every GPU was
    # most of the work for a window of a few buckets (80,000 GPUs × 12 buckets).
    samples = select(
        Rollup5m.entity, Rollup5m.bucket, (Rollup5m.sum / cast(Rollup5m.count, Float)).label("mean"), at.label("at"),
        func.lag(at).over(partition_by=Rollup5m.entity, order_by=Rollup5m.bucket).label("previous"),
    ).where(Rollup5m.metric == GPU_UTIL_ROLLUP, Rollup5m.count > 0, col(Rollup5m.bucket) >= start - BUCKET,
            col(Rollup5m.bucket) < stop)
    if entities is not None:
        samples = samples.where(col(Rollup5m.entity).in_(entities))
    # Read first, by the (metric, bucket, …) index: joined in one statement, PostgreSQL's planner
    # merged the samples with the GPUs in entity order, walking every metric's (entity, …) index.
    sample = samples.cte("sample").prefix_with("MATERIALIZED", dialect="postgresql")
    before = aliased(Rollup5m)
    earlier = (select(func.max(before.bucket))
               .where(before.entity == sample.c.entity, before.metric == GPU_UTIL_ROLLUP, before.count > 0,
                      col(before.bucket) >= start - MAX_SAMPLE_INTERVAL, col(before.bucket) < start)
               .scalar_subquery())
    # COALESCE stops at the first value that is not NULL: the lookup runs only where LAG found none.
    # The gap is a column of its own (materialised): written into each use below, PostgreSQL ran
    # the lookup's plan 16 times over and compiled it as often (1.4 s of JIT for 80,000 GPUs).
    gaps = (select(sample.c.entity, sample.c.bucket, sample.c.mean, sample.c.at,
                   (sample.c.at - func.coalesce(sample.c.previous, micros_between(
                       session, literal(origin, UTCDateTime), earlier))).label("gap"))
            .where(sample.c.bucket >= start).cte("gaps").prefix_with("MATERIALIZED", dialect="postgresql"))
    interval = least_of(gaps.c.gap, MAX_SAMPLE_MICROS, BUCKET_MICROS)  # NULL gap (none within the hour): one bucket
    # constants inline: PostgreSQL matches a GROUP BY expression to the SELECT's only if both are
    # the same text, and each bound parameter is a new placeholder
    day = gaps.c.at // _inline(DAY_MICROS)
    day_end = (day + 1) * _inline(DAY_MICROS)
    lease_end = func.coalesce(micros_between(session, literal(origin, UTCDateTime), Lease.ends_at),
                              _inline(NEVER_MICROS))
    counted = least(least(interval, day_end - gaps.c.at), lease_end - gaps.c.at)
    statement = (
        # used: µs × % rounded per sample to a whole number, so sums are exact and add up alike
        # however they are split (per day, per run of the job, per tenant)
        select(Lease.id, day, func.sum(counted), func.sum(cast(func.round(counted * gaps.c.mean), BigInteger)))
        .select_from(gaps).join(Gpu, col(Gpu.uuid) == gaps.c.entity).join(Lease, col(Lease.node_id) == Gpu.node_id)
        .where(gaps.c.bucket >= Lease.starts_at, or_(col(Lease.ends_at).is_(None), gaps.c.bucket < Lease.ends_at))
        .group_by(Lease.id, day))
    if lease_ids is not None:
        statement = statement.where(col(Lease.id).in_(lease_ids))
    first = origin.date()
    for lease_id, day_index, measured, used in session.connection().execute(statement).all():
        sums = out.setdefault(lease_id, {}).setdefault(first + timedelta(days=int(day_index)), [0, 0])
        sums[0] += int(measured)
        sums[1] += int(used)
    return out


def least_of(gap: Any, most: int, otherwise: int) -> Any:
    """SQL: `gap` where it is at most `most`, else `otherwise` (also where `gap` is NULL)."""
    return case((gap <= _inline(most), gap), else_=_inline(otherwise))


def _inline(number: int) -> Any:
    return literal_column(str(number), BigInteger)


def kept_plan(session: Session, start: datetime, stop: datetime) -> tuple[list[date], list[tuple[datetime, datetime]]]:
    """The days of [start, stop) whose kept sums answer (the range holds the day from its
    midnight, and the sums do not reach past the range), and the windows left to compute live:
    the parts of the range that are not whole kept days, and what a kept day's sums do not reach
    yet where that is more than `NOT_YET_SUMMED` (the job has fallen behind)."""
    marks = dict(session.exec(select(UtilisationSealed.day, UtilisationSealed.through).where(
        col(UtilisationSealed.day) >= start.astimezone(UTC).date(),
        col(UtilisationSealed.day) <= stop.astimezone(UTC).date())).all())
    kept: list[date] = []
    live: list[tuple[datetime, datetime]] = []
    for piece_start, piece_end in days_between(start.astimezone(UTC), stop.astimezone(UTC)):
        day = piece_start.date()
        through = marks.get(day)
        if piece_start == midnight(day) and through is not None and through <= piece_end:
            kept.append(day)
            # what the job has not summed yet, while it keeps up, is not counted yet
            piece_start = piece_end if piece_end - through <= NOT_YET_SUMMED else through
        if piece_start < piece_end:
            if live and live[-1][1] == piece_start:
                live[-1] = (live[-1][0], piece_end)
            else:
                live.append((piece_start, piece_end))
    return kept, live


def lease_day_sums(session: Session, start: datetime, stop: datetime, *, lease_ids: Sequence[int] | None = None,
                   entities: Sequence[str] | None = None) -> DaySums:
    """Per whole-node lease and UTC day, the weighed sums of its GPUs' samples with buckets in
    [start, stop): kept sums where they answer (`kept_plan`), the rest live (`live_sums`).
    `lease_ids` and `entities` as for `live_sums`; kept rows of other leases may come too."""
    kept, live = kept_plan(session, start, stop)
    out: DaySums = {}
    if kept:
        statement = select(LeaseUtilisationDay.lease_id, LeaseUtilisationDay.day, LeaseUtilisationDay.measured_micros,
                           LeaseUtilisationDay.used_micro_percent).where(col(LeaseUtilisationDay.day).in_(kept))
        if lease_ids is not None:
            statement = statement.where(among(LeaseUtilisationDay.lease_id, lease_ids))
        for lease_id, day, measured, used in session.connection().execute(statement).all():
            out.setdefault(lease_id, {})[day] = [measured, used]
    for window_start, window_end in live:
        live_sums(session, window_start, window_end, lease_ids=lease_ids, entities=entities, out=out)
    return out


def tenant_day_sums(session: Session, start: datetime, stop: datetime, narrow: Callable[[Any], Any]
                    ) -> dict[int, dict[date, list[int]]]:
    """`lease_day_sums` of many leases, summed per tenant and day: the kept sums in the database,
    the rest live; `narrow` keeps the leases asked for (a filter on a statement over `Lease`). A
    row per lease-day read and summed here was most of the all-tenant usage page's time (80,000 a
    week)."""
    kept, live = kept_plan(session, start, stop)
    out: dict[int, dict[date, list[int]]] = {}
    if kept:
        statement = narrow(
            # sums as BIGINT: PostgreSQL's sum of a bigint is numeric, a Decimal to parse per row
            select(Lease.tenant_id, LeaseUtilisationDay.day, cast(func.sum(LeaseUtilisationDay.measured_micros), BigInteger),
                   cast(func.sum(LeaseUtilisationDay.used_micro_percent), BigInteger))
            .join(Lease, col(Lease.id) == LeaseUtilisationDay.lease_id)
            .where(col(LeaseUtilisationDay.day).in_(kept)).group_by(Lease.tenant_id, LeaseUtilisationDay.day))
        for tenant_id, day, measured, used in session.connection().execute(statement).all():  # one row per (tenant, day)
            out.setdefault(tenant_id, {})[day] = [int(measured), int(used)]
    for window_start, window_end in live:  # usually none: only while the job is behind, or for a ragged range
        sums = live_sums(session, window_start, window_end)
        tenant_of = dict(session.connection().execute(narrow(
            select(Lease.id, Lease.tenant_id).where(among(Lease.id, list(sums))))).all()) if sums else {}
        for lease_id, days in sums.items():
            if lease_id in tenant_of:
                for day, (measured, used) in days.items():
                    day_sums = out.setdefault(tenant_of[lease_id], {}).setdefault(day, [0, 0])
                    day_sums[0] += int(measured)
                    day_sums[1] += int(used)
    return out


def seal(session: Session, now: datetime, max_days: int = DAYS_PER_RUN) -> list[date]:
    """Extend the kept sums of up to `max_days` days, the newest first, over every bucket sealed at
    `now`; returns the days extended (none: all kept sums are up to date)."""
    first_day = _first_sample_day(session)
    if first_day is None:
        return []
    horizon = sealed_before(now)
    _lock(session)
    marks = dict(session.exec(select(UtilisationSealed.day, UtilisationSealed.through).where(
        col(UtilisationSealed.day) >= first_day)).all())
    extended: list[date] = []
    day = (horizon - MICROSECOND).date()
    while day >= first_day and len(extended) < max_days:
        through = marks.get(day, midnight(day))
        target = min(midnight(day) + DAY, horizon)
        if through < target:
            sums = live_sums(session, through, target)
            rows = [{"day": d, "lease_id": lease_id, "measured_micros": measured, "used_micro_percent": used}
                    for lease_id, days in sums.items() for d, (measured, used) in days.items()]
            upsert(session, LeaseUtilisationDay, rows, ("day", "lease_id"), _add)
            upsert(session, UtilisationSealed, [{"day": day, "through": target}], ("day",), ("through",))
            extended.append(day)
        day -= DAY
    return extended


def summed_status(session: Session) -> tuple[datetime | None, datetime | None]:
    """(the newest utilisation sample's bucket, how far that day's kept sums reach): None, None
    without samples; a None reach where the day is not summed at all."""
    newest = session.exec(select(func.max(Rollup5m.bucket)).where(Rollup5m.metric == GPU_UTIL_ROLLUP)).one()
    if newest is None:
        return None, None
    newest = newest.astimezone(UTC)
    mark = session.get(UtilisationSealed, newest.date())
    return newest, mark.through.astimezone(UTC) if mark else None


def seal_job(engine: Engine) -> Callable[[], None]:
    """The worker's `utilisation-days` job: `seal` in a transaction of its own, at the time it runs;
    a run that extends more than today's sums (catching up after an upgrade or a late write) says
    which days it summed."""
    def run() -> None:
        with Session(engine) as session:
            days = seal(session, datetime.now(UTC))
            session.commit()
        if len(days) > 1:
            log.info("utilisation summed per lease for %s", ", ".join(f"{day:%Y-%m-%d}" for day in days))
    return run


def _add(current: Any, new: Any) -> Mapping[str, Any]:
    return {"measured_micros": current.measured_micros + new.measured_micros,
            "used_micro_percent": current.used_micro_percent + new.used_micro_percent}


def utilisation_written(session: Session, rows: Sequence[Mapping[str, Any]], now: datetime | None = None) -> None:
    """After `rollup_5m` rows were written: forget the kept sums of the days of the utilisation
    buckets among them that may be sealed (older than half the sealing delay, for clock skew), and of
    the days an hour on (the next sample's weight counts from this one)."""
    horizon = _may_be_sealed_before(now)
    late = {row["bucket"] for row in rows if row["metric"] == GPU_UTIL_ROLLUP and row["bucket"] < horizon}
    if late:
        forget_days(session, {moment.astimezone(UTC).date() for bucket in late
                              for moment in (bucket, bucket + MAX_SAMPLE_INTERVAL)})


def forget_days(session: Session, days: Iterable[date]) -> None:
    """Delete the kept sums of `days` (the worker's job sums them again; readers compute them live
    meanwhile), but of no day that could not be summed again: the first day with samples left and
    any before it (retention removed their samples; the first may have lost its early hours)."""
    first = _first_sample_day(session)
    days = sorted(day for day in days if first is not None and day > first)
    if not days:
        return
    _lock(session)
    session.exec(delete(LeaseUtilisationDay).where(col(LeaseUtilisationDay.day).in_(days)))
    session.exec(delete(UtilisationSealed).where(col(UtilisationSealed.day).in_(days)))


def gpus_learned(session: Session, uuids: Iterable[str], now: datetime | None = None) -> None:
    """Kiln has just learned these GPU UUIDs (a node's GPUs enrolled or read from its BMC after
    their exporters' samples came): the days already summed left those samples out (a sample
    counts through its GPU's row), so forget them from the first such sample on."""
    wanted = sorted(set(uuids))
    if not wanted:
        return
    first = session.exec(select(func.min(Rollup5m.bucket)).where(
        Rollup5m.metric == GPU_UTIL_ROLLUP, col(Rollup5m.entity).in_(wanted))).one()
    if first is not None:
        forget_since(session, first, now)


def forget_since(session: Session, moment: datetime, now: datetime | None = None) -> None:
    """What counts changed from `moment` on (a whole-node lease now starts or ends then, or a GPU's
    samples from then on can now be counted): forget the kept sums of every day from `moment`'s
    on, if it may be sealed."""
    if moment >= _may_be_sealed_before(now):
        return
    first = _first_sample_day(session)
    if first is None:
        return
    day = max(moment.astimezone(UTC).date(), first + DAY)  # as `forget_days`: only what can be summed again
    _lock(session)
    session.exec(delete(LeaseUtilisationDay).where(col(LeaseUtilisationDay.day) >= day))
    session.exec(delete(UtilisationSealed).where(col(UtilisationSealed.day) >= day))


def _may_be_sealed_before(now: datetime | None) -> datetime:
    # buckets before this may already be summed (half the sealing delay early, for clock skew)
    return sealed_before((now or datetime.now(UTC)) + SEAL_AFTER / 2)


def _first_sample_day(session: Session) -> date | None:
    """The first day with utilisation samples left (None: no samples); it may have lost its early
    hours to retention, so only the days after it can be summed again."""
    first = session.exec(select(func.min(Rollup5m.bucket)).where(Rollup5m.metric == GPU_UTIL_ROLLUP)).one()
    return None if first is None else first.astimezone(UTC).date()


def _lock(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.exec(text("SELECT pg_advisory_xact_lock(:key)").bindparams(key=LOCK_KEY))
