"""IpmiCollector against the real IPMI 2.0 BMC simulator (collectors/sim/bmc, started by tests/peers/bmcsim.sh), ipmitool as referee.

Expected values come from the simulator's bmcs.json; faults and power changes go through its
control port. Session reuse is observed on the wire, through a UDP relay in front of a BMC.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import math
import re
import selectors
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyipmi.errors import MessageStatusCodeError, RetryError
from pyipmi.interfaces.rmcpplus import CIPHER_SUITES, SessionKeys

from collectors import ipmi_session
from collectors.base import Sample, TargetResult
from collectors.ipmi import IpmiCollector, IpmiTarget, describe_failure, sensor_layout, severity
from collectors.ipmi_rmcpplus import SpecSessionKeys
from collectors.ipmi_session import BmcConnection, SensorRecord, device_facts
from collectors.sim.bmc.sim import control
from tests.peers.harness import running_peer


# bmcs.json unit -> (value metric, Sample.unit), as ipmi_exporter names them
EXPECTED_METRIC = {
    "degrees C": ("ipmi_temperature_celsius", "celsius"),
    "RPM": ("ipmi_fan_speed_rpm", "rpm"),
    "Volts": ("ipmi_voltage_volts", "volts"),
    "Watts": ("ipmi_power_watts", "watts"),
}
STATE_OF_STATUS = {"ok": 0.0, "nc": 1.0, "cr": 2.0, "nr": 2.0}
# ipmitool's sdr elist status -> ipmi_exporter's state
IPMITOOL_STATE = {"ok": 0.0, "lnc": 1.0, "unc": 1.0, "lcr": 2.0, "ucr": 2.0, "lnr": 2.0, "unr": 2.0}


class Sim:
    """A running simulator: its state dir and bmcs.json entries."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.bmcs = json.loads((state / "bmcs.json").read_text())["bmcs"]

    def targets(self, **overrides: object) -> list[IpmiTarget]:
        """One IpmiTarget per BMC (node name = BMC name)."""
        return [IpmiTarget(b["name"], b["host"], b["port"], b["username"], b["password"], **overrides)
                for b in self.bmcs]

    def bmc(self, name: str) -> dict:
        return next(b for b in self.bmcs if b["name"] == name)


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    """Six BMCs offering suites 3 and 17; bmc-0002 and bmc-0005 have a critical GPU2 Temp."""
    state = tmp_path_factory.mktemp("bmcsim")
    with running_peer("bmcsim", state, "6", "--critical-every", "3"):
        yield Sim(state)


@pytest.fixture(scope="module")
def sim3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    """Two BMCs offering cipher suite 3 only."""
    state = tmp_path_factory.mktemp("bmcsim3")
    with running_peer("bmcsim", state, "2", "--cipher-suites", "3", "--name-prefix", "old-"):
        yield Sim(state)


def by_metric(result: TargetResult) -> dict[tuple[str, tuple], Sample]:
    return {(s.metric, tuple(sorted(s.labels.items()))): s for s in result.samples}


def value(result: TargetResult, metric: str, **labels: str) -> float:
    matches = [s.value for s in result.samples if s.metric == metric and all(s.labels.get(k) == v
                                                                             for k, v in labels.items())]
    assert len(matches) == 1, (metric, labels, matches)
    return matches[0]


def test_every_reading_matches_the_simulator(sim: Sim) -> None:
    with IpmiCollector(sim.targets()) as collector:
        cold = collector.collect()
        results = collector.collect()  # the device id and FRU are read in the poll after first contact
    assert [r.target for r in results] == [r.target for r in cold] == [b["name"] for b in sim.bmcs]
    facts = ("ipmi_bmc_info", "ipmi_fru_info")
    for first, second in zip(cold, results):  # the first poll: every reading, no facts yet
        assert first.ok and first.error is None, first.error
        assert {(k, s.value) for k, s in by_metric(first).items()} == {
            (k, s.value) for k, s in by_metric(second).items() if k[0] not in facts}
    for result, bmc in zip(results, sim.bmcs):
        exp = bmc["expected"]
        assert result.ok and result.error is None, result.error
        assert all(s.source == "ipmi" and s.entity == bmc["name"] for s in result.samples)
        assert {s.labels["collector"]: s.value for s in result.samples if s.metric == "ipmi_up"} == {
            "chassis": 1.0, "dcmi": 1.0, "ipmi": 1.0, "bmc": 1.0, "fru": 1.0}
        assert value(result, "ipmi_chassis_power_state") == 1.0
        watts = [s for s in result.samples if s.metric == "ipmi_dcmi_power_consumption_watts"]
        assert [(s.value, s.unit, dict(s.labels)) for s in watts] == [(exp["dcmi"]["current_watts"], "watts", {})]
        samples = by_metric(result)
        for record_id, sensor in enumerate(exp["sensors"], start=1):
            metric, unit = EXPECTED_METRIC[sensor["unit"]]
            labels = (("id", str(record_id)), ("name", sensor["name"]))
            reading = samples[(metric, labels)]
            assert (reading.value, reading.unit) == (sensor["value"], unit), sensor["name"]
            state = samples[(metric.rsplit("_", 1)[0] + "_state", labels)]
            assert (state.value, state.unit) == (STATE_OF_STATUS[sensor["status"]], "state"), sensor["name"]
        assert len([s for s in result.samples if s.metric.endswith("_state") and "id" in s.labels]) == 10
        fru = exp["fru"]
        assert samples[("ipmi_fru_info", tuple(sorted({
            "product_manufacturer": fru["product_manufacturer"], "product_name": fru["product_name"],
            "product_part_number": fru["product_part_number"], "product_serial": fru["product_serial"],
            "board_manufacturer": fru["board_manufacturer"], "board_product_name": fru["board_product"],
            "board_serial": fru["board_serial"], "asset_tag": fru["asset_tag"]}.items())))].value == 1.0
        info = [s.labels for s in result.samples if s.metric == "ipmi_bmc_info"]
        dev = exp["device_id"]
        assert info == [{"firmware_revision": dev["firmware"], "ipmi_version": dev["ipmi_version"],
                         "manufacturer_id": f"Reserved ({dev['manufacturer_id']})",  # FreeIPMI's name of 0
                         "product_id": str(dev["product_id"]), "device_id": str(dev["device_id"]),
                         "system_firmware_version": dev["system_firmware_version"], "bmc_url": "N/A"}]
    critical = {r.target for r in results if value(r, "ipmi_temperature_state", name="GPU2 Temp") == 2.0}
    assert critical == {b["name"] for b in sim.bmcs if b["expected"]["critical_sensors"]} == {"bmc-0002", "bmc-0005"}


@pytest.mark.skipif(shutil.which("ipmitool") is None, reason="ipmitool is not installed")
@pytest.mark.parametrize("suite", ["3", "17"])
def test_values_agree_with_ipmitool(sim: Sim, suite: str) -> None:
    """ipmitool, an IPMI client nobody here wrote, over both cipher suites (17: SHA-256 keys)."""
    bmc = sim.bmc("bmc-0005")
    base = ["ipmitool", "-I", "lanplus", "-C", suite, "-H", bmc["host"], "-p", str(bmc["port"]),
            "-U", bmc["username"], "-P", bmc["password"]]
    elist = subprocess.run(base + ["sdr", "elist"], capture_output=True, text=True, timeout=20, check=True).stdout
    dcmi = subprocess.run(base + ["dcmi", "power", "reading"], capture_output=True, text=True, timeout=20,
                          check=True).stdout
    with IpmiCollector([t for t in sim.targets() if t.node == "bmc-0005"]) as collector:
        (result,) = collector.collect()
    assert result.ok, result.error
    # "GPU2 Temp        | 05h | cr  | 11.2 | 92 degrees C"
    tool = {m.group(1).strip(): (m.group(2), float(m.group(3)), m.group(4)) for m in
            re.finditer(r"^(.+?)\s*\|\s*\w+h\s*\|\s*(\w+)\s*\|[^|]*\|\s*([\d.]+) (degrees C|RPM|Volts|Watts)$",
                        elist, re.MULTILINE)}
    assert len(tool) == 10 and tool["GPU2 Temp"][0] == "ucr", elist
    for name, (status, reading, unit) in tool.items():
        metric = EXPECTED_METRIC[unit][0]
        assert value(result, metric, name=name) == reading, name
        assert value(result, metric.rsplit("_", 1)[0] + "_state", name=name) == IPMITOOL_STATE[status], name
    watts = re.search(r"Instantaneous power reading:\s+(\d+) Watts", dcmi)
    assert watts and value(result, "ipmi_dcmi_power_consumption_watts") == float(watts.group(1))


@pytest.fixture(scope="module")
def sim_admin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    """Two BMCs that answer DCMI only to administrator sessions, as OpenIPMI's ipmi_sim does."""
    state = tmp_path_factory.mktemp("bmcsim-admin")
    with running_peer("bmcsim", state, "2", "--dcmi-privilege", "4", "--name-prefix", "adm-"):
        yield Sim(state)


def test_dcmi_behind_a_higher_privilege_says_so_and_the_setting_or_the_node_fixes_it(sim_admin: Sim) -> None:
    with IpmiCollector(sim_admin.targets()) as collector:  # KILN_IPMI_PRIVILEGE's default: user
        refused = collector.collect()
    for result in refused:
        assert result.ok and value(result, "ipmi_up", collector="dcmi") == 0.0
        assert value(result, "ipmi_up", collector="ipmi") == 1.0  # sensors still read
        assert not [s for s in result.samples if s.metric == "ipmi_dcmi_power_consumption_watts"]
        assert result.error == ("dcmi: the BMC refuses it at the user privilege level: raise the node's "
                                "ipmi_privilege or KILN_IPMI_PRIVILEGE (operator, admin)")
    with IpmiCollector(sim_admin.targets(), privilege="admin") as collector:
        admitted = collector.collect()
    for result, bmc in zip(admitted, sim_admin.bmcs):
        assert result.ok and result.error is None, result.error
        assert value(result, "ipmi_dcmi_power_consumption_watts") == bmc["expected"]["dcmi"]["current_watts"]
    mixed = sim_admin.targets()
    mixed[1] = IpmiTarget(**{**mixed[1].__dict__, "privilege": "admin"})  # the node's own setting wins
    with IpmiCollector(mixed) as collector:
        first, second = collector.collect()
    assert first.error and "privilege" in first.error and second.error is None
    bmc = sim_admin.bmc(second.target)
    base = ["ipmitool", "-I", "lanplus", "-C", "17", "-H", bmc["host"], "-p", str(bmc["port"]),
            "-U", bmc["username"], "-P", bmc["password"], "dcmi", "power", "reading"]
    as_user = subprocess.run(base[:-3] + ["-L", "USER"] + base[-3:], capture_output=True, text=True, timeout=20)
    assert as_user.returncode != 0  # ipmitool is refused at user level too
    reading = subprocess.run(base, capture_output=True, text=True, timeout=20, check=True).stdout  # its default: admin
    watts = re.search(r"Instantaneous power reading:\s+(\d+) Watts", reading)
    assert watts and value(second, "ipmi_dcmi_power_consumption_watts") == float(watts.group(1))


def test_power_off_shows_in_chassis_state_and_watts(sim: Sim) -> None:
    bmc = sim.bmc("bmc-0001")
    target = [t for t in sim.targets() if t.node == "bmc-0001"]
    with IpmiCollector(target) as collector:
        (before,) = collector.collect()
        control(sim.state, "bmc-0001", "power", state="off")
        try:
            (off,) = collector.collect()
        finally:
            control(sim.state, "bmc-0001", "power", state="on")
        (on,) = collector.collect()
    exp = bmc["expected"]
    assert value(before, "ipmi_chassis_power_state") == 1.0
    assert off.ok and value(off, "ipmi_chassis_power_state") == 0.0
    assert value(off, "ipmi_dcmi_power_consumption_watts") == exp["dcmi_when_off"]["current_watts"] == 40
    for name, watts in exp["sensors_when_off"].items():
        assert value(off, "ipmi_power_watts", name=name) == watts
    assert value(on, "ipmi_chassis_power_state") == 1.0
    assert value(on, "ipmi_dcmi_power_consumption_watts") == exp["dcmi_when_on"]["current_watts"]
    assert [(r.ok, r.error) for r in collector.collect()] == [(False, "the IPMI collector is closed")]


def test_dead_frozen_and_refusing_bmcs_fail_alone_within_their_timeout(sim: Sim) -> None:
    timeout, retries = 0.5, 1
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()  # nothing listens there now: ICMP port unreachable
    targets = sim.targets() + [IpmiTarget("gone", "127.0.0.1", closed_port, "admin", "password"),
                               IpmiTarget("nowhere", "bmc.invalid", 623, "admin", "password")]
    bound = (retries + 1) * timeout + 0.4  # one unanswered try + one unanswered ping, plus slack
    with IpmiCollector(targets, timeout=timeout, retries=retries) as collector:
        first = {r.target: r for r in collector.collect()}
        assert all(first[b["name"]].ok for b in sim.bmcs)
        assert first["gone"].error.startswith("connection refused") and not first["gone"].timed_out
        assert first["nowhere"].error.startswith("cannot resolve the BMC address bmc.invalid:623")
        control(sim.state, "bmc-0001", "fault", mode="freeze")
        control(sim.state, "bmc-0004", "fault", mode="authfail")  # also drops its open sessions
        try:
            started = time.monotonic()
            second = {r.target: r for r in collector.collect()}
            wall = time.monotonic() - started
            third = {r.target: r for r in collector.collect()}  # no session left: ping / RAKP fail at once
        finally:
            control(sim.state, "*", "fault", mode="normal")
        fourth = {r.target: r for r in collector.collect()}
        assert collector.stats("bmc-0004")["sessions_opened"] == 2
    assert wall < bound, wall
    for results in (second, third):
        frozen, refused = results["bmc-0001"], results["bmc-0004"]
        assert (frozen.ok, frozen.error, frozen.timed_out) == (False, "no response within 0.5 s", True)
        assert frozen.seconds < bound
        assert (refused.ok, refused.error, refused.timed_out) == (
            False, "authentication failed (check the BMC username/password)", False)
        assert {s.labels["collector"]: s.value for s in frozen.samples if s.metric == "ipmi_up"} == dict.fromkeys(
            ["chassis", "dcmi", "ipmi", "bmc", "fru"], 0.0)
        for name in ("bmc-0000", "bmc-0002", "bmc-0003", "bmc-0005"):
            assert results[name].ok and results[name].seconds < timeout, (name, results[name])
    assert third["bmc-0001"].seconds < timeout + 0.3  # fresh contact: only the ping waits
    assert all(fourth[b["name"]].ok for b in sim.bmcs)  # and everything recovers


def test_a_bmc_that_lost_the_session_is_read_in_the_same_poll(sim: Sim) -> None:
    target = [t for t in sim.targets() if t.node == "bmc-0003"]
    with IpmiCollector(target, timeout=0.3) as collector:
        collector.collect()
        control(sim.state, "bmc-0003", "fault", mode="authfail")  # drops every session of the BMC
        control(sim.state, "bmc-0003", "fault", mode="normal")
        (result,) = collector.collect()
        assert result.ok, result.error
        assert collector.stats("bmc-0003") == {"sessions_opened": 2, "sdr_reads": 1}


def test_cipher_suite_17_default_forced_3_and_fallback(sim: Sim, sim3: Sim) -> None:
    forced = [dataclasses.replace(sim.targets()[0], node="forced-3", cipher_suite=3)]
    with IpmiCollector(sim.targets()[:2] + forced + sim3.targets()) as collector:
        results = collector.collect()
        assert all(r.ok for r in results), [r.error for r in results]
        suites = {r.target: collector.cipher_suite_of(r.target) for r in results}
        assert suites == {"bmc-0000": 17, "bmc-0001": 17, "forced-3": 3, "old-0000": 3, "old-0001": 3}
        assert all(r.ok for r in collector.collect())  # the remembered suite is used again
    with IpmiCollector(sim3.targets(cipher_suite=17)) as collector:
        result = collector.collect()[0]
    assert not result.ok and result.error == "the BMC accepts none of the cipher suites 17"


class Relay:
    """A UDP relay in front of one BMC that counts what the client sends, by RMCP+ payload type."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.listen = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.listen.bind(("127.0.0.1", 0))
        self.port = self.listen.getsockname()[1]
        self.sent: Counter[str] = Counter()
        self._clients: dict[socket.socket, tuple] = {}
        self._by_client: dict[tuple, socket.socket] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _kind(self, data: bytes) -> str:
        if len(data) > 5 and data[3] == 0x06:
            return "ping"
        if len(data) > 9 and data[4] == 0x06:
            payload_type = data[5] & 0x3F
            return {0x10: "open_session", 0x12: "rakp1", 0x14: "rakp3"}.get(
                payload_type, "in_session" if int.from_bytes(data[6:10], "little") else "sessionless")
        return "ipmi15"

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.listen, selectors.EVENT_READ)
        while not self._stop.is_set():
            for key, _ in sel.select(0.05):
                sock = key.fileobj
                data, addr = sock.recvfrom(4096)
                if sock is self.listen:
                    up = self._by_client.get(addr)
                    if up is None:
                        up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                        up.connect(self.upstream)
                        self._by_client[addr], self._clients[up] = up, addr
                        sel.register(up, selectors.EVENT_READ)
                    self.sent[self._kind(data)] += 1
                    up.send(data)
                else:
                    self.listen.sendto(data, self._clients[sock])

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for sock in [self.listen, *self._clients]:
            sock.close()


def test_sessions_and_sdr_are_reused_between_collections(sim: Sim) -> None:
    bmc = sim.bmc("bmc-0000")
    relay = Relay(bmc["host"], bmc["port"])
    polls = []
    try:
        target = IpmiTarget("via-relay", "127.0.0.1", relay.port, bmc["username"], bmc["password"])
        with IpmiCollector([target]) as collector:
            for _ in range(3):
                packets = collector.packets_sent()
                (result,) = collector.collect()
                assert result.ok and value(result, "ipmi_dcmi_power_consumption_watts") == bmc["expected"]["dcmi"][
                    "current_watts"]
                polls.append((Counter(relay.sent), collector.packets_sent() - packets))
                relay.sent.clear()
            assert collector.stats("via-relay") == {"sessions_opened": 1, "sdr_reads": 1}
        deadline = time.monotonic() + 2
        while relay.sent["in_session"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)  # the relay thread forwards close() 's Close Session
        closing = relay.sent["in_session"]
    finally:
        relay.close()
    (cold, cold_packets), (facts, _), (steady, steady_packets) = polls
    # first contact: ping, Open Session, RAKP 1 and 3 (user privilege: no Set Session Privilege,
    # no Get Channel Authentication Capabilities), SDR repository info, chassis, DCMI, each of
    # the 10 sensor records read whole, 10 sensor readings
    assert cold == {"ping": 1, "open_session": 1, "rakp1": 1, "rakp3": 1, "in_session": 23}
    assert cold_packets == 27
    # the next poll reads the device id, system info and FRU besides the readings
    assert set(facts) == {"in_session"} and facts["in_session"] > 12
    # from then on: chassis status + DCMI reading + 10 sensors in the open session, nothing else
    assert steady == {"in_session": 12} and steady_packets == 12
    assert closing == 1  # the collector's close() ends the session (Close Session)


def test_idle_sessions_are_replaced_before_the_bmc_drops_them(sim: Sim, monkeypatch: pytest.MonkeyPatch) -> None:
    with IpmiCollector([t for t in sim.targets() if t.node == "bmc-0002"]) as collector:
        collector.collect()
        monkeypatch.setattr(ipmi_session, "SESSION_IDLE_LIMIT_S", 0.0)
        (result,) = collector.collect()
        assert result.ok and collector.stats("bmc-0002") == {"sessions_opened": 2, "sdr_reads": 1}


def test_spec_session_keys_use_20_byte_constants() -> None:
    sik = bytes(range(32))
    suite17, suite3 = CIPHER_SUITES[17], CIPHER_SUITES[3]
    ours, stock = SpecSessionKeys(suite17, sik), SessionKeys(suite17, sik)
    assert ours.k1 == hmac.new(sik, b"\x01" * 20, hashlib.sha256).digest() != stock.k1
    assert ours.k2 == hmac.new(sik, b"\x02" * 20, hashlib.sha256).digest() != stock.k2
    ours3, stock3 = SpecSessionKeys(suite3, sik[:20]), SessionKeys(suite3, sik[:20])
    assert (ours3.k1, ours3.k2) == (stock3.k1, stock3.k2)  # SHA-1: both derivations agree
    for size in (0, 1, 15, 16, 17, 40):  # the cached-AES CBC interoperates with python-ipmi's
        data = bytes(range(size))
        assert stock3.decrypt(ours3.encrypt(data)) == data == ours3.decrypt(stock3.encrypt(data))
        assert ours3.auth_code(data) == stock3.auth_code(data)


def test_session_refusals_are_readable() -> None:
    conn = BmcConnection("10.0.0.9", 623, "admin", "pw", cipher_suites=(17, 3), timeout=2.0, retries=1)
    assert describe_failure(MessageStatusCodeError(0x11), conn) == (
        "the BMC accepts none of the cipher suites 17, 3", False)
    assert describe_failure(MessageStatusCodeError(0x0D), conn)[0].startswith("authentication failed (unknown user")
    assert describe_failure(MessageStatusCodeError(0x01), conn)[0] == "the BMC has no free session slot"
    assert describe_failure(RetryError("x"), conn) == ("no response within 2.0 s", True)
    assert describe_failure(ValueError("odd"), conn) == ("ValueError: odd", False)


def test_severity_follows_ipmi_exporter() -> None:
    assert severity(None) != severity(None) and math.isnan(severity(None))
    assert [severity(b) for b in (0, 0b000001, 0b001000, 0b000010, 0b010000, 0b000100, 0b100000, 0b011000)] == [
        0, 1, 1, 2, 2, 2, 2, 2]


@pytest.mark.parametrize(("sensor_type", "label"), [(0x19, "Chip Set"), (0x06, "Platform Security Violation Attempt"),
                                                    (0x11, "Watchdog 1"), (0xD1, "OEM Reserved"), (0x30, "0x30")])
def test_generic_sensors_carry_freeipmis_type_names_as_ipmi_exporter_does(sensor_type: int, label: str) -> None:
    """ipmi_exporter copies the type column of FreeIPMI's ipmimonitoring into `type` (e.g. `type="Chip
    Set"` for 0x19, prometheus-community/ipmi_exporter#302); dashboards and alert rules match on it."""
    record = SensorRecord(7, 0x42, 0, "PCH Health", sensor_type, 0, False, True, convert=float)
    spec, unit, labels = sensor_layout(record)
    assert (spec.value, spec.state) == ("ipmi_sensor_value", "ipmi_sensor_state")
    assert dict(labels) == {"id": "7", "name": "PCH Health", "type": label} and unit == "unspecified"


@pytest.mark.parametrize(("raw", "text"),
                         [((9, 0x08), "9.08"), ((1, 0x23), "1.23"), ((2, 0x00), "2.00"), ((3, 0xFF), "3.ff")])
def test_firmware_revision_prints_the_bcd_minor_as_ipmitool_and_freeipmi_do(raw: tuple[int, int], text: str) -> None:
    """ipmitool `mc info` and FreeIPMI's bmc-info (ipmi_exporter's source) print "%u.%02x" of
    the raw bytes; python-ipmi's own str() gives "9.8" for 9/0x08 (seen against ipmi_sim)."""
    answer = bytes([0x20, 0x01, raw[0], raw[1], 0x51, 0x00, 0xA2, 0x02, 0x00, 0x01, 0x00])  # Dell (674), product 1
    assert device_facts(answer)["firmware_revision"] == text


def test_bmcs_serving_the_same_sdr_share_its_records(sim: Sim) -> None:
    """A worker holds one parsed sensor record per distinct SDR record, not one per BMC: BMCs of
    one model (the simulator's) share them, with the same readings as before."""
    a, b = sim.targets()[:2]
    with IpmiCollector([a, b], workers=2) as collector:
        results = collector.collect()
        assert all(r.ok for r in results), results
        first, second = (collector._conns[t.node]._sensors for t in (a, b))
    assert first and len(first) == len(second) and all(x is y for x, y in zip(first, second))
    readings = [{(s.metric, s.labels.get("name")) for s in r.samples if s.metric != "ipmi_up"} for r in results]
    assert readings[0] == readings[1] and len(readings[0]) >= 2 * len(first)


def test_retarget_keeps_the_sessions_of_the_targets_kept(sim: Sim) -> None:
    """A worker that takes over another's BMCs (collectors/sharding.py) keeps its own warm."""
    a, b, c = sim.targets()[:3]
    with IpmiCollector([a, b], workers=4) as collector:
        assert all(r.ok for r in collector.collect())
        collector.retarget([b, c])
        results = collector.collect()
        assert [(r.target, r.ok) for r in results] == [(b.node, True), (c.node, True)]
        assert collector.stats(b.node) == {"sessions_opened": 1, "sdr_reads": 1}  # no new session, no SDR read
        assert collector.stats(c.node) == {"sessions_opened": 1, "sdr_reads": 1}
        with pytest.raises(KeyError):
            collector.stats(a.node)
        changed = dataclasses.replace(b, password="other")  # new credentials: a new connection
        collector.retarget([changed])
        (result,) = collector.collect()
        assert not result.ok and result.error == "authentication failed (check the BMC username/password)"
