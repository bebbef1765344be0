"""OpenCost collector: OpenCost's own cost allocation per namespace, step by step.

Kiln imports OpenCost's figures so metering can show them beside its own. One target, the
OpenCost API. Each cycle asks for the last `lookback_steps` complete steps (never the running
one, whose figures still grow):

    GET {KILN_OPENCOST_URL}/allocation/compute?window=START,END&aggregate=namespace
        &step=1h&accumulate=false&includeIdle=true

The answer is `{"code": 200, "data": [{"<namespace>": {allocation}, ...}, ...]}`, one map per
step; an allocation's fields are OpenCost's (`core/pkg/opencost/allocation_json.go`,
https://opencost.io/docs/integrations/api): `name`, `properties` (`cluster`, `namespace`,
...), `window` (`start`, `end`), `cpuCoreHours`, `gpuHours`, `ramByteHours`, `cpuCost`,
`gpuCost`, `ramCost`, `pvCost`, `networkCost`, `loadBalancerCost`, `sharedCost`,
`externalCost`, the `*CostAdjustment` of each resource, `totalCost` (the sum of all of those)
and `totalEfficiency`. OpenCost writes any NaN or infinite float as JSON `null`
(`formatFloat64ForResponse` in core/pkg/opencost/allocation_json.go): such a value is kept as
unknown (None) and counted in the result's `skipped`, never failing the cycle; the adjustment,
load-balancer and external fields, which older OpenCost releases lack, may be absent.
`__idle__` (unallocated capacity, with includeIdle=true) and `__unallocated__` (no namespace)
entries are kept, flagged in the `kind` label. Numbers are parsed as Decimal, never float.

Samples (source `opencost`, entity = namespace, ts = the window's end), one per field:
`opencost_allocation_<field>` (e.g. `opencost_allocation_total_cost`, unit `hours`,
`core_hours`, `byte_hours`, `cost` (OpenCost's currency) or `ratio`), labels `namespace`,
`window_start`, `window_end` (ISO-8601), `kind` (`namespace`, `idle`, `unallocated`),
`cluster` and `exact` (the value as an exact decimal string: `Sample.value` is a float).
`collectors.cluster_store.persist_opencost` stores them in `opencost_allocation`.
Failures (unreachable, HTTP errors, malformed JSON, `code` != 200, missing fields) give a
failed TargetResult with a readable reason.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx

from collectors.base import Sample, TargetResult, skipped_summary
from kiln.db import utcnow
from kiln.settings import Settings

log = logging.getLogger(__name__)

SOURCE = "opencost"
STEPS = {"1h": timedelta(hours=1), "1d": timedelta(days=1)}
IDLE, UNALLOCATED = "__idle__", "__unallocated__"
KINDS = {IDLE: "idle", UNALLOCATED: "unallocated"}
# OpenCost field -> (record attribute, sample unit); any of them may be null (NaN in OpenCost)
FIELDS: dict[str, tuple[str, str]] = {
    "cpuCoreHours": ("cpu_core_hours", "core_hours"),
    "gpuHours": ("gpu_hours", "hours"),
    "ramByteHours": ("ram_byte_hours", "byte_hours"),
    "cpuCost": ("cpu_cost", "cost"),
    "gpuCost": ("gpu_cost", "cost"),
    "ramCost": ("ram_cost", "cost"),
    "pvCost": ("pv_cost", "cost"),
    "networkCost": ("network_cost", "cost"),
    "loadBalancerCost": ("load_balancer_cost", "cost"),
    "sharedCost": ("shared_cost", "cost"),
    "externalCost": ("external_cost", "cost"),
    "cpuCostAdjustment": ("cpu_cost_adjustment", "cost"),
    "gpuCostAdjustment": ("gpu_cost_adjustment", "cost"),
    "ramCostAdjustment": ("ram_cost_adjustment", "cost"),
    "pvCostAdjustment": ("pv_cost_adjustment", "cost"),
    "networkCostAdjustment": ("network_cost_adjustment", "cost"),
    "loadBalancerCostAdjustment": ("load_balancer_cost_adjustment", "cost"),
    "totalCost": ("total_cost", "cost"),
    "totalEfficiency": ("total_efficiency", "ratio"),
}
# absent from older OpenCost answers (e.g. its API docs' 2022 examples): None when missing
OPTIONAL_FIELDS = frozenset({"loadBalancerCost", "externalCost", "cpuCostAdjustment", "gpuCostAdjustment",
                             "ramCostAdjustment", "pvCostAdjustment", "networkCostAdjustment",
                             "loadBalancerCostAdjustment"})
# what totalCost is the sum of (OpenCost's Allocation.TotalCost)
TOTAL_PARTS = tuple(attr for key, (attr, unit) in FIELDS.items() if unit == "cost" and key != "totalCost")
SKIP_NULL = "null value (NaN or infinite in OpenCost)"
METRIC_PREFIX = "opencost_allocation_"


class OpenCostError(Exception):
    """OpenCost's answer cannot be used; the message says why."""


@dataclass(frozen=True)
class OpenCostRecord:
    """OpenCost's allocation of one namespace over one window, exactly as reported (None: OpenCost
    wrote null, or an older release lacks the field)."""

    namespace: str
    kind: str  # namespace, idle, unallocated
    cluster: str
    window_start: datetime
    window_end: datetime
    cpu_core_hours: Decimal | None = None
    gpu_hours: Decimal | None = None
    ram_byte_hours: Decimal | None = None
    cpu_cost: Decimal | None = None
    gpu_cost: Decimal | None = None
    ram_cost: Decimal | None = None
    pv_cost: Decimal | None = None
    network_cost: Decimal | None = None
    load_balancer_cost: Decimal | None = None
    shared_cost: Decimal | None = None
    external_cost: Decimal | None = None
    cpu_cost_adjustment: Decimal | None = None
    gpu_cost_adjustment: Decimal | None = None
    ram_cost_adjustment: Decimal | None = None
    pv_cost_adjustment: Decimal | None = None
    network_cost_adjustment: Decimal | None = None
    load_balancer_cost_adjustment: Decimal | None = None
    total_cost: Decimal | None = None
    total_efficiency: Decimal | None = None

    def parts_total(self) -> Decimal | None:
        """The sum of the cost parts totalCost is made of (None when one is unknown)."""
        parts = [getattr(self, attr) for attr in TOTAL_PARTS]
        return None if any(part is None for part in parts) else sum(parts, Decimal(0))


def _time(value: Any, what: str) -> datetime:
    if not isinstance(value, str):
        raise OpenCostError(f"{what} is not a timestamp: {value!r}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise OpenCostError(f"{what} is not an RFC 3339 timestamp: {value!r}") from None
    if parsed.tzinfo is None:
        raise OpenCostError(f"{what} has no time zone: {value!r}")
    return parsed.astimezone(UTC)


def _number(allocation: Mapping[str, Any], key: str, where: str) -> Decimal | None:
    if key not in allocation and key not in OPTIONAL_FIELDS:
        raise OpenCostError(f"{where} lacks field '{key}'")
    value = allocation.get(key)
    if value is None:
        return None
    if not isinstance(value, Decimal) or not value.is_finite():
        raise OpenCostError(f"{where}: field '{key}' is not a number: {value!r}")
    return value


def parse_allocation_record(name: str, allocation: Any, step: int, nulls: list[str] | None = None) -> OpenCostRecord:
    """One allocation entry of step `step` (0-based) as a record; OpenCostError if malformed.
    The amounts OpenCost wrote as null are appended to `nulls` (`namespace.field`)."""
    where = f"allocation '{name}' of step {step + 1}"
    if not isinstance(allocation, dict):
        raise OpenCostError(f"{where} is not an object")
    window = allocation.get("window")
    if not isinstance(window, dict):
        raise OpenCostError(f"{where} lacks field 'window'")
    properties = allocation.get("properties") or {}
    values = {attr: _number(allocation, key, where) for key, (attr, _) in FIELDS.items()}
    if nulls is not None:
        # a null efficiency is routine (idle capacity has none); a null amount is worth counting
        nulls.extend(f"{name}.{key}" for key in FIELDS
                     if key != "totalEfficiency" and key in allocation and allocation[key] is None)
    return OpenCostRecord(
        namespace=name, kind=KINDS.get(name, "namespace"),
        cluster=str(properties.get("cluster") or "") if isinstance(properties, dict) else "",
        window_start=_time(window.get("start"), f"{where}: window.start"),
        window_end=_time(window.get("end"), f"{where}: window.end"), **values)


def parse_allocation_response(body: bytes | str, nulls: list[str] | None = None) -> list[OpenCostRecord]:
    """Every record of an `/allocation/compute` answer; OpenCostError says what is wrong. The
    fields written as null are appended to `nulls`."""
    try:
        document = json.loads(body, parse_float=Decimal, parse_int=Decimal)
    except ValueError as exc:  # JSONDecodeError and undecodable bytes
        raise OpenCostError(f"malformed JSON: {exc}") from None
    if not isinstance(document, dict):
        raise OpenCostError("the answer is not a JSON object")
    code = document.get("code")
    if code != 200:
        message = document.get("message") or document.get("data") or "no message"
        raise OpenCostError(f"OpenCost reported an error (code {code}): {message}")
    steps = document.get("data")
    if not isinstance(steps, list):
        raise OpenCostError("field 'data' is not a list of allocation sets")
    records = []
    for index, allocations in enumerate(steps):
        if allocations is None:
            continue
        if not isinstance(allocations, dict):
            raise OpenCostError(f"step {index + 1} of 'data' is not an object")
        records.extend(parse_allocation_record(name, entry, index, nulls) for name, entry in allocations.items())
    return records


def record_samples(record: OpenCostRecord) -> list[Sample]:
    """One sample per field of a record, the exact value in the `exact` label."""
    base = {"namespace": record.namespace, "window_start": record.window_start.isoformat(),
            "window_end": record.window_end.isoformat(), "kind": record.kind, "cluster": record.cluster}
    out = []
    for attr, unit in FIELDS.values():
        value = getattr(record, attr)
        if value is not None:
            out.append(Sample(SOURCE, record.namespace, METRIC_PREFIX + attr, float(value), unit,
                              {**base, "exact": format(value, "f")}, record.window_end))
    return out


def records_from_samples(samples: Iterable[Sample]) -> list[OpenCostRecord]:
    """The records that `record_samples` turned into samples (inverse of it)."""
    attrs = {attr for attr, _ in FIELDS.values()}
    grouped: dict[tuple[str, str, str], dict[str, Any]] = {}
    for sample in samples:
        attr = sample.metric.removeprefix(METRIC_PREFIX)
        if sample.source != SOURCE or attr not in attrs:
            continue
        labels = sample.labels
        key = (labels["namespace"], labels["window_start"], labels["window_end"])
        values = grouped.setdefault(key, {"namespace": key[0], "kind": labels["kind"], "cluster": labels["cluster"],
                                          "window_start": datetime.fromisoformat(key[1]),
                                          "window_end": datetime.fromisoformat(key[2])})
        values[attr] = Decimal(labels["exact"])
    return [OpenCostRecord(**values) for values in grouped.values()]


class OpenCostCollector:
    """OpenCost's per-namespace allocation over the last complete steps."""

    name = SOURCE

    def __init__(self, client: httpx.Client, *, step: str = "1h", lookback_steps: int = 24,
                 clock: Callable[[], datetime] = utcnow) -> None:
        if step not in STEPS:
            raise ValueError(f"step must be one of {', '.join(STEPS)}, not {step!r}")
        if lookback_steps < 1:
            raise ValueError("lookback_steps must be at least 1")
        self.client, self.step, self.lookback_steps, self.clock = client, step, lookback_steps, clock
        self.target = str(client.base_url).rstrip("/")
        self._healthy = True

    def window(self) -> tuple[datetime, datetime]:
        """[start, end) of the complete steps to ask for: the last `lookback_steps` before now."""
        size = STEPS[self.step]
        now = self.clock().astimezone(UTC)
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        end = epoch + ((now - epoch) // size) * size
        return end - self.lookback_steps * size, end

    def collect(self) -> list[TargetResult]:
        """Fetch and parse the allocation of the last complete steps."""
        started = time.monotonic()
        start, end = self.window()
        params = {"window": f"{start:%Y-%m-%dT%H:%M:%SZ},{end:%Y-%m-%dT%H:%M:%SZ}", "aggregate": "namespace",
                  "step": self.step, "accumulate": "false", "includeIdle": "true"}
        timed_out = False
        try:
            response = self.client.get("/allocation/compute", params=params)
            if response.status_code != 200:
                raise OpenCostError(f"HTTP {response.status_code}: {_excerpt(response)}")
            nulls: list[str] = []
            records = parse_allocation_response(response.content, nulls=nulls)
            samples = [s for record in records for s in record_samples(record)]
        except httpx.TimeoutException as exc:
            reason, timed_out = f"OpenCost at {self.target} did not answer in time: {exc}", True
        except httpx.HTTPError as exc:
            reason = f"cannot reach OpenCost at {self.target}: {exc}"
        except OpenCostError as exc:
            reason = f"OpenCost at {self.target}: {exc}"
        else:
            self._transition(True, "")
            skipped = {SKIP_NULL: len(nulls)} if nulls else {}
            return [TargetResult(self.target, ok=True, samples=samples, skipped=skipped, error=skipped_summary(skipped),
                                 seconds=time.monotonic() - started)]
        self._transition(False, reason)
        return [TargetResult(self.target, ok=False, error=reason, seconds=time.monotonic() - started,
                             timed_out=timed_out)]

    def close(self) -> None:
        """Close the HTTP client."""
        self.client.close()

    def _transition(self, healthy: bool, reason: str) -> None:
        """Log when OpenCost starts failing and when it recovers, not on every cycle."""
        if self._healthy != healthy:
            if healthy:
                log.info("OpenCost: %s answers again", self.target)
            else:
                log.warning("OpenCost: %s failed: %s", self.target, reason)
        self._healthy = healthy


def _excerpt(response: httpx.Response) -> str:
    """The error message of an OpenCost error body, else its first 200 characters."""
    try:
        document = response.json()
        if isinstance(document, dict) and document.get("message"):
            return str(document["message"])
    except ValueError:
        pass
    text = " ".join(response.text.split())
    return (text[:200] + "…") if len(text) > 200 else (text or response.reason_phrase)


def build(settings: Settings) -> OpenCostCollector | None:
    """The collector for `KILN_OPENCOST_URL`, or None when that is unset."""
    if not settings.opencost_url:
        return None
    return OpenCostCollector(httpx.Client(base_url=settings.opencost_url.rstrip("/"), timeout=30.0))
