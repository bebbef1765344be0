"""AMD device-metrics-exporter output written upstream (tests/data/upstream/amd-device-metrics-exporter/,
cited in its README), served on loopback and scraped by ExporterScrapeCollector with Kiln's ROCm table."""

from __future__ import annotations

import pytest

from collectors.rocm import MIB, ROCM
from tests.test_upstream_corpus import UPSTREAM, scrape, values

AMD = UPSTREAM / "amd-device-metrics-exporter"
KAIWO = (AMD / "kaiwo-mi300x-spx-cpx-gfx-activity.txt").read_text()
SPX_IDLE, CPX_PARTITION, SPX_BUSY = "692409005408", "692409005296", "692409005328"


def test_mi300x_gfx_activity_gives_one_gpu_util_per_series_with_its_host_and_workload() -> None:
    result = scrape(KAIWO, ROCM)
    assert result.skipped == {}
    assert values(result) == {(SPX_IDLE, "gpu_util"): 0, (f"{CPX_PARTITION}/0", "gpu_util"): 0,
                              (SPX_BUSY, "gpu_util"): 100}
    labels = {s.entity.removesuffix("/0"): dict(s.labels) for s in result.samples}
    # `instance` is the scrape target, as Prometheus sets it (it places GPUs whose host label names no node)
    target = result.target.removeprefix("http://").removesuffix("/metrics")
    assert {entity: found.pop("instance") for entity, found in labels.items()} == dict.fromkeys(labels, target)
    # straight from the exporter: empty workload labels are no workload, empty cluster_name is dropped
    assert labels[SPX_IDLE] == {"gpu_id": "2", "card_model": "102-G30211-0C", "gpu_partition_id": "0",
                                "gpu_compute_partition_type": "spx", "host": "tw038"}
    # read back from Prometheus: job/node are Prometheus' and the scrape's, not kept
    assert labels[SPX_BUSY] == {"gpu_id": "0", "card_model": "102-G30211-0C", "gpu_partition_id": "0",
                                "gpu_compute_partition_type": "spx", "host": "tw038", "namespace": "default",
                                "pod": "high-utilization-57ls6", "container": "workload"}
    # the exporter's own pod (a target label of the scrape) with no namespace: not a workload, but
    # Kiln cannot tell; GpuUsage counts such samples as malformed, unattributed
    assert labels[CPX_PARTITION]["pod"] == "default-metrics-exporter-vvvkm" and "namespace" not in labels[CPX_PARTITION]
    assert labels[CPX_PARTITION]["gpu_compute_partition_type"] == "cpx" and labels[CPX_PARTITION]["host"] == "tw009"
    assert {s.unit for s in result.samples} == {"percent"} and {s.source for s in result.samples} == {"rocm"}


def test_partition_0_of_a_cpx_gpu_is_a_slice_of_its_gpu() -> None:
    """Every partition carries its GPU's serial_number (gpuagent_gpu_metrics.go): partition 0 of
    a CPX GPU is a slice like partitions 1-7, while partition 0 of an SPX GPU is the GPU itself."""
    result = scrape(KAIWO, ROCM)
    got = values(result)
    assert (f"{CPX_PARTITION}/0", "gpu_util") in got and (CPX_PARTITION, "gpu_util") not in got
    cpx = next(s for s in result.samples if s.entity == f"{CPX_PARTITION}/0")
    assert cpx.labels["parent_gpu"] == CPX_PARTITION


def test_series_outside_kilns_table_are_left_out_without_a_skip_reason() -> None:
    """ROCm's own documentation example (placeholder serials "xxxx"): `gpu_clock` is not read."""
    result = scrape((AMD / "docs-metricslist-gpu-clock-example.txt").read_text(), ROCM)
    assert (result.samples, result.skipped, result.error) == ([], {}, None)


# Units and scales of the series metricslist.md documents (GPU_ENERGY_CONSUMED in µJ, VRAM in MB,
# power in W, GPU_AVERAGE_PACKAGE_POWER on MI2xx and GPU_PACKAGE_POWER on MI3xx). No repository
# file records these series with real values, so the shape is the upstream sample's label set
# (tests/data/upstream/amd-device-metrics-exporter/kaiwo-…, first line) under those names.
LABELS = KAIWO.splitlines()[0].removeprefix("gpu_gfx_activity").rsplit(" ", 1)[0]
UNITS_SHAPE = "".join(f"{name}{LABELS} {value}\n" for name, value in (
    ("gpu_energy_consumed", "4.6314932898e+13"), ("gpu_power_usage", "137"), ("gpu_average_package_power", "141"),
    ("gpu_used_vram", "285"), ("gpu_total_vram", "196592"), ("gpu_junction_temperature", "41"), ("gpu_clock", "132")))


def test_documented_units_are_scaled_to_kilns() -> None:
    result = scrape(UNITS_SHAPE, ROCM)
    got = {metric: value for (entity, metric), value in values(result).items() if entity == SPX_IDLE}
    assert got == pytest.approx({
        "gpu_energy": 4.6314932898e7,  # µJ → J
        "gpu_power": 137.0,
        "gpu_package_power": 141.0,
        "gpu_memory_used": 285 * MIB, "gpu_memory_total": 196592 * MIB,  # the exporter's "MB" are MiB
        "gpu_temperature": 41.0,
    })
    assert {s.unit for s in result.samples if s.metric == "gpu_energy"} == {"joules"}
    # both spellings land in one metric: an MI3xx exports only gpu_package_power, an MI2xx only the average
    mi3xx = scrape(UNITS_SHAPE.replace("gpu_average_package_power", "gpu_package_power"), ROCM)
    assert [s.value for s in mi3xx.samples if s.metric == "gpu_package_power"] == [141.0]
