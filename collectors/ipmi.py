"""IPMI collector: power state, DCMI watts, sensors and hardware facts from every node's BMC.

IPMI 2.0 over LAN (RMCP+, what `ipmitool -I lanplus` speaks) with python-ipmi's native
`rmcpplus` interface; sessions, caching and the cipher suite 17 fix are in
`collectors/ipmi_session.py`. Targets are polled concurrently on a bounded thread pool; each
BMC keeps its session between `collect()` calls.

Metric names and labels are Prometheus ipmi_exporter's, so existing dashboards and alerts
carry over (entity = the node's name; ipmi_exporter puts the BMC in the `instance` label):

| metric | unit | labels | from |
| --- | --- | --- | --- |
| `ipmi_up` | state | collector | 1/0 per part: chassis, dcmi, ipmi (sensors), bmc, fru |
| `ipmi_chassis_power_state` | state | | Get Chassis Status: 1 on, 0 off |
| `ipmi_dcmi_power_consumption_watts` | watts | | DCMI Get Power Reading (omitted while inactive) |
| `ipmi_temperature_celsius`, `_state` | celsius, state | id, name | sensors in degrees C |
| `ipmi_fan_speed_rpm` / `_ratio`, `ipmi_fan_speed_state` | rpm / ratio, state | id, name | fans |
| `ipmi_voltage_volts`, `_state` | volts, state | id, name | voltage sensors |
| `ipmi_current_amperes`, `_state` | amperes, state | id, name | current sensors |
| `ipmi_power_watts`, `_state` | watts, state | id, name | power sensors (e.g. PSU input) |
| `ipmi_sensor_value`, `ipmi_sensor_state` | IPMI unit name, state | id, name, type | any other sensor |
| `ipmi_bmc_info` | info (1) | firmware_revision, manufacturer_id, system_firmware_version, bmc_url | Get Device ID |
| `ipmi_fru_info` | info (1) | product_/board_ manufacturer, name, serial, part number; asset_tag | FRU 0 |

States are ipmi_exporter's severities: 0 nominal, 1 warning (a non-critical threshold
crossed), 2 critical (critical or non-recoverable), NaN when the sensor has no threshold
state. `id` is the SDR record id, `name` the sensor name. `ipmi_bmc_info` writes its values as
ipmi_exporter does through FreeIPMI's bmc-info: firmware "1.23" (minor as two hex digits),
manufacturer "Dell Inc. (674)" (collectors/iana.py; unknown numbers bare), "N/A" for a system
firmware version or BMC URL the BMC does not give (Get System Info Parameters 1 and 6); Kiln
adds `ipmi_version`, `product_id` and `device_id`. The hardware facts (`ipmi_bmc_info`,
`ipmi_fru_info`) are read in the poll after first contact (so that a cold start, or a worker
taking over another's BMCs, reads only what each cycle needs) and again once a day, and
emitted from a per-target cache on every collection from then on, as constant-1 samples whose
labels carry the facts: the one way Kiln gets them.
Only full sensor records owned by the BMC itself are read (compact records are discrete
sensors; sensors of satellite controllers would need bridging).
"""

from __future__ import annotations

import functools
import logging
import math
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Self

from pyipmi.errors import (
    AuthenticationError,
    CompletionCodeError,
    DecodingError,
    IpmiConnectionError,
    IpmiLongPasswordError,
    MessageStatusCodeError,
    NotSupportedError,
    RetryError,
)

from collectors.base import NO_LABELS, Held, Sample, TargetResult, not_held
from collectors.ipmi_session import (
    DEFAULT_CIPHER_SUITES,
    PARTS,
    BmcConnection,
    PollResult,
    SensorRecord,
)
from kiln.logs import log_context

log = logging.getLogger(__name__)
UP_LABELS = {part: MappingProxyType({"collector": part}) for part in PARTS}


@dataclass(frozen=True)
class IpmiTarget:
    """A node's BMC. `cipher_suite` None: the collector's setting (default 17, then 3);
    `privilege` None: the collector's (default user)."""

    node: str
    host: str
    port: int = 623
    username: str = ""
    password: str = field(default="", repr=False)
    cipher_suite: int | None = None
    privilege: str | None = None


@dataclass(frozen=True)
class SensorMetric:
    """Where readings of one kind of sensor go: value and state metric, unit, scale."""

    value: str
    state: str
    unit: str
    scale: float = 1.0
    generic: bool = False  # ipmi_exporter's generic metrics carry the sensor type as a label


# IPMI 2.0 table 43-15 base unit codes (Full Sensor Record byte 22), as FreeIPMI abbreviates
# them in the output ipmi_exporter parses; "%" stands for the percentage flag (byte 21 bit 0)
UNIT_ABBREVIATIONS = {1: "C", 2: "F", 3: "K", 4: "V", 5: "A", 6: "W", 7: "J", 18: "RPM", 19: "Hz"}
UNIT_NAMES = {0: "unspecified", 1: "celsius", 2: "fahrenheit", 3: "kelvin", 4: "volts", 5: "amperes",
              6: "watts", 7: "joules", 18: "rpm", 19: "hertz"}
# IPMI 2.0 table 42-3 sensor type codes, named as FreeIPMI's libipmimonitoring names them (the
# `type` label ipmi_exporter copies from ipmimonitoring); 0xC0-0xFF are "OEM Reserved"
SENSOR_TYPES = {
    0x01: "Temperature", 0x02: "Voltage", 0x03: "Current", 0x04: "Fan", 0x05: "Physical Security",
    0x06: "Platform Security Violation Attempt", 0x07: "Processor", 0x08: "Power Supply", 0x09: "Power Unit",
    0x0A: "Cooling Device", 0x0B: "Other Units Based Sensor", 0x0C: "Memory", 0x0D: "Drive Slot",
    0x0E: "POST Memory Resize", 0x0F: "System Firmware Progress", 0x10: "Event Logging Disabled",
    0x11: "Watchdog 1", 0x12: "System Event", 0x13: "Critical Interrupt", 0x14: "Button/Switch",
    0x15: "Module/Board", 0x16: "Microcontroller/Coprocessor", 0x17: "Add In Card", 0x18: "Chassis",
    0x19: "Chip Set", 0x1A: "Other Fru", 0x1B: "Cable/Interconnect", 0x1C: "Terminator",
    0x1D: "System Boot Initiated", 0x1E: "Boot Error", 0x1F: "OS Boot", 0x20: "OS Critical Stop",
    0x21: "Slot/Connector", 0x22: "System ACPI Power State", 0x23: "Watchdog 2", 0x24: "Platform Alert",
    0x25: "Entity Presence", 0x26: "Monitor ASIC/IC", 0x27: "LAN", 0x28: "Management Subsystem Health",
    0x29: "Battery", 0x2A: "Session Audit", 0x2B: "Version Change", 0x2C: "FRU State",
    **{code: "OEM Reserved" for code in range(0xC0, 0x100)},
}
# (unit, sensor type or None for any) -> metrics: ipmi_exporter's collector_ipmi.go mapping
SENSOR_METRICS: dict[tuple[str, str | None], SensorMetric] = {
    ("C", None): SensorMetric("ipmi_temperature_celsius", "ipmi_temperature_state", "celsius"),
    ("RPM", None): SensorMetric("ipmi_fan_speed_rpm", "ipmi_fan_speed_state", "rpm"),
    ("%", "Fan"): SensorMetric("ipmi_fan_speed_ratio", "ipmi_fan_speed_state", "ratio", scale=0.01),
    ("V", None): SensorMetric("ipmi_voltage_volts", "ipmi_voltage_state", "volts"),
    ("A", None): SensorMetric("ipmi_current_amperes", "ipmi_current_state", "amperes"),
    ("W", None): SensorMetric("ipmi_power_watts", "ipmi_power_state", "watts"),
}
GENERIC_SENSOR = SensorMetric("ipmi_sensor_value", "ipmi_sensor_state", "", generic=True)
# threshold comparison bits (lnc, lc, lnr, unc, uc, unr) -> severity, most severe first
THRESHOLD_SEVERITY = ((0b110110, 2.0), (0b001001, 1.0))


SEVERITY_BY_BITS = tuple(next((level for mask, level in THRESHOLD_SEVERITY if bits & mask), 0.0)
                         for bits in range(64))


def sensor_metric(record: SensorRecord) -> SensorMetric:
    """The table entry for a sensor (GENERIC_SENSOR when none matches)."""
    unit = "%" if record.percentage else UNIT_ABBREVIATIONS.get(record.unit, "")
    kind = SENSOR_TYPES.get(record.sensor_type)
    return SENSOR_METRICS.get((unit, kind)) or SENSOR_METRICS.get((unit, None)) or GENERIC_SENSOR


@functools.lru_cache(maxsize=4096)
def sensor_layout(record: SensorRecord) -> tuple[SensorMetric, str, Mapping[str, str]]:
    """Metric, unit and (read-only, shared) labels of a sensor's samples; the same records
    recur on every poll and across BMCs of one model."""
    spec = sensor_metric(record)
    labels = {"id": str(record.record_id), "name": record.name}
    if spec.generic:
        labels["type"] = SENSOR_TYPES.get(record.sensor_type, f"0x{record.sensor_type:02x}")
    return spec, spec.unit or UNIT_NAMES.get(record.unit, f"unit {record.unit}"), MappingProxyType(labels)


def severity(bits: int | None) -> float:
    """ipmi_exporter's sensor state: 0 nominal, 1 warning, 2 critical, NaN without thresholds."""
    return math.nan if bits is None else SEVERITY_BY_BITS[bits & 0x3F]


# RMCP+ status codes of a refused session (IPMI 2.0 table 13-15)
NO_SUITE = "the BMC accepts none of the cipher suites {s}"
BAD_LOGIN = "authentication failed (check the BMC username/password)"
SESSION_REFUSALS = {
    0x01: "the BMC has no free session slot", 0x0B: "the BMC has no free session slot",
    0x04: NO_SUITE, 0x05: NO_SUITE, 0x06: NO_SUITE, 0x07: NO_SUITE, 0x10: NO_SUITE, 0x11: NO_SUITE,
    0x09: "the BMC refused the privilege level", 0x0A: "the BMC refused the privilege level",
    0x0D: "authentication failed (unknown user name: check the BMC username/password)",
    0x0F: BAD_LOGIN,
}

# exception -> readable reason (first matching row; {t}: timeout, {a}: host:port), whether it
# is a timeout, whether the exception's own text is worth appending
FAILURES: tuple[tuple[type[BaseException], str, bool, bool], ...] = (
    (AuthenticationError, BAD_LOGIN, False, False),
    (IpmiLongPasswordError, "password longer than 20 bytes, the IPMI 2.0 limit", False, False),
    (TimeoutError, "no response within {t} s", True, False),
    (RetryError, "no response within {t} s", True, False),
    (ConnectionRefusedError, "connection refused by {a} (no BMC listens on that UDP port)", False, False),
    (socket.gaierror, "cannot resolve the BMC address {a}", False, True),
    (IpmiConnectionError, "cannot reach the BMC {a}", False, True),
    (NotSupportedError, "not supported by the BMC or by Kiln", False, True),
    (DecodingError, "invalid answer from the BMC", False, True),
    (CompletionCodeError, "the BMC refused a request", False, True),
    (OSError, "network error talking to {a}", False, True),
)
# failures that are a BMC's (or the network's) doing, logged as a transition without traceback
FAILURES_EXPECTED = tuple(row[0] for row in FAILURES) + (MessageStatusCodeError,)


def describe_failure(exc: BaseException, conn: BmcConnection) -> tuple[str, bool]:
    """A readable reason for a failed poll, and whether it was a timeout."""
    address = f"{conn.host}:{conn.port}"
    if isinstance(exc, MessageStatusCodeError):
        suites = ", ".join(map(str, conn.cipher_suites))
        template = SESSION_REFUSALS.get(exc.msc, "the BMC refused the session: {e}")
        return template.format(s=suites, e=exc), False
    for kind, template, timed_out, detail in FAILURES:
        if isinstance(exc, kind):
            reason = template.format(t=str(float(conn.timeout)), a=address)
            return (f"{reason}: {exc}" if detail and str(exc) else reason), timed_out
    return f"{type(exc).__name__}: {exc}", False


class IpmiCollector:
    """Polls every target's BMC once per `collect()`; see the module docstring for metrics.

    `workers` bounds the thread pool; `timeout` is the wait for each answer and `retries`
    how often an unanswered request is sent again. A BMC that stops answering costs its
    target max(2, retries + 1) x timeout (on an open session: one try, then a presence ping
    that tells a dead BMC from one that lost the session) and never delays the others.
    `cipher_suite` None tries 17, then 3 (an int: only that suite); a target's own
    `cipher_suite` wins. The suite that worked is tried first next time (`cipher_suite_of`).
    `privilege` (user, operator, admin) is the session's level unless a target says otherwise.
    A part of a poll that fails (DCMI, sensors, FRU …) leaves the result ok, with `ipmi_up` 0
    for that part and the part and its reason in the result's `error`.
    """

    name = "ipmi"

    def __init__(self, targets: Iterable[IpmiTarget], *, workers: int = 64, timeout: float = 2.0,
                 retries: int = 1, cipher_suite: int | None = None, privilege: str = "user",
                 facts_first: bool = False) -> None:
        """Set up one connection per target; nothing is sent before `collect()`. `facts_first`
        reads the hardware facts in the first poll (`kiln collect once`) instead of the next."""
        if timeout <= 0 or retries < 0 or workers < 1:
            raise ValueError("timeout must be > 0, retries >= 0 and workers >= 1")
        self._settings = {"timeout": timeout, "retries": retries, "facts_first": facts_first}
        self._default_suites = (cipher_suite,) if cipher_suite is not None else DEFAULT_CIPHER_SUITES
        self._privilege = privilege
        self.targets: list[IpmiTarget] = []
        self._conns: dict[str, BmcConnection] = {}
        self._by_target: dict[IpmiTarget, BmcConnection] = {}
        self.retarget(targets)
        # threads start as work arrives, up to `workers`; a collector given more targets later
        # (retarget) needs no new pool
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kiln-ipmi")
        self._closed = False

    def retarget(self, targets: Iterable[IpmiTarget]) -> None:
        """Poll these targets from the next `collect()` on. A target seen before (same node,
        address, credentials and settings) keeps its session and cached SDR, so a worker that
        takes over another's BMCs keeps its own warm; a dropped target's session is closed.
        Call it between collections, not during one."""
        targets = list(targets)
        names = [t.node for t in targets]
        if len(set(names)) != len(names):
            raise ValueError("IPMI targets must have distinct node names")
        kept = {t: self._by_target[t] for t in targets if t in self._by_target}
        for target, conn in self._by_target.items():
            if target not in kept:
                with conn.lock:
                    conn.close()
        self._by_target = {t: kept.get(t) or self._connection(t) for t in targets}
        self._conns = {t.node: conn for t, conn in self._by_target.items()}
        self.targets = targets

    def _connection(self, t: IpmiTarget) -> BmcConnection:
        return BmcConnection(t.host, t.port, t.username, t.password, **self._settings,
                             cipher_suites=(t.cipher_suite,) if t.cipher_suite is not None else self._default_suites,
                             privilege=t.privilege or self._privilege)

    def collect(self, progress: Callable[[TargetResult], None] | None = None,
                held: Held | None = None) -> list[TargetResult]:
        """Poll every target concurrently; one result per target, in target order. Never raises.
        `progress` is called with each result as it arrives (from the pool's threads); a target
        that `held` says was lost by the time its turn comes is not polled (`polled` False)."""
        if self._closed:
            return [TargetResult(t.node, ok=False, error="the IPMI collector is closed", polled=False) for t in self.targets]
        futures = [self._pool.submit(self._collect_one, t, held) for t in self.targets]
        if progress is not None:
            for future in futures:
                future.add_done_callback(lambda done: progress(done.result()))
        return [f.result() for f in futures]

    def cipher_suite_of(self, node: str) -> int | None:
        """The cipher suite of the node's last session (None before the first one)."""
        return self._conns[node].cipher_suite

    def stats(self, node: str) -> dict[str, int]:
        """Counters of a node's connection: sessions opened and SDR repository reads."""
        conn = self._conns[node]
        return {"sessions_opened": conn.sessions_opened, "sdr_reads": conn.sdr_reads}

    def packets_sent(self) -> int:
        """Datagrams sent to all targets' BMCs so far (what the benchmarks count per BMC)."""
        return sum(conn.packets_sent for conn in self._conns.values())

    def close(self) -> None:
        """Close every session and stop the thread pool."""
        self._closed = True
        self._pool.shutdown(wait=True)
        for conn in self._conns.values():
            with conn.lock:
                conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _collect_one(self, target: IpmiTarget, held: Held | None = None) -> TargetResult:
        if held is not None and not held(target.node):
            return not_held(target.node)
        with log_context(node=target.node):  # every line logged while polling names the node
            conn = self._conns[target.node]
            started = time.monotonic()
            if not conn.lock.acquire(blocking=False):
                return TargetResult(target.node, ok=False, error="the previous poll of this BMC is still running",
                                    polled=False)
            try:
                poll = conn.poll()
            except Exception as exc:  # the per-target boundary: one BMC never fails the others
                reason, timed_out = describe_failure(exc, conn)
                if not isinstance(exc, FAILURES_EXPECTED):
                    log.exception("IPMI poll of %s (%s:%s) failed unexpectedly", target.node, target.host, target.port)
                now = datetime.now(UTC)
                samples = [Sample(self.name, target.node, "ipmi_up", 0.0, "state", UP_LABELS[p], now) for p in PARTS]
                return TargetResult(target.node, ok=False, samples=samples, error=reason,
                                    seconds=time.monotonic() - started, timed_out=timed_out)
            finally:
                conn.lock.release()
            failed_parts = "; ".join(f"{part}: {why}" for part, why in poll.errors.items()) or None
            return TargetResult(target.node, ok=True, samples=self._samples(target.node, poll), error=failed_parts,
                                seconds=time.monotonic() - started)

    def _samples(self, node: str, poll: PollResult) -> list[Sample]:
        now = datetime.now(UTC)

        def sample(metric: str, value: float, unit: str, labels: Mapping[str, str] = NO_LABELS) -> Sample:
            return Sample(self.name, node, metric, value, unit, labels, now)

        out = [sample("ipmi_up", 0.0 if part in poll.errors else 1.0, "state", UP_LABELS[part])
               for part in PARTS]
        if poll.power_on is not None:
            out.append(sample("ipmi_chassis_power_state", float(poll.power_on), "state"))
        if poll.watts is not None:
            out.append(sample("ipmi_dcmi_power_consumption_watts", float(poll.watts), "watts"))
        for reading in poll.readings:
            spec, unit, labels = sensor_layout(reading.record)
            out.append(sample(spec.value, reading.value * spec.scale, unit, labels))
            out.append(sample(spec.state, severity(reading.threshold_bits), "state", labels))
        if poll.device is not None:
            out.append(sample("ipmi_bmc_info", 1.0, "info", dict(poll.device)))
        if poll.fru is not None:
            out.append(sample("ipmi_fru_info", 1.0, "info", dict(poll.fru)))
        return out
