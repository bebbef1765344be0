"""A Redfish node end to end: enrolled through the API with a `redfish+http://` address pointing
at sushy-tools' `sushy-static` serving DMTF's public-tower mockup (tests/data/upstream/redfish/),
then `kiln collect once --collector redfish` (a real `kiln` process) stores its watts,
temperatures, energy counter, GPUs and event log, and node health, energy metering, the GPU
inventory and the node's history see them. Every expected value is read from the mockup files."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine
from sqlmodel import Session, select

from collectors.cycle import run_cycle
from collectors.models import BmcLogCursor, CollectorTargetState, HealthSnapshot, NodeEnergyHour
from collectors.sources import build_sources
from fleet.bmc import parse_bmc_address
from fleet.models import Gpu, NodeEvent
from fleet.provisioning.base import NodeTarget
from fleet.provisioning.ironic import ironic_node_attributes
from kiln.security import SecretBox
from kiln.settings import Settings
from tests.cli_helpers import run
from tests.conftest import TEST_SECRET_KEY
from tests.factories import World
from tests.fleet_helpers import node_payload
from tests.test_collection_pipeline import kiln_env
from tests.peer_fixtures import TOWER_SYSTEM, tower, tower_log_gap, tower_url  # noqa: F401 (a fixture)

SYSTEM = TOWER_SYSTEM


def redfish_address(url: str) -> str:
    return url.replace("http://", "redfish+http://") + SYSTEM


def test_redfish_addresses_are_checked_at_enrolment(client: TestClient, world: World) -> None:
    for address, why in (("redfish+http://10.0.0.9:8000/chassis/1", "its path must be a system's"),
                         ("redfish+ftp://10.0.0.9/redfish/v1/Systems/1", "unsupported BMC address"),
                         ("redfish://user:pw@10.0.0.9/redfish/v1/Systems/1", "must not carry credentials")):
        refused = client.post("/api/v1/nodes", json=node_payload(bmc_address=address), headers=world.headers("admin"))
        assert refused.status_code == 422, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
        assert why in refused.text
    plain = parse_bmc_address("redfish+http://bmc-7:8000/redfish/v1/Systems/1")
    assert (plain.driver, plain.base_url, plain.path, plain.effective_port) == (
        "redfish", "http://bmc-7:8000", "/redfish/v1/Systems/1", 8000)
    assert parse_bmc_address("redfish://[fd00::7]/redfish/v1/Systems/1").base_url == "https://[fd00::7]"
    assert parse_bmc_address("redfish+https://bmc-7/redfish/v1/Systems/1").effective_port == 443
    attributes = ironic_node_attributes(NodeTarget(
        name="n", external_id=None, bmc_driver="redfish", bmc_address="redfish+http://bmc-7:8000/redfish/v1/Systems/1",
        bmc_username=None, bmc_password=None))
    assert attributes["driver_info"]["redfish_address"] == "http://bmc-7:8000"  # Ironic is told plain HTTP too


def test_collect_once_stores_power_thermal_energy_gpus_and_the_log(
        engine: Engine, world: World, client: TestClient, tower_url: str, tmp_path: Path) -> None:
    payload = node_payload(bmc_address=redfish_address(tower_url), bmc_username="admin", bmc_password="tower-pw",
                           gpus=[{"index": 0, "model": "enrolled", "vendor": "nvidia", "uuid": "GPU-6f1e-dcgm"}])
    created = client.post("/api/v1/nodes", json=payload, headers=world.headers("admin"))
    assert created.status_code == 201, created.text
    node = created.json()
    assert node["bmc_driver"] == "redfish"
    env = kiln_env(engine, tmp_path)

    first = run(env, "collect", "once", "--collector", "redfish", "--output", "json")
    assert first.returncode == 0, first.stderr
    [line] = map(json.loads, first.stdout.splitlines())
    assert line["target"] == node["name"] and line["ok"] and line["samples"] > 20, line
    assert line["error"] == tower_log_gap(tower_url)

    with Session(engine) as session:
        snaps = {(s.metric, s.labels.get("name")): s for s in session.exec(
            select(HealthSnapshot).where(HealthSnapshot.entity == node["name"]))}
        state = session.exec(select(CollectorTargetState).where(CollectorTargetState.collector == "redfish")).one()
    assert state.up and state.target == node["name"]
    environment = tower("Chassis/Tower/EnvironmentMetrics")
    assert snaps[("ipmi_dcmi_power_consumption_watts", None)].value == environment["PowerWatts"]["Reading"] == 974
    assert snaps[("ipmi_dcmi_power_consumption_watts", None)].source == "redfish"
    for reading in tower("Chassis/Tower/ThermalSubsystem/ThermalMetrics")["TemperatureReadingsCelsius"]:
        assert snaps[("ipmi_temperature_celsius", reading["DeviceName"])].value == reading["Reading"]
    supplies = [tower(f"Chassis/Tower/PowerSubsystem/PowerSupplies/{bay}/Metrics") for bay in ("Bay1", "Bay2")]
    assert snaps[("redfish_energy_kwh", None)].value == sum(m["EnergykWh"]["Reading"] for m in supplies)
    assert ("redfish_log_entry", None) not in snaps and ("redfish_gpu_info", None) not in snaps  # records, not health

    health = client.get(f"/api/v1/nodes/{node['id']}/health", headers=world.headers("admin")).json()
    assert health["power_watts"] == 974 and health["power_on"] is True and health["bmc_up"] is True
    assert {s["name"]: s["value"] for s in health["sensors"] if s["metric"] == "ipmi_temperature_celsius"} == {
        "Intake": 24.8, "Exhaust": 40.5}
    metrics = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    assert {s.labels["node"]: s.value for s in metrics["ipmi_dcmi_power_consumption_watts"].samples} == {
        node["name"]: 974}
    assert [s.value for s in metrics["redfish_energy_kwh"].samples] == [snaps[("redfish_energy_kwh", None)].value]

    gpus_in_mockup = [tower(m["@odata.id"]) for m in tower(f"{SYSTEM}/Processors")["Members"]]
    gpus_in_mockup = [p for p in gpus_in_mockup if p["ProcessorType"] == "GPU"]
    assert len(gpus_in_mockup) == 2
    with Session(engine) as session:
        gpus = session.exec(select(Gpu).where(Gpu.node_id == node["id"]).order_by(Gpu.index)).all()
    assert [(g.index, g.model, g.vendor, g.memory_mib) for g in gpus] == [
        (i, p["Model"], "nvidia", p["MemorySummary"]["TotalMemorySizeMiB"]) for i, p in enumerate(gpus_in_mockup)]
    assert gpus[0].uuid == "GPU-6f1e-dcgm" and gpus[1].uuid is None  # the enrolled (DCGM's) GPU kept its UUID, no twin

    entries = tower(f"{SYSTEM}/LogServices/Log1/Entries")["Members"]
    events = client.get(f"/api/v1/nodes/{node['id']}/events", headers=world.headers("admin")).json()
    logged = [e for e in events if e["kind"] == "bmc_log"]
    assert [e["message"] for e in logged] == [f"{e['Severity']}: {e['Message']} ({e['MessageId']})"
                                              for e in sorted(entries, key=lambda e: e["Created"], reverse=True)]
    assert logged[0]["at"].startswith("2012-03-07T14:45:00") and logged[0]["actor"] == "redfish"  # newest first

    second = run(env, "collect", "once", "--collector", "redfish", "--nodes", node["name"], "--output", "json")
    assert second.returncode == 0, second.stderr
    with Session(engine) as session:
        assert len(session.exec(select(NodeEvent).where(NodeEvent.node_id == node["id"],
                                                        NodeEvent.kind == "bmc_log")).all()) == len(entries)
        cursor = session.exec(select(BmcLogCursor).where(BmcLogCursor.node_id == node["id"])).one()
        assert cursor.entry == max(entries, key=lambda e: e["Created"])["@odata.id"]
        assert len(session.exec(select(Gpu).where(Gpu.node_id == node["id"])).all()) == 2
        hours = session.exec(select(NodeEnergyHour).where(NodeEnergyHour.node_id == node["id"])).all()
    # the mockup's counter stands still between the two polls: the counter says 0 kWh, and says it
    assert hours and {h.method for h in hours} == {"counter"} and sum(h.kwh for h in hours) == 0


def test_a_redfish_node_whose_bmc_refuses_fails_alone(engine: Engine, world: World, client: TestClient,
                                                      tower_url: str, tmp_path: Path) -> None:
    good = client.post("/api/v1/nodes", json=node_payload(bmc_address=redfish_address(tower_url), gpus=[]),
                       headers=world.headers("admin")).json()
    gone = client.post("/api/v1/nodes", json=node_payload(
        bmc_address="redfish+http://127.0.0.1:9/redfish/v1/Systems/1", gpus=[]), headers=world.headers("admin")).json()
    done = run(kiln_env(engine, tmp_path), "collect", "once", "--collector", "redfish", "--output", "json")
    assert done.returncode == 1  # one target failed
    lines = {row["target"]: row for row in map(json.loads, done.stdout.splitlines())}
    assert lines[good["name"]]["ok"]
    assert not lines[gone["name"]]["ok"]
    assert lines[gone["name"]]["error"].startswith("cannot reach http://127.0.0.1:9/redfish/v1/SessionService/Sessions")


def test_the_worker_cycle_polls_redfish_nodes_under_its_lease(engine: Engine, world: World, client: TestClient,
                                                              tower_url: str, tmp_path: Path) -> None:
    node = client.post("/api/v1/nodes", json=node_payload(bmc_address=redfish_address(tower_url), gpus=[]),
                       headers=world.headers("admin")).json()
    settings = Settings(data_dir=tmp_path, secret_key=TEST_SECRET_KEY, redfish_target_timeout=20)
    sources = build_sources(settings, engine, SecretBox(TEST_SECRET_KEY))
    try:
        report = run_cycle(engine, sources["redfish"], owner="worker-a", lease=timedelta(minutes=2))
    finally:
        sources["redfish"].close()
    assert [(r.target, r.ok, r.error) for r in report.results] == [(node["name"], True, tower_log_gap(tower_url))]
    with Session(engine) as session:
        state = session.exec(select(CollectorTargetState).where(CollectorTargetState.collector == "redfish")).one()
    assert (state.target, state.up, state.lease_owner) == (node["name"], True, "worker-a")
