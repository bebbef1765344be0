"""GPU efficiency: GPU-hours used ÷ GPU-hours measured, with the coverage (measured ÷ allocated).

The one definition every view uses (the usage API, the usage page). For each lease, the leased
node's GPUs' utilisation rollups (`rollup_5m`, metric `gpu_util_percent`, entity = GPU UUID)
inside the lease and the range give:

- *measured* GPU-hours: each sample stands for the GPU's sampling interval from its bucket's start
  (the time since its previous sample: 5 minutes for a 5-minute scrape, an hour for hourly
  samples; one bucket when there is none within `MAX_SAMPLE_INTERVAL`, as a longer gap is missing
  data, not a long sample), never past the end of its UTC day or of the lease. The rule and the
  per-day sums kept for a large fleet are `collectors.utilisation_days`'; `sample_micros` is the
  same rule for the series read here (GPU instances, namespaces);
- *used* GPU-hours: Σ mean utilisation × that interval.

*Allocated* GPU-hours are GPUs × leased time in the range (`fleet.usage.lease_gpu_micros`, what
the lease usage records bill). A GPU instance lease counts alike, its one GPU weighted by its
profile's compute fraction (allocated, measured and used), measured by its MIG instance's series
(`metering.instance_efficiency`; not measured where that instance cannot be told). Efficiency =
used ÷ measured (None without measurements); coverage = measured ÷ allocated (how much of the allocation had utilisation data). Utilisation
is a measurement, not money: it is reported to 4 decimal places.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

from pydantic import BaseModel
from sqlmodel import Session, col, func, select

from collectors.mig_profiles import compute_fraction
from collectors.utilisation_days import (
    BUCKET_MICROS, DAY_MICROS, MAX_SAMPLE_MICROS, MICROSECOND, DaySums, lease_day_sums, midnight, tenant_day_sums,
)
from fleet.daily_hours import DayMicros, daily_lease_micros
from fleet.models import Gpu
from fleet.tenancy_models import GpuInstanceLease, Lease
from fleet.usage import MICROS_PER_HOUR, lease_gpu_micros, overlapping
from kiln.auth import Principal
from kiln.db import among, utcnow
from kiln.models import Tenant
from metering.instance_efficiency import instance_series
from metering.periods import period_bounds

PLACES = Decimal("0.0001")
LEASES_PER_QUERY = 500  # more leases than this: every lease's sums at once, not by lease id and GPU
ZERO = Decimal(0)
ALL_TENANTS = "all"


LEASE_COLUMNS = (Lease.id, Lease.tenant_id, Lease.node_id, Lease.vdc_id, Lease.starts_at, Lease.ends_at)


class EfficiencyRow(BaseModel):
    """GPU-hours allocated, measured (with utilisation data) and used, efficiency and coverage."""

    tenant: str
    allocated_gpu_hours: Decimal
    measured_gpu_hours: Decimal
    used_gpu_hours: Decimal
    efficiency: Decimal | None  # used ÷ measured; None without measurements
    coverage: Decimal | None  # measured ÷ allocated; None without allocation


def sample_micros(offsets: list[int], clip_end: int | None = None, previous: int | None = None) -> list[int]:
    """The microseconds each sample of one GPU stands for (samples as microseconds from a UTC
    midnight, ascending; `clip_end`, a lease's end, from the same midnight; `previous`, the GPU's
    sample before the first, if any): the time since the previous sample, or one bucket where
    there is none within `MAX_SAMPLE_MICROS`; never past the end of its UTC day or `clip_end`
    (`collectors.utilisation_days`' rule, for one series)."""
    out: list[int] = []
    for at in offsets:
        gap = at - previous if previous is not None else None
        interval = gap if gap is not None and gap <= MAX_SAMPLE_MICROS else BUCKET_MICROS
        end = (at // DAY_MICROS + 1) * DAY_MICROS
        if clip_end is not None:
            end = min(end, clip_end)
        out.append(max(min(interval, end - at), 0))
        previous = at
    return out


def lease_sums(session: Session, leases: list[Any], start: datetime, stop: datetime) -> DaySums:
    """Per lease with data, per UTC day of the samples: the microseconds its node's GPUs' samples
    inside both the lease and [start, stop) stand for, and those × mean % (`collectors.
    utilisation_days.lease_day_sums`: kept per day where it can). `leases`: Lease objects or rows
    with their `id` and `node_id`."""
    wanted = {lease.id for lease in leases}
    if len(leases) <= LEASES_PER_QUERY:
        # a few leases: their ids, and their GPUs, so the samples are read by their (entity, …) key
        uuids = sorted(session.exec(select(Gpu.uuid).where(
            col(Gpu.node_id).in_({lease.node_id for lease in leases}), col(Gpu.uuid).is_not(None))).all())
        if not uuids:
            return {}
        sums = lease_day_sums(session, start, stop, lease_ids=sorted(wanted), entities=uuids)
    else:  # many: every lease's kept sums, and one pass over the samples not kept, the others dropped here
        sums = lease_day_sums(session, start, stop)
    return {lease_id: days for lease_id, days in sums.items() if lease_id in wanted}


def measured_hours(micros: int) -> Decimal:
    """GPU-microseconds measured as GPU-hours."""
    return Decimal(micros) / MICROS_PER_HOUR


def used_hours(micro_percent: int) -> Decimal:
    """GPU-microseconds × utilisation % as GPU-hours used."""
    return Decimal(micro_percent) / (MICROS_PER_HOUR * 100)


def lease_utilisation(session: Session, leases: list[Any], start: datetime, stop: datetime
                      ) -> dict[int, dict[date, tuple[Decimal, Decimal]]]:
    """`lease_sums` as (GPU-hours measured, GPU-hours used) per lease and day."""
    return {lease_id: {day: (measured_hours(measured), used_hours(used)) for day, (measured, used) in days.items()}
            for lease_id, days in lease_sums(session, leases, start, stop).items()}


def add_day_sums(days: dict[date, tuple[Decimal, Decimal]], origin: date, points: list[tuple[int, float]],
                 clip_end: int | None, weight: Decimal = Decimal(1), previous: int | None = None) -> None:
    """Add one GPU's samples (microseconds from `origin`'s midnight, mean utilisation %), ascending,
    to `days` (UTC day → GPU-hours measured and used), each weighted by its `sample_micros` × `weight`
    (`previous`: the GPU's sample before the first, if any, counted for nothing).

    Per day, measured time adds up in integer microseconds and used time (µs × %) in a float,
    each made a Decimal once: utilisation is a measurement reported to 4 places, and a Decimal per
    sample (100,000 a fortnight for one tenant's 24 GPUs) was most of the page's Python time."""
    measured_micros: dict[int, int] = defaultdict(int)
    used_micro_percent: dict[int, float] = defaultdict(float)
    offsets = [at for at, _ in points]
    for micros, at, (_, mean) in zip(sample_micros(offsets, clip_end, previous), offsets, points, strict=True):
        day = at // DAY_MICROS
        measured_micros[day] += micros
        used_micro_percent[day] += micros * mean
    for day, micros in measured_micros.items():
        key = origin + timedelta(days=day)
        measured, used = days.get(key, (ZERO, ZERO))
        days[key] = (measured + Decimal(micros) / MICROS_PER_HOUR * weight,
                     used + Decimal(str(used_micro_percent[day])) / (MICROS_PER_HOUR * 100) * weight)


def add_samples(days: dict[date, tuple[Decimal, Decimal]], points: list[tuple[datetime, float]],
                clip_end: datetime | None, weight: Decimal = Decimal(1), *, counted_from: datetime | None = None) -> None:
    """Add one series' (bucket, mean utilisation %) samples, ascending, to `days` (UTC day →
    measured and used GPU-hours), each standing for its `sample_micros` (clipped at `clip_end`,
    a lease's end, if any) × `weight` GPUs. Samples before `counted_from` (read from up to
    `MAX_SAMPLE_INTERVAL` earlier) count for nothing: the last of them is the previous sample of the
    first counted one, as in `collectors.utilisation_days`, so a range's sums do not depend on
    where it starts."""
    first = 0 if counted_from is None else bisect_left(points, counted_from, key=lambda point: point[0])
    if first == len(points):
        return
    origin = midnight(points[first][0].astimezone(UTC).date())
    previous = (points[first - 1][0] - origin) // MICROSECOND if first else None
    add_day_sums(days, origin.date(), [((bucket - origin) // MICROSECOND, mean) for bucket, mean in points[first:]],
                 None if clip_end is None else (clip_end - origin) // MICROSECOND, weight, previous)


def _row(tenant: str, allocated: Decimal, measured: Decimal, used: Decimal) -> EfficiencyRow:
    return EfficiencyRow(
        tenant=tenant, allocated_gpu_hours=allocated.quantize(PLACES), measured_gpu_hours=measured.quantize(PLACES),
        used_gpu_hours=used.quantize(PLACES), efficiency=(used / measured).quantize(PLACES) if measured else None,
        coverage=(measured / allocated).quantize(PLACES) if allocated else None)


@dataclass(frozen=True)
class LeaseFigures:
    """One lease's GPU-hours within a window: allocated, measured and used (and the measured and
    used GPU-hours per UTC day of their samples)."""

    lease: Any  # a whole-node lease's `LEASE_COLUMNS` row, or a GpuInstanceLease
    gpus: int
    allocated: Decimal
    measured: Decimal
    used: Decimal
    days: dict[date, tuple[Decimal, Decimal]] = field(default_factory=dict)
    fraction: Fraction = Fraction(1)  # of each GPU: an instance lease's compute fraction

    @property
    def instance(self) -> GpuInstanceLease | None:
        """The GPU instance lease these figures are of (None: a whole-node lease)."""
        return self.lease if isinstance(self.lease, GpuInstanceLease) else None

    def allocated_between(self, start: datetime, end: datetime) -> Decimal:
        """GPU-hours the lease held within [start, end): its GPUs × hours × the fraction of each."""
        return gpu_hours(lease_gpu_micros(self.lease, self.gpus, start, end), self.fraction)


def gpu_hours(gpu_micros: int, fraction: Fraction = Fraction(1)) -> Decimal:
    """GPU-microseconds × `fraction` as GPU-hours."""
    return Decimal(gpu_micros * fraction.numerator) / (MICROS_PER_HOUR * fraction.denominator)


def lease_figures(
    session: Session, principal: Principal, start: datetime, end: datetime, *, tenant_id: int | None = None,
    now: datetime | None = None,
) -> list[LeaseFigures]:
    """Every lease of the caller's tenants (or only `tenant_id`) overlapping [start, end) up to now,
    with its allocated, measured and used GPU-hours there: whole-node leases, then GPU instance
    leases (`instance_figures`)."""
    stop = min(end, now or utcnow())
    leases = lease_rows(session, principal, start, stop, tenant_id=tenant_id)
    gpus = _gpu_counts(session, leases)
    measured = lease_utilisation(session, leases, start, stop)
    return [LeaseFigures(lease, gpus[lease.node_id], gpu_hours(lease_gpu_micros(lease, gpus[lease.node_id], start, stop)),
                         *_totals(measured.get(lease.id, {})))
            for lease in leases] + instance_figures(session, principal, start, stop, tenant_id=tenant_id)


def lease_rows(session: Session, principal: Principal, start: datetime, stop: datetime, *, tenant_id: int | None = None
               ) -> list[Any]:
    """The whole-node leases of the caller's tenants (or only `tenant_id`) overlapping [start, stop),
    as `LEASE_COLUMNS` rows by id."""
    if stop <= start:
        return []
    # columns, not Lease objects: thousands of leases at fleet scale, and only these are read
    statement = _of_leases(select(*LEASE_COLUMNS), principal, start, stop, tenant_id)
    return list(session.connection().execute(statement.order_by(Lease.id)).all())


def lease_count(session: Session, principal: Principal, start: datetime, stop: datetime, *, tenant_id: int | None = None
                ) -> int:
    """How many `lease_rows` there are, without reading them (10,800 a week at 10,000 nodes)."""
    if stop <= start:
        return 0
    return session.connection().execute(_of_leases(select(func.count()).select_from(Lease), principal, start, stop,
                                                   tenant_id)).scalar_one()


def _of_leases(statement: Any, principal: Principal, start: datetime, stop: datetime, tenant_id: int | None) -> Any:
    """`statement` narrowed to the whole-node leases of the caller's tenants (or only `tenant_id`)
    overlapping [start, stop)."""
    statement = principal.scope(statement.where(overlapping(start, stop)), Lease.tenant_id)
    return statement if tenant_id is None else statement.where(Lease.tenant_id == tenant_id)


def _gpu_counts(session: Session, leases: list[Any]) -> Counter[int]:
    return Counter(dict(session.exec(  # type: ignore[arg-type]
        select(Gpu.node_id, func.count()).where(among(Gpu.node_id, {l.node_id for l in leases})).group_by(Gpu.node_id)).all()))


@dataclass(frozen=True)
class LeaseTotals:
    """Leases' figures summed, for a view that shows no row per lease: allocated, measured and used
    GPU-hours per tenant id, the GPU-hours used per UTC day of the samples, and the GPU instance
    leases' own figures (few; an allocation split by day needs their compute fraction)."""

    by_tenant: dict[int, list[Decimal]]
    used_by_day: dict[date, Decimal]
    instances: list[LeaseFigures]

    def combined(self) -> EfficiencyRow:
        """`combined(per_tenant(...))` of these leases, without a row (or a slug) per tenant."""
        return _row(ALL_TENANTS, *(sum((total[i].quantize(PLACES) for total in self.by_tenant.values()), ZERO)
                                   for i in range(3)))


def totals_of(figures: list[LeaseFigures]) -> LeaseTotals:
    """`LeaseTotals` of leases' figures already read (`lease_figures`)."""
    used: dict[date, Decimal] = {}
    for f in figures:
        for day, (_, day_used) in f.days.items():
            used[day] = used.get(day, ZERO) + day_used
    return LeaseTotals(_sums(figures), used, [f for f in figures if f.instance is not None])


def lease_totals(
    session: Session, principal: Principal, start: datetime, end: datetime, *, tenant_id: int | None = None,
    now: datetime | None = None, held: list[DayMicros] | None = None, count: int | None = None,
) -> LeaseTotals:
    """`totals_of(lease_figures(...))` without a `LeaseFigures` per whole-node lease (10,800 of them
    for all tenants of a 10,000-node fleet over a week): allocated GPU-hours per tenant from the
    leases' GPU-microseconds per day (`held`: `fleet.daily_hours.daily_lease_micros` of the window,
    when already read), measured and used GPU-hours summed per tenant as they are read (for many
    leases, in the database: the leases themselves are not read; `count`: their `lease_count`,
    when already counted)."""
    stop = min(end, now or utcnow())
    if held is None:
        held = daily_lease_micros(session, principal, start, stop, tenant_id)
    sums: dict[int, list[Decimal]] = defaultdict(lambda: [ZERO, ZERO, ZERO])
    allocated: dict[int, int] = defaultdict(int)
    for row in held:
        allocated[row.tenant_id] += row.gpu_micros
    for tenant, micros in allocated.items():
        sums[tenant][0] += gpu_hours(micros)
    # whole numbers summed per tenant and day first, each made GPU-hours once: a Decimal per
    # lease-day (80,000 of them a week at 10,000 nodes) was most of this function's time
    by_tenant: dict[int, dict[date, list[int]]] = defaultdict(dict)
    if count is None:
        count = lease_count(session, principal, start, stop, tenant_id=tenant_id)
    if count <= LEASES_PER_QUERY:
        leases = lease_rows(session, principal, start, stop, tenant_id=tenant_id)
        tenant_of = {lease.id: lease.tenant_id for lease in leases}
        for lease_id, days in lease_sums(session, leases, start, stop).items():
            for day, (measured, used) in days.items():
                day_sums = by_tenant[tenant_of[lease_id]].setdefault(day, [0, 0])
                day_sums[0] += measured
                day_sums[1] += used
    else:
        by_tenant.update(tenant_day_sums(session, start, stop, lambda statement: _of_leases(
            statement, principal, start, stop, tenant_id)))
    used_micros: dict[date, int] = defaultdict(int)
    for tenant, days in by_tenant.items():
        sums[tenant][1] += measured_hours(sum(measured for measured, _ in days.values()))
        sums[tenant][2] += used_hours(sum(used for _, used in days.values()))
        for day, (_, used) in days.items():
            used_micros[day] += used
    used: dict[date, Decimal] = {day: used_hours(total) for day, total in used_micros.items()}
    instances = instance_figures(session, principal, start, stop, tenant_id=tenant_id)
    for f in instances:
        total = sums[f.lease.tenant_id]
        total[0] += f.allocated
        total[1] += f.measured
        total[2] += f.used
        for day, (_, day_used) in f.days.items():
            used[day] = used.get(day, ZERO) + day_used
    return LeaseTotals(dict(sums), used, instances)


def _totals(days: dict[date, tuple[Decimal, Decimal]]) -> tuple[Decimal, Decimal, dict[date, tuple[Decimal, Decimal]]]:
    if not days:  # most leases of a large fleet: no samples
        return ZERO, ZERO, days
    return sum((m for m, _ in days.values()), ZERO), sum((u for _, u in days.values()), ZERO), days


def instance_figures(session: Session, principal: Principal, start: datetime, stop: datetime, *,
                     tenant_id: int | None = None) -> list[LeaseFigures]:
    """Every GPU instance lease of the caller's tenants (or only `tenant_id`) overlapping
    [start, stop): allocated = instance-hours × the profile's compute fraction; measured and used
    from its MIG instance's utilisation series (`metering.instance_efficiency`), weighted alike."""
    statement = principal.scope(select(GpuInstanceLease).where(overlapping(start, stop, GpuInstanceLease)),
                                GpuInstanceLease.tenant_id)
    if tenant_id is not None:
        statement = statement.where(GpuInstanceLease.tenant_id == tenant_id)
    instances = list(session.exec(statement.order_by(GpuInstanceLease.id)).all()) if stop > start else []
    series = instance_series(session, instances, start, stop)
    out = []
    for instance in instances:
        fraction = compute_fraction(instance.gpu_model, instance.profile)  # as the bill counts it (`metering.instance_usage`)
        days: dict[date, tuple[Decimal, Decimal]] = {}
        weight = Decimal(fraction.numerator) / fraction.denominator
        add_samples(days, series.get(instance.id, []), instance.ends_at, weight,
                    counted_from=max(start, instance.starts_at))
        out.append(LeaseFigures(instance, 1, gpu_hours(lease_gpu_micros(instance, 1, start, stop), fraction),
                                *_totals(days), fraction=fraction))
    return out


def efficiency_between(
    session: Session, principal: Principal, start: datetime, end: datetime, *, tenant_id: int | None = None,
    now: datetime | None = None,
) -> list[EfficiencyRow]:
    """Per tenant the caller may see (or only `tenant_id`): allocated, measured and used GPU-hours of
    leased nodes in [start, end) up to now, with efficiency and coverage."""
    return per_tenant(session, lease_figures(session, principal, start, end, tenant_id=tenant_id, now=now))


def _sums(leases: Iterable[LeaseFigures]) -> dict[int, list[Decimal]]:
    totals: dict[int, list[Decimal]] = defaultdict(lambda: [ZERO, ZERO, ZERO])
    for figures in leases:
        total = totals[figures.lease.tenant_id]
        total[0] += figures.allocated
        total[1] += figures.measured
        total[2] += figures.used
    return dict(totals)


def per_tenant(session: Session, leases: Iterable[LeaseFigures]) -> list[EfficiencyRow]:
    """Leases' figures summed per tenant, by tenant slug."""
    totals = _sums(leases)
    slugs = dict(session.exec(select(Tenant.id, Tenant.slug)).all())
    return [_row(slugs.get(t, "?"), *totals[t]) for t in sorted(totals, key=lambda t: slugs.get(t, ""))]


def combined(rows: Iterable[EfficiencyRow], tenant: str = ALL_TENANTS) -> EfficiencyRow:
    """Several tenants' rows as one: GPU-hours summed, then the ratios of the sums."""
    rows = list(rows)
    return _row(tenant, *(sum((getattr(r, name) for r in rows), ZERO)
                          for name in ("allocated_gpu_hours", "measured_gpu_hours", "used_gpu_hours")))


def efficiency(session: Session, principal: Principal, period: str, now: datetime | None = None) -> list[EfficiencyRow]:
    """`efficiency_between` over a billing period (YYYY-MM)."""
    return efficiency_between(session, principal, *period_bounds(period), now=now)
