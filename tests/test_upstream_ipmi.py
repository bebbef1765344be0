"""Kiln's `/metrics` IPMI series next to Prometheus ipmi_exporter's (tests/data/upstream/ipmi_exporter/,
cited there): the same metric names, label names and value formats for what both expose, read
from Kiln's BMC simulator through the real collector, store and exposition; every difference is
listed below with its reason. FreeIPMI's `bmc-info`, which ipmi_exporter runs, referees the values."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine
from sqlmodel import Session

from collectors.exposition import CollectorExposition
from collectors.iana import manufacturer_label
from collectors.ipmi import GENERIC_SENSOR, SENSOR_METRICS, IpmiCollector, IpmiTarget
from collectors.ipmi_session import device_facts
from collectors.store import persist_results
from tests.factories import World
from tests.fleet_helpers import make_node_row
from tests.peers.harness import running_peer
from tests.test_upstream_corpus import UPSTREAM, generate_latest_of

SAMPLE = (UPSTREAM / "ipmi_exporter" / "docs-metrics-md-examples.txt").read_text()

# Kiln names the node in `node`; ipmi_exporter leaves the BMC to Prometheus' `instance` label.
KILN_NODE_LABEL = "node"
# Labels of a series both expose that only one side has.
KILN_EXTRA_LABELS = {
    "ipmi_bmc_info": {"ipmi_version", "product_id", "device_id"},  # the rest of Get Device ID, kept in facts["bmc"]
}
UPSTREAM_NEWER_LABELS = {
    "ipmi_bmc_info": {"bmc_url"},  # collector_bmc.go has it since ipmi_exporter PR #219; the docs example is older
}
# Series in the upstream sample Kiln does not expose, and why.
UPSTREAM_ONLY = {
    "ipmi_bmc_watchdog_timer_use_state": "the bmc-watchdog collector (FreeIPMI bmc-watchdog); Kiln reads no watchdog",
    "ipmi_bmc_watchdog_timeout_action_state": "likewise",
    "ipmi_bmc_watchdog_pretimeout_interrupt_state": "likewise",
    "ipmi_sel_events_count_by_name": "the sel-events collector (off by default): counts of configured SEL events",
    "ipmi_sel_events_latest_timestamp": "likewise",
    "ipmi_sel_events_count_by_state": "likewise",
}
# Series Kiln exposes that the upstream sample has no line for, and why.
KILN_ONLY = {
    "ipmi_up": "ipmi_exporter's too (metrics.md names `ipmi_up{collector=...}` in prose, no example line); "
               "Kiln's collector values are ipmi_exporter's chassis, dcmi, ipmi, bmc plus fru",
    "ipmi_chassis_power_state": "ipmi_exporter's too (chassis collector, prose only)",
    "ipmi_dcmi_power_consumption_watts": "ipmi_exporter's name in collector_dcmi.go; metrics.md's prose says "
                                         "ipmi_dcmi_power_consumption_current_watts, which no version exposes",
    "ipmi_fru_info": "Kiln's: ipmi_exporter has no FRU collector (one is proposed in an unmerged pull request)",
}
# Value formats ipmi_exporter gives ipmi_bmc_info (FreeIPMI bmc-info's text): "1.66", "Dell Inc. (674)"
FIRMWARE = re.compile(r"\d+\.[0-9a-f]{2}")
MANUFACTURER = re.compile(r".+ \(\d+\)|\d+")


def label_names(text: str, drop: str = "") -> dict[str, set[frozenset[str]]]:
    """Metric name → the label-name sets its samples have (`drop` left out)."""
    out: dict[str, set[frozenset[str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, set()).add(frozenset(sample.labels) - {drop})
    return out


@pytest.fixture(scope="module")
def bmc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """One simulated BMC (its bmcs.json entry); its GPU2 Temp is critical."""
    state = tmp_path_factory.mktemp("bmcsim")
    with running_peer("bmcsim", state, "1", "--critical-every", "1"):
        yield json.loads((state / "bmcs.json").read_text())["bmcs"][0]


@pytest.fixture
def kiln_metrics(bmc: dict, engine: Engine, world: World) -> str:
    """Kiln's /metrics text after one IPMI collection of the simulated BMC's node."""
    make_node_row(world, gpus=0, name=bmc["name"])
    target = IpmiTarget(bmc["name"], bmc["host"], bmc["port"], bmc["username"], bmc["password"])
    with IpmiCollector([target], facts_first=True) as collector:  # one poll: the facts too
        (result,) = collector.collect()
    assert result.ok and result.error is None, result.error
    with Session(engine) as session, session.begin():
        persist_results(session, "ipmi", [result])
    return generate_latest_of(CollectorExposition(engine)).decode()


def test_metric_and_label_names_are_ipmi_exporters(kiln_metrics: str) -> None:
    upstream = label_names(SAMPLE)
    kiln = {name: sets for name, sets in label_names(kiln_metrics, drop=KILN_NODE_LABEL).items()
            if name.startswith("ipmi_")}
    for name in upstream.keys() & kiln.keys():
        extra, newer = KILN_EXTRA_LABELS.get(name, set()), UPSTREAM_NEWER_LABELS.get(name, set())
        assert {labels - extra for labels in kiln[name]} == {labels | newer for labels in upstream[name]}, name
    # the sensor kinds Kiln's simulator serves: temperature, fan (RPM), voltage, power
    assert {"ipmi_temperature_celsius", "ipmi_fan_speed_rpm", "ipmi_voltage_volts", "ipmi_power_watts",
            "ipmi_bmc_info"} <= upstream.keys() & kiln.keys()
    # kinds it does not serve (current, fan duty cycle, generic) are in Kiln's table under upstream's names
    table = {n for spec in [*SENSOR_METRICS.values(), GENERIC_SENSOR] for n in (spec.value, spec.state)}
    assert upstream.keys() - kiln.keys() - set(UPSTREAM_ONLY) <= table - kiln.keys()
    assert (upstream.keys() - kiln.keys()) & set(UPSTREAM_ONLY) == set(UPSTREAM_ONLY)
    assert kiln.keys() - upstream.keys() == set(KILN_ONLY)
    assert label_names(kiln_metrics)["ipmi_temperature_celsius"] == {frozenset({"id", "name", KILN_NODE_LABEL})}


def test_sensor_states_and_bmc_info_values_are_written_as_ipmi_exporter_writes_them(kiln_metrics: str,
                                                                                     bmc: dict) -> None:
    kiln = {f.name: f.samples for f in text_string_to_metric_families(kiln_metrics)}
    upstream = {f.name: f.samples for f in text_string_to_metric_families(SAMPLE)}
    sensors = [name for name in kiln if name.endswith("_state") and name != "ipmi_chassis_power_state"]
    states = {s.value for name in sensors for s in kiln[name]}
    assert states == {0.0, 2.0}  # nominal, and the critical GPU2 Temp (1 warning, NaN no threshold state)
    assert all(s.labels["id"].isdigit() for name in ("ipmi_temperature_celsius", "ipmi_fan_speed_rpm")
               for s in [*kiln[name], *upstream[name]])
    (theirs,), (ours,) = upstream["ipmi_bmc_info"], kiln["ipmi_bmc_info"]
    for labels in (theirs.labels, ours.labels):
        assert FIRMWARE.fullmatch(labels["firmware_revision"]) and MANUFACTURER.fullmatch(labels["manufacturer_id"])
    assert manufacturer_label(674) == theirs.labels["manufacturer_id"] == "Dell Inc. (674)"
    device = bmc["expected"]["device_id"]
    assert ours.labels == {
        "node": bmc["name"], "firmware_revision": device["firmware"], "manufacturer_id": "Reserved (0)",
        "system_firmware_version": device["system_firmware_version"], "bmc_url": "N/A",  # the BMC has no URL
        "ipmi_version": "2.0", "product_id": str(device["product_id"]), "device_id": str(device["device_id"])}


def test_device_id_bytes_are_written_as_freeipmi_writes_them() -> None:
    # Get Device ID: device 0x20, revision 1, firmware 2 / BCD 05, IPMI 2.0, functions, maker, product
    answer = bytes([0x20, 0x01, 0x02, 0x05, 0x02, 0xBF]) + (10876).to_bytes(3, "little") + bytes([0x2C, 0x1B])
    assert device_facts(answer) == {"firmware_revision": "2.05",  # python-ipmi's own str() says "2.5"
                                    "manufacturer_id": "Super Micro Computer Inc. (10876)", "ipmi_version": "2.0",
                                    "product_id": str(0x1B2C), "device_id": "32"}
    # a number outside Kiln's short table is written bare (FreeIPMI knows more names: the one difference)
    assert device_facts(answer[:6] + (99999).to_bytes(3, "little") + answer[9:])["manufacturer_id"] == "99999"


def bmc_info(bmc: dict) -> dict[str, str]:
    """FreeIPMI bmc-info's "Key : value" lines for the simulated BMC (what ipmi_exporter parses)."""
    done = subprocess.run(["bmc-info", "-h", f"{bmc['host']}:{bmc['port']}", "-u", bmc["username"],
                           "-p", bmc["password"], "-D", "LAN_2_0"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    pairs = (line.partition(":") for line in done.stdout.splitlines())
    return {key.strip(): value.strip() for key, sep, value in pairs if sep}


@pytest.mark.skipif(shutil.which("bmc-info") is None, reason="FreeIPMI's bmc-info is not installed")
def test_bmc_info_labels_agree_with_freeipmi(kiln_metrics: str, bmc: dict) -> None:
    (ours,) = next(f.samples for f in text_string_to_metric_families(kiln_metrics) if f.name == "ipmi_bmc_info")
    lines = bmc_info(bmc)
    assert ours.labels["manufacturer_id"] == lines["Manufacturer ID"]  # ipmi_exporter copies the rest of the line
    assert ours.labels["firmware_revision"] == lines["Firmware Revision"]
    assert ours.labels["bmc_url"] == "N/A" and "BMC URL" not in lines  # no line: ipmi_exporter writes N/A
    # Deliberate difference: ipmi_exporter keeps only the leading digits and dots of the system
    # firmware version ("2.19.1"; an HPE "U46 v2.80" would become ""), Kiln keeps what the BMC says.
    assert ours.labels["system_firmware_version"] == lines["System Firmware Version"] == "2.19.1 (2024-03-01)"
    assert not math.isnan(ours.value) and ours.value == 1.0

