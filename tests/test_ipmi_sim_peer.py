"""Kiln's IPMI collector against a BMC nobody here wrote: OpenIPMI's ipmi_sim 2.0.33 (C RMCP+
stack, tests/peers/ipmisim.sh) with a small DCMI module (tests/peers/ipmisim/dcmi_power.c),
ipmitool as referee.

Every expected value is ipmitool's live answer from the same ipmi_sim, never a constant. The
node is enrolled with `kiln nodes import` and polled with `kiln collect once`, as an operator
does it; what Kiln stored is read back from its database and `kiln nodes show`.

What ipmi_sim does (and so what this shows): DCMI only through the module, and only for
administrator sessions (cc 0xD4 below that, as for every netfn above transport in its
priv_table.c); RMCP+ cipher suites 0-14 (suite 3 works, 17 is refused at Open Session).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlmodel import Session, select

from collectors.iana import manufacturer_label
from collectors.ipmi import IpmiCollector, IpmiTarget
from collectors.models import HealthSnapshot
from kiln.db import create_db_engine
from tests.cli_helpers import base_env, run
from tests.conftest import TEST_SECRET_KEY
from tests.peers.harness import missing_peer, running_peer

NODE = "sim-node-1"
# ipmitool's `sensor` unit -> Kiln's value metric (ipmi_exporter's names)
METRIC_OF_UNIT = {"degrees C": "ipmi_temperature_celsius", "RPM": "ipmi_fan_speed_rpm",
                  "Volts": "ipmi_voltage_volts", "Watts": "ipmi_power_watts"}
# ipmitool's `sensor` status -> ipmi_exporter's state
STATE_OF_STATUS = {"ok": 0, "nc": 1, "cr": 2, "nr": 2}
# ipmitool's `fru print` field -> Kiln's fru fact
FRU_FIELDS = {"Board Mfg": "board_manufacturer", "Board Product": "board_product_name",
              "Board Serial": "board_serial", "Product Manufacturer": "product_manufacturer",
              "Product Name": "product_name", "Product Part Number": "product_part_number",
              "Product Serial": "product_serial", "Product Asset Tag": "asset_tag"}


@dataclass(frozen=True)
class SimBmc:
    """A running ipmi_sim: its state dir (watts and power files) and credentials."""

    state: Path
    host: str
    port: int
    username: str
    password: str

    def ipmitool(self, *args: str, privilege: str = "ADMINISTRATOR", suite: str = "3",
                 check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ipmitool over lanplus against this BMC."""
        return subprocess.run(["ipmitool", "-I", "lanplus", "-C", suite, "-L", privilege, "-H", self.host,
                               "-p", str(self.port), "-U", self.username, "-P", self.password, *args],
                              capture_output=True, text=True, timeout=30, check=check)

    def dcmi_watts(self) -> int:
        """ipmitool's DCMI instantaneous power reading (as administrator)."""
        reading = self.ipmitool("dcmi", "power", "reading").stdout
        found = re.search(r"Instantaneous power reading:\s+(\d+) Watts", reading)
        assert found, "ipmitool printed no DCMI reading"
        return int(found.group(1))

    def target(self, **overrides: object) -> IpmiTarget:
        return IpmiTarget(NODE, self.host, self.port, self.username, self.password, **overrides)


@pytest.fixture(scope="module")
def sim_bmc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimBmc]:
    """One ipmi_sim BMC on loopback, stopped after the module."""
    if shutil.which("ipmitool") is None:
        missing_peer("ipmisim", "ipmitool is not installed (tests/peers/ipmisim.sh install)")
    state = tmp_path_factory.mktemp("ipmisim")
    with running_peer("ipmisim", state, timeout=60):
        bmc = json.loads((state / "bmc.json").read_text())
        yield SimBmc(state, bmc["host"], bmc["port"], bmc["username"], bmc["password"])


def enroll(sim_bmc: SimBmc, tmp_path: Path, **settings: str) -> dict[str, str]:
    """A fresh SQLite Kiln with the ipmi_sim BMC enrolled through `kiln nodes import`; its env."""
    env = base_env(tmp_path, KILN_DATABASE_URL=f"sqlite:///{tmp_path / 'kiln.db'}", KILN_SECRET_KEY=TEST_SECRET_KEY,
                   **settings)
    migrated = run(env, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    nodes = tmp_path / "nodes.csv"
    nodes.write_text("name,provisioner,bmc_address,bmc_username,bmc_password\n"
                     f"{NODE},fake,ipmi://{sim_bmc.host}:{sim_bmc.port},{sim_bmc.username},{sim_bmc.password}\n")
    imported = run(env, "nodes", "import", str(nodes))
    assert imported.returncode == 0, imported.stderr
    return env


def collect_once(env: dict[str, str]) -> dict:
    """`kiln collect once` of the IPMI collector: the node's JSON line."""
    done = run(env, "collect", "once", "--collector", "ipmi", "--output", "json")
    (line,) = [json.loads(text) for text in done.stdout.splitlines()]
    assert done.returncode == (0 if line["ok"] else 1), done.stderr
    return line


def snapshots(env: dict[str, str]) -> dict[tuple[str, str | None], HealthSnapshot]:
    """What Kiln stored of the node's latest poll, by (metric, sensor name or ipmi_up's part)."""
    engine = create_db_engine(env["KILN_DATABASE_URL"])
    try:
        with Session(engine) as session:
            rows = session.exec(select(HealthSnapshot).where(HealthSnapshot.entity == NODE)).all()
    finally:
        engine.dispose()
    return {(row.metric, row.labels.get("name", row.labels.get("collector"))): row for row in rows}


def test_dcmi_watts_as_admin_equal_ipmitools_reading(sim_bmc: SimBmc, tmp_path: Path) -> None:
    env = enroll(sim_bmc, tmp_path, KILN_IPMI_PRIVILEGE="admin")
    for watts in ("347", "1203"):  # the module reads the file on every request
        (sim_bmc.state / "watts").write_text(watts + "\n")
        line = collect_once(env)
        assert line["ok"] and line["error"] is None, line
        stored = snapshots(env)
        assert stored[("ipmi_dcmi_power_consumption_watts", None)].value == sim_bmc.dcmi_watts()
        assert stored[("ipmi_up", "dcmi")].value == 1.0


def test_user_privilege_names_dcmi_and_the_privilege_and_admin_fixes_it(sim_bmc: SimBmc, tmp_path: Path) -> None:
    refused_tool = sim_bmc.ipmitool("dcmi", "power", "reading", privilege="USER", check=False)
    assert refused_tool.returncode != 0 and "Insufficient privilege level" in refused_tool.stdout + refused_tool.stderr
    env = enroll(sim_bmc, tmp_path)  # KILN_IPMI_PRIVILEGE's default: user
    line = collect_once(env)
    assert line["ok"], line  # the rest of the poll is kept
    assert line["error"].startswith("dcmi: ") and "user privilege" in line["error"], line
    assert "KILN_IPMI_PRIVILEGE" in line["error"] and ";" not in line["error"], line  # no other part failed
    stored = snapshots(env)
    assert ("ipmi_dcmi_power_consumption_watts", None) not in stored
    assert {part: stored[("ipmi_up", part)].value for part in ("chassis", "dcmi", "ipmi", "bmc", "fru")} == {
        "chassis": 1.0, "dcmi": 0.0, "ipmi": 1.0, "bmc": 1.0, "fru": 1.0}
    admin = collect_once({**env, "KILN_IPMI_PRIVILEGE": "admin"})
    assert admin["ok"] and admin["error"] is None, admin
    assert snapshots(env)[("ipmi_dcmi_power_consumption_watts", None)].value == sim_bmc.dcmi_watts()


def test_sensors_power_state_bmc_and_fru_agree_with_ipmitool(sim_bmc: SimBmc, tmp_path: Path) -> None:
    env = enroll(sim_bmc, tmp_path, KILN_IPMI_PRIVILEGE="admin")
    assert collect_once(env)["error"] is None
    stored = snapshots(env)
    # "CPU Temp         | 89.000     | degrees C  | nc    | na        | ..."
    sensors = [[cell.strip() for cell in row.split("|")[:4]] for row in sim_bmc.ipmitool("sensor").stdout.splitlines()]
    assert len(sensors) == 4, sensors
    for name, reading, unit, status in sensors:
        snap = stored[(METRIC_OF_UNIT[unit], name)]
        assert snap.value == pytest.approx(float(reading), abs=5e-4), name
        assert snap.state == STATE_OF_STATUS[status], name
    assert {s for *_, s in sensors} >= {"ok", "nc"}  # the emu file puts CPU Temp above its upper non-critical

    power = sim_bmc.ipmitool("chassis", "power", "status").stdout.strip()
    assert stored[("ipmi_chassis_power_state", None)].value == {"Chassis Power is on": 1.0,
                                                               "Chassis Power is off": 0.0}[power]

    facts = json.loads(run(env, "nodes", "show", NODE, "--output", "json").stdout)["facts"]
    mc = dict(re.findall(r"^(\S[^:]*?)\s+: (\S.*)$", sim_bmc.ipmitool("mc", "info").stdout, re.MULTILINE))
    # ipmitool prints the bare IANA number; Kiln writes FreeIPMI's "Name (number)" as ipmi_exporter does, and
    # the number alone for one FreeIPMI does not name (ipmi_sim's); ipmi_sim answers no system info parameters
    assert facts["bmc"] == {
        "device_id": mc["Device ID"], "firmware_revision": mc["Firmware Revision"], "ipmi_version": mc["IPMI Version"],
        "manufacturer_id": manufacturer_label(int(mc["Manufacturer ID"])), "product_id": mc["Product ID"].split()[0],
        "system_firmware_version": "N/A", "bmc_url": "N/A",
    }
    fru = dict(re.findall(r"^ (\S[^:]*?)\s+: (.*)$", sim_bmc.ipmitool("fru", "print", "0").stdout, re.MULTILINE))
    assert facts["fru"] == {kiln: fru[tool] for tool, kiln in FRU_FIELDS.items()}


def test_power_off_shows_in_kiln_as_in_ipmitool(sim_bmc: SimBmc) -> None:
    """ipmi_sim asks its chassis_control program for the power state at every request."""
    with IpmiCollector([sim_bmc.target()], privilege="admin") as collector:
        for power in ("0", "1"):
            (sim_bmc.state / "power").write_text(power + "\n")
            (result,) = collector.collect()
            kiln = [s.value for s in result.samples if s.metric == "ipmi_chassis_power_state"]
            tool = sim_bmc.ipmitool("chassis", "power", "status").stdout.strip().rsplit(" ", 1)[-1]
            assert kiln == [{"on": 1.0, "off": 0.0}[tool]] == [float(power)]


def test_cipher_suite_3_works_and_17_is_refused_as_ipmitool_sees_it(sim_bmc: SimBmc) -> None:
    assert sim_bmc.ipmitool("mc", "info", suite="3", check=False).returncode == 0
    assert sim_bmc.ipmitool("mc", "info", suite="17", check=False).returncode != 0
    with IpmiCollector([sim_bmc.target()], cipher_suite=17) as collector:
        (refused,) = collector.collect()
    assert not refused.ok and refused.error == "the BMC accepts none of the cipher suites 17"
    with IpmiCollector([sim_bmc.target()]) as collector:  # Kiln's default: 17, then 3
        (fallback,) = collector.collect()
        assert fallback.ok and collector.cipher_suite_of(NODE) == 3
    with IpmiCollector([sim_bmc.target(cipher_suite=3)], privilege="admin") as collector:
        (forced,) = collector.collect()
    watts = [s.value for s in forced.samples if s.metric == "ipmi_dcmi_power_consumption_watts"]
    assert forced.error is None and watts == [sim_bmc.dcmi_watts()]
