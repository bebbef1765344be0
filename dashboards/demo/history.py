"""Backfill the demo's past month through the collectors' store, so charts and bills have data.

Each step (an hour by default) produces the samples the collectors would have returned then —
DCMI watts from each node's simulated BMC (its reading while leased, standby while idle), the
node's hottest temperature, and every GPU's utilisation from the simulated dcgm-exporter's own
formula — and folds them into 5-minute rollups and kWh per node-hour with the same functions
the worker uses (`collectors.store`). Nothing is written around that path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import Engine, func
from sqlmodel import Session, select

from collectors.base import Sample
from collectors.models import Rollup5m
from collectors.sim.dcgm_exporter import SimGpu, utilisation
from collectors.store import (
    POWER_METRIC,
    add_rollups,
    integrate_energy,
    node_ids_of,
    write_snapshots,
)
from fleet.models import Gpu, Node
from fleet.tenancy_models import Lease

log = logging.getLogger("kiln.demo")
STANDBY_WATTS = 40.0  # what the simulated BMC reads with the chassis off


def last_backfilled(engine: Engine) -> datetime | None:
    """The newest power rollup bucket (None on a fresh demo)."""
    with Session(engine) as session:
        return session.exec(select(func.max(Rollup5m.bucket)).where(Rollup5m.metric == POWER_METRIC)).one()


def backfill(engine: Engine, bmcs: dict[str, dict], since: datetime, until: datetime, *,
             step: timedelta = timedelta(hours=1), progress: Callable[[int, int], None] | None = None) -> int:
    """Store simulated readings from `since` to `until` every `step`; returns the steps done."""
    with Session(engine) as session:
        nodes = {n.name: n for n in session.exec(select(Node).where(Node.name.in_(list(bmcs))))}
        gpus = [SimGpu(node.name, g.index, g.uuid, g.model) for node in nodes.values()
                for g in session.exec(select(Gpu).where(Gpu.node_id == node.id).order_by(Gpu.index)) if g.uuid]
        leases = session.exec(select(Lease)).all()
    held: dict[int, list[tuple[datetime, datetime | None]]] = {}
    for lease in leases:
        held.setdefault(lease.node_id, []).append((lease.starts_at, lease.ends_at))

    def busy(node: str, at: datetime) -> bool:
        return any(s <= at and (e is None or at < e) for s, e in held.get(nodes[node].id, ()))

    steps = int((until - since) / step)
    previous: dict[str, tuple[datetime, float]] = {}
    samples: list[Sample] = []
    with Session(engine) as session:
        node_ids = node_ids_of(session, [Sample("ipmi", n, POWER_METRIC, 0.0, "watts", {}, since) for n in nodes])
        for i in range(steps + 1):
            at = since + i * step
            busy_now = {name: busy(name, at) for name in nodes}
            samples = _readings(bmcs, gpus, busy_now, at)
            power = [s for s in samples if s.metric == POWER_METRIC]
            integrate_energy(session, power, node_ids, step + timedelta(minutes=1), previous)
            previous = {s.entity: (s.ts, s.value) for s in power}
            add_rollups(session, samples)
            if i % 24 == 0:
                session.commit()
                if progress:
                    progress(i, steps)
        write_snapshots(session, samples, node_ids)
        session.commit()
    return steps


def _readings(bmcs: dict[str, dict], gpus: list[SimGpu], busy: dict[str, bool], at: datetime) -> list[Sample]:
    out = []
    util_by_node: dict[str, list[float]] = {}
    for gpu in gpus:
        util = utilisation(gpu, at, busy[gpu.host])
        util_by_node.setdefault(gpu.host, []).append(util)
        out.append(Sample("dcgm", gpu.uuid, "gpu_util", util, "percent",
                          {"host": gpu.host, "gpu": str(gpu.index), "modelName": gpu.model}, at))
    for name, bmc in bmcs.items():
        watts = float(bmc["expected"]["dcmi"]["current_watts"]) if busy[name] else STANDBY_WATTS
        out.append(Sample("ipmi", name, POWER_METRIC, watts, "watts", {}, at))
        mean = sum(util_by_node.get(name, [0.0])) / max(1, len(util_by_node.get(name, [])))
        out.append(Sample("ipmi", name, "ipmi_temperature_celsius", float(round(30 + 0.5 * mean)), "celsius",
                          {"id": "4", "name": "GPU1 Temp"}, at))
    return out
