"""Energy per hour: watts integrated, or an energy counter's increase spread, split at hours.

Both node energy (DCMI watts, `node_energy_hour`) and GPU energy (the exporters' counters,
`gpu_energy_hour`) are kept per hour in kWh to 6 decimal places (1 mWh), each addition rounded
half-even. Between two readings further apart than `max_gap` the draw is unknown and nothing is
added; `covered_seconds` says how much of an hour the readings cover.

GPU energy is the same figure whichever way the readings arrived: `integrate_gpu_energy`
stores a directly scraped exporter's readings as they come, and `collectors.gpu_usage` computes
the same hours from Prometheus' raw samples with the same `counter_kwh_by_hour`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

from sqlmodel import Session, col, select

from collectors.base import Sample
from collectors.models import GpuEnergyHour, HealthSnapshot
from kiln.db import upsert

KWH = Decimal("0.000001")
GPU_ENERGY_METRIC = "gpu_energy"  # joules, the exporters' counters (collectors.dcgm, collectors.rocm)
NODE_ENERGY_COUNTER = "redfish_energy_kwh"  # kWh, a BMC's own counter (collectors.redfish)
JOULES_PER_KWH = 3_600_000
HourTotals = dict[tuple[int, datetime], list]  # (node id, hour) -> [kWh, seconds covered]


def energy_by_hour(t0: datetime, w0: float, t1: datetime, w1: float,
                   max_gap: timedelta) -> list[tuple[datetime, Decimal, int]]:
    """kWh per hour (and seconds covered) of a linear draw from w0 watts at t0 to w1 at t1;
    nothing when the readings are out of order or further apart than `max_gap`."""
    span = (t1 - t0).total_seconds()
    if span <= 0 or t1 - t0 > max_gap:
        return []
    out = []
    start = t0
    while start < t1:
        hour = start.replace(minute=0, second=0, microsecond=0)
        end = min(t1, hour + timedelta(hours=1))
        a, b = (start - t0).total_seconds(), (end - t0).total_seconds()
        watts_a, watts_b = w0 + (w1 - w0) * a / span, w0 + (w1 - w0) * b / span
        joules = (watts_a + watts_b) / 2 * (b - a)
        out.append((hour, (Decimal(repr(joules)) / Decimal(3_600_000)).quantize(KWH, ROUND_HALF_EVEN),
                    round(b - a)))
        start = end
    return out


def counter_kwh_by_hour(t0: datetime, j0: float, t1: datetime, j1: float,
                        max_gap: timedelta) -> list[tuple[datetime, Decimal, int]]:
    """kWh per hour of an energy counter that read `j0` joules at t0 and `j1` at t1, the
    increase spread evenly in between; nothing across a reset (the counter went down)."""
    span = (t1 - t0).total_seconds()
    if j1 < j0 or span <= 0 or not (math.isfinite(j0) and math.isfinite(j1)):
        return []
    watts = (j1 - j0) / span
    return energy_by_hour(t0, watts, t1, watts, max_gap)


def node_counter_energy(session: Session, counters: Sequence[Sample], node_ids: Mapping[str, int],
                        max_gap: timedelta) -> tuple[HourTotals, set[str]]:
    """kWh per node-hour from each node's BMC energy counter (`redfish_energy_kwh`): the increase
    since its previous reading (its snapshot with the same labels), and the nodes it covered.
    A node is not covered (its watts stand in) at its first reading, across a reset (the counter
    went down) and across a gap longer than `max_gap`."""
    totals: HourTotals = {}
    covered: set[str] = set()
    if not counters:
        return totals, covered
    previous = {(row.entity, tuple(sorted(row.labels.items()))): (row.observed_at, row.value) for row in session.exec(
        select(HealthSnapshot).where(HealthSnapshot.metric == NODE_ENERGY_COUNTER,
                                     col(HealthSnapshot.entity).in_({s.entity for s in counters})))
        if row.value is not None}
    for s in sorted(counters, key=lambda s: s.ts):
        node_id = node_ids.get(s.entity)
        key = (s.entity, tuple(sorted(s.labels.items())))
        before, previous[key] = previous.get(key), (s.ts, s.value)
        if node_id is None or before is None:
            continue
        hours = counter_kwh_by_hour(before[0], before[1] * JOULES_PER_KWH, s.ts, s.value * JOULES_PER_KWH, max_gap)
        if hours:
            covered.add(s.entity)
        for hour, kwh, seconds in hours:
            slot = totals.setdefault((node_id, hour), [Decimal(0), 0])
            slot[0] += kwh
            slot[1] += seconds
    return totals, covered


def integrate_gpu_energy(session: Session, energy: Sequence[Sample], node_ids: Mapping[str, int | None],
                         max_gap: timedelta) -> None:
    """Add each GPU's energy since its previous counter reading (its newest `gpu_energy`
    snapshot) to its hours; `node_ids`: the node of each GPU entity, where known."""
    if not energy:
        return
    entities = {s.entity for s in energy}
    previous: dict[str, tuple[datetime, float]] = {}
    for row in session.exec(select(HealthSnapshot).where(HealthSnapshot.metric == GPU_ENERGY_METRIC,
                                                         col(HealthSnapshot.entity).in_(entities))):
        if row.value is not None and (row.entity not in previous or previous[row.entity][0] < row.observed_at):
            previous[row.entity] = (row.observed_at, row.value)
    totals: dict[tuple[str, datetime], list] = {}
    for s in sorted(energy, key=lambda s: s.ts):
        before = previous.get(s.entity)
        previous[s.entity] = (s.ts, s.value)
        if before is None:
            continue
        for hour, kwh, seconds in counter_kwh_by_hour(before[0], before[1], s.ts, s.value, max_gap):
            slot = totals.setdefault((s.entity, hour), [Decimal(0), 0])
            slot[0] += kwh
            slot[1] += seconds
    rows = [{"entity": e, "node_id": node_ids.get(e), "hour": h, "kwh": kwh, "covered_seconds": secs}
            for (e, h), (kwh, secs) in totals.items()]
    upsert(session, GpuEnergyHour, rows, ("entity", "hour"),
           lambda current, new: {"kwh": current.kwh + new.kwh, "node_id": new.node_id,
                                 "covered_seconds": current.covered_seconds + new.covered_seconds})
