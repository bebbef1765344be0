"""Kiln's fleet code paths against a real Ironic (tests/peers/ironic.sh) and real IPMI BMCs
(tests/peers/bmcsim.sh): the `kiln nodes` scripting contract as a subprocess, the sync, and
the HTTP API. What Kiln reports is checked against Ironic itself (openstacksdk) and against
the simulated BMCs.

These tests run on PostgreSQL only (production's database): Ironic's state machine and the
CLI's start-up dominate their time, and the database rules are covered on both databases by
test_node_import.py and test_nodes_api.py. Scenes that are not under test are set up
in-process with the same Kiln code the CLI runs."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session, select

from fleet import nodes as node_service
from fleet.importer import import_nodes
from fleet.models import Node, NodeEvent, Operation
from fleet.operations import ActionParams, plan_action
from fleet.provisioning.actions import Action
from fleet.runtime import FleetRuntime
from kiln.app import create_app
from kiln.auth import Principal
from kiln.settings import Settings
from tests.cli_helpers import base_env
from tests.cli_helpers import run as kiln
from tests.conftest import TEST_SECRET_KEY
from tests.factories import World
from tests.fleet_helpers import wait_operations

from tests.peer_fixtures import bmcs, delete_all_nodes, ironic_url, sdk  # noqa: E402, F401 (fixtures)
import openstack.connection

pytestmark = [
    pytest.mark.parametrize("database_url", ["postgresql"], indirect=True),
    pytest.mark.filterwarnings("ignore::openstack.warnings.RemovedInSDK50Warning"),
    pytest.mark.filterwarnings("ignore::openstack.warnings.RemovedInSDK60Warning"),
]

Connection = openstack.connection.Connection
HEADER = "name,provisioner,bmc_address,bmc_username,bmc_password,boot_mac,resource_class,rack,tags,ironic_driver"
IMAGE = ["--image-url", "http://images.example/ubuntu-24.04.qcow2", "--image-checksum", "sha256:" + "a" * 64]


@pytest.fixture(autouse=True)
def empty_ironic(sdk: Connection) -> None:
    """Every test starts with no node in Ironic (the Kiln database is emptied by `engine`)."""
    delete_all_nodes(sdk)


@pytest.fixture
def env(engine: Engine, tmp_path: Path, ironic_url: str) -> dict[str, str]:
    """Environment for `kiln` on the test database and the real Ironic."""
    return base_env(tmp_path, KILN_DATABASE_URL=engine.url.render_as_string(hide_password=False),
                    KILN_IRONIC_URL=ironic_url, KILN_SECRET_KEY=TEST_SECRET_KEY)


@pytest.fixture
def ironic_settings(engine: Engine, tmp_path: Path, ironic_url: str) -> Settings:
    """Settings of a Kiln on the test database and the real Ironic."""
    return Settings(data_dir=tmp_path, database_url=engine.url.render_as_string(hide_password=False),
                    secret_key=TEST_SECRET_KEY, ironic_url=ironic_url)


@pytest.fixture
def fleet(ironic_settings: Settings, engine: Engine) -> FleetRuntime:
    """Kiln's fleet runtime in this process, to set the scene faster than the CLI could."""
    return FleetRuntime.build(ironic_settings, engine)


def enroll(fleet: FleetRuntime, engine: Engine, path: Path) -> None:
    """Import `path` in-process (what `kiln nodes import` does); every row must be created."""
    report = import_nodes(engine, path, Principal.system("test"), fleet.drivers, fleet.box)
    assert [r.status for r in report.rows] == ["created"] * len(report.rows), report.rows


def run_action(fleet: FleetRuntime, engine: Engine, action: Action, names: list[str]) -> None:
    """Run an action in-process (what `kiln nodes action` does); it must succeed on every node."""
    with Session(engine, expire_on_commit=False) as session:
        selected = node_service.list_nodes(session, Principal.system("test"), names=names)
        operations = plan_action(session, Principal.system("test"), selected, action, ActionParams())
        session.commit()
    outcomes = fleet.runner.run_many([o.id for o in operations], concurrency=len(operations))
    assert all(o.ok for o in outcomes), outcomes


def kiln_view(engine: Engine) -> dict[str, dict]:
    """Kiln's nodes as `kiln nodes list --output json` shows them, read straight from the database."""
    with Session(engine) as session:
        nodes = node_service.list_nodes(session, Principal.system("test"))
        return {n.name: n.model_dump(mode="json") for n in node_service.to_public(session, Principal.system("test"), nodes)}


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(result.stdout)


def fake_row(name: str, n: int, **changes: str) -> str:
    """A CSV line for a fake-hardware node with fake power (its BMC host is under .invalid: no BMC behind it)."""
    values = {
        "name": name, "provisioner": "ironic", "bmc_address": f"redfish://bmc-7-0-{n}.invalid/redfish/v1/Systems/1",
        "bmc_username": "admin", "bmc_password": f"pw-{n}", "boot_mac": f"52:54:00:07:00:{n:02x}",
        "resource_class": "gpu.h100", "rack": "r7", "tags": "batch;h100", "ironic_driver": "fake-hardware",
    }
    values.update(changes)
    return ",".join(values[c] for c in HEADER.split(","))


def bmc_row(name: str, bmc: dict, n: int) -> str:
    """A CSV line for a fake-hardware node whose power is real IPMI to a simulated BMC."""
    return fake_row(name, n, bmc_address=f"ipmi://{bmc['host']}:{bmc['port']}", bmc_username=bmc["username"],
                    bmc_password=bmc["password"])


def csv_file(tmp_path: Path, *lines: str, header: str = HEADER, name: str = "nodes.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join([header, *lines]) + "\n")
    return path


def kiln_nodes(env: dict[str, str]) -> dict[str, dict]:
    return {n["name"]: n for n in as_json(ok(kiln(env, "nodes", "list", "--output", "json")))}


def ironic_nodes(sdk: Connection) -> dict[str, Any]:
    return {n.name: n for n in sdk.baremetal.nodes(details=True)}


def bmc_power(bmc: dict) -> str:
    with urllib.request.urlopen(bmc["control_url"], timeout=5) as answer:
        return json.load(answer)["power_state"]


def act(env: dict[str, str], action: str, *selection: str) -> list[dict]:
    """`kiln nodes action ACTION SELECTION -o json`, which must succeed for every node."""
    outcomes = as_json(ok(kiln(env, "nodes", "action", action, *selection, "--output", "json")))
    assert all(o["ok"] and o["error"] is None for o in outcomes), outcomes
    return outcomes


# -- the scripting contract ------------------------------------------------------------------


def test_csv_import_and_lifecycle_through_the_cli(env: dict[str, str], sdk: Connection, bmcs: list[dict],
                                                  tmp_path: Path, engine: Engine) -> None:
    names = ["gpu-a", "gpu-b", "gpu-c"]
    path = csv_file(tmp_path, *(bmc_row(name, bmc, n) for n, (name, bmc) in enumerate(zip(names, bmcs), 1)))
    imported = as_json(ok(kiln(env, "nodes", "import", str(path), "--output", "json")))
    assert [(r["row"], r["name"], r["status"]) for r in imported] == [(2, "gpu-a", "created"), (3, "gpu-b", "created"),
                                                                       (4, "gpu-c", "created")]
    in_ironic = ironic_nodes(sdk)
    assert sorted(in_ironic) == names
    for n, (name, bmc) in enumerate(zip(names, bmcs), 1):
        node = in_ironic[name]
        assert (node.driver, node.power_interface, node.resource_class) == ("fake-hardware", "ipmitool", "gpu.h100")
        assert (node.driver_info["ipmi_address"], node.driver_info["ipmi_port"]) == ("127.0.0.1", bmc["port"])
        assert node.driver_info["ipmi_username"] == bmc["username"] and node.provision_state == "enroll"
        assert [p.address for p in sdk.baremetal.ports(node_uuid=node.id)] == [f"52:54:00:07:00:{n:02x}"]
    listed = kiln_view(engine)
    assert {name: n["external_id"] for name, n in listed.items()} == {name: n.id for name, n in in_ironic.items()}
    assert {n["provision_state"] for n in listed.values()} == {"enroll"}

    with Session(engine) as session:
        rows_before = {n.name: (n.id, n.external_id, n.updated_at) for n in session.exec(select(Node))}
    again = ok(kiln(env, "nodes", "import", str(path)))
    assert "0 created, 3 unchanged, 0 invalid, 0 failed" in again.stdout
    assert {n.name: n.id for n in sdk.baremetal.nodes()} == {name: n.id for name, n in in_ironic.items()}
    with Session(engine) as session:
        assert {n.name: (n.id, n.external_id, n.updated_at) for n in session.exec(select(Node))} == rows_before

    assert {o["state"] for o in act(env, "manage", "--all")} == {"manageable"}
    assert {o["state"] for o in act(env, "inspect", "--all")} == {"manageable"}
    assert {o["state"] for o in act(env, "provide", "--tag", "batch")} == {"available"}
    deployed = act(env, "deploy", "--all", *IMAGE)
    assert sorted((o["node"], o["action"], o["state"]) for o in deployed) == [(n, "deploy", "active") for n in names]
    listed = kiln_nodes(env)
    assert {name: (n["provision_state"], n["power_state"], n["target_provision_state"], n["last_error"])
            for name, n in listed.items()} == {name: ("active", "power on", None, None) for name in names}
    for name, bmc in zip(names, bmcs):
        node = sdk.baremetal.get_node(name)
        assert (node.provision_state, node.power_state) == ("active", "power on")
        assert node.instance_info["image_source"] == "http://images.example/ubuntu-24.04.qcow2"
        assert bmc_power(bmc) == "on"

    assert {o["state"] for o in act(env, "undeploy", *names)} == {"available"}
    assert {n["provision_state"] for n in kiln_view(engine).values()} == {"available"}
    assert {n.provision_state for n in sdk.baremetal.nodes()} == {"available"}
    with Session(engine) as session:
        operations = session.exec(select(Operation)).all()
    assert len(operations) == 5 * 3 and {o.status for o in operations} == {"succeeded"}


def test_yaml_import_with_the_same_keys(env: dict[str, str], sdk: Connection, tmp_path: Path, engine: Engine) -> None:
    path = tmp_path / "nodes.yaml"
    path.write_text("""\
nodes:
  - name: yml-1
    provisioner: ironic
    bmc_address: redfish://bmc-7-1-1.invalid/redfish/v1/Systems/1
    bmc_username: admin
    bmc_password: secret
    boot_mac: 52:54:00:12:34:56
    resource_class: gpu.b200
    rack: r9
    tags: [infer, b200]
    ironic_driver: fake-hardware
    gpu_model: NVIDIA B200
    gpu_count: 8
  - {name: yml-2, provisioner: ironic, bmc_address: "redfish://bmc-7-1-2.invalid/redfish/v1/Systems/1",
     bmc_username: admin, bmc_password: secret, tags: "infer;b200", ironic_driver: fake-hardware}
""")
    imported = as_json(ok(kiln(env, "nodes", "import", str(path), "-o", "json")))
    assert [(r["row"], r["name"], r["status"]) for r in imported] == [(2, "yml-1", "created"), (14, "yml-2", "created")]
    in_ironic = ironic_nodes(sdk)
    assert sorted(in_ironic) == ["yml-1", "yml-2"]
    assert (in_ironic["yml-1"].driver, in_ironic["yml-1"].resource_class) == ("fake-hardware", "gpu.b200")
    assert [p.address for p in sdk.baremetal.ports(node_uuid=in_ironic["yml-1"].id)] == ["52:54:00:12:34:56"]
    listed = kiln_view(engine)
    assert listed["yml-1"]["tags"] == listed["yml-2"]["tags"] == ["b200", "infer"]
    assert [g["model"] for g in listed["yml-1"]["gpus"]] == ["NVIDIA B200"] * 8
    assert listed["yml-1"]["external_id"] == in_ironic["yml-1"].id
    again = as_json(ok(kiln(env, "nodes", "import", str(path), "-o", "json")))
    assert [r["status"] for r in again] == ["unchanged", "unchanged"]
    assert len(list(sdk.baremetal.nodes())) == 2


def test_an_invalid_row_enrolls_nothing_anywhere(env: dict[str, str], sdk: Connection, tmp_path: Path,
                                                 engine: Engine) -> None:
    path = csv_file(tmp_path, fake_row("val-1", 1), fake_row("val-2", 2, bmc_address="ipmi://bmc-2:notaport"),
                    fake_row("val-3", 3))
    refused = kiln(env, "nodes", "import", str(path))
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1 and refused.stderr.startswith("kiln: error: ")
    assert "1 invalid row(s), nothing imported: row 3 (val-2): bmc_address: " in refused.stderr
    assert "invalid port" in refused.stderr
    assert kiln_view(engine) == {} and ironic_nodes(sdk) == {}

    skipped = kiln(env, "nodes", "import", str(path), "--skip-invalid", "-o", "json")
    assert skipped.returncode == 1
    assert [(r["name"], r["status"]) for r in as_json(skipped)] == [
        ("val-1", "created"), ("val-2", "invalid"), ("val-3", "created")]
    in_ironic = ironic_nodes(sdk)
    assert sorted(in_ironic) == ["val-1", "val-3"]
    assert {n: k["external_id"] for n, k in kiln_view(engine).items()} == {n: i.id for n, i in in_ironic.items()}


def test_rows_ironic_refuses_fail_alone_and_leave_no_orphans(env: dict[str, str], sdk: Connection,
                                                              tmp_path: Path, engine: Engine) -> None:
    outsider = sdk.baremetal.create_node(name="outsider", driver="fake-hardware")
    sdk.baremetal.create_port(node_uuid=outsider.id, address="52:54:00:07:00:33")
    path = csv_file(
        tmp_path,
        fake_row("enr-1", 1),
        fake_row("enr-2", 2, ironic_driver="nope"),      # Ironic: no conductor for hardware type nope
        fake_row("enr-3", 0x33),                         # its MAC is the outsider's port in Ironic
        fake_row("outsider", 4),                         # Ironic already has a node of that name
        fake_row("enr-5", 5),
    )
    result = kiln(env, "nodes", "import", str(path), "--output", "json")
    assert result.returncode == 1
    rows = {r["name"]: r for r in as_json(result)}
    assert {name: r["status"] for name, r in rows.items()} == {
        "enr-1": "created", "enr-2": "failed", "enr-3": "failed", "outsider": "failed", "enr-5": "created"}
    assert rows["enr-2"]["message"].startswith("cannot enroll node enr-2: No valid host was found.")
    assert "driver nope" in rows["enr-2"]["message"]
    assert rows["enr-3"]["message"].startswith("cannot enroll node enr-3: ")
    assert "52:54:00:07:00:33 already exists" in rows["enr-3"]["message"]
    assert rows["outsider"]["message"] == "cannot enroll node outsider: A node with name outsider already exists."
    assert sorted(kiln_view(engine)) == ["enr-1", "enr-5"]
    in_ironic = ironic_nodes(sdk)
    assert sorted(in_ironic) == ["enr-1", "enr-5", "outsider"]
    assert in_ironic["outsider"].id == outsider.id


def test_bulk_action_reports_each_node_and_exits_1_when_one_fails(env: dict[str, str], sdk: Connection,
                                                                   tmp_path: Path, engine: Engine,
                                                                   fleet: FleetRuntime) -> None:
    names = ["blk-1", "blk-2", "blk-3", "blk-4"]
    enroll(fleet, engine, csv_file(tmp_path, *(fake_row(n, i) for i, n in enumerate(names, 1))))
    run_action(fleet, engine, Action.MANAGE, names)
    run_action(fleet, engine, Action.PROVIDE, names[:3])  # blk-4 stays manageable
    sdk.baremetal.set_node_maintenance("blk-2", reason="GPU 3 replaced")  # behind Kiln's back

    result = kiln(env, "nodes", "action", "deploy", "--all", *IMAGE, "--output", "json")
    assert result.returncode == 1, result.stderr
    outcomes = {o["node"]: o for o in as_json(result)}
    assert sorted(outcomes) == names
    assert [(n, outcomes[n]["ok"], outcomes[n]["state"]) for n in ("blk-1", "blk-3")] == [
        ("blk-1", True, "active"), ("blk-3", True, "active")]
    assert not outcomes["blk-2"]["ok"] and outcomes["blk-2"]["state"] == "available"
    # Ironic's own words, with the node's name instead of its UUID
    assert outcomes["blk-2"]["error"] == (
        "The provisioning operation can't be performed on node blk-2 because it's in maintenance mode.")
    assert not outcomes["blk-4"]["ok"]
    assert outcomes["blk-4"]["error"] == (
        'deploy is not possible while the node is in state "manageable" (needs: available, deploy failed)')
    assert {n: i.provision_state for n, i in ironic_nodes(sdk).items()} == {
        "blk-1": "active", "blk-2": "available", "blk-3": "active", "blk-4": "manageable"}

    table = kiln(env, "nodes", "action", "deploy", "blk-2", *IMAGE)
    assert table.returncode == 1 and "FAILED" in table.stdout and "maintenance mode" in table.stdout
    assert "0 succeeded, 1 failed" in table.stdout
    with Session(engine) as session:
        node = session.exec(select(Node).where(Node.name == "blk-2")).one()
        events = session.exec(select(NodeEvent).where(NodeEvent.node_id == node.id).order_by(NodeEvent.id)).all()
    assert node.maintenance and node.maintenance_reason == "GPU 3 replaced"
    assert [e.kind for e in events] == ["enrolled", "action", "action", "action", "action"]
    assert events[-1].message.startswith("deploy failed: The provisioning operation can't be performed on node blk-2")


def ipmitool_power(bmc: dict) -> str:
    result = subprocess.run(
        ["ipmitool", "-I", "lanplus", "-C", "3", "-H", bmc["host"], "-p", str(bmc["port"]), "-U", bmc["username"],
         "-P", bmc["password"], "chassis", "power", "status"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_real_ipmi_power_through_kiln(env: dict[str, str], sdk: Connection, bmcs: list[dict], tmp_path: Path,
                                     engine: Engine, fleet: FleetRuntime) -> None:
    bmc = bmcs[3]
    urllib.request.urlopen(urllib.request.Request(bmc["control_url"] + "/power?state=on", method="POST"), timeout=5)
    path = csv_file(tmp_path, bmc_row("pwr-1", bmc, 9) + ",3", header=HEADER + ",ipmi_cipher_suite")
    enroll(fleet, engine, path)
    info = sdk.baremetal.get_node("pwr-1").driver_info
    assert (info["ipmi_port"], info["ipmi_cipher_suite"], info["ipmi_password"]) == (bmc["port"], "3", "******")

    (off,) = act(env, "power-off", "pwr-1")
    assert off["node"] == "pwr-1" and off["action"] == "power-off"
    assert bmc_power(bmc) == "off" and ipmitool_power(bmc) == "Chassis Power is off"
    assert kiln_view(engine)["pwr-1"]["power_state"] == "power off"
    assert sdk.baremetal.get_node("pwr-1").power_state == "power off"

    act(env, "power-on", "pwr-1")
    assert bmc_power(bmc) == "on" and ipmitool_power(bmc) == "Chassis Power is on"
    assert kiln_view(engine)["pwr-1"]["power_state"] == "power on"


# -- sync -------------------------------------------------------------------------------------


def test_sync_converges_on_changes_made_behind_kilns_back(env: dict[str, str], sdk: Connection, tmp_path: Path,
                                                          engine: Engine, fleet: FleetRuntime) -> None:
    enroll(fleet, engine, csv_file(tmp_path, *(fake_row(f"syn-{i}", i) for i in (1, 2, 3))))
    gone_id = sdk.baremetal.get_node("syn-2").id
    sdk.baremetal.set_node_maintenance("syn-1", reason="fan swap")
    sdk.baremetal.set_node_power_state("syn-1", "power off", wait=False)
    deadline = time.monotonic() + 15
    while sdk.baremetal.get_node("syn-1").power_state != "power off":
        assert time.monotonic() < deadline, "Ironic did not power off syn-1"
        time.sleep(0.1)
    sdk.baremetal.delete_node("syn-2")

    first = ok(kiln(env, "nodes", "sync"))
    assert first.stdout.strip() == "checked 3 node(s), 1 changed, 1 missing from their backend"
    listed = kiln_view(engine)
    assert (listed["syn-1"]["maintenance"], listed["syn-1"]["maintenance_reason"], listed["syn-1"]["power_state"]) == (
        True, "fan swap", "power off")
    assert listed["syn-2"]["last_error"] == f"node no longer exists in ironic (external id {gone_id})"
    assert (listed["syn-3"]["maintenance"], listed["syn-3"]["last_error"]) == (False, None)

    def events() -> list[tuple[str, str, str, str]]:
        with Session(engine) as session:
            names = {n.id: n.name for n in session.exec(select(Node))}
            rows = session.exec(select(NodeEvent).where(NodeEvent.kind != "enrolled").order_by(NodeEvent.id)).all()
            return sorted((names[e.node_id], e.kind, e.actor, e.message) for e in rows)

    assert events() == [
        ("syn-1", "state", "sync", "changed outside Kiln: power None → power off, maintenance False → True"),
        ("syn-2", "error", "sync", f"node no longer exists in ironic (external id {gone_id})"),
    ]
    second = ok(kiln(env, "nodes", "sync"))
    assert second.stdout.strip() == "checked 3 node(s), 0 changed, 1 missing from their backend"
    assert len(events()) == 2, "a second sync with nothing new must not add events"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_or_unconfigured_ironic_fails_cleanly(env: dict[str, str], tmp_path: Path, engine: Engine,
                                                           fleet: FleetRuntime) -> None:
    enroll(fleet, engine, csv_file(tmp_path, fake_row("unr-1", 1)))
    before = kiln_view(engine)
    dead = f"http://127.0.0.1:{free_port()}"
    synced = kiln({**env, "KILN_IRONIC_URL": dead}, "nodes", "sync")
    assert synced.returncode == 1
    assert synced.stderr.count("\n") == 1 and synced.stderr.startswith("kiln: error: sync incomplete: ironic: ")
    assert f"Ironic at {dead} is unreachable" in synced.stderr
    assert kiln_view(engine) == before

    acted = kiln({**env, "KILN_IRONIC_URL": dead}, "nodes", "action", "power-on", "unr-1", "-o", "json")
    assert acted.returncode == 1
    (outcome,) = as_json(acted)
    assert outcome["error"].startswith(f"Ironic at {dead} is unreachable: ")
    unconfigured = {k: v for k, v in env.items() if k != "KILN_IRONIC_URL"}
    acted = kiln(unconfigured, "nodes", "action", "power-on", "unr-1", "-o", "json")
    assert acted.returncode == 1 and "Traceback" not in acted.stderr
    (outcome,) = as_json(acted)
    assert outcome["error"] == "provisioner 'ironic' is not configured: set KILN_IRONIC_URL to the Ironic API endpoint"
    assert kiln_view(engine)["unr-1"]["provision_state"] == "enroll"


# -- the HTTP API ------------------------------------------------------------------------------


@pytest.fixture
def ironic_client(engine: Engine, ironic_settings: Settings) -> Iterator[TestClient]:
    """A TestClient on an app configured with the real Ironic."""
    with TestClient(create_app(ironic_settings, engine=engine), raise_server_exceptions=False) as client:
        yield client


def api_node(name: str, n: int, **changes: Any) -> dict[str, Any]:
    return {"name": name, "provisioner": "ironic", "bmc_address": f"redfish://bmc-7-2-{n}.invalid/redfish/v1/Systems/1",
            "bmc_username": "admin", "bmc_password": "secret", "ironic_driver": "fake-hardware",
            "boot_mac": f"52:54:00:07:02:{n:02x}", "resource_class": "gpu.h200", "tags": ["api"], **changes}


def test_api_enrolls_in_ironic_and_reports_its_refusals(ironic_client: TestClient, world: World,
                                                         sdk: Connection) -> None:
    admin = world.headers("admin")
    created = ironic_client.post("/api/v1/nodes", json=api_node("api-1", 1), headers=admin)
    assert created.status_code == 201, created.text
    body = created.json()
    in_ironic = sdk.baremetal.get_node("api-1")
    assert body["external_id"] == in_ironic.id and body["provision_state"] == "enroll"
    assert (in_ironic.driver, in_ironic.resource_class) == ("fake-hardware", "gpu.h200")

    duplicate = ironic_client.post("/api/v1/nodes", json=api_node("api-1", 2), headers=admin)
    assert duplicate.status_code == 409 and "api-1" in duplicate.json()["detail"]
    sdk.baremetal.create_node(name="api-outside", driver="fake-hardware")
    clash = ironic_client.post("/api/v1/nodes", json=api_node("api-outside", 3), headers=admin)
    assert clash.status_code == 409
    assert clash.json()["detail"] == "cannot enroll node api-outside: A node with name api-outside already exists."
    unknown = ironic_client.post("/api/v1/nodes", json=api_node("api-nope", 4, ironic_driver="nope"), headers=admin)
    assert unknown.status_code == 400 and unknown.json()["detail"].startswith(
        "cannot enroll node api-nope: No valid host was found.")
    assert [n["name"] for n in ironic_client.get("/api/v1/nodes", headers=admin).json()] == ["api-1"]
    assert sorted(ironic_nodes(sdk)) == ["api-1", "api-outside"]

    node_url = f"/api/v1/nodes/{body['id']}"
    for action, state in (("manage", "manageable"), ("provide", "available")):
        started = ironic_client.post(f"{node_url}/actions", json={"action": action}, headers=admin)
        assert started.status_code == 202, started.text
        operations = wait_operations(ironic_client, admin, node_id=body["id"])
        (done,) = [o for o in operations if o["id"] == started.json()["id"]]
        assert (done["status"], done["result_state"]) == ("succeeded", state), done
    sdk.baremetal.set_node_maintenance(in_ironic.id, reason="burn-in failed")
    deploy = {"action": "deploy", "image_url": "http://images.example/x.qcow2", "image_checksum": "sha256:" + "b" * 64}
    started = ironic_client.post(f"{node_url}/actions", json=deploy, headers=admin).json()
    done = next(o for o in wait_operations(ironic_client, admin, node_id=body["id"]) if o["id"] == started["id"])
    assert (done["status"], done["node"]) == ("failed", "api-1")
    assert done["error"] == (
        "The provisioning operation can't be performed on node api-1 because it's in maintenance mode.")
    assert sdk.baremetal.get_node(in_ironic.id).provision_state == "available"
    events = ironic_client.get(f"{node_url}/events", headers=admin).json()
    assert events[0]["kind"] == "action" and "maintenance mode" in events[0]["message"]

    assert ironic_client.delete(node_url, headers=admin).status_code == 204
    assert sorted(ironic_nodes(sdk)) == ["api-outside"]
