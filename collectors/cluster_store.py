"""Persist the Kubernetes and OpenCost collectors' results, and GPU-hours per tenant from them.

- `persist_kubernetes`: `kiln_k8s_pod_allocation` samples → `k8s_allocation` rows, one per
  (pod_uid, resource). A complete result (it carries `kiln_k8s_pods_tracked`) also closes the
  open rows of pods it no longer has (deleted while no worker watched) at the result's time.
- `persist_opencost`: `opencost_allocation_*` samples → `opencost_allocation` rows, one per
  (namespace, window_start, window_end).

Both upsert: persisting the same results again changes nothing (they return how many rows
they inserted or changed), on SQLite and PostgreSQL. Failed results are skipped. They flush
but do not commit: the caller owns the transaction.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, TypeVar

from sqlalchemy import bindparam, or_, tuple_
from sqlalchemy import select as core_select
from sqlmodel import Session, col, select

from collectors.base import Sample, TargetResult
from collectors.kube_pods import ALLOCATION_METRIC, GPU_RESOURCES, IntervalLabels, PodInterval, parse_time
from collectors.kubernetes import TRACKED_METRIC
from collectors.models import K8sAllocation, OpenCostAllocation
from collectors.opencost import FIELDS, OpenCostRecord, records_from_samples
from kiln.db import utcnow

SCALE = Decimal("0.000001")  # the tables' Numeric(…, 6)
HOUR = timedelta(hours=1)
CHUNK = 500  # rows per IN (...) lookup
T = TypeVar("T")


def _exact(value: Decimal) -> Decimal:
    """A value as the table stores it: 6 decimal places, half-even."""
    return value.quantize(SCALE, rounding=ROUND_HALF_EVEN)


def _chunks(items: Sequence[T]) -> Iterator[Sequence[T]]:
    for index in range(0, len(items), CHUNK):
        yield items[index:index + CHUNK]


def _assign(row: Any, values: dict[str, Any]) -> bool:
    """Set the fields of `row` that differ from `values`; True if any did."""
    changed = False
    for key, value in values.items():
        if getattr(row, key) != value:
            setattr(row, key, value)
            changed = True
    return changed


def interval_from_sample(sample: Sample) -> PodInterval:
    """The interval a `kiln_k8s_pod_allocation` sample carries (inverse of `interval_sample`)."""
    labels = sample.labels
    if isinstance(labels, IntervalLabels):
        return labels.interval
    start = parse_time(labels["starts_at"])
    if start is None:
        raise ValueError(f"allocation sample of pod {labels.get('pod')} has no starts_at")
    return PodInterval(labels["namespace"], labels["pod"], labels["pod_uid"], labels["node"] or None,
                       labels["resource"], Decimal(labels["quantity"]),
                       Decimal(labels["limit"]) if labels["limit"] else None, start,
                       parse_time(labels["ends_at"]), labels["tenant"] or None)


def _allocation_values(interval: PodInterval) -> tuple[Any, ...]:
    """The COMPARED columns' values of an interval's row."""
    return (interval.namespace, interval.tenant, interval.pod, interval.node, _exact(interval.quantity),
            interval.starts_at, interval.ends_at)


ALLOCATIONS = K8sAllocation.__table__
COMPARED = ("namespace", "tenant_slug", "pod", "node_name", "quantity", "starts_at", "ends_at")
_STORED = core_select(ALLOCATIONS.c.id, ALLOCATIONS.c.pod_uid, ALLOCATIONS.c.resource,
                      *(ALLOCATIONS.c[name] for name in COMPARED))
_UPDATE_BY_ID = ALLOCATIONS.update().where(ALLOCATIONS.c.id == bindparam("row_id"))
STREAM_ROWS = 5000  # open rows fetched at a time (a server-side cursor on PostgreSQL)


def persist_kubernetes(session: Session, results: Iterable[TargetResult]) -> int:
    """Upsert the allocation intervals of the Kubernetes collector's results; rows changed.

    Built for 100,000 pods (~250,000 intervals in a complete result, nearly all unchanged): Core
    statements and plain tuples, not ORM objects; for a complete result one streamed pass over
    the open rows compares the running pods' intervals (and finds the vanished ones), then the
    rest (new pods, ended intervals, or every interval of a partial result) are looked up 500
    keys at a time; only new and changed rows are written.
    """
    changed, connection = 0, session.connection()
    for result in results:
        if not result.ok:
            continue
        intervals = {(i.pod_uid, i.resource): i for i in
                     (interval_from_sample(s) for s in result.samples if s.metric == ALLOCATION_METRIC)}
        tracked = [s for s in result.samples if s.metric == TRACKED_METRIC]
        live_uids = {uid for uid, _ in intervals} if tracked else None
        writes: list[dict[str, Any]] = []
        # a partial result (only the pods that changed) is looked up key by key below
        for row in (connection.execute(_STORED.where(ALLOCATIONS.c.ends_at.is_(None)),
                                       execution_options={"yield_per": STREAM_ROWS}) if tracked else ()):
            interval = intervals.pop((row.pod_uid, row.resource), None)
            if interval is not None:
                _compare(row, interval, writes)
            elif row.pod_uid not in live_uids:  # a complete result lost its pod
                writes.append({"row_id": row.id, **dict(zip(COMPARED, row[3:], strict=True)),
                               "ends_at": max(tracked[0].ts, row.starts_at)})
        rest = list(intervals)  # new pods, and intervals whose rows have already ended
        for chunk in _chunks(rest):
            stored = {(row.pod_uid, row.resource): row for row in connection.execute(
                _STORED.where(tuple_(ALLOCATIONS.c.pod_uid, ALLOCATIONS.c.resource).in_(chunk)))}
            new = []
            for key in chunk:
                row = stored.get(key)
                if row is None:
                    new.append({"pod_uid": key[0], "resource": key[1],
                                **dict(zip(COMPARED, _allocation_values(intervals[key]), strict=True))})
                else:
                    _compare(row, intervals[key], writes)
            if new:
                connection.execute(ALLOCATIONS.insert(), new)
                changed += len(new)
        for chunk in _chunks(writes):
            connection.execute(_UPDATE_BY_ID, list(chunk))
        changed += len(writes)
    session.flush()
    return changed


def _compare(row: Any, interval: PodInterval, writes: list[dict[str, Any]]) -> None:
    """Queue the row's update when the interval differs from it."""
    values = _allocation_values(interval)
    if tuple(row[3:]) != values:
        writes.append({"row_id": row.id, **dict(zip(COMPARED, values, strict=True))})


def _opencost_values(record: OpenCostRecord) -> dict[str, Any]:
    values: dict[str, Any] = {"namespace": record.namespace, "window_start": record.window_start,
                              "window_end": record.window_end}
    for name, _ in FIELDS.values():
        value = getattr(record, name)
        values[name] = None if value is None else _exact(value)
    values["total_efficiency"] = None if record.total_efficiency is None else float(record.total_efficiency)
    return values


def persist_opencost(session: Session, results: Iterable[TargetResult]) -> int:
    """Upsert OpenCost's allocation records from the OpenCost collector's results; rows changed."""
    changed = 0
    for result in results:
        if not result.ok:
            continue
        records = {(r.namespace, r.window_start, r.window_end): r for r in records_from_samples(result.samples)}
        if not records:
            continue
        starts = {start for _, start, _ in records}
        existing = {(row.namespace, row.window_start, row.window_end): row for row in session.exec(
            select(OpenCostAllocation).where(col(OpenCostAllocation.window_start).in_(sorted(starts))))}
        for key, record in records.items():
            values = _opencost_values(record)
            row = existing.get(key)
            if row is None:
                session.add(OpenCostAllocation(**values))
                changed += 1
            elif _assign(row, values):
                session.add(row)
                changed += 1
    session.flush()
    return changed


def allocation_hours(rows: Iterable[K8sAllocation], start: datetime, end: datetime, *,
                     resources: Iterable[str] = GPU_RESOURCES, now: datetime | None = None) -> dict[str | None, Decimal]:
    """Requested resource-hours per tenant slug over [start, end), from `k8s_allocation` rows.

    Each interval is clipped to the window; an open one counts until `now` (default: the
    current time) or `end`, whichever is first. Exact: quantity × microseconds summed as
    Decimal, divided by the microseconds of an hour once. Unlabelled namespaces count under None.
    """
    wanted, until = set(resources), min(end, now or utcnow())
    totals: dict[str | None, Decimal] = defaultdict(Decimal)
    for row in rows:
        if row.resource not in wanted:
            continue
        low, high = max(row.starts_at, start), min(row.ends_at or until, end)
        if high > low:
            totals[row.tenant_slug] += row.quantity * ((high - low) // timedelta(microseconds=1))
    micro_per_hour = HOUR // timedelta(microseconds=1)
    return {tenant: total / micro_per_hour for tenant, total in totals.items()}


def gpu_hours_by_tenant(session: Session, start: datetime, end: datetime, *,
                        now: datetime | None = None) -> dict[str | None, Decimal]:
    """GPU-hours requested per tenant slug over [start, end) (NVIDIA and AMD GPUs), exact."""
    rows = session.exec(select(K8sAllocation).where(
        col(K8sAllocation.resource).in_(GPU_RESOURCES),
        col(K8sAllocation.starts_at) < end,
        or_(col(K8sAllocation.ends_at).is_(None), col(K8sAllocation.ends_at) > start)))
    return allocation_hours(rows, start, end, now=now)
