"""benchmarks/ipmi_poll.py's parts: the value checks both sides go through (they must pass on
what the simulator serves and fail when it differs), and the two-worker fleet mode on
PostgreSQL at a small scale (benchmarks/ipmi_fleet.py: `--fleet N --quick`)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.ipmi_check import exporter_values, facts_errors, kiln_values, reading_errors
from collectors.ipmi import IpmiCollector, IpmiTarget
from tests.peers.harness import running_peer

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bmcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[dict]]:
    state = tmp_path_factory.mktemp("bmcsim")
    with running_peer("bmcsim", state, "3"):
        yield json.loads((state / "bmcs.json").read_text())["bmcs"]


def test_kiln_values_pass_the_check_and_a_changed_expectation_fails_it(bmcs: list[dict]) -> None:
    targets = [IpmiTarget(b["name"], b["host"], b["port"], b["username"], b["password"]) for b in bmcs]
    with IpmiCollector(targets, facts_first=True) as collector:
        results = collector.collect()
    for result, bmc in zip(results, bmcs):
        assert reading_errors(bmc["expected"], kiln_values(result.samples)) == []
        assert facts_errors(bmc["expected"], result.samples) == []
        other = copy.deepcopy(bmc["expected"])
        other["dcmi"]["current_watts"] += 40
        other["sensors"][7]["value"] += 0.06  # 12V, one step
        other["sensors"][0]["status"] = "cr"
        other["fru"]["product_serial"] = "elsewhere"
        wrong = reading_errors(other, kiln_values(result.samples))
        assert len(wrong) == 3 and wrong[0].startswith("DCMI watts") and "12V" in wrong[2], wrong
        fru = next(dict(s.labels) for s in result.samples if s.metric == "ipmi_fru_info")
        assert facts_errors(other, result.samples) == [f"ipmi_fru_info: {fru}"]
    assert facts_errors(bmcs[0]["expected"], [s for s in results[0].samples if "info" not in s.metric]) is None


def test_exporter_text_is_read_by_sensor_name_and_id(bmcs: list[dict]) -> None:
    """The exposition ipmi_exporter 1.6.1 writes (label order id, name), values as FreeIPMI prints them."""
    exp = bmcs[0]["expected"]
    lines = ["ipmi_chassis_power_state 1", f"ipmi_dcmi_power_consumption_watts {exp['dcmi']['current_watts']}"]
    for i, sensor in enumerate(exp["sensors"], start=1):
        state = {"ok": 0, "nc": 1, "cr": 2, "nr": 2}[sensor["status"]]
        lines += [f'ipmi_sensor_value{{id="{i}",name="{sensor["name"]}",type="x"}} {sensor["value"] + 1e-9}',
                  f'ipmi_sensor_state{{id="{i}",name="{sensor["name"]}",type="x"}} {state}']
    assert reading_errors(exp, exporter_values("\n".join(lines))) == []
    assert reading_errors(exp, exporter_values("\n".join(lines[:-1]))) != []  # a state missing


def test_fleet_mode_two_workers_share_the_bmcs_and_the_survivor_takes_over() -> None:
    done = subprocess.run([sys.executable, "-m", "benchmarks.ipmi_poll", "--fleet", "40", "--quick"], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    line = json.loads(done.stdout.strip().splitlines()[-1])
    assert (line["benchmark"], line["scale"], line["worker_procs"], line["interval_s"]) == ("ipmi_fleet", 40, 2, 10)
    steady, takeover = line["steady"], line["takeover"]
    assert steady["gaps"] >= 40 and steady["polled_twice"] == 0 and steady["skipped"] == 0
    assert steady["ok_share_min"] == 1.0 and line["polled_once_per_cycle"]
    assert takeover["orphans"] > 0 and takeover["orphans_polled"] == takeover["orphans"]
    assert takeover["worker"] == "w1" and takeover["bmcs"] == 40 and takeover["ok"] == 40
    assert takeover["seconds"] is not None and line["ok"] is (takeover["seconds"] <= 10)
