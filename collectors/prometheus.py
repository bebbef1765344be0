"""Prometheus as a source: a thin client, and what the GPU exporters' tables plug into.

`PrometheusClient` wraps prometheus-api-client's `PrometheusConnect` with a timeout, no
retries (the scheduler calls again next cycle) and readable errors: Prometheus down →
"Prometheus at URL is unreachable: …"; a bad query → the server's own error text.

`GpuCollector` turns one exporter's declarative metric table (`GpuExporter`: dcgm.py,
rocm.py) into current-value Samples per GPU. `GpuUsage` holds the queries metering uses,
aggregated inside PromQL, with exact results:

- GPU-hours are counted, not integrated: each sample of the exporter's "presence" metric (one
  per GPU per scrape) is one scrape interval of that GPU, held by the namespace in its labels.
  `count_over_time` counts raw samples, so there is no step, no lookback and no staleness
  involved; the only care needed is the window's edges. Prometheus 2.x range selectors are
  closed ([t-r, t]), 3.x ones left-open ((t-r, t]); `window()` picks the range and evaluation
  time that select exactly the samples with start <= t < end under the server's semantics
  (probed once, not guessed from the version), so consecutive windows never count a sample
  twice. Counts are integers in float64 (exact below 2**53).
- A MIG instance or compute partition is its own series and counts as a GPU of its own (its
  entity is `UUID/instance`); weighting slices by size is left to pricing.
- Series without a namespace label are idle GPUs (dcgm-exporter leaves the pod labels empty,
  and Prometheus drops empty labels) and are reported as unattributed, never dropped; series
  with a pod but no namespace are counted there too, and reported as malformed.
"""

from __future__ import annotations

import ast
import json
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.exceptions import MaxRetryError, ReadTimeoutError
from urllib3.util.retry import Retry

from collectors.base import Sample, TargetResult, skipped_summary

MS = timedelta(milliseconds=1)
HOUR_MS = Decimal(3_600_000)


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
    values at or above it are the exporter's "no value" sentinels (DCGM's blanks), not readings."""

    exporter: str
    metric: str
    unit: str
    scale: float = 1.0
    blank_from: float | None = None


# Why a series gave no sample (TargetResult.skipped keys, `kiln collect once`, /metrics).
SKIP_NO_IDENTITY = "no GPU identity"
SKIP_NOT_A_NUMBER = "NaN or infinite value"
SKIP_BLANK = "blank value (not supported / not found)"


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
    no_identity: frozenset[str] = frozenset()  # identity values that identify nothing (an all-zero UUID)

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

    def entity(self, labels: Mapping[str, str]) -> str | None:
        """The GPU (or GPU slice: `ident/instance`) a series is about; None without identity."""
        ident = next((labels[name] for name in self.entity_labels
                      if labels.get(name) and labels[name] not in self.no_identity), None)
        instance = labels.get(self.instance_label) if self.instance_label else None
        if ident and instance and instance not in self.whole_gpu_instances:
            return f"{ident}/{instance}"
        return ident

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
        mapping for exporter text scraped directly and for the same series read from Prometheus."""
        entity = self.entity(labels)
        if not entity:
            return SKIP_NO_IDENTITY
        value = float(value)  # the text parser gives ints as written: compare blanks as Prometheus stores them
        if not math.isfinite(value):
            return SKIP_NOT_A_NUMBER
        if spec.blank_from is not None and value >= spec.blank_from:
            return SKIP_BLANK
        kept = {name: labels[name] for name in self.keep_labels if labels.get(name)}
        for name, spellings in (("host", self.host_labels), ("namespace", self.namespace_labels),
                                ("pod", self.pod_labels), ("container", self.container_labels)):
            value_of = _first(labels, spellings)
            if value_of:
                kept[name] = value_of
        return Sample(self.source, entity, spec.metric, value * spec.scale, spec.unit, kept, ts)


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
        newest: dict[tuple[str, str], Sample] = {}
        skipped: Counter[str] = Counter()
        for row in rows:
            labels: dict[str, str] = row.get("metric", {})
            row_spec = table.get(labels.get("__name__", ""))
            points = row.get("values") or []
            if row_spec is None or not points:
                continue
            ts, raw = points[-1]
            sample = self.exporter.sample(row_spec, labels, float(raw), datetime.fromtimestamp(float(ts), UTC))
            if isinstance(sample, str):
                skipped[sample] += 1
                continue
            key = (sample.entity, row_spec.metric)
            # a pod's series ends when the next one starts; without staleness markers both can
            # be inside the lookback: the newest sample tells who holds the GPU now
            if key not in newest or newest[key].ts < sample.ts:
                newest[key] = sample
        return [TargetResult(target, ok=True, samples=list(newest.values()), error=skipped_summary(skipped),
                             skipped=dict(skipped), seconds=time.monotonic() - began)]


# -- usage queries (metering) ----------------------------------------------------------------------


def gpu_hours(samples: int, scrape_interval: timedelta) -> Decimal:
    """GPU-hours of `samples` presence samples taken every `scrape_interval`."""
    return Decimal(samples) * Decimal(scrape_interval // MS) / HOUR_MS


@dataclass(frozen=True)
class UsageResult:
    """One usage query's answer: `values` per namespace or host (GPU-hours, or utilisation in
    percent) and the presence samples behind each; what could not be attributed (idle GPUs,
    malformed series), of which `malformed_samples` came from malformed series; and, for
    utilisation, how many series were left out."""

    values: dict[str, Decimal]
    samples: dict[str, int]
    unattributed_hours: Decimal = Decimal(0)
    unattributed_samples: int = 0
    malformed_samples: int = 0
    skipped_series: int = 0
    query: str = ""
    at: datetime | None = None
    notes: list[str] = field(default_factory=list)


class GpuUsage:
    """Per-namespace and per-host GPU-hours and utilisation over [start, end), from one
    exporter's presence metric, aggregated inside PromQL (one pass over the samples)."""

    def __init__(self, client: PrometheusClient, exporter: GpuExporter, *, scrape_interval: timedelta) -> None:
        self.client = client
        self.exporter = exporter
        self.scrape_interval = scrape_interval

    def _selector(self, matchers: str = "") -> str:
        return f"{self.exporter.presence}{{{matchers}}}" if matchers else self.exporter.presence

    def namespace_hours_query(self, start: datetime, end: datetime) -> tuple[str, datetime]:
        """The PromQL (and evaluation time) behind `gpu_hours_by_namespace`: samples per
        namespace (`kiln_namespace`, from whichever spelling a series has), the series that have
        a pod marked `kiln_pod` so that a pod without a namespace stands out from idle time in
        the same pass."""
        rng, at = self.client.window(start, end)
        counted = coalesce_expr(f"count_over_time({self._selector()}{rng})", self.exporter.pod_labels, "kiln_pod")
        return f"sum by (kiln_namespace, kiln_pod) ({self.exporter.namespace_expr(counted)})", at

    def gpu_hours_by_namespace(self, start: datetime, end: datetime) -> UsageResult:
        """GPU-hours per namespace. Samples without a namespace label are unattributed: idle
        GPUs, and series with a pod but no namespace (malformed: counted, reported in notes)."""
        query, at = self.namespace_hours_query(start, end)
        samples: dict[str, int] = {}
        unattributed = malformed = 0
        for labels, count in self._counts(query, at):
            if labels.get("kiln_namespace"):
                samples[labels["kiln_namespace"]] = samples.get(labels["kiln_namespace"], 0) + count
            else:
                unattributed += count
                malformed += count if labels.get("kiln_pod") else 0
        notes = [f"{malformed} samples of series with a pod but no namespace counted as unattributed"] if malformed else []
        return self._hours(samples, unattributed, malformed, query, at, notes)

    def gpu_hours_by_host(self, start: datetime, end: datetime) -> UsageResult:
        """GPU-hours per host, whichever spelling of the host label each series has; samples
        of series without any are unattributed (and malformed)."""
        rng, at = self.client.window(start, end)
        query = f"sum by (kiln_host) ({self.exporter.host_expr(f'count_over_time({self._selector()}{rng})')})"
        samples: dict[str, int] = {}
        unattributed = 0
        for labels, count in self._counts(query, at):
            if labels.get("kiln_host"):
                samples[labels["kiln_host"]] = count
            else:
                unattributed = count
        notes = [f"{unattributed} samples of series without a host label"] if unattributed else []
        return self._hours(samples, unattributed, unattributed, query, at, notes)

    def _counts(self, query: str, at: datetime) -> list[tuple[dict[str, str], int]]:
        return [(row["metric"], int(Decimal(row["value"][1]))) for row in self.client.query(query, at)]

    def _hours(self, samples: dict[str, int], unattributed: int, malformed: int, query: str, at: datetime,
               notes: list[str]) -> UsageResult:
        return UsageResult(
            values={name: gpu_hours(n, self.scrape_interval) for name, n in sorted(samples.items())},
            samples=dict(sorted(samples.items())), unattributed_hours=gpu_hours(unattributed, self.scrape_interval),
            unattributed_samples=unattributed, malformed_samples=malformed, query=query, at=at, notes=notes)

    def gpu_utilisation_by_namespace(self, start: datetime, end: datetime) -> UsageResult:
        """Mean utilisation (percent) of the GPUs each namespace held, weighted by samples:
        sum and count per namespace come from PromQL, the exact division is done here. A
        series with a NaN or negative sample is left out whole and counted as skipped."""
        rng, at = self.client.window(start, end)
        sel = self._selector() + rng
        named = self.exporter.namespace_expr
        valid = f"({named(f'sum_over_time({sel})')} >= 0)"
        parts = {
            "sum": f"sum by (kiln_namespace) {valid}",
            "samples": f"sum by (kiln_namespace) ({named(f'count_over_time({sel})')} and {valid})",
            "skipped": f"count by (kiln_namespace) ({named(f'sum_over_time({sel})')} unless {valid})",
        }
        query = " or ".join(f'label_replace({expr}, "kiln_part", "{part}", "", "")' for part, expr in parts.items())
        sums: dict[str, Decimal] = {}
        counts: dict[str, int] = {}
        skipped = 0
        for row in self.client.query(query, at):
            labels, value = row["metric"], Decimal(row["value"][1])
            namespace = labels.get("kiln_namespace", "")
            if not namespace:
                continue  # idle GPUs: no workload to weigh
            if labels["kiln_part"] == "skipped":
                skipped += int(value)
            elif labels["kiln_part"] == "sum":
                sums[namespace] = value
            else:
                counts[namespace] = int(value)
        values = {name: sums[name] / counts[name] for name in sorted(counts) if counts[name] and name in sums}
        notes = [f"{skipped} series with NaN or negative samples left out"] if skipped else []
        return UsageResult(values=values, samples={name: counts[name] for name in values}, skipped_series=skipped,
                           query=query, at=at, notes=notes)
