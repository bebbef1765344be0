"""Persist what collectors return: target states, health snapshots, 5-minute rollups, energy.

The scheduler calls `persist_results` once per collector cycle, inside one transaction.
Collectors themselves never touch the database (collectors/base.py).

- Target state: `up`, last attempt/success/error per (collector, target). A change of `up`
  is returned as a `Transition` so the worker logs failing/recovered once, not every cycle.
- Node events, once per transition (collectors.health_events): a sensor's threshold state
  changing, a BMC that answered before stopping (and answering again), a GPU's new XID error.
- Health snapshot: the newest value per (entity, metric, labels); NaN is stored as NULL.
  `*_state` samples of IPMI sensors also set `state` on their value's row.
- Rollups: a few chart series per 5-minute bucket (count/sum/min/max); collectors.fleet_power.
- Energy: a node's BMC energy counter (Redfish `EnergykWh`, `redfish_energy_kwh`) where it has
  one: the increase between consecutive polls, spread evenly, split at hour boundaries into
  `node_energy_hour` with `method` "counter". Otherwise (no counter, its first reading, a reset,
  a gap) its watts of consecutive polls are integrated as trapezoids, `method` "watts"; an
  hour made both ways says "mixed". kWh to 6 decimal places (1 mWh), each addition rounded
  half-even. Gaps longer than `max_gap` are not counted (unknown draw): `covered_seconds` says
  how much of the hour the readings cover. Each collector's figure is kept apart
  (`node_energy_source_hour`); `node_energy_hour` holds one per node-hour, so a node whose BMC
  both the IPMI and the Redfish collector read is counted once (`choose_energy_source`).
- A node's second BMC address (`bmc="redfish"` series) keeps its own snapshots and watts chain, out of the rollups.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import NamedTuple

from sqlalchemy import case
from sqlmodel import Session, col, select

from collectors.base import Sample, TargetResult, is_second_bmc
from collectors.energy import (
    GPU_ENERGY_METRIC,
    NODE_ENERGY_COUNTER,
    energy_by_hour,
    integrate_gpu_energy,
    node_counter_energy,
)
from collectors.fleet_power import POWER_METRIC, bucket_start, rollups_written
from collectors.health_events import bmc_events, sensor_events, xid_events
from collectors.models import (
    CollectorTargetState,
    HealthSnapshot,
    NodeEnergyHour,
    NodeEnergySourceHour,
    Rollup5m,
)
from collectors.redfish_firmware import FIRMWARE_METRIC
from collectors.utilisation_days import GPU_UTIL_ROLLUP, utilisation_written
from fleet.models import Gpu, Node
from kiln.db import greatest, least, upsert
from kiln.validation import is_ip_address

TEMPERATURE_METRIC = "ipmi_temperature_celsius"
# The rollup series the console and metering read (rollup_5m.metric); GPU_UTIL_ROLLUP is
# collectors.utilisation_days'.
# GPU utilisation again per Kubernetes namespace holding the GPU (entity: `namespace_entity`)
NAMESPACE_GPU_UTIL_ROLLUP = "gpu_util_namespace_percent"
TEMPERATURE_MAX_ROLLUP = "ipmi_temperature_celsius_max"
# sample metric -> rollup metric; `max` series keep the node's hottest sensor per poll
GPU_MEMORY_ROLLUP, GPU_POWER_ROLLUP = "gpu_memory_used_bytes", "gpu_power_watts"
GPU_TEMPERATURE_ROLLUP = "gpu_temperature_celsius"
ROLLUPS = {POWER_METRIC: POWER_METRIC, "gpu_util": GPU_UTIL_ROLLUP, "gpu_memory_used": GPU_MEMORY_ROLLUP,
           "gpu_power": GPU_POWER_ROLLUP, "gpu_temperature": GPU_TEMPERATURE_ROLLUP}
MAX_ROLLUPS = {TEMPERATURE_METRIC: TEMPERATURE_MAX_ROLLUP}
NODE_INFO_METRIC = "kube_node_info"  # its internal_ip places exporters known only by address
FACT_METRICS = {"ipmi_bmc_info": "bmc", "ipmi_fru_info": "fru"}
ERROR_LIMIT = 2000
SNAPSHOT_BATCH = 5000  # snapshot rows a statement writes (whole entities)
GPU_SOURCES = frozenset({"dcgm", "rocm", "dcgm-exporter"})
# samples that are records, not health: stored by their own source's persistence (cluster_store)
NOT_HEALTH = ("kiln_k8s_pod_allocation", "opencost_allocation_", "redfish_log_entry", "redfish_gpu_info")


@dataclass(frozen=True)
class Transition:
    """A target that started failing (`up` False) or recovered (`up` True)."""

    collector: str
    target: str
    up: bool
    error: str | None


def labels_key(labels: Mapping[str, str]) -> str:
    """A stable key for a label set: sorted `k=v` pairs joined by commas."""
    return ",".join(f"{k}={labels[k]}" for k in sorted(labels))[:512]


def persist_results(session: Session, collector: str, results: Sequence[TargetResult], *,
                    now: datetime | None = None, max_gap: timedelta = timedelta(minutes=10)) -> list[Transition]:
    """Store one cycle of `collector`: target states, snapshots, rollups, energy and facts."""
    now = now or datetime.now(UTC)
    transitions = record_target_states(session, collector, results, now)
    samples = [s for r in results for s in r.samples if not s.metric.startswith(NOT_HEALTH)]
    if samples:
        node_ids = node_ids_of(session, samples)
        integrate_energy(session, [s for s in samples if s.metric == POWER_METRIC], node_ids, max_gap,
                         counters=[s for s in samples if s.metric == NODE_ENERGY_COUNTER], source=collector)
        gpu_energy = [s for s in samples if s.metric == GPU_ENERGY_METRIC and s.source in GPU_SOURCES]
        integrate_gpu_energy(session, gpu_energy, {s.entity: _node_of(s, node_ids) for s in gpu_energy}, max_gap)
        xids = [s for s in samples if s.source in GPU_SOURCES]
        xid_events(session, xids, {s.entity: _node_of(s, node_ids) for s in xids})
        write_snapshots(session, [s for s in samples if s.metric != FIRMWARE_METRIC], node_ids)
        add_rollups(session, samples)
        update_facts(session, samples, node_ids)
    return transitions


def record_target_states(session: Session, collector: str, results: Sequence[TargetResult],
                         now: datetime) -> list[Transition]:
    """Update each target's up/last success/last error; return the targets whose `up` changed."""
    if not results:
        return []
    names = [r.target for r in results]
    columns = (CollectorTargetState.target, CollectorTargetState.up, CollectorTargetState.last_attempt_at,
               CollectorTargetState.last_success_at, CollectorTargetState.consecutive_failures)
    before = {row.target: row for row in session.exec(select(*columns).where(
        CollectorTargetState.collector == collector, col(CollectorTargetState.target).in_(names)))}
    transitions, changes, rows = [], [], {}
    for result in results:
        if not result.polled:  # nothing learnt about it this cycle: no state change, no event
            continue
        row = before.get(result.target)
        was_up = row.up if row is not None and row.last_attempt_at is not None else True  # a new target that fails is news
        failures = row.consecutive_failures if row is not None else 0
        success = row.last_success_at if row is not None else None
        if was_up != result.ok and success is not None:  # news on the node only once it had answered
            changes.append((result.target, result.ok, failures))
        rows[result.target] = {
            "collector": collector, "target": result.target, "up": result.ok, "last_attempt_at": now,
            "last_error": (result.error or None) and result.error[:ERROR_LIMIT], "skipped": dict(result.skipped),
            "last_success_at": now if result.ok else success, "consecutive_failures": 0 if result.ok else failures + 1}
        if was_up != result.ok:
            transitions.append(Transition(collector, result.target, result.ok, result.error))
    upsert(session, CollectorTargetState, list(rows.values()), ("collector", "target"),
           ("up", "last_attempt_at", "last_error", "skipped", "last_success_at", "consecutive_failures"))
    bmc_events(session, collector, changes, now)
    session.flush()
    return transitions


def write_snapshots(session: Session, samples: Iterable[Sample], node_ids: Mapping[str, int]) -> None:
    """Upsert the newest value of every series; sensor `*_state` samples fill `state`. Whole entities
    in batches of ~SNAPSHOT_BATCH rows (~1 KB each to write): memory does not grow with the fleet."""
    by_entity: dict[str, list[Sample]] = {}
    for s in samples:
        by_entity.setdefault(s.entity, []).append(s)
    batch: list[Sample] = []
    for i, entity_samples in enumerate(by_entity.values(), 1):
        batch += entity_samples
        if len(batch) >= SNAPSHOT_BATCH or i == len(by_entity):
            _write_snapshot_batch(session, batch, node_ids)
            batch = []


def _write_snapshot_batch(session: Session, samples: Iterable[Sample], node_ids: Mapping[str, int]) -> None:
    rows: dict[tuple[str, str, str], dict] = {}
    states: dict[tuple[str, str, str], int | None] = {}
    for s in samples:
        key = labels_key(s.labels)
        value = s.value if math.isfinite(s.value) else None
        if s.metric.endswith("_state") and s.unit == "state" and s.labels.get("id"):
            states[(s.entity, s.metric.removesuffix("_state"), key)] = None if value is None else int(value)
        rows[(s.entity, s.metric, key)] = {
            "entity": s.entity, "node_id": _node_of(s, node_ids), "source": s.source, "metric": s.metric,
            "labels_key": key, "labels": dict(s.labels), "value": value, "unit": s.unit, "state": None,
            "observed_at": s.ts,
        }
    for (entity, base, key), state in states.items():
        for metric in _value_metrics(base):
            if (entity, metric, key) in rows:
                rows[(entity, metric, key)]["state"] = state
    sensor_events(session, rows)
    upsert(session, HealthSnapshot, list(rows.values()), ("entity", "metric", "labels_key"),
           ("node_id", "source", "labels", "value", "unit", "state", "observed_at"))


def _value_metrics(state_base: str) -> tuple[str, ...]:
    # ipmi_temperature_state -> ipmi_temperature_celsius, ipmi_fan_speed_state -> _rpm/_ratio, ...
    suffixes = ("_celsius", "_rpm", "_ratio", "_volts", "_amperes", "_watts", "_value")
    return tuple(state_base + suffix for suffix in suffixes)


def add_rollups(session: Session, samples: Iterable[Sample]) -> None:
    """Fold chart series into their 5-minute buckets."""
    points: dict[tuple[str, str, datetime], list[float]] = {}
    hottest: dict[tuple[str, str, datetime], float] = {}
    for s in samples:
        if not math.isfinite(s.value) or is_second_bmc(s):  # charts keep to the primary BMC's series
            continue
        bucket = bucket_start(s.ts)
        if s.metric in ROLLUPS:
            points.setdefault((s.entity, ROLLUPS[s.metric], bucket), []).append(s.value)
            if ROLLUPS[s.metric] == GPU_UTIL_ROLLUP and s.labels.get("namespace"):
                key = namespace_entity(s.labels["namespace"], s.entity, s.labels.get("GPU_I_PROFILE"))
                points.setdefault((key, NAMESPACE_GPU_UTIL_ROLLUP, bucket), []).append(s.value)
        elif s.metric in MAX_ROLLUPS:
            key = (s.entity, MAX_ROLLUPS[s.metric], bucket)
            hottest[key] = max(hottest.get(key, -math.inf), s.value)
    for key, value in hottest.items():
        points.setdefault(key, []).append(value)
    rows = [{"entity": e, "metric": m, "bucket": b, "count": len(v), "sum": sum(v), "min": min(v), "max": max(v)}
            for (e, m, b), v in points.items()]

    def fold(current, new):
        return {"count": current.count + new.count, "sum": current.sum + new.sum,
                "min": least(current.min, new.min), "max": greatest(current.max, new.max)}

    upsert(session, Rollup5m, rows, ("entity", "metric", "bucket"), fold)
    rollups_written(session, rows)
    utilisation_written(session, rows)


def namespace_entity(namespace: str, gpu: str, mig_profile: str | None = None) -> str:
    """The entity of a namespace's utilisation series on one GPU or MIG instance:
    `namespace|gpu[|profile]` ('|' is in neither a Kubernetes name nor a GPU id)."""
    return "|".join((namespace, gpu, *([mig_profile] if mig_profile else [])))


def split_namespace_entity(entity: str) -> tuple[str, str, str | None]:
    """`namespace_entity`'s parts: namespace, GPU (UUID or UUID/instance), MIG profile or None."""
    namespace, gpu, *profile = entity.split("|", 2)
    return namespace, gpu, profile[0] if profile else None


def integrate_energy(session: Session, power: Sequence[Sample], node_ids: Mapping[str, int],
                     max_gap: timedelta, previous: Mapping[str, tuple[datetime, float]] | None = None,
                     counters: Sequence[Sample] = (), source: str = "ipmi") -> None:
    """Add each node's energy since its previous poll by collector `source` to its hours: its
    energy counter's increase where `counters` cover it (collectors.energy.node_counter_energy),
    else the watts between its previous reading of the same series (from its snapshot, or
    `previous`: node → (time, watts)) and this one; then `node_energy_hour` holds one collector's
    figure per node-hour (`choose_energy_source`). Several readings of one series, in time order,
    each count from the one before (a backfill's day of hourly readings in one call)."""
    by_counter, counted = node_counter_energy(session, counters, node_ids, max_gap)
    power = [s for s in power if s.entity not in counted]
    rows = [{"node_id": n, "hour": h, "kwh": kwh, "covered_seconds": secs, "method": "counter"}
            for (n, h), (kwh, secs) in by_counter.items()]
    if previous is None:
        known = {(row.entity, row.labels_key): (row.observed_at, row.value) for row in session.exec(
            select(HealthSnapshot.entity, HealthSnapshot.labels_key, HealthSnapshot.observed_at,
                   HealthSnapshot.value).where(HealthSnapshot.metric == POWER_METRIC,
                                         col(HealthSnapshot.entity).in_([s.entity for s in power])))
            if row.value is not None} if power else {}
    else:
        known = {(entity, ""): reading for entity, reading in previous.items()}
    totals: dict[tuple[int, datetime], list] = {}
    for s in power:  # each series after its own previous reading: a second BMC's (bmc=redfish) apart
        series = (s.entity, labels_key(s.labels))
        node_id, before = node_ids.get(s.entity), known.get(series)
        if math.isfinite(s.value):
            known[series] = (s.ts, s.value)
        if node_id is None or before is None or not math.isfinite(s.value):
            continue
        for hour, kwh, seconds in energy_by_hour(before[0], before[1], s.ts, s.value, max_gap):
            slot = totals.setdefault((node_id, hour), [Decimal(0), 0])
            slot[0] += kwh
            slot[1] += seconds
    rows += [{"node_id": n, "hour": h, "kwh": kwh, "covered_seconds": secs, "method": "watts"}
             for (n, h), (kwh, secs) in totals.items()]
    _add_energy_hours(session, [{**row, "source": source} for row in rows], max_gap)


def _add_energy_hours(session: Session, rows: list[dict], max_gap: timedelta) -> None:
    """Add rows to their collector's node-hours (an hour made by counter and by watts says
    "mixed"), then set each touched node-hour to the figure `choose_energy_source` picks."""
    if not rows:
        return
    upsert(session, NodeEnergySourceHour, rows, ("node_id", "hour", "source"),
           lambda current, new: {"kwh": current.kwh + new.kwh,
                                 "covered_seconds": current.covered_seconds + new.covered_seconds,
                                 "method": case((current.method == new.method, current.method), else_="mixed")})
    touched = {(row["node_id"], row["hour"]) for row in rows}
    # Hold the node-hours first (in one order): the other collector's cycle, if it is storing the
    # same hours now, waits here until it commits, and the read below sees its figure.
    upsert(session, NodeEnergyHour, [{"node_id": node, "hour": hour, "kwh": Decimal(0), "covered_seconds": 0}
                                     for node, hour in sorted(touched)],
           ("node_id", "hour"), lambda current, new: {"kwh": current.kwh})
    figures: dict[tuple[int, datetime], list[EnergyFigure]] = {}
    columns = (NodeEnergySourceHour.node_id, NodeEnergySourceHour.hour, NodeEnergySourceHour.source,
               NodeEnergySourceHour.kwh, NodeEnergySourceHour.covered_seconds, NodeEnergySourceHour.method)
    hours = [hour for _, hour in touched]
    for figure in session.exec(select(*columns).where(
            col(NodeEnergySourceHour.node_id).in_({node for node, _ in touched}),
            col(NodeEnergySourceHour.hour) >= min(hours), col(NodeEnergySourceHour.hour) <= max(hours))):
        if (figure.node_id, figure.hour) in touched:
            figures.setdefault((figure.node_id, figure.hour), []).append(EnergyFigure(*figure[2:]))
    chosen = [{"node_id": node, "hour": hour, **choose_energy_source(found, max_gap)._asdict()}
              for (node, hour), found in figures.items()]
    upsert(session, NodeEnergyHour, chosen, ("node_id", "hour"), ("kwh", "covered_seconds", "method", "source"))


class EnergyFigure(NamedTuple):
    """One collector's energy of one node-hour."""

    source: str
    kwh: Decimal
    covered_seconds: int
    method: str


def choose_energy_source(figures: Sequence[EnergyFigure], max_gap: timedelta) -> EnergyFigure:
    """The one figure of a node-hour that counts when two collectors read the node's BMC: the
    BMC's energy counter (a Redfish figure made by `counter`, or `mixed` with its own watts where
    the counter could not say), else DCMI watts (the IPMI collector's), else another's watts.
    A figure covering less of the hour than another by more than `max_gap` (its BMC answered
    only part of the hour) gives way to the ones covering more."""
    most = max(f.covered_seconds for f in figures)
    full = [f for f in figures if f.covered_seconds >= most - max_gap.total_seconds()]
    return min(full, key=lambda f: (f.method == "watts", f.source != "ipmi", f.source))


def update_facts(session: Session, samples: Iterable[Sample], node_ids: Mapping[str, int]) -> None:
    """BMC device id and FRU into the node's hardware facts (`facts["bmc"]`, `facts["fru"]`), and a
    Redfish poll's firmware inventory into `facts["firmware"]` (see `firmware_facts`), replaced whole."""
    found: dict[int, dict[str, dict]] = {}
    firmware: dict[int, list[Sample]] = {}
    for s in samples:
        if s.metric in FACT_METRICS and s.entity in node_ids:
            found.setdefault(node_ids[s.entity], {})[FACT_METRICS[s.metric]] = dict(s.labels)
        elif s.metric == FIRMWARE_METRIC and s.entity in node_ids:
            firmware.setdefault(node_ids[s.entity], []).append(s)
    for node_id, polled in firmware.items():
        found.setdefault(node_id, {})["firmware"] = firmware_facts(polled)
    if not found:
        return
    for node in session.exec(select(Node).where(Node.id.in_(list(found)))):
        facts = dict(node.facts)
        if any(facts.get(k) != v for k, v in found[node.id].items()):
            facts.update(found[node.id])
            node.facts = facts
            session.add(node)


def firmware_facts(samples: Sequence[Sample]) -> dict:
    """`{"read_at": ISO time, "components": {Redfish Id: {component, version, name, ...}}}` from one
    poll's `redfish_firmware_info` samples of a node (collectors/redfish_firmware.py)."""
    components = {s.labels["id"]: {k: v for k, v in s.labels.items() if k != "id"} for s in samples}
    read_at = max(s.ts for s in samples).astimezone(UTC).isoformat().replace("+00:00", "Z")
    return {"read_at": read_at, "components": dict(sorted(components.items()))}


def _host_of(sample: Sample) -> str:
    return sample.labels.get("host", sample.entity) if sample.source in GPU_SOURCES else sample.entity


def _gpu_of(sample: Sample) -> str:
    return sample.labels.get("parent_gpu", sample.entity)  # a MIG instance's node is its GPU's


def _target_host(sample: Sample) -> str | None:
    """The host of the scrape target (`instance` label, `host:port` or `[v6]:port`)."""
    instance = sample.labels.get("instance") if sample.source in GPU_SOURCES else None
    if not instance:
        return None
    host = instance.rsplit(":", 1)[0] if instance.count(":") == 1 or instance.startswith("[") else instance
    return host.strip("[]")


def _node_of(sample: Sample, node_ids: Mapping[str, int]) -> int | None:
    """The node a sample is about: the host label naming a node, else the GPU Kiln knows by its
    UUID, else the scrape target's host naming a node (an exporter whose host label holds a
    container id or a pod name)."""
    return (node_ids.get(_host_of(sample)) or node_ids.get(_gpu_of(sample))
            or node_ids.get(_target_host(sample) or ""))


def node_ids_of(session: Session, samples: Sequence[Sample]) -> dict[str, int]:
    """Node id by node name, by GPU UUID for GPUs Kiln knows (they need no host label), and by
    the InternalIP Kubernetes reports for a node (`kube_node_info`) for scrape targets' IPs."""
    targets = {host for s in samples if (host := _target_host(s))}
    names = {_host_of(s) for s in samples} | targets
    ids: dict[str, int] = dict(session.exec(select(Node.name, Node.id).where(Node.name.in_(names))).all())
    uuids = {_gpu_of(s) for s in samples if s.source in GPU_SOURCES}
    if uuids:
        ids.update(session.exec(select(Gpu.uuid, Gpu.node_id).where(Gpu.uuid.in_(uuids))).all())
    addresses = {host for host in targets - set(ids) if is_ip_address(host)}
    if addresses:
        for labels, node_id in session.exec(select(HealthSnapshot.labels, HealthSnapshot.node_id).where(
                HealthSnapshot.metric == NODE_INFO_METRIC, col(HealthSnapshot.node_id).is_not(None))):
            if labels.get("internal_ip") in addresses:
                ids.setdefault(labels["internal_ip"], node_id)
    return ids
