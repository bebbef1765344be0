"""A node's health now, from what the collectors stored: BMC reachability, power, sensors, GPUs.

Visible through the same tenant filter as the node itself (`fleet.nodes.get_node`): a tenant
sees the health of the nodes it leases, never of others. The BMC's own error text names
the BMC's address, so tenants get only whether it answers.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel
from sqlmodel import Session, col, select

from collectors.base import SECOND_BMC_LABEL
from collectors.models import CollectorTargetState, HealthSnapshot
from fleet.models import Gpu
from fleet.nodes import get_node
from kiln.auth import Principal

BMC_SOURCES = frozenset({"ipmi", "redfish"})  # their samples share ipmi_exporter's metric names
SENSOR_PREFIXES = ("ipmi_temperature", "ipmi_fan", "ipmi_voltage", "ipmi_current", "ipmi_power_", "ipmi_sensor_value")
STATE_NAMES = {0: "nominal", 1: "warning", 2: "critical"}


class SensorReading(BaseModel):
    """One sensor's latest reading and threshold state."""

    name: str
    metric: str
    value: float | None
    unit: str
    state: str | None
    observed_at: datetime
    source: str = "ipmi"  # the collector that read it: ipmi, or redfish (a node's Redfish address)


class GpuReading(BaseModel):
    """A GPU's latest values by Kiln metric (gpu_util percent, gpu_temperature celsius, ...)."""

    uuid: str
    index: int | None
    model: str | None
    values: dict[str, float | None]
    observed_at: datetime | None


class NodeHealth(BaseModel):
    """A node's health as last collected."""

    node: str
    bmc_up: bool | None = None  # None: never polled
    bmc_last_success_at: datetime | None = None
    bmc_error: str | None = None
    # the same of the Redfish collector's polls of a second, collection-only redfish_address
    redfish_up: bool | None = None
    redfish_last_success_at: datetime | None = None
    redfish_error: str | None = None
    power_on: bool | None = None
    power_watts: float | None = None
    worst_state: str | None = None
    sensors: list[SensorReading] = []
    gpus: list[GpuReading] = []


def bmc_status(session: Session, principal: Principal, node_name: str, collector: str = "ipmi"
               ) -> tuple[bool | None, datetime | None, str | None]:
    """(up, last success, error) of the BMC collector's (`collector`: the node's `bmc_driver`,
    ipmi or redfish) polls of the node's BMC; up is None
    when never polled. Infra admins read the error itself — the BMC down, or up with a part
    that failed (`dcmi: …`) — tenants only that the BMC does not answer."""
    target = session.exec(select(CollectorTargetState).where(CollectorTargetState.collector == collector,
                                                             CollectorTargetState.target == node_name)).first()
    if target is None or target.last_attempt_at is None:
        return None, None, None
    if principal.sees_all_tenants:
        return target.up, target.last_success_at, target.last_error
    return target.up, target.last_success_at, None if target.up else "the BMC does not answer"


def node_health(session: Session, principal: Principal, node_id: int) -> NodeHealth:
    """The node's health; NotFound when the caller may not see the node."""
    node = get_node(session, principal, node_id)
    health = NodeHealth(node=node.name)
    health.bmc_up, health.bmc_last_success_at, health.bmc_error = bmc_status(session, principal, node.name,
                                                                             node.bmc_driver)
    if node.redfish_address and node.bmc_driver != "redfish":
        health.redfish_up, health.redfish_last_success_at, health.redfish_error = bmc_status(
            session, principal, node.name, "redfish")
    gpus = {g.uuid: g for g in session.exec(select(Gpu).where(Gpu.node_id == node.id)) if g.uuid}
    snapshots = session.exec(select(HealthSnapshot).where(
        (HealthSnapshot.node_id == node.id) | col(HealthSnapshot.entity).in_(list(gpus) or [""]))
        .order_by(HealthSnapshot.metric, HealthSnapshot.labels_key)).all()
    by_gpu: dict[str, GpuReading] = {}
    for snap in snapshots:
        if snap.source in BMC_SOURCES:
            _add_ipmi(health, snap)
        elif snap.source in {"dcgm", "rocm"}:
            gpu = gpus.get(snap.labels.get("parent_gpu", snap.entity))  # a MIG instance: its GPU's
            reading = by_gpu.setdefault(snap.entity, GpuReading(
                uuid=snap.entity, index=gpu.index if gpu else _int(snap.labels.get("gpu")),
                model=gpu.model if gpu else snap.labels.get("modelName") or snap.labels.get("card_model"),
                values={}, observed_at=None))
            reading.values[snap.metric] = snap.value
            reading.observed_at = max(filter(None, (reading.observed_at, snap.observed_at)))
    health.gpus = sorted(by_gpu.values(), key=lambda g: (g.index is None, g.index, g.uuid))
    states = [s.state for s in health.sensors if s.state is not None]
    if states:
        health.worst_state = max(states, key=lambda name: list(STATE_NAMES.values()).index(name))
    return health


def _add_ipmi(health: NodeHealth, snap: HealthSnapshot) -> None:
    # power comes from the node's primary BMC address; a second address's (bmc=redfish) is
    # kept and exported, but does not overwrite it here. Sensors: both, each with its source.
    primary = SECOND_BMC_LABEL not in snap.labels
    if snap.metric == "ipmi_chassis_power_state" and snap.value is not None and primary:
        health.power_on = snap.value == 1.0
    elif snap.metric == "ipmi_dcmi_power_consumption_watts":
        if primary:
            health.power_watts = snap.value
    elif snap.metric.startswith(SENSOR_PREFIXES) and not snap.metric.endswith("_state") and snap.labels.get("name"):
        health.sensors.append(SensorReading(name=snap.labels["name"], metric=snap.metric, value=snap.value,
                                            unit=snap.unit, state=STATE_NAMES.get(snap.state),
                                            observed_at=snap.observed_at, source=snap.source))


def _int(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() else None
