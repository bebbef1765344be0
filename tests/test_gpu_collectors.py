"""DCGM and ROCm collectors and GPU usage queries against a real Prometheus 2.42 serving a
backfilled month of dcgm-exporter and AMD device-metrics-exporter history (tests/peers/
gpu_history.py): 4 nodes × 8 GPUs × 30 days at 5 min, nodes 0 and 2 labelled `Hostname`
(dcgm-exporter before 4.x), node 1 `hostname` (4.x), node 3 AMD. The generator's schedule
says who held which GPU when, so GPU-hours are asserted to the sample."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from collectors.dcgm import DCGM, DcgmCollector, dcgm_usage
from collectors.gpu_usage import GpuUsage, gpu_hours
from collectors.prometheus import SKIP_NO_IDENTITY, PrometheusClient, PrometheusError
from collectors.rocm import ROCM, RocmCollector, rocm_usage
from tests.peers import gpu_history as history
from tests.peers.harness import missing_peer, running_peer


SPEC = history.FleetSpec(nodes=4, gpus_per_node=8, days=30, amd_nodes=1)
STEP = timedelta(seconds=SPEC.step_s)
START = datetime.fromtimestamp(SPEC.start, UTC)
END = datetime.fromtimestamp(SPEC.end, UTC)
LAST = END - STEP  # time of the newest sample


def at_step(step: int) -> datetime:
    return datetime.fromtimestamp(SPEC.ts(step), UTC)


@pytest.fixture(scope="session")
def gpus() -> list[history.Gpu]:
    return history.build_fleet(SPEC)


@pytest.fixture(scope="session")
def prometheus_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus serving a copy of the fleet's backfilled (and cached) blocks."""
    try:
        blocks = history.backfill(SPEC)
    except FileNotFoundError as exc:
        missing_peer("prometheus", str(exc))
    with running_peer("prometheus", tmp_path_factory.mktemp("prometheus"), str(blocks)) as url:
        yield url


@pytest.fixture(scope="session")
def client(prometheus_url: str) -> PrometheusClient:
    return PrometheusClient(prometheus_url, timeout=30)


def usage(client: PrometheusClient, vendor: str) -> GpuUsage:
    factory = dcgm_usage if vendor == history.NVIDIA else rocm_usage
    return factory(client, scrape_interval=STEP)


@pytest.mark.parametrize("vendor", [history.NVIDIA, history.AMD])
def test_month_of_gpu_hours_per_namespace_is_exact(client: PrometheusClient, gpus: list[history.Gpu],
                                                   vendor: str) -> None:
    expected = history.expected_samples(gpus, vendor, "namespace")
    result = usage(client, vendor).gpu_hours_by_namespace(START, END)
    assert result.samples == {ns: n for ns, n in expected.items() if ns is not None}
    assert result.values == {ns: gpu_hours(n, STEP) for ns, n in expected.items() if ns is not None}
    assert result.values["team-llm"] == Decimal(expected["team-llm"]) / 12  # 5-min samples
    # idle GPUs and the pod-without-namespace series are unattributed, not dropped
    assert result.unattributed_samples == expected[None]
    assert result.unattributed_hours == gpu_hours(expected[None], STEP)
    orphans = [seg for gpu in gpus if gpu.vendor == vendor for seg in gpu.segments
               if seg.allocated and seg.namespace is None]
    assert result.malformed_samples == sum(seg.stop - seg.start for seg in orphans)
    assert len(orphans) == (1 if vendor == history.NVIDIA else 0)
    assert sum(result.samples.values()) + result.unattributed_samples == sum(expected.values())


def test_orphan_pod_series_is_counted_as_unattributed(client: PrometheusClient, gpus: list[history.Gpu]) -> None:
    orphan = next(seg for gpu in gpus for seg in gpu.segments if seg.allocated and seg.namespace is None)
    result = dcgm_usage(client, scrape_interval=STEP).gpu_hours_by_namespace(at_step(orphan.start),
                                                                            at_step(orphan.stop))
    idle_elsewhere = history.expected_samples(gpus, history.NVIDIA, "namespace", orphan.start, orphan.stop)[None]
    assert result.unattributed_samples == idle_elsewhere >= orphan.stop - orphan.start
    assert result.malformed_samples == orphan.stop - orphan.start
    note = f"{orphan.stop - orphan.start} samples of series with a pod but no namespace counted as unattributed"
    assert result.notes == [note]


def test_daily_windows_are_half_open_and_add_up_to_the_month(client: PrometheusClient,
                                                             gpus: list[history.Gpu]) -> None:
    nvidia = dcgm_usage(client, scrape_interval=STEP)
    day = SPEC.steps_per_day
    total: dict[str, int] = {}
    for d in range(SPEC.days):
        result = nvidia.gpu_hours_by_namespace(at_step(d * day), at_step((d + 1) * day))
        expected = history.expected_samples(gpus, history.NVIDIA, "namespace", d * day, (d + 1) * day)
        assert result.samples == {ns: n for ns, n in expected.items() if ns is not None}, f"day {d}"
        assert result.unattributed_samples == expected[None], f"day {d}"
        for ns, n in result.samples.items():
            total[ns] = total.get(ns, 0) + n
    assert total == nvidia.gpu_hours_by_namespace(START, END).samples


def test_gpu_hours_by_host_reads_both_host_label_spellings(client: PrometheusClient,
                                                           gpus: list[history.Gpu]) -> None:
    expected = history.expected_samples(gpus, history.NVIDIA, "host")
    result = dcgm_usage(client, scrape_interval=STEP).gpu_hours_by_host(START, END)
    assert result.samples == {host: n for host, n in expected.items() if host is not None}
    # node 0 and 2 say `Hostname` (before 4.x), node 1 `hostname` (4.x)
    assert set(result.samples) == {"gpu-node-0000", "gpu-node-0001", "gpu-node-0002"}
    assert result.unattributed_samples == expected[None] == SPEC.steps_per_day  # the GPU without a host label
    assert result.malformed_samples == SPEC.steps_per_day
    amd = rocm_usage(client, scrape_interval=STEP).gpu_hours_by_host(START, END)
    assert amd.samples == {"gpu-node-0003": SPEC.gpus_per_node * SPEC.steps}
    assert amd.values == {"gpu-node-0003": Decimal(SPEC.gpus_per_node * SPEC.days * 24)}


@pytest.mark.parametrize("vendor", [history.NVIDIA, history.AMD])
def test_utilisation_per_namespace_is_the_exact_mean(client: PrometheusClient, gpus: list[history.Gpu],
                                                     vendor: str) -> None:
    expected, skipped = history.expected_utilisation(gpus, vendor)
    result = usage(client, vendor).gpu_utilisation_by_namespace(START, END)
    assert result.values == {ns: Decimal(s) / Decimal(c) for ns, (s, c) in expected.items()}
    assert result.samples == {ns: c for ns, (_, c) in expected.items()}
    assert result.skipped_series == skipped == (1 if vendor == history.NVIDIA else 0)  # the NaN series


def current_segment(gpu: history.Gpu, step: int) -> history.Segment:
    return next(seg for seg in gpu.segments if seg.start <= step < seg.stop)


def test_dcgm_collect_gives_current_values_per_uuid(client: PrometheusClient, gpus: list[history.Gpu]) -> None:
    results = list(DcgmCollector(client, clock=lambda: LAST).collect())
    assert len(results) == 1
    result = results[0]
    assert result.ok and result.target.endswith("(dcgm)")
    nvidia = [gpu for gpu in gpus if gpu.vendor == history.NVIDIA and gpu.ident and gpu.node]
    assert {s.entity for s in result.samples} == {gpu.ident for gpu in nvidia}
    units = {row.metric: row.unit for row in DCGM.metrics}
    assert {(s.metric, s.unit) for s in result.samples} == set(units.items())
    assert len(result.samples) == len(nvidia) * len(DCGM.metrics)
    # the GPU without a UUID is reported, not silently dropped
    assert result.skipped == {SKIP_NO_IDENTITY: len(DCGM.metrics)}
    assert result.error == f"skipped {len(DCGM.metrics)} series: {len(DCGM.metrics)} no GPU identity"

    step = SPEC.steps - 1
    gpu = next(g for g in nvidia if current_segment(g, step).allocated and current_segment(g, step).namespace)
    seg = current_segment(gpu, step)
    mine = {s.metric: s for s in result.samples if s.entity == gpu.ident}
    fb_used = next(f for f in history.DCGM_FAMILIES if f[0] == "DCGM_FI_DEV_FB_USED")[2]
    assert mine["gpu_util"].value == history.util(seg, step)
    assert mine["gpu_engine_active"].value == pytest.approx(history.util(seg, step))
    assert mine["gpu_memory_used"].value == int(fb_used(gpu, seg, step, 0.0)) * 1024 * 1024
    assert mine["gpu_energy"].value == pytest.approx((10**9 * (gpu.index + 1) + step * 300 * 350_000) / 1000)
    assert mine["gpu_util"].ts == LAST
    assert mine["gpu_util"].labels["host"] == gpu.node
    assert mine["gpu_util"].labels["namespace"] == seg.namespace and mine["gpu_util"].labels["pod"] == seg.pod
    assert mine["gpu_util"].labels["modelName"] == history.NVIDIA_MODEL
    xid = {s.entity: s.value for s in result.samples if s.metric == "gpu_last_xid"}
    assert {g.ident for g in nvidia if g.index == 3} == {e for e, v in xid.items() if v == 79}
    # both host label spellings end up as `host`
    assert {s.labels["host"] for s in result.samples} == {"gpu-node-0000", "gpu-node-0001", "gpu-node-0002"}


def test_collect_reports_the_pod_that_holds_the_gpu_now(client: PrometheusClient, gpus: list[history.Gpu]) -> None:
    """Backfilled series have no staleness markers: at a hand-over both the old pod's series
    and the new one are in the lookback; the newest sample wins."""
    first_detail = SPEC.steps - SPEC.detail_hours * 3600 // SPEC.step_s
    gpu, seg = next((g, s) for g in gpus if g.vendor == history.NVIDIA and g.ident and g.node
                    for s in g.segments if s.start > first_detail and s.allocated and s.namespace)
    result = DcgmCollector(client, clock=lambda: at_step(seg.start)).collect()[0]
    util = next(s for s in result.samples if s.entity == gpu.ident and s.metric == "gpu_util")
    assert util.labels["pod"] == seg.pod and util.ts == at_step(seg.start)


def test_rocm_collect_gives_current_values_per_serial(client: PrometheusClient, gpus: list[history.Gpu]) -> None:
    result = RocmCollector(client, clock=lambda: LAST).collect()[0]
    assert result.ok and result.error is None
    amd = [gpu for gpu in gpus if gpu.vendor == history.AMD]
    assert {s.entity for s in result.samples} == {gpu.ident for gpu in amd}
    assert {(s.metric, s.unit) for s in result.samples} == {(row.metric, row.unit) for row in ROCM.metrics}
    gpu = amd[5]
    mine = {s.metric: s for s in result.samples if s.entity == gpu.ident}
    assert mine["gpu_memory_total"].value == history.AMD_VRAM_MB * 1024 * 1024
    assert mine["gpu_util"].value == history.util(current_segment(gpu, SPEC.steps - 1), SPEC.steps - 1)
    assert mine["gpu_energy"].value == pytest.approx(
        (10**12 * (gpu.index + 1) + (SPEC.steps - 1) * 300 * 500_000_000) / 1e6)
    assert mine["gpu_temperature"].labels == mine["gpu_util"].labels
    assert mine["gpu_util"].labels["gpu_id"] == "5" and mine["gpu_util"].labels["host"] == "gpu-node-0003"
    assert mine["gpu_util"].labels["card_model"] == history.AMD_MODEL


def test_collect_without_recent_data_gives_no_samples(client: PrometheusClient) -> None:
    result = DcgmCollector(client, clock=lambda: END + timedelta(hours=1)).collect()[0]
    assert result.ok and result.samples == [] and result.error is None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_prometheus_down_gives_a_readable_error_quickly() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    began = time.monotonic()
    result = DcgmCollector(PrometheusClient(url, timeout=2)).collect()[0]
    assert time.monotonic() - began < 3
    assert not result.ok and not result.timed_out and result.samples == []
    assert result.error.startswith(f"Prometheus at {url} is unreachable: ")
    assert "Connection refused" in result.error
    with pytest.raises(PrometheusError, match="is unreachable") as caught:
        dcgm_usage(PrometheusClient(url, timeout=2), scrape_interval=STEP).gpu_hours_by_namespace(START, END)
    assert caught.value.unreachable


def test_prometheus_that_does_not_answer_times_out() -> None:
    with socket.socket() as silent:  # accepts connections (backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        began = time.monotonic()
        result = RocmCollector(PrometheusClient(url, timeout=1)).collect()[0]
        assert time.monotonic() - began < 3
    assert not result.ok and result.timed_out
    assert result.error == f"Prometheus at {url} did not answer within 1 s"


def test_bad_promql_gives_the_servers_error(client: PrometheusClient) -> None:
    with pytest.raises(PrometheusError) as caught:
        client.query("sum by (namespace) (count_over_time(DCGM_FI_DEV_GPU_UTIL[5m]", LAST)
    assert str(caught.value).startswith(f"Prometheus at {client.url} rejected the query: ")
    assert "parse error" in str(caught.value) and not caught.value.unreachable


def test_window_selects_start_inclusive_end_exclusive(client: PrometheusClient) -> None:
    # Prometheus 2.x range selectors are closed [t-r, t], 3.x ones left-open (t-r, t]
    span_ms = 30 * 86400 * 1000
    length = span_ms if client.range_is_left_open() else span_ms - 1
    assert client.window(START, END) == (f"[{length}ms]", END - timedelta(milliseconds=1))
    with pytest.raises(ValueError, match="empty window"):
        client.window(END, END)
    with pytest.raises(ValueError, match="timezone"):
        client.query("vector(1)", datetime(2025, 1, 1))
    one = dcgm_usage(client, scrape_interval=STEP).gpu_hours_by_namespace(LAST, END)
    assert sum(one.samples.values()) + one.unattributed_samples == 3 * SPEC.gpus_per_node + 1  # + the UUID-less GPU


def test_gpu_slices_are_entities_of_their_own() -> None:
    assert DCGM.entity({"UUID": "GPU-1", "GPU_I_ID": "3"}) == "GPU-1/3"  # MIG instance
    assert DCGM.entity({"UUID": "GPU-1"}) == "GPU-1"
    assert ROCM.entity({"serial_number": "PCB1", "gpu_partition_id": "0"}) == "PCB1"  # unpartitioned
    assert ROCM.entity({"serial_number": "PCB1", "gpu_partition_id": "2"}) == "PCB1/2"  # CPX partition
    assert ROCM.entity({"gpu_id": "2"}) is None


def test_blocks_are_cached_by_parameters(tmp_path: Path) -> None:
    assert history.FleetSpec().cache_key() == SPEC.cache_key()
    assert history.FleetSpec(nodes=5).cache_key() != SPEC.cache_key()
    assert history.backfill(SPEC) == history.CACHE_ROOT / SPEC.cache_key() / "blocks"
