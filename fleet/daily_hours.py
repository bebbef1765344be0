"""GPU-time held by whole-node leases per UTC day, summed in the database.

The usage page's charts need GPU-hours per (day, tenant, VDC, GPU model) over thousands of
leases; splitting each lease at midnights in Python was most of the page's server time at
10,000 nodes. Here one query joins the leases to the range's days (a UNION of one-row
SELECTs, so it works alike on SQLite and PostgreSQL) and to each node's GPU count per model, and sums integer
GPU-microseconds: exact, as `fleet.usage.lease_gpu_micros` counts them, with no float on the way.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any, NamedTuple

from sqlalchemy import BigInteger, Integer, case, cast, func, literal, union_all
from sqlmodel import Session, col, select

from fleet.models import Gpu
from fleet.tenancy_models import Lease
from fleet.usage import overlapping
from kiln.auth import Principal
from kiln.db import UTCDateTime


class DayMicros(NamedTuple):  # a tuple: tens of thousands of rows for all tenants of a large fleet
    """GPU-microseconds a tenant's whole-node leases held on one UTC day, through one VDC (None:
    none), on one GPU model (None: nodes without GPUs, which hold 0)."""

    day: date
    tenant_id: int
    vdc_id: int | None
    gpu_model: str | None
    gpu_micros: int


def days_between(start: datetime, stop: datetime) -> list[tuple[datetime, datetime]]:
    """[start, stop) cut at UTC midnights: the first piece starts at `start`, the last ends at `stop`."""
    pieces = []
    cursor = start
    while cursor < stop:
        midnight = datetime.combine(cursor.date() + timedelta(days=1), time(), tzinfo=UTC)
        pieces.append((cursor, min(midnight, stop)))
        cursor = pieces[-1][1]
    return pieces


def micros_between(session: Session, start: Any, stop: Any) -> Any:
    """SQL: whole microseconds from timestamp `start` to `stop` (columns or expressions), exactly.

    PostgreSQL's `extract(epoch …)` of an interval is numeric (exact to the microsecond); SQLite
    keeps timestamps as text `YYYY-MM-DD HH:MM:SS.ffffff`, so whole seconds come from
    `strftime('%s')` of the text's first 19 characters and the microseconds from the rest (its
    `julianday` is a float and `%f` stops at milliseconds)."""
    if session.get_bind().dialect.name == "postgresql":
        return cast(func.extract("epoch", stop - start) * 1_000_000, BigInteger)

    def micros(moment: Any) -> Any:
        # whole seconds from the text without its fraction: SQLite rounds a parsed time to the
        # millisecond, so 23:59:59.999999 would read as the next midnight
        seconds = cast(func.strftime("%s", func.substr(moment, 1, 19)), Integer)
        return seconds * 1_000_000 + cast(func.substr(moment, 21, 6), Integer)
    return micros(stop) - micros(start)


def daily_lease_micros(session: Session, principal: Principal, start: datetime, stop: datetime,
                       tenant_id: int | None = None) -> list[DayMicros]:
    """GPU-microseconds of the whole-node leases of the caller's tenants (or only `tenant_id`)
    within [start, stop) (open leases up to `stop`), per UTC day, tenant, VDC and GPU model; one
    row (possibly 0) for each such group some lease overlaps."""
    days = days_between(start, stop)
    if not days:
        return []
    # a UNION of one-row SELECTs, not VALUES: SQLite cannot name the columns of a VALUES list. Rows
    # name their day by its index: a timestamp per row was a third of the Python time (30,000 rows).
    window = union_all(*(select(literal(i, Integer).label("day"), literal(a, UTCDateTime).label("day_start"),
                                literal(b, UTCDateTime).label("day_end"))
                         for i, (a, b) in enumerate(days))).subquery("days")
    gpus = (select(Gpu.node_id, Gpu.model, func.count().label("gpus"))
            .group_by(Gpu.node_id, Gpu.model).subquery("node_gpus"))
    held_from = case((col(Lease.starts_at) > window.c.day_start, col(Lease.starts_at)), else_=window.c.day_start)
    ends = func.coalesce(col(Lease.ends_at), window.c.day_end)
    held_to = case((ends < window.c.day_end, ends), else_=window.c.day_end)
    micros = micros_between(session, held_from, held_to) * func.coalesce(gpus.c.gpus, 0)
    statement = (
        select(window.c.day, Lease.tenant_id, Lease.vdc_id, gpus.c.model, func.sum(micros))
        .select_from(Lease)
        .join(window, (col(Lease.starts_at) < window.c.day_end)
              & ((col(Lease.ends_at).is_(None)) | (col(Lease.ends_at) > window.c.day_start)))
        .join(gpus, gpus.c.node_id == Lease.node_id, isouter=True)
        .where(overlapping(start, stop))
        .group_by(window.c.day, Lease.tenant_id, Lease.vdc_id, gpus.c.model)
    )
    statement = principal.scope(statement, Lease.tenant_id)
    if tenant_id is not None:
        statement = statement.where(Lease.tenant_id == tenant_id)
    dates = [a.date() for a, _ in days]
    return [DayMicros(dates[day], tenant, vdc, model, int(total))
            for day, tenant, vdc, model, total in session.connection().execute(statement).all()]  # Core rows: 30,000 at 10,000 nodes

