"""Kiln's GPU collectors fed output their upstreams wrote (tests/data/upstream/, cited there),
served over HTTP on loopback and scraped by the real entry point, not handed to a parser."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine

from collectors.base import TargetResult
from collectors.dcgm import DCGM
from collectors.exporter_scrape import ExporterScrapeCollector
from collectors.prometheus import SKIP_BLANK, SKIP_NO_IDENTITY, GpuExporter
from collectors.exposition import CollectorExposition
from collectors.rocm import ROCM
from tests.cli_helpers import base_env
from tests.cli_helpers import run as kiln
from tests.conftest import TEST_SECRET_KEY

UPSTREAM = Path(__file__).parent / "data" / "upstream"
AT = datetime(2026, 11, 2, 14, 0, tzinfo=UTC)


@contextmanager
def serving_text(text: str) -> Iterator[str]:
    """A loopback HTTP server answering `/metrics` with `text`, as an exporter does."""
    body = text.encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/metrics"
    finally:
        server.shutdown()
        server.server_close()


def scrape(text: str, exporter: GpuExporter) -> TargetResult:
    with serving_text(text) as url:
        collector = ExporterScrapeCollector([url], exporter, clock=lambda: AT)
        try:
            (result,) = collector.collect()
        finally:
            collector.close()
    assert result.ok, result.error
    return result


def generate_latest_of(collector: CollectorExposition) -> bytes:
    registry = CollectorRegistry()
    registry.register(collector)
    return generate_latest(registry)


def values(result: TargetResult) -> dict[tuple[str, str], float]:
    return {(s.entity, s.metric): s.value for s in result.samples}


def test_a_dcgm_blank_is_skipped_and_counted_not_stored_as_a_temperature() -> None:
    result = scrape((UPSTREAM / "dcgm-exporter" / "readme-kubernetes-quickstart.txt").read_text(), DCGM)
    assert result.samples == []  # clocks are not in Kiln's table; the memory temperature is a blank
    assert result.skipped == {SKIP_BLANK: 1}
    assert result.error == "skipped 1 series: 1 blank value (not supported / not found)"


def test_counters_declared_as_counters_are_kept_and_the_container_hostname_is_kept_as_given() -> None:
    result = scrape((UPSTREAM / "dcgm-exporter" / "datadog-fixture-t4-counters-container-hostname.txt").read_text(),
                    DCGM)
    gpu = "GPU-20c56d28-0da5-6d26-a36a-e7af1ce2586e"
    got = values(result)
    assert got[(gpu, "gpu_energy")] == pytest.approx(128996.013)  # mJ → J, from a `# TYPE … counter` family
    assert got[(gpu, "gpu_power")] == pytest.approx(8.969)
    assert got[(gpu, "gpu_util")] == 0 and got[(gpu, "gpu_memory_free")] == 15109 * 2**20
    assert {s.metric for s in result.samples} == {"gpu_energy", "gpu_power", "gpu_util", "gpu_memory_free",
                                                  "gpu_memory_used", "gpu_temperature", "gpu_last_xid"}
    assert {s.labels["host"] for s in result.samples} == {"424773df46e0"}
    assert result.skipped == {}


def test_mig_output_gives_the_whole_gpu_and_its_instance_as_entities() -> None:
    result = scrape((UPSTREAM / "dcgm-exporter" / "nvidia-docs-a100-mig-1g5gb.txt").read_text(), DCGM)
    gpu = "GPU-34319582-d595-d1c7-d1d2-179bcfa61660"
    got = values(result)
    assert got[(gpu, "gpu_power")] == pytest.approx(409.692)
    assert got[(gpu, "gpu_energy")] == pytest.approx(319159.391)
    assert got[(gpu, "gpu_engine_active")] == pytest.approx(99.563)
    assert got[(f"{gpu}/13", "gpu_engine_active")] == pytest.approx(99.5687)
    instance = [s for s in result.samples if s.entity == f"{gpu}/13"]
    assert {s.labels["GPU_I_PROFILE"] for s in instance} == {"1g.5gb"}
    assert all(s.labels["host"] == "ub20-a100-k8s" for s in result.samples)


# AMD device-metrics-exporter: the shapes below were reported in public issues and PRs (not
# copied; label names and values as reported): ROCm/device-metrics-exporter#171 and PRs
# #201/#202 (`serial_number=""` with `gpu_uuid` set, `gpu_partition_id="NA"` on an MI325X), #233
# (a virtual function with an all-zero `gpu_uuid` and `gpu_partition_id="4294967295"`).
AMD_SHAPES = """# TYPE gpu_gfx_activity gauge
gpu_gfx_activity{card_model="MI325X",gpu_id="0",gpu_partition_id="NA",gpu_uuid="6cff74a1-0000-1000-80e0-c6d49f5b0d86",hostname="mi325-01",serial_number=""} 37
gpu_gfx_activity{card_model="MI300X",gpu_id="1",gpu_partition_id="4294967295",gpu_uuid="00000000-0000-0000-0000-000000000000",hostname="mi300-vf",serial_number=""} 5
gpu_gfx_activity{card_model="MI300X",gpu_id="2",gpu_partition_id="3",gpu_uuid="5aff74a1-0000-1000-80e0-c6d49f5b0d86",hostname="mi300-02",serial_number="692409005408"} 81
"""


def test_amd_gpus_without_a_serial_number_are_known_by_their_uuid() -> None:
    result = scrape(AMD_SHAPES, ROCM)
    assert values(result) == {
        ("6cff74a1-0000-1000-80e0-c6d49f5b0d86", "gpu_util"): 37,  # partition "NA": the whole GPU
        ("692409005408/3", "gpu_util"): 81,  # a compute partition of a GPU with a serial number
    }
    assert result.skipped == {SKIP_NO_IDENTITY: 1}  # no serial and an all-zero UUID identify nothing


def test_skipped_series_reach_kiln_collect_once_and_metrics(engine: Engine, tmp_path: Path) -> None:
    """The operator sees what was left out and why: in `kiln collect once` and on /metrics."""
    text = (UPSTREAM / "dcgm-exporter" / "readme-kubernetes-quickstart.txt").read_text()
    with serving_text(text) as url:
        env = base_env(tmp_path, KILN_DATABASE_URL=engine.url.render_as_string(hide_password=False),
                       KILN_SECRET_KEY=TEST_SECRET_KEY, KILN_DCGM_EXPORTER_URLS=url)
        done = kiln(env, "collect", "once", "--collector", "dcgm-exporter", "--output", "json")
        table = kiln({**env, "COLUMNS": "250"}, "collect", "once", "--collector", "dcgm-exporter")
    assert done.returncode == 0, done.stderr
    line = json.loads(done.stdout)
    assert (line["target"], line["ok"], line["samples"], line["skipped"]) == (url, True, 0, {SKIP_BLANK: 1})
    assert "1 blank value (not supported / not found)" in table.stdout
    families = {f.name: f for f in text_string_to_metric_families(
        generate_latest_of(CollectorExposition(engine)).decode())}
    (sample,) = families["kiln_collector_skipped_series"].samples
    assert (sample.labels, sample.value) == (
        {"collector": "dcgm-exporter", "target": url, "reason": SKIP_BLANK}, 1.0)
