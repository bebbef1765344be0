"""GPU metrics read straight from dcgm-exporter / AMD device-metrics-exporter endpoints.

For sites without Prometheus: Kiln scrapes each exporter's `/metrics` (Prometheus text
format) itself and maps the series with the same vendor tables as the PromQL collectors
(`collectors.dcgm.DCGM`, `collectors.rocm.ROCM`), so samples, entities (the GPU's UUID or
serial) and host labels (`Hostname` or `hostname`) are identical whichever path they took,
and so are the series left out (`TargetResult.skipped`, by reason). One target per exporter
URL; a failing exporter is that target's error.

    ExporterScrapeCollector(["http://gpu-001:9400/metrics"], DCGM).collect()
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import httpx
from prometheus_client.parser import text_string_to_metric_families

from collectors.base import Sample, TargetResult, skipped_summary
from collectors.prometheus import GpuExporter


class ExporterScrapeCollector:
    """Scrape GPU exporters' `/metrics` endpoints; one TargetResult per URL."""

    def __init__(self, urls: Sequence[str], exporter: GpuExporter, *, timeout: float = 5.0,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.name = f"{exporter.source}-exporter"
        self.urls = list(dict.fromkeys(urls))
        self.exporter = exporter
        self.clock = clock or (lambda: datetime.now(UTC))
        self._http = httpx.Client(timeout=timeout, headers={"Accept": "text/plain"})

    def collect(self, urls: Sequence[str] | None = None) -> list[TargetResult]:
        """Scrape every URL (or the given subset) once, in order."""
        return [self._scrape(url) for url in (urls if urls is not None else self.urls)]

    def close(self) -> None:
        """Close the HTTP connections."""
        self._http.close()

    def _scrape(self, url: str) -> TargetResult:
        began = time.monotonic()
        try:
            response = self._http.get(url)
            response.raise_for_status()
            samples, skipped = self.parse(response.text, self.clock(), httpx.URL(url).netloc.decode())
        except httpx.TimeoutException:
            return TargetResult(url, ok=False, error=f"no answer from {url} in time", timed_out=True,
                                seconds=time.monotonic() - began)
        except httpx.HTTPStatusError as exc:
            return TargetResult(url, ok=False, error=f"{url} answered HTTP {exc.response.status_code}",
                                seconds=time.monotonic() - began)
        except httpx.HTTPError as exc:
            return TargetResult(url, ok=False, error=f"cannot reach {url}: {exc}", seconds=time.monotonic() - began)
        except ValueError as exc:  # the text parser's complaint about a malformed line
            return TargetResult(url, ok=False, error=f"{url} did not serve Prometheus text format: {exc}",
                                seconds=time.monotonic() - began)
        return TargetResult(url, ok=True, samples=samples, error=skipped_summary(skipped), skipped=skipped,
                            seconds=time.monotonic() - began)

    def parse(self, text: str, now: datetime, instance: str | None = None) -> tuple[list[Sample], dict[str, int]]:
        """Samples from an exporter's exposition text, and the series left out, by reason.
        `instance`: the target's `host:port`, set as the `instance` label as Prometheus sets it."""
        table = self.exporter.table()
        series = []
        for family in text_string_to_metric_families(text):
            for item in family.samples:
                # the text parser names a counter's samples `<family>_total` even when the
                # exporter wrote the bare name (dcgm-exporter's energy and PCIe replay counters)
                spec = table.get(item.name) or (
                    table.get(family.name) if family.type == "counter" and item.name == family.name + "_total"
                    else None)
                if spec is not None:
                    labels = {**item.labels, "instance": instance} if instance else item.labels
                    ts = datetime.fromtimestamp(item.timestamp, UTC) if item.timestamp else now
                    series.append((spec, labels, item.value, ts))
        return self.exporter.read(series)
