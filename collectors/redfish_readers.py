"""Redfish resources into Samples: pure functions, one per resource shape (collectors/redfish.py
fetches the resources and says which shape it read). The metric table is in collectors/redfish.py.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any

from collectors.base import Sample

MakeSample = Callable[..., Sample]  # (metric, value, unit, labels=NO_LABELS) -> Sample
Skipped = dict[str, int]
POWER_STATES = {"On": 1.0, "Paused": 1.0, "PoweringOff": 1.0, "Off": 0.0, "PoweringOn": 0.0}
HEALTH_STATES = {"OK": 0.0, "Warning": 1.0, "Critical": 2.0}
# Thermal Fans[].ReadingUnits -> (metric, unit, scale)
FAN_UNITS = {"RPM": ("ipmi_fan_speed_rpm", "rpm", 1.0), "Percent": ("ipmi_fan_speed_ratio", "ratio", 0.01)}
# (threshold property suffix, severity), most severe first; Upper* is crossed at or above,
# Lower* at or below
THRESHOLDS = (("Fatal", 2.0), ("Critical", 2.0), ("NonCritical", 1.0))
# a Sensor's `Thresholds` (DSP8010 Sensor v1: Upper/Lower + these, each `{"Reading": N}`), the same way
SENSOR_THRESHOLDS = (("Fatal", 2.0), ("Critical", 2.0), ("CriticalUser", 2.0), ("Caution", 1.0), ("CautionUser", 1.0))
WATTS, ENERGY = "ipmi_dcmi_power_consumption_watts", "redfish_energy_kwh"
GPU_INFO, LOG_ENTRY = "redfish_gpu_info", "redfish_log_entry"
LOG_MESSAGE_LIMIT = 1500


def crossed(value: float, limits: Iterable[tuple[float | None, float | None, float]]) -> float:
    """ipmi_exporter's state from (upper, lower, level) thresholds, most severe first: the first
    level whose upper is reached (>=) or lower is reached (<=); 0 within all, NaN without any."""
    found = False
    for upper, lower, level in limits:
        found = found or upper is not None or lower is not None
        if (upper is not None and value >= upper) or (lower is not None and value <= lower):
            return level
    return 0.0 if found else math.nan


def severity(value: float, member: Mapping[str, Any]) -> float:
    """The state from a legacy Thermal member's `Upper/LowerThreshold{NonCritical,Critical,Fatal}`."""
    return crossed(value, ((member.get(f"UpperThreshold{suffix}"), member.get(f"LowerThreshold{suffix}"), level)
                           for suffix, level in THRESHOLDS))


def sensor_state(value: float, sensor: Mapping[str, Any] | None) -> float:
    """The state of a reading from its `Sensor` resource: its `Thresholds` crossed (Caution 1,
    Critical and Fatal 2) or its `Status.Health` (Warning 1, Critical 2), the worse of the two;
    NaN without the Sensor or either."""
    if sensor is None:
        return math.nan
    limits = sensor.get("Thresholds") if isinstance(sensor.get("Thresholds"), Mapping) else {}
    states = [crossed(value, ((reading(limits.get(f"Upper{suffix}")), reading(limits.get(f"Lower{suffix}")), level)
                              for suffix, level in SENSOR_THRESHOLDS)), health_of(sensor)]
    known = [state for state in states if not math.isnan(state)]
    return max(known) if known else math.nan


def health_of(resource: Mapping[str, Any]) -> float:
    """A resource's `Status.HealthRollup` (else `Status.Health`) as 0 OK, 1 Warning, 2 Critical; NaN unknown."""
    status = resource.get("Status") or {}
    return HEALTH_STATES.get(status.get("HealthRollup") or status.get("Health"), math.nan)


def skip(skipped: Skipped, why: str) -> None:
    """Count one series left out, by reason."""
    skipped[why] = skipped.get(why, 0) + 1


def sensor_labels(member: Mapping[str, Any], index: int) -> Mapping[str, str]:
    """`id` (MemberId, else the position) and `name` (Name, else v1.0's FanName) of a member."""
    name = member.get("Name") or member.get("FanName") or ""
    return MappingProxyType({"id": str(member.get("MemberId", index)), "name": str(name)})


def reading(excerpt: Any) -> float | None:
    """`Reading` of a SensorExcerpt (`{"Reading": 374, "DataSourceUri": ...}`), if it is a number."""
    value = excerpt.get("Reading") if isinstance(excerpt, Mapping) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def system_samples(system: Mapping[str, Any], sample: MakeSample) -> list[Sample]:
    """The system's power state and health rollup."""
    out = []
    if system.get("PowerState") in POWER_STATES:
        out.append(sample("ipmi_chassis_power_state", POWER_STATES[system["PowerState"]], "state"))
    if not math.isnan(health := health_of(system)):
        out.append(sample("redfish_health_state", health, "state"))
    return out


def legacy_power(power: Mapping[str, Any], sample: MakeSample, skipped: Skipped) -> list[Sample]:
    """Legacy `Power`: `PowerControl[0].PowerConsumedWatts` as the node's watts."""
    controls = power.get("PowerControl") or []
    watts = controls[0].get("PowerConsumedWatts") if controls else None
    if watts is None:
        skip(skipped, "no power reading")
        return []
    return [sample(WATTS, float(watts), "watts")]


def legacy_thermal(thermal: Mapping[str, Any], sample: MakeSample, skipped: Skipped) -> list[Sample]:
    """Legacy `Thermal`: temperatures with their threshold states, and fans."""
    out: list[Sample] = []
    for index, member in enumerate(thermal.get("Temperatures") or []):
        value = member.get("ReadingCelsius")
        if value is None:
            skip(skipped, "no temperature reading")
            continue
        labels = sensor_labels(member, index)
        out.append(sample("ipmi_temperature_celsius", float(value), "celsius", labels))
        out.append(sample("ipmi_temperature_state", severity(value, member), "state", labels))
    for index, member in enumerate(thermal.get("Fans") or []):
        value, units = member.get("Reading"), member.get("ReadingUnits")
        if value is None and member.get("ReadingRPM") is not None:
            value, units = member["ReadingRPM"], "RPM"
        if value is None or units not in FAN_UNITS:
            skip(skipped, "no fan reading")
            continue
        metric, unit, scale = FAN_UNITS[units]
        labels = sensor_labels(member, index)
        out.append(sample(metric, float(value) * scale, unit, labels))
        out.append(sample("ipmi_fan_speed_state", severity(value, member), "state", labels))
    return out


def environment_power(metrics: Mapping[str, Any], sample: MakeSample) -> list[Sample]:
    """Chassis `EnvironmentMetrics`: `PowerWatts` as the node's watts, `EnergykWh` as its counter."""
    out = []
    if (watts := reading(metrics.get("PowerWatts"))) is not None:
        out.append(sample(WATTS, watts, "watts"))
    if (kwh := reading(metrics.get("EnergykWh"))) is not None:
        out.append(sample(ENERGY, kwh, "kwh", MappingProxyType({"from": "EnvironmentMetrics"})))
    return out


def power_supply_samples(supplies: Iterable[tuple[Mapping[str, Any], Mapping[str, Any] | None]],
                         sample: MakeSample) -> tuple[list[Sample], float | None]:
    """PowerSubsystem's `PowerSupplies` (each with its `Metrics`, or None): input watts and health
    per supply, and the sum of their `EnergykWh` when every enabled supply reports one."""
    out: list[Sample] = []
    total: float | None = 0.0
    counted = 0
    for supply, metrics in supplies:
        if (supply.get("Status") or {}).get("State") not in {None, "Enabled"}:
            continue  # Absent, Disabled, StandbyOffline: no draw to count
        labels = MappingProxyType({"id": str(supply.get("Id", "")), "name": str(supply.get("Name", ""))})
        if not math.isnan(health := health_of(supply)):
            out.append(sample("redfish_psu_health_state", health, "state", labels))
        metrics = metrics or {}
        if (watts := reading(metrics.get("InputPowerWatts"))) is not None:
            out.append(sample("redfish_psu_input_watts", watts, "watts", labels))
        kwh = reading(metrics.get("EnergykWh"))
        total = None if kwh is None or total is None else total + kwh
        counted += 1
    return out, total if counted else None


def thermal_metrics(metrics: Mapping[str, Any], sample: MakeSample, skipped: Skipped,
                    sensors: Mapping[str, Mapping[str, Any] | None]) -> list[Sample]:
    """ThermalSubsystem's `ThermalMetrics`: `TemperatureReadingsCelsius`, each state from the Sensor
    its `DataSourceUri` names (`sensors`, by that URI; None: unread, state NaN)."""
    out: list[Sample] = []
    for index, member in enumerate(metrics.get("TemperatureReadingsCelsius") or []):
        value = reading(member)
        if value is None:
            skip(skipped, "no temperature reading")
            continue
        source = str(member.get("DataSourceUri") or "")
        labels = MappingProxyType({"id": source.rstrip("/").rsplit("/", 1)[-1] or str(index),
                                   "name": str(member.get("DeviceName") or "")})
        out.append(sample("ipmi_temperature_celsius", value, "celsius", labels))
        out.append(sample("ipmi_temperature_state", sensor_state(value, sensors.get(source)), "state", labels))
    return out


def subsystem_fan(fan: Mapping[str, Any], sample: MakeSample, skipped: Skipped) -> list[Sample]:
    """One ThermalSubsystem `Fan`: `SpeedPercent.Reading` (ratio) and `.SpeedRPM`, state from its health."""
    speed = fan.get("SpeedPercent") or {}
    labels = MappingProxyType({"id": str(fan.get("Id", "")), "name": str(fan.get("Name", ""))})
    out = []
    if (percent := reading(speed)) is not None:
        out.append(sample("ipmi_fan_speed_ratio", percent * 0.01, "ratio", labels))
    if isinstance(rpm := speed.get("SpeedRPM"), int | float):
        out.append(sample("ipmi_fan_speed_rpm", float(rpm), "rpm", labels))
    if not out:
        skip(skipped, "no fan reading")
        return []
    out.append(sample("ipmi_fan_speed_state", health_of(fan), "state", labels))
    return out


def gpu_info(processor: Mapping[str, Any], sample: MakeSample) -> Sample | None:
    """A `Processor` with `ProcessorType` GPU as a `redfish_gpu_info` sample (1, its identity in
    labels: id, model, vendor, serial, uuid, memory_mib); None for CPUs, FPGAs and the rest."""
    if processor.get("ProcessorType") != "GPU":
        return None
    memory = (processor.get("MemorySummary") or {}).get("TotalMemorySizeMiB")
    labels = {"id": str(processor.get("Id", "")), "model": str(processor.get("Model") or processor.get("Name") or ""),
              "vendor": str(processor.get("Manufacturer") or ""), "serial": str(processor.get("SerialNumber") or ""),
              "uuid": str(processor.get("UUID") or ""), "memory_mib": str(memory) if isinstance(memory, int) else ""}
    return sample(GPU_INFO, 1.0, "info", MappingProxyType(labels))


def entry_key(entry: Mapping[str, Any]) -> tuple[str, tuple[int | str, ...]]:
    """Sort key of a LogEntry, oldest first: `Created`, then its Id in natural order ("2" < "10")."""
    ident = str(entry.get("Id") or entry.get("@odata.id") or "")
    return str(entry.get("Created") or ""), tuple(int(p) if p.isdigit() else p for p in re.findall(r"\d+|\D+", ident))


def already_read(entry: Mapping[str, Any], seen: str | None, seen_created: str | None) -> bool:
    """Whether a LogEntry is the one last stored (`seen`) or was created before it."""
    created = str(entry.get("Created") or "")
    return entry.get("@odata.id") == seen or bool(seen_created and created and created < seen_created)


def new_entries(entries: list[Mapping[str, Any]], seen: str | None, seen_created: str | None) -> list[Mapping[str, Any]]:
    """The entries after the one last stored (`seen`: its `@odata.id`), oldest first. When that
    entry is gone (the log was cleared or wrapped), the ones created after it (all, without a time)."""
    ordered = sorted(entries, key=entry_key)
    ids = [str(e.get("@odata.id") or "") for e in ordered]
    if seen is None:
        return ordered
    if seen in ids:
        return ordered[ids.index(seen) + 1:]
    return [e for e in ordered if not seen_created or not e.get("Created") or str(e["Created"]) > seen_created]


def log_entry(entry: Mapping[str, Any], log_name: str, sample: MakeSample) -> Sample:
    """One LogEntry as a `redfish_log_entry` sample (its severity: 0 OK, 1 Warning, 2 Critical)."""
    message = str(entry.get("Message") or entry.get("Name") or "")[:LOG_MESSAGE_LIMIT]
    labels = {"id": str(entry.get("@odata.id") or ""), "created": str(entry.get("Created") or ""),
              "severity": str(entry.get("Severity") or ""), "log": log_name, "message": message,
              "code": str(entry.get("MessageId") or entry.get("EntryCode") or "")}
    return sample(LOG_ENTRY, HEALTH_STATES.get(labels["severity"], math.nan), "state", MappingProxyType(labels))
