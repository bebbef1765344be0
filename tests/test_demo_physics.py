"""The demo's one physical model: node watts are base load plus the GPUs' own board power, a
powered-off node reads standby and ambient, and the fake driver's power actions reach the BMC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from collectors.sim.bmc import model as bmc_model
from collectors.sim.dcgm_exporter import SimGpu, power_watts, readings, render, utilisation
from dashboards.demo.physics import BASE_WATTS, INLET_C, DemoNode, node_temperatures, node_watts
from fleet.provisioning.base import NodeTarget
from fleet.provisioning.fake import FakeDriver
from fleet.provisioning.states import PowerState

AT = datetime(2026, 11, 20, 14, 0, tzinfo=UTC)
H100, A100 = "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"


def demo_node(name: str, model: str = H100, resource_class: str = "gpu.h100", critical: bool = False) -> DemoNode:
    return DemoNode(name, resource_class, tuple(SimGpu(name, i, f"GPU-{name}-{i}", model) for i in range(8)), critical)


def test_node_watts_are_the_base_load_plus_the_gpus_own_power_over_a_day() -> None:
    for node in (demo_node("h1"), demo_node("a1", A100, "gpu.a100")):
        for hour in range(24):
            at = AT + timedelta(hours=hour)
            gpus = sum(readings(gpu, at, True)["DCGM_FI_DEV_POWER_USAGE"] for gpu in node.gpus)
            watts = node_watts(node, at, powered=True, busy=True)
            assert watts % bmc_model.WATTS_STEP == 0
            assert abs(watts - (BASE_WATTS[node.resource_class] + gpus)) <= bmc_model.WATTS_STEP / 2
            assert watts > gpus  # never below what its own GPUs draw
            assert watts <= bmc_model.MAX_WATTS


def test_node_power_follows_gpu_utilisation() -> None:
    node = demo_node("h2")
    samples = [(sum(utilisation(g, AT + timedelta(hours=h), True) for g in node.gpus),
                node_watts(node, AT + timedelta(hours=h), True, True)) for h in range(24)]
    busiest, quietest = max(samples), min(samples)
    assert busiest[0] > quietest[0] + 100 and busiest[1] > quietest[1] + 500  # not flat while utilisation swings
    idle = node_watts(node, AT, powered=True, busy=False)
    assert idle == round((BASE_WATTS["gpu.h100"] + 8 * power_watts(node.gpus[0], 0)) / 40) * 40


def test_a_powered_off_node_reads_standby_and_ambient_and_serves_no_gpu() -> None:
    node = demo_node("h3", critical=True)
    assert node_watts(node, AT, powered=False, busy=True) == bmc_model.STANDBY_WATTS
    temperatures = node_temperatures(node, AT, powered=False, busy=True)
    assert max(temperatures.values()) <= INLET_C + 5
    assert node_temperatures(node, AT, powered=True, busy=True)["GPU2 Temp"] == bmc_model.CRITICAL_VALUE
    text = render(node.gpus + demo_node("h4").gpus, AT, busy=lambda host: True, powered=lambda host: host == "h4")
    assert 'Hostname="h4"' in text and 'Hostname="h3"' not in text


def test_the_fake_drivers_power_actions_reach_the_hook_once_per_change() -> None:
    switched: list[tuple[str, PowerState]] = []
    driver = FakeDriver(on_power=lambda name, state: switched.append((name, state)))
    target = NodeTarget(name="n1", external_id=None, bmc_driver="ipmi", bmc_address="ipmi://10.0.0.1",
                        bmc_username="admin", bmc_password="x")
    enrolled = driver.enroll(target)
    target = NodeTarget(name="n1", external_id=enrolled.external_id, bmc_driver="ipmi",
                        bmc_address="ipmi://10.0.0.1", bmc_username="admin", bmc_password="x")
    driver.set_power(target, "power on")
    driver.set_power(target, "power on")  # already on: nothing to switch
    driver.set_power(target, "power off")
    assert switched == [("n1", PowerState.ON), ("n1", PowerState.OFF)]
    assert {b.name for b in driver.list_all()} == {"n1"}
