"""Redfish collector: power, energy, health, thermal sensors, GPUs and the event log of a node's BMC.

Plain httpx against Redfish's JSON (DMTF DSP0266), one client per BMC kept between polls, logged
in by a Redfish session that is reused and renewed (collectors/redfish_http.py; basic auth where
the service has no sessions). Per target: its ComputerSystem (the address's path, else the
service's first), the Chassis the System links to (else the service's first), and from them
(every collection read over all its pages, following `Members@odata.nextLink`, by one helper:
`collection_pages` in collectors/redfish_http.py):

- power: the chassis `EnvironmentMetrics` (`PowerWatts`, `EnergykWh`) and the `PowerSubsystem`'s
  `PowerSupplies` with their `Metrics`; the legacy `Power` resource only when those gave no watts.
- thermal: the `ThermalSubsystem`'s `ThermalMetrics` temperatures and its `Fans`; the legacy
  `Thermal` resource for temperatures (with threshold states) or fans the new shapes lacked.
- GPUs: the System's `Processors` whose `ProcessorType` is GPU.
- the event log: each of the System's `LogServices`' `Entries` created after the last entry
  already stored (`log_cursors`), oldest first, the newest `max_log_entries` of them at most.
  Entries pages are read `max_log_pages` at most per poll; in a log listed newest first (as
  BMCs page their SEL) no page after the one that reaches the stored entry is asked.
- firmware: the service's `UpdateService/FirmwareInventory` (collectors/redfish_firmware.py).

Metric names are the IPMI path's (collectors/ipmi.py, ipmi_exporter's names) where the meaning
is the same, so energy metering, dashboards and alerts treat a Redfish node like an IPMI one
(entity = node name); `redfish_*` where Redfish says more:

| metric | unit | labels | from |
| --- | --- | --- | --- |
| `ipmi_chassis_power_state` | state | | System `PowerState`: 1 On, Paused, PoweringOff; 0 Off, PoweringOn |
| `redfish_health_state` | state | | System `Status.HealthRollup` (else `Status.Health`): 0 OK, 1 Warning, 2 Critical |
| `ipmi_dcmi_power_consumption_watts` | watts | | `EnvironmentMetrics.PowerWatts.Reading`, else legacy `Power` `PowerControl[0].PowerConsumedWatts` |
| `redfish_energy_kwh` | kwh | from | `EnvironmentMetrics.EnergykWh.Reading` (`from` EnvironmentMetrics), else the sum of every enabled power supply's `Metrics.EnergykWh` (`from` PowerSupplies): a counter |
| `redfish_psu_input_watts` | watts | id, name | each enabled supply's `Metrics.InputPowerWatts.Reading` |
| `redfish_psu_health_state` | state | id, name | each enabled supply's `Status.Health` |
| `ipmi_temperature_celsius`, `_state` | celsius, state | id, name | `ThermalMetrics.TemperatureReadingsCelsius[]` (id: the sensor's `DataSourceUri` name, name: `DeviceName`; state from that `Sensor`), else legacy `Thermal` `Temperatures[].ReadingCelsius` |
| `ipmi_fan_speed_ratio`, `ipmi_fan_speed_rpm`, `ipmi_fan_speed_state` | ratio, rpm, state | id, name | each `ThermalSubsystem` Fan's `SpeedPercent.Reading` x 0.01 and `.SpeedRPM` (state: its `Status.Health`), else legacy `Thermal` `Fans[].Reading` by `ReadingUnits` (or v1.0 `ReadingRPM`) |
| `redfish_gpu_info` | info | id, model, vendor, serial, uuid, memory_mib | each GPU `Processor` (collectors/redfish_store.py keeps the node's GPU inventory) |
| `redfish_log_entry` | state | id, created, severity, log, message, code | each new `LogEntry` (its `Severity`: 0 OK, 1 Warning, 2 Critical), stored as node events |

Legacy `id` is the array member's `MemberId`, `name` its `Name` (v1.0 fans: `FanName`). Legacy
states are ipmi_exporter's severities from the member's thresholds: 2 at or beyond
`Upper`/`LowerThresholdCritical` or `...Fatal`, 1 at or beyond `...NonCritical`, else 0; NaN
without thresholds. A new-shape reading's state comes from the `Sensor` its `DataSourceUri` names:
its `Thresholds` `Upper`/`Lower` + `Caution` (1), `Critical`, `Fatal` (2) (and the `...User`
ones), each `{"Reading": N}`, crossed the same way, or its `Status.Health` (Warning 1, Critical 2),
the worse of the two; NaN when the Sensor cannot be read. A sensor without a reading is left out and counted in `TargetResult.skipped`.
A part that fails (chassis, power, thermal, processors, log) leaves the result ok with the part
named in `error`; a failing System (401, 503, a timeout, not JSON) fails the whole target with a
readable `error`, never an exception. `target_timeout` bounds a whole target's poll.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Self

from collectors.base import NO_LABELS, Held, Progress, Sample, TargetResult, not_held, skipped_summary
from collectors.redfish_firmware import firmware_samples
from collectors.redfish_http import SERVICE_ROOT, RedfishClient, RedfishError, collection_ids, collection_pages
from collectors.redfish_readers import (
    ENERGY,
    WATTS,
    MakeSample,
    Skipped,
    already_read,
    entry_key,
    environment_power,
    gpu_info,
    legacy_power,
    legacy_thermal,
    log_entry,
    new_entries,
    power_supply_samples,
    subsystem_fan,
    system_samples,
    thermal_metrics,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RedfishTarget:
    """A node's Redfish service: `url` is the BMC's base URL (`https://bmc-17`; a trailing
    `/redfish/v1` is accepted), `system` the ComputerSystem's path (None: the service's first).
    `timeout` None: the collector's; `verify` checks TLS certificates."""

    node: str
    url: str
    username: str = ""
    password: str = field(default="", repr=False)
    timeout: float | None = None
    verify: bool = True
    system: str | None = None


@dataclass(frozen=True)
class LogCursor:
    """The newest log entry of one LogService already stored: its `@odata.id` and `Created`."""

    entry: str
    created: str = ""


def link(resource: Mapping[str, Any], name: str) -> str | None:
    """The `@odata.id` a resource's property links to, or None."""
    value = resource.get(name)
    return value.get("@odata.id") if isinstance(value, Mapping) else None


def linked(resource: Mapping[str, Any], key: str) -> list[str]:
    """The `@odata.id`s of a resource's list of links (`Links.Chassis`); collections, which may
    be paged, are read with `collection_ids`."""
    return [m["@odata.id"] for m in resource.get(key) or [] if isinstance(m, Mapping) and m.get("@odata.id")]


class RedfishCollector:
    """Reads every target's Redfish service once per `collect()`; see the module docstring.

    `timeout` is each request's limit (connect, read) unless a target sets its own;
    `target_timeout` bounds all of one target's requests together. Targets are read
    concurrently on up to `workers` threads; each BMC keeps its client and session.
    """

    name = "redfish"

    def __init__(self, targets: Iterable[RedfishTarget], *, timeout: float = 5.0, target_timeout: float = 60.0,
                 workers: int = 16, max_log_entries: int = 200, max_log_pages: int = 10,
                 clock: Callable[[], datetime] | None = None) -> None:
        """Set up one HTTP client per target; nothing is sent before `collect()`."""
        self.targets = list(targets)
        names = [t.node for t in self.targets]
        if len(set(names)) != len(names):
            raise ValueError("Redfish targets must have distinct node names")
        if timeout <= 0 or target_timeout <= 0 or workers < 1 or max_log_entries < 0 or max_log_pages < 1:
            raise ValueError("timeouts must be > 0, workers >= 1, max_log_entries >= 0 and max_log_pages >= 1")
        self.timeout, self.target_timeout, self.max_log_entries = timeout, target_timeout, max_log_entries
        self.max_log_pages = max_log_pages
        self.clock = clock or (lambda: datetime.now(UTC))
        self.clients = {t.node: RedfishClient(t.url, t.username, t.password, timeout=t.timeout or timeout,
                                              verify=t.verify) for t in self.targets}
        self._pool = ThreadPoolExecutor(max_workers=max(1, min(workers, len(self.targets))),
                                        thread_name_prefix="kiln-redfish")
        self._closed = False

    def collect(self, progress: Progress | None = None, *,
                log_cursors: Mapping[str, Mapping[str, LogCursor]] | None = None,
                held: Held | None = None) -> list[TargetResult]:
        """Read every target concurrently; one result per target, in target order. Never raises.
        `log_cursors`: per node, per LogService path, the newest entry already stored; a target
        that `held` says was lost by the time its turn comes is not read (`polled` False)."""
        cursors = log_cursors or {}

        def one(target: RedfishTarget) -> TargetResult:
            lost = held is not None and not held(target.node)
            result = not_held(target.node) if lost else self._collect_one(target, cursors.get(target.node, {}))
            if progress:
                progress(result)
            return result

        return list(self._pool.map(one, self.targets))

    def close(self) -> None:
        """End the sessions and close the HTTP connections (on the pool: one BMC after another,
        1,000 session DELETEs took 50 s at 50 ms each), then stop the thread pool."""
        if self._closed:
            return
        self._closed = True
        list(self._pool.map(RedfishClient.close, self.clients.values()))
        self._pool.shutdown(wait=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _collect_one(self, target: RedfishTarget, cursors: Mapping[str, LogCursor]) -> TargetResult:
        began = time.monotonic()
        try:
            return self._read(target, cursors, began)
        except Exception as exc:  # the per-target boundary: one odd BMC never fails the others
            log.exception("Redfish read of %s (%s) failed unexpectedly", target.node, target.url)
            return TargetResult(target.node, ok=False, error=f"unexpected answer from {target.url}: "
                                f"{type(exc).__name__}: {exc}", seconds=time.monotonic() - began)

    def _read(self, target: RedfishTarget, cursors: Mapping[str, LogCursor], began: float) -> TargetResult:
        client = self.clients[target.node]
        client.set_deadline(self.target_timeout)
        roots: list[dict[str, Any]] = []

        def root() -> dict[str, Any]:
            if not roots:
                roots.append(client.get(SERVICE_ROOT))
            return roots[0]

        try:
            system_path = target.system or next(
                collection_ids(client.get, link(root(), "Systems") or SERVICE_ROOT + "Systems"), None)
            if system_path is None:
                raise RedfishError("the Redfish service lists no ComputerSystem")
            system = client.get(system_path)
        except RedfishError as exc:
            return TargetResult(target.node, ok=False, error=str(exc), seconds=time.monotonic() - began,
                                timed_out=exc.timed_out)
        now = self.clock()

        def sample(metric: str, value: float, unit: str, labels: Mapping[str, str] = NO_LABELS) -> Sample:
            return Sample(self.name, target.node, metric, value, unit, labels, now)

        out = system_samples(system, sample)
        parts: list[str] = []
        skipped: Skipped = {}

        def part(name: str, read: Callable[[], list[Sample]]) -> None:
            try:
                out.extend(read())
            except RedfishError as exc:
                parts.append(f"{name}: {exc}")

        chassis: list[dict[str, Any]] = []

        def read_chassis() -> list[Sample]:
            path = next(iter(linked(system.get("Links") or {}, "Chassis")), None) or next(
                collection_ids(client.get, link(root(), "Chassis") or SERVICE_ROOT + "Chassis"), None)
            if path is None:
                raise RedfishError("the Redfish service lists no Chassis")
            chassis.append(client.get(path))
            return []

        part("chassis", read_chassis)
        if chassis:
            part("power", lambda: self._power(client, chassis[0], sample, skipped, parts))
            part("thermal", lambda: self._thermal(client, chassis[0], sample, skipped, parts))
        if link(system, "Processors"):
            part("processors", lambda: self._gpus(client, system, sample))
        if link(system, "LogServices") and self.max_log_entries:
            part("log", lambda: self._log(client, system, cursors, sample, parts))
        part("firmware", lambda: firmware_samples(client.get, root(), target.node, self.name, now, skipped, (RedfishError,)))
        error = "; ".join(filter(None, [*parts, skipped_summary(skipped)])) or None
        return TargetResult(target.node, ok=True, samples=out, error=error, skipped=skipped,
                            seconds=time.monotonic() - began)

    @staticmethod
    def _newer(client: RedfishClient, chassis: Mapping[str, Any], name: str, parts: list[str],
               read: Callable[[dict[str, Any]], list[Sample]]) -> list[Sample]:
        """Read a new-shape resource the chassis links to; a failure is noted and reads as nothing
        (the legacy resource stands in)."""
        path = link(chassis, name)
        if path is None:
            return []
        try:
            return read(client.get(path))
        except RedfishError as exc:
            if exc.timed_out:
                raise
            parts.append(f"{name}: {exc}")
            return []

    def _power(self, client: RedfishClient, chassis: Mapping[str, Any], sample: MakeSample, skipped: Skipped,
               parts: list[str]) -> list[Sample]:
        out = self._newer(client, chassis, "EnvironmentMetrics", parts, lambda m: environment_power(m, sample))
        out += self._newer(client, chassis, "PowerSubsystem", parts,
                           lambda sub: self._supplies(client, sub, sample, has_energy=any(s.metric == ENERGY for s in out)))
        if not any(s.metric == WATTS for s in out):
            legacy = link(chassis, "Power")
            if legacy is None:
                raise RedfishError("the chassis reports no power reading (no EnvironmentMetrics.PowerWatts, "
                                   "no legacy Power)")
            out += legacy_power(client.get(legacy), sample, skipped)
        return out

    @staticmethod
    def _supplies(client: RedfishClient, subsystem: Mapping[str, Any], sample: MakeSample, *,
                  has_energy: bool) -> list[Sample]:
        path = link(subsystem, "PowerSupplies")
        pairs = []
        for member in collection_ids(client.get, path) if path else []:
            supply = client.get(member)
            enabled = (supply.get("Status") or {}).get("State") in {None, "Enabled"}
            metrics = link(supply, "Metrics")
            pairs.append((supply, client.get(metrics) if metrics and enabled else None))
        out, total = power_supply_samples(pairs, sample)
        if total is not None and not has_energy:
            out.append(sample(ENERGY, total, "kwh", MappingProxyType({"from": "PowerSupplies"})))
        return out

    def _thermal(self, client: RedfishClient, chassis: Mapping[str, Any], sample: MakeSample, skipped: Skipped,
                 parts: list[str]) -> list[Sample]:
        def subsystem(sub: Mapping[str, Any]) -> list[Sample]:
            found = []
            if metrics_path := link(sub, "ThermalMetrics"):
                metrics = client.get(metrics_path)
                found = thermal_metrics(metrics, sample, skipped, self._sensors(client, metrics))
            for fan in collection_ids(client.get, link(sub, "Fans")) if link(sub, "Fans") else []:
                found += subsystem_fan(client.get(fan), sample, skipped)
            return found

        out = self._newer(client, chassis, "ThermalSubsystem", parts, subsystem)
        kinds = {s.metric.split("_")[1] for s in out}  # temperature, fan
        if {"temperature", "fan"} <= kinds:
            return out
        legacy = link(chassis, "Thermal")
        if legacy is None:
            if not out:
                raise RedfishError("the chassis has neither a ThermalSubsystem nor a legacy Thermal resource")
            return out
        return out + [s for s in legacy_thermal(client.get(legacy), sample, skipped)
                      if s.metric.split("_")[1] not in kinds]

    @staticmethod
    def _sensors(client: RedfishClient, metrics: Mapping[str, Any]) -> dict[str, dict[str, Any] | None]:
        """The Sensor resources ThermalMetrics' readings name (`DataSourceUri`), for their
        thresholds; one that cannot be read is None (its reading stands, its state is NaN)."""
        found: dict[str, dict[str, Any] | None] = {}
        for excerpt in metrics.get("TemperatureReadingsCelsius") or []:
            uri = excerpt.get("DataSourceUri") if isinstance(excerpt, Mapping) else None
            if isinstance(uri, str) and uri and uri not in found:
                try:
                    found[uri] = client.get(uri)
                except RedfishError as exc:
                    if exc.timed_out:
                        raise
                    found[uri] = None
        return found

    @staticmethod
    def _gpus(client: RedfishClient, system: Mapping[str, Any], sample: MakeSample) -> list[Sample]:
        found = (gpu_info(client.get(path), sample) for path in collection_ids(client.get, link(system, "Processors")))
        return [s for s in found if s is not None]

    def _log(self, client: RedfishClient, system: Mapping[str, Any], cursors: Mapping[str, LogCursor],
             sample: MakeSample, parts: list[str]) -> list[Sample]:
        out: list[Sample] = []
        for service_path in collection_ids(client.get, link(system, "LogServices")):
            entries_path = link(client.get(service_path), "Entries")
            if entries_path is None:
                continue
            cursor = cursors.get(service_path)
            listed = self._listed_entries(client, entries_path, cursor, parts)
            fresh = new_entries(listed, cursor and cursor.entry, cursor and cursor.created)[-self.max_log_entries:]
            for entry in fresh:
                if "Created" not in entry and "Message" not in entry:  # a link only: read the entry itself
                    entry = client.get(entry["@odata.id"])
                out.append(log_entry(entry, service_path, sample))
        return out

    def _listed_entries(self, client: RedfishClient, path: str, cursor: LogCursor | None,
                        parts: list[str]) -> list[Mapping[str, Any]]:
        """A LogService's entries over the collection's pages, each once: `max_log_pages` pages at
        most, and none after the page that reaches the cursor while the log reads newest first (as
        BMCs page their SEL; taken so until an entry listed later is newer than the first listed).
        A page that fails after the first ends the listing, noted in `parts` (the entries read so
        far stand)."""
        listed: dict[str, Mapping[str, Any]] = {}
        try:
            for page in collection_pages(client.get, path, max_pages=self.max_log_pages):
                entries = [m for m in page if isinstance(m.get("@odata.id"), str)]
                for entry in entries:
                    listed.setdefault(entry["@odata.id"], entry)
                order = [entry_key(e) for e in listed.values()]
                newest_first = not order or order[-1] <= order[0]
                if newest_first and cursor and any(already_read(e, cursor.entry, cursor.created) for e in entries):
                    break
        except RedfishError as exc:
            if exc.timed_out or not listed:
                raise
            parts.append(f"log: {exc}")
        return list(listed.values())
