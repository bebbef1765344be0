"""benchmarks/redfish_poll.py's parts: the emulated BMC fleet (a stand-in serving DMTF's
public-tower mockup verbatim, benchmarks/redfish_fleet.py) and both sides' value checks, which
must pass on the mockup and fail when the expectation differs from what the BMCs serve."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest

from benchmarks.redfish_fleet import fleet_stats, running_fleet
from benchmarks.redfish_poll import MOCKUP, SUSHY_LOOP, USERNAME, expected_readings, run_side, sushy_python
from tests.peers.harness import missing_peer

SESSIONS = "/redfish/v1/SessionService/Sessions"
ENVIRONMENT = "/redfish/v1/Chassis/Tower/EnvironmentMetrics"


def test_fleet_serves_the_mockup_verbatim_behind_per_bmc_sessions() -> None:
    with running_fleet(MOCKUP, 3, processes=2, latency_ms=0, password="s3cret") as (port, addresses, _):
        bmc0, bmc2 = (f"http://{addresses[i]}:{port}" for i in (0, 2))  # both served by process 0
        assert len(set(addresses)) == 3 and all(a.startswith("127.") for a in addresses)
        root = httpx.get(bmc0 + "/redfish/v1/")
        assert root.status_code == 200 and root.content == (MOCKUP / "index.json").read_bytes()
        assert httpx.get(bmc0 + ENVIRONMENT).status_code == 401
        assert httpx.post(bmc0 + SESSIONS, json={"UserName": USERNAME, "Password": "wrong"}).status_code == 401
        login = httpx.post(bmc0 + SESSIONS, json={"UserName": USERNAME, "Password": "s3cret"})
        assert login.status_code == 201 and login.headers["Location"].startswith(SESSIONS + "/")
        token = {"X-Auth-Token": login.headers["X-Auth-Token"]}
        env = httpx.get(bmc0 + ENVIRONMENT, headers=token)
        assert env.content == (MOCKUP / "Chassis/Tower/EnvironmentMetrics/index.json").read_bytes()
        assert httpx.get(bmc2 + ENVIRONMENT, headers=token).status_code == 401  # a session is one BMC's
        assert httpx.get(bmc2 + ENVIRONMENT, auth=(USERNAME, "s3cret")).status_code == 200
        assert httpx.get(bmc0 + "/redfish/v1/Managers", headers=token).status_code == 404  # not vendored
        assert httpx.delete(bmc0 + login.headers["Location"], headers=token).status_code == 204
        assert httpx.get(bmc0 + ENVIRONMENT, headers=token).status_code == 401
        stats = fleet_stats(port, 2)
    assert stats["logins"] == 1 and stats["sessions_deleted"] == 1 and stats["GET 200"] == 3


def test_fleet_holds_every_answer_back_by_its_latency() -> None:
    with running_fleet(MOCKUP, 1, processes=1, latency_ms=150) as (port, addresses, _):
        with httpx.Client(base_url=f"http://{addresses[0]}:{port}") as client:
            client.get("/redfish/v1/")  # connection set up
            began = time.monotonic()
            for _ in range(3):
                assert client.get("/redfish/v1/").status_code == 200
            assert time.monotonic() - began >= 0.45


def test_expected_readings_come_from_the_mockup_files() -> None:
    """The figures README (tests/data/upstream/redfish) documents for public-tower."""
    system, expected = expected_readings(MOCKUP)
    assert system == "/redfish/v1/Systems/437XR1238R2"
    assert expected == {"power_on": True, "watts": 974, "energy_kwh": 2 * 325675, "psus": 2, "temperatures": 2,
                        "fans": 4, "gpus": 2, "log_entries": 2, "firmware": 2}


@pytest.mark.parametrize("side", ["kiln", "baseline"])
def test_each_side_reads_every_value_and_notices_a_wrong_one(side: str) -> None:
    if side == "kiln":
        command = [sys.executable, "-m", "benchmarks.redfish_poll", "--kiln-worker"]
    else:
        try:
            command = [sushy_python(), str(SUSHY_LOOP)]
        except (subprocess.CalledProcessError, OSError) as exc:
            missing_peer("ironic (its venv has sushy)", str(exc))
    system, expected = expected_readings(MOCKUP)
    with running_fleet(MOCKUP, 3, processes=1, latency_ms=0, password="pw") as (port, addresses, pids):
        job = {"targets": [{"url": f"http://{a}:{port}", "system": system} for a in addresses],
               "username": USERNAME, "workers": 2, "polls": 2, "expected": expected}
        right = run_side(side, command, job, "pw", port, pids)
        wrong = run_side(side, command, {**job, "expected": {**expected, "watts": 975}, "polls": 1}, "pw", port, pids)
        refused = run_side(side, command, {**job, "polls": 1}, "not-the-password", port, pids)
    assert [(p["errors"], p["wrong"]) for p in right["polls"]] == [(0, 0), (0, 0)]
    assert right["requests"]["logins"] == 3 and right["requests"]["sessions_deleted"] == 3
    assert right["requests"]["GET 200"] >= 2 * 3 * 30  # every resource of each BMC, each poll
    assert (wrong["polls"][0]["errors"], wrong["polls"][0]["wrong"]) == (0, 3)
    assert refused["polls"][0]["errors"] == 3
