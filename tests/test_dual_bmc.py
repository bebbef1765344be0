"""One node, two BMC sources: its `ipmi://` address polled by the IPMI collector and its second,
collection-only `redfish_address` by the Redfish collector, against OpenIPMI's ipmi_sim
(tests/peers/ipmisim.sh) and sushy-static serving a copy of DMTF's public-tower mockup.

The copy exists so that its power supplies' `EnergykWh` can advance between polls as a real
BMC's counter does (the mockup's values are the upstream ones until a test moves them).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session, select

from collectors.base import TargetResult
from collectors.exposition import CollectorExposition
from collectors.models import HealthSnapshot, NodeEnergyHour, NodeEnergySourceHour
from collectors.sources import IpmiSource, RedfishSource
from collectors.store import EnergyFigure, choose_energy_source, persist_results
from fleet.health import node_health
from fleet.models import Node
from kiln.auth import Principal
from kiln.db import create_db_engine
from kiln.security import SecretBox
from kiln.settings import Settings
from tests.api_base import assert_problem
from tests.cli_helpers import base_env, run
from tests.conftest import TEST_SECRET_KEY
from tests.factories import World
from tests.fleet_helpers import lease_node, make_node_row, node_payload
from tests.peer_fixtures import TOWER, TOWER_SYSTEM, tower
from tests.peers.harness import running_peer
from tests.test_ipmi_sim_peer import NODE, SimBmc, sim_bmc  # noqa: F401  (a fixture)

PSU_METRICS = ("Chassis/Tower/PowerSubsystem/PowerSupplies/Bay1/Metrics",
               "Chassis/Tower/PowerSubsystem/PowerSupplies/Bay2/Metrics")
T0 = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
MAX_GAP = timedelta(minutes=25)  # polls 20 minutes apart are consecutive readings


@dataclass(frozen=True)
class Tower:
    """sushy-static serving a copy of public-tower from `root`."""

    url: str
    root: Path

    @property
    def address(self) -> str:
        """Kiln's Redfish address of the tower's system, over plain HTTP."""
        return f"redfish+{self.url}{TOWER_SYSTEM}"

    def energy_kwh(self) -> float:
        """The sum of the power supplies' EnergykWh readings, as served now."""
        return sum(json.loads((self.root / p / "index.json").read_text())["EnergykWh"]["Reading"] for p in PSU_METRICS)

    def advance(self, kwh: float) -> None:
        """The first power supply's counter goes up by `kwh`."""
        path = self.root / PSU_METRICS[0] / "index.json"
        metrics = json.loads(path.read_text())
        metrics["EnergykWh"]["Reading"] += kwh
        path.write_text(json.dumps(metrics))


@pytest.fixture(scope="module")
def tower_copy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tower]:
    root = tmp_path_factory.mktemp("tower-copy") / "public-tower"
    shutil.copytree(TOWER, root)
    with running_peer("redfish", tmp_path_factory.mktemp("tower-static"), str(root)) as url:
        yield Tower(url, root)


def enroll(sim_bmc: SimBmc, tower_copy: Tower, tmp_path: Path) -> dict[str, str]:
    """A fresh SQLite Kiln with the node enrolled by `kiln nodes import`, both addresses in the CSV."""
    env = base_env(tmp_path, KILN_DATABASE_URL=f"sqlite:///{tmp_path / 'kiln.db'}", KILN_SECRET_KEY=TEST_SECRET_KEY)
    assert run(env, "migrate").returncode == 0
    nodes = tmp_path / "nodes.csv"
    nodes.write_text("name,provisioner,bmc_address,redfish_address,bmc_username,bmc_password,ipmi_privilege\n"
                     f"{NODE},fake,ipmi://{sim_bmc.host}:{sim_bmc.port},{tower_copy.address},"
                     f"{sim_bmc.username},{sim_bmc.password},admin\n")
    imported = run(env, "nodes", "import", str(nodes))
    assert imported.returncode == 0, imported.stdout + imported.stderr
    return env


def stored(env: dict[str, str]) -> tuple[Node, list[HealthSnapshot]]:
    engine = create_db_engine(env["KILN_DATABASE_URL"])
    try:
        with Session(engine) as session:
            node = session.exec(select(Node).where(Node.name == NODE)).one()
            return node, list(session.exec(select(HealthSnapshot).where(HealthSnapshot.entity == NODE)))
    finally:
        engine.dispose()


def test_one_collect_once_polls_both_addresses_and_keeps_each_sources_readings(
        sim_bmc: SimBmc, tower_copy: Tower, tmp_path: Path) -> None:
    env = enroll(sim_bmc, tower_copy, tmp_path)
    (sim_bmc.state / "watts").write_text("347\n")
    done = run(env, "collect", "once", "--collector", "ipmi,redfish", "--output", "json")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(line["collector"], line["target"], line["ok"]) for line in lines] == [
        ("ipmi", NODE, True), ("redfish", NODE, True)], lines

    _, snapshots = stored(env)
    by_key = {(s.metric, s.labels_key): s for s in snapshots}
    # the same metric from each source, side by side: the second address's labelled bmc=redfish
    assert by_key[("ipmi_dcmi_power_consumption_watts", "")].value == sim_bmc.dcmi_watts() == 347
    assert by_key[("ipmi_dcmi_power_consumption_watts", "")].source == "ipmi"
    redfish_watts = by_key[("ipmi_dcmi_power_consumption_watts", "bmc=redfish")]
    assert (redfish_watts.source, redfish_watts.value) == (
        "redfish", tower("/redfish/v1/Chassis/Tower/EnvironmentMetrics")["PowerWatts"]["Reading"])
    assert by_key[("ipmi_chassis_power_state", "")].value == 1.0  # ipmi_sim's chassis is on
    assert by_key[("ipmi_chassis_power_state", "bmc=redfish")].value == 1.0  # the tower's PowerState On
    assert by_key[("redfish_energy_kwh", "from=PowerSupplies")].value == tower_copy.energy_kwh()
    ipmi_temps = {s.labels["name"] for s in snapshots if s.metric == "ipmi_temperature_celsius" and s.source == "ipmi"}
    redfish_temps = {s.labels["name"] for s in snapshots
                     if s.metric == "ipmi_temperature_celsius" and s.labels.get("bmc") == "redfish"}
    assert ipmi_temps and redfish_temps  # both kept, neither replaced the other
    engine = create_db_engine(env["KILN_DATABASE_URL"])
    try:  # /metrics: both series, told apart by `bmc`; {bmc=""} counts the node once
        families = {f.name: f for f in CollectorExposition(engine).collect()}
    finally:
        engine.dispose()
    watts = {s.labels.get("bmc", ""): s.value for s in families["ipmi_dcmi_power_consumption_watts"].samples
             if s.labels["node"] == NODE}
    assert watts == {"": 347, "redfish": redfish_watts.value}

    shown = run(env, "nodes", "show", NODE, "--output", "json")
    body = json.loads(shown.stdout)
    assert body["redfish_address"] == tower_copy.address and body["bmc_address"].startswith("ipmi://")
    assert sim_bmc.password not in shown.stdout and "bmc_password" not in body


def test_a_bad_second_address_is_one_line_and_changes_nothing(
        sim_bmc: SimBmc, tower_copy: Tower, tmp_path: Path) -> None:
    env = enroll(sim_bmc, tower_copy, tmp_path)
    for bad in (f"ipmi://{sim_bmc.host}:{sim_bmc.port}", f"{tower_copy.url}{TOWER_SYSTEM}", "redfish://"):
        done = run(env, "nodes", "update", NODE, "--redfish-address", bad)
        assert done.returncode == 1 and done.stdout == "", done
        assert len(done.stderr.strip().splitlines()) == 1 and "redfish_address" in done.stderr, done.stderr
        assert stored(env)[0].redfish_address == tower_copy.address
    bad_row = tmp_path / "bad.csv"
    bad_row.write_text("name,provisioner,bmc_address,redfish_address,bmc_username,bmc_password\n"
                       "other-node,fake,ipmi://10.0.0.9,ipmi://10.0.0.9,u,p\n")
    imported = run(env, "nodes", "import", str(bad_row))
    assert imported.returncode == 1 and "redfish_address" in imported.stderr and "Redfish" in imported.stderr
    cleared = run(env, "nodes", "update", NODE, "--clear-redfish-address")
    assert cleared.returncode == 0, cleared.stderr
    assert stored(env)[0].redfish_address is None
    targets = run(env, "collect", "once", "--collector", "redfish", "--output", "json")
    assert targets.returncode == 0 and targets.stdout == ""  # no Redfish address left: nothing to poll


def restamped(results: list[TargetResult], at: datetime) -> list[TargetResult]:
    return [replace(r, samples=[s._replace(ts=at) for s in r.samples]) for r in results]


def test_an_hour_of_energy_is_counted_once_from_the_counter_else_dcmi(
        engine: Engine, world: World, settings: Settings, sim_bmc: SimBmc, tower_copy: Tower) -> None:
    box = SecretBox(TEST_SECRET_KEY)
    node = make_node_row(world, gpus=0, name=NODE, bmc_address=f"ipmi://{sim_bmc.host}:{sim_bmc.port}",
                         redfish_address=tower_copy.address, bmc_username=sim_bmc.username,
                         bmc_password_encrypted=box.encrypt(sim_bmc.password), ipmi_privilege="admin")
    (sim_bmc.state / "watts").write_text("600\n")
    ipmi, redfish = IpmiSource(settings, box), RedfishSource(settings, box)
    assert ipmi.targets(world.session) == redfish.targets(world.session) == [NODE]

    def poll(source: IpmiSource | RedfishSource, at: datetime) -> None:
        with Session(engine) as session, session.begin():
            results = restamped(source.collect([NODE], session=session), at)
            assert [r.ok for r in results] == [True], results
            persist_results(session, source.name, results, max_gap=MAX_GAP)

    try:
        # 10:00-11:00: DCMI reads 600 W every 20 minutes; the Redfish counter 30 s later each time,
        # up 0.25 kWh per 20 minutes. 11:00-12:00: the Redfish service is gone, DCMI alone.
        for minute in (0, 20, 40, 60):
            poll(ipmi, T0 + timedelta(minutes=minute))
            if minute:
                tower_copy.advance(0.25)
            poll(redfish, T0 + timedelta(minutes=minute, seconds=30))
        for minute in (80, 100, 120):
            poll(ipmi, T0 + timedelta(minutes=minute))
    finally:
        ipmi.close()
        redfish.close()

    with Session(engine) as session:
        hours = {r.hour.hour: (r.kwh, r.covered_seconds, r.method, r.source) for r in session.exec(
            select(NodeEnergyHour).where(NodeEnergyHour.node_id == node.id))}
        figures = {(r.hour.hour, r.source): (r.kwh, r.covered_seconds, r.method) for r in session.exec(
            select(NodeEnergySourceHour).where(NodeEnergySourceHour.node_id == node.id))}
        health = node_health(session, Principal.system(), node.id)
    # by hand: the counter from 10:00:30: 0.25 + 0.25 + 0.25 x 1170/1200 s before 11:00 = 0.74375 kWh
    # (3570 s); DCMI 600 W x 3600 s = 0.6 kWh. Both cover the hour: the counter counts, once.
    assert figures[(10, "redfish")] == (Decimal("0.743750"), 3570, "counter")
    assert figures[(10, "ipmi")] == (Decimal("0.600000"), 3600, "watts")
    assert hours[10] == (Decimal("0.743750"), 3570, "counter", "redfish")
    # 11:00-12:00: the counter covers 30 s (0.25 x 30/1200 = 0.00625 kWh), DCMI all of it: DCMI counts
    assert figures[(11, "redfish")] == (Decimal("0.006250"), 30, "counter")
    assert hours[11] == (Decimal("0.600000"), 3600, "watts", "ipmi")
    # health: power from the primary address (DCMI), sensors from both, each named by its source
    assert health.power_watts == 600 and health.power_on is True
    assert (health.bmc_up, health.bmc_error, health.redfish_up) == (True, None, True)
    assert {s.source for s in health.sensors} == {"ipmi", "redfish"}


def test_api_sets_clears_and_refuses_the_second_address_and_tenants_never_see_it(
        client: TestClient, world: World) -> None:
    admin = world.headers("admin")
    created = client.post("/api/v1/nodes", json=node_payload(redfish_address="redfish://10.7.0.1/redfish/v1/Systems/1"),
                          headers=admin)
    assert created.status_code == 201, created.text
    node = created.json()
    assert node["redfish_address"] == "redfish://10.7.0.1/redfish/v1/Systems/1"
    url = f"/api/v1/nodes/{node['id']}"
    for bad in ("ipmi://10.7.0.1", "https://10.7.0.1", "redfish://10.7.0.1/redfish/v1"):
        body = assert_problem(client.patch(url, json={"redfish_address": bad}, headers=admin), 422)
        assert [e["field"] for e in body["errors"]] == ["redfish_address"], body
    assert client.get(url, headers=admin).json()["redfish_address"] == node["redfish_address"]
    changed = client.patch(url, json={"redfish_address": "redfish+http://10.7.0.2:8000"}, headers=admin)
    assert changed.status_code == 200 and changed.json()["redfish_address"] == "redfish+http://10.7.0.2:8000"

    lease_node(world, node["id"], "a")
    assert client.get(url, headers=world.headers("a_member")).json()["redfish_address"] is None
    assert client.get(url, headers=world.headers("b_member")).status_code == 404

    cleared = client.patch(url, json={"redfish_address": None}, headers=admin)
    assert cleared.status_code == 200 and cleared.json()["redfish_address"] is None

    redfish_only = client.post("/api/v1/nodes", json=node_payload(bmc_address="redfish://10.7.0.3"), headers=admin).json()
    body = assert_problem(client.patch(f"/api/v1/nodes/{redfish_only['id']}",
                                       json={"redfish_address": "redfish://10.7.0.3"}, headers=admin), 422)
    assert body["errors"][0]["field"] == "redfish_address" and "ipmi://" in body["detail"]


def test_the_energy_rule_counter_then_dcmi_then_redfish_watts_unless_one_covers_far_less() -> None:
    def figure(source: str, method: str, seconds: int) -> EnergyFigure:
        return EnergyFigure(source, Decimal(seconds) / 3600, seconds, method)

    gap = timedelta(minutes=10)
    dcmi, counter, mixed = figure("ipmi", "watts", 3600), figure("redfish", "counter", 3570), figure("redfish", "mixed", 3600)
    redfish_watts = figure("redfish", "watts", 3600)
    assert choose_energy_source([dcmi, counter], gap) == counter
    assert choose_energy_source([mixed, dcmi], gap) == mixed  # the counter with its own watts standing in
    assert choose_energy_source([redfish_watts, dcmi], gap) == dcmi  # no counter: DCMI before Redfish's watts
    assert choose_energy_source([figure("redfish", "counter", 2999), dcmi], gap) == dcmi  # 601 s short: gives way
    assert choose_energy_source([figure("redfish", "counter", 3000), dcmi], gap) == figure("redfish", "counter", 3000)
    assert choose_energy_source([redfish_watts, figure("ipmi", "watts", 60)], gap) == redfish_watts
    assert choose_energy_source([dcmi], gap) == dcmi  # a one-source node: its own figure
