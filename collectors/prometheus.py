"""Prometheus as a source: a thin client, and what the GPU exporters' tables plug into.

`PrometheusClient` wraps prometheus-api-client's `PrometheusConnect` with a timeout, no
retries (the scheduler calls again next cycle) and readable errors: Prometheus down →
"Prometheus at URL is unreachable: …"; a bad query → the server's own error text; `window()`
turns [start, end) into a range and evaluation time that select exactly its raw samples.

`GpuCollector` turns one exporter's declarative metric table (`GpuExporter`: dcgm.py,
rocm.py) into current-value Samples per GPU (`GpuExporter.read`, the one mapping shared with
exporters scraped directly). A MIG instance or compute partition is an entity of its own,
`ident/instance`, whose samples carry `parent_gpu`; whole-GPU values repeated on its series are
the GPU's, kept once. The usage queries metering uses are in `collectors.gpu_usage`.
"""

from __future__ import annotations

import ast
import json
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.exceptions import MaxRetryError, ReadTimeoutError
from urllib3.util.retry import Retry

from collectors.base import Sample, TargetResult, skipped_summary

MS = timedelta(milliseconds=1)


class PrometheusError(Exception):
    """A query that did not give a result, with a message fit for an operator."""

    def __init__(self, message: str, *, unreachable: bool = False, timed_out: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable
        self.timed_out = timed_out


def rfc3339(at: datetime) -> str:
    """`at` as RFC 3339 UTC with milliseconds (Prometheus' resolution); `at` must be aware."""
    if at.tzinfo is None:
        raise ValueError(f"{at!r} has no timezone; pass an aware datetime (UTC)")
    at = at.astimezone(UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


class PrometheusClient:
    """Instant queries against one Prometheus, through prometheus-api-client."""

    def __init__(self, url: str, *, timeout: float = 10.0, headers: Mapping[str, str] | None = None,
                 disable_ssl: bool = False) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._prom = PrometheusConnect(url=self.url, headers=dict(headers or {}), disable_ssl=disable_ssl,
                                       retry=Retry(total=0, raise_on_status=False), timeout=timeout)
        self._left_open: bool | None = None

    def query(self, promql: str, at: datetime | None = None, *, timeout: float | None = None) -> list[dict]:
        """Evaluate `promql` at `at` (default: the server's now); the API's `result` list.
        Raises PrometheusError (unreachable, timed out, or the server's error text)."""
        seconds = self.timeout if timeout is None else timeout
        params = {"timeout": f"{seconds:g}s"}
        if at is not None:
            params["time"] = rfc3339(at)
        try:
            return self._prom.custom_query(promql, params=params, timeout=seconds)
        except requests.Timeout as exc:
            raise PrometheusError(f"Prometheus at {self.url} did not answer within {seconds:g} s",
                                  timed_out=True) from exc
        except requests.ConnectionError as exc:
            reason = exc.args[0].reason if exc.args and isinstance(exc.args[0], MaxRetryError) else exc
            if isinstance(reason, ReadTimeoutError):
                raise PrometheusError(f"Prometheus at {self.url} did not answer within {seconds:g} s",
                                      timed_out=True) from exc
            raise PrometheusError(f"Prometheus at {self.url} is unreachable: {_readable(reason)}",
                                  unreachable=True) from exc
        except PrometheusApiClientException as exc:
            raise PrometheusError(f"Prometheus at {self.url} rejected the query: {_server_error(exc)}") from exc
        except (ValueError, KeyError, TypeError) as exc:  # a 200 that is not a Prometheus API answer
            raise PrometheusError(f"{self.url} did not answer like the Prometheus API: {exc}") from exc

    def range_is_left_open(self) -> bool:
        """Whether range selectors exclude their start (Prometheus 3.x) or include it (2.x);
        probed once with a subquery at an aligned time (3 points when closed, 2 when open)."""
        if self._left_open is None:
            rows = self.query("count_over_time(vector(1)[2m:1m])", datetime.fromtimestamp(120, UTC))
            self._left_open = float(rows[0]["value"][1]) == 2
        return self._left_open

    def window(self, start: datetime, end: datetime) -> tuple[str, datetime]:
        """(PromQL range like `[2592000000ms]`, evaluation time) selecting exactly the raw
        samples with start <= t < end."""
        span = (end - start) // MS
        if (end - start) % MS or (start - datetime.fromtimestamp(0, UTC)) % MS:
            raise ValueError("start and end must be whole milliseconds (Prometheus' resolution)")
        if span <= 1:
            raise ValueError(f"empty window: start {start} is not before end {end}")
        # evaluated at end-1ms: closed [e-r, e] needs r = span-1ms; left-open (e-r, e] needs r = span
        length = span if self.range_is_left_open() else span - 1
        return f"[{length}ms]", end - MS


def _readable(reason: object) -> str:
    text = str(reason)
    # urllib3: "HTTPConnection(host=..., port=...): Failed to establish a new connection: [Errno 111] ..."
    return text.split("): ", 1)[1] if "): " in text else text


def _server_error(exc: PrometheusApiClientException) -> str:
    """The `error` of Prometheus' JSON body inside prometheus-api-client's exception message
    ("HTTP Status Code 400 (b'{...}')"), else the message itself."""
    text = str(exc)
    match = re.search(r"\((b?'.*'|b?\".*\")\)\s*$", text, re.DOTALL)
    if match:
        try:
            body = ast.literal_eval(match.group(1))
            data = json.loads(body.decode() if isinstance(body, bytes) else body)
            if isinstance(data, dict) and data.get("error"):
                return str(data["error"])
        except (ValueError, SyntaxError, UnicodeDecodeError):
            pass
    return text


# -- GPU exporters ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExporterMetric:
    """One row of an exporter's table: its metric → Kiln's metric, unit and scale. `blank_from`:
    values at or above it are the exporter's "no value" sentinels (DCGM's blanks), not readings.
    `whole_gpu`: a value of the physical GPU (power, energy, temperature, XID) that an exporter
    repeats on each of its instances' series: it belongs to the GPU and is kept once."""

    exporter: str
    metric: str
    unit: str
    scale: float = 1.0
    blank_from: float | None = None
    whole_gpu: bool = False


# Why a series gave no sample (TargetResult.skipped keys, `kiln collect once`, /metrics).
SKIP_NO_IDENTITY = "no GPU identity"
SKIP_NOT_A_NUMBER = "NaN or infinite value"
SKIP_BLANK = "blank value (not supported / not found)"
SKIP_NOT_ON_INSTANCE = "not supported on a MIG instance"
SKIP_REPEATED = "whole-GPU value repeated on an instance"


@dataclass(frozen=True)
class GpuExporter:
    """What Kiln needs to know about one GPU exporter, declared once per vendor."""

    source: str  # Sample.source
    metrics: tuple[ExporterMetric, ...]
    presence: str  # sampled for every GPU at every scrape: GPU-hours are its samples
    entity_labels: tuple[str, ...]  # the GPU's identity (UUID, serial number), first non-empty wins
    host_labels: tuple[str, ...]  # spellings of the host label, preferred first
    keep_labels: tuple[str, ...]  # copied into Sample.labels when present
    # the workload holding the GPU, preferred spelling first: when a scrape does not honour the
    # exporter's labels (dcgm-exporter's Helm chart sets honorLabels: false), Prometheus moves the
    # series' own `namespace`/`pod` to `exported_*` and puts the exporter's in their place, so an
    # `exported_namespace` is always the workload's; Sample.labels always say `namespace`, `pod`
    namespace_labels: tuple[str, ...] = ("exported_namespace", "namespace")
    instance_label: str | None = None  # a slice of the GPU (MIG instance, compute partition)
    whole_gpu_instances: frozenset[str] = frozenset()  # instance label values meaning "the whole GPU"
    # ... but only where this label (the partition mode) is absent or one of `whole_gpu_modes`:
    # partition 0 of a CPX GPU is a slice like the others, partition 0 of an SPX GPU is the GPU
    partition_mode_label: str | None = None
    whole_gpu_modes: frozenset[str] = frozenset()
    no_identity: frozenset[str] = frozenset()  # identity values that identify nothing (an all-zero UUID)
    # on an instance's series, presence and utilisation come from this metric instead of `presence`
    # (which the exporter leaves out or reports as 0 there); None: `presence` works on instances
    instance_presence: str | None = None
    instance_detail_labels: tuple[str, ...] = ()  # labels that describe the instance (its profile)

    @property
    def pod_labels(self) -> tuple[str, ...]:
        """The pod label in the spellings that go with the namespace labels (`exported_pod` …)."""
        return tuple(name.replace("namespace", "pod") for name in self.namespace_labels)

    @property
    def container_labels(self) -> tuple[str, ...]:
        """Likewise for the container label."""
        return tuple(name.replace("namespace", "container") for name in self.namespace_labels)

    def labelled(self, namespace_labels: Sequence[str], host_labels: Sequence[str]) -> GpuExporter:
        """This exporter with the site's spellings of the namespace and host labels (settings)."""
        return replace(self, namespace_labels=tuple(namespace_labels), host_labels=tuple(host_labels))

    def table(self) -> dict[str, ExporterMetric]:
        """The metric table keyed by the exporter's metric name."""
        return {row.exporter: row for row in self.metrics}

    def identity(self, labels: Mapping[str, str]) -> tuple[str | None, str | None]:
        """(the physical GPU's identity, the instance or partition id or None) of a series."""
        ident = next((labels[name] for name in self.entity_labels
                      if labels.get(name) and labels[name] not in self.no_identity), None)
        instance = labels.get(self.instance_label) if self.instance_label else None
        mode = labels.get(self.partition_mode_label, "").lower() if self.partition_mode_label else ""
        whole = instance in self.whole_gpu_instances and (not mode or mode in self.whole_gpu_modes)
        return ident, (instance if instance and not whole else None)

    def entity(self, labels: Mapping[str, str]) -> str | None:
        """The GPU (or GPU slice: `ident/instance`) a series is about; None without identity."""
        ident, instance = self.identity(labels)
        return f"{ident}/{instance}" if ident and instance else ident

    def host(self, labels: Mapping[str, str]) -> str | None:
        """The host label's value under whichever spelling the series has."""
        return _first(labels, self.host_labels)

    def host_expr(self, expr: str, target: str = "kiln_host") -> str:
        """`expr` with label `target` set from the host label in any spelling (preferred wins)."""
        return coalesce_expr(expr, self.host_labels, target)

    def namespace_expr(self, expr: str, target: str = "kiln_namespace") -> str:
        """`expr` with label `target` set from the namespace label in any spelling."""
        return coalesce_expr(expr, self.namespace_labels, target)

    def sample(self, spec: ExporterMetric, labels: Mapping[str, str], value: float, ts: datetime) -> Sample | str:
        """The Sample one series' value gives, or why it gives none (a SKIP_* reason): the one
        mapping for exporter text scraped directly and for the same series read from Prometheus.
        On an instance's series a whole-GPU value is the parent GPU's sample (no workload labels:
        the GPU's power is not one instance's), the instance presence metric is its utilisation,
        and the whole-GPU presence metric is not supported."""
        ident, instance = self.identity(labels)
        if not ident:
            return SKIP_NO_IDENTITY
        value = float(value)  # the text parser gives ints as written: compare blanks as Prometheus stores them
        if not math.isfinite(value):
            return SKIP_NOT_A_NUMBER
        if spec.blank_from is not None and value >= spec.blank_from:
            return SKIP_BLANK
        metric, entity, workload = spec.metric, ident, True
        if instance is not None:
            if spec.whole_gpu:
                workload = False
            elif self.instance_presence and spec.exporter == self.presence:
                return SKIP_NOT_ON_INSTANCE
            else:
                entity = f"{ident}/{instance}"
                if spec.exporter == self.instance_presence:
                    metric = self.table()[self.presence].metric
        kept = {name: labels[name] for name in self.keep_labels if labels.get(name)}
        spellings = [("host", self.host_labels), ("instance", ("instance",))]
        if workload:
            spellings += [("namespace", self.namespace_labels), ("pod", self.pod_labels),
                          ("container", self.container_labels)]
        for name, names in spellings:
            value_of = _first(labels, names)
            if value_of:
                kept[name] = value_of
        if entity != ident:
            kept["parent_gpu"] = ident
        elif instance is not None:  # the GPU's own value read off an instance's series
            for name in (self.instance_label, *self.instance_detail_labels):
                kept.pop(name, None)
        return Sample(self.source, entity, metric, value * spec.scale, spec.unit, kept, ts)

    def read(self, series: Iterable[tuple[ExporterMetric, Mapping[str, str], float, datetime]]
             ) -> tuple[list[Sample], dict[str, int]]:
        """The newest sample per entity and Kiln metric of `series` (spec, labels, value, time),
        and the series left out by reason. A whole-GPU value repeated on instances is kept once
        (the GPU's own series first) and its repeats counted; of two samples at different times
        the newer wins (a pod's series ends when the next one starts; without staleness markers
        both can be inside a lookback: the newest tells who holds the GPU now)."""
        newest: dict[tuple[str, str], tuple[Sample, bool]] = {}
        skipped: Counter[str] = Counter()
        for spec, labels, value, ts in series:
            sample = self.sample(spec, labels, value, ts)
            if isinstance(sample, str):
                skipped[sample] += 1
                continue
            repeat = spec.whole_gpu and self.identity(labels)[1] is not None
            key = (sample.entity, sample.metric)
            held = newest.get(key)
            if held is not None and (held[1] or repeat) and held[0].ts == sample.ts:
                skipped[SKIP_REPEATED] += 1
                if not held[1] or repeat:
                    continue
            elif held is not None and held[0].ts >= sample.ts:
                continue
            newest[key] = (sample, repeat)
        return [sample for sample, _ in newest.values()], dict(skipped)


def _first(labels: Mapping[str, str], names: Sequence[str]) -> str | None:
    return next((labels[name] for name in names if labels.get(name)), None)


def coalesce_expr(expr: str, names: Sequence[str], target: str) -> str:
    """PromQL: `expr` with label `target` set from the first of `names` a series has."""
    for name in reversed(names):
        expr = f'label_replace({expr}, "{target}", "$1", "{name}", "(.+)")'
    return expr


class GpuCollector:
    """Current values per GPU from one exporter's series in Prometheus (one query a cycle)."""

    def __init__(self, client: PrometheusClient, exporter: GpuExporter, *,
                 clock: Callable[[], datetime] | None = None, lookback: timedelta = timedelta(minutes=5)) -> None:
        self.name = exporter.source
        self.client = client
        self.exporter = exporter
        self.clock = clock
        self.lookback = lookback

    def collect(self) -> list[TargetResult]:
        """One TargetResult: the newest sample per GPU and Kiln metric within `lookback`;
        series without the GPU's identity, with a NaN or a blank value are skipped and counted
        per reason (`skipped`, and in `error`); Prometheus failing gives ok=False."""
        began = time.monotonic()
        target = f"{self.client.url} ({self.exporter.source})"
        table = self.exporter.table()
        names = "|".join(re.escape(name) for name in table)
        at = self.clock() if self.clock else None
        try:
            rows = self.client.query(f'{{__name__=~"{names}"}}[{self.lookback // MS}ms]', at)
        except PrometheusError as exc:
            return [TargetResult(target, ok=False, error=str(exc), seconds=time.monotonic() - began,
                                 timed_out=exc.timed_out)]
        series = []
        for row in rows:
            labels: dict[str, str] = row.get("metric", {})
            row_spec = table.get(labels.get("__name__", ""))
            points = row.get("values") or []
            if row_spec is not None and points:
                ts, raw = points[-1]
                series.append((row_spec, labels, float(raw), datetime.fromtimestamp(float(ts), UTC)))
        samples, skipped = self.exporter.read(series)
        return [TargetResult(target, ok=True, samples=samples, error=skipped_summary(skipped),
                             skipped=skipped, seconds=time.monotonic() - began)]
