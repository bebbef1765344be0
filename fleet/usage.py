"""The tenancy timeline as numbers: which leases are in force, and GPU-hours they add up to.

Periods are calendar months in UTC. Lease intervals are [starts_at, ends_at); an open lease
counts up to the moment asked about. Metering builds its hourly usage records from the
same leases; this module is what quotas are checked against.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import ColumnElement
from sqlmodel import Session, col, or_, select

from fleet.models import Gpu
from fleet.tenancy_models import Lease

HOURS_QUANTUM = Decimal("0.000001")
MICROS_PER_HOUR = 3_600_000_000
_MICROSECOND = timedelta(microseconds=1)


def in_force(at: datetime) -> ColumnElement[bool]:
    """SQL condition: the lease holds its node at `at`."""
    return (col(Lease.starts_at) <= at) & or_(col(Lease.ends_at).is_(None), col(Lease.ends_at) > at)


def overlapping(start: datetime, end: datetime) -> ColumnElement[bool]:
    """SQL condition: the lease overlaps [start, end)."""
    return (col(Lease.starts_at) < end) & or_(col(Lease.ends_at).is_(None), col(Lease.ends_at) > start)


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
    """GPU-hours held from the start of `at`'s period up to `at` (GPUs × leased hours)."""
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
    micros = sum(lease_gpu_micros(lease, gpus.get(lease.node_id, 0), start, at) for lease in leases)
    return (Decimal(micros) / MICROS_PER_HOUR).quantize(HOURS_QUANTUM)  # summed exactly, rounded once


def lease_gpu_micros(lease: Lease, gpus: int, start: datetime, at: datetime) -> int:
    """GPU-microseconds a lease of a node with `gpus` GPUs held within [start, at): exact (timedelta
    arithmetic, never a float)."""
    held_from = max(lease.starts_at, start)
    held_to = min(lease.ends_at or at, at)
    if held_to <= held_from or not gpus:
        return 0
    return (held_to - held_from) // _MICROSECOND * gpus



def planned_gpu_hours(gpus: int, starts_at: datetime, ends_at: datetime | None, period_end: datetime) -> Decimal:
    """GPU-hours a new lease will add within its start's period (0 for an open lease: unknown yet)."""
    if ends_at is None:
        return Decimal(0)
    held_to = min(ends_at, period_end)
    micros = max((held_to - starts_at) // _MICROSECOND, 0)
    return (Decimal(micros * gpus) / MICROS_PER_HOUR).quantize(HOURS_QUANTUM)
