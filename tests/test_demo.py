"""`kiln demo` end to end: one command brings up the simulated fleet, collects from it for
real, bills a month of history, serves the API, and honours its scripting contract."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.browser import free_port
from tests.cli_helpers import KILN, base_env, run


class Demo:
    """A running `kiln demo`: its URL, data dir and banner."""

    def __init__(self, process: subprocess.Popen, url: str, data_dir: Path, banner: str) -> None:
        self.process, self.url, self.data_dir, self.banner = process, url, data_dir, banner

    def token(self, user: str, env: dict[str, str]) -> str:
        done = run({**env, "KILN_DATA_DIR": str(self.data_dir)}, "tokens", "create", user)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def get(self, path: str, token: str | None = None) -> tuple[int, str]:
        request = urllib.request.Request(self.url.rstrip("/") + path,
                                         headers={"Authorization": f"Bearer {token}"} if token else {})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()


SYNC_INTERVAL = 5  # seconds: the state sync runs several times while this module's tests run


def start_demo(data_dir: Path, env: dict[str, str], timeout: float = 300) -> Demo:
    """`kiln demo` on a free port, returned once its banner is printed."""
    port = free_port()
    process = subprocess.Popen([KILN, "demo", "--port", str(port), "--data-dir", str(data_dir)],
                               env={**env, "KILN_SYNC_INTERVAL": str(SYNC_INTERVAL)},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                pytest.fail("kiln demo exited before it was ready:\n" + "".join(lines))
            lines.append(line)
            if "ready" in line:
                break
        else:
            pytest.fail(f"kiln demo was not ready within {timeout} s:\n" + "".join(lines))
        while "Ctrl-C" not in lines[-1]:  # the rest of the banner
            lines.append(process.stdout.readline())
            assert lines[-1], "".join(lines)
    except BaseException:
        process.kill()
        raise
    url = re.search(r"http://\S+", next(line for line in lines if "ready" in line)).group(0)
    return Demo(process, url, data_dir, "".join(lines))


def stop(demo: Demo, sig: int = signal.SIGINT) -> int:
    """Stop the demo with `sig`; its exit status."""
    if demo.process.poll() is None:
        demo.process.send_signal(sig)
        try:
            return demo.process.wait(30)
        except subprocess.TimeoutExpired:
            demo.process.kill()
            raise
    return demo.process.returncode


def simulators_gone(demo: Demo) -> None:
    state = json.loads((demo.data_dir / "bmcsim" / "bmcs.json").read_text())
    for process in state["processes"]:
        with pytest.raises(ProcessLookupError):
            os.kill(process["pid"], 0)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    data_dir = tmp_path_factory.mktemp("demo")
    running = start_demo(data_dir / "d", base_env(data_dir))
    try:
        yield running
    finally:
        stop(running)


def test_banner_names_logins_and_tenants(demo: Demo) -> None:
    assert "ready at http://127.0.0.1:" in demo.banner
    for name in ("admin (infra-admin)", "finance (finance)", "alice (tenant acme)", "bob (tenant globex)"):
        assert name in demo.banner
    assert "tenants: acme, globex, initech, umbrella, hooli, stark" in demo.banner


def test_tokens_work_for_every_demo_user_and_tenancy_holds(demo: Demo, tmp_path: Path) -> None:
    env = base_env(tmp_path)
    tokens = {user: demo.token(user, env) for user in ("admin", "finance", "alice", "bob", "initech-admin")}
    status, body = demo.get("/api/v1/nodes", tokens["admin"])
    nodes = json.loads(body)
    assert status == 200 and len(nodes) == 48
    _, alice_body = demo.get("/api/v1/nodes", tokens["alice"])
    _, bob_body = demo.get("/api/v1/nodes", tokens["bob"])
    alice_nodes = {n["name"] for n in json.loads(alice_body)}
    bob_nodes = {n["name"] for n in json.loads(bob_body)}
    assert alice_nodes and bob_nodes and not alice_nodes & bob_nodes
    _, bills = demo.get("/api/v1/bills", tokens["alice"])
    assert {b["tenant"] for b in json.loads(bills)} == {"acme"}
    _, all_bills = demo.get("/api/v1/bills", tokens["finance"])
    assert {b["tenant"] for b in json.loads(all_bills)} == {"acme", "globex", "initech", "umbrella", "hooli", "stark"}
    assert all(Decimal(b["total"]) > 0 for b in json.loads(all_bills))
    # emissions: metered kWh × the demo zones' hourly intensity, acme's only for alice
    period = max(b["period"] for b in json.loads(bills))
    _, mine = demo.get(f"/api/v1/usage/emissions?period={period}", tokens["alice"])
    _, everyone = demo.get(f"/api/v1/usage/emissions?period={period}", tokens["finance"])
    mine, everyone = json.loads(mine), json.loads(everyone)
    assert [row["tenant"] for row in mine["tenants"]] == ["acme"] and mine["idle_kwh"] is None
    acme = next(row for row in everyone["tenants"] if row["tenant"] == "acme")
    assert Decimal(acme["kg_co2e"]) > 0 and Decimal(acme["kwh_without_intensity"]) == 0 and acme == mine["tenants"][0]
    assert Decimal(everyone["idle_kwh"]) > 0 and Decimal(everyone["idle_kg_co2e"]) > 0
    # the GPU instance lease of the MIG node: its tenant's, and invisible to another tenant
    instance = ("r3-n08", "initech", 7, "3g.40gb", "3/7")
    for user, expected in (("admin", [instance]), ("initech-admin", [instance]), ("alice", [])):
        status, body = demo.get("/api/v1/gpu-instance-leases", tokens[user])
        assert status == 200 and [(i["node"], i["tenant"], i["gpu_index"], i["profile"], i["compute_fraction"])
                                  for i in json.loads(body)] == expected, user


def test_collectors_read_the_simulators_for_real(demo: Demo, tmp_path: Path) -> None:
    token = demo.token("admin", base_env(tmp_path))
    _, text = demo.get("/metrics")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    watts = {s.labels["node"]: s.value for s in families["ipmi_dcmi_power_consumption_watts"].samples}
    assert len(watts) == 48 and all(v >= 40 for v in watts.values())
    state = {s.labels["target"]: s.value for s in families["kiln_collector_target_up"].samples}
    assert sum(state.values()) == len(state) == 49  # 48 BMCs and the dcgm-exporter
    nodes = {n["name"]: n for n in json.loads(demo.get("/api/v1/nodes", token)[1])}
    leased = next(n for n in nodes.values() if n["power_state"] == "power on")
    health = json.loads(demo.get(f"/api/v1/nodes/{leased['id']}/health", token)[1])
    assert health["bmc_up"] is True and health["power_on"] is True
    assert len(health["gpus"]) == 8 and all(g["values"]["gpu_util"] is not None for g in health["gpus"])


def test_the_fleet_stays_as_provisioned_and_physically_plausible_through_several_syncs(
        demo: Demo, tmp_path: Path) -> None:
    token = demo.token("admin", base_env(tmp_path))
    leased = {lease["node"] for lease in json.loads(demo.get("/api/v1/leases?active=true", token)[1])}
    time.sleep(4 * SYNC_INTERVAL)  # the module's other tests took a while too: at least three syncs by now
    nodes = json.loads(demo.get("/api/v1/nodes", token)[1])
    assert len(nodes) == 48 and {n["provision_state"] for n in nodes} == {"active"}
    assert {n["name"] for n in nodes if n["power_state"] == "power on"} == leased  # idle nodes are off
    assert 0 < len(leased) < 48
    for node in nodes:
        events = json.loads(demo.get(f"/api/v1/nodes/{node['id']}/events", token)[1])
        assert not [e for e in events if "changed outside Kiln" in e["message"]], (node["name"], events[:3])
        actions = [e["message"].split(" (")[0] for e in reversed(events) if e["kind"] == "action"]
        assert actions[:3] == ["manage succeeded", "provide succeeded", "deploy succeeded"]  # through Kiln's operations
        health = json.loads(demo.get(f"/api/v1/nodes/{node['id']}/health", token)[1])
        gpu_watts = sum(g["values"]["gpu_power"] for g in health["gpus"])
        if node["power_state"] == "power on":
            assert len(health["gpus"]) == 8 and health["power_watts"] > gpu_watts > 8 * 50, (node["name"], health)
        else:
            assert health["gpus"] == [] and health["power_watts"] == 40, (node["name"], health)
            assert max(s["value"] for s in health["sensors"] if s["unit"] == "celsius") < 30


def test_ctrl_c_stops_everything(demo: Demo) -> None:
    assert stop(demo, signal.SIGINT) == 0
    simulators_gone(demo)


def test_a_restart_keeps_the_fleet_and_sigterm_stops_everything(demo: Demo, tmp_path: Path) -> None:
    """The same data dir again (as after a reboot): no new seed, the same states; SIGTERM (systemd,
    a container runtime, `kill`) stops the demo and its simulators like Ctrl-C."""
    again = start_demo(demo.data_dir, base_env(tmp_path), timeout=180)
    try:
        assert "creating the demo fleet" not in again.banner
        token = again.token("admin", base_env(tmp_path))
        nodes = json.loads(again.get("/api/v1/nodes", token)[1])
        assert {n["provision_state"] for n in nodes} == {"active"}
        assert sum(n["power_state"] == "power off" for n in nodes) == 6
    finally:
        status = stop(again, signal.SIGTERM)
    assert status == 0
    simulators_gone(again)
