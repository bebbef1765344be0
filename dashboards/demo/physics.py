"""One physical model of the demo fleet, shared by the backfilled history and the live simulators.

A node's DCMI watts are its base load (CPUs, memory, NICs, fans) plus its GPUs' board power at
their utilisation (`collectors.sim.dcgm_exporter`, which also serves them), rounded to the
BMC's 40 W resolution; its temperature sensors follow the same load. A powered-off node reads
standby watts and near-inlet temperatures, and its GPUs serve nothing. `LiveFleet` applies the
model to the running simulators every few seconds: it reads each BMC's chassis power (changed
by Kiln's power actions through the fake driver) and pushes watts and temperatures to the BMCs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import Session, select

from collectors.sim.bmc import model as bmc_model
from collectors.sim.bmc import sim as bmc_sim
from collectors.sim.dcgm_exporter import SimGpu, power_watts, utilisation
from fleet.models import Gpu, Node
from fleet.tenancy_models import Lease
from fleet.usage import in_force

BASE_WATTS = {"gpu.h100": 1200.0, "gpu.a100": 900.0}  # everything but the GPUs, by resource class
DEFAULT_BASE_WATTS = 1000.0
INLET_C = 22.0
# the BMC's temperature sensors (collectors/sim/bmc/model.py SENSORS) and their SDR record ids
TEMPERATURE_SENSORS = {"CPU1 Temp": 1, "CPU2 Temp": 2, "Inlet Temp": 3, "GPU1 Temp": 4, "GPU2 Temp": 5}


@dataclass(frozen=True)
class DemoNode:
    """What the model needs of one node."""

    name: str
    resource_class: str | None
    gpus: tuple[SimGpu, ...]
    critical: bool = False  # the BMC's GPU2 sensor runs hot (a health issue the demo shows)


def gpu_utilisations(node: DemoNode, at: datetime, busy: bool) -> list[float]:
    """Each GPU's utilisation (%) at `at`."""
    return [utilisation(gpu, at, busy) for gpu in node.gpus]


def node_watts(node: DemoNode, at: datetime, powered: bool, busy: bool) -> int:
    """DCMI watts: standby when off, else base load + the GPUs' board power, in the BMC's steps."""
    if not powered:
        return bmc_model.STANDBY_WATTS
    total = BASE_WATTS.get(node.resource_class or "", DEFAULT_BASE_WATTS) + sum(
        power_watts(gpu, util) for gpu, util in zip(node.gpus, gpu_utilisations(node, at, busy), strict=True))
    step = bmc_model.WATTS_STEP
    return int(round(total / step) * step)


def node_temperatures(node: DemoNode, at: datetime, powered: bool, busy: bool) -> dict[str, float]:
    """The BMC's temperature sensors (whole °C): near inlet when off, following load when on."""
    if not powered:
        return {"CPU1 Temp": INLET_C + 3, "CPU2 Temp": INLET_C + 3, "Inlet Temp": INLET_C,
                "GPU1 Temp": INLET_C + 2, "GPU2 Temp": INLET_C + 2}
    utils = gpu_utilisations(node, at, busy) or [0.0]
    half = max(1, len(utils) // 2)
    mean = sum(utils) / len(utils)
    gpu1, gpu2 = (float(round(31 + 0.45 * max(part))) for part in (utils[:half], utils[half:] or utils))
    if node.critical:
        gpu2 = float(bmc_model.CRITICAL_VALUE)
    return {"CPU1 Temp": float(round(38 + 0.3 * mean)), "CPU2 Temp": float(round(37 + 0.3 * mean)),
            "Inlet Temp": INLET_C + 2, "GPU1 Temp": gpu1, "GPU2 Temp": gpu2}


def demo_nodes(engine: Engine, bmcs: dict[str, dict]) -> list[DemoNode]:
    """The demo's nodes with their GPUs; `bmcs` (bmcs.json entries by name) says which run hot."""
    with Session(engine) as session:
        nodes = session.exec(select(Node).where(Node.name.in_(list(bmcs))).order_by(Node.name)).all()
        gpus: dict[int, list[SimGpu]] = {}
        for gpu, name in session.exec(select(Gpu, Node.name).join(Node, Node.id == Gpu.node_id).order_by(Gpu.index)):
            if gpu.uuid:
                gpus.setdefault(gpu.node_id, []).append(SimGpu(name, gpu.index, gpu.uuid, gpu.model))
        return [DemoNode(n.name, n.resource_class, tuple(gpus.get(n.id, ())),
                         bool(bmcs[n.name].get("expected", {}).get("critical_sensors"))) for n in nodes]


class LiveFleet:
    """The running demo's simulators kept consistent: BMC watts and temperatures from the GPUs."""

    def __init__(self, engine: Engine, bmc_state: Path, nodes: Iterable[DemoNode],
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self.engine, self.bmc_state, self.clock = engine, bmc_state, clock
        self.nodes = {n.name: n for n in nodes}
        self._powered: dict[str, bool] = {}
        self._leased: set[str] = set()
        self._leased_at = 0.0
        self._lock = threading.Lock()

    def powered(self, name: str) -> bool:
        """Is the node's chassis on (as its BMC said at the last tick)?"""
        with self._lock:
            return self._powered.get(name, False)

    def busy(self, name: str) -> bool:
        """Is the node leased now (and so running its tenant's work)?"""
        with self._lock:
            if time.monotonic() - self._leased_at > 10:
                with Session(self.engine) as session:
                    self._leased = set(session.exec(select(Node.name).join(Lease, Lease.node_id == Node.id)
                                                    .where(in_force(self.clock()))).all())
                self._leased_at = time.monotonic()
            return name in self._leased

    def tick(self) -> None:
        """Read every BMC's chassis power; push the watts and temperatures that go with it."""
        powered = {state["name"]: state["power_state"] == "on" for state in bmc_sim.states(self.bmc_state)}
        with self._lock:
            self._powered = powered
        at = self.clock()
        readings = {}
        for name, node in self.nodes.items():
            on, busy = powered.get(name, False), self.busy(name)
            readings[name] = {"watts": node_watts(node, at, on, busy),
                              "sensors": node_temperatures(node, at, on, busy)}
        bmc_sim.set_readings(self.bmc_state, readings)
