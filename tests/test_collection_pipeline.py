"""The IPMI collector end to end against simulated BMCs: `kiln collect once`, what it stores,
`/metrics` under ipmi_exporter's names, and two `kiln worker` replicas sharing the targets."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine
from sqlmodel import Session, select

from collectors.models import CollectorTargetState, HealthSnapshot, NodeEnergyHour
from fleet.models import Node
from kiln.security import SecretBox
from tests.cli_helpers import KILN, base_env, run
from tests.conftest import TEST_SECRET_KEY
from tests.factories import World
from tests.fleet_helpers import make_node_row
from tests.peers.harness import running_peer


@pytest.fixture(scope="module")
def bmcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[dict]]:
    """Four simulated BMCs; bmc-0002 has a critical GPU2 Temp."""
    state = tmp_path_factory.mktemp("bmcsim")
    with running_peer("bmcsim", state, "4", "--critical-every", "3"):
        yield json.loads((state / "bmcs.json").read_text())["bmcs"]


def enroll(world: World, bmcs: list[dict], wrong_password: str | None = None) -> None:
    """A node row per BMC (node name = BMC name) with its encrypted credentials."""
    box = SecretBox(TEST_SECRET_KEY)
    for bmc in bmcs:
        password = "not-the-password" if bmc["name"] == wrong_password else bmc["password"]
        make_node_row(world, gpus=0, name=bmc["name"], bmc_address=f"ipmi://{bmc['host']}:{bmc['port']}",
                      bmc_username=bmc["username"], bmc_password_encrypted=box.encrypt(password))


def kiln_env(engine: Engine, tmp_path: Path, **extra: str) -> dict[str, str]:
    return base_env(tmp_path, KILN_DATABASE_URL=engine.url.render_as_string(hide_password=False),
                    KILN_SECRET_KEY=TEST_SECRET_KEY, **extra)


def test_collect_once_reports_each_target_and_stores_health(
    engine: Engine, world: World, bmcs: list[dict], client: TestClient, tmp_path: Path
) -> None:
    enroll(world, bmcs, wrong_password="bmc-0003")
    done = run(kiln_env(engine, tmp_path), "collect", "once", "--collector", "ipmi", "--output", "json")
    assert done.returncode == 1, done.stderr  # one target failed
    lines = {row["target"]: row for row in map(json.loads, done.stdout.splitlines())}
    assert sorted(lines) == [b["name"] for b in bmcs]
    for name in ("bmc-0000", "bmc-0001", "bmc-0002"):
        assert lines[name]["ok"] and lines[name]["error"] is None and lines[name]["samples"] > 20, lines[name]
        assert 0 < lines[name]["seconds"] < 2
    assert lines["bmc-0003"] == {**lines["bmc-0003"], "ok": False, "timed_out": False,
                                 "error": "authentication failed (check the BMC username/password)"}
    with Session(engine) as session:
        snaps = {(s.entity, s.metric, s.labels.get("name")): s for s in session.exec(select(HealthSnapshot))}
        nodes = {n.name: n for n in session.exec(select(Node))}
    for bmc in bmcs[:3]:
        expected = bmc["expected"]
        assert snaps[(bmc["name"], "ipmi_dcmi_power_consumption_watts", None)].value == expected["dcmi"]["current_watts"]
        for sensor in expected["sensors"]:
            if sensor["unit"] == "degrees C":
                snap = snaps[(bmc["name"], "ipmi_temperature_celsius", sensor["name"])]
                assert snap.value == pytest.approx(sensor["value"])
                assert snap.state == {"ok": 0, "nc": 1, "cr": 2, "nr": 2}[sensor["status"]]
        assert nodes[bmc["name"]].facts["fru"]["product_serial"] == expected["fru"]["product_serial"]

    metrics = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    watts = {s.labels["node"]: s.value for s in metrics["ipmi_dcmi_power_consumption_watts"].samples}
    assert watts == {b["name"]: b["expected"]["dcmi"]["current_watts"] for b in bmcs[:3]}
    up = {(s.labels["node"], s.labels["collector"]): s.value for s in metrics["ipmi_up"].samples}
    assert up[("bmc-0000", "dcmi")] == 1.0 and up[("bmc-0003", "ipmi")] == 0.0
    assert {s.labels["node"] for s in metrics["ipmi_up"].samples} == {b["name"] for b in bmcs}
    hot = [s for s in metrics["ipmi_temperature_state"].samples if s.value == 2.0]
    assert {(s.labels["node"], s.labels["name"]) for s in hot} == {
        (b["name"], c) for b in bmcs[:3] for c in b["expected"]["critical_sensors"]}
    target_up = {s.labels["target"]: s.value for s in metrics["kiln_collector_target_up"].samples}
    assert target_up == {"bmc-0000": 1.0, "bmc-0001": 1.0, "bmc-0002": 1.0, "bmc-0003": 0.0}


def test_collect_once_on_named_nodes_and_its_errors(
    engine: Engine, world: World, bmcs: list[dict], tmp_path: Path
) -> None:
    enroll(world, bmcs)
    env = kiln_env(engine, tmp_path)
    done = run(env, "collect", "once", "--nodes", "bmc-0001,bmc-0002", "--output", "json")
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["target"] for line in done.stdout.splitlines()] == ["bmc-0001", "bmc-0002"]
    table = run(env, "collect", "once", "--collector", "ipmi", "--nodes", "bmc-0000")
    assert table.returncode == 0 and "ok 1, failed 0, timed out 0" in table.stdout
    for args, message in (
        (["--nodes", "nope"], "kiln: error: --nodes: ipmi does not poll nope (it polls 4 targets)\n"),
        (["--collector", "snmp"], "kiln: error: --collector: unknown collector 'snmp': expected one of ipmi, redfish, dcgm, rocm, "
                                  "kubernetes, opencost, dcgm-exporter, rocm-exporter\n"),
        (["--collector", "dcgm"], "kiln: error: --collector: collector dcgm is not configured: set KILN_PROMETHEUS_URL\n"),
    ):
        failed = run(env, "collect", "once", *args)
        assert (failed.returncode, failed.stderr) == (1, message)


@pytest.mark.postgresql_only  # replicas share targets through PostgreSQL row locks
def test_two_workers_share_the_bmcs_and_one_takes_over(
    engine: Engine, world: World, bmcs: list[dict], tmp_path: Path
) -> None:
    enroll(world, bmcs)
    env = kiln_env(engine, tmp_path, KILN_IPMI_INTERVAL="5", KILN_SYNC_INTERVAL="3600")
    workers = {name: subprocess.Popen([KILN, "worker"], env={**env, "KILN_WORKER_NAME": name},
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
               for name in ("w1", "w2")}
    try:
        owners = wait_for(engine, lambda o: set(o.values()) == {"w1", "w2"}, 25)
        assert sorted(owners.values()) == ["w1", "w1", "w2", "w2"]  # two each, no target twice
        workers["w1"].send_signal(signal.SIGKILL)  # no clean shutdown: its leases must lapse
        workers["w1"].wait(10)
        killed_at = time.monotonic()
        owners = wait_for(engine, lambda o: set(o.values()) == {"w2"}, 20)
        # lease = 5 s + 2 s slack; w2 claims on its next 5 s cycle after that
        assert time.monotonic() - killed_at < 7 + 5 + 2
        before = polled_at(engine)
        wait_for(engine, lambda _o: all(polled_at(engine)[n] > before[n] for n in before), 10)
    finally:
        for process in workers.values():
            process.send_signal(signal.SIGINT)
        for name, process in workers.items():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        errors = workers["w2"].stderr.read() if workers["w2"].stderr else ""
    assert "Traceback" not in errors, errors
    with Session(engine) as session:  # energy is being integrated from the polls
        assert session.exec(select(NodeEnergyHour)).first() is not None


def lease_owners(engine: Engine) -> dict[str, str | None]:
    with Session(engine) as session:
        return {r.target: r.lease_owner for r in session.exec(
            select(CollectorTargetState).where(CollectorTargetState.collector == "ipmi"))}


def polled_at(engine: Engine) -> dict:
    with Session(engine) as session:
        return {r.target: r.last_success_at for r in session.exec(
            select(CollectorTargetState).where(CollectorTargetState.collector == "ipmi"))}


def wait_for(engine: Engine, condition, timeout: float) -> dict[str, str | None]:
    deadline = time.monotonic() + timeout
    while True:
        owners = lease_owners(engine)
        if len(owners) == 4 and condition(owners):
            return owners
        if time.monotonic() > deadline:
            pytest.fail(f"workers did not converge within {timeout} s: {owners}")
        time.sleep(0.5)
