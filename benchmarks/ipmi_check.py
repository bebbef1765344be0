"""Check what an IPMI poller read against the BMC simulator's bmcs.json (the IPMI benchmarks'
`wrong` counts): chassis power state, DCMI watts, and for each of the 10 sensors its record id,
value (within 1e-6 of the simulator's exact value) and state; Kiln's hardware facts too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

# the simulator's sensor status -> ipmi_exporter's state (0 nominal, 1 warning, 2 critical)
STATE_OF_STATUS = {"ok": 0.0, "nc": 1.0, "cr": 2.0, "nr": 2.0}
TOLERANCE = 1e-6  # FreeIPMI prints 11.94 V as the double it computed; Kiln rounds to the step
SAMPLE_LINE = re.compile(r"^(ipmi_\w+)(?:\{([^}]*)\})? (\S+)$", re.MULTILINE)
LABEL = re.compile(r'(\w+)="([^"]*)"')

Values = tuple[float | None, float | None, dict[str, tuple[str, float, float | None]]]


def values_of(samples: Iterable[tuple[str, Mapping[str, str], float]]) -> Values:
    """(power state, DCMI watts, {sensor name: (record id, value, state)}) of (metric, labels,
    value) triples, whoever produced them."""
    power = watts = None
    sensors: dict[str, list[Any]] = {}
    for metric, labels, value in samples:
        if metric == "ipmi_chassis_power_state":
            power = value
        elif metric == "ipmi_dcmi_power_consumption_watts":
            watts = value
        elif "id" in labels and "name" in labels:
            entry = sensors.setdefault(labels["name"], [labels["id"], None, None])
            entry[2 if metric.endswith("_state") else 1] = value
    return power, watts, {name: tuple(entry) for name, entry in sensors.items()}  # type: ignore[misc]


def kiln_values(samples: Iterable[Any]) -> Values:
    """`values_of` Kiln's Sample objects."""
    return values_of((s.metric, s.labels, s.value) for s in samples)


def exporter_values(text: str) -> Values:
    """`values_of` an ipmi_exporter /ipmi answer (Prometheus text format)."""
    return values_of((metric, dict(LABEL.findall(labels or "")), float(value))
                     for metric, labels, value in SAMPLE_LINE.findall(text))


def reading_errors(expected: Mapping[str, Any], values: Values) -> list[str]:
    """What differs from the simulator's expected readings of one BMC (empty: all right)."""
    power, watts, sensors = values
    wrong = []
    if power != (1.0 if expected["power_state"] == "on" else 0.0):
        wrong.append(f"power state {power}")
    if watts != expected["dcmi"]["current_watts"]:
        wrong.append(f"DCMI watts {watts}, {expected['dcmi']['current_watts']} expected")
    want = {s["name"]: (str(i), s["value"], STATE_OF_STATUS[s["status"]])
            for i, s in enumerate(expected["sensors"], start=1)}
    if set(sensors) != set(want):
        wrong.append(f"sensors {sorted(sensors)}")
    for name, (record_id, value, state) in want.items():
        got = sensors.get(name)
        if got is not None and (got[0] != record_id or got[1] is None or abs(got[1] - value) > TOLERANCE
                                or got[2] != state):
            wrong.append(f"{name}: {got}, {(record_id, value, state)} expected")
    return wrong


def facts_errors(expected: Mapping[str, Any], samples: Iterable[Any]) -> list[str] | None:
    """What differs in Kiln's `ipmi_bmc_info` / `ipmi_fru_info` labels; None when the poll
    carried no facts (they are read after first contact)."""
    info = {s.metric: dict(s.labels) for s in samples if s.metric in ("ipmi_bmc_info", "ipmi_fru_info")}
    if not info:
        return None
    fru, dev = expected["fru"], expected["device_id"]
    want = {
        "ipmi_fru_info": {
            "product_manufacturer": fru["product_manufacturer"], "product_name": fru["product_name"],
            "product_part_number": fru["product_part_number"], "product_serial": fru["product_serial"],
            "board_manufacturer": fru["board_manufacturer"], "board_product_name": fru["board_product"],
            "board_serial": fru["board_serial"], "asset_tag": fru["asset_tag"]},
        "ipmi_bmc_info": {
            "firmware_revision": dev["firmware"], "ipmi_version": dev["ipmi_version"],
            "manufacturer_id": f"Reserved ({dev['manufacturer_id']})", "product_id": str(dev["product_id"]),
            "device_id": str(dev["device_id"]), "system_firmware_version": dev["system_firmware_version"],
            "bmc_url": "N/A"},
    }
    return [f"{metric}: {info.get(metric)}" for metric, labels in want.items() if info.get(metric) != labels]
