"""Backfill the demo's past month through the collectors' store, so charts and bills have data.

Each step (an hour by default) produces the samples the collectors would have returned then,
from the demo's one physical model (`dashboards.demo.physics`): a node is powered on while
leased and off otherwise; DCMI watts are its base load plus its GPUs' board power at their
utilisation (standby when off), its BMC temperature sensors follow the same load, and its GPUs
report utilisation only while it is on. The samples are folded into 5-minute rollups and kWh
per node-hour with the same functions the worker uses (`collectors.store`). Nothing is written
around that path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import Engine, func
from sqlmodel import Session, select

from collectors.base import Sample
from collectors.models import Rollup5m
from collectors.store import (
    POWER_METRIC,
    TEMPERATURE_METRIC,
    add_rollups,
    integrate_energy,
    node_ids_of,
    write_snapshots,
)
from dashboards.demo.physics import (
    TEMPERATURE_SENSORS,
    DemoNode,
    gpu_utilisations,
    node_temperatures,
    node_watts,
)
from fleet.models import Node
from fleet.tenancy_models import Lease

log = logging.getLogger("kiln.demo")


def last_backfilled(engine: Engine) -> datetime | None:
    """The newest power rollup bucket (None on a fresh demo)."""
    with Session(engine) as session:
        return session.exec(select(func.max(Rollup5m.bucket)).where(Rollup5m.metric == POWER_METRIC)).one()


def backfill(engine: Engine, fleet: list[DemoNode], since: datetime, until: datetime, *,
             step: timedelta = timedelta(hours=1), progress: Callable[[int, int], None] | None = None) -> int:
    """Store simulated readings of `fleet` from `since` to `until` every `step`; returns the steps done."""
    with Session(engine) as session:
        nodes = {n.name: n for n in session.exec(select(Node).where(Node.name.in_([d.name for d in fleet])))}
        leases = session.exec(select(Lease)).all()
    held: dict[int, list[tuple[datetime, datetime | None]]] = {}
    for lease in leases:
        held.setdefault(lease.node_id, []).append((lease.starts_at, lease.ends_at))

    def busy(node: str, at: datetime) -> bool:
        return any(s <= at and (e is None or at < e) for s, e in held.get(nodes[node].id, ()))

    steps = int((until - since) / step)
    previous: dict[str, tuple[datetime, float]] = {}
    samples: list[Sample] = []
    unrolled: list[Sample] = []  # a day of steps' samples, stored in one call each (energy, rollups)
    with Session(engine) as session:
        node_ids = node_ids_of(session, [Sample("ipmi", n, POWER_METRIC, 0.0, "watts", {}, since) for n in nodes])
        for i in range(steps + 1):
            at = since + i * step
            busy_now = {name: busy(name, at) for name in nodes}
            samples = _readings(fleet, busy_now, at)
            unrolled += samples
            if i % 24 == 23 or i == steps:
                power = [s for s in unrolled if s.metric == POWER_METRIC]
                integrate_energy(session, power, node_ids, step + timedelta(minutes=1), previous)
                previous = {s.entity: (s.ts, s.value) for s in power}  # the day's last reading of each node
                add_rollups(session, unrolled)
                unrolled = []
                session.commit()
                if progress:
                    progress(i, steps)
        write_snapshots(session, samples, node_ids)
        session.commit()
    return steps


def _readings(fleet: list[DemoNode], busy: dict[str, bool], at: datetime) -> list[Sample]:
    out = []
    for node in fleet:
        on = busy[node.name]  # the demo's nodes run while leased and are off otherwise
        if on:
            for gpu, util in zip(node.gpus, gpu_utilisations(node, at, True), strict=True):
                out.append(Sample("dcgm", gpu.uuid, "gpu_util", util, "percent",
                                  {"host": gpu.host, "gpu": str(gpu.index), "modelName": gpu.model}, at))
        out.append(Sample("ipmi", node.name, POWER_METRIC, float(node_watts(node, at, on, on)), "watts", {}, at))
        for sensor, celsius in node_temperatures(node, at, on, on).items():
            out.append(Sample("ipmi", node.name, TEMPERATURE_METRIC, celsius, "celsius",
                              {"id": str(TEMPERATURE_SENSORS[sensor]), "name": sensor}, at))
    return out
