"""GPU usage from an exporter's series in Prometheus, aggregated inside PromQL, exact.

- GPU-hours are counted, not integrated: each sample of the exporter's "presence" metric (one
  per GPU per scrape) is one scrape interval of that GPU, held by the namespace in its labels.
  `count_over_time` counts raw samples, so there is no step, no lookback and no staleness
  involved; the only care needed is the window's edges. Prometheus 2.x range selectors are
  closed ([t-r, t]), 3.x ones left-open ((t-r, t]); `window()` picks the range and evaluation
  time that select exactly the samples with start <= t < end under the server's semantics
  (probed once, not guessed from the version), so consecutive windows never count a sample
  twice. Counts are integers in float64 (exact below 2**53).
- A MIG instance or compute partition is its own series and counts as a GPU of its own (its
  entity is `UUID/instance`, its samples carry `parent_gpu`); weighting slices by size is left to
  pricing. Where the presence metric is not supported on instances (DCGM's GPU utilisation under
  MIG: NVIDIA/dcgm-exporter#105, #216), an instance's presence and utilisation are the exporter's
  `instance_presence` metric (DCGM_FI_PROF_GR_ENGINE_ACTIVE), and a GPU with instances in the
  window counts only its instances.
- Series without a namespace label are idle GPUs (dcgm-exporter leaves the pod labels empty,
  and Prometheus drops empty labels) and are reported as unattributed, never dropped; series
  with a pod but no namespace are counted there too, and reported as malformed.
- GPU energy: the exporter's energy counter (a whole-GPU value: a MIG GPU's, once) read raw
  over the window, each pair of consecutive readings spread evenly over the time between them
  and split at hour boundaries, exactly as `collectors.energy` stores a directly scraped
  exporter's readings; a counter that went down was reset, and that interval is unknown.

    usage = GpuUsage(PrometheusClient(url), DCGM, scrape_interval=timedelta(seconds=30))
    usage.gpu_hours_by_namespace(start, end); usage.gpu_kwh_by_hour(start, end)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from collectors.energy import GPU_ENERGY_METRIC, counter_kwh_by_hour
from collectors.prometheus import MS, GpuExporter, PrometheusClient, coalesce_expr

HOUR_MS = Decimal(3_600_000)

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

    def _over_time(self, function: str, rng: str) -> str:
        """`<function>_over_time` of the presence samples per series over `rng`. With an
        instance presence metric (MIG): whole GPUs' presence series, unless the GPU had instances
        in the range, or the instances' (scaled like Kiln's metric for `sum`)."""
        exporter = self.exporter
        if not exporter.instance_presence or not exporter.instance_label:
            return f"{function}_over_time({exporter.presence}{rng})"
        whole = "|".join(["", *(re.escape(v) for v in sorted(exporter.whole_gpu_instances))])
        label = exporter.instance_label
        gpus = f'{function}_over_time({exporter.presence}{{{label}=~"{whole}"}}{rng})'
        instances = f'{function}_over_time({exporter.instance_presence}{{{label}!~"{whole}"}}{rng})'
        if function == "sum":
            instances = f"({instances} * {exporter.table()[exporter.instance_presence].scale:g})"
        return f"(({gpus} unless on({', '.join(exporter.entity_labels)}) {instances}) or {instances})"

    def namespace_hours_query(self, start: datetime, end: datetime) -> tuple[str, datetime]:
        """The PromQL (and evaluation time) behind `gpu_hours_by_namespace`: samples per
        namespace (`kiln_namespace`, from whichever spelling a series has), the series that have
        a pod marked `kiln_pod` so that a pod without a namespace stands out from idle time in
        the same pass."""
        rng, at = self.client.window(start, end)
        counted = coalesce_expr(self._over_time("count", rng), self.exporter.pod_labels, "kiln_pod")
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
        query = f"sum by (kiln_host) ({self.exporter.host_expr(self._over_time('count', rng))})"
        samples: dict[str, int] = {}
        unattributed = 0
        for labels, count in self._counts(query, at):
            if labels.get("kiln_host"):
                samples[labels["kiln_host"]] = count
            else:
                unattributed = count
        notes = [f"{unattributed} samples of series without a host label"] if unattributed else []
        return self._hours(samples, unattributed, unattributed, query, at, notes)

    def samples_by_gpu(self, start: datetime, end: datetime) -> dict[str, int]:
        """Presence samples per GPU or instance entity (as `GpuExporter.entity` names them)."""
        rng, at = self.client.window(start, end)
        names = [*self.exporter.entity_labels, *filter(None, [self.exporter.instance_label])]
        out: dict[str, int] = {}
        for labels, count in self._counts(f"sum by ({', '.join(names)}) ({self._over_time('count', rng)})", at):
            entity = self.exporter.entity(labels)
            if entity:
                out[entity] = out.get(entity, 0) + count
        return out

    def gpu_kwh_by_hour(self, start: datetime, end: datetime,
                        max_gap: timedelta = timedelta(minutes=10)) -> dict[tuple[str, datetime], Decimal]:
        """kWh per (GPU, hour) for the hours starting in [start, end), from the energy counter's
        raw samples (readings up to `max_gap` outside the window complete its edge hours)."""
        spec = next(row for row in self.exporter.metrics if row.metric == GPU_ENERGY_METRIC)
        rng, at = self.client.window(start - max_gap, end + max_gap)
        readings: dict[str, dict[datetime, float]] = {}
        for row in self.client.query(f"{spec.exporter}{rng}", at):
            for ts, raw in row.get("values") or []:
                sample = self.exporter.sample(spec, row["metric"], float(raw), datetime.fromtimestamp(float(ts), UTC))
                if not isinstance(sample, str):
                    readings.setdefault(sample.entity, {}).setdefault(sample.ts, sample.value)
        kwh: dict[tuple[str, datetime], Decimal] = {}
        for entity, points in readings.items():
            ordered = sorted(points.items())
            for (t0, j0), (t1, j1) in zip(ordered, ordered[1:]):
                for hour, part, _ in counter_kwh_by_hour(t0, j0, t1, j1, max_gap):
                    if start <= hour < end:
                        kwh[(entity, hour)] = kwh.get((entity, hour), Decimal(0)) + part
        return kwh

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
        named = self.exporter.namespace_expr
        summed, counted = named(self._over_time("sum", rng)), named(self._over_time("count", rng))
        valid = f"({summed} >= 0)"
        parts = {
            "sum": f"sum by (kiln_namespace) {valid}",
            "samples": f"sum by (kiln_namespace) ({counted} and {valid})",
            "skipped": f"count by (kiln_namespace) ({summed} unless {valid})",
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
