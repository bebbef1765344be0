"""Kiln's GPU collectors fed output their upstreams wrote (tests/data/upstream/, cited there),
served over HTTP on loopback and scraped by the real entry point, not handed to a parser."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine
from sqlmodel import Session, select

from collectors.base import TargetResult
from collectors.dcgm import DCGM
from collectors.exporter_scrape import ExporterScrapeCollector
from collectors.gpu_usage import GpuUsage
from collectors.prometheus import (
    SKIP_BLANK,
    SKIP_NO_IDENTITY,
    SKIP_NOT_ON_INSTANCE,
    SKIP_REPEATED,
    GpuCollector,
    GpuExporter,
    PrometheusClient,
)
from collectors.cluster_store import persist_opencost
from collectors.exposition import CollectorExposition
from collectors.models import OpenCostAllocation
from collectors.opencost import SKIP_NULL, TOTAL_PARTS, OpenCostCollector, records_from_samples
from collectors.rocm import ROCM
from tests.cli_helpers import base_env
from tests.cli_helpers import run as kiln
from tests.conftest import TEST_SECRET_KEY
from tests.loopback import serving
from tests.opencost_fixture import opencost_server
from tests.peers.harness import running_peer

UPSTREAM = Path(__file__).parent / "data" / "upstream"
AT = datetime(2026, 11, 2, 14, 0, tzinfo=UTC)


@contextmanager
def serving_text(text: str) -> Iterator[str]:
    """A loopback HTTP server answering `/metrics` with `text`, as an exporter does."""
    with serving(lambda path, headers: (200, "text/plain; version=0.0.4; charset=utf-8", text.encode())) as server:
        yield f"{server.url}/metrics"


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
    # the instance: its utilisation is DCGM_FI_PROF_GR_ENGINE_ACTIVE (GPU_UTIL is not supported there)
    instance = {s.metric: s for s in result.samples if s.entity == f"{gpu}/13"}
    assert set(instance) == {"gpu_util"} and instance["gpu_util"].value == pytest.approx(99.5687)
    assert instance["gpu_util"].labels["GPU_I_PROFILE"] == "1g.5gb"
    assert instance["gpu_util"].labels["parent_gpu"] == gpu
    # the XID field its series repeats is the GPU's, kept once from the GPU's own series
    assert [s.entity for s in result.samples if s.metric == "gpu_last_xid"] == [gpu]
    assert "GPU_I_ID" not in next(s for s in result.samples if s.metric == "gpu_last_xid").labels
    assert result.skipped == {SKIP_REPEATED: 1}
    assert all(s.labels["host"] == "ub20-a100-k8s" for s in result.samples)


def test_whole_gpu_values_repeated_on_every_instance_count_once() -> None:
    """MIG GPUs whose whole-GPU fields appear only on the instances' series, each repeating
    them, and a GPU_UTIL of 0 on an instance (the shapes of NVIDIA/dcgm-exporter#216 and
    the repeated fields its MIG users report): built here, not copied."""
    gpu = "GPU-a810a1fc-9f46-0e6f-5cef-bf34c2248e12"
    rows = []
    for gi, engine in (("1", 0.25), ("2", 0.75)):
        labels = f'gpu="0",UUID="{gpu}",device="nvidia0",GPU_I_PROFILE="3g.20gb",GPU_I_ID="{gi}",Hostname="a100-01"'
        pod = f',namespace="team-{gi}",pod="train-{gi}",container="main"'
        rows += [f"DCGM_FI_DEV_POWER_USAGE{{{labels}{pod}}} 301.5",
                 f"DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{{{labels}{pod}}} 5000000",
                 f"DCGM_FI_DEV_GPU_UTIL{{{labels}{pod}}} 0",
                 f"DCGM_FI_PROF_GR_ENGINE_ACTIVE{{{labels}{pod}}} {engine}"]
    result = scrape("\n".join(rows) + "\n", DCGM)
    power = [s for s in result.samples if s.metric == "gpu_power"]
    assert [(s.entity, s.value) for s in power] == [(gpu, 301.5)]  # once, not 603 W
    assert "namespace" not in power[0].labels and "GPU_I_ID" not in power[0].labels  # the GPU's, no pod's
    assert values(result)[(gpu, "gpu_energy")] == 5000.0
    assert {(s.entity, s.value, s.labels["namespace"]) for s in result.samples if s.metric == "gpu_util"} == {
        (f"{gpu}/1", 25.0, "team-1"), (f"{gpu}/2", 75.0, "team-2")}
    assert result.skipped == {SKIP_REPEATED: 2, SKIP_NOT_ON_INSTANCE: 2}


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


# A dcgm-exporter scraped the way its Helm chart sets up Prometheus (a ServiceMonitor with
# honorLabels: false): the target carries the exporter's own namespace and pod, so Prometheus
# renames a busy GPU's `namespace`/`pod` to `exported_namespace`/`exported_pod` and gives idle
# GPUs (whose workload labels dcgm-exporter leaves empty) the exporter's namespace. The shape is
# dcgm-exporter's label set (tests/data/upstream/dcgm-exporter/readme-kubernetes-quickstart.txt)
# with a pod in it, as reported in NVIDIA/dcgm-exporter#85; Prometheus itself does the renaming.
WORKLOAD_SHAPE = """# TYPE DCGM_FI_DEV_GPU_UTIL gauge
DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-aaaa",Hostname="gpu-node-1",container="trainer",namespace="team-a",pod="train-0"} 87
DCGM_FI_DEV_GPU_UTIL{gpu="1",UUID="GPU-bbbb",Hostname="gpu-node-1",container="",namespace="",pod=""} 0
"""


@pytest.fixture(scope="module")
def prometheus_scraping_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A real Prometheus scraping, every second, a loopback exporter that serves the upstream
    MIG and counter samples and the workload shape; yields (Prometheus URL, the served text)."""
    text = "\n".join((UPSTREAM / "dcgm-exporter" / name).read_text() for name in (
        "nvidia-docs-a100-mig-1g5gb.txt", "datadog-fixture-t4-counters-container-hostname.txt")) + WORKLOAD_SHAPE
    state = tmp_path_factory.mktemp("prometheus-scrape")
    with serving_text(text) as exporter_url:
        target = exporter_url.removeprefix("http://").removesuffix("/metrics")
        (state / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: dcgm-exporter\n"
            f"    static_configs:\n      - targets: ['{target}']\n"
            "        labels: {namespace: gpu-operator, pod: nvidia-dcgm-exporter-7xk2p}\n")
        with running_peer("prometheus", state) as url:
            client = PrometheusClient(url)
            deadline = time.monotonic() + 30
            while not client.query('DCGM_FI_DEV_GPU_UTIL{job="dcgm-exporter"}'):
                assert time.monotonic() < deadline, "Prometheus did not scrape the loopback exporter"
                time.sleep(0.5)
            yield url, text


def test_through_prometheus_kiln_reads_what_it_reads_scraping_directly(prometheus_scraping_upstream) -> None:
    url, text = prometheus_scraping_upstream
    (through,) = GpuCollector(PrometheusClient(url), DCGM).collect()
    direct = scrape(text, DCGM)
    assert through.ok, through.error
    assert values(through) == pytest.approx(values(direct))  # counters, MIG instance, whole GPUs alike
    assert len(values(direct)) >= 15


def test_exported_namespace_is_the_workloads_and_idle_gpus_follow_the_setting(prometheus_scraping_upstream) -> None:
    url, _ = prometheus_scraping_upstream
    (default,) = GpuCollector(PrometheusClient(url), DCGM).collect()
    labels = {s.entity: s.labels for s in default.samples if s.metric == "gpu_util"}
    assert (labels["GPU-aaaa"]["namespace"], labels["GPU-aaaa"]["pod"]) == ("team-a", "train-0")  # not gpu-operator
    assert labels["GPU-bbbb"]["namespace"] == "gpu-operator"  # the exporter's: why the setting exists
    only_exported = DCGM.labelled(["exported_namespace"], DCGM.host_labels)
    (strict,) = GpuCollector(PrometheusClient(url), only_exported).collect()
    labels = {s.entity: s.labels for s in strict.samples if s.metric == "gpu_util"}
    assert labels["GPU-aaaa"]["namespace"] == "team-a" and "namespace" not in labels["GPU-bbbb"]
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    hours = GpuUsage(PrometheusClient(url), only_exported, scrape_interval=timedelta(seconds=1)).gpu_hours_by_namespace(
        start, start + timedelta(minutes=10))
    assert set(hours.values) == {"team-a"} and hours.unattributed_samples > 0  # the idle GPU is nobody's


def opencost_answer(document: dict) -> Iterator[TargetResult]:
    with opencost_server() as server:
        server.serve_body(json.dumps(document), content_type="application/json")
        collector = OpenCostCollector(httpx.Client(base_url=server.url), clock=lambda: AT)
        try:
            yield from collector.collect()
        finally:
            collector.close()


def test_opencost_components_add_up_to_its_total() -> None:
    document = json.loads((UPSTREAM / "opencost" / "allocation-website-example.json").read_text())
    (result,) = opencost_answer(document)
    assert result.ok and result.skipped == {}, result.error
    records = {r.namespace: r for r in records_from_samples(result.samples)}
    assert set(records) == {"kube-system", "opencost", "prometheus"}
    for name, record in records.items():
        parts = record.parts_total()
        assert record.cpu_cost_adjustment == record.load_balancer_cost == record.external_cost == 0
        # OpenCost rounds each of the 14 parts and the total to 5 decimals on its own
        assert abs(parts - record.total_cost) <= Decimal("0.00001") * len(TOTAL_PARTS), name
    assert records["kube-system"].total_cost == Decimal("1.52743")
    assert records["kube-system"].ram_byte_hours == Decimal("40855853856.91022")


def test_an_opencost_null_is_an_unknown_value_not_a_failed_cycle(engine: Engine) -> None:
    document = json.loads((UPSTREAM / "opencost" / "allocation-website-example.json").read_text())
    document["data"][0]["opencost"]["cpuCost"] = None  # what OpenCost writes for a NaN
    document["data"][0]["opencost"]["totalEfficiency"] = None
    for adjustment in ("cpuCostAdjustment", "loadBalancerCost"):  # an older OpenCost without these
        del document["data"][0]["prometheus"][adjustment]
    (result,) = opencost_answer(document)
    assert result.ok and result.skipped == {SKIP_NULL: 1}, result.error  # the efficiency's null is routine
    records = {r.namespace: r for r in records_from_samples(result.samples)}
    assert records["opencost"].cpu_cost is None and records["opencost"].parts_total() is None
    assert records["opencost"].ram_cost == Decimal("0.04577")
    assert records["prometheus"].cpu_cost_adjustment is None and records["prometheus"].cpu_cost == Decimal("0.0218")
    with Session(engine) as session:
        assert persist_opencost(session, [result]) == 3
        session.commit()
        stored = {row.namespace: row for row in session.exec(select(OpenCostAllocation))}
    assert stored["opencost"].cpu_cost is None and stored["opencost"].total_cost == Decimal("0.10937")
    assert stored["kube-system"].ram_byte_hours == Decimal("40855853856.910220")  # exact on SQLite too
