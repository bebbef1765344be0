"""Redfish collector: power state, health, watts and thermal sensors from a node's BMC over HTTPS.

Plain httpx against Redfish's JSON (DMTF DSP0266), HTTP basic authentication, one client per
target with the target's timeout. Per target: the service root (`/redfish/v1/`), its first
ComputerSystem, and the Chassis the System links to (else the first Chassis) with its legacy
`Power` and `Thermal` resources (the newer PowerSubsystem/ThermalSubsystem are not read yet), and
the firmware inventory (`UpdateService/FirmwareInventory`, collectors/redfish_firmware.py).
Metric names are the IPMI path's (collectors/ipmi.py, ipmi_exporter's names), so energy
metering, dashboards and alerts treat a Redfish node like an IPMI one (entity = node name):

| metric | unit | labels | from |
| --- | --- | --- | --- |
| `ipmi_chassis_power_state` | state | | System `PowerState`: 1 On, Paused, PoweringOff; 0 Off, PoweringOn |
| `redfish_health_state` | state | | System `Status.HealthRollup` (else `Status.Health`): 0 OK, 1 Warning, 2 Critical |
| `ipmi_dcmi_power_consumption_watts` | watts | | Chassis `Power` `PowerControl[0].PowerConsumedWatts` |
| `ipmi_temperature_celsius`, `_state` | celsius, state | id, name | Chassis `Thermal` `Temperatures[].ReadingCelsius` |
| `ipmi_fan_speed_rpm`, `ipmi_fan_speed_state` | rpm, state | id, name | `Thermal` `Fans[].Reading` with `ReadingUnits` RPM (or v1.0 `ReadingRPM`) |
| `ipmi_fan_speed_ratio`, `ipmi_fan_speed_state` | ratio, state | id, name | `Fans[].Reading` with `ReadingUnits` Percent, x 0.01 |

`id` is the array member's `MemberId`, `name` its `Name` (v1.0 fans: `FanName`). States are
ipmi_exporter's severities computed from the member's thresholds: 2 when the reading is at or
beyond `Upper`/`LowerThresholdCritical` or `...Fatal`, 1 at or beyond `...NonCritical`, else 0;
NaN when the member has no threshold. A sensor without a reading (disabled, absent) is left
out and counted in `TargetResult.skipped`. A missing or failing Power/Thermal resource leaves
the result ok with that part named in `error`; a failing service root or System (401, 503, a
timeout, not JSON) makes the whole target fail with a readable `error`, never an exception.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from types import MappingProxyType
from typing import Any, Self

import httpx

from collectors.base import Sample, TargetResult, skipped_summary
from collectors.redfish_firmware import firmware_samples

log = logging.getLogger(__name__)
NO_LABELS: Mapping[str, str] = MappingProxyType({})
SERVICE_ROOT = "/redfish/v1/"

POWER_STATES = {"On": 1.0, "Paused": 1.0, "PoweringOff": 1.0, "Off": 0.0, "PoweringOn": 0.0}
HEALTH_STATES = {"OK": 0.0, "Warning": 1.0, "Critical": 2.0}
# Thermal Fans[].ReadingUnits -> (metric, unit, scale)
FAN_UNITS = {"RPM": ("ipmi_fan_speed_rpm", "rpm", 1.0), "Percent": ("ipmi_fan_speed_ratio", "ratio", 0.01)}
# (threshold property suffix, severity), most severe first; Upper* is crossed at or above,
# Lower* at or below
THRESHOLDS = (("Fatal", 2.0), ("Critical", 2.0), ("NonCritical", 1.0))
# HTTP status -> readable reason ({u}: the URL asked)
STATUS_REASONS = {
    401: "authentication failed (check the BMC username/password): {u} answered HTTP 401",
    403: "the BMC account may not read {u} (HTTP 403)",
    404: "the BMC has no {u} (HTTP 404)",
    503: "the BMC is unavailable (HTTP 503 from {u}); it may be busy or restarting",
}


class RedfishError(Exception):
    """A request the BMC did not answer usefully; the message is readable as it is."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


@dataclass(frozen=True)
class RedfishTarget:
    """A node's Redfish service: `url` is the BMC's base URL (`https://bmc-17`; a trailing
    `/redfish/v1` is accepted). `timeout` None: the collector's; `verify` checks TLS certificates."""

    node: str
    url: str
    username: str = ""
    password: str = field(default="", repr=False)
    timeout: float | None = None
    verify: bool = True


def severity(reading: float, member: Mapping[str, Any]) -> float:
    """ipmi_exporter's state from a Redfish member's thresholds: 0, 1, 2, or NaN without any."""
    found = False
    for suffix, level in THRESHOLDS:
        upper, lower = member.get(f"UpperThreshold{suffix}"), member.get(f"LowerThreshold{suffix}")
        found = found or upper is not None or lower is not None
        if (upper is not None and reading >= upper) or (lower is not None and reading <= lower):
            return level
    return 0.0 if found else math.nan


def first_member(resource: Mapping[str, Any], link: str) -> str | None:
    """The `@odata.id` of the first entry of a Links list or a collection's Members."""
    members = resource.get(link) or []
    return members[0].get("@odata.id") if members else None


class RedfishCollector:
    """Reads every target's Redfish service once per `collect()`; see the module docstring.

    `timeout` is each request's limit (connect, read) unless a target sets its own; a target
    makes up to six requests, plus two and one per member for the firmware inventory. Targets are
    read concurrently on up to `workers` threads.
    """

    name = "redfish"

    def __init__(self, targets: Iterable[RedfishTarget], *, timeout: float = 5.0, workers: int = 16,
                 clock: Callable[[], datetime] | None = None) -> None:
        """Set up one HTTP client per target; nothing is sent before `collect()`."""
        self.targets = list(targets)
        names = [t.node for t in self.targets]
        if len(set(names)) != len(names):
            raise ValueError("Redfish targets must have distinct node names")
        if timeout <= 0 or workers < 1:
            raise ValueError("timeout must be > 0 and workers >= 1")
        self.timeout = timeout
        self.clock = clock or (lambda: datetime.now(UTC))
        self._clients = {t.node: self._client(t) for t in self.targets}
        self._pool = ThreadPoolExecutor(max_workers=max(1, min(workers, len(self.targets))),
                                        thread_name_prefix="kiln-redfish")

    def _client(self, target: RedfishTarget) -> httpx.Client:
        base = target.url.rstrip("/").removesuffix("/redfish/v1")
        auth = httpx.BasicAuth(target.username, target.password) if target.username else None
        return httpx.Client(base_url=base, auth=auth, verify=target.verify,
                            timeout=target.timeout or self.timeout, headers={"Accept": "application/json"})

    def collect(self) -> list[TargetResult]:
        """Read every target concurrently; one result per target, in target order. Never raises."""
        return list(self._pool.map(self._collect_one, self.targets))

    def close(self) -> None:
        """Stop the thread pool and close the HTTP connections."""
        self._pool.shutdown(wait=True)
        for client in self._clients.values():
            client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _get(self, client: httpx.Client, path: str) -> dict[str, Any]:
        """GET one resource as JSON, or raise RedfishError with a readable reason."""
        url = f"{client.base_url}".rstrip("/") + path
        try:
            response = client.get(path)
        except httpx.TimeoutException as exc:
            raise RedfishError(f"no answer from {url} within {client.timeout.read} s", timed_out=True) from exc
        except httpx.HTTPError as exc:
            raise RedfishError(f"cannot reach {url}: {exc}") from exc
        if response.status_code != 200:
            reason = STATUS_REASONS.get(response.status_code, "{u} answered HTTP " + str(response.status_code))
            raise RedfishError(reason.format(u=url) + redfish_message(response))
        try:
            body = response.json()
        except ValueError as exc:
            raise RedfishError(f"{url} did not answer JSON") from exc
        if not isinstance(body, dict):
            raise RedfishError(f"{url} did not answer a Redfish resource")
        return body

    def _collect_one(self, target: RedfishTarget) -> TargetResult:
        began = time.monotonic()
        try:
            return self._read(target, began)
        except Exception as exc:  # the per-target boundary: one odd BMC never fails the others
            log.exception("Redfish read of %s (%s) failed unexpectedly", target.node, target.url)
            return TargetResult(target.node, ok=False, error=f"unexpected answer from {target.url}: "
                                f"{type(exc).__name__}: {exc}", seconds=time.monotonic() - began)

    def _read(self, target: RedfishTarget, began: float) -> TargetResult:
        client = self._clients[target.node]
        parts: list[str] = []
        skipped: dict[str, int] = {}
        try:
            root = self._get(client, SERVICE_ROOT)
            systems = self._get(client, root.get("Systems", {}).get("@odata.id") or SERVICE_ROOT + "Systems")
            system_path = first_member(systems, "Members")
            if system_path is None:
                raise RedfishError("the Redfish service lists no ComputerSystem")
            system = self._get(client, system_path)
        except RedfishError as exc:
            return TargetResult(target.node, ok=False, error=str(exc), seconds=time.monotonic() - began,
                                timed_out=exc.timed_out)
        now = self.clock()

        def sample(metric: str, value: float, unit: str, labels: Mapping[str, str] = NO_LABELS) -> Sample:
            return Sample(self.name, target.node, metric, value, unit, labels, now)

        out: list[Sample] = []
        if system.get("PowerState") in POWER_STATES:
            out.append(sample("ipmi_chassis_power_state", POWER_STATES[system["PowerState"]], "state"))
        status = system.get("Status") or {}
        health = status.get("HealthRollup") or status.get("Health")
        if health in HEALTH_STATES:
            out.append(sample("redfish_health_state", HEALTH_STATES[health], "state"))
        try:
            chassis_path = (first_member(system.get("Links") or {}, "Chassis")
                            or first_member(self._get(client, root.get("Chassis", {}).get("@odata.id")
                                                      or SERVICE_ROOT + "Chassis"), "Members"))
            if chassis_path is None:
                raise RedfishError("the Redfish service lists no Chassis")
            chassis = self._get(client, chassis_path)
        except RedfishError as exc:
            chassis = None
            parts.append(f"chassis: {exc}")
        for part, reader in (("Power", self._power), ("Thermal", self._thermal)) if chassis is not None else ():
            path = (chassis.get(part) or {}).get("@odata.id")
            if path is None:
                parts.append(f"{part.lower()}: the chassis has no legacy {part} resource")
                continue
            try:
                out.extend(reader(self._get(client, path), sample, skipped))
            except RedfishError as exc:
                parts.append(f"{part.lower()}: {exc}")
        try:  # firmware inventory: collectors/redfish_firmware.py
            out.extend(firmware_samples(partial(self._get, client), root, target.node, self.name, now, skipped, (RedfishError,)))
        except RedfishError as exc:
            parts.append(f"firmware: {exc}")
        error = "; ".join(filter(None, [*parts, skipped_summary(skipped)])) or None
        return TargetResult(target.node, ok=True, samples=out, error=error, skipped=skipped,
                            seconds=time.monotonic() - began)

    @staticmethod
    def _power(power: Mapping[str, Any], sample: Callable[..., Sample], skipped: dict[str, int]) -> list[Sample]:
        controls = power.get("PowerControl") or []
        watts = controls[0].get("PowerConsumedWatts") if controls else None
        if watts is None:
            skipped["no power reading"] = skipped.get("no power reading", 0) + 1
            return []
        return [sample("ipmi_dcmi_power_consumption_watts", float(watts), "watts")]

    @staticmethod
    def _thermal(thermal: Mapping[str, Any], sample: Callable[..., Sample], skipped: dict[str, int]) -> list[Sample]:
        out: list[Sample] = []
        for index, member in enumerate(thermal.get("Temperatures") or []):
            reading = member.get("ReadingCelsius")
            if reading is None:
                skipped["no temperature reading"] = skipped.get("no temperature reading", 0) + 1
                continue
            labels = sensor_labels(member, index)
            out.append(sample("ipmi_temperature_celsius", float(reading), "celsius", labels))
            out.append(sample("ipmi_temperature_state", severity(reading, member), "state", labels))
        for index, member in enumerate(thermal.get("Fans") or []):
            reading, units = member.get("Reading"), member.get("ReadingUnits")
            if reading is None and member.get("ReadingRPM") is not None:
                reading, units = member["ReadingRPM"], "RPM"
            if reading is None or units not in FAN_UNITS:
                skipped["no fan reading"] = skipped.get("no fan reading", 0) + 1
                continue
            metric, unit, scale = FAN_UNITS[units]
            labels = sensor_labels(member, index)
            out.append(sample(metric, float(reading) * scale, unit, labels))
            out.append(sample("ipmi_fan_speed_state", severity(reading, member), "state", labels))
        return out


def sensor_labels(member: Mapping[str, Any], index: int) -> Mapping[str, str]:
    """`id` (MemberId, else the position) and `name` (Name, else v1.0's FanName) of a member."""
    name = member.get("Name") or member.get("FanName") or ""
    return MappingProxyType({"id": str(member.get("MemberId", index)), "name": str(name)})


def redfish_message(response: httpx.Response) -> str:
    """`: <message>` from a Redfish error body (`{"error": {"message": ...}}`), else ''."""
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return ""
    return f": {message}" if isinstance(message, str) and message else ""
