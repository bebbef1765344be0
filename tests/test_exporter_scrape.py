"""Scraping dcgm-exporter's text format directly (no Prometheus), against a simulated exporter
serving dcgm-exporter's names and labels over real HTTP on loopback."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from collectors.cycle import run_cycle
from collectors.dcgm import DCGM
from collectors.exporter_scrape import ExporterScrapeCollector
from collectors.models import HealthSnapshot, Rollup5m
from collectors.sim.dcgm_exporter import DcgmExporterSim, SimGpu, readings, utilisation
from collectors.sources import build_sources
from fleet.models import Gpu
from kiln.security import SecretBox
from kiln.settings import Settings
from tests.factories import World
from tests.fleet_helpers import make_node_row

AT = datetime(2026, 11, 2, 14, 7, 30, tzinfo=UTC)
GPUS = [SimGpu("gpu-301", i, f"GPU-301-{i}") for i in range(2)] + [SimGpu("gpu-302", 0, "GPU-302-0", xid=79)]


@pytest.fixture
def exporter() -> Iterator[DcgmExporterSim]:
    sim = DcgmExporterSim(GPUS, busy=lambda host: host == "gpu-301", clock=lambda: AT).start()
    yield sim
    sim.stop()


def test_samples_carry_dcgm_values_uuid_and_host(exporter: DcgmExporterSim) -> None:
    collector = ExporterScrapeCollector([exporter.url], DCGM, clock=lambda: AT)
    (result,) = collector.collect()
    collector.close()
    assert result.ok and result.error is None
    values = {(s.entity, s.metric): s for s in result.samples}
    assert len(values) == 3 * 7
    busy = values[("GPU-301-1", "gpu_util")]
    assert busy.value == utilisation(GPUS[1], AT, True) > 0
    assert (busy.unit, busy.ts, busy.labels["host"], busy.labels["modelName"], busy.labels["gpu"]) == (
        "percent", AT, "gpu-301", "NVIDIA H100 80GB HBM3", "1")
    assert values[("GPU-302-0", "gpu_util")].value == 0.0  # its node is idle
    assert values[("GPU-302-0", "gpu_last_xid")].value == 79.0
    # framebuffer MiB become bytes, the engine-active ratio a percentage, as on the PromQL path
    assert values[("GPU-301-0", "gpu_memory_used")].value == readings(GPUS[0], AT, True)["DCGM_FI_DEV_FB_USED"] * 2**20
    assert values[("GPU-301-0", "gpu_engine_active")].value == pytest.approx(
        readings(GPUS[0], AT, True)["DCGM_FI_PROF_GR_ENGINE_ACTIVE"] * 100)


def test_worker_cycle_stores_gpu_health_and_rollups(engine: Engine, world: World, exporter: DcgmExporterSim,
                                                    tmp_path) -> None:
    node = make_node_row(world, gpus=0, name="gpu-301")
    world.session.add(Gpu(node_id=node.id, index=0, uuid="GPU-301-0", model="NVIDIA H100 80GB HBM3"))
    world.session.commit()
    settings = Settings(data_dir=tmp_path, dcgm_exporter_urls=f" {exporter.url} ,", secret_key="k" * 40)
    source = build_sources(settings, engine, SecretBox("k" * 40))["dcgm-exporter"]
    report = run_cycle(engine, source)
    source.close()
    assert [(r.target, r.ok) for r in report.results] == [(exporter.url, True)]
    with Session(engine) as session:
        util = {s.entity: (s.value, s.node_id) for s in session.exec(
            select(HealthSnapshot).where(HealthSnapshot.metric == "gpu_util"))}
        rollups = {r.entity for r in session.exec(select(Rollup5m).where(Rollup5m.metric == "gpu_util_percent"))}
    # GPU-301-0 is known by UUID, GPU-301-1 by its host label; gpu-302 is not a Kiln node
    assert util == {"GPU-301-0": (utilisation(GPUS[0], AT, True), node.id),
                    "GPU-301-1": (utilisation(GPUS[1], AT, True), node.id),
                    "GPU-302-0": (0.0, None)}
    assert rollups == {"GPU-301-0", "GPU-301-1", "GPU-302-0"}


class _Broken(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/500":
            self.send_error(500)
            return
        body = b"DCGM_FI_DEV_GPU_UTIL{gpu=\"0\",UUID=\"GPU-x\" 42\n"  # unterminated label set
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


def test_broken_exporters_fail_alone_and_readably(exporter: DcgmExporterSim) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Broken)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{closed.getsockname()[1]}/metrics"
    closed.close()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    collector = ExporterScrapeCollector([f"{base}/500", f"{base}/bad", dead, exporter.url], DCGM, timeout=2)
    try:
        results = {r.target: r for r in collector.collect()}
    finally:
        collector.close()
        server.shutdown()
    assert results[f"{base}/500"].error == f"{base}/500 answered HTTP 500"
    assert results[f"{base}/bad"].error.startswith(f"{base}/bad did not serve Prometheus text format")
    assert results[dead].error.startswith(f"cannot reach {dead}")
    assert not any(results[u].ok for u in (f"{base}/500", f"{base}/bad", dead))
    assert results[exporter.url].ok and len(results[exporter.url].samples) == 21
