"""The tenancy timeline as numbers: which leases are in force, and GPU-hours they add up to.

Periods are calendar months in UTC. Lease intervals are [starts_at, ends_at); an open lease
counts up to the moment asked about. A GPU instance lease counts as its compute fraction of
its GPU (`collectors.mig_profiles`): a `3g.40gb` instance of an H100 is 3/7 GPU. Metering builds its hourly usage records from the
same leases; this module is what quotas are checked against.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

from sqlalchemy import ColumnElement
from sqlmodel import Session, col, or_, select

from collectors.mig_profiles import compute_fraction
from fleet.models import Gpu
from fleet.tenancy_models import GpuInstanceLease, Lease

HOURS_QUANTUM = Decimal("0.000001")
MICROS_PER_HOUR = 3_600_000_000
_MICROSECOND = timedelta(microseconds=1)
FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)  # the end of an open interval, for overlap checks


AnyLease = type[Lease] | type[GpuInstanceLease]


def in_force(at: datetime, model: AnyLease = Lease) -> ColumnElement[bool]:
    """SQL condition: the lease (of `model`: whole nodes, or GPU instances) holds at `at`."""
    return (col(model.starts_at) <= at) & or_(col(model.ends_at).is_(None), col(model.ends_at) > at)


def overlapping(start: datetime, end: datetime, model: AnyLease = Lease) -> ColumnElement[bool]:
    """SQL condition: the lease (of `model`) overlaps [start, end)."""
    return (col(model.starts_at) < end) & or_(col(model.ends_at).is_(None), col(model.ends_at) > start)


def period_of(at: datetime) -> tuple[datetime, datetime]:
    """The billing period (calendar month, UTC) containing `at`: [first day, first day of next month)."""
    at = at.astimezone(UTC)
    start = datetime(at.year, at.month, 1, tzinfo=UTC)
    end = datetime(at.year + (at.month == 12), at.month % 12 + 1, 1, tzinfo=UTC)
    return start, end


def leases_in_force(
    session: Session, at: datetime, *, vdc_id: int | None = None, tenant_id: int | None = None
) -> list[Lease]:
    """Leases holding a node at `at`, optionally within one VDC and/or for one tenant."""
    statement = select(Lease).where(in_force(at))
    if vdc_id is not None:
        statement = statement.where(Lease.vdc_id == vdc_id)
    if tenant_id is not None:
        statement = statement.where(Lease.tenant_id == tenant_id)
    return list(session.exec(statement).all())


def gpu_hours_in_period(
    session: Session, at: datetime, *, vdc_id: int | None = None, tenant_id: int | None = None
) -> Decimal:
    """GPU-hours held from the start of `at`'s period up to `at` (GPUs × leased hours, GPU
    instances by their compute fraction)."""
    start, _ = period_of(at)
    statement = select(Lease).where(overlapping(start, at))
    if vdc_id is not None:
        statement = statement.where(Lease.vdc_id == vdc_id)
    if tenant_id is not None:
        statement = statement.where(Lease.tenant_id == tenant_id)
    leases = session.exec(statement).all()
    node_ids = sorted({lease.node_id for lease in leases})
    gpus: dict[int, int] = {}
    for node_id in session.exec(select(Gpu.node_id).where(col(Gpu.node_id).in_(node_ids))).all():
        gpus[node_id] = gpus.get(node_id, 0) + 1
    micros = Fraction(sum(lease_gpu_micros(lease, gpus.get(lease.node_id, 0), start, at) for lease in leases))
    for instance, fraction in instance_fractions(session, overlapping(start, at, GpuInstanceLease), vdc_id, tenant_id):
        micros += lease_gpu_micros(instance, 1, start, at) * fraction
    return hours_of(micros)  # summed exactly, rounded once


def instance_fractions(
    session: Session, condition: ColumnElement[bool], vdc_id: int | None = None, tenant_id: int | None = None
) -> list[tuple[GpuInstanceLease, Fraction]]:
    """GPU instance leases meeting `condition` (optionally of one VDC and/or tenant), each with the
    part of its GPU it holds (of the GPU model the lease recorded)."""
    statement = select(GpuInstanceLease).where(condition)
    if vdc_id is not None:
        statement = statement.where(GpuInstanceLease.vdc_id == vdc_id)
    if tenant_id is not None:
        statement = statement.where(GpuInstanceLease.tenant_id == tenant_id)
    return [(instance, compute_fraction(instance.gpu_model, instance.profile)) for instance in session.exec(statement).all()]


def hours_of(micros: Fraction) -> Decimal:
    """GPU-microseconds (exact, a fraction where GPU instances count) as GPU-hours to 6 places, rounded once."""
    return (Decimal(micros.numerator) / micros.denominator / MICROS_PER_HOUR).quantize(HOURS_QUANTUM)


def lease_gpu_micros(lease: Lease | GpuInstanceLease, gpus: int, start: datetime, at: datetime) -> int:
    """GPU-microseconds a lease of a node with `gpus` GPUs held within [start, at): exact (timedelta
    arithmetic, never a float)."""
    held_from = max(lease.starts_at, start)
    held_to = min(lease.ends_at or at, at)
    if held_to <= held_from or not gpus:
        return 0
    return (held_to - held_from) // _MICROSECOND * gpus


def planned_gpu_hours(gpus: int | Fraction, starts_at: datetime, ends_at: datetime | None, period_end: datetime) -> Decimal:
    """GPU-hours a new lease of `gpus` GPUs (a fraction for a GPU instance) will add within its
    start's period (0 for an open lease: unknown yet)."""
    if ends_at is None:
        return Decimal(0)
    held_to = min(ends_at, period_end)
    micros = max((held_to - starts_at) // _MICROSECOND, 0)
    return hours_of(micros * Fraction(gpus))
